"""The audit: are a ledger's books whole? Computed from its shard databases' rows alone.

`audit_cluster(dsns)` audits every shard, each in one REPEATABLE READ READ ONLY transaction (one
consistent snapshot, so a commit landing meanwhile cannot make a shard disagree with itself),
streaming every table through server-side cursors: memory is bounded by the cursor chunk and
one journal block, never by the size of the ledger. Checks, per shard:

- journal: blocks 1..N without gaps; each block's previous_hash is the hash of the block before;
  each block's hash recomputed from its rows (core/journal.py's canonical lines, built by
  core.export.journal_line); its row counts; its postings fill its sequence range without gaps.
- postings: every posting is a leg of a transaction recorded in the same block, with the leg's
  account, side, amount and the transaction's timestamp; every leg has its posting; every
  transaction balances per currency.
- chains: every posting's balance-after equals the account's previous balance-after plus its
  own amounts.
- counters: every account's four counters equal the sums of its postings; must-not-exceed
  flags hold; closed accounts are empty; trial balance per currency (debits equal credits).
- clearing: the clearing accounts' counters are exactly the sums of the shard's cross-shard
  pieces; over the cluster, every cross-shard transaction decided on all its shards has clearing
  pieces that net to zero (check_cross_shard: exact while the cluster writes).
- holds: every open hold is a pending transaction, and none is past its deadline.
- lease: the writer lease records the journal's last block (a deleted tail shows here).
- anchors: blocks whose hashes were published elsewhere (an export's head) still have them.

Every finding is a structured Finding (kind, shard, block, transaction, posting, account,
currency, expected, found); the command line's text and the gRPC service's messages are both
made from it.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import json
import tempfile
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Final

from core import journal
from core.audit.export import block_hash, journal_line
from core.model import Kind, Status
from core.store import audit as queries
from core.store.audit import (
    MARKER_PREFIX,
    P_ACCOUNT,
    P_BLOCK,
    P_PENDING,
    P_POSTED,
    P_SEQUENCE,
    P_SIDE,
    P_TIME,
    P_TRANSACTION,
    PIECE_PREFIX,
    T_APPLIED,
    T_ID,
    T_KIND,
    T_TARGET,
    T_TIME,
)

TIMEOUT_S = 300.0

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
)
# The shard number of findings about the cluster as a whole (its trial balance, cross-shard
# transactions).
CLUSTER: Final = -1
# Each currency's inter-shard clearing account (shards/crossshard.py clearing_account): a
# spread account whose pieces net to zero over the cluster once cross-shard work resolves.
CLEARING_ACCOUNT_PREFIX: Final = "@clearing/"
# Kinds whose legs post as they are (abort markers, reversal marks and a piece's deadline
# records have no legs, so no postings).
_POSTED_KINDS: Final = frozenset(
    {Kind.ORDINARY, Kind.REVERSAL, Kind.COMMIT, Kind.ABORT, Kind.REVERSAL_MARK, Kind.DEADLINE}
)
# Kinds whose legs are held (pending) until posted, voided or expired: holds, the
# participants' pieces of cross-shard transactions and the coordinator's piece of a
# cross-shard hold.
_HELD_KINDS: Final = frozenset({Kind.PENDING, Kind.PREPARED, Kind.HOLD})
COUNTER_NAMES: Final = ("debits_posted", "credits_posted", "debits_pending", "credits_pending")
# In-flight cross-shard transactions listed in a report (all are counted).
IN_FLIGHT_KEPT_MAX: Final = 100

Progress = Callable[[int, str, int, int], None]
"""Called with (shard, phase, done, total) while a shard is audited; phases are "journal"
(postings streamed) and "accounts" (accounts checked)."""


# ---- findings ----


class FindingKind(enum.IntEnum):
    """What is wrong, machine-readable. Mirrors tally.v1.FindingKind number for number (checked
    by a test); the hundreds are the check (1 journal ... 9 anchors, as CHECK_NAMES)."""

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
        return f"cross-shard transaction {self.transaction_id}"

    def __str__(self) -> str:
        where = "cluster" if self.shard == CLUSTER else f"shard {self.shard}"
        return f"{where}: {self.subject}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "check": self.check,
            "kind": self.kind.name.lower(),
            "subject": self.subject,
            "message": self.message,
            "expected": self.expected,
            "found": self.found,
            "block": self.block,
            "transaction_id": self.transaction_id,
            "posting": self.posting,
            "account_id": self.account_id,
            "currency": self.currency,
            "text": str(self),
        }


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
    # Only these currencies' trial balances, clearing and findings (empty: every currency).
    currencies: frozenset[str] = frozenset()
    # Cross-shard transactions that did not net in the first snapshots, read again (see
    # check_cross_shard); beyond this many they are findings.
    recheck_count_max: int = 10_000


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
    # The attempt's key (core.model: the part after "~piece/" or "~abort/").
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


# ---- the cluster ----


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
    """A DSN without its password, for reports."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or "@" not in rest:
        return dsn
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}@{host}" if user else f"{scheme}://{host}"


