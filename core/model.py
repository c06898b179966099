"""Domain types of the ledger, and their cache records. Plain slotted classes; no protobuf
past the servicer layer. (The cross-shard protocol's records are core.pieces', under the
reserved ids of core.ids.)"""

from __future__ import annotations

import enum
from typing import Any, Final, NamedTuple

from core import limits

Metadata = tuple[tuple[str, str], ...]
"""Metadata as sorted (key, value) pairs: hashable, and canonical for comparison and hashing."""


class ResultCode(enum.IntEnum):
    """Mirrors tally.v1.ResultCode number for number (checked by a test)."""

    UNSPECIFIED = 0
    OK = 1
    CREATED = 2
    REPLAYED = 3
    IDEMPOTENCY_CONFLICT = 4
    INSUFFICIENT_FUNDS = 5
    CREDITS_EXCEED_DEBITS = 6
    ACCOUNT_NOT_FOUND = 7
    ACCOUNT_CLOSED = 8
    UNBALANCED = 9
    CURRENCY_MISMATCH = 10
    AMOUNT_OVERFLOW = 11
    PENDING_NOT_FOUND = 12
    PENDING_ALREADY_RESOLVED = 13
    PENDING_EXPIRED = 14
    LINKED_ITEM_FAILED = 15
    LINKED_CHAIN_OPEN = 16
    DUPLICATE_ID_IN_BATCH = 17
    INVALID_ID = 18
    INVALID_AMOUNT = 19
    INVALID_CURRENCY = 20
    INVALID_LEGS = 21
    INVALID_METADATA = 22
    INVALID_CODE = 23
    INVALID_FLAGS = 24
    INVALID_VALUE_DATE = 25
    INVALID_TIMEOUT = 26
    INVALID_SIDE = 27
    POST_EXCEEDS_PENDING = 28
    TRANSACTION_NOT_FOUND = 29
    ALREADY_REVERSED = 30
    NOT_REVERSIBLE = 31
    INVALID_SPREAD_ACCOUNT_FLAGS = 32
    ACCOUNT_HAS_BALANCE = 33
    ACCOUNT_HAS_PENDING = 34
    UNAVAILABLE = 35
    WRONG_SHARD = 36
    ABORTED = 37
    ITEM_FAULT = 38
    OUTCOME_UNKNOWN = 39


SUCCESS_CODES = frozenset({ResultCode.OK, ResultCode.CREATED, ResultCode.REPLAYED})


class Kind(enum.IntEnum):
    """What a transaction does; stored as a small integer."""

    ORDINARY = 0
    PENDING = 1
    POST_PENDING = 2
    VOID_PENDING = 3
    REVERSAL = 4
    # Written by the shard itself when a hold times out; never submitted by a client.
    EXPIRY = 5
    # Cross-shard (two-phase commit, from gateways only). A participant's piece, held like a
    # hold until resolved; target_id is the coordinator shard's number.
    PREPARED = 6
    # The coordinator's piece, posted; its presence is the commit decision. target_id names
    # the abort marker that must not exist.
    COMMIT = 7
    # The coordinator's abort marker of one attempt of T (id core.ids.abort_marker_id(T,
    # attempt): "~abort/<attempt>/<T>", target_id T, code: the ResultCode of the reason); it
    # exists only if that attempt never committed (another attempt of T still may).
    ABORT = 8
    # The coordinator's record that a committed cross-shard transaction (target_id, a COMMIT
    # here) was reversed: id core.ids.reversal_mark_id(target), metadata (("reversal",
    # <reversal id>),), no legs. One per target, so a transaction is reversed at most once.
    REVERSAL_MARK = 9
    # The coordinator's piece of a cross-shard hold (a PENDING whose legs span shards): its
    # legs held, target_id the creating attempt's abort marker (its presence is the commit
    # decision, as for COMMIT), timeout_seconds the client's. The hold's fate is decided here:
    # the client's POST_PENDING / VOID_PENDING target it, or the shard's EXPIRY.
    HOLD = 10
    # A participant's record that a held cross-shard piece (target_id) now has another
    # deadline: this record's expires_at_ns (0: none). No legs. Written when the hold a piece
    # belongs to is committed (its deadline becomes the hold's expiry) and before its fate is
    # decided (a short deadline, so that the participant asks if nobody tells it).
    DEADLINE = 11


