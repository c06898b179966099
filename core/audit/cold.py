"""The audit across hot and cold history (docs/design.md, "Cold history"): a shard whose early
blocks' postings and unchanged transactions left PostgreSQL for cold segments (cold_segments
rows) is audited with those records read from the segments, one segment at a time.

- The journal pass takes each cold block's header, accounts and closures from the database (they
  stay there) and its transactions and postings from its segment, so the hash chain, the block
  structure and the postings against their transactions are checked as before. The rows a cold
  block keeps hot (holds, resolved or reversed records, `~` ids, slot moves' blocks) are the
  current state of records the segment also holds as created: each must match the segment's
  copy (same line), and counts once, as the segment's.
- A revived row (block_sequence 0: a cold transaction that changed later, written hot again)
  belongs to no block: it must be the record its segment holds, but for its state.
- The cold postings' balance-after chains are checked in the pass (per account, in sequence
  order), which keeps each account's last cold counters and the sums of its cold postings
  (ColdTotals): the hot chains start from those counters, and the accounts' counters are the
  cold sums plus the hot postings' sums (the hot part from the first hot sequence on, so that
  the postings a slot move's cold block kept hot are not counted twice).

Memory: one segment's records, plus four counters and four sums per account with cold postings.
A database with cold history audited without --segments is an error (ColdHistoryRequired),
not a flood of findings about rows that are merely elsewhere.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import journal
from core.audit.findings import About, AuditConfig, FindingKind, FindingLog
from core.model import Posting
from core.store.cold import archive
from core.store.cold.audit_read import SEGMENT_READ_ERRORS, recorded_entries, segment_blocks
from core.store.cold.catalog import ColdEntry
from core.store.cold.format import ColdBlock, ColdTransaction


class ColdHistoryRequired(Exception):
    """The database has cold history, and no segments root was given to read it from."""


def cold_history_required(shard: int, entries: list[ColdEntry]) -> ColdHistoryRequired:
    return ColdHistoryRequired(
        f"shard {shard} has cold history: blocks {entries[0].first_block} to "
        f"{entries[-1].last_block} are in {len(entries)} cold segment(s) (cold_segments), "
        "not in its tables; pass --segments ROOT (the cluster's segments root, as tally "
        "segments archive wrote them) to read them"
    )


def transaction_row(block: int, record: ColdTransaction) -> tuple[Any, ...]:
    """A cold transaction as core.store.audit.TRANSACTIONS_SQL selects a row."""
    spec = record.spec
    return (
        block, spec.id, int(spec.kind), spec.code, journal.encode_metadata(spec.metadata),
        spec.value_date, spec.timeout_seconds, spec.target_id, record.legs_text,
        record.applied_legs_text, record.timestamp_ns,
    )  # fmt: skip


def posting_row(block: int, p: Posting) -> tuple[Any, ...]:
    """A cold posting as core.store.audit.POSTINGS_SQL selects a row."""
    return (
        p.sequence, p.transaction_id, p.account_id, "D" if p.is_debit else "C", p.posted_amount,
        p.pending_delta, p.timestamp_ns, p.debits_posted_after, p.credits_posted_after,
        p.debits_pending_after, p.credits_pending_after, block,
    )  # fmt: skip


@dataclass(slots=True)
class ColdTotals:
    """Per account with cold postings: its last cold posting's counters and sequence
    (dp, cp, dq, cq, sequence), and its cold postings' sums (dp, cp, dq, cq, count)."""

    after: dict[str, tuple[int, int, int, int, int]] = field(default_factory=dict)
    sums: dict[str, list[int]] = field(default_factory=dict)
    # False once a segment could not be read: the totals then miss its postings.
    complete: bool = True

    def add(self, p: Posting) -> dict[str, Any] | None:
        """Count a cold posting; a chain row (as core.store.audit.CHAINS_SQL's) when its
        balance-after does not follow the account's previous cold posting."""
        before = self.after.get(p.account_id, (0, 0, 0, 0, 0))
        changes = (
            (p.posted_amount, 0, p.pending_delta, 0)
            if p.is_debit
            else (0, p.posted_amount, 0, p.pending_delta)
        )
        found = (
            p.debits_posted_after,
            p.credits_posted_after,
            p.debits_pending_after,
            p.credits_pending_after,
        )
        sums = self.sums.setdefault(p.account_id, [0, 0, 0, 0, 0])
        for index, change in enumerate(changes):
            sums[index] += change
        sums[4] += 1
        self.after[p.account_id] = (*found, p.sequence)
        if all(found[i] == before[i] + changes[i] for i in range(4)) or not self.complete:
            return None
        return chain_row(
            (p.sequence, p.transaction_id, p.account_id, p.is_debit),
            (p.posted_amount, p.pending_delta),
            found,
            before,
        )