async def audit_cluster(
    dsns: Sequence[str],
    config: AuditConfig,
    progress: Progress | None = None,
    shards: Sequence[int] | None = None,
) -> AuditReport:
    """Audit the chosen shards (shard k is dsns[k]; default: all), then the cluster: its trial
    balance, and its cross-shard transactions when every shard was audited."""
    started = time.monotonic()
    report = AuditReport([], time.time_ns())
    chosen = list(range(len(dsns))) if shards is None else list(shards)
    whole = sorted(chosen) == list(range(len(dsns)))
    limit = asyncio.Semaphore(config.shard_concurrency_max)

    async def one(shard: int) -> ShardReport:
        async with limit:
            return await _audit_dsn(shard, dsns[shard], config, progress, spool=whole)

    tasks: list[asyncio.Task[ShardReport]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks += [group.create_task(one(shard)) for shard in chosen]
        report.shards = [task.result() for task in tasks]
        report.trial_balance = _sum_balances([shard.trial_balance for shard in report.shards])
        log = FindingLog(CLUSTER, config.problem_count_max, config.currencies)
        _check_cluster_trial_balance(log, report.trial_balance)
        if not whole:
            report.cross_shard.reason = "not every shard of the cluster was audited"
        elif not report.complete:
            report.cross_shard.reason = "a shard could not be audited"
        else:
            report.cross_shard = await check_cross_shard(report.shards, dsns, config, log)
        report.cluster_problems = log.sorted_kept()
        report.cluster_problem_counts = {k: v for k, v in log.counts.items() if v}
    finally:  # the spools of every shard audited, even when another one failed
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is None:
                if (spool := task.result().spool) is not None:
                    spool.close()
                task.result().spool = None
    report.duration_s = time.monotonic() - started
    return report


def _check_cluster_trial_balance(log: FindingLog, balances: dict[str, list[int]]) -> None:
    for currency, (dp, cp, dq, cq) in sorted(balances.items()):
        if dp != cp or dq != cq:
            log.add(
                FindingKind.TRIAL_BALANCE_UNBALANCED,
                About.CURRENCY,
                f"posted debits {dp}, credits {cp}; pending debits {dq}, credits {cq}",
                f"{dp} = {cp}",
                f"{dp} != {cp}" if dp != cp else f"{dq} != {cq}",
                currency=currency,
            )


async def _audit_dsn(
    shard: int, dsn: str, config: AuditConfig, progress: Progress | None, spool: bool = False
) -> ShardReport:
    started = time.monotonic()
    try:
        connection = await connect(dsn, config)
    except (OSError, TimeoutError) as error:
        return ShardReport(shard, redact(dsn), error=f"cannot connect: {error!r}")
    except Exception as error:  # asyncpg's errors: bad password, no database, ...
        return ShardReport(shard, redact(dsn), error=f"cannot connect: {error}")
    try:
        report = await audit_shard(connection, shard, config, progress, spool)
    except Exception as error:  # a shard without the schema, a lost connection
        report = ShardReport(shard, "", error=f"audit failed: {error!r}")
    finally:
        await connection.close(timeout=config.connect_timeout_s)
    report.target = redact(dsn)
    report.duration_s = time.monotonic() - started
    return report


def _sum_balances(parts: Sequence[dict[str, list[int]]]) -> dict[str, list[int]]:
    total: dict[str, list[int]] = {}
    for part in parts:
        for currency, sums in part.items():
            _add_counters(total, currency, sums)
    return total


# ---- one shard ----


async def audit_shard(
    connection: Any,
    shard: int,
    config: AuditConfig,
    progress: Progress | None = None,
    spool: bool = False,
) -> ShardReport:
    """Every check on one shard database, from one snapshot. With `spool`, the shard's
    cross-shard pieces are also written to report.spool for check_cross_shard (the caller
    closes it)."""
    log = FindingLog(shard, config.problem_count_max, config.currencies)
    report = ShardReport(shard, "")
    timeout_s = config.statement_timeout_s
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        sizes = await connection.fetchrow(queries.SIZES_SQL, timeout=timeout_s)
        report.account_count = sizes["accounts"]
        await JournalPass(connection, config, log, report, progress, sizes["postings"]).run()
        await check_accounts(connection, config, log, report, progress)
        await check_chains(connection, config, log)
        await scan_cross_shard(connection, config, log, report, spool)
        await check_holds(connection, config, log, report)
        await _check_lease(connection, config, log, report)
        await _check_anchors(connection, config, log, shard)
    report.problems = log.sorted_kept()
    report.problem_counts = dict(log.counts)
    return report


# ---- streaming ----


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


# ---- the journal pass: hash chain, block structure, postings against transactions ----


def _posting_ids(row: Any) -> dict[str, Any]:
    """A posting row's ids, as FindingLog.add takes them."""
    return {
        "posting": row[P_SEQUENCE],
        "transaction_id": row[P_TRANSACTION],
        "account_id": row[P_ACCOUNT],
    }


def _hex(digest: bytes) -> str:
    # Whole: an auditor compares hashes with other records, which a prefix would not allow.
    return digest.hex()


@dataclass(slots=True)
class _HashMismatch:
    block: int
    stored: bytes
    recomputed: bytes


class JournalPass:
    """One pass over the journal in block order, merging five ordered streams."""

    def __init__(
        self,
        connection: Any,
        config: AuditConfig,
        log: FindingLog,
        report: ShardReport,
        progress: Progress | None,
        posting_total: int,
    ) -> None:
        self.connection = connection
        self.config = config
        self.log = log
        self.report = report
        self.progress = progress
        self.posting_total = posting_total
        self.previous_block = 0
        self.previous_stored = journal.GENESIS_HASH
        self.previous_recomputed = journal.GENESIS_HASH
        self.previous_epoch = 0
        self.next_posting = 1
        self.suspect: _HashMismatch | None = None
        # Open holds seen so far: id -> applied legs text (bounded, oldest dropped first).
        self.holds: OrderedDict[str, str] = OrderedDict()

    async def _open(self, sql: str) -> RowStream:
        return await RowStream.open(
            self.connection, sql, self.config.fetch_row_count, self.config.statement_timeout_s
        )

    async def run(self) -> None:
        blocks = await self._open(queries.BLOCKS_SQL)
        self.streams = {
            "accounts": await self._open(queries.ACCOUNTS_SQL),
            "transactions": await self._open(queries.TRANSACTIONS_SQL),
            "closures": await self._open(queries.CLOSURES_SQL),
        }
        self.postings = await self._open(queries.POSTINGS_SQL)
        while headers := await blocks.rest():
            for header in headers:
                await self._block(header)
            self._report_progress()
        if self.suspect is not None:
            self._report_mismatch(self.suspect, None)
        await self._finish_streams()
        self._report_progress()

    def _report_progress(self) -> None:
        if self.progress is not None:
            done = self.postings.consumed
            self.progress(self.log.shard, "journal", done, max(done, self.posting_total))

    async def _block(self, header: Any) -> None:
        block = header["sequence"]
        self._check_header(header)
        rows = {}
        for name, stream in self.streams.items():
            rows[name] = self._own_rows(name, block, await stream.take_below(0, block + 1))
        postings = await self.postings.take_below(P_SEQUENCE, header["next_posting_sequence"])
        self._check_posting_range(header, postings)
        self._check_counts(header, rows, postings)
        self._check_hash(header, rows, postings)
        await self._check_postings(block, rows["transactions"], postings)
        self.report.block_count += 1
        self.report.transaction_count += len(rows["transactions"])
        self.report.posting_count += len(postings)
        self.report.head_block = block
        self.report.head_hash = bytes(header["hash"]).hex()

    def _own_rows(self, name: str, block: int, rows: list[Any]) -> list[Any]:
        """A block's rows; rows left behind name a block that is not in the journal."""
        own = []
        for row in rows:
            if row[0] == block:
                own.append(row)
            else:
                self._orphan(name, row)
        return own

    def _orphan(self, name: str, row: Any) -> None:
        kind, block = FindingKind.ROW_OUTSIDE_JOURNAL, row[0]
        message = f"recorded in block {block}, which is not in the journal"
        if name == "transactions":
            self.log.add(
                kind,
                About.TRANSACTION,
                f"block {block} is not in the journal",
                block=block,
                transaction_id=row[1],
            )
        elif name == "accounts":
            self.log.add(kind, About.ACCOUNT, message, block=block, account_id=row[1])
        else:
            self.log.add(kind, About.CLOSURE, message, block=block, account_id=row[1])

    def _check_header(self, header: Any) -> None:
        block = header["sequence"]
        expected = self.previous_block + 1
        if block != expected:
            self.log.add(
                FindingKind.BLOCK_MISSING,
                About.BLOCK if block == expected + 1 else About.BLOCKS,
                f"missing from the journal (block {self.previous_block} is followed by "
                f"block {block})",
                expected,
                block,
                block=expected,
                block_last=block - 1,
            )
        if header["epoch"] < self.previous_epoch:
            self.log.add(
                FindingKind.EPOCH_DECREASED,
                About.BLOCK,
                f"epoch {header['epoch']} is below block {self.previous_block}'s "
                f"{self.previous_epoch} (writer epochs only grow)",
                f">= {self.previous_epoch}",
                header["epoch"],
                block=block,
            )
        self.previous_block = block
        self.previous_epoch = header["epoch"]

    def _check_posting_range(self, header: Any, postings: list[Any]) -> None:
        block = header["sequence"]
        end = header["next_posting_sequence"]
        expected = self.next_posting
        if end < expected:
            self.log.add(
                FindingKind.POSTING_RANGE_BACKWARDS,
                About.BLOCK,
                f"next_posting_sequence {end} is below the block before's {expected}",
                f">= {expected}",
                end,
                block=block,
            )
        for row in postings:
            sequence = row[P_SEQUENCE]
            if sequence > expected:
                self._missing_postings(block, expected, sequence)
            if row[P_BLOCK] != block:
                self.log.add(
                    FindingKind.POSTING_IN_WRONG_BLOCK,
                    About.POSTING,
                    f"block_sequence {row[P_BLOCK]}, but its sequence lies in block {block} "
                    f"(postings {self.next_posting}..{end - 1})",
                    block,
                    row[P_BLOCK],
                    block=block,
                    **_posting_ids(row),
                )
            expected = sequence + 1
        if expected < end:
            self._missing_postings(block, expected, end)
        self.next_posting = max(end, expected)

    def _missing_postings(self, block: int, first: int, end: int) -> None:
        which = f"posting {first}" if end == first + 1 else f"postings {first}..{end - 1}"
        self.log.add(
            FindingKind.POSTING_MISSING,
            About.BLOCK,
            f"{which} missing (sequence gap)",
            which,
            "",
            block=block,
            posting=first,
        )

    def _check_counts(self, header: Any, rows: dict[str, list[Any]], postings: list[Any]) -> None:
        found = {
            "account_count": len(rows["accounts"]),
            "transaction_count": len(rows["transactions"]),
            "posting_count": len(postings),
            "closure_count": len(rows["closures"]),
        }
        for name, count in found.items():
            if header[name] != count:
                self.log.add(
                    FindingKind.BLOCK_COUNT_MISMATCH,
                    About.BLOCK,
                    f"{name} {header[name]} in its header, but {count} rows found",
                    header[name],
                    count,
                    block=header["sequence"],
                )

    def _check_hash(self, header: Any, rows: dict[str, list[Any]], postings: list[Any]) -> None:
        block = header["sequence"]
        stored = bytes(header["hash"])
        previous_field = bytes(header["previous_hash"])
        if self.suspect is not None:
            self._report_mismatch(self.suspect, previous_field)
            self.suspect = None
        lines = [journal_line("A", row[1:]) for row in rows["accounts"]]
        lines += [journal_line("T", row[1:]) for row in rows["transactions"]]
        lines += [journal_line("P", row[:P_BLOCK]) for row in postings]
        lines += [journal_line("X", row[1:]) for row in rows["closures"]]
        recomputed = block_hash(previous_field, block, lines)
        if previous_field not in (self.previous_stored, self.previous_recomputed):
            recomputed = self._broken_link(block, previous_field, stored, recomputed, lines)
        if recomputed != stored:
            self.suspect = _HashMismatch(block, stored, recomputed)
        self.previous_stored = stored
        self.previous_recomputed = recomputed

    def _broken_link(
        self, block: int, previous_field: bytes, stored: bytes, recomputed: bytes, lines: list[str]
    ) -> bytes:
        """previous_hash is not the hash of the block before: was the field altered, or is the
        block before not the one this block was chained to? Returns the hash to carry on with."""
        expected = _hex(self.previous_stored)
        kind = FindingKind.PREVIOUS_HASH_MISMATCH
        message = f"previous_hash {_hex(previous_field)} is not block {block - 1}'s hash {expected}"
        if recomputed != stored:
            from_before = block_hash(self.previous_stored, block, lines)
            if from_before == stored:
                # The block was hashed onto the block before as stored: only the field changed.
                kind = FindingKind.PREVIOUS_HASH_ALTERED
                message = (
                    f"previous_hash {_hex(previous_field)} was altered: the block's hash was "
                    f"made from block {block - 1}'s hash {expected}"
                )
                recomputed = from_before
        self.log.add(kind, About.BLOCK, message, expected, _hex(previous_field), block=block)
        return recomputed

    def _report_mismatch(self, mismatch: _HashMismatch, next_previous: bytes | None) -> None:
        """Tell an altered hash from altered rows by the next block's previous_hash."""
        block = mismatch.block
        stored, recomputed = _hex(mismatch.stored), _hex(mismatch.recomputed)
        if next_previous == mismatch.recomputed:
            kind = FindingKind.BLOCK_HASH_ALTERED
            message = (
                f"hash {stored} was altered: its rows give {recomputed}, which block "
                f"{block + 1}'s previous_hash also records"
            )
        elif next_previous == mismatch.stored:
            kind = FindingKind.BLOCK_ROWS_ALTERED
            message = (
                f"hash {stored} does not match its rows (recomputed {recomputed}): its rows "
                "were changed after it was written"
            )
        else:
            kind = FindingKind.BLOCK_HASH_MISMATCH
            message = f"hash {stored} does not match its rows (recomputed {recomputed})"
        self.log.add(kind, About.BLOCK, message, recomputed, stored, block=block)

    async def _check_postings(
        self, block: int, transactions: list[Any], postings: list[Any]
    ) -> None:
        by_transaction: dict[str, list[Any]] = {}
        for row in postings:
            by_transaction.setdefault(row[P_TRANSACTION], []).append(row)
        held = await self._held_legs(transactions)
        for transaction in transactions:
            actual = by_transaction.pop(transaction[T_ID], [])
            check_transaction_postings(self.log, block, transaction, actual, held)
        for transaction_id, rows in by_transaction.items():
            for row in rows:
                self.log.add(
                    FindingKind.POSTING_WITHOUT_TRANSACTION,
                    About.POSTING,
                    f"transaction {transaction_id} is not recorded in block {block}",
                    block=block,
                    **_posting_ids(row),
                )

    async def _held_legs(self, transactions: list[Any]) -> dict[str, str]:
        """Applied legs of the holds this block's partial or full posts resolve."""
        held: dict[str, str] = {}
        missing: list[str] = []
        for row in transactions:
            kind = row[T_KIND]
            if kind in _HELD_KINDS:
                self.holds[row[T_ID]] = row[T_APPLIED]
                if len(self.holds) > self.config.hold_cache_count_max:
                    self.holds.popitem(last=False)
            elif kind in (Kind.POST_PENDING, Kind.VOID_PENDING, Kind.EXPIRY):
                legs = self.holds.pop(row[T_TARGET], None)
                if legs is not None:
                    held[row[T_TARGET]] = legs
                elif kind == Kind.POST_PENDING:
                    missing.append(row[T_TARGET])
        if missing:
            for found in await self.connection.fetch(
                queries.HELD_LEGS_SQL,
                missing,
                sorted(int(kind) for kind in _HELD_KINDS),
                timeout=self.config.statement_timeout_s,
            ):
                held[found["id"]] = found["applied_legs"]
        return held

    async def _finish_streams(self) -> None:
        """Rows after the journal's last block: forged, or of blocks that were deleted."""
        for name, stream in self.streams.items():
            while rows := await stream.rest():
                for row in rows:
                    self._orphan(name, row)
        while rows := await self.postings.rest():
            for row in rows:
                self.log.add(
                    FindingKind.POSTING_BEYOND_JOURNAL,
                    About.POSTING,
                    f"beyond the journal (it claims block {row[P_BLOCK]}, but the last block, "
                    f"{self.previous_block}, ends before posting {self.next_posting})",
                    f"sequence < {self.next_posting}",
                    row[P_SEQUENCE],
                    block=row[P_BLOCK],
                    **_posting_ids(row),
                )


# ---- a transaction's postings against its legs ----

# (account, side "D"/"C", posted amount, pending delta, currency)
ExpectedPosting = tuple[str, str, int, int, str]
_DEBIT_SIGN: Final = {"D": 1, "C": -1}


def parse_legs(text: str) -> list[tuple[str, str, int, str]]:
    """(account, side, amount, currency) of core.journal.encode_legs text; ValueError if bad."""
    if not text:
        return []
    legs = []
    for part in text.split(","):
        side, account, amount, currency = part.split(" ")
        if side not in _DEBIT_SIGN:
            raise ValueError(f"side {side!r}")
        legs.append((account, side, int(amount), currency))
    return legs


def _sum_by_key(legs: list[tuple[str, str, int, str]]) -> dict[tuple[str, str, str], int]:
    sums: dict[tuple[str, str, str], int] = {}
    for account, side, amount, currency in legs:
        key = (account, side, currency)
        sums[key] = sums.get(key, 0) + amount
    return sums


def expected_postings(kind: int, applied_text: str, held_text: str | None) -> list[ExpectedPosting]:
    """The postings core.state writes for a transaction, from its recorded legs (and, for a
    post of a hold, the hold's legs). ValueError when the legs cannot be read."""
    applied = parse_legs(applied_text)
    if kind in _POSTED_KINDS:
        return [(account, side, amount, 0, cur) for account, side, amount, cur in applied]
    if kind in _HELD_KINDS:
        return [(account, side, 0, amount, cur) for account, side, amount, cur in applied]
    if kind in (Kind.VOID_PENDING, Kind.EXPIRY):
        held = _sum_by_key(applied)
        return [(account, side, 0, -amount, cur) for (account, side, cur), amount in held.items()]
    if kind == Kind.POST_PENDING:
        if held_text is None:
            raise ValueError("the hold it posts is not a recorded hold")
        # Every key held is released (posted: its applied amount, or 0). A piece of a
        # cross-shard hold posts its share, balanced by its clearing piece, which may be on a
        # key it did not hold (a piece netting to zero, or the clearing side flipped): posted
        # as it is, nothing released.
        posted = _sum_by_key(applied)
        held = _sum_by_key(parse_legs(held_text))
        expected = [
            (account, side, posted.get((account, side, cur), 0), -amount, cur)
            for (account, side, cur), amount in held.items()
        ]
        expected += [
            (account, side, amount, 0, cur)
            for (account, side, cur), amount in posted.items()
            if (account, side, cur) not in held
        ]
        return expected
    raise ValueError(f"kind {kind} is not a kind of transaction")


def check_transaction_postings(
    log: FindingLog, block: int, transaction: Any, actual: list[Any], held: dict[str, str]
) -> None:
    """Compare a transaction's postings with what its legs say they must be."""
    transaction_id = transaction[T_ID]
    try:
        expected = expected_postings(
            transaction[T_KIND], transaction[T_APPLIED], held.get(transaction[T_TARGET])
        )
    except ValueError as error:
        log.add(
            FindingKind.LEGS_UNREADABLE,
            About.TRANSACTION,
            f"its legs cannot be checked: {error}",
            block=block,
            transaction_id=transaction_id,
        )
        return
    if not _is_balanced_pair(expected):
        _check_balanced(log, block, transaction_id, expected)
    timestamp_ns = transaction[T_TIME]
    if not _postings_are(actual, expected, timestamp_ns):
        _match_postings(log, block, transaction_id, timestamp_ns, expected, actual)


def _is_balanced_pair(expected: list[ExpectedPosting]) -> bool:
    """The common case, decided without building sums: one debit and one credit alike."""
    if len(expected) != 2:
        return False
    first, second = expected
    return first[1] != second[1] and first[2:] == second[2:]


def _postings_are(actual: list[Any], expected: list[ExpectedPosting], timestamp_ns: int) -> bool:
    """Whether the postings are exactly the expected ones, in order (the fast path)."""
    if len(actual) != len(expected):
        return False
    for row, leg in zip(actual, expected, strict=True):
        if (
            row[P_ACCOUNT] != leg[0]
            or row[P_SIDE] != leg[1]
            or row[P_POSTED] != leg[2]
            or row[P_PENDING] != leg[3]
            or row[P_TIME] != timestamp_ns
        ):
            return False
    return True


def _check_balanced(
    log: FindingLog, block: int, transaction_id: str, expected: list[ExpectedPosting]
) -> None:
    net: dict[str, list[int]] = {}
    for _account, side, posted, pending, currency in expected:
        sums = net.setdefault(currency, [0, 0])
        sums[0] += _DEBIT_SIGN[side] * posted
        sums[1] += _DEBIT_SIGN[side] * pending
    for currency, (posted, pending) in sorted(net.items()):
        if posted or pending:
            log.add(
                FindingKind.TRANSACTION_UNBALANCED,
                About.TRANSACTION,
                f"unbalanced in {currency}: debits minus credits {posted} posted, "
                f"{pending} pending",
                0,
                posted or pending,
                block=block,
                transaction_id=transaction_id,
                currency=currency,
            )


def _match_postings(
    log: FindingLog,
    block: int,
    transaction_id: str,
    timestamp_ns: int,
    expected: list[ExpectedPosting],
    actual: list[Any],
) -> None:
    """Pair postings with legs by (account, side), in order, and name every difference."""
    remaining: dict[tuple[str, str], deque[ExpectedPosting]] = {}
    for leg in expected:
        remaining.setdefault((leg[0], leg[1]), deque()).append(leg)
    for row in actual:
        legs = remaining.get((row[P_ACCOUNT], row[P_SIDE]))
        if not legs:
            log.add(
                FindingKind.POSTING_NOT_A_LEG,
                About.POSTING,
                f"not a leg of transaction {transaction_id}: {_side_name(row[P_SIDE])} "
                f"posted {row[P_POSTED]}, pending {row[P_PENDING]}",
                block=block,
                **_posting_ids(row),
            )
            continue
        leg = legs.popleft()
        for name, found, wanted in (
            ("posted_amount", row[P_POSTED], leg[2]),
            ("pending_delta", row[P_PENDING], leg[3]),
            ("timestamp_ns", row[P_TIME], timestamp_ns),
        ):
            if found != wanted:
                log.add(
                    FindingKind.POSTING_DIFFERS_FROM_LEG,
                    About.POSTING,
                    f"{name} {found}, expected {wanted} (from transaction {transaction_id})",
                    wanted,
                    found,
                    block=block,
                    currency=leg[4],
                    **_posting_ids(row),
                )
    for legs in remaining.values():
        for account, side, posted, pending, currency in legs:
            log.add(
                FindingKind.LEG_WITHOUT_POSTING,
                About.TRANSACTION,
                f"no posting for its {_side_name(side)} of {account} "
                f"(posted {posted}, pending {pending} {currency})",
                f"a posting to {account}",
                "none",
                block=block,
                transaction_id=transaction_id,
                account_id=account,
                currency=currency,
            )


def _side_name(side: str) -> str:
    return "debit" if side == "D" else "credit"


# ---- accounts: counters against their postings, flags, trial balance ----


async def check_accounts(
    connection: Any,
    config: AuditConfig,
    log: FindingLog,
    report: ShardReport,
    progress: Progress | None = None,
) -> None:
    """Each account's counters equal the sums of its postings; flags hold; the per-currency
    trial balance of the counters (every account streams through once)."""
    stream = await RowStream.open(
        connection, queries.ACCOUNT_SUMS_SQL, config.fetch_row_count, config.statement_timeout_s
    )
    done = 0
    while rows := await stream.rest():
        for row in rows:
            _check_account(log, row, report.trial_balance, report.clearing)
        done += len(rows)
        if progress is not None:
            progress(log.shard, "accounts", done, max(done, report.account_count))
    if config.currencies:
        for balances in (report.trial_balance, report.clearing):
            for currency in set(balances) - config.currencies:
                del balances[currency]
    for currency, (dp, cp, dq, cq) in sorted(report.trial_balance.items()):
        for kind, debits, credits in (("posted", dp, cp), ("pending", dq, cq)):
            if debits != credits:
                log.add(
                    FindingKind.TRIAL_BALANCE_UNBALANCED,
                    About.CURRENCY,
                    f"{kind} debits {debits}, {kind} credits {credits} (differ by "
                    f"{debits - credits})",
                    f"{kind} debits = {kind} credits",
                    f"{debits} != {credits}",
                    currency=currency,
                )


def _add_counters(sums: dict[str, list[int]], currency: str, counters: Sequence[int]) -> None:
    into = sums.setdefault(currency, [0, 0, 0, 0])
    for index, value in enumerate(counters):
        into[index] += value


def _check_account(
    log: FindingLog,
    row: Any,
    trial_balance: dict[str, list[int]],
    clearing: dict[str, list[int]],
) -> None:
    account_id = row["id"]
    posting_count = row["posting_count"]
    if not row["known"]:
        log.add(
            FindingKind.POSTINGS_OF_UNKNOWN_ACCOUNT,
            About.ACCOUNT,
            f"has {posting_count} postings but is not in accounts",
            account_id=account_id,
        )
        return
    currency = row["currency"]
    counters = [row[name] for name in COUNTER_NAMES]
    sums = [int(row[name]) for name in ("sum_dp", "sum_cp", "sum_dq", "sum_cq")]
    for name, found, expected in zip(COUNTER_NAMES, counters, sums, strict=True):
        if found != expected:
            log.add(
                FindingKind.COUNTER_MISMATCH,
                About.ACCOUNT,
                f"{name} {found}, but its {posting_count} postings sum to {expected}",
                expected,
                found,
                account_id=account_id,
                currency=currency,
            )
    _add_counters(trial_balance, currency, counters)
    if account_id.startswith(CLEARING_ACCOUNT_PREFIX):
        _add_counters(clearing, currency, counters)
    _check_flags(log, account_id, currency, row["flags"], row["closed_at_ns"], counters)


def _check_flags(
    log: FindingLog,
    account_id: str,
    currency: str,
    flags: int,
    closed_at_ns: int,
    counters: list[int],
) -> None:
    dp, cp, dq, cq = counters
    no_overdraft = bool(flags & journal.FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS)
    credit_limit = bool(flags & journal.FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS)
    if no_overdraft and dp + dq > cp:
        log.add(
            FindingKind.LIMIT_EXCEEDED,
            About.ACCOUNT,
            f"debits_posted {dp} + debits_pending {dq} exceed credits_posted {cp}, but it "
            "is debits_must_not_exceed_credits",
            f"<= {cp}",
            dp + dq,
            account_id=account_id,
            currency=currency,
        )
    if credit_limit and cp + cq > dp:
        log.add(
            FindingKind.LIMIT_EXCEEDED,
            About.ACCOUNT,
            f"credits_posted {cp} + credits_pending {cq} exceed debits_posted {dp}, but it "
            "is credits_must_not_exceed_debits",
            f"<= {dp}",
            cp + cq,
            account_id=account_id,
            currency=currency,
        )
    if (no_overdraft or credit_limit) and account_id.startswith("@"):
        log.add(
            FindingKind.SPREAD_ACCOUNT_FLAG,
            About.ACCOUNT,
            "a spread account carries a must-not-exceed flag",
            account_id=account_id,
            currency=currency,
        )
    if closed_at_ns and (dp != cp or dq or cq):
        log.add(
            FindingKind.CLOSED_ACCOUNT_NOT_EMPTY,
            About.ACCOUNT,
            f"closed, but its posted balance is {cp - dp} and {dq + cq} is pending",
            "0",
            f"{cp - dp}",
            account_id=account_id,
            currency=currency,
        )


# ---- balance-after chains ----


async def check_chains(connection: Any, config: AuditConfig, log: FindingLog) -> None:
    """Every posting's balance-after is the account's previous balance-after plus its amounts
    (PostgreSQL walks each account's postings in order; only broken links come back)."""
    stream = await RowStream.open(
        connection, queries.CHAINS_SQL, config.fetch_row_count, config.statement_timeout_s
    )
    while rows := await stream.rest():
        for row in rows:
            _report_chain_break(log, row)


def _report_chain_break(log: FindingLog, row: Any) -> None:
    is_debit = row["is_debit"]
    changes = (
        ("debits_posted", "dp", "pdp", row["posted_amount"] if is_debit else 0, "posted_amount"),
        ("credits_posted", "cp", "pcp", 0 if is_debit else row["posted_amount"], "posted_amount"),
        ("debits_pending", "dq", "pdq", row["pending_delta"] if is_debit else 0, "pending_delta"),
        ("credits_pending", "cq", "pcq", 0 if is_debit else row["pending_delta"], "pending_delta"),
    )
    previous = row["previous_sequence"]
    before = f"posting {previous}'s" if previous is not None else "no earlier posting:"
    parts, expected_first, found_first = [], "", ""
    for name, found_key, previous_key, change, change_name in changes:
        expected = row[previous_key] + change
        if row[found_key] != expected:
            parts.append(
                f"balance-after {name} {row[found_key]}, expected {expected} "
                f"({before} {row[previous_key]} + {change_name} {change})"
            )
            expected_first = expected_first or str(expected)
            found_first = found_first or str(row[found_key])
    log.add(
        FindingKind.BALANCE_AFTER_BROKEN,
        About.POSTING,
        "; ".join(parts),
        expected_first,
        found_first,
        posting=row["sequence"],
        transaction_id=row["transaction_id"],
        account_id=row["account_id"],
    )


# ---- holds ----


async def check_holds(
    connection: Any, config: AuditConfig, log: FindingLog, report: ShardReport
) -> None:
    """Open holds agree with their transactions, and none is past its deadline."""
    now_ns = config.now_ns or time.time_ns()
    stream = await RowStream.open(
        connection, queries.HOLDS_SQL, config.fetch_row_count, config.statement_timeout_s
    )
    while rows := await stream.rest():
        report.hold_count += len(rows)
        for row in rows:
            _check_hold(log, row, config.hold_grace_s, now_ns)
    orphans = await RowStream.open(
        connection,
        queries.PENDING_WITHOUT_HOLD_SQL,
        config.fetch_row_count,
        config.statement_timeout_s,
        int(Status.PENDING),
    )
    while rows := await orphans.rest():
        for row in rows:
            log.add(
                FindingKind.PENDING_WITHOUT_HOLD,
                About.TRANSACTION,
                "pending, but has no open hold row",
                "a hold row",
                "none",
                transaction_id=row["id"],
            )


def _check_hold(log: FindingLog, row: Any, grace_s: float | None, now_ns: int) -> None:
    transaction_id = row["transaction_id"]
    expires_at_ns = row["expires_at_ns"]
    if row["kind"] is None:
        log.add(
            FindingKind.HOLD_WITHOUT_TRANSACTION,
            About.HOLD,
            "open, but no such transaction is recorded",
            transaction_id=transaction_id,
        )
        return
    if row["kind"] not in _HELD_KINDS:
        kind = Kind(row["kind"]).name if row["kind"] in set(Kind) else row["kind"]
        log.add(
            FindingKind.HOLD_OF_WRONG_KIND,
            About.HOLD,
            f"open, but the transaction is a {kind}",
            "PENDING, PREPARED or HOLD",
            kind,
            transaction_id=transaction_id,
        )
    if row["status"] != Status.PENDING:
        status = Status(row["status"]).name if row["status"] in set(Status) else row["status"]
        log.add(
            FindingKind.HOLD_STATUS_MISMATCH,
            About.HOLD,
            f"open, but the transaction's status is {status}",
            "PENDING",
            status,
            transaction_id=transaction_id,
        )
    if row["recorded_ns"] != expires_at_ns:
        log.add(
            FindingKind.HOLD_DEADLINE_MISMATCH,
            About.HOLD,
            f"expires_at_ns {expires_at_ns}, but the transaction records {row['recorded_ns']}",
            row["recorded_ns"],
            expires_at_ns,
            transaction_id=transaction_id,
        )
    if grace_s is not None and expires_at_ns and expires_at_ns + grace_s * 1e9 < now_ns:
        late_s = (now_ns - expires_at_ns) / 1e9
        why = (
            "a prepared cross-shard piece is resolved by its coordinator by then"
            if row["kind"] == Kind.PREPARED
            else "holds are released when they expire"
        )
        log.add(
            FindingKind.HOLD_PAST_DEADLINE,
            About.HOLD,
            f"still open {late_s:,.0f} s after its deadline ({_utc(expires_at_ns)}); {why}",
            f"resolved by {_utc(expires_at_ns)}",
            "open",
            transaction_id=transaction_id,
        )


def _utc(timestamp_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp_ns / 1e9))


