"""The audit: are a ledger's books whole? Computed from its shard databases' rows alone.

`audit_cluster(dsns)` audits every shard, each in one REPEATABLE READ READ ONLY transaction (one
consistent snapshot), streaming every table through server-side cursors: memory is bounded by
the cursor chunk and one journal block, never by the size of the ledger. Checks, per shard:

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
- holds: every open hold is a pending transaction, and none is past its deadline.
- lease: the writer lease records the journal's last block (a deleted tail shows here).
- anchors: blocks whose hashes were published elsewhere (an export's head) still have them.

Every problem names the shard and exactly what is wrong (block, transaction, posting, account
or currency) with what was expected against what was found.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from core import journal
from core.export import block_hash, journal_line
from core.model import Kind, Status

TIMEOUT_S = 300.0

CHECK_NAMES: Final = (
    "journal",
    "postings",
    "chains",
    "counters",
    "trial balance",
    "holds",
    "lease",
    "anchors",
)
# The shard number of problems found across shards (the cluster's trial balance).
CLUSTER: Final = -1
# Each currency's inter-shard clearing account (shards/crossshard.py clearing_account): a
# spread account whose pieces net to zero over the cluster once cross-shard work resolves.
CLEARING_ACCOUNT_PREFIX: Final = "@clearing/"
# Kinds whose legs post as they are (an abort marker has no legs, so no postings).
_POSTED_KINDS: Final = frozenset(
    {Kind.ORDINARY, Kind.REVERSAL, Kind.COMMIT, Kind.ABORT, Kind.REVERSAL_MARK}
)
# Kinds whose legs are held (pending) until posted, voided or expired: holds and the
# participants' pieces of cross-shard transactions.
_HELD_KINDS: Final = frozenset({Kind.PENDING, Kind.PREPARED})
COUNTER_NAMES: Final = ("debits_posted", "credits_posted", "debits_pending", "credits_pending")

Progress = Callable[[int, str, int, int], None]
"""Called with (shard, phase, done, total) while a shard is audited; phases are "journal"
(postings streamed) and "accounts" (accounts checked)."""


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
    # Problems kept per check and shard; the rest are counted.
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


@dataclass(frozen=True, slots=True)
class Problem:
    shard: int
    check: str
    subject: str
    message: str
    expected: str = ""
    found: str = ""

    def __str__(self) -> str:
        where = "cluster" if self.shard == CLUSTER else f"shard {self.shard}"
        return f"{where}: {self.subject}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "check": self.check,
            "subject": self.subject,
            "message": self.message,
            "expected": self.expected,
            "found": self.found,
            "text": str(self),
        }


class ProblemLog:
    """A shard's problems: the first problem_count_max of each check kept, all counted."""

    def __init__(self, shard: int, count_max: int) -> None:
        self.shard = shard
        self.count_max = count_max
        self.kept: list[Problem] = []
        self.counts: dict[str, int] = dict.fromkeys(CHECK_NAMES, 0)

    def add(
        self, check: str, subject: str, message: str, expected: object = "", found: object = ""
    ) -> None:
        self.counts[check] = self.counts.get(check, 0) + 1
        if self.counts[check] <= self.count_max:
            problem = Problem(self.shard, check, subject, message, str(expected), str(found))
            self.kept.append(problem)


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
    problems: list[Problem] = field(default_factory=list)
    problem_counts: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    # Set when the shard could not be audited at all (unreachable, no schema).
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and not any(self.problem_counts.values())


@dataclass(slots=True)
class AuditReport:
    shards: list[ShardReport]
    started_at_ns: int
    duration_s: float = 0.0
    # Per currency over every shard.
    trial_balance: dict[str, list[int]] = field(default_factory=dict)
    cluster_problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(shard.ok for shard in self.shards) and not self.cluster_problems

    @property
    def problems(self) -> list[Problem]:
        found = [p for shard in self.shards for p in shard.problems]
        return found + self.cluster_problems


# ---- the cluster ----


