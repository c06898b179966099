"""A node's signing key and published heads: what a node without a key says and writes, how the
heads file survives a crash between a commit and its publication, and the errors of bad keys
and flags (`tally node`, `tally keygen`)."""

from __future__ import annotations

import asyncio
import logging
import stat
import sys
from pathlib import Path

import pytest

from core import audit, signing
from shards.local.signing_keys import local_key, write_key_pair
from shards.node.heads import heads_path
from shards.node.server import Node, NodeConfig
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.helpers import Client, account, start_node, transfer
from tests.support.paths import REPO_ROOT


async def _post_batches(port: int, prefix: str, count: int, open_accounts: bool) -> None:
    async with security.channel(f"127.0.0.1:{port}") as channel:
        client = Client(channel)
        if open_accounts:
            assert set(await client.create(account("@bank"), account("a/dep"))) == {
                pb.RESULT_CODE_CREATED
            }
        for n in range(count):
            results = await client.post(transfer(f"{prefix}-{n}", "@bank", "a/dep", 5))
            assert results[0].code == pb.RESULT_CODE_CREATED


async def _audit(dsn: str, config: audit.AuditConfig) -> audit.AuditReport:
    return await audit.audit_cluster([dsn], config)


def _kinds(report: audit.AuditReport) -> list[tuple[str, int, int]]:
    return [(p.kind.name, p.block, p.block_last) for p in report.problems]


async def test_a_node_without_its_key_after_signed_blocks_is_a_finding(
    dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = tmp_path / "writer.key"
    public_path, key_id = write_key_pair(key)
    with caplog.at_level(logging.INFO, logger="tally.node"):
        node = await start_node(dsn, signing_key=str(key))
    assert f"journal heads are signed with key {key_id}" in caplog.text
    await _post_batches(node.port, "signed", 3, open_accounts=True)
    await node.stop()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tally.node"):
        node = await start_node(dsn)  # restarted without --signing-key
    assert "no signing key (--signing-key): journal blocks are written unsigned" in caplog.text
    await _post_batches(node.port, "unsigned", 2, open_accounts=False)
    await node.stop()
    # Blocks 1..4 signed (accounts, 3 batches), 5..6 unsigned: named without a key too.
    report = await _audit(dsn, audit.AuditConfig())
    assert _kinds(report) == [("BLOCK_UNSIGNED", 5, 6)]
    assert "after block 4, which was signed" in report.problems[0].message
    verify_key = signing.load_public(public_path.read_bytes(), "pub")
    report = await _audit(dsn, audit.AuditConfig(verify_keys=(verify_key,)))
    assert _kinds(report) == [("BLOCK_UNSIGNED", 5, 6)]


async def test_heads_left_unpublished_by_a_crash_are_published_at_the_next_start(
    dsn: str, tmp_path: Path
) -> None:
    key, heads = tmp_path / "writer.key", tmp_path / "heads"
    public_path, _ = write_key_pair(key)
    node = await start_node(dsn, signing_key=str(key), publish_heads=str(heads))
    await _post_batches(node.port, "p", 5, open_accounts=True)
    await node.stop()
    path = heads_path(heads, 0)
    whole = path.read_text()
    lines = whole.splitlines(keepends=True)
    assert len(lines) == 6
    # As a crash can leave it: the last two heads never written, the one before torn mid-line.
    path.write_text("".join(lines[:3]) + lines[3][:40])
    node = await start_node(dsn, signing_key=str(key), publish_heads=str(heads))
    await node.stop()
    assert path.read_text() == whole
    published = tuple(signing.parse_head_line(line) for line in whole.splitlines())
    verify_key = signing.load_public(public_path.read_bytes(), "pub")
    config = audit.AuditConfig(verify_keys=(verify_key,), published_heads=published)
    report = await _audit(dsn, config)
    assert report.ok, [str(p) for p in report.problems]


async def test_a_node_refuses_a_bad_key_and_publishing_without_one(tmp_path: Path) -> None:
    # With TLS, as every node has: the key (or its absence) is what is refused.
    tls = security.server_security()
    not_a_key = tmp_path / "not.key"
    not_a_key.write_text("not a key\n")
    with pytest.raises(signing.SigningKeyError, match="not an unencrypted PEM private key"):
        Node(NodeConfig(dsn="postgresql://unused", signing_key=str(not_a_key), security=tls))
    with pytest.raises(ValueError, match="--publish-heads needs --signing-key"):
        Node(NodeConfig(dsn="postgresql://unused", publish_heads=str(tmp_path), security=tls))
    public_path, _ = write_key_pair(tmp_path / "k.key")
    with pytest.raises(signing.SigningKeyError, match="not an unencrypted PEM private key"):
        Node(NodeConfig(dsn="postgresql://unused", signing_key=str(public_path), security=tls))


async def _tally(*arguments: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shards.cli",
        *arguments,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_tally_node_with_a_bad_key_exits_with_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.key"
    code, _, stderr = await _tally(
        "node",
        "--dsn",
        "postgresql://127.0.0.1:1/x",
        "--signing-key",
        str(missing),
        *security.server_flags(),  # TLS as every node has: the key is what is wrong
    )
    assert code == 2 and f"tally node: [Errno 2] No such file or directory: '{missing}'" in stderr
    assert "Traceback" not in stderr


async def test_keygen_makes_a_private_key_0600_and_never_overwrites_it(tmp_path: Path) -> None:
    key = tmp_path / "prod" / "signing.key"
    code, stdout, _ = await _tally("keygen", str(key))
    assert code == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    public = signing.load_public((tmp_path / "prod" / "signing.key.pub").read_bytes(), "pub")
    assert f"tally: signing key {public.key_id}: private key {key}" in stdout
    assert f"tally audit --verify-key {key}.pub" in stdout
    signer = signing.Signer(signing.load_private(key.read_bytes(), "key"))
    assert signer.key_id == public.key_id
    before = key.read_bytes()
    code, _, stderr = await _tally("keygen", str(key))
    assert code == 2 and "exists; it is never overwritten" in stderr
    assert key.read_bytes() == before
    code, stdout, _ = await _tally("keygen", str(key), "--keep")
    assert code == 0 and f"tally: signing key {key} kept" in stdout
    assert key.read_bytes() == before


def test_tally_up_makes_its_key_once_and_keeps_it(tmp_path: Path) -> None:
    private_path, public_path, key_id, made = local_key(tmp_path)
    assert made and stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(private_path.parent.stat().st_mode) == 0o700
    again = local_key(tmp_path)
    assert again == (private_path, public_path, key_id, False)
    assert signing.load_public(public_path.read_bytes(), "pub").key_id == key_id