# ---- the lease and anchors ----


async def _check_lease(
    connection: Any, config: AuditConfig, log: FindingLog, report: ShardReport
) -> None:
    recorded = await connection.fetchval(
        queries.LEASE_LAST_BLOCK_SQL,
        timeout=config.statement_timeout_s,
    )
    if recorded is not None and recorded != report.head_block:
        log.add(
            FindingKind.LEASE_AHEAD_OF_JOURNAL,
            About.BLOCK,
            f"the journal ends at block {report.head_block}, but the writer lease records "
            f"block {recorded} as the last committed",
            recorded,
            report.head_block,
            block=max(recorded, report.head_block),
        )


async def _check_anchors(connection: Any, config: AuditConfig, log: FindingLog, shard: int) -> None:
    for anchor in config.anchors:
        if anchor.shard != shard:
            continue
        stored = await connection.fetchval(
            queries.BLOCK_HASH_HEX_SQL,
            anchor.block,
            timeout=config.statement_timeout_s,
        )
        if stored != anchor.hash_hex.lower():
            log.add(
                FindingKind.ANCHOR_MISMATCH,
                About.BLOCK,
                f"hash {stored or 'missing'}, but the anchor records {anchor.hash_hex}",
                anchor.hash_hex,
                stored or "missing",
                block=anchor.block,
            )


