"""The journal export and statements across hot and cold history: books whose first blocks
were archived (tests.support.cold_books) export the same files, and give the same statements
(lines, opening and closing balances), as their hot twin, for periods and block ranges before,
across and after the boundary; without --segments, a database with cold history is a clear
error, never a silently shorter export or a wrong statement."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from core.audit import exporter, statement
from core.audit.cold import ColdHistoryRequired
from shards.local.embedded_pg import EmbeddedPostgres
from tests.support.audit_commands import run_cli
from tests.support.cold_books import ColdBooks, cold_copy
from tests.support.streams import ACCOUNTS

TIMEOUT_S = 60.0


async def _export(
    dsn: str,
    directory: Path,
    selection: exporter.Selection,
    root: Path | None,
    export_format: str = "csv",
) -> dict[str, str]:
    """Every file of the export, the manifest without its export time."""
    _make(directory)
    connection = await asyncpg.connect(dsn)
    try:
        await exporter.export_shard(
            connection, directory, "0", selection, export_format, TIMEOUT_S, segments_root=root
        )
    finally:
        await connection.close()
    return _files(directory)


def _make(directory: Path) -> None:
    directory.mkdir(parents=True)


def _files(directory: Path) -> dict[str, str]:
    files = {path.name: path.read_text() for path in sorted(directory.iterdir())}
    for name, text in files.items():
        if name.startswith("manifest"):
            kept = [line for line in text.splitlines() if "exported_at_ns" not in line]
            files[name] = "\n".join(kept)
    return files


async def _posting_times(dsn: str) -> list[int]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT timestamp_ns FROM postings ORDER BY sequence")
    finally:
        await connection.close()
    return [r["timestamp_ns"] for r in rows]


async def test_exports_are_the_same_before_and_after_archiving(
    pg: EmbeddedPostgres, cold_books: ColdBooks, tmp_path: Path
) -> None:
    dsn, root = await cold_copy(pg, cold_books, tmp_path)
    connection = await asyncpg.connect(dsn)
    try:
        last_cold = await connection.fetchval("SELECT max(last_block) FROM cold_segments")
    finally:
        await connection.close()
    times = await _posting_times(cold_books.hot_dsn)
    selections = [
        exporter.Selection(),  # everything
        exporter.Selection(first_block=3, last_block=last_cold + 2),  # across the boundary
        exporter.Selection(first_block=2, last_block=last_cold - 1),  # cold only
        exporter.Selection(first_block=last_cold + 1),  # hot only, after cold history
        exporter.Selection(from_ns=times[len(times) // 3], to_ns=cold_books.end_ns),
    ]
    for n, selection in enumerate(selections):
        hot = await _export(cold_books.hot_dsn, tmp_path / f"hot-{n}", selection, None)
        cold = await _export(dsn, tmp_path / f"cold-{n}", selection, root)
        assert cold == hot, selection
    assert int(hot["manifest.csv"].count("\n")) > 0
    hot = await _export(cold_books.hot_dsn, tmp_path / "hot-json", selections[1], None, "jsonl")
    cold = await _export(dsn, tmp_path / "cold-json", selections[1], root, "jsonl")
    assert cold == hot  # the same JSON types too
    with pytest.raises(ColdHistoryRequired, match="--segments ROOT"):
        await _export(dsn, tmp_path / "none", exporter.Selection(), None)
    code, _, stderr = await run_cli("export", "--dsn", dsn, "--out", str(tmp_path / "cli"))
    assert code == 2 and "cold history" in stderr
    code, _, stderr = await run_cli(
        "export", "--dsn", dsn, "--out", str(tmp_path / "cli"), "--segments", str(root)
    )
    assert code == 0, stderr


async def _statement(
    dsn: str, account_id: str, period: tuple[int, int], root: Path | None
) -> statement.Statement:
    connection = await asyncpg.connect(dsn)
    try:
        return await statement.load_statement(
            [connection], account_id, *period, TIMEOUT_S, segments_root=root
        )
    finally:
        await connection.close()


async def test_statements_are_the_same_before_and_after_archiving(
    pg: EmbeddedPostgres, cold_books: ColdBooks, tmp_path: Path
) -> None:
    dsn, root = await cold_copy(pg, cold_books, tmp_path)
    times = await _posting_times(cold_books.hot_dsn)
    end = cold_books.end_ns + 1
    periods = [
        (1, end),
        (times[len(times) // 3], end),  # from inside the cold blocks
        (times[len(times) // 3], cold_books.boundary_ns),  # cold only
        (cold_books.boundary_ns, end),  # hot only: the opening is cold
        (times[len(times) // 2], times[len(times) // 2] + 1),
    ]
    lines = 0
    for account_id in ACCOUNTS:
        for period in periods:
            hot = await _statement(cold_books.hot_dsn, account_id, period, None)
            cold = await _statement(dsn, account_id, period, root)
            assert cold == hot, (account_id, period)
            assert cold.consistent
            lines += len(cold.lines)
    assert lines > 20
    with pytest.raises(statement.StatementError, match="cold history"):
        await _statement(dsn, "cust-1/deposit", (1, end), None)
    arguments = ("statement", "cust-1/deposit", "--dsn", dsn, "--from", "1", "--to", str(end))
    code, _, stderr = await run_cli(*arguments)
    assert code == 2 and "--segments ROOT" in stderr
    code, stdout, stderr = await run_cli(*arguments, "--segments", str(root))
    assert code == 0, stderr
    assert "cust-1/a0" in stdout
