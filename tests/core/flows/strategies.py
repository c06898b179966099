"""Hypothesis strategies for core.flows: small worlds of borrowers, counterparties, loans."""

from __future__ import annotations

from hypothesis import strategies as st

from core.flows.model import NS_PER_DAY, AccountInfo, Flow, day_of_date
from core.model import Leg

DAY_ZERO = day_of_date("2026-01-01")
BORROWERS = ("b0", "b1", "b2")
CLIENTS = (*BORROWERS, "c0", "c1")
ACCOUNTS = (
    *(f"{key}/deposit" for key in CLIENTS),
    *(f"{key}/savings" for key in BORROWERS),
    *(f"{key}/loan" for key in BORROWERS),
    "@funding/loans",
    "@cash",
)
CURRENCIES = ("USD", "KES")


def loan_accounts() -> list[AccountInfo]:
    """One loan per borrower; b2's has no schedule, b0's and b1's are of two products."""
    metadata = {
        "b0": (
            ("loan.first_due", "2026-01-20"),
            ("loan.installment", "700"),
            ("loan.installments", "9"),
            ("loan.kind", "loan"),
            ("loan.period_days", "15"),
            ("loan.product", "agri"),
        ),
        "b1": (
            ("loan.first_due", "2026-02-01"),
            ("loan.installment", "2500"),
            ("loan.installments", "6"),
            ("loan.kind", "loan"),
        ),
        "b2": (("loan.kind", "loan"),),
    }
    return [AccountInfo(f"{key}/loan", "USD", 10, m) for key, m in metadata.items()]


@st.composite
def flows(draw: st.DrawFn, day_span: int = 540) -> Flow:
    """A balanced transaction of one or two currencies, legs in any order."""
    legs: list[Leg] = []
    for currency in draw(st.lists(st.sampled_from(CURRENCIES), min_size=1, max_size=2)):
        for _ in range(draw(st.integers(1, 2))):
            source = draw(st.sampled_from(ACCOUNTS))
            destination = draw(st.sampled_from(ACCOUNTS))
            amount = draw(st.integers(1, 5000))
            legs += [Leg(source, True, amount, currency), Leg(destination, False, amount, currency)]
    # Days in clusters a few days wide (round trips, pairs and baselines within a cluster),
    # the clusters months apart (windows, baselines) and beyond retention (late flows, days
    # dropped); day_span spreads the clusters.
    cluster = draw(st.sampled_from((0, 40, 100, 268, 290, 540)))
    day = DAY_ZERO + (cluster * day_span) // 540 + draw(st.integers(0, 6))
    timestamp_ns = day * NS_PER_DAY + draw(st.integers(0, NS_PER_DAY - 1))
    identifier = f"t-{draw(st.integers(0, 10**9))}"
    return Flow(identifier, timestamp_ns, 1, (), tuple(draw(st.permutations(legs))))