# ---- cross-shard transactions: the clearing pieces, exactly ----
#
# A cross-shard transaction T leaves rows on several shards (core/model.py; each gateway run of
# T is an attempt with its own name). Its coordinator records the attempt's decision: the
# commit as T itself (kind COMMIT, target_id the attempt's abort marker "~abort/<attempt>/T"),
# or that abort marker (kind ABORT). Each participant holds its piece "~piece/<attempt>/T"
# (kind PREPARED, target_id the coordinator's shard number) until it posts or voids it. Every
# piece is balanced on its own shard by a leg on that shard's @clearing/<CUR> piece, so the
# clearing pieces of a transaction decided and resolved everywhere net to zero.
#
# A cross-shard hold H is created the same way, but its coordinator's record is H of kind HOLD
# (legs held, the commit decision as COMMIT is) and the participants' pieces stay held after
# it: their deadline records (kind DEADLINE, target_id the piece) re-arm them. The hold's
# fate is decided once, at the coordinator: the client's post or void of H, or the shard's
# expiry "~expired/H", all targeting H and read under H's key; each participant then settles
# its piece the same way ("~commit/", "~void/", "~expired/" + the piece id), a post by its
# share of the client's post, balanced by its clearing piece. A hold whose fate is not decided
# is open (its pieces held, nothing posted to clearing); once decided, it is in flight until
# every piece follows, then its clearing pieces net to zero like a transfer's.
#
# Shards are read in separate snapshots, taken at different moments: comparing per-shard
# clearing totals can catch a transaction half-way (committed in one snapshot, not yet posted
# in another) and cry wolf. So the check goes attempt by attempt (the attempt's key: its marker
# or piece id without the prefix; the older layout without attempts, piece id T and marker
# "~abort/T", maps to keys the same way):
#
# 1. Each shard's snapshot lists, in key order, what its rows say of each attempt (decision,
#    its piece's state, the clearing it posted); these must sum to exactly the clearing
#    accounts' counters in the same snapshot, so no clearing posting escapes the check.
# 2. Merged over shards: an attempt with a piece still held is in flight (excluded and listed;
#    one held past its deadline is also a holds finding); a contradiction (committed, yet a
#    piece voided) is a finding; an attempt decided and resolved everywhere must net to zero.
# 3. An attempt that does not net to zero, or whose pieces are resolved while no snapshot shows
#    a decision (or, for a hold, its fate), is read again on every shard (rows after the first
#    snapshot's last block), in snapshots taken after all the first ones ended. Protocol order
#    (every prepare before the decision, the decision before any resolution; rows only ever
#    added) then settles it: if a first snapshot showed the decision, every piece exists in the
#    later ones; if one showed a piece resolved, the decision exists in the later ones. What
#    still does not net to zero, or stays undecided, is wrong.

