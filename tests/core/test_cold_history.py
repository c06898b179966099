"""Cold history on a real shard database: a node's journal (every kind of record, then more
transfers) archived and its rows removed (core.store.cold.archive.remove_archived), then read
across the boundary (core.store.cold.history.ColdHistory) exactly as the hot rows read before:
every history page of every size, balance-at at every posting time, every transaction by id."""

from __future__ import annotations

import time
from pathlib import Path

import asyncpg
import pytest

from core.model import TransactionState
from core.store import shard as store
from core.store.cold.archive import archive, archive_and_remove, remove_archived
from core.store.cold.format import SegmentError
from core.store.cold.history import ColdHistory
from core.store.cold.read import segment_paths
from tally.v1 import ledger_pb2 as pb
from tests.support import streams
from tests.support.cold import post_journal

CREATED = pb.RESULT_CODE_CREATED
TIMEOUT_S = 30.0
ACCOUNTS = streams.ACCOUNTS


async def _hot_reads(
    connection: asyncpg.Connection,
) -> tuple[dict[str, list[tuple[store.Posting, int]]], list[str]]:
    postings = {
        a: await store.list_postings(connection, a, 0, 1000, 0, 0, TIMEOUT_S) for a in ACCOUNTS
    }
    ids = [r["id"] for r in await connection.fetch("SELECT id FROM transactions ORDER BY id")]
    return postings, ids


def _fields(state: TransactionState) -> tuple[object, ...]:
    return tuple(getattr(state, name) for name in TransactionState.__slots__)


async def _pages(
    history: ColdHistory, connection: asyncpg.Connection, account_id: str, size: int
) -> list[tuple[store.Posting, int]]:
    read: list[tuple[store.Posting, int]] = []
    after = 0
    while True:
        page = await history.list_postings(connection, account_id, after, size, 0, 0, TIMEOUT_S)
        read.extend(page)
        if len(page) < size:
            return read
        after = page[-1][0].sequence


# Why long: one journal archived in two steps, each read whole across the boundary.
async def test_archived_history_reads_as_the_hot_rows_did(dsn: str, tmp_path: Path) -> None:
    await post_journal(dsn, [f"cust-1/a{n}" for n in range(5)], every_kind=True)
    connection = await asyncpg.connect(dsn)
    try:
        before, ids = await _hot_reads(connection)
        states = await store.load_transactions(connection, ids, TIMEOUT_S)
        root = tmp_path / "segments"
        history = ColdHistory(root, 0)
        run, removed = await archive_and_remove(
            connection, root, created_before_ns=time.time_ns(), blocks_per_segment=4
        )
        assert run.written and [r.name for r in removed] == [p.name for p in run.written]
        assert await connection.fetchval("SELECT count(*) FROM postings") == 0
        # What stays hot: the hold (resolved), the reversed transfer; the rest went cold.
        kept = {r["id"] for r in await connection.fetch("SELECT id FROM transactions")}
        assert kept == {"cust-1/hold", "cust-2/pay"}
        cold = await history.load_transactions(connection, ids, TIMEOUT_S)
        assert {i: _fields(s) for i, s in cold.items()} == {
            i: _fields(s) for i, s in states.items()
        }
        assert await history.load_transactions(connection, ["nope"], TIMEOUT_S) == {}
        await post_journal(dsn, [f"cust-1/b{n}" for n in range(3)], cold_dir=root)
        after, _ = await _hot_reads(connection)
        for account_id in ACCOUNTS:
            whole = before[account_id] + after[account_id]
            for size in (1, 2, 3, 7, 1000):
                assert await _pages(history, connection, account_id, size) == whole
            for posting, _ in whole:
                at = await history.posting_at(
                    connection, account_id, posting.timestamp_ns, TIMEOUT_S
                )
                last = [p for p, _ in whole if p.timestamp_ns <= posting.timestamp_ns][-1]
                assert at == last
            assert await history.posting_at(connection, account_id, 0, TIMEOUT_S) is None
        # The second pass moves the new blocks out too; the reads do not change.
        _, removed = await archive_and_remove(connection, root, created_before_ns=time.time_ns())
        assert removed and await connection.fetchval("SELECT count(*) FROM postings") == 0
        for account_id in ACCOUNTS:
            whole = before[account_id] + after[account_id]
            assert await _pages(history, connection, account_id, 2) == whole
        assert await remove_archived(connection, root) == []  # nothing left to move
    finally:
        await connection.close()


async def test_a_segment_altered_before_its_removal_removes_nothing(
    dsn: str, tmp_path: Path
) -> None:
    await post_journal(dsn, [f"cust-1/a{n}" for n in range(3)], every_kind=True)
    connection = await asyncpg.connect(dsn)
    try:
        root = tmp_path / "segments"
        await archive(connection, root, created_before_ns=time.time_ns())
        (path,) = segment_paths(root / "shard-0")
        target = path / "postings.parquet"
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
        count = await connection.fetchval("SELECT count(*) FROM postings")
        with pytest.raises(SegmentError, match=path.name):
            await remove_archived(connection, root)
        assert await connection.fetchval("SELECT count(*) FROM postings") == count
        assert await connection.fetchval("SELECT count(*) FROM cold_segments") == 0
    finally:
        await connection.close()