async def connect(dsn: str, config: AuditConfig) -> Any:
    import asyncpg  # here, so that the pure checks import without a driver

    return await asyncpg.connect(
        dsn,
        timeout=config.connect_timeout_s,
        command_timeout=config.statement_timeout_s,
        server_settings={"application_name": "tally-audit"},
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
    dsns: Sequence[str], config: AuditConfig, progress: Progress | None = None
) -> AuditReport:
    """Audit every shard (index = position in dsns), then the cluster-wide trial balance."""
    started = time.monotonic()
    report = AuditReport([], time.time_ns())
    limit = asyncio.Semaphore(config.shard_concurrency_max)

    async def one(shard: int, dsn: str) -> ShardReport:
        async with limit:
            return await _audit_dsn(shard, dsn, config, progress)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(shard, dsn)) for shard, dsn in enumerate(dsns)]
    report.shards = [task.result() for task in tasks]
    report.trial_balance = _sum_balances([shard.trial_balance for shard in report.shards])
    report.cluster_problems = _cluster_problems(report)
    report.duration_s = time.monotonic() - started
    return report


def _cluster_problems(report: AuditReport) -> list[Problem]:
    """The cluster's trial balance, and its clearing pieces netting to zero."""
    problems = []
    for currency, (dp, cp, dq, cq) in sorted(report.trial_balance.items()):
        if dp != cp or dq != cq:
            problems.append(
                Problem(
                    CLUSTER,
                    "trial balance",
                    currency,
                    f"posted debits {dp}, credits {cp}; pending debits {dq}, credits {cq}",
                    f"{dp} = {cp}",
                    f"{dp} != {cp}" if dp != cp else f"{dq} != {cq}",
                )
            )
    clearing = _sum_balances([shard.clearing for shard in report.shards])
    for currency, (dp, cp, dq, cq) in sorted(clearing.items()):
        # While pieces are held, a transaction is in flight and the pieces need not net yet.
        if dp != cp and dq == cq == 0:
            problems.append(
                Problem(
                    CLUSTER,
                    "trial balance",
                    f"{CLEARING_ACCOUNT_PREFIX}{currency}",
                    f"the clearing pieces net to {dp - cp} (debits {dp}, credits {cp}), "
                    "expected 0 (if the cluster was writing, audit it again: shards are read "
                    "one snapshot each)",
                    "0",
                    str(dp - cp),
                )
            )
    return problems


async def _audit_dsn(
    shard: int, dsn: str, config: AuditConfig, progress: Progress | None
) -> ShardReport:
    started = time.monotonic()
    try:
        connection = await connect(dsn, config)
    except (OSError, TimeoutError) as error:
        return ShardReport(shard, redact(dsn), error=f"cannot connect: {error!r}")
    except Exception as error:  # asyncpg's errors: bad password, no database, ...
        return ShardReport(shard, redact(dsn), error=f"cannot connect: {error}")
    try:
        report = await audit_shard(connection, shard, config, progress)
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
    connection: Any, shard: int, config: AuditConfig, progress: Progress | None = None
) -> ShardReport:
    """Every check on one shard database, from one snapshot."""
    log = ProblemLog(shard, config.problem_count_max)
    report = ShardReport(shard, "")
    timeout_s = config.statement_timeout_s
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        sizes = await connection.fetchrow(
            """
            SELECT (SELECT count(*) FROM accounts) AS accounts,
                   (SELECT coalesce(max(sequence), 0) FROM postings) AS postings
            """,
            timeout=timeout_s,
        )
        report.account_count = sizes["accounts"]
        await JournalPass(connection, config, log, report, progress, sizes["postings"]).run()
        await check_accounts(connection, config, log, report, progress)
        await check_chains(connection, config, log)
        await check_holds(connection, config, log, report)
        await _check_lease(connection, config, log, report)
        await _check_anchors(connection, config, log, shard)
    report.problems = sorted(log.kept, key=lambda problem: CHECK_NAMES.index(problem.check))
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

