"""A shard's cold history as the journal export and statements read it (docs/design.md, "Cold
history"): the rows of blocks whose postings and unchanged transactions left PostgreSQL are read
from their segments, the rest from the tables, so that an export or a statement is the same
before and after archiving. The boundary is the first hot posting sequence (the last cold
segment's next_posting_sequence): postings below it are the segments', at or above it the
tables' (the postings a slot move's cold block kept hot are below it, so read once); a cold
block's transactions are its segment's records (the rows it kept hot are the same lines).

Without the segments root, a database with cold history is an error (ColdHistoryRequired),
never a statement or an export silently missing the archived rows.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.audit.cold import cold_history_required, transaction_row
from core.model import Posting
from core.store.cold import archive
from core.store.cold.audit_read import (
    cold_records,
    last_posting_before_ns,
    postings_between_ns,
    recorded_entries,
)
from core.store.cold.catalog import ColdEntry


def counters(posting: Posting) -> tuple[int, int, int, int]:
    return (
        posting.debits_posted_after,
        posting.credits_posted_after,
        posting.debits_pending_after,
        posting.credits_pending_after,
    )


@dataclass(frozen=True, slots=True)
class ShardCold:
    """One shard's recorded cold segments, under the cluster's segments root."""

    root: Path
    shard: int
    entries: list[ColdEntry]

    @property
    def hot_from(self) -> int:
        """The first posting sequence still in the tables."""
        return self.entries[-1].next_posting_sequence

    @property
    def last_block(self) -> int:
        return self.entries[-1].last_block

    @classmethod
    async def open(cls, connection: Any, root: Path | None, timeout_s: float) -> ShardCold | None:
        """The shard's cold history (None: it has none); ColdHistoryRequired when it has some
        and no root was given."""
        entries = await recorded_entries(connection, timeout_s)
        if not entries:
            return None
        shard = await archive.shard_of(connection, timeout_s)
        if root is None:
            raise cold_history_required(shard, entries)
        return cls(root, shard, entries)

    # ---- statements ----

    async def balance_before(
        self, account_id: str, before_ns: int, skip: tuple[str, ...]
    ) -> tuple[int, int, int, int] | None:
        """The counters after the account's last cold posting before before_ns whose
        transaction id starts with none of `skip` (None: it has none)."""

        def read() -> Posting | None:
            for entry in reversed(self.entries):
                found = last_posting_before_ns(
                    self.root, self.shard, entry, account_id, before_ns, skip
                )
                if found is not None:
                    return found
            return None

        posting = await asyncio.to_thread(read)
        return None if posting is None else counters(posting)

    async def postings_between(
        self, account_id: str, from_ns: int, to_ns: int
    ) -> list[tuple[Posting, int]]:
        """The account's cold postings in [from_ns, to_ns), in sequence order."""

        def read() -> list[tuple[Posting, int]]:
            found: list[tuple[Posting, int]] = []
            for entry in self.entries:
                found.extend(
                    postings_between_ns(self.root, self.shard, entry, account_id, from_ns, to_ns)
                )
            return found

        return await asyncio.to_thread(read)

    async def transaction_rows(
        self, connection: Any, ids: list[str], timeout_s: float
    ) -> dict[str, tuple[Any, ...]]:
        """The cold records of these ids, as core.store.audit.TRANSACTIONS_SQL's rows."""
        records = await cold_records(connection, self.root, self.shard, ids, timeout_s)
        return {i: transaction_row(block, record) for i, (record, block, _) in records.items()}


def line_row(posting: Posting, transaction: Any) -> dict[str, Any]:
    """A statement line's row (core.store.statement.LINES_SQL's columns by name) of a cold
    posting, with what its transaction says (a hot row by name, a cold one as
    core.store.audit.TRANSACTIONS_SQL's row, or None)."""
    if transaction is None:
        details: tuple[Any, ...] = ("", 0, 0, "{}", "")
    elif isinstance(transaction, tuple):
        details = (transaction[5], transaction[2], transaction[3], transaction[4], transaction[7])
    else:
        details = tuple(
            transaction[k] for k in ("value_date", "kind", "code", "metadata", "target_id")
        )
    return {
        "sequence": posting.sequence,
        "timestamp_ns": posting.timestamp_ns,
        "transaction_id": posting.transaction_id,
        "is_debit": posting.is_debit,
        "posted_amount": posting.posted_amount,
        **dict(zip(("value_date", "kind", "code", "metadata", "target_id"), details, strict=True)),
    }
