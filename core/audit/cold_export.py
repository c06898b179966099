"""The journal export's files across hot and cold history (core.audit.exporter, with
core.audit.cold_reads' boundary): an archived block's transactions and postings come from its
segment, one segment at a time, the rest from the tables, in the order and with the values the
tables gave before archiving, so the files are the same. The balances file, whose SQL reads the
tables alone, is made here instead: each account touched in the period (counted as the postings
file is written), its counters after its last posting before the period (the tables' from the
first hot posting on, else the segments') and after its last posting in it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from core.audit.cold import posting_row, transaction_row
from core.audit.cold_reads import ShardCold, counters
from core.audit.source import sql_chunks
from core.store import export as queries
from core.store.cold.audit_read import last_postings_before, segment_blocks
from core.store.cold.catalog import ColdEntry


class BalancesTap:
    """The accounts the postings file touches: count and counters after the last, by id."""

    def __init__(self) -> None:
        self.touched: dict[str, list[int]] = {}

    def see(self, rows: list[Any]) -> list[Any]:
        for row in rows:  # BY_POSTING_SQL["postings"]'s columns
            seen = self.touched.setdefault(row[3], [0, 0, 0, 0, 0])
            seen[0] += 1
            seen[1:] = row[8:12]
        return rows


async def cold_rows(
    connection: Any,
    cold: ShardCold,
    name: str,
    blocks: tuple[int, int],
    postings: tuple[int, int],
    tap: BalancesTap,
    timeout_s: float,
    hot: AsyncIterator[list[Any]],
) -> AsyncIterator[list[Any]]:
    """A file's rows, in chunks, on a shard with cold history (`hot`: the tables' rows, for
    the files cold history leaves in the tables)."""
    if name == "transactions":
        first, last = blocks
        async for chunk in _segment_rows(cold, name, (first, min(last, cold.last_block))):
            yield chunk
        sql = queries.BY_BLOCK_SQL[name]
        async for chunk in sql_chunks(
            connection, sql, (max(first, cold.last_block + 1), last), timeout_s
        ):
            yield chunk
    elif name == "postings":
        low, end = postings
        async for chunk in _segment_rows(cold, name, (low, min(end, cold.hot_from))):
            yield tap.see(chunk)
        sql = queries.BY_POSTING_SQL[name]
        async for chunk in sql_chunks(connection, sql, (max(low, cold.hot_from), end), timeout_s):
            yield tap.see(chunk)
    elif name == "balances":
        yield await _balances(connection, cold, tap, postings[0], timeout_s)
    else:
        async for chunk in hot:
            yield chunk


async def _segment_rows(
    cold: ShardCold, name: str, bounds: tuple[int, int]
) -> AsyncIterator[list[Any]]:
    """The segments' transactions of blocks bounds[0]..bounds[1], or postings of sequences
    [bounds[0], bounds[1]), one segment at a time."""
    low, high = bounds
    for entry in cold.entries:
        if name == "transactions" and not (entry.first_block <= high and entry.last_block >= low):
            continue
        if name == "postings" and not (
            entry.first_posting_sequence < high and entry.next_posting_sequence > low
        ):
            continue
        yield await asyncio.to_thread(_read_rows, cold, entry, name, low, high)


def _read_rows(cold: ShardCold, entry: ColdEntry, name: str, low: int, high: int) -> list[Any]:
    rows: list[Any] = []
    for block in segment_blocks(cold.root, cold.shard, entry):
        sequence = block.header.sequence
        if name == "transactions":
            if low <= sequence <= high:
                rows.extend(transaction_row(sequence, t) for t in block.transactions)
            continue
        for posting in block.postings:
            if low <= posting.sequence < high:
                row = posting_row(sequence, posting)
                rows.append((row[-1], *row[:-1]))  # BY_POSTING_SQL["postings"]'s order
    return rows


async def _balances(
    connection: Any, cold: ShardCold, tap: BalancesTap, first_posting: int, timeout_s: float
) -> list[Any]:
    """BY_POSTING_SQL["balances"]'s rows, from the touched accounts and their openings."""
    ids = list(tap.touched)
    if not ids:
        return []
    ordered = [
        r[0] for r in await connection.fetch(queries.ORDERED_IDS_SQL, ids, timeout=timeout_s)
    ]
    currencies = {
        r["id"]: r["currency"]
        for r in await connection.fetch(queries.CURRENCIES_SQL, ids, timeout=timeout_s)
    }
    openings: dict[str, tuple[int, ...]] = {
        r[0]: tuple(r[1:5])
        for r in await connection.fetch(
            queries.LAST_HOT_BEFORE_SQL, ids, cold.hot_from, first_posting, timeout=timeout_s
        )
    }
    wanted = [i for i in ids if i not in openings]
    for entry in reversed(cold.entries):
        if not wanted:
            break
        if entry.first_posting_sequence >= first_posting:
            continue
        found = await asyncio.to_thread(
            last_postings_before, cold.root, cold.shard, entry, wanted, first_posting
        )
        openings.update({i: counters(p) for i, p in found.items()})
        wanted = [i for i in wanted if i not in found]
    rows = []
    for account_id in ordered:
        count, *after = tap.touched[account_id]
        opening = openings.get(account_id, (0, 0, 0, 0))
        rows.append((account_id, currencies.get(account_id, ""), *opening, *after, count))
    return rows