# What each of core.store.audit.RESOLUTION_KINDS makes of what it resolves.
_RESOLUTIONS: Final = {
    Kind.POST_PENDING: "posted",
    Kind.VOID_PENDING: "voided",
    Kind.EXPIRY: "expired",
}


@dataclass(slots=True)
class PieceView:
    """One attempt of a cross-shard transaction as one shard's rows show it."""

    key: str
    shard: int
    transaction_id: str = ""
    # "commit", "abort" (this shard is the coordinator), or both (a contradiction). A
    # cross-shard hold's HOLD record is its "commit".
    decision: str = ""
    piece_id: str = ""
    # "posted", "voided", "expired"; "" while the piece is held.
    resolution: str = ""
    # The coordinator shard named by the piece (-1: no piece here).
    coordinator: int = -1
    deadline_ns: int = 0
    # Clearing posted here, debits minus credits, per currency.
    posted: dict[str, int] = field(default_factory=dict)
    # The decision is a cross-shard hold's HOLD record (this shard is its coordinator).
    hold: bool = False
    # The hold's fate here: "posted", "voided", "expired"; "" while it is open.
    hold_fate: str = ""

    @property
    def state(self) -> str:
        if self.piece_id:
            return self.resolution or "pending"
        if self.hold:
            return f"hold {self.hold_fate or 'open'}"
        return "decided" if self.decision else "seen"

    def line(self) -> str:
        fields = [
            self.key,
            self.shard,
            self.transaction_id,
            self.decision,
            self.piece_id,
            self.resolution,
            self.coordinator,
            self.deadline_ns,
            self.posted,
            self.hold,
            self.hold_fate,
        ]
        return json.dumps(fields, separators=(",", ":")) + "\n"

    @classmethod
    def from_line(cls, text: str) -> PieceView:
        fields = json.loads(text)
        return cls(*fields)