# Kinds whose legs are held (pending) until posted, voided or expired: holds, the
# participants' pieces of cross-shard transactions and the coordinator's piece of a
# cross-shard hold.
HELD_KINDS: Final = frozenset({Kind.PENDING, Kind.PREPARED, Kind.HOLD})


class Status(enum.IntEnum):
    """Mirrors tally.v1.TransactionStatus."""

    POSTED = 1
    PENDING = 2
    PENDING_POSTED = 3
    PENDING_VOIDED = 4
    PENDING_EXPIRED = 5


class Result(NamedTuple):
    code: ResultCode
    message: str = ""
    timestamp_ns: int = 0


class Rejection(NamedTuple):
    """An item refused before it reaches the state machine (stateless validation)."""

    code: ResultCode
    message: str
    linked: bool = False


class Leg(NamedTuple):
    account_id: str
    is_debit: bool
    amount: int
    currency: str


class AccountSpec(NamedTuple):
    id: str
    currency: str
    code: int
    debits_must_not_exceed_credits: bool
    credits_must_not_exceed_debits: bool
    metadata: Metadata

    @property
    def is_spread(self) -> bool:
        return self.id.startswith("@")


class TransactionSpec(NamedTuple):
    id: str
    kind: Kind
    legs: tuple[Leg, ...]
    code: int
    metadata: Metadata
    value_date: str
    timeout_seconds: int
    # The pending transaction for POST_PENDING / VOID_PENDING / EXPIRY, the original for REVERSAL.
    target_id: str
    linked: bool = False


class CloseSpec(NamedTuple):
    account_id: str


class AccountState:
    """An account with its four balance counters. Mutated only on a batch's private copy."""

    __slots__ = (
        "closed_at_ns",
        "created_at_ns",
        "credits_pending",
        "credits_posted",
        "debits_pending",
        "debits_posted",
        "spec",
        "version",
    )

    def __init__(
        self,
        spec: AccountSpec,
        created_at_ns: int,
        debits_posted: int = 0,
        credits_posted: int = 0,
        debits_pending: int = 0,
        credits_pending: int = 0,
        version: int = 1,
        closed_at_ns: int = 0,
    ) -> None:
        self.spec = spec
        self.created_at_ns = created_at_ns
        self.debits_posted = debits_posted
        self.credits_posted = credits_posted
        self.debits_pending = debits_pending
        self.credits_pending = credits_pending
        self.version = version
        self.closed_at_ns = closed_at_ns

    def copy(self) -> AccountState:
        return AccountState(
            self.spec,
            self.created_at_ns,
            self.debits_posted,
            self.credits_posted,
            self.debits_pending,
            self.credits_pending,
            self.version,
            self.closed_at_ns,
        )

    def counters(self) -> tuple[int, int, int, int]:
        return (self.debits_posted, self.credits_posted, self.debits_pending, self.credits_pending)

    @property
    def available(self) -> int:
        return available_balance(self.spec, *self.counters())


def available_balance(
    spec: AccountSpec,
    debits_posted: int,
    credits_posted: int,
    debits_pending: int,
    credits_pending: int,
) -> int:
    """Posted minus pending on the account's side (debit side for limit-style accounts)."""
    if spec.credits_must_not_exceed_debits:
        return debits_posted - credits_posted - credits_pending
    return credits_posted - debits_posted - debits_pending


