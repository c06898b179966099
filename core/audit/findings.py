"""The audit's findings and reports: what is wrong (Finding, kept and counted by FindingLog),
how an audit is configured (AuditConfig, Anchor), and what it found per shard and over the
cluster (ShardReport, CrossShardReport, AuditReport), as the checks fill them in."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from core.signing import Head, VerifyKey

CHECK_NAMES: Final = (
    "journal",
    "postings",
    "chains",
    "counters",
    "trial balance",
    "clearing",
    "holds",
    "lease",
    "anchors",
    "moves",
    "segments",
)
# The shard number of findings about the cluster as a whole (its trial balance, cross-shard
# transactions).
CLUSTER: Final = -1
COUNTER_NAMES: Final = ("debits_posted", "credits_posted", "debits_pending", "credits_pending")

Progress = Callable[[int, str, int, int], None]
"""Called with (shard, phase, done, total) while a shard is audited; phases are "journal"
(postings streamed) and "accounts" (accounts checked)."""


# ---- findings ----


class FindingKind(enum.IntEnum):
    """What is wrong, machine-readable. Mirrors tally.v1.FindingKind number for number (checked
    by a test); the hundreds are the check (1 journal ... 9 anchors, 10 moves, 11 segments, as
    CHECK_NAMES)."""

    # journal
    BLOCK_MISSING = 101
    EPOCH_DECREASED = 102
    POSTING_RANGE_BACKWARDS = 103
    POSTING_MISSING = 104
    POSTING_IN_WRONG_BLOCK = 105
    BLOCK_COUNT_MISMATCH = 106
    BLOCK_HASH_ALTERED = 107
    BLOCK_ROWS_ALTERED = 108
    BLOCK_HASH_MISMATCH = 109
    PREVIOUS_HASH_ALTERED = 110
    PREVIOUS_HASH_MISMATCH = 111
    ROW_OUTSIDE_JOURNAL = 112
    POSTING_BEYOND_JOURNAL = 113
    BLOCK_UNSIGNED = 114
    BLOCK_SIGNATURE_INVALID = 115
    BLOCK_SIGNED_BY_UNKNOWN_KEY = 116
    # postings
    LEGS_UNREADABLE = 201
    TRANSACTION_UNBALANCED = 202
    POSTING_NOT_A_LEG = 203
    POSTING_DIFFERS_FROM_LEG = 204
    LEG_WITHOUT_POSTING = 205
    POSTING_WITHOUT_TRANSACTION = 206
    # chains
    BALANCE_AFTER_BROKEN = 301
    # counters
    POSTINGS_OF_UNKNOWN_ACCOUNT = 401
    COUNTER_MISMATCH = 402
    LIMIT_EXCEEDED = 403
    SPREAD_ACCOUNT_FLAG = 404
    CLOSED_ACCOUNT_NOT_EMPTY = 405
    # trial balance
    TRIAL_BALANCE_UNBALANCED = 501
    # clearing
    CLEARING_COUNTERS_MISMATCH = 601
    CROSS_SHARD_UNBALANCED = 602
    CROSS_SHARD_CONTRADICTION = 603
    CROSS_SHARD_UNDECIDED = 604
    CROSS_SHARD_NOT_RECHECKED = 605
    # holds
    HOLD_WITHOUT_TRANSACTION = 701
    HOLD_OF_WRONG_KIND = 702
    HOLD_STATUS_MISMATCH = 703
    HOLD_DEADLINE_MISMATCH = 704
    HOLD_PAST_DEADLINE = 705
    PENDING_WITHOUT_HOLD = 706
    # lease
    LEASE_AHEAD_OF_JOURNAL = 801
    # anchors
    ANCHOR_MISMATCH = 901
    PUBLISHED_HEAD_MISMATCH = 902
    PUBLISHED_HEAD_MISSING = 903
    # moves (slot moves: docs/design.md, "Moving slots")
    MOVE_HALF_DONE = 1001
    MOVE_IN_WITHOUT_OUT = 1002
    MOVE_UNBALANCED = 1003
    MOVES_COUNTERS_MISMATCH = 1004
    MOVED_RECORDS_MISMATCH = 1005
    MOVED_RECORD_ALTERED = 1006
    # segments (cold segments: core/store/cold, tally audit --segments)
    SEGMENT_ALTERED = 1101
    SEGMENT_CHAIN_BROKEN = 1102
    SEGMENT_DATABASE_MISMATCH = 1103

    @property
    def check(self) -> str:
        return CHECK_NAMES[self.value // 100 - 1]


class About(enum.StrEnum):
    """What a finding's subject is, which says how its ids are shown."""

    BLOCK = "block"
    BLOCKS = "blocks"
    POSTING = "posting"
    TRANSACTION = "transaction"
    ACCOUNT = "account"
    CLOSURE = "closure"
    HOLD = "hold"
    CURRENCY = "currency"
    CLEARING = "clearing account"
    CROSS_SHARD = "cross-shard transaction"
    MOVE = "slot move"
    SEGMENT = "cold segment"


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong, with the ids of what it is about (0 or "" where they do not apply)."""

    shard: int
    kind: FindingKind
    about: About
    message: str
    expected: str = ""
    found: str = ""
    block: int = 0
    # The last block of a range (About.BLOCKS).
    block_last: int = 0
    transaction_id: str = ""
    posting: int = 0
    account_id: str = ""
    currency: str = ""
    move_id: str = ""

    @property
    def check(self) -> str:
        return self.kind.check

    @property
    def subject(self) -> str:
        about = self.about
        if about is About.BLOCK:
            return f"block {self.block}"
        if about is About.BLOCKS:
            return f"blocks {self.block}..{self.block_last}"
        if about is About.POSTING:
            return (
                f"posting {self.posting} (transaction {self.transaction_id}, "
                f"account {self.account_id})"
            )
        if about is About.TRANSACTION:
            block = f" (block {self.block})" if self.block else ""
            return f"transaction {self.transaction_id}{block}"
        if about is About.ACCOUNT:
            return f"account {self.account_id}"
        if about is About.CLOSURE:
            return f"closure of {self.account_id}"
        if about is About.HOLD:
            return f"hold {self.transaction_id}"
        if about is About.CURRENCY:
            return self.currency
        if about is About.CLEARING:
            return self.account_id
        if about is About.SEGMENT:
            return "cold segments" + (f", block {self.block}" if self.block else "")
        if about is About.MOVE:
            record = f", record {self.transaction_id}" if self.transaction_id else ""
            currency = f" ({self.currency})" if self.currency else ""
            return f"move {self.move_id}{record}{currency}"
        return f"cross-shard transaction {self.transaction_id}"

    def __str__(self) -> str:
        where = "cluster" if self.shard == CLUSTER else f"shard {self.shard}"
        return f"{where}: {self.subject}: {self.message}"


class FindingLog:
    """A shard's findings: the first count_max of each check kept, all counted. Findings that
    name a currency outside `currencies` (when given) are left out."""

    def __init__(
        self, shard: int, count_max: int, currencies: frozenset[str] = frozenset()
    ) -> None:
        self.shard = shard
        self.count_max = count_max
        self.currencies = currencies
        self.kept: list[Finding] = []
        self.counts: dict[str, int] = dict.fromkeys(CHECK_NAMES, 0)

    def add(
        self,
        kind: FindingKind,
        about: About,
        message: str,
        expected: object = "",
        found: object = "",
        *,
        block: int = 0,
        block_last: int = 0,
        transaction_id: str = "",
        posting: int = 0,
        account_id: str = "",
        currency: str = "",
        move_id: str = "",
    ) -> None:
        if currency and self.currencies and currency not in self.currencies:
            return
        check = kind.check
        self.counts[check] = self.counts.get(check, 0) + 1
        if self.counts[check] <= self.count_max:
            self.kept.append(
                Finding(
                    self.shard,
                    kind,
                    about,
                    message,
                    str(expected),
                    str(found),
                    block,
                    block_last,
                    transaction_id,
                    posting,
                    account_id,
                    currency,
                    move_id,
                )
            )

    def sorted_kept(self) -> list[Finding]:
        return sorted(self.kept, key=lambda finding: CHECK_NAMES.index(finding.check))


# ---- configuration and reports ----


@dataclass(frozen=True, slots=True)
class Anchor:
    """A block hash recorded outside the database (an export's head, a published digest)."""

    shard: int
    block: int
    hash_hex: str


@dataclass(frozen=True, slots=True)
class AuditConfig:
    # Rows per cursor round trip: the audit's memory is a few chunks and one block.
    fetch_row_count: int = 10_000
    # Findings kept per check and shard; the rest are counted.
    problem_count_max: int = 1_000
    # Budget for every statement and fetch.
    statement_timeout_s: float = 600.0
    connect_timeout_s: float = 30.0
    # A hold this long past its deadline is a problem (the node sweeps every 0.5 s); None skips.
    hold_grace_s: float | None = 60.0
    # "Now" for hold deadlines, nanoseconds since the epoch (0: the clock when the audit starts).
    now_ns: int = 0
    # Holds remembered while streaming, so partial posts find the amounts held; misses are read.
    hold_cache_count_max: int = 100_000
    # Shards audited at once.
    shard_concurrency_max: int = 4
    anchors: tuple[Anchor, ...] = ()
    # Public keys the block heads' signatures are checked with (by key id; several for
    # rotation). Empty: signatures are not checked, but an unsigned block after a signed one
    # is still a finding.
    verify_keys: tuple[VerifyKey, ...] = ()
    # Heads published outside the database (tally node --publish-heads), every shard's: each
    # must name the hash the database holds for its block.
    published_heads: tuple[Head, ...] = ()
    # Only these currencies' trial balances, clearing and findings (empty: every currency).
    currencies: frozenset[str] = frozenset()
    # Cross-shard transactions that did not net in the first snapshots, read again (see
    # check_cross_shard); beyond this many they are findings.
    recheck_count_max: int = 10_000
    # The root of the cluster's cold segments (a directory per shard, core.store.cold.archive):
    # each shard's are verified and held against its database. None: no segments checked.
    segments_root: Path | None = None


@dataclass(slots=True)
class MoveSide:
    """One side of a slot move on a shard, as its audit read it: the other side's shard, what
    its entries posted to the slot-move accounts (per currency: [debits, credits]) and the
    count and digest of the records its summary committed to (a move-in's first entry; a
    move-out's ~records entry, since moves are paged: None before)."""

    peer_shard: int
    moves_legs: dict[str, list[int]] = field(default_factory=dict)
    summary: tuple[int, str] | None = None


@dataclass(slots=True)
class ShardReport:
    shard: int
    target: str
    block_count: int = 0
    transaction_count: int = 0
    posting_count: int = 0
    account_count: int = 0
    hold_count: int = 0
    head_block: int = 0
    head_hash: str = ""
    # Per currency: [debits_posted, credits_posted, debits_pending, credits_pending].
    trial_balance: dict[str, list[int]] = field(default_factory=dict)
    # The same sums over this shard's clearing pieces only.
    clearing: dict[str, list[int]] = field(default_factory=dict)
    # Cross-shard transactions (attempts) with rows on this shard.
    cross_shard_count: int = 0
    problems: list[Finding] = field(default_factory=list)
    problem_counts: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    # Set when the shard could not be audited at all (unreachable, no schema).
    error: str = ""
    # This shard's cross-shard pieces, one line per attempt in key order (check_cross_shard).
    spool: IO[str] | None = None
    # The slot moves with a side here: (move id, "out" | "in") -> that side (check_moves).
    move_sides: dict[tuple[str, str], MoveSide] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error and not any(self.problem_counts.values())

    @property
    def findings(self) -> list[Finding]:
        return self.problems


@dataclass(frozen=True, slots=True)
class InFlight:
    """A cross-shard transaction not yet decided, or not yet resolved, on every shard."""

    transaction_id: str
    # The attempt's key, "<attempt>/<T>": its piece id or abort marker without the prefix
    # (core.store.audit).
    key: str
    # "commit", "abort", "" (none seen yet); for a cross-shard hold, "hold " and its fate at
    # the coordinator ("hold posted", ...), whose pieces are being settled.
    decision: str
    coordinator: int
    # (shard, "pending" | "posted" | "voided" | "expired" | "decided") of each piece seen; a
    # hold's coordinator is "hold " and its fate ("hold posted", ...).
    pieces: tuple[tuple[int, str], ...]
    # The earliest deadline of a piece still held (0: none).
    deadline_ns: int


@dataclass(slots=True)
class CrossShardReport:
    # False when not every shard of the cluster was audited (see `reason`).
    checked: bool = False
    reason: str = ""
    # Decided on all their shards, pieces netting to zero.
    settled_count: int = 0
    # Still held or undecided somewhere: excluded from the sum, not a finding.
    in_flight_count: int = 0
    # Cross-shard holds committed and open (no fate yet), every piece held, nothing posted to
    # clearing: not in flight, not a finding.
    open_hold_count: int = 0
    # Read again in later snapshots because the first ones caught them mid-way.
    rechecked_count: int = 0
    in_flight: list[InFlight] = field(default_factory=list)
    # Net posted clearing (debits minus credits) of the in-flight ones, per currency.
    in_flight_clearing: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class AuditReport:
    shards: list[ShardReport]
    started_at_ns: int
    duration_s: float = 0.0
    # Per currency over every shard.
    trial_balance: dict[str, list[int]] = field(default_factory=dict)
    cluster_problems: list[Finding] = field(default_factory=list)
    cluster_problem_counts: dict[str, int] = field(default_factory=dict)
    cross_shard: CrossShardReport = field(default_factory=CrossShardReport)

    @property
    def ok(self) -> bool:
        return all(shard.ok for shard in self.shards) and not any(
            self.cluster_problem_counts.values()
        )

    @property
    def complete(self) -> bool:
        """Every shard asked for was audited."""
        return not any(shard.error for shard in self.shards)

    @property
    def problems(self) -> list[Finding]:
        found = [p for shard in self.shards for p in shard.problems]
        return found + self.cluster_problems

    @property
    def problem_count(self) -> int:
        counted = sum(sum(shard.problem_counts.values()) for shard in self.shards)
        return counted + sum(self.cluster_problem_counts.values())