def _client_id(piece_id: str) -> str:
    """The client's transaction id of a piece id ("~piece/<attempt>/<T>", or T itself)."""
    if piece_id.startswith(PIECE_PREFIX) and piece_id.count("/") >= 2:
        return piece_id.split("/", 2)[2]
    return piece_id


def _both(first: str, second: str) -> str:
    return f"{first} and {second}" if first else second


def _fold(view: PieceView, row: Any, totals: dict[str, list[int]] | None) -> None:
    """Add one row of the attempt to this shard's view of it (and to the clearing totals)."""
    kind = row["kind"]
    if kind in (Kind.COMMIT, Kind.ABORT, Kind.HOLD):
        decision = "abort" if kind == Kind.ABORT else "commit"
        view.decision = decision if view.decision in ("", decision) else "commit and abort"
        view.transaction_id = row["target_id"] if kind == Kind.ABORT else row["id"]
        view.hold = view.hold or kind == Kind.HOLD
    elif kind == Kind.PREPARED:
        view.piece_id = row["id"]
        target = row["target_id"]
        view.coordinator = int(target) if target.isdigit() else -1
        view.deadline_ns = row["expires_at_ns"]
        view.transaction_id = view.transaction_id or _client_id(row["id"])
    elif kind == Kind.DEADLINE:
        # Rows come in the order they were written: the last one is the piece's deadline.
        view.piece_id = view.piece_id or row["target_id"]
        view.deadline_ns = _deadline_of(row)
        view.transaction_id = view.transaction_id or _client_id(row["target_id"])
    elif row["target_kind"] == Kind.HOLD:
        # The coordinator's post, void or expiry of a cross-shard hold: the hold's fate.
        view.hold_fate = _both(view.hold_fate, _RESOLUTIONS[Kind(kind)])
        view.transaction_id = view.transaction_id or row["target_id"]
    else:
        view.resolution = _both(view.resolution, _RESOLUTIONS[Kind(kind)])
        view.piece_id = view.piece_id or row["target_id"]
        view.transaction_id = view.transaction_id or _client_id(row["target_id"])
    try:
        postings = expected_postings(kind, row["applied_legs"], row["held_legs"])
    except ValueError:
        return  # the postings check names the transaction
    for account, side, posted, pending, currency in postings:
        if not account.startswith(CLEARING_ACCOUNT_PREFIX):
            continue
        if posted:
            view.posted[currency] = view.posted.get(currency, 0) + _DEBIT_SIGN[side] * posted
        if totals is not None:
            debit = side == "D"
            _add_counters(
                totals,
                currency,
                (posted, 0, pending, 0) if debit else (0, posted, 0, pending),
            )


def _deadline_of(row: Any) -> int:
    """The deadline a DEADLINE record sets: its metadata's expires_at_ns (hashed, unlike its
    expires_at_ns column), else that column."""
    try:
        return int(json.loads(row["metadata"])["expires_at_ns"])
    except (TypeError, ValueError, KeyError):
        return int(row["expires_at_ns"])


@dataclass(slots=True)
class _PieceDeadline:
    """A held piece's deadline as its rows tell it: set at its creation (timestamp plus
    timeout_seconds, as core.state sets it), then by each of its DEADLINE records in order."""

    # The piece's expires_at_ns column (-1: no piece row seen).
    recorded_ns: int = -1
    expected_ns: int = 0
    # The DEADLINE record that set expected_ns ("": the piece's creation).
    record_id: str = ""

    def see(self, row: Any) -> None:
        kind = row["kind"]
        if kind == Kind.PREPARED:
            self.recorded_ns = row["expires_at_ns"]
            timeout_s = row["timeout_seconds"]
            self.expected_ns = row["timestamp_ns"] + timeout_s * 1_000_000_000 if timeout_s else 0
        elif kind == Kind.DEADLINE:
            self.expected_ns = _deadline_of(row)
            self.record_id = row["id"]

    def check(self, log: FindingLog, view: PieceView) -> None:
        """An open piece's deadline is the one its last deadline record (or its creation) set."""
        if self.recorded_ns < 0 or view.resolution or self.recorded_ns == self.expected_ns:
            return
        source = (
            f"its last deadline record {self.record_id}"
            if self.record_id
            else "its creation (timestamp_ns + timeout_seconds)"
        )
        log.add(
            FindingKind.HOLD_DEADLINE_MISMATCH,
            About.HOLD,
            f"expires_at_ns {self.recorded_ns}, but {source} sets {self.expected_ns}",
            self.expected_ns,
            self.recorded_ns,
            transaction_id=view.piece_id,
        )