_BLOCKS_SQL = """
SELECT sequence, previous_hash, hash, epoch, next_posting_sequence, account_count,
       transaction_count, posting_count, closure_count
FROM journal_blocks ORDER BY sequence
"""
_ACCOUNTS_SQL = """
SELECT block_sequence, id, currency, code, flags, metadata, created_at_ns
FROM accounts ORDER BY block_sequence, created_at_ns, id
"""
_TRANSACTIONS_SQL = """
SELECT block_sequence, id, kind, code, metadata, value_date, timeout_seconds, target_id, legs,
       applied_legs, timestamp_ns
FROM transactions ORDER BY block_sequence, timestamp_ns, id
"""
_POSTINGS_SQL = """
SELECT sequence, transaction_id, account_id, CASE WHEN is_debit THEN 'D' ELSE 'C' END,
       posted_amount, pending_delta, timestamp_ns, debits_posted_after, credits_posted_after,
       debits_pending_after, credits_pending_after, block_sequence
FROM postings ORDER BY sequence
"""
_CLOSURES_SQL = """
SELECT block_sequence, account_id, closed_at_ns
FROM account_closures ORDER BY block_sequence, closed_at_ns, account_id
"""
# Column positions in the posting rows above.
_P_SEQUENCE, _P_TRANSACTION, _P_ACCOUNT, _P_SIDE, _P_POSTED, _P_PENDING, _P_TIME = range(7)
_P_BLOCK = 11
# Column positions in the transaction rows above.
_T_ID, _T_KIND, _T_TARGET, _T_APPLIED, _T_TIME = 1, 2, 7, 9, 10


