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


@st.composite
def streams(
    draw: st.DrawFn, min_size: int = 0, max_size: int = 40, day_span: int = 540
) -> list[Flow]:
    """Flows, some followed later by their reply (the same legs the other way round, up to
    8 days after): round trips and counterparties that pay each other, as in life."""
    found: list[Flow] = []
    for flow in draw(st.lists(flows(day_span=day_span), min_size=min_size, max_size=max_size)):
        found.append(flow)
        if draw(st.booleans()):
            legs = tuple(leg._replace(is_debit=not leg.is_debit) for leg in flow.legs)
            later = flow.timestamp_ns + draw(st.integers(0, 8)) * NS_PER_DAY
            found.append(Flow(flow.transaction_id + "-reply", later, 1, (), legs))
    return found


def _pay(day: int, source: str, destination: str, amount: int, currency: str = "USD") -> Flow:
    legs = (Leg(source, True, amount, currency), Leg(destination, False, amount, currency))
    return Flow(f"{day}-{source}-{destination}-{amount}", day * NS_PER_DAY + 7, 1, (), legs)


def reaching_stream() -> list[Flow]:
    """A hand-made stream reaching every feature the properties compare: disbursement,
    repayment, own transfers, round trips, counterparties paying each other, a day past its
    counterparty limit (of 2), a baseline, a late flow and a dropped day."""
    d = DAY_ZERO
    stream = [
        _pay(d, "b0/loan", "b0/deposit", 9000),
        _pay(d + 190, "@funding/loans", "b1/deposit", 5000),
        _pay(d + 190, "b1/deposit", "b1/savings", 300),
        *(_pay(d + 40 * k, "c0/deposit", "b0/deposit", 1000 + 50 * k) for k in range(6)),
        _pay(d + 200, "b0/deposit", "c1/deposit", 800),
        _pay(d + 203, "c1/deposit", "b0/deposit", 500),
        _pay(d + 204, "c0/deposit", "c1/deposit", 20),
        _pay(d + 204, "b2/deposit", "b0/deposit", 30),
        _pay(d + 204, "@cash", "b0/deposit", 40),
        _pay(d + 204, "c1/deposit", "b0/deposit", 5),  # a third that day: past the limit
        _pay(d + 205, "b0/deposit", "b0/loan", 700),
        _pay(d + 290, "b1/deposit", "c0/deposit", 10, "KES"),
        _pay(d + 2, "c0/deposit", "b1/deposit", 10),  # late by then
    ]
    return stream
