"""A shard's history reads, wherever its records lie (docs/design.md, "Cold history"): the
protocol the node reads through, and its hot implementation, the database's rows alone, for a
shard without cold segments. core.store.cold.history.ColdHistory is the other one; it is
imported only by a node given a cold directory (it brings pyarrow, some 50 MB a process)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from core.model import Posting, TransactionState
from core.store import shard as hot
from core.store.cold.catalog import cold_entries

Connection = Any  # asyncpg.Connection or a pool


class History(Protocol):
    """A shard's history reads, wherever its records lie: ColdHistory given its segments'
    directory, HotHistory when it has none (every record hot)."""

    async def load_transactions(
        self, connection: Connection, ids: Iterable[str], timeout_s: float
    ) -> dict[str, TransactionState]: ...

    async def list_postings(
        self,
        connection: Connection,
        account_id: str,
        after_sequence: int,
        limit: int,
        from_ns: int,
        to_ns: int,
        timeout_s: float,
    ) -> list[tuple[Posting, int]]: ...

    async def posting_at(
        self, connection: Connection, account_id: str, at_ns: int, timeout_s: float
    ) -> Posting | None: ...

    async def check(self, connection: Connection, timeout_s: float) -> None: ...

    def close(self) -> None: ...


class ColdHistoryError(RuntimeError):
    """The database and the segments' directory do not make one history: a node refuses to
    serve on them (docs/design.md, "Cold history")."""


class HotHistory:
    """A shard without cold history: its records are its database's rows (core.store.shard)."""

    async def load_transactions(
        self, connection: Connection, ids: Iterable[str], timeout_s: float
    ) -> dict[str, TransactionState]:
        return await hot.load_transactions(connection, ids, timeout_s)

    async def list_postings(
        self,
        connection: Connection,
        account_id: str,
        after_sequence: int,
        limit: int,
        from_ns: int,
        to_ns: int,
        timeout_s: float,
    ) -> list[tuple[Posting, int]]:
        return await hot.list_postings(
            connection, account_id, after_sequence, limit, from_ns, to_ns, timeout_s
        )

    async def posting_at(
        self, connection: Connection, account_id: str, at_ns: int, timeout_s: float
    ) -> Posting | None:
        return await hot.posting_at(connection, account_id, at_ns, timeout_s)

    async def check(self, connection: Connection, timeout_s: float) -> None:
        """Refuse a database whose old records are cold: answering from its rows alone would
        be wrong (a missing history page, an archived id applied again)."""
        entries = await cold_entries(connection, timeout_s)
        if entries:
            raise ColdHistoryError(
                f"this shard's blocks 1 to {entries[-1].last_block} are in {len(entries)} cold "
                "segment(s), their records no longer in the database: give the node the "
                "segments' directory (--cold-dir ROOT, the --dir of tally segments archive)"
            )

    def close(self) -> None:
        pass
