"""`tally segments write` and `verify` on a real shard's journal (a node on the suite's
PostgreSQL, every kind of record), run as processes: the segments hold the database's blocks
exactly, continue their chain as the journal grows, and name what was altered, in a segment or
against the database."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg

from core.audit import AuditConfig
from core.store.cold.read import Segment, segment_paths
from shards.audit.server import AuditServer, AuditServiceConfig
from tally.v1 import audit_pb2 as apb
from tally.v1 import audit_pb2_grpc as apb_grpc
from tally.v1 import ledger_pb2 as pb
from tests.support import security, streams
from tests.support.audit_commands import audit_json
from tests.support.helpers import Client, start_node, transfer
from tests.support.paths import REPO_ROOT

CREATED = pb.RESULT_CODE_CREATED
TIMEOUT_S = 120.0


async def _tally(dsn: str, *arguments: str) -> tuple[int, str, str]:
    environment = {**os.environ, "TALLY_DSN": dsn}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shards.cli", "segments", *arguments,
        cwd=REPO_ROOT, env=environment,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def _post(dsn: str, *names: str, every_kind: bool = False) -> None:
    handle = await start_node(dsn)
    try:
        async with security.channel(handle.target) as channel:
            client = Client(channel)
            if every_kind:
                await streams.every_kind_of_record(client)
            for name in names:
                item = transfer(f"cust-1/{name}", "cust-1/deposit", "cust-2/deposit", 3)
                assert await client.codes(item) == [CREATED]
    finally:
        await handle.stop()


async def _journal(dsn: str) -> dict[int, bytes]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT sequence, hash FROM journal_blocks")
        postings = await connection.fetch(
            "SELECT sequence FROM postings WHERE account_id = 'cust-1/deposit' ORDER BY sequence"
        )
    finally:
        await connection.close()
    journal = {row["sequence"]: bytes(row["hash"]) for row in rows}
    journal[-1] = b",".join(str(row["sequence"]).encode() for row in postings)
    return journal


# Why long: one journal grown in two steps, each written out and checked, then the refusals.
async def test_segments_hold_the_journal_continue_it_and_name_what_was_altered(
    dsn: str, tmp_path: Path
) -> None:
    await _post(dsn, "a", "b", every_kind=True)
    root = tmp_path / "segments"
    directory = root / "shard-0"  # a node without a control database is shard 0
    code, out, err = await _tally(dsn, "write", "--dir", str(root), "--older-than", "1d")
    assert (code, segment_paths(directory)) == (0, []), err  # every block is recent
    code, out, err = await _tally(dsn, "write", "--dir", str(root), "--blocks-per-segment", "3")
    assert code == 0, err
    journal = await _journal(dsn)
    head = max(journal)
    paths = segment_paths(directory)
    assert len(paths) == -(-head // 3) and f"holds shard 0's blocks 1 to {head}" in out
    held = {b.header.sequence: b.header.hash for p in paths for b in Segment(p).blocks()}
    assert held == {s: h for s, h in journal.items() if s > 0}
    # An account's history read from the segments is the database's, in order, page by page.
    sequences, after = [], 0
    for path in paths:
        while page := Segment(path).postings_after("cust-1/deposit", after, 2):
            sequences += [p.sequence for p in page]
            after = page[-1].sequence
    assert b",".join(str(s).encode() for s in sequences) == journal[-1]
    code, out, err = await _tally(dsn, "verify", "--dir", str(root))
    assert code == 0 and f"shard 0: {len(paths)} segment(s), blocks 1 to {head}" in out, out + err
    assert "against the database: clean" in out, out
    code, report = await audit_json(dsn, extra=("--segments", str(root)))
    assert code == 0 and report["problem_count"] == 0, report

    # The journal grows: a second run writes only what is new, chained to the last segment.
    code, out, _ = await _tally(dsn, "write", "--dir", str(root))
    assert code == 0 and "0 segment(s) written now" in out
    await _post(dsn, "c", "d")
    code, out, err = await _tally(dsn, "write", "--dir", str(root))
    assert code == 0, err
    grown = segment_paths(directory)
    assert len(grown) == len(paths) + 1
    assert (
        Segment(grown[-1]).manifest.previous_manifest_digest == Segment(paths[-1]).manifest.digest()
    )
    assert (await _tally(dsn, "verify", "--dir", str(root)))[0] == 0

    # A byte changed in a segment's file is named with its segment and file.
    target = grown[1] / "postings.parquet"
    original = target.read_bytes()
    target.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
    code, out, _ = await _tally(dsn, "verify", "--dir", str(root))
    assert code == 1 and "file_digest" in out and grown[1].name in out, out
    code, report = await audit_json(dsn, extra=("--segments", str(root)))
    named = report["problems"]
    assert code == 1 and [p["kind"] for p in named] == ["segment_altered"], report
    assert named[0]["check"] == "segments"
    assert grown[1].name in named[0]["message"] and "postings.parquet" in named[0]["message"]
    assert await _served_kinds(dsn, root) == [apb.FINDING_KIND_SEGMENT_ALTERED]
    target.write_bytes(original)
    # Segments consistent in themselves but not this database's journal: the database witnesses.
    other = tmp_path / "other"
    other_dsn = dsn.rsplit("/", 1)[0] + "/" + await _fresh_database(dsn)
    await _post(other_dsn, "x", every_kind=True)
    assert (await _tally(other_dsn, "write", "--dir", str(other)))[0] == 0
    code, out, _ = await _tally(dsn, "verify", "--dir", str(other))
    assert code == 1 and "segment_database_mismatch" in out, out
    code, report = await audit_json(dsn, extra=("--segments", str(other)))
    kinds = {p["kind"] for p in report["problems"]}
    assert code == 1 and kinds == {"segment_database_mismatch"}, report
    code, _, err = await _tally(dsn, "write", "--dir", str(other))
    assert code == 2 and "has with another hash" in err, err
    code, _, err = await _tally(dsn, "write", "--dir", str(other), "--older-than", "soon")
    assert code == 2 and "--older-than 'soon'" in err, err


async def _served_kinds(dsn: str, root: Path) -> list[int]:
    """The finding kinds the audit server (tally audit-serve --segments ROOT) reports."""
    config = AuditServiceConfig(
        dsns=(dsn,),
        listen="127.0.0.1:0",
        audit=AuditConfig(segments_root=root),
        security=security.server_security(),
    )
    server = AuditServer(config)
    port = await server.start()
    task = asyncio.create_task(server.run())
    try:
        async with security.channel(f"127.0.0.1:{port}") as channel:
            report = await apb_grpc.AuditStub(channel).RunAudit(
                apb.RunAuditRequest(), timeout=TIMEOUT_S
            )
    finally:
        server.request_stop()
        await asyncio.wait_for(task, timeout=30)
    return [finding.kind for finding in report.findings]


async def _fresh_database(dsn: str) -> str:
    name = f"segments_{os.getpid()}_{id(dsn) % 100_000}"
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f"DROP DATABASE IF EXISTS {name}")
        await connection.execute(f"CREATE DATABASE {name}")
    finally:
        await connection.close()
    return name
