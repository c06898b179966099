"""The library's plain types: what a product builds and reads, with amounts as integers in
minor units (tally.client.money converts). Each write type makes its wire message
(`to_message`); each read type is made from one (`of_message`)."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tally.v1 import ledger_pb2 as pb


class Side(enum.IntEnum):
    DEBIT = pb.SIDE_DEBIT
    CREDIT = pb.SIDE_CREDIT


@dataclass(frozen=True)
class Account:
    """An account to open. `id` is "PARTITION_KEY/..." (the customer's key: one shard holds
    all of a customer's accounts) or "@..." for a house account spread over every shard."""

    id: str
    currency: str
    code: int = 1
    debits_must_not_exceed_credits: bool = False
    credits_must_not_exceed_debits: bool = False
    metadata: Mapping[str, str] = field(default_factory=dict)

    def to_message(self) -> pb.Account:
        return pb.Account(
            id=self.id,
            currency=self.currency,
            code=self.code,
            debits_must_not_exceed_credits=self.debits_must_not_exceed_credits,
            credits_must_not_exceed_debits=self.credits_must_not_exceed_debits,
            metadata=dict(self.metadata),
        )


@dataclass(frozen=True)
class Leg:
    account_id: str
    side: Side
    amount: int  # minor units
    currency: str

    def __post_init__(self) -> None:
        _check_amount(self.amount)

    def to_message(self) -> pb.Leg:
        return pb.Leg(
            account_id=self.account_id,
            side=int(self.side),
            amount=self.amount,
            currency=self.currency,
        )

    @classmethod
    def of_message(cls, leg: pb.Leg) -> Leg:
        return cls(leg.account_id, Side(leg.side), leg.amount, leg.currency)


@dataclass(frozen=True)
class Transaction:
    """A transaction to post; build it with transfer, hold, capture, void or reversal. Its id
    is its idempotency key: keep it with the business event, and retry with it."""

    id: str
    legs: tuple[Leg, ...] = ()
    code: int = 1
    metadata: Mapping[str, str] = field(default_factory=dict)
    value_date: str = ""
    pending: bool = False
    timeout_seconds: int = 0
    post_pending_id: str = ""
    void_pending_id: str = ""
    reverses_id: str = ""

    def to_message(self, linked: bool = False) -> pb.Transaction:
        return pb.Transaction(
            id=self.id,
            legs=[leg.to_message() for leg in self.legs],
            code=self.code,
            metadata=dict(self.metadata),
            value_date=self.value_date,
            pending=self.pending,
            timeout_seconds=self.timeout_seconds,
            linked=linked,
            post_pending_id=self.post_pending_id,
            void_pending_id=self.void_pending_id,
            reverses_id=self.reverses_id,
        )

    @classmethod
    def of_message(cls, message: pb.Transaction) -> Transaction:
        return cls(
            id=message.id,
            legs=tuple(Leg.of_message(leg) for leg in message.legs),
            code=message.code,
            metadata=dict(message.metadata),
            value_date=message.value_date,
            pending=message.pending,
            timeout_seconds=message.timeout_seconds,
            post_pending_id=message.post_pending_id,
            void_pending_id=message.void_pending_id,
            reverses_id=message.reverses_id,
        )


def transfer(
    id: str,
    debit: str,
    credit: str,
    amount: int,
    currency: str,
    code: int = 1,
    *,
    metadata: Mapping[str, str] | None = None,
    value_date: str = "",
) -> Transaction:
    """Move amount (minor units) from the debit account to the credit account."""
    legs = (Leg(debit, Side.DEBIT, amount, currency), Leg(credit, Side.CREDIT, amount, currency))
    return Transaction(id, legs, code, metadata or {}, value_date)


def hold(
    id: str,
    debit: str,
    credit: str,
    amount: int,
    currency: str,
    code: int = 1,
    *,
    timeout_seconds: int = 0,
    metadata: Mapping[str, str] | None = None,
) -> Transaction:
    """Reserve amount on both accounts' pending counters until captured, voided or expired
    (timeout_seconds after it is applied; 0: never)."""
    held = transfer(id, debit, credit, amount, currency, code, metadata=metadata)
    return Transaction(
        id, held.legs, code, held.metadata, pending=True, timeout_seconds=timeout_seconds
    )


def capture(id: str, hold_id: str, legs: Sequence[Leg] = (), code: int = 1) -> Transaction:
    """Post a hold: in full (no legs), or in part (a subset of its legs, amounts no larger)."""
    return Transaction(id, tuple(legs), code, post_pending_id=hold_id)


def void(id: str, hold_id: str, code: int = 1) -> Transaction:
    """Release a hold."""
    return Transaction(id, (), code, void_pending_id=hold_id)


def reversal(id: str, of: str, code: int = 1) -> Transaction:
    """A new transaction with the legs of `of` inverted (a refund, a fee waived)."""
    return Transaction(id, (), code, reverses_id=of)


@dataclass(frozen=True)
class Balance:
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int
    available: int

    @classmethod
    def of_message(cls, balance: pb.Balance) -> Balance:
        return cls(
            balance.debits_posted,
            balance.credits_posted,
            balance.debits_pending,
            balance.credits_pending,
            balance.available,
        )


@dataclass(frozen=True)
class AccountState:
    account: Account
    balance: Balance
    version: int
    closed: bool

    @classmethod
    def of_message(cls, record: pb.AccountRecord) -> AccountState:
        a = record.account
        account = Account(
            a.id,
            a.currency,
            a.code,
            a.debits_must_not_exceed_credits,
            a.credits_must_not_exceed_debits,
            dict(a.metadata),
        )
        return cls(account, Balance.of_message(record.balance), record.version, record.closed)


@dataclass(frozen=True)
class TransactionState:
    """A transaction as recorded: status is "posted", "pending", "pending_posted",
    "pending_voided" or "pending_expired"; applied_legs as applied (for a capture, void or
    reversal: derived from the original)."""

    transaction: Transaction
    status: str
    timestamp_ns: int
    applied_legs: tuple[Leg, ...]
    resolved_by_id: str
    reversed_by_id: str
    expires_at_ns: int

    @classmethod
    def of_message(cls, record: pb.TransactionRecord) -> TransactionState:
        status = pb.TransactionStatus.Name(record.status)
        return cls(
            Transaction.of_message(record.transaction),
            status.removeprefix("TRANSACTION_STATUS_").lower(),
            record.timestamp_ns,
            tuple(Leg.of_message(leg) for leg in record.applied_legs),
            record.resolved_by_id,
            record.reversed_by_id,
            record.expires_at_ns,
        )


@dataclass(frozen=True)
class Posting:
    """One change to one account, with the balance after it."""

    sequence: int
    transaction_id: str
    account_id: str
    side: Side
    posted_amount: int
    pending_delta: int
    timestamp_ns: int
    balance_after: Balance

    @classmethod
    def of_message(cls, posting: pb.Posting) -> Posting:
        return cls(
            posting.sequence,
            posting.transaction_id,
            posting.account_id,
            Side(posting.side),
            posting.posted_amount,
            posting.pending_delta,
            posting.timestamp_ns,
            Balance.of_message(posting.balance_after),
        )


def _check_amount(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"amounts are integers of minor units (tally.client.to_minor): {amount!r}")
    if not 0 < amount < 2**63:
        raise ValueError(f"an amount is 1..2**63-1 minor units, got {amount}")
