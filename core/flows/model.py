"""What the engine reads (flows, account facts), its configuration and limits, and UTC days.

Money is integers in minor units, never floats; a flow's legs are `core.model.Leg`s (account,
side, amount, currency), as the ledger posted them.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Final

from core import limits
from core.model import Leg, Metadata

NS_PER_DAY: Final = 86_400 * 1_000_000_000
WINDOW_DAYS: Final = (7, 15, 30, 90)
"""The rolling windows of a profile, in UTC days ending on the profile's day."""
BASELINE_WINDOW_DAYS: Final = 30
BASELINE_WINDOW_COUNT: Final = 6
"""The baseline: the 6 whole 30-day windows before the current one (180 days)."""
BASELINE_WINDOW_COUNT_MIN: Final = 2
"""Fewer previous windows of the borrower's own history than this: no baseline."""
RETENTION_DAYS: Final = max(WINDOW_DAYS) + BASELINE_WINDOW_DAYS * BASELINE_WINDOW_COUNT
"""Days kept per borrower: the longest window plus the baseline's history (90 + 180)."""
FUNDING_ACCOUNT_IDS_DEFAULT: Final = ("@funding/loans",)
_EPOCH_ORDINAL: Final = datetime.date(1970, 1, 1).toordinal()


class FlowError(ValueError):
    """A flow the ledger could not have committed (a bug of whoever reconstructed it)."""


def day_of(timestamp_ns: int) -> int:
    """The UTC day (days since 1970-01-01) of a timestamp."""
    return timestamp_ns // NS_PER_DAY


def day_of_date(text: str) -> int:
    """The UTC day of an ISO date 'YYYY-MM-DD'; ValueError if it is not one."""
    if len(text) != 10:
        raise ValueError(f"{text!r} is not a date YYYY-MM-DD")
    return datetime.date.fromisoformat(text).toordinal() - _EPOCH_ORDINAL


def date_of_day(day: int) -> str:
    return datetime.date.fromordinal(day + _EPOCH_ORDINAL).isoformat()


@dataclass(frozen=True, slots=True)
class Flow:
    """One client transaction as the monitor reconstructs it from the change stream: its id,
    commit timestamp, code, metadata and posted legs (balanced per currency)."""

    transaction_id: str
    timestamp_ns: int
    code: int
    metadata: Metadata
    legs: tuple[Leg, ...]

    def __post_init__(self) -> None:
        if self.timestamp_ns < 0:
            raise FlowError(f"flow {self.transaction_id}: timestamp_ns {self.timestamp_ns} < 0")
        if not self.legs:
            raise FlowError(f"flow {self.transaction_id}: no legs")
        balance: dict[str, int] = {}
        for leg in self.legs:
            if not 0 < leg.amount <= limits.amount_max:
                raise FlowError(f"flow {self.transaction_id}: leg amount {leg.amount}")
            signed = leg.amount if leg.is_debit else -leg.amount
            balance[leg.currency] = balance.get(leg.currency, 0) + signed
        unbalanced = sorted(currency for currency, total in balance.items() if total)
        if unbalanced:
            raise FlowError(f"flow {self.transaction_id}: unbalanced in {', '.join(unbalanced)}")


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """An account as created (the monitor learns it from the stream)."""

    account_id: str
    currency: str
    code: int
    metadata: Metadata


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """What shapes the engine's state and features; every bound explicit.

    counterparty_per_day_max: counterparties kept per borrower, day and currency; money of
    any further one that day goes to the day's overflow (counted in totals, never attributed).
    pair_count_max: the pairs of client counterparties that paid each other (across
    borrowers) kept at once; a new pair past it is not recorded (counted).
    round_trip_days: money that comes back from a counterparty within this many days of
    leaving to it is a round trip.
    """

    funding_account_ids: tuple[str, ...] = FUNDING_ACCOUNT_IDS_DEFAULT
    counterparty_per_day_max: int = 64
    pair_count_max: int = 250_000
    round_trip_days: int = 7

    def __post_init__(self) -> None:
        if not 1 <= self.counterparty_per_day_max <= 10_000:
            raise ValueError("counterparty_per_day_max must be within 1..10000")
        if not 0 <= self.pair_count_max <= 100_000_000:
            raise ValueError("pair_count_max must be within 0..100000000")
        if not 0 <= self.round_trip_days <= max(WINDOW_DAYS):
            raise ValueError(f"round_trip_days must be within 0..{max(WINDOW_DAYS)}")
        for account_id in self.funding_account_ids:
            if not account_id.startswith("@"):
                raise ValueError(f"funding account {account_id!r} is not a spread account")