def posting_subject(row: Any) -> str:
    return (
        f"posting {row[_P_SEQUENCE]} (transaction {row[_P_TRANSACTION]}, account {row[_P_ACCOUNT]})"
    )


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
        log: ProblemLog,
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
        blocks = await self._open(_BLOCKS_SQL)
        self.streams = {
            "accounts": await self._open(_ACCOUNTS_SQL),
            "transactions": await self._open(_TRANSACTIONS_SQL),
            "closures": await self._open(_CLOSURES_SQL),
        }
        self.postings = await self._open(_POSTINGS_SQL)
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
        postings = await self.postings.take_below(_P_SEQUENCE, header["next_posting_sequence"])
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
        what = {"accounts": "account", "transactions": "transaction", "closures": "closure of"}
        self.log.add(
            "journal",
            f"{what[name]} {row[1]}",
            f"recorded in block {row[0]}, which is not in the journal",
        )

    def _check_header(self, header: Any) -> None:
        block = header["sequence"]
        expected = self.previous_block + 1
        if block != expected:
            self.log.add(
                "journal",
                f"block {expected}" if block == expected + 1 else f"blocks {expected}..{block - 1}",
                f"missing from the journal (block {self.previous_block} is followed by "
                f"block {block})",
                expected,
                block,
            )
        if header["epoch"] < self.previous_epoch:
            self.log.add(
                "journal",
                f"block {block}",
                f"epoch {header['epoch']} is below block {self.previous_block}'s "
                f"{self.previous_epoch} (writer epochs only grow)",
            )
        self.previous_block = block
        self.previous_epoch = header["epoch"]

    def _check_posting_range(self, header: Any, postings: list[Any]) -> None:
        block = header["sequence"]
        end = header["next_posting_sequence"]
        expected = self.next_posting
        if end < expected:
            self.log.add(
                "journal",
                f"block {block}",
                f"next_posting_sequence {end} is below the block before's {expected}",
            )
        for row in postings:
            sequence = row[_P_SEQUENCE]
            if sequence > expected:
                self._missing_postings(block, expected, sequence)
            if row[_P_BLOCK] != block:
                self.log.add(
                    "journal",
                    posting_subject(row),
                    f"block_sequence {row[_P_BLOCK]}, but its sequence lies in block {block} "
                    f"(postings {self.next_posting}..{end - 1})",
                    block,
                    row[_P_BLOCK],
                )
            expected = sequence + 1
        if expected < end:
            self._missing_postings(block, expected, end)
        self.next_posting = max(end, expected)

    def _missing_postings(self, block: int, first: int, end: int) -> None:
        which = f"posting {first}" if end == first + 1 else f"postings {first}..{end - 1}"
        self.log.add("journal", f"block {block}", f"{which} missing (sequence gap)", which, "")

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
                    "journal",
                    f"block {header['sequence']}",
                    f"{name} {header[name]} in its header, but {count} rows found",
                    header[name],
                    count,
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
        lines += [journal_line("P", row[:_P_BLOCK]) for row in postings]
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
        message = f"previous_hash {_hex(previous_field)} is not block {block - 1}'s hash {expected}"
        if recomputed != stored:
            from_before = block_hash(self.previous_stored, block, lines)
            if from_before == stored:
                # The block was hashed onto the block before as stored: only the field changed.
                message = (
                    f"previous_hash {_hex(previous_field)} was altered: the block's hash was "
                    f"made from block {block - 1}'s hash {expected}"
                )
                recomputed = from_before
        self.log.add("journal", f"block {block}", message, expected, _hex(previous_field))
        return recomputed

    def _report_mismatch(self, mismatch: _HashMismatch, next_previous: bytes | None) -> None:
        """Tell an altered hash from altered rows by the next block's previous_hash."""
        block = mismatch.block
        stored, recomputed = _hex(mismatch.stored), _hex(mismatch.recomputed)
        if next_previous == mismatch.recomputed:
            message = (
                f"hash {stored} was altered: its rows give {recomputed}, which block "
                f"{block + 1}'s previous_hash also records"
            )
        elif next_previous == mismatch.stored:
            message = (
                f"hash {stored} does not match its rows (recomputed {recomputed}): its rows "
                "were changed after it was written"
            )
        else:
            message = f"hash {stored} does not match its rows (recomputed {recomputed})"
        self.log.add("journal", f"block {block}", message, recomputed, stored)

    async def _check_postings(
        self, block: int, transactions: list[Any], postings: list[Any]
    ) -> None:
        by_transaction: dict[str, list[Any]] = {}
        for row in postings:
            by_transaction.setdefault(row[_P_TRANSACTION], []).append(row)
        held = await self._held_legs(transactions)
        for transaction in transactions:
            actual = by_transaction.pop(transaction[_T_ID], [])
            check_transaction_postings(self.log, block, transaction, actual, held)
        for transaction_id, rows in by_transaction.items():
            for row in rows:
                self.log.add(
                    "postings",
                    posting_subject(row),
                    f"transaction {transaction_id} is not recorded in block {block}",
                )

    async def _held_legs(self, transactions: list[Any]) -> dict[str, str]:
        """Applied legs of the holds this block's partial or full posts resolve."""
        held: dict[str, str] = {}
        missing: list[str] = []
        for row in transactions:
            kind = row[_T_KIND]
            if kind in _HELD_KINDS:
                self.holds[row[_T_ID]] = row[_T_APPLIED]
                if len(self.holds) > self.config.hold_cache_count_max:
                    self.holds.popitem(last=False)
            elif kind in (Kind.POST_PENDING, Kind.VOID_PENDING, Kind.EXPIRY):
                legs = self.holds.pop(row[_T_TARGET], None)
                if legs is not None:
                    held[row[_T_TARGET]] = legs
                elif kind == Kind.POST_PENDING:
                    missing.append(row[_T_TARGET])
        if missing:
            for found in await self.connection.fetch(
                "SELECT id, applied_legs FROM transactions WHERE id = ANY($1::text[]) "
                "AND kind = ANY($2::smallint[])",
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
                    "journal",
                    posting_subject(row),
                    f"beyond the journal (it claims block {row[_P_BLOCK]}, but the last block, "
                    f"{self.previous_block}, ends before posting {self.next_posting})",
                    f"sequence < {self.next_posting}",
                    row[_P_SEQUENCE],
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
        posted = _sum_by_key(applied)
        return [
            (account, side, posted.get((account, side, cur), 0), -amount, cur)
            for (account, side, cur), amount in _sum_by_key(parse_legs(held_text)).items()
        ]
    raise ValueError(f"kind {kind} is not a kind of transaction")


def check_transaction_postings(
    log: ProblemLog, block: int, transaction: Any, actual: list[Any], held: dict[str, str]
) -> None:
    """Compare a transaction's postings with what its legs say they must be."""
    transaction_id = transaction[_T_ID]
    try:
        expected = expected_postings(
            transaction[_T_KIND], transaction[_T_APPLIED], held.get(transaction[_T_TARGET])
        )
    except ValueError as error:
        subject = f"transaction {transaction_id} (block {block})"
        log.add("postings", subject, f"its legs cannot be checked: {error}")
        return
    if not _is_balanced_pair(expected):
        _check_balanced(log, f"transaction {transaction_id} (block {block})", expected)
    timestamp_ns = transaction[_T_TIME]
    if not _postings_are(actual, expected, timestamp_ns):
        subject = f"transaction {transaction_id} (block {block})"
        _match_postings(log, subject, transaction_id, timestamp_ns, expected, actual)


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
            row[_P_ACCOUNT] != leg[0]
            or row[_P_SIDE] != leg[1]
            or row[_P_POSTED] != leg[2]
            or row[_P_PENDING] != leg[3]
            or row[_P_TIME] != timestamp_ns
        ):
            return False
    return True


