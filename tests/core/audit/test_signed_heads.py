"""Signed journal heads: a real node signs every block with a key the database never holds and
publishes the heads to a file; `tally audit --verify-key` names every block whose head an
operator with write access rewrote, re-signed with another key, moved or left unsigned, and
`--published-heads` names every block that no longer matches its published head.

The ledger is written once per module through a real node with a key; each test alters its own
copy (CREATE DATABASE ... TEMPLATE) by SQL, as an operator could.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from core import journal, signing
from core.audit import export
from core.audit.export import journal_line
from core.store import export as export_sql
from shards.local.embedded_pg import EmbeddedPostgres
from shards.local.signing_keys import write_key_pair
from shards.node.heads import heads_path
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.audit_commands import audit_json, run_cli
from tests.support.helpers import Client, account, start_node, transfer
from tests.support.seeded_ledger import clone_database
from tests.support.sql import execute, fetch_one

BATCH_COUNT = 12
CREATED = pb.RESULT_CODE_CREATED


@dataclass(frozen=True)
class Signed:
    template: str
    key: Path
    public_key: Path
    heads: Path
    other_key: Path
    other_public_key: Path


async def _write_ledger(dsn: str, key: Path, heads: Path) -> None:
    """Accounts, then BATCH_COUNT batches of transfers: one block each."""
    node = await start_node(dsn, signing_key=str(key), publish_heads=str(heads))
    try:
        async with security.channel(f"127.0.0.1:{node.port}") as channel:
            client = Client(channel)
            codes = await client.create(account("@bank"), account("a/dep"), account("b/dep"))
            assert set(codes) == {CREATED}
            for batch in range(BATCH_COUNT):
                items = [
                    transfer(f"t{batch}-{i}", "@bank", "a/dep" if i % 2 else "b/dep", 10 + i)
                    for i in range(5)
                ]
                results = await client.post(*items)
                assert {r.code for r in results} == {CREATED}
    finally:
        await node.stop()


@pytest.fixture(scope="module")
async def signed(
    pg: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Signed]:
    directory = tmp_path_factory.mktemp("signing")
    key, other_key = directory / "writer.key", directory / "other.key"
    public_key, _ = write_key_pair(key)
    other_public_key, _ = write_key_pair(other_key)
    name = f"signed_base_{os.getpid()}"
    await pg.create_database_async(name)
    await _write_ledger(pg.dsn(name), key, directory / "heads")
    yield Signed(name, key, public_key, directory / "heads", other_key, other_public_key)


@pytest.fixture
async def books(pg: EmbeddedPostgres, signed: Signed) -> str:
    return await clone_database(pg, signed.template)


def _problems(report: dict[str, Any], check: str = "journal") -> list[dict[str, Any]]:
    return [p for p in report["problems"] if p["check"] == check]


async def _blocks(dsn: str) -> list[Any]:
    connection = await asyncpg.connect(dsn, timeout=30)
    try:
        return list(await connection.fetch("SELECT * FROM journal_blocks ORDER BY sequence"))
    finally:
        await connection.close(timeout=10)


# ---- what the node writes ----


async def test_every_block_is_signed_and_published(books: str, signed: Signed) -> None:
    blocks = await _blocks(books)
    assert len(blocks) == BATCH_COUNT + 1  # the accounts' block, then one per batch
    signer = signing.Signer(signing.load_private(signed.key.read_bytes(), "key"))
    verifier = signing.Verifier((signing.load_public(signed.public_key.read_bytes(), "pub"),))
    for block in blocks:
        assert block["key_id"] == signer.key_id
        assert len(block["signature"]) == signing.SIGNATURE_LENGTH
        problem = verifier.problem(
            0, block["sequence"], bytes(block["hash"]), block["key_id"], bytes(block["signature"])
        )
        assert problem == ""
    lines = heads_path(signed.heads, 0).read_text().splitlines()
    heads = [signing.parse_head_line(line) for line in lines]
    assert [(h.block, h.hash_hex, h.signature_hex) for h in heads] == [
        (b["sequence"], bytes(b["hash"]).hex(), bytes(b["signature"]).hex()) for b in blocks
    ]
    # The key never reaches the database: no column of any block holds its bytes.
    private_raw = signing.load_private(signed.key.read_bytes(), "key").private_bytes_raw()
    for block in blocks:
        assert private_raw not in b"".join(v for v in block.values() if isinstance(v, bytes))


async def test_signed_books_audit_clean_with_the_key_and_heads(books: str, signed: Signed) -> None:
    extra = ("--verify-key", str(signed.public_key), "--published-heads", str(signed.heads))
    code, report = await audit_json(books, extra=extra)
    assert code == 0, report["problems"]
    # Rotation: the old key and a new one, each head checked with the key it names.
    code, report = await audit_json(
        books,
        extra=(*extra, "--verify-key", str(signed.other_public_key)),
    )
    assert code == 0, report["problems"]


# ---- an operator rewrites the chain ----


async def _rehash(dsn: str, first: int) -> None:
    """Recompute the hashes of blocks first.. from their rows, as an operator with write access
    and the published hashing rule can: every hash and previous_hash consistent again."""
    connection = await asyncpg.connect(dsn)
    try:
        blocks = await connection.fetch("SELECT * FROM journal_blocks ORDER BY sequence")
        by_sequence = {b["sequence"]: b for b in blocks}
        previous = bytes(by_sequence[first - 1]["hash"]) if first > 1 else journal.GENESIS_HASH
        posting_start = by_sequence[first - 1]["next_posting_sequence"] if first > 1 else 1
        for block in blocks[first - 1 :]:
            sequence = block["sequence"]
            lines = []
            for name, kind in (("accounts", "A"), ("transactions", "T")):
                rows = await connection.fetch(export_sql.BY_BLOCK_SQL[name], sequence, sequence)
                lines += [journal_line(kind, list(row.values())[1:]) for row in rows]
            end = block["next_posting_sequence"]
            postings = await connection.fetch(
                export_sql.BY_POSTING_SQL["postings"], posting_start, end
            )
            lines += [journal_line("P", list(row.values())[1:]) for row in postings]
            closures = await connection.fetch(
                export_sql.BY_BLOCK_SQL["closures"], sequence, sequence
            )
            lines += [journal_line("X", list(row.values())[1:]) for row in closures]
            hash_ = journal.block_hash(previous, sequence, lines)
            await connection.execute(
                "UPDATE journal_blocks SET previous_hash = $1, hash = $2 WHERE sequence = $3",
                previous,
                hash_,
                sequence,
            )
            previous, posting_start = hash_, end
    finally:
        await connection.close()


async def test_rewritten_suffix_names_the_first_block_whose_signature_fails(
    books: str, signed: Signed
) -> None:
    rewrite_count = 4
    last = len(await _blocks(books))
    first = last - rewrite_count + 1
    victim = await fetch_one(
        books, "SELECT id FROM transactions WHERE block_sequence = $1 ORDER BY id LIMIT 1", first
    )
    await execute(
        books,
        f"UPDATE transactions SET metadata = '{{\"forged\":\"yes\"}}' WHERE id = '{victim['id']}'",
    )
    await _rehash(books, first)
    # The unkeyed chain alone cannot tell: every hash is consistent with its rows again.
    code, report = await audit_json(books)
    assert code == 0, report["problems"]
    code, report = await audit_json(books, extra=("--verify-key", str(signed.public_key)))
    assert code == 1
    found = _problems(report)
    assert [p["kind"] for p in found] == ["block_signature_invalid"] * rewrite_count
    assert [p["block"] for p in found] == list(range(first, last + 1))
    assert found[0]["text"].startswith(f"shard 0: block {first}: signature does not verify")
    # The published heads name the same blocks, from the auditor's own copy.
    code, report = await audit_json(books, extra=("--published-heads", str(signed.heads)))
    assert code == 1
    mismatched = _problems(report, "anchors")
    assert [p["kind"] for p in mismatched] == ["published_head_mismatch"] * rewrite_count
    assert mismatched[0]["block"] == first
    assert "rewritten after its head was published" in mismatched[0]["text"]


async def test_head_signed_by_another_key_is_named(books: str, signed: Signed) -> None:
    other = signing.Signer(signing.load_private(signed.other_key.read_bytes(), "other"))
    block = await fetch_one(books, "SELECT sequence, hash FROM journal_blocks WHERE sequence = 6")
    signature = other.sign(0, 6, bytes(block["hash"]))
    await execute(
        books,
        f"UPDATE journal_blocks SET key_id = '{other.key_id}', "
        f"signature = '\\x{signature.hex()}' WHERE sequence = 6",
    )
    code, report = await audit_json(books, extra=("--verify-key", str(signed.public_key)))
    assert code == 1
    found = _problems(report)
    assert [(p["kind"], p["block"]) for p in found] == [("block_signed_by_unknown_key", 6)]
    assert f"signed by key {other.key_id}, which is not a verify key" in found[0]["text"]


async def test_signature_moved_from_another_block_or_shard_is_named(
    books: str, signed: Signed
) -> None:
    # Block 3's signature copied onto block 4: the message binds the block's sequence.
    await execute(
        books,
        "UPDATE journal_blocks b SET signature = s.signature FROM journal_blocks s "
        "WHERE b.sequence = 4 AND s.sequence = 3",
    )
    # Block 7 signed with the right key for the same hash, but as shard 1's block 7.
    writer = signing.Signer(signing.load_private(signed.key.read_bytes(), "key"))
    block = await fetch_one(books, "SELECT hash FROM journal_blocks WHERE sequence = 7")
    moved = writer.sign(1, 7, bytes(block["hash"]))
    await execute(
        books, f"UPDATE journal_blocks SET signature = '\\x{moved.hex()}' WHERE sequence = 7"
    )
    code, report = await audit_json(books, extra=("--verify-key", str(signed.public_key)))
    assert code == 1
    found = _problems(report)
    assert [(p["kind"], p["block"]) for p in found] == [
        ("block_signature_invalid", 4),
        ("block_signature_invalid", 7),
    ]


async def test_stripped_signatures_are_unsigned_blocks_after_signed_ones(
    books: str, signed: Signed
) -> None:
    await execute(
        books,
        "UPDATE journal_blocks SET key_id = '', signature = ''::bytea "
        "WHERE sequence BETWEEN 5 AND 8",
    )
    # Even without a verify key: a signed block followed by unsigned ones is a downgrade.
    for extra in ((), ("--verify-key", str(signed.public_key))):
        code, report = await audit_json(books, extra=extra)
        assert code == 1
        found = _problems(report)
        assert [(p["kind"], p["block"]) for p in found] == [("block_unsigned", 5)]
        assert found[0]["text"] == (
            "shard 0: blocks 5..8: unsigned (no key id, no signature), after block 4, "
            "which was signed"
        )


async def test_journal_cut_back_below_its_published_heads_is_named(
    books: str, signed: Signed
) -> None:
    last = len(await _blocks(books))
    await execute(books, f"DELETE FROM journal_blocks WHERE sequence >= {last - 1}")
    code, report = await audit_json(books, extra=("--published-heads", str(signed.heads)))
    assert code == 1
    missing = _problems(report, "anchors")
    assert [(p["kind"], p["block"]) for p in missing] == [("published_head_missing", last - 1)]
    assert f"blocks {last - 1}..{last}: 2 published head(s)" in missing[0]["text"]


async def test_unreadable_key_and_heads_are_usage_errors(books: str, tmp_path: Path) -> None:
    not_a_key = tmp_path / "not.pub"
    not_a_key.write_text("hello\n")
    code, _, stderr = await run_cli("audit", "--dsn", books, "--verify-key", str(not_a_key))
    assert code == 2 and f"--verify-key {not_a_key}: not a PEM public key" in stderr
    heads = tmp_path / "shard-0.heads.jsonl"
    heads.write_text('{"shard":0,"block":1}\n')
    code, _, stderr = await run_cli("audit", "--dsn", books, "--published-heads", str(heads))
    assert code == 2
    assert f"--published-heads {heads} line 1: hash, key_id and signature" in stderr


# ---- exports carry the signatures; verify-export checks them ----


def test_export_verifier_signs_the_same_message_as_the_writer() -> None:
    hash_ = bytes(range(32))
    assert export.head_message(3, 17, hash_.hex(), "ab" * 8) == signing.head_message(
        3, 17, hash_, "ab" * 8
    )


async def test_verify_export_checks_signatures_and_names_a_rewritten_block(
    books: str, signed: Signed, tmp_path: Path
) -> None:
    out = tmp_path / "clean"
    code, _, stderr = await run_cli("export", "--dsn", books, "--out", str(out))
    assert code == 0, stderr
    code, stdout, _ = await run_cli(
        "verify-export", str(out), "--verify-key", str(signed.public_key)
    )
    blocks = BATCH_COUNT + 1
    assert code == 0 and f"signatures: {blocks} of {blocks} blocks verify" in stdout, stdout
    # Another key only: every block is signed by a key the auditor was not given.
    code, stdout, _ = await run_cli(
        "verify-export", str(out), "--verify-key", str(signed.other_public_key)
    )
    assert code == 1 and "FAIL blocks.csv line 2: block 1: signed by key" in stdout

    last = blocks
    await execute(books, f"UPDATE transactions SET metadata = '{{}}' WHERE block_sequence = {last}")
    await execute(books, f"UPDATE transactions SET code = 99 WHERE block_sequence = {last - 1}")
    await _rehash(books, last - 1)
    rewritten = tmp_path / "rewritten"
    code, _, stderr = await run_cli("export", "--dsn", books, "--out", str(rewritten))
    assert code == 0, stderr
    code, stdout, _ = await run_cli("verify-export", str(rewritten))
    assert code == 0, stdout  # the unkeyed chain verifies: it was recomputed
    code, stdout, _ = await run_cli(
        "verify-export", str(rewritten), "--verify-key", str(signed.public_key)
    )
    assert code == 1
    failures = [line for line in stdout.splitlines() if line.startswith("FAIL")]
    assert failures[0].startswith(
        f"FAIL blocks.csv line {last}: block {last - 1}: signature does not verify with key"
    )
    assert len(failures) == 2


async def test_standalone_verifier_says_when_cryptography_is_missing(
    books: str, signed: Signed, tmp_path: Path
) -> None:
    out = tmp_path / "x"
    code, _, stderr = await run_cli("export", "--dsn", books, "--out", str(out))
    assert code == 0, stderr
    standalone = tmp_path / "auditor" / "export.py"
    standalone.parent.mkdir()
    shutil.copy(export.__file__, standalone)

    async def run(*flags: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *flags,
            str(standalone),
            str(out / "shard-0"),
            "--verify-key",
            str(signed.public_key),
            cwd=standalone.parent,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
        assert process.returncode is not None
        return process.returncode, stdout.decode(), stderr.decode()

    # No site-packages: the standard library alone cannot check Ed25519 signatures.
    code, stdout, stderr = await run("-I", "-S")
    assert code == 2 and stdout == ""
    assert "--verify-key) needs the cryptography package" in stderr
    # With cryptography importable, the one file checks them.
    code, stdout, stderr = await run("-I")
    assert code == 0, stdout + stderr
    assert f"signatures: {BATCH_COUNT + 1} of {BATCH_COUNT + 1} blocks verify" in stdout
