"""The change stream across cold history (core.store.stream.read_page given the shard's
ColdHistory): from before the horizon it reads exactly the blocks it read before archiving,
record for record and line for line; without a cold history it refuses (ColdHistoryNeeded)
rather than read a block whose rows are gone."""

from __future__ import annotations

import time
from pathlib import Path

import asyncpg
import pytest

from core.store import stream as journal_stream
from core.store.cold.archive import archive_and_remove
from core.store.cold.history import ColdHistory
from tests.support.cold import comparable, post_journal, stream_whole


async def test_a_stream_from_before_the_horizon_is_the_journal_as_before(
    dsn: str, tmp_path: Path
) -> None:
    await post_journal(dsn, [f"cust-1/a{n}" for n in range(5)], every_kind=True)
    connection = await asyncpg.connect(dsn)
    try:
        before, posted_before = await stream_whole(connection)
        root = tmp_path / "segments"
        history = ColdHistory(root, 0)
        _, removed = await archive_and_remove(
            connection, root, created_before_ns=time.time_ns(), blocks_per_segment=4
        )
        assert len(removed) > 1 and await connection.fetchval("SELECT count(*) FROM postings") == 0
        last_cold = removed[-1].last_block
        await post_journal(dsn, [f"cust-1/b{n}" for n in range(3)], cold_dir=root)
        hot_tail, _ = await stream_whole(connection, last_cold)  # hot: no cold history needed
        after, posted_after = await stream_whole(connection, 0, history)
        expected = before + [b for b in hot_tail if b.sequence > before[-1].sequence]
        assert [comparable(b) for b in after] == [comparable(b) for b in expected]
        assert posted_after.items() >= posted_before.items()
        assert any(t.target_kind is not None for b in after for t in b.transactions)
        for block in after:  # the lines its writer hashed, made again from the cold records
            journal_stream.block_body(block)
        for position in (0, 1, last_cold - 1):
            with pytest.raises(journal_stream.ColdHistoryNeeded, match=f"block {last_cold}"):
                await journal_stream.read_page(connection, position, last_cold, 30.0)
        middle, _ = await stream_whole(connection, 3, history)
        assert [comparable(b) for b in middle] == [comparable(b) for b in after[3:]]
    finally:
        await connection.close()