def _check_balanced(log: ProblemLog, subject: str, expected: list[ExpectedPosting]) -> None:
    net: dict[str, list[int]] = {}
    for _account, side, posted, pending, currency in expected:
        sums = net.setdefault(currency, [0, 0])
        sums[0] += _DEBIT_SIGN[side] * posted
        sums[1] += _DEBIT_SIGN[side] * pending
    for currency, (posted, pending) in sorted(net.items()):
        if posted or pending:
            log.add(
                "postings",
                subject,
                f"unbalanced in {currency}: debits minus credits {posted} posted, "
                f"{pending} pending",
                0,
                posted or pending,
            )


def _match_postings(
    log: ProblemLog,
    subject: str,
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
        legs = remaining.get((row[_P_ACCOUNT], row[_P_SIDE]))
        if not legs:
            log.add(
                "postings",
                posting_subject(row),
                f"not a leg of transaction {transaction_id}: {_side_name(row[_P_SIDE])} "
                f"posted {row[_P_POSTED]}, pending {row[_P_PENDING]}",
            )
            continue
        leg = legs.popleft()
        for name, found, wanted in (
            ("posted_amount", row[_P_POSTED], leg[2]),
            ("pending_delta", row[_P_PENDING], leg[3]),
            ("timestamp_ns", row[_P_TIME], timestamp_ns),
        ):
            if found != wanted:
                log.add(
                    "postings",
                    posting_subject(row),
                    f"{name} {found}, expected {wanted} (from transaction {transaction_id})",
                    wanted,
                    found,
                )
    for legs in remaining.values():
        for account, side, posted, pending, currency in legs:
            log.add(
                "postings",
                subject,
                f"no posting for its {_side_name(side)} of {account} "
                f"(posted {posted}, pending {pending} {currency})",
                f"a posting to {account}",
                "none",
            )


def _side_name(side: str) -> str:
    return "debit" if side == "D" else "credit"


# ---- accounts: counters against their postings, flags, trial balance ----

_ACCOUNT_SUMS_SQL = """
SELECT coalesce(a.id, s.account_id) AS id, a.id IS NOT NULL AS known, a.currency, a.flags,
       a.closed_at_ns, a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending,
       coalesce(s.dp, 0) AS sum_dp, coalesce(s.cp, 0) AS sum_cp,
       coalesce(s.dq, 0) AS sum_dq, coalesce(s.cq, 0) AS sum_cq,
       coalesce(s.posting_count, 0) AS posting_count
FROM accounts a FULL JOIN (
    SELECT account_id,
           sum(posted_amount) FILTER (WHERE is_debit) AS dp,
           sum(posted_amount) FILTER (WHERE NOT is_debit) AS cp,
           sum(pending_delta) FILTER (WHERE is_debit) AS dq,
           sum(pending_delta) FILTER (WHERE NOT is_debit) AS cq,
           count(*) AS posting_count
    FROM postings GROUP BY account_id
) s ON s.account_id = a.id
"""


async def check_accounts(
    connection: Any,
    config: AuditConfig,
    log: ProblemLog,
    report: ShardReport,
    progress: Progress | None = None,
) -> None:
    """Each account's counters equal the sums of its postings; flags hold; the per-currency
    trial balance of the counters (every account streams through once)."""
    stream = await RowStream.open(
        connection, _ACCOUNT_SUMS_SQL, config.fetch_row_count, config.statement_timeout_s
    )
    done = 0
    while rows := await stream.rest():
        for row in rows:
            _check_account(log, row, report.trial_balance, report.clearing)
        done += len(rows)
        if progress is not None:
            progress(log.shard, "accounts", done, max(done, report.account_count))
    for currency, (dp, cp, dq, cq) in sorted(report.trial_balance.items()):
        for kind, debits, credits in (("posted", dp, cp), ("pending", dq, cq)):
            if debits != credits:
                log.add(
                    "trial balance",
                    currency,
                    f"{kind} debits {debits}, {kind} credits {credits} (differ by "
                    f"{debits - credits})",
                    f"{kind} debits = {kind} credits",
                    f"{debits} != {credits}",
                )


def _add_counters(sums: dict[str, list[int]], currency: str, counters: Sequence[int]) -> None:
    into = sums.setdefault(currency, [0, 0, 0, 0])
    for index, value in enumerate(counters):
        into[index] += value


def _check_account(
    log: ProblemLog,
    row: Any,
    trial_balance: dict[str, list[int]],
    clearing: dict[str, list[int]],
) -> None:
    account_id = row["id"]
    subject = f"account {account_id}"
    posting_count = row["posting_count"]
    if not row["known"]:
        log.add("counters", subject, f"has {posting_count} postings but is not in accounts")
        return
    counters = [row[name] for name in COUNTER_NAMES]
    sums = [int(row[name]) for name in ("sum_dp", "sum_cp", "sum_dq", "sum_cq")]
    for name, found, expected in zip(COUNTER_NAMES, counters, sums, strict=True):
        if found != expected:
            log.add(
                "counters",
                subject,
                f"{name} {found}, but its {posting_count} postings sum to {expected}",
                expected,
                found,
            )
    _add_counters(trial_balance, row["currency"], counters)
    if account_id.startswith(CLEARING_ACCOUNT_PREFIX):
        _add_counters(clearing, row["currency"], counters)
    _check_flags(log, subject, account_id, row["flags"], row["closed_at_ns"], counters)


def _check_flags(
    log: ProblemLog,
    subject: str,
    account_id: str,
    flags: int,
    closed_at_ns: int,
    counters: list[int],
) -> None:
    dp, cp, dq, cq = counters
    no_overdraft = bool(flags & journal.FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS)
    credit_limit = bool(flags & journal.FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS)
    if no_overdraft and dp + dq > cp:
        log.add(
            "counters",
            subject,
            f"debits_posted {dp} + debits_pending {dq} exceed credits_posted {cp}, but it "
            "is debits_must_not_exceed_credits",
            f"<= {cp}",
            dp + dq,
        )
    if credit_limit and cp + cq > dp:
        log.add(
            "counters",
            subject,
            f"credits_posted {cp} + credits_pending {cq} exceed debits_posted {dp}, but it "
            "is credits_must_not_exceed_debits",
            f"<= {dp}",
            cp + cq,
        )
    if (no_overdraft or credit_limit) and account_id.startswith("@"):
        log.add("counters", subject, "a spread account carries a must-not-exceed flag")
    if closed_at_ns and (dp != cp or dq or cq):
        log.add(
            "counters",
            subject,
            f"closed, but its posted balance is {cp - dp} and {dq + cq} is pending",
            "0",
            f"{cp - dp}",
        )


# ---- balance-after chains ----

_CHAINS_SQL = """
SELECT sequence, transaction_id, account_id, is_debit, posted_amount, pending_delta,
       dp, cp, dq, cq, pdp, pcp, pdq, pcq, previous_sequence
FROM (
    SELECT sequence, transaction_id, account_id, is_debit, posted_amount, pending_delta,
           debits_posted_after AS dp, credits_posted_after AS cp,
           debits_pending_after AS dq, credits_pending_after AS cq,
           coalesce(lag(debits_posted_after) OVER w, 0) AS pdp,
           coalesce(lag(credits_posted_after) OVER w, 0) AS pcp,
           coalesce(lag(debits_pending_after) OVER w, 0) AS pdq,
           coalesce(lag(credits_pending_after) OVER w, 0) AS pcq,
           lag(sequence) OVER w AS previous_sequence
    FROM postings WINDOW w AS (PARTITION BY account_id ORDER BY sequence)
) p
-- numeric: a tampered row must not overflow bigint and abort the audit.
WHERE dp::numeric <> pdp::numeric + CASE WHEN is_debit THEN posted_amount ELSE 0 END
   OR cp::numeric <> pcp::numeric + CASE WHEN is_debit THEN 0 ELSE posted_amount END
   OR dq::numeric <> pdq::numeric + CASE WHEN is_debit THEN pending_delta ELSE 0 END
   OR cq::numeric <> pcq::numeric + CASE WHEN is_debit THEN 0 ELSE pending_delta END
ORDER BY sequence
"""


async def check_chains(connection: Any, config: AuditConfig, log: ProblemLog) -> None:
    """Every posting's balance-after is the account's previous balance-after plus its amounts
    (PostgreSQL walks each account's postings in order; only broken links come back)."""
    stream = await RowStream.open(
        connection, _CHAINS_SQL, config.fetch_row_count, config.statement_timeout_s
    )
    while rows := await stream.rest():
        for row in rows:
            _report_chain_break(log, row)


def _report_chain_break(log: ProblemLog, row: Any) -> None:
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
    subject = (
        f"posting {row['sequence']} (transaction {row['transaction_id']}, "
        f"account {row['account_id']})"
    )
    log.add("chains", subject, "; ".join(parts), expected_first, found_first)


# ---- holds ----

_HOLDS_SQL = """
SELECT h.transaction_id, h.expires_at_ns, t.kind, t.status, t.expires_at_ns AS recorded_ns
FROM holds h LEFT JOIN transactions t ON t.id = h.transaction_id
ORDER BY h.transaction_id
"""
_PENDING_WITHOUT_HOLD_SQL = """
SELECT id, expires_at_ns FROM transactions t
WHERE status = $1 AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.transaction_id = t.id)
ORDER BY id
"""


async def check_holds(
    connection: Any, config: AuditConfig, log: ProblemLog, report: ShardReport
) -> None:
    """Open holds agree with their transactions, and none is past its deadline."""
    now_ns = config.now_ns or time.time_ns()
    stream = await RowStream.open(
        connection, _HOLDS_SQL, config.fetch_row_count, config.statement_timeout_s
    )
    while rows := await stream.rest():
        report.hold_count += len(rows)
        for row in rows:
            _check_hold(log, row, config.hold_grace_s, now_ns)
    orphans = await RowStream.open(
        connection,
        _PENDING_WITHOUT_HOLD_SQL,
        config.fetch_row_count,
        config.statement_timeout_s,
        int(Status.PENDING),
    )
    while rows := await orphans.rest():
        for row in rows:
            log.add("holds", f"transaction {row['id']}", "pending, but has no open hold row")


def _check_hold(log: ProblemLog, row: Any, grace_s: float | None, now_ns: int) -> None:
    subject = f"hold {row['transaction_id']}"
    expires_at_ns = row["expires_at_ns"]
    if row["kind"] is None:
        log.add("holds", subject, "open, but no such transaction is recorded")
        return
    if row["kind"] not in _HELD_KINDS:
        kind = Kind(row["kind"]).name if row["kind"] in set(Kind) else row["kind"]
        log.add("holds", subject, f"open, but the transaction is a {kind}")
    if row["status"] != Status.PENDING:
        status = Status(row["status"]).name if row["status"] in set(Status) else row["status"]
        log.add("holds", subject, f"open, but the transaction's status is {status}")
    if row["recorded_ns"] != expires_at_ns:
        log.add(
            "holds",
            subject,
            f"expires_at_ns {expires_at_ns}, but the transaction records {row['recorded_ns']}",
            row["recorded_ns"],
            expires_at_ns,
        )
    if grace_s is not None and expires_at_ns and expires_at_ns + grace_s * 1e9 < now_ns:
        late_s = (now_ns - expires_at_ns) / 1e9
        why = (
            "a prepared cross-shard piece is resolved by its coordinator by then"
            if row["kind"] == Kind.PREPARED
            else "holds are released when they expire"
        )
        log.add(
            "holds",
            subject,
            f"still open {late_s:,.0f} s after its deadline ({_utc(expires_at_ns)}); {why}",
            f"resolved by {_utc(expires_at_ns)}",
            "open",
        )


def _utc(timestamp_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp_ns / 1e9))


