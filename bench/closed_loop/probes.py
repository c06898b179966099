"""Counters read from PostgreSQL at the edges of a window: WAL bytes written (the disk side of a
transfer) and, for Tally, its journal blocks (one block is one commit of one writer batch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import asyncpg

PROBE_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class Reading:
    wal_bytes: int
    block_sequence: int


class Probe:
    def __init__(self, connection: Any, reads_journal: bool) -> None:
        self._connection = connection
        self._reads_journal = reads_journal

    @classmethod
    async def open(cls, dsn: str, reads_journal: bool) -> Probe:
        return cls(await asyncpg.connect(dsn, timeout=30.0), reads_journal)

    async def close(self) -> None:
        await self._connection.close(timeout=10.0)

    async def read(self) -> Reading:
        wal_bytes = await self._connection.fetchval(
            "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint", timeout=PROBE_TIMEOUT_S
        )
        block_sequence = 0
        if self._reads_journal:
            block_sequence = await self._connection.fetchval(
                "SELECT coalesce(max(sequence), 0) FROM journal_blocks", timeout=PROBE_TIMEOUT_S
            )
        return Reading(int(wal_bytes), int(block_sequence))

    async def blocks_between(self, start: Reading, end: Reading) -> tuple[int, int]:
        """(blocks, transactions in them) committed between two readings."""
        if not self._reads_journal:
            return 0, 0
        row = await self._connection.fetchrow(
            """
            SELECT count(*) AS blocks, coalesce(sum(transaction_count), 0) AS transactions
            FROM journal_blocks WHERE sequence > $1 AND sequence <= $2
            """,
            start.block_sequence,
            end.block_sequence,
            timeout=PROBE_TIMEOUT_S,
        )
        return int(row["blocks"]), int(row["transactions"])
