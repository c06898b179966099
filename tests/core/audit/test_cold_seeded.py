"""The seeded random workload (tests.support.seeded_ledger: holds posted in full and in part,
voided and expired, reversals, linked groups, two currencies, a closed account) archived up to
its middle block and then whole: the audit stays clean and the export and every customer's
statement stay what they were."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import asyncpg

from core.audit import exporter, statement
from shards.local.embedded_pg import EmbeddedPostgres
from tests.support.cold_books import archive_before, audit_shard_of
from tests.support.seeded_ledger import CUSTOMERS, clone_database, make_template

TIMEOUT_S = 60.0


def _files(directory: Path) -> dict[str, str]:
    return {
        path.name: path.read_text()
        for path in sorted(directory.iterdir())
        if not path.name.startswith("manifest")
    }


def _fresh(directory: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


async def _reads(dsn: str, root: Path | None, directory: Path) -> tuple[object, ...]:
    """The whole export's files and every customer's statement over all time."""
    connection = await asyncpg.connect(dsn)
    try:
        await exporter.export_shard(
            connection, _fresh(directory), "0", exporter.Selection(), "csv", TIMEOUT_S,
            segments_root=root,
        )  # fmt: skip
        statements = [
            await statement.load_statement([connection], c, 1, 2**62, TIMEOUT_S, segments_root=root)
            for c in (*CUSTOMERS, "@bank", "c0/loan", "e0/dep", "z/temp")
        ]
    finally:
        await connection.close()
    return _files(directory), statements


async def test_a_seeded_workload_archived_in_two_steps(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    name, _ = await make_template(pg, f"cold_seeded_{os.getpid()}")
    hot_dsn = pg.dsn(name)
    before = await audit_shard_of(hot_dsn, None)
    assert before.problems == [] and before.block_count >= 10
    hot_reads = await _reads(hot_dsn, None, tmp_path / "export")
    dsn, root = await clone_database(pg, name), tmp_path / "segments"
    connection = await asyncpg.connect(dsn)
    try:
        middle = await connection.fetchval(
            "SELECT created_at_ns FROM journal_blocks WHERE sequence = $1",
            before.block_count // 2,
        )
    finally:
        await connection.close()
    for created_before_ns in (middle, 2**62):
        assert await archive_before(dsn, root, created_before_ns) >= 1
        report = await audit_shard_of(dsn, root)
        assert [str(p) for p in report.problems] == []
        for field in ("block_count", "transaction_count", "posting_count", "head_hash"):
            assert getattr(report, field) == getattr(before, field), field
        assert report.trial_balance == before.trial_balance
        assert await _reads(dsn, root, tmp_path / "export") == hot_reads
