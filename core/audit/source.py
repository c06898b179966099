"""Where the audit reads from: read-only sessions to the shard databases, and ordered queries
streamed through server-side cursors one chunk at a time (memory bounded by the chunk)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

from core import dsn as dsn_text
from core.audit.findings import AuditConfig

TIMEOUT_S = 300.0
# Rows fetched per round trip by sql_chunks (the exporter's): bounds its memory.
FETCH_ROW_COUNT: Final = 10_000


async def connect(dsn: str, config: AuditConfig) -> Any:
    """A read-only session: every transaction on it is READ ONLY unless it asks otherwise,
    which the audit never does (its role should have SELECT rights only, too)."""
    import asyncpg  # here, so that the pure checks import without a driver

    return await asyncpg.connect(
        dsn,
        timeout=config.connect_timeout_s,
        command_timeout=config.statement_timeout_s,
        server_settings={
            "application_name": "tally-audit",
            "default_transaction_read_only": "on",
        },
    )


def redact(dsn: str) -> str:
    """A DSN without its secrets, for reports and answers: the URL form's ``user:password@``
    and ``?password=`` parameters, the keyword form's ``password=...`` (quoted or not); see
    core.dsn."""
    return dsn_text.redact(dsn)


def describe_error(dsn: str, error: BaseException, *, as_repr: bool = False) -> str:
    """An error met reading the shard at `dsn`, as text without the DSN's secrets (should a
    driver's message ever quote them)."""
    text = repr(error) if as_repr else str(error)
    return dsn_text.scrub(text, dsn_text.secrets_of(dsn))


class RowStream:
    """An ordered query read through a server-side cursor, one chunk at a time."""

    def __init__(self, cursor: Any, chunk: int, timeout_s: float) -> None:
        self._cursor = cursor
        self._chunk = chunk
        self._timeout_s = timeout_s
        self._rows: list[Any] = []
        self._index = 0
        self._done = False
        self.consumed = 0

    @classmethod
    async def open(
        cls, connection: Any, sql: str, chunk: int, timeout_s: float, *args: Any
    ) -> RowStream:
        cursor = await connection.cursor(sql, *args, timeout=timeout_s)
        return cls(cursor, chunk, timeout_s)

    async def _refill(self) -> bool:
        if self._done:
            return False
        self._rows = await self._cursor.fetch(self._chunk, timeout=self._timeout_s)
        self._index = 0
        self._done = len(self._rows) < self._chunk
        return bool(self._rows)

    async def take_below(self, column: int, bound: int) -> list[Any]:
        """The next rows whose `column` is below `bound` (the stream is ordered by it)."""
        taken: list[Any] = []
        while True:
            if self._index == len(self._rows) and not await self._refill():
                return taken
            rows, start = self._rows, self._index
            end = start
            count = len(rows)
            while end < count and rows[end][column] < bound:
                end += 1
            taken.extend(rows[start:end])
            self._index = end
            self.consumed += end - start
            if end < count:
                return taken

    async def rest(self) -> list[Any]:
        """Up to one chunk of the remaining rows (call until empty)."""
        if self._index == len(self._rows) and not await self._refill():
            return []
        rows = self._rows[self._index :]
        self._index = len(self._rows)
        self.consumed += len(rows)
        return rows


async def sql_chunks(
    connection: Any, sql: str, bounds: tuple[int, int], timeout_s: float
) -> AsyncIterator[list[Any]]:
    """A query over a range ($1, $2) through a server-side cursor, FETCH_ROW_COUNT rows at a
    time (an inverted range is read as empty without asking)."""
    if bounds[0] > bounds[1]:
        return
    cursor = await connection.cursor(sql, *bounds, timeout=timeout_s)
    while True:
        rows = await cursor.fetch(FETCH_ROW_COUNT, timeout=timeout_s)
        yield rows
        if len(rows) < FETCH_ROW_COUNT:
            break
