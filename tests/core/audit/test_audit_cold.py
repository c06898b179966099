"""`tally audit` across hot and cold history: books whose first blocks were archived (their
postings and unchanged transactions read from cold segments) audit clean, as their hot twin
does; a segment altered is named; a database with cold history audited without --segments is a
clear error, not a flood of findings; a transaction reversed after its block went cold (its row
revived, block 0) audits clean, before and after the next archive run."""

from __future__ import annotations

import time
from pathlib import Path

import asyncpg
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.audit.findings import FindingKind
from core.store.cold.read import segment_paths
from shards.local.embedded_pg import EmbeddedPostgres
from tests.support.audit_commands import audit_json, run_cli
from tests.support.cold_books import (
    FIRST_RUN,
    ColdBooks,
    archive_before,
    audit_shard_of,
    cold_copy,
    reverse,
)


async def test_archived_books_audit_clean_as_their_hot_twin(
    pg: EmbeddedPostgres, cold_books: ColdBooks, tmp_path: Path
) -> None:
    hot = await audit_shard_of(cold_books.hot_dsn, None)
    dsn, root = await cold_copy(pg, cold_books, tmp_path)
    connection = await asyncpg.connect(dsn)
    try:
        assert await connection.fetchval("SELECT count(*) FROM cold_segments") >= 2
        hot_postings = await connection.fetchval("SELECT count(*) FROM postings")
    finally:
        await connection.close()
    assert hot_postings < hot.posting_count  # the first run's postings left the tables
    cold = await audit_shard_of(dsn, root)
    assert [str(p) for p in cold.problems] == [] and hot.problems == []
    for name in ("block_count", "transaction_count", "posting_count", "head_hash"):
        assert getattr(cold, name) == getattr(hot, name), name
    assert cold.trial_balance == hot.trial_balance
    code, report = await audit_json(dsn, extra=("--segments", str(root)))
    assert code == 0 and report["ok"], report


async def test_cold_books_without_segments_say_so(
    pg: EmbeddedPostgres, cold_books: ColdBooks, tmp_path: Path
) -> None:
    dsn, _ = await cold_copy(pg, cold_books, tmp_path)
    code, stdout, stderr = await run_cli("audit", "--dsn", dsn, "--no-progress")
    assert code == 2, (stdout, stderr)  # the shard could not be audited: no findings at all
    assert "shard 0 has cold history: blocks 1 to " in stderr and "--segments ROOT" in stderr


async def test_an_altered_segment_is_named(
    pg: EmbeddedPostgres, cold_books: ColdBooks, tmp_path: Path
) -> None:
    dsn, root = await cold_copy(pg, cold_books, tmp_path)
    first = segment_paths(root / "shard-0")[0]
    target = first / "postings.parquet"
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])  # cut short
    report = await audit_shard_of(dsn, root)
    named = [p for p in report.problems if first.name in p.message]
    assert named, [str(p) for p in report.problems]
    assert {p.kind for p in named} == {FindingKind.SEGMENT_ALTERED}
    # The journal pass names it too, rather than failing: its blocks are left unchecked.
    assert any("cannot be read" in p.message for p in named)
    assert report.error == "" and report.block_count == report.head_block


async def test_a_segment_whose_rows_were_rewritten_is_caught_by_the_journal_pass(
    pg: EmbeddedPostgres, cold_books: ColdBooks, tmp_path: Path
) -> None:
    """A postings file rewritten whole (readable, every block's count right) but with every
    amount changed: the blocks' hashes no longer match their rows."""
    dsn, root = await cold_copy(pg, cold_books, tmp_path)
    first = segment_paths(root / "shard-0")[0]
    target = first / "postings.parquet"
    table = pq.read_table(target)
    amounts = table["posted_amount"]
    index = table.schema.get_field_index("posted_amount")
    table = table.set_column(index, "posted_amount", pc.add(amounts, 1))
    pq.write_table(table, target)
    report = await audit_shard_of(dsn, root)
    kinds = {p.kind for p in report.problems}
    assert FindingKind.SEGMENT_ALTERED in kinds  # check_segments: the file's digest
    altered = [p for p in report.problems if p.kind == FindingKind.BLOCK_ROWS_ALTERED]
    assert altered and all(first.name in p.message for p in altered)
    assert {p.block for p in altered} <= set(range(1, 5))  # the first segment's blocks


async def test_a_transfer_reversed_after_archiving_audits_clean(
    pg: EmbeddedPostgres, cold_books: ColdBooks, tmp_path: Path
) -> None:
    dsn, root = await cold_copy(pg, cold_books, tmp_path)
    await reverse(dsn, root, "cust-1/undo-a1", FIRST_RUN[1])
    connection = await asyncpg.connect(dsn)
    try:
        revived = await connection.fetch(
            "SELECT id FROM transactions WHERE block_sequence = 0 ORDER BY id"
        )
    finally:
        await connection.close()
    assert [r["id"] for r in revived] == [FIRST_RUN[1]]
    report = await audit_shard_of(dsn, root)
    assert [str(p) for p in report.problems] == []
    assert await archive_before(dsn, root, time.time_ns()) >= 1
    report = await audit_shard_of(dsn, root)
    assert [str(p) for p in report.problems] == []
    # The revived row altered: the audit holds it against its cold record.
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "UPDATE transactions SET code = code + 1 WHERE id = $1", FIRST_RUN[1]
        )
    finally:
        await connection.close()
    report = await audit_shard_of(dsn, root)
    assert [(p.kind, p.transaction_id) for p in report.problems] == [
        (FindingKind.SEGMENT_DATABASE_MISMATCH, FIRST_RUN[1])
    ]


async def _alter(dsn: str, sql: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def test_rows_altered_across_the_boundary_are_named(
    pg: EmbeddedPostgres, cold_books: ColdBooks, tmp_path: Path
) -> None:
    """A row a cold block kept hot, the first hot posting after an account's cold ones and an
    account's counter: each altered is named, measured against the cold records."""
    dsn, root = await cold_copy(pg, cold_books, tmp_path)
    connection = await asyncpg.connect(dsn)
    try:
        hot_from = await connection.fetchval("SELECT max(next_posting_sequence) FROM cold_segments")
        first_hot = await connection.fetchval(
            "SELECT min(sequence) FROM postings WHERE account_id = 'cust-2/deposit'"
        )
    finally:
        await connection.close()
    assert first_hot >= hot_from
    await _alter(dsn, "UPDATE transactions SET code = code + 1 WHERE id = 'cust-1/hold'")
    await _alter(
        dsn,
        "UPDATE postings SET credits_posted_after = credits_posted_after + 5, "
        f"debits_posted_after = debits_posted_after + 5 WHERE sequence = {first_hot}",
    )
    await _alter(
        dsn, "UPDATE accounts SET debits_posted = debits_posted + 7 WHERE id = 'cust-1/loan'"
    )
    report = await audit_shard_of(dsn, root)
    found = {(p.kind, p.transaction_id or p.account_id, p.posting) for p in report.problems}
    assert (FindingKind.SEGMENT_DATABASE_MISMATCH, "cust-1/hold", 0) in found
    assert any(
        kind == FindingKind.BALANCE_AFTER_BROKEN and posting == first_hot
        for kind, _, posting in found
    ), found
    assert (FindingKind.COUNTER_MISMATCH, "cust-1/loan", 0) in found