def chain_row(
    ids: tuple[int, str, str, bool],
    amounts: tuple[int, int],
    after: tuple[int, int, int, int],
    before: tuple[int, int, int, int, int],
) -> dict[str, Any]:
    """A broken link as core.audit.accounts.report_chain_break reads it: the posting's
    (sequence, transaction, account, is_debit), its (posted amount, pending delta), its
    counters after, and the previous posting's counters and sequence (0: none)."""
    return {
        "sequence": ids[0],
        "transaction_id": ids[1],
        "account_id": ids[2],
        "is_debit": ids[3],
        "posted_amount": amounts[0],
        "pending_delta": amounts[1],
        **dict(zip(("dp", "cp", "dq", "cq"), after, strict=True)),
        **dict(zip(("pdp", "pcp", "pdq", "pcq"), before[:4], strict=True)),
        "previous_sequence": before[4] or None,
    }


class ColdJournal:
    """A shard's cold blocks, read one segment at a time as the journal pass asks for them in
    block order."""

    def __init__(self, root: Path, shard: int, entries: list[ColdEntry]) -> None:
        self.root = root
        self.shard = shard
        self.entries = entries
        self.last_block = entries[-1].last_block if entries else 0
        # The first posting sequence still hot.
        self.hot_from = entries[-1].next_posting_sequence if entries else 1
        self.totals = ColdTotals()
        # The cold records that may be cross-shard rows, with their blocks, as the journal
        # pass reads them (core.audit.cold_crossshard).
        self.cross_shard: list[tuple[int, ColdTransaction]] = []
        self._index = -1
        self._blocks: dict[int, ColdBlock] = {}

    @classmethod
    async def open(cls, connection: Any, config: AuditConfig) -> ColdJournal | None:
        """The shard's cold journal; None when it has no cold history."""
        timeout_s = config.statement_timeout_s
        entries = await recorded_entries(connection, timeout_s)
        if not entries:
            return None
        shard = await archive.shard_of(connection, timeout_s)
        if config.segments_root is None:
            raise cold_history_required(shard, entries)
        return cls(config.segments_root, shard, entries)

    def segment_of(self, block: int) -> str:
        """The name of the segment holding a cold block ("" for a hot one)."""
        for entry in self.entries:
            if entry.first_block <= block <= entry.last_block:
                return entry.name
        return ""

    async def block(self, sequence: int, log: FindingLog) -> ColdBlock | None:
        """A cold block's records from its segment (loaded when first asked for); None when
        its segment cannot be read, which is a finding naming the segment (once)."""
        while self._index + 1 < len(self.entries) and (
            self._index < 0 or self.entries[self._index].last_block < sequence
        ):
            self._index += 1
            entry = self.entries[self._index]
            if entry.last_block >= sequence:
                await self._load(entry, log)
        return self._blocks.get(sequence)

    async def _load(self, entry: ColdEntry, log: FindingLog) -> None:
        self._blocks = {}
        try:
            blocks = await asyncio.to_thread(segment_blocks, self.root, self.shard, entry)
        except SEGMENT_READ_ERRORS as error:
            self.totals.complete = False
            log.add(
                FindingKind.SEGMENT_ALTERED,
                About.SEGMENT,
                f"segment {entry.name}: cannot be read ({type(error).__name__}: {error}); "
                f"blocks {entry.first_block} to {entry.last_block} were not checked, nor the "
                "chains and counters of the accounts across it",
                "a readable segment",
                "unreadable",
                block=entry.first_block,
            )
            return
        self._blocks = {block.header.sequence: block for block in blocks}


def line_of(row: Any) -> str:
    """The journal line (without its kind) of a transaction row or a posting row."""
    return "|".join(map(str, row))