async def scan_cross_shard(
    connection: Any, config: AuditConfig, log: FindingLog, report: ShardReport, spool: bool
) -> None:
    """This shard's cross-shard attempts in key order (written to report.spool if asked), and
    its clearing accounts' counters against the sums of their pieces; an open piece's deadline
    against its deadline records."""
    totals: dict[str, list[int]] = {}
    out = tempfile.TemporaryFile("w+", encoding="utf-8") if spool else None
    report.spool = out
    stream = await RowStream.open(
        connection, queries.CROSS_SHARD_SQL, config.fetch_row_count, config.statement_timeout_s
    )
    view: PieceView | None = None
    deadline = _PieceDeadline()
    while rows := await stream.rest():
        for row in rows:
            if view is None or row["key"] != view.key:
                if view is not None:
                    _close_view(view, deadline, log, out)
                view = PieceView(row["key"], report.shard)
                deadline = _PieceDeadline()
                report.cross_shard_count += 1
            deadline.see(row)
            _fold(view, row, totals)
    if view is not None:
        _close_view(view, deadline, log, out)
    _check_clearing_totals(log, totals, report.clearing, config.currencies)


def _close_view(
    view: PieceView, deadline: _PieceDeadline, log: FindingLog, out: IO[str] | None
) -> None:
    deadline.check(log, view)
    if out is not None:
        out.write(view.line())


def _check_clearing_totals(
    log: FindingLog,
    pieces: dict[str, list[int]],
    counters: dict[str, list[int]],
    currencies: frozenset[str],
) -> None:
    for currency in sorted(set(pieces) | set(counters)):
        if currencies and currency not in currencies:
            continue
        found = counters.get(currency, [0, 0, 0, 0])
        expected = pieces.get(currency, [0, 0, 0, 0])
        differ = [i for i in range(4) if found[i] != expected[i]]
        if not differ:
            continue
        log.add(
            FindingKind.CLEARING_COUNTERS_MISMATCH,
            About.CLEARING,
            "counters "
            + ", ".join(f"{COUNTER_NAMES[i]} {found[i]}" for i in differ)
            + ", but the cross-shard transactions recorded on this shard account for "
            + ", ".join(f"{COUNTER_NAMES[i]} {expected[i]}" for i in differ)
            + " (every posting to a clearing account must be part of one)",
            expected[differ[0]],
            found[differ[0]],
            account_id=CLEARING_ACCOUNT_PREFIX + currency,
            currency=currency,
        )


async def check_cross_shard(
    reports: Sequence[ShardReport], dsns: Sequence[str], config: AuditConfig, log: FindingLog
) -> CrossShardReport:
    """Every cross-shard transaction over the shards' spools (see the comment above)."""
    result = CrossShardReport(checked=True)
    suspects: dict[str, list[PieceView]] = {}
    for key, views in _merged(reports):
        verdict = _judge(views, config, log, final=False)
        if verdict == "suspect" and len(suspects) < config.recheck_count_max:
            suspects[key] = views
            continue
        if verdict == "suspect":
            _not_rechecked(log, views, f"more than {config.recheck_count_max:,} to recheck")
            continue
        _tally(result, verdict, views)
    if not suspects:
        return result
    result.rechecked_count = len(suspects)
    try:
        await _read_again(suspects, reports, dsns, config)
    except Exception as error:  # a shard gone since its audit: say so, do not guess
        for views in suspects.values():
            _not_rechecked(log, views, f"the shards could not be read again ({error!r})")
        return result
    for views in suspects.values():
        _tally(result, _judge(views, config, log, final=True), views)
    return result


def _merged(reports: Sequence[ShardReport]) -> Iterator[tuple[str, list[PieceView]]]:
    """(key, the shards' views of that attempt), in key order, from every shard's spool."""

    def read(spool: IO[str]) -> Iterator[PieceView]:
        spool.seek(0)
        for text in spool:
            yield PieceView.from_line(text)

    streams = [read(report.spool) for report in reports if report.spool is not None]
    group: list[PieceView] = []
    for view in heapq.merge(*streams, key=lambda piece: piece.key):
        if group and view.key != group[0].key:
            yield group[0].key, group
            group = []
        group.append(view)
    if group:
        yield group[0].key, group


def _hold_of(decided: list[PieceView]) -> PieceView | None:
    """The coordinator's view of a cross-shard hold (None: not a hold)."""
    return next((view for view in decided if view.hold), None)


def _judge(views: list[PieceView], config: AuditConfig, log: FindingLog, final: bool) -> str:
    """ "settled", "in flight", "open hold", "suspect" (not final: to be read again) or
    "wrong" (logged)."""
    views.sort(key=lambda view: view.shard)
    decided = [view for view in views if view.decision]
    pieces = [view for view in views if view.piece_id]
    contradictions = _contradictions(decided, pieces)
    transaction_id = _transaction_id(views)
    hold = _hold_of(decided) if {view.decision for view in decided} == {"commit"} else None
    open_hold = hold if hold is not None and not hold.hold_fate else None
    # Pieces settled while their hold is open at the coordinator: the coordinator's snapshot
    # was taken before the hold's fate (read again), or they were settled on their own.
    ahead = [view for view in pieces if view.resolution] if open_hold is not None else []
    if open_hold is not None and ahead and final and not contradictions:
        contradictions = [
            f"its hold is open at its coordinator (shard {open_hold.shard}), but its piece "
            f"{view.piece_id} on shard {view.shard} was {view.resolution}"
            for view in ahead
        ]
    for message in contradictions:
        log.add(
            FindingKind.CROSS_SHARD_CONTRADICTION,
            About.CROSS_SHARD,
            message,
            transaction_id=transaction_id,
        )
    if contradictions:
        return "wrong"
    if ahead:
        return "suspect"
    if open_hold is not None:
        return _judge_open_hold(views, config, log, final, transaction_id)
    if any(not view.resolution for view in pieces):
        return "in flight"
    net: dict[str, int] = {}
    for view in views:
        for currency, amount in view.posted.items():
            if not config.currencies or currency in config.currencies:
                net[currency] = net.get(currency, 0) + amount
    unbalanced = {currency: amount for currency, amount in sorted(net.items()) if amount}
    if decided and not unbalanced:
        return "settled"
    if not final:
        return "suspect"
    if not decided:
        resolved = ", ".join(f"shard {view.shard} {view.resolution}" for view in pieces)
        log.add(
            FindingKind.CROSS_SHARD_UNDECIDED,
            About.CROSS_SHARD,
            f"its pieces were resolved ({resolved}), but no shard records its decision "
            f"(abort marker {MARKER_PREFIX}{views[0].key} or the commit)",
            "a decision at the coordinator",
            "none",
            transaction_id=transaction_id,
        )
    for currency, amount in unbalanced.items():
        parts = ", ".join(
            f"shard {view.shard} ({_role(view)}) {view.posted.get(currency, 0)}" for view in views
        )
        log.add(
            FindingKind.CROSS_SHARD_UNBALANCED,
            About.CROSS_SHARD,
            f"its clearing pieces net to {amount} {currency} (debits minus credits), "
            f"expected 0: {parts}",
            0,
            amount,
            transaction_id=transaction_id,
            currency=currency,
        )
    return "wrong"


def _judge_open_hold(
    views: list[PieceView], config: AuditConfig, log: FindingLog, final: bool, transaction_id: str
) -> str:
    """A hold committed and open, every piece held: nothing may be posted to clearing yet."""
    posted = [
        (view, currency, amount)
        for view in views
        for currency, amount in sorted(view.posted.items())
        if amount and (not config.currencies or currency in config.currencies)
    ]
    if not posted:
        return "open hold"
    if not final:
        return "suspect"
    for view, currency, amount in posted:
        log.add(
            FindingKind.CROSS_SHARD_UNBALANCED,
            About.CROSS_SHARD,
            f"its hold is open, yet shard {view.shard} ({_role(view)}) posted {amount} "
            f"{currency} to clearing (debits minus credits), expected 0 until its fate",
            0,
            amount,
            transaction_id=transaction_id,
            currency=currency,
        )
    return "wrong"


