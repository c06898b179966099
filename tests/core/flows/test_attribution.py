"""A flow as money moved, and what it is to each borrower (core.flows.attribution)."""

from __future__ import annotations

import pytest

from core.flows.attribution import Movement, MovementKind, Transfer, movements, paying_pairs
from core.flows.attribution import transfers as transfers_of
from core.flows.model import Flow, FlowError
from core.model import Leg

LOANS = frozenset({"b/loan-1", "b/loan-2"})
FUNDING = frozenset({"@funding/loans"})
IN, OUT, OWN = MovementKind.INFLOW, MovementKind.OUTFLOW, MovementKind.OWN
DISBURSED, REPAID = MovementKind.DISBURSEMENT, MovementKind.REPAYMENT


def flow(*legs: tuple[str, bool, int, str]) -> Flow:
    return Flow("t", 0, 1, (), tuple(Leg(*leg) for leg in legs))


def moved(*legs: tuple[str, bool, int, str]) -> list[Movement]:
    return movements(flow(*legs), lambda a: a in LOANS, FUNDING)


def test_a_payment_is_outflow_to_one_and_inflow_to_the_other() -> None:
    assert moved(("b/deposit", True, 100, "USD"), ("c/deposit", False, 100, "USD")) == [
        Movement("c", IN, "b", "USD", 100),
        Movement("b", OUT, "c", "USD", 100),
    ]


def test_own_account_transfers_are_neither_inflow_nor_outflow() -> None:
    assert moved(("b/deposit", True, 100, "USD"), ("b/savings", False, 100, "USD")) == [
        Movement("b", OWN, "", "USD", 100)
    ]


def test_disbursements_from_the_loan_or_a_funding_account_are_not_inflow() -> None:
    from_loan = moved(("b/loan-1", True, 500, "USD"), ("b/deposit", False, 500, "USD"))
    assert from_loan == [Movement("b", DISBURSED, "", "USD", 500)]
    funded = moved(("@funding/loans", True, 500, "USD"), ("b/deposit", False, 500, "USD"))
    assert funded == [Movement("b", DISBURSED, "", "USD", 500)]
    # Another bank-internal account is a counterparty like any other.
    cash = moved(("@cash", True, 500, "USD"), ("b/deposit", False, 500, "USD"))
    assert cash == [Movement("b", IN, "@cash", "USD", 500)]


def test_repayments_are_debt_service_from_anyone_and_no_outflow_of_the_borrower() -> None:
    own = moved(("b/deposit", True, 70, "USD"), ("b/loan-2", False, 70, "USD"))
    assert own == [Movement("b", REPAID, "", "USD", 70)]
    # A guarantor paying the loan: its outflow, the borrower's debt service.
    guarantor = moved(("g/deposit", True, 70, "USD"), ("b/loan-1", False, 70, "USD"))
    assert guarantor == [
        Movement("b", REPAID, "", "USD", 70),
        Movement("g", OUT, "b", "USD", 70),
    ]


def test_a_loan_debited_to_outside_its_borrower_is_left_out() -> None:
    assert moved(("b/loan-1", True, 9, "USD"), ("@income/interest", False, 9, "USD")) == []


def test_each_partition_key_is_matched_against_itself_first_whatever_the_leg_order() -> None:
    legs = (
        ("b/deposit", True, 50, "USD"),
        ("c/deposit", True, 50, "USD"),
        ("c/savings", False, 50, "USD"),
        ("b/savings", False, 50, "USD"),
    )
    assert transfers_of(flow(*legs)) == [
        Transfer("b/deposit", "b/savings", "USD", 50),
        Transfer("c/deposit", "c/savings", "USD", 50),
    ]
    assert moved(*legs) == [Movement("b", OWN, "", "USD", 50), Movement("c", OWN, "", "USD", 50)]


def test_the_rest_is_matched_first_come_first_served_in_leg_order_per_currency() -> None:
    legs = (
        ("b/deposit", True, 100, "USD"),
        ("x/deposit", False, 30, "USD"),
        ("y/deposit", False, 70, "USD"),
        ("k/deposit", True, 5, "KES"),
        ("b/deposit", False, 5, "KES"),
    )
    assert transfers_of(flow(*legs)) == [
        Transfer("k/deposit", "b/deposit", "KES", 5),
        Transfer("b/deposit", "x/deposit", "USD", 30),
        Transfer("b/deposit", "y/deposit", "USD", 70),
    ]


def test_a_debit_split_across_credits_and_credits_across_debits() -> None:
    legs = (
        ("p/deposit", True, 60, "USD"),
        ("q/deposit", True, 40, "USD"),
        ("b/deposit", False, 80, "USD"),
        ("b/savings", False, 20, "USD"),
    )
    assert transfers_of(flow(*legs)) == [
        Transfer("p/deposit", "b/deposit", "USD", 60),
        Transfer("q/deposit", "b/deposit", "USD", 20),
        Transfer("q/deposit", "b/savings", "USD", 20),
    ]


def test_pairs_that_paid_each_other_are_client_keys_either_way() -> None:
    legs = (
        ("q/deposit", True, 10, "USD"),
        ("p/deposit", False, 10, "USD"),
        ("@cash", True, 5, "USD"),
        ("p/savings", False, 5, "USD"),
    )
    assert paying_pairs(flow(*legs)) == {("p", "q")}


@pytest.mark.parametrize(
    ("legs", "fault"),
    [
        ((), "no legs"),
        ((("a/x", True, 5, "USD"), ("b/x", False, 4, "USD")), "unbalanced in USD"),
        ((("a/x", True, 0, "USD"), ("b/x", False, 0, "USD")), "leg amount 0"),
    ],
)
def test_a_flow_the_ledger_could_not_have_committed_is_refused(
    legs: tuple[tuple[str, bool, int, str], ...], fault: str
) -> None:
    with pytest.raises(FlowError, match=fault):
        flow(*legs)
