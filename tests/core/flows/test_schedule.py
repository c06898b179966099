"""Loan schedules from account metadata (core.flows.schedule)."""

from __future__ import annotations

import pytest

from core.flows.model import AccountInfo, day_of_date
from core.flows.schedule import Schedule, loan_account

SCHEDULE = (
    ("loan.first_due", "2026-01-31"),
    ("loan.installment", "125000"),
    ("loan.installments", "3"),
    ("loan.kind", "loan"),
    ("loan.period_days", "30"),
    ("loan.product", "agri"),
)


def info(*metadata: tuple[str, str]) -> AccountInfo:
    return AccountInfo("b/loan-1", "USD", 7, tuple(sorted(metadata)))


def test_a_loan_account_and_its_schedule() -> None:
    loan = loan_account(info(*SCHEDULE))
    assert loan is not None
    assert (loan.product, loan.problem) == ("agri", None)
    assert loan.schedule == Schedule(125000, day_of_date("2026-01-31"), 30, 3)


def test_accounts_without_the_loan_kind_are_not_loans() -> None:
    assert loan_account(info(("loan.installment", "5"))) is None
    loan = loan_account(info(("loan.kind", "loan")))
    assert loan is not None and loan.schedule is None and loan.problem is None


def test_what_falls_due_in_a_window_counts_each_due_date_inside_it() -> None:
    first = day_of_date("2026-01-31")
    schedule = Schedule(100, first, 30, 3)  # due on first, first + 30, first + 60
    assert schedule.due(first, first) == 100
    assert schedule.due(first - 10, first - 1) == 0
    assert schedule.due(first + 1, first + 29) == 0
    assert schedule.due(first - 5, first + 30) == 200
    assert schedule.due(first + 31, first + 1000) == 100  # three installments only
    assert schedule.due(first - 1000, first + 1000) == 300
    assert schedule.due(first + 61, first + 90) == 0


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (("loan.installment", "12.50"), "loan.installment '12.50' is not a whole number"),
        (("loan.installment", "0"), "loan.installment '0'"),
        (("loan.first_due", "31/01/2026"), "loan.first_due '31/01/2026' is not a date"),
        (("loan.period_days", "400"), "loan.period_days '400'"),
        (("loan.installments", "-1"), "loan.installments '-1'"),
    ],
)
def test_a_malformed_schedule_is_no_schedule_and_says_why(
    entry: tuple[str, str], problem: str
) -> None:
    entries = dict(SCHEDULE)
    entries[entry[0]] = entry[1]
    loan = loan_account(info(*entries.items()))
    assert loan is not None and loan.schedule is None
    assert loan.problem is not None and loan.problem.startswith(problem)


def test_the_period_defaults_to_30_days_and_the_rest_is_required() -> None:
    entries = dict(SCHEDULE)
    del entries["loan.period_days"]
    loan = loan_account(info(*entries.items()))
    assert loan is not None and loan.schedule is not None and loan.schedule.period_days == 30
    del entries["loan.installments"]
    loan = loan_account(info(*entries.items()))
    assert loan is not None and loan.problem == "loan.installments is missing"
