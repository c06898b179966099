"""A loan account's repayment schedule, from its metadata, and what falls due in a window.

The encoding (a few short entries of the 16 an account may carry):

    loan.kind = loan               marks a loan account (its movements are loan movements)
    loan.product = agri-seasonal   the product whose alert rules apply (optional)
    loan.installment = 125000      principal + interest due per installment, minor units
    loan.first_due = 2026-03-31    the first due date (UTC day)
    loan.period_days = 30          days between due dates (optional, 30 by default)
    loan.installments = 12         how many installments

A loan account without `loan.installment` has no schedule (nothing due: coverage undefined);
one whose schedule entries are malformed has none either, and says why (`problem`). The
schedule is what the product set at creation: an account's metadata does not change, so a
rescheduled loan is a new loan account.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from core import limits
from core.flows.model import AccountInfo, day_of_date

KIND_KEY: Final = "loan.kind"
KIND_LOAN: Final = "loan"
PRODUCT_KEY: Final = "loan.product"
INSTALLMENT_KEY: Final = "loan.installment"
FIRST_DUE_KEY: Final = "loan.first_due"
PERIOD_DAYS_KEY: Final = "loan.period_days"
INSTALLMENTS_KEY: Final = "loan.installments"
PERIOD_DAYS_DEFAULT: Final = 30
PERIOD_DAYS_MAX: Final = 366
INSTALLMENTS_MAX: Final = 10_000


@dataclass(frozen=True, slots=True)
class Schedule:
    installment: int
    first_due_day: int
    period_days: int
    installment_count: int

    def due_count(self, start_day: int, end_day: int) -> int:
        """How many due dates fall in the days start_day..end_day (both included)."""
        first, period = self.first_due_day, self.period_days
        lowest = max(0, -((first - start_day) // period))  # ceil((start - first) / period)
        highest = min(self.installment_count - 1, (end_day - first) // period)
        return max(0, highest - lowest + 1)

    def due(self, start_day: int, end_day: int) -> int:
        """Principal and interest due in the days start_day..end_day, minor units."""
        return self.installment * self.due_count(start_day, end_day)


@dataclass(frozen=True, slots=True)
class LoanAccount:
    account_id: str
    currency: str
    product: str | None
    schedule: Schedule | None
    problem: str | None  # why a schedule given in the metadata was not read


def loan_account(info: AccountInfo) -> LoanAccount | None:
    """The loan account an account is, or None if it is not one (no `loan.kind=loan`)."""
    entries = dict(info.metadata)
    if entries.get(KIND_KEY) != KIND_LOAN:
        return None
    product = entries.get(PRODUCT_KEY) or None
    if INSTALLMENT_KEY not in entries:
        return LoanAccount(info.account_id, info.currency, product, None, None)
    try:
        schedule = _schedule(entries)
    except ValueError as error:
        return LoanAccount(info.account_id, info.currency, product, None, str(error))
    return LoanAccount(info.account_id, info.currency, product, schedule, None)


def _schedule(entries: dict[str, str]) -> Schedule:
    installment = _count(entries, INSTALLMENT_KEY, limits.amount_max, None)
    first = entries.get(FIRST_DUE_KEY)
    if first is None:
        raise ValueError(f"{FIRST_DUE_KEY} is missing")
    try:
        first_due_day = day_of_date(first)
    except ValueError:
        raise ValueError(f"{FIRST_DUE_KEY} {first!r} is not a date YYYY-MM-DD") from None
    period_days = _count(entries, PERIOD_DAYS_KEY, PERIOD_DAYS_MAX, PERIOD_DAYS_DEFAULT)
    installment_count = _count(entries, INSTALLMENTS_KEY, INSTALLMENTS_MAX, None)
    return Schedule(installment, first_due_day, period_days, installment_count)


def _count(entries: dict[str, str], key: str, maximum: int, default: int | None) -> int:
    """A positive decimal integer entry (digits only) up to maximum."""
    text = entries.get(key)
    if text is None:
        if default is None:
            raise ValueError(f"{key} is missing")
        return default
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= maximum:
        raise ValueError(f"{key} {text!r} is not a whole number within 1..{maximum}")
    return int(text)
