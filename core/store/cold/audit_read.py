"""Reads of a shard's cold history for the auditor's tools (core.audit: the audit's journal
pass, the journal export, statements), which walk the journal in order rather than look up one
account's page: the cold segments a database records, a segment's blocks, the cold records of
ids, an account's last cold posting before a sequence or a time.

Unlike ColdHistory's reads (which trust verified segments), these let every error of a
damaged segment through to the caller, which names the segment (SEGMENT_READ_ERRORS).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.model import Posting
from core.store.cold.catalog import (
    ENTRY_COLUMNS,
    ColdEntry,
    cold_entries,
    entry_of,
    id_hash,
    shard_directory,
)
from core.store.cold.format import ColdBlock, ColdTransaction, SegmentError
from core.store.cold.read import Segment
from core.store.cold.tables import posting_of

Connection = Any  # asyncpg.Connection

# What reading a damaged segment can raise: its own checks, a file that is gone or cut, bytes
# Parquet cannot decode.
SEGMENT_READ_ERRORS: Final = (SegmentError, OSError, ValueError, KeyError, pa.ArrowException)

_HAS_TABLE_SQL: Final = "SELECT to_regclass('cold_segments') IS NOT NULL"
_CANDIDATES_SQL: Final = f"""
SELECT {ENTRY_COLUMNS}, array(SELECT unnest(id_hashes) INTERSECT SELECT unnest($1::bigint[]))
    AS matched
FROM cold_segments WHERE id_hashes && $1::bigint[] ORDER BY last_block
"""


async def recorded_entries(connection: Connection, timeout_s: float) -> list[ColdEntry]:
    """The database's cold segments in journal order; none on a schema before cold history."""
    if not await connection.fetchval(_HAS_TABLE_SQL, timeout=timeout_s):
        return []
    return await cold_entries(connection, timeout_s)


def segment_blocks(root: Path, shard: int, entry: ColdEntry) -> list[ColdBlock]:
    """Every block of a recorded segment, with its records (SEGMENT_READ_ERRORS when it
    cannot be read)."""
    with Segment(shard_directory(root, shard) / entry.name) as segment:
        blocks = segment.blocks()
    if [b.header.sequence for b in blocks] != list(range(entry.first_block, entry.last_block + 1)):
        raise SegmentError(
            f"segment {entry.name}: holds other blocks than {entry.first_block} to "
            f"{entry.last_block}, which cold_segments records"
        )
    return blocks


async def cold_records(
    connection: Connection, root: Path, shard: int, ids: Sequence[str], timeout_s: float
) -> dict[str, tuple[ColdTransaction, int, str]]:
    """The records of these ids that cold segments hold, each with its block and segment name
    (one index probe; a segment is opened only for ids whose hash it holds)."""
    by_hash: dict[int, list[str]] = {}
    for transaction_id in ids:
        by_hash.setdefault(id_hash(transaction_id), []).append(transaction_id)
    rows = await connection.fetch(_CANDIDATES_SQL, list(by_hash), timeout=timeout_s)
    found: dict[str, tuple[ColdTransaction, int, str]] = {}
    for row in rows:
        entry = entry_of(row)
        with Segment(shard_directory(root, shard) / entry.name) as segment:
            for transaction_id in (i for h in row["matched"] for i in by_hash[h]):
                held = segment.transaction(transaction_id)
                if held is not None and transaction_id not in found:
                    found[transaction_id] = (held[0], held[1], entry.name)
    return found


def _postings_of(path: Path, accounts: Iterable[str], mask_of: Any) -> list[tuple[Posting, int]]:
    """The postings of these accounts in a segment that mask_of(table) keeps, in sequence
    order, each with its block (only the row groups whose account range meets them)."""
    wanted = sorted(set(accounts))
    if not wanted:
        return []
    file = pq.ParquetFile(path / "postings.parquet")
    index = file.schema_arrow.get_field_index("account_id")
    found: list[tuple[Posting, int]] = []
    for group in range(file.metadata.num_row_groups):
        statistics = file.metadata.row_group(group).column(index).statistics
        if statistics is not None and statistics.has_min_max:
            if statistics.max < wanted[0] or statistics.min > wanted[-1]:
                continue
        table = file.read_row_group(group)
        mask = pc.and_(pc.is_in(table["account_id"], pa.array(wanted)), mask_of(table))
        for row in table.filter(mask).to_pylist():
            found.append((posting_of(row), int(row["block_sequence"])))
    found.sort(key=lambda item: item[0].sequence)
    return found


def last_postings_before(
    root: Path, shard: int, entry: ColdEntry, accounts: Iterable[str], sequence: int
) -> dict[str, Posting]:
    """Each account's last posting in the segment with a sequence below `sequence`."""
    path = shard_directory(root, shard) / entry.name
    read = _postings_of(path, accounts, lambda t: pc.less(t["sequence"], sequence))
    return {posting.account_id: posting for posting, _ in read}


def last_posting_before_ns(
    root: Path, shard: int, entry: ColdEntry, account_id: str, before_ns: int, skip: Sequence[str]
) -> Posting | None:
    """The account's last posting in the segment before before_ns whose transaction id starts
    with none of `skip`."""
    path = shard_directory(root, shard) / entry.name
    read = _postings_of(path, [account_id], lambda t: pc.less(t["timestamp_ns"], before_ns))
    kept = [p for p, _ in read if not any(p.transaction_id.startswith(s) for s in skip)]
    return kept[-1] if kept else None


def postings_between_ns(
    root: Path, shard: int, entry: ColdEntry, account_id: str, from_ns: int, to_ns: int
) -> list[tuple[Posting, int]]:
    """The account's postings in the segment with from_ns <= timestamp < to_ns (to_ns 0: no
    end), in sequence order, each with its block."""

    def mask(table: pa.Table) -> Any:
        low = pc.greater_equal(table["timestamp_ns"], from_ns)
        return pc.and_(low, pc.less(table["timestamp_ns"], to_ns)) if to_ns else low

    return _postings_of(shard_directory(root, shard) / entry.name, [account_id], mask)