# ---- the lease and anchors ----


async def _check_lease(
    connection: Any, config: AuditConfig, log: ProblemLog, report: ShardReport
) -> None:
    recorded = await connection.fetchval(
        "SELECT last_block_sequence FROM writer_lease WHERE id = 1",
        timeout=config.statement_timeout_s,
    )
    if recorded is not None and recorded != report.head_block:
        log.add(
            "lease",
            f"block {max(recorded, report.head_block)}",
            f"the journal ends at block {report.head_block}, but the writer lease records "
            f"block {recorded} as the last committed",
            recorded,
            report.head_block,
        )


async def _check_anchors(connection: Any, config: AuditConfig, log: ProblemLog, shard: int) -> None:
    for anchor in config.anchors:
        if anchor.shard != shard:
            continue
        stored = await connection.fetchval(
            "SELECT encode(hash, 'hex') FROM journal_blocks WHERE sequence = $1",
            anchor.block,
            timeout=config.statement_timeout_s,
        )
        if stored != anchor.hash_hex.lower():
            log.add(
                "anchors",
                f"block {anchor.block}",
                f"hash {stored or 'missing'}, but the anchor records {anchor.hash_hex}",
                anchor.hash_hex,
                stored or "missing",
            )


# ---- the original building blocks (kept for their callers) ----