def _contradictions(decided: list[PieceView], pieces: list[PieceView]) -> list[str]:
    """What no order of events can explain: both decisions, a resolution against the
    decision (or a hold's fate), a piece naming another coordinator."""
    found = []
    decisions = {view.decision for view in decided}
    where = ", ".join(f"shard {view.shard} {view.decision}" for view in decided)
    hold = _hold_of(decided)
    if len(decisions) > 1 or "commit and abort" in decisions:
        found.append(f"both committed and aborted ({where})")
    elif decisions == {"commit"} and hold is not None:
        found += _hold_contradictions(hold, pieces)
    elif decisions == {"commit"}:
        for view in pieces:
            if view.resolution and view.resolution != "posted":
                found.append(
                    f"committed ({where}), but its piece {view.piece_id} on shard {view.shard} "
                    f"was {view.resolution}"
                )
    elif decisions == {"abort"}:
        for view in pieces:
            if "posted" in view.resolution:
                found.append(
                    f"aborted ({where}), but its piece {view.piece_id} on shard {view.shard} "
                    "was posted"
                )
    coordinators = {view.shard for view in decided}
    for view in pieces:
        if coordinators and view.coordinator not in coordinators:
            found.append(
                f"its piece {view.piece_id} on shard {view.shard} names shard "
                f"{view.coordinator} as coordinator, but the decision is recorded on {where}"
            )
    return found


def _hold_contradictions(hold: PieceView, pieces: list[PieceView]) -> list[str]:
    """A hold's fate is decided once, at its coordinator; every piece settles the same way.
    (Pieces settled while the hold is open are judged by _judge: maybe a snapshot race.)"""
    fate = hold.hold_fate
    if " and " in fate:
        return [
            f"its hold was resolved more than once at its coordinator (shard {hold.shard}: {fate})"
        ]
    if not fate:
        return []
    return [
        f"its hold was {fate} at its coordinator (shard {hold.shard}), but its piece "
        f"{view.piece_id} on shard {view.shard} was {view.resolution}"
        for view in pieces
        if view.resolution and view.resolution != fate
    ]


def _transaction_id(views: Iterable[PieceView]) -> str:
    ids = [view.transaction_id for view in views if view.transaction_id]
    return ids[0] if ids else ""


def _role(view: PieceView) -> str:
    if view.piece_id:
        return f"piece, {view.state}"
    if view.hold:
        return f"coordinator, hold {view.hold_fate or 'open'}"
    return f"coordinator, {'committed' if view.decision == 'commit' else view.decision}"


def _not_rechecked(log: FindingLog, views: list[PieceView], why: str) -> None:
    log.add(
        FindingKind.CROSS_SHARD_NOT_RECHECKED,
        About.CROSS_SHARD,
        f"did not net to zero, or showed no decision, in the first snapshots and was not read "
        f"again: {why}; audit again",
        transaction_id=_transaction_id(views),
    )


def _tally(result: CrossShardReport, verdict: str, views: list[PieceView]) -> None:
    if verdict == "settled":
        result.settled_count += 1
    elif verdict == "open hold":
        result.open_hold_count += 1
    elif verdict == "in flight":
        result.in_flight_count += 1
        for view in views:
            for currency, amount in view.posted.items():
                result.in_flight_clearing[currency] = (
                    result.in_flight_clearing.get(currency, 0) + amount
                )
        if len(result.in_flight) < IN_FLIGHT_KEPT_MAX:
            result.in_flight.append(_in_flight(views))


def _in_flight(views: list[PieceView]) -> InFlight:
    decided = [view for view in views if view.decision]
    held = [view.deadline_ns for view in views if view.piece_id and not view.resolution]
    coordinator = decided[0].shard if decided else -1
    if coordinator < 0:
        coordinator = next((view.coordinator for view in views if view.piece_id), -1)
    decision = decided[0].decision if decided else ""
    hold = _hold_of(decided)
    if hold is not None:
        decision = f"hold {hold.hold_fate or 'open'}"
    return InFlight(
        transaction_id=_transaction_id(views),
        key=views[0].key,
        decision=decision,
        coordinator=coordinator,
        pieces=tuple((view.shard, view.state) for view in views),
        deadline_ns=min((d for d in held if d), default=0),
    )


async def _read_again(
    suspects: dict[str, list[PieceView]],
    reports: Sequence[ShardReport],
    dsns: Sequence[str],
    config: AuditConfig,
) -> None:
    """Fold into the suspects' views their rows written since each shard's first snapshot,
    read in new snapshots (taken after every first snapshot ended)."""
    keys = sorted(suspects)
    views = {(view.key, view.shard): view for group in suspects.values() for view in group}

    async def one(report: ShardReport) -> list[Any]:
        connection = await connect(dsns[report.shard], config)
        try:
            async with connection.transaction(isolation="repeatable_read", readonly=True):
                rows: list[Any] = await connection.fetch(
                    queries.CROSS_SHARD_AGAIN_SQL,
                    report.head_block,
                    keys,
                    timeout=config.statement_timeout_s,
                )
                return rows
        finally:
            await connection.close(timeout=config.connect_timeout_s)

    async with asyncio.TaskGroup() as group:
        tasks = {report.shard: group.create_task(one(report)) for report in reports}
    for shard, task in tasks.items():
        for row in task.result():
            view = views.get((row["key"], shard))
            if view is None:
                view = views[(row["key"], shard)] = PieceView(row["key"], shard)
                suspects[row["key"]].append(view)
            _fold(view, row, None)


# ---- building blocks for the service, the benchmark and tests ----


async def trial_balance(connection: Any) -> dict[str, tuple[int, int, int, int]]:
    """Per currency: (debits_posted, credits_posted, debits_pending, credits_pending)."""
    rows = await connection.fetch(queries.TRIAL_BALANCE_SQL, timeout=TIMEOUT_S)
    return {r["currency"]: (int(r["dp"]), int(r["cp"]), int(r["dq"]), int(r["cq"])) for r in rows}


async def check_trial_balance(connection: Any) -> list[str]:
    problems = []
    for currency, (dp, cp, dq, cq) in (await trial_balance(connection)).items():
        if dp != cp:
            problems.append(f"{currency}: posted debits {dp} != posted credits {cp}")
        if dq != cq:
            problems.append(f"{currency}: pending debits {dq} != pending credits {cq}")
    return problems


async def check_counters(connection: Any) -> list[str]:
    """Every account's four counters equal the sum of its postings."""
    log = FindingLog(0, 10**9)
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        await check_accounts(connection, AuditConfig(statement_timeout_s=TIMEOUT_S), log, _blank())
    return [f"{p.subject}: {p.message}" for p in log.kept if p.check == "counters"]


async def verify_chain(
    connection: Any, shard: int, config: AuditConfig
) -> tuple[ShardReport, FindingLog]:
    """The journal pass (hash chain, block structure, postings against their transactions),
    the lease and the anchors of one shard, from one snapshot; no account or hold checks."""
    log = FindingLog(shard, config.problem_count_max, config.currencies)
    report = ShardReport(shard, "")
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        total = await connection.fetchval(
            queries.POSTING_TOTAL_SQL, timeout=config.statement_timeout_s
        )
        await JournalPass(connection, config, log, report, None, total).run()
        await _check_lease(connection, config, log, report)
        await _check_anchors(connection, config, log, shard)
    report.problems = log.sorted_kept()
    report.problem_counts = dict(log.counts)
    return report, log


async def check_all(connection: Any) -> list[str]:
    """Every check of `tally audit` on one shard but hold deadlines (tests stop nodes before
    their sweeps run); one string per problem, empty when the books are whole."""
    config = AuditConfig(statement_timeout_s=TIMEOUT_S, hold_grace_s=None)
    report = await audit_shard(connection, 0, config)
    problems = [str(p) for p in report.problems]
    hidden = sum(report.problem_counts.values()) - len(report.problems)
    if hidden:
        problems.append(f"shard 0: ... and {hidden} more problems")
    return problems


def _blank() -> ShardReport:
    return ShardReport(0, "")
