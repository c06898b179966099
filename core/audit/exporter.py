"""The exporter: one shard's journal for a period, written as core.audit.export defines it.

Reads the shard database through core.store.export's queries (any asyncpg-like connection), in
one REPEATABLE READ READ ONLY snapshot, streamed through a server-side cursor per file. The
format, the line digests and the verifier stay in core.audit.export, which imports nothing
outside the standard library so that an auditor can run it alone; this module is the part that
needs Tally.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.audit.cold_export import BalancesTap, cold_rows
from core.audit.cold_reads import ShardCold
from core.audit.export import (
    FORMAT,
    FORMATS,
    GENESIS_HASH_HEX,
    JOURNAL_FILES,
    MANIFEST_KEYS,
    SCHEMAS,
    ExportWriter,
)
from core.audit.source import sql_chunks
from core.store import export as queries


@dataclass(frozen=True, slots=True)
class Selection:
    """Blocks created in [from_ns, to_ns) (0: unbounded), or blocks first..last (0: open)."""

    from_ns: int = 0
    to_ns: int = 0
    first_block: int = 0
    last_block: int = 0


@dataclass(slots=True)
class ExportSummary:
    directory: str
    first_block: int
    last_block: int
    head_hash: str
    row_counts: dict[str, int]


Progress = Callable[[str, int], None]
"""Called with (file name, rows written so far) while exporting."""


async def export_shard(
    connection: Any,
    directory: Path,
    shard: str,
    selection: Selection,
    export_format: str,
    timeout_s: float,
    progress: Progress | None = None,
    segments_root: Path | None = None,
) -> ExportSummary:
    """Write one shard's export for the selection into an existing directory, from one
    consistent snapshot. A shard with cold history has its archived blocks' transactions and
    postings read from the cluster's segments_root (core.audit.cold_reads), so that the files
    are those it would have written before archiving; without it, ColdHistoryRequired."""
    if export_format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        cold = await ShardCold.open(connection, segments_root, timeout_s)
        first, last = await _block_range(connection, selection, timeout_s)
        before = await _block_row(connection, first - 1, timeout_s)
        head = await _block_row(connection, last, timeout_s) if last >= first else before
        anchor = before["hash"] if before else GENESIS_HASH_HEX
        first_posting = before["next_posting_sequence"] if before else 1
        next_posting = head["next_posting_sequence"] if head else 1
        counts: dict[str, int] = {}
        tap = BalancesTap()
        for name in ("blocks", *JOURNAL_FILES, "balances"):
            rows = _rows(connection, name, (first, last), (first_posting, next_posting), timeout_s)
            if cold is not None:
                rows = cold_rows(
                    connection, cold, name, (first, last), (first_posting, next_posting), tap,
                    timeout_s, rows,
                )  # fmt: skip
            writer = ExportWriter(directory, SCHEMAS[name], export_format)
            try:
                async for chunk in rows:
                    for row in chunk:
                        writer.write(list(row))
                    if progress is not None:
                        progress(writer.schema.name, writer.row_count)
            finally:
                writer.close()
            counts[name] = writer.row_count
    head_hash = head["hash"] if head else GENESIS_HASH_HEX
    manifest = {
        "format": FORMAT,
        "shard": shard,
        "first_block": first,
        "last_block": last,
        "anchor_hash": anchor,
        "head_hash": head_hash,
        "first_posting_sequence": first_posting,
        "next_posting_sequence": next_posting,
        "period_from_ns": selection.from_ns,
        "period_to_ns": selection.to_ns,
        "block_count": counts["blocks"],
        **{name[:-1] + "_count": counts[name] for name in (*JOURNAL_FILES, "balances")},
        "exported_at_ns": time.time_ns(),
    }
    writer = ExportWriter(directory, SCHEMAS["manifest"], export_format)
    for key in MANIFEST_KEYS:
        writer.write([key, str(manifest[key])])
    writer.close()
    return ExportSummary(str(directory), first, last, head_hash, counts)


async def _block_range(connection: Any, selection: Selection, timeout_s: float) -> tuple[int, int]:
    """[first, last] block sequences; first > last when the period holds no block."""
    if selection.first_block or selection.last_block:
        top = await connection.fetchval(queries.LAST_BLOCK_SQL, timeout=timeout_s)
        first = max(selection.first_block, 1)
        last = min(selection.last_block or top, top)
        return first, last
    row = await connection.fetchrow(
        queries.PERIOD_BLOCKS_SQL, selection.from_ns, selection.to_ns, timeout=timeout_s
    )
    if row["first"] is None:
        # Nothing in the period: an empty export anchored after the last block before it.
        last = await connection.fetchval(
            queries.LAST_BLOCK_BEFORE_SQL, selection.from_ns, timeout=timeout_s
        )
        return last + 1, last
    return int(row["first"]), int(row["last"])


async def _block_row(connection: Any, sequence: int, timeout_s: float) -> Any:
    if sequence < 1:
        return None
    return await connection.fetchrow(queries.BLOCK_HEAD_SQL, sequence, timeout=timeout_s)


def _rows(
    connection: Any,
    name: str,
    blocks: tuple[int, int],
    postings: tuple[int, int],
    timeout_s: float,
) -> AsyncIterator[list[Any]]:
    """A file's rows from the database, in chunks."""
    if name in queries.BY_POSTING_SQL:
        return sql_chunks(connection, queries.BY_POSTING_SQL[name], postings, timeout_s)
    return sql_chunks(connection, queries.BY_BLOCK_SQL[name], blocks, timeout_s)