async def trial_balance(connection: Any) -> dict[str, tuple[int, int, int, int]]:
    """Per currency: (debits_posted, credits_posted, debits_pending, credits_pending)."""
    rows = await connection.fetch(
        """
        SELECT currency, sum(debits_posted)::numeric AS dp, sum(credits_posted)::numeric AS cp,
               sum(debits_pending)::numeric AS dq, sum(credits_pending)::numeric AS cq
        FROM accounts GROUP BY currency ORDER BY currency
        """,
        timeout=TIMEOUT_S,
    )
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
    log = ProblemLog(0, 10**9)
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        await check_accounts(connection, AuditConfig(statement_timeout_s=TIMEOUT_S), log, _blank())
    return [f"{p.subject}: {p.message}" for p in log.kept if p.check == "counters"]


async def check_balance_after_chains(connection: Any) -> list[str]:
    """Each posting's balance-after equals the previous one's plus its own change."""
    log = ProblemLog(0, 10**9)
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        await check_chains(connection, AuditConfig(statement_timeout_s=TIMEOUT_S), log)
    return [f"{p.subject}: {p.message}" for p in log.kept]


async def check_transactions_balanced(connection: Any) -> list[str]:
    """Per transaction and currency, debits equal credits in both posted and pending changes."""
    rows = await connection.fetch(
        """
        SELECT p.transaction_id, a.currency,
               sum(CASE WHEN p.is_debit THEN p.posted_amount ELSE -p.posted_amount END) AS posted,
               sum(CASE WHEN p.is_debit THEN p.pending_delta ELSE -p.pending_delta END) AS pending
        FROM postings p JOIN accounts a ON a.id = p.account_id
        GROUP BY p.transaction_id, a.currency
        HAVING sum(CASE WHEN p.is_debit THEN p.posted_amount ELSE -p.posted_amount END) <> 0
            OR sum(CASE WHEN p.is_debit THEN p.pending_delta ELSE -p.pending_delta END) <> 0
        ORDER BY 1, 2
        """,
        timeout=TIMEOUT_S,
    )
    return [
        f"transaction {r['transaction_id']} {r['currency']}: unbalanced by "
        f"{r['posted']} posted, {r['pending']} pending"
        for r in rows
    ]


async def check_hash_chain(connection: Any) -> list[str]:
    """Recompute every journal block's hash from its rows and the previous block's hash."""
    log = ProblemLog(0, 10**9)
    config = AuditConfig(statement_timeout_s=TIMEOUT_S)
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        await JournalPass(connection, config, log, _blank(), None, 0).run()
    return [f"{p.subject}: {p.message}" for p in log.kept if p.check == "journal"]


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