class TransactionState:
    """A recorded transaction and the parts of it that change after it is recorded."""

    __slots__ = (
        "applied_legs",
        "expires_at_ns",
        "resolved_by_id",
        "reversed_by_id",
        "spec",
        "status",
        "timestamp_ns",
    )

    def __init__(
        self,
        spec: TransactionSpec,
        applied_legs: tuple[Leg, ...],
        timestamp_ns: int,
        status: Status,
        expires_at_ns: int = 0,
        resolved_by_id: str = "",
        reversed_by_id: str = "",
    ) -> None:
        self.spec = spec
        self.applied_legs = applied_legs
        self.timestamp_ns = timestamp_ns
        self.status = status
        self.expires_at_ns = expires_at_ns
        self.resolved_by_id = resolved_by_id
        self.reversed_by_id = reversed_by_id

    def copy(self) -> TransactionState:
        return TransactionState(
            self.spec,
            self.applied_legs,
            self.timestamp_ns,
            self.status,
            self.expires_at_ns,
            self.resolved_by_id,
            self.reversed_by_id,
        )


class Posting(NamedTuple):
    """One change to one account's counters, with the account's counters after it."""

    sequence: int
    transaction_id: str
    account_id: str
    is_debit: bool
    posted_amount: int
    pending_delta: int
    timestamp_ns: int
    debits_posted_after: int
    credits_posted_after: int
    debits_pending_after: int
    credits_pending_after: int


def expires_at(timestamp_ns: int, timeout_seconds: int) -> int:
    """When a hold (or a prepared piece, by its deadline) recorded at timestamp_ns with this
    timeout expires; 0: never. Gateways compute a cross-shard hold's expiry with it from its
    coordinator's timestamp, so it must be exactly what the state machine records."""
    return timestamp_ns + timeout_seconds * 1_000_000_000 if timeout_seconds else 0


def amount_fits(value: int) -> bool:
    return 0 <= value <= limits.amount_max


# ---- cache records ----
#
# The writer caches up to millions of accounts. Objects of classes (and tuple subclasses such as
# NamedTuples) are tracked by the cyclic garbage collector, whose full passes walk every one of
# them: 28% of the node's CPU in the first benchmark. Exact tuples holding only strings, numbers
# and such tuples are untracked by the collector after the first pass they survive, so the
# caches hold records of that shape and convert at the edges.

AccountRecord = tuple[Any, ...]
TransactionRecord = tuple[Any, ...]


def account_to_record(account: AccountState) -> AccountRecord:
    spec = account.spec
    return (
        spec.id,
        spec.currency,
        spec.code,
        spec.debits_must_not_exceed_credits,
        spec.credits_must_not_exceed_debits,
        spec.metadata,
        account.created_at_ns,
        account.debits_posted,
        account.credits_posted,
        account.debits_pending,
        account.credits_pending,
        account.version,
        account.closed_at_ns,
    )


def account_from_record(record: AccountRecord) -> AccountState:
    # tuple.__new__ skips the NamedTuple's generated __new__ (a Python-level call).
    spec: AccountSpec = tuple.__new__(AccountSpec, record[:6])
    return AccountState(spec, *record[6:])


def _legs_to_record(legs: tuple[Leg, ...]) -> tuple[tuple[str, bool, int, str], ...]:
    return tuple((leg[0], leg[1], leg[2], leg[3]) for leg in legs)


def _legs_from_record(legs: tuple[tuple[str, bool, int, str], ...]) -> tuple[Leg, ...]:
    return tuple(Leg(*leg) for leg in legs)


def transaction_to_record(state: TransactionState) -> TransactionRecord:
    spec = state.spec
    return (
        spec.id,
        int(spec.kind),
        _legs_to_record(spec.legs),
        spec.code,
        spec.metadata,
        spec.value_date,
        spec.timeout_seconds,
        spec.target_id,
        _legs_to_record(state.applied_legs),
        state.timestamp_ns,
        int(state.status),
        state.expires_at_ns,
        state.resolved_by_id,
        state.reversed_by_id,
    )


def transaction_from_record(record: TransactionRecord) -> TransactionState:
    (tid, kind, legs, code, metadata, value_date, timeout, target, applied, *rest) = record
    spec = TransactionSpec(
        tid, Kind(kind), _legs_from_record(legs), code, metadata, value_date, timeout, target
    )
    timestamp_ns, status, expires_at_ns, resolved_by_id, reversed_by_id = rest
    return TransactionState(
        spec,
        _legs_from_record(applied),
        timestamp_ns,
        Status(status),
        expires_at_ns,
        resolved_by_id,
        reversed_by_id,
    )
