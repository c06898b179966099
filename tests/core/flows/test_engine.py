"""The engine on hand-made streams: each feature, bound and checkpoint (core.flows.engine)."""

from __future__ import annotations

import math

import pytest

from core.flows.engine import FlowEngine, SnapshotError
from core.flows.features import FlowProfile, WindowFeatures
from core.flows.model import NS_PER_DAY, RETENTION_DAYS, AccountInfo, EngineConfig, Flow
from core.flows.model import day_of_date as day
from core.model import Leg

D0 = day("2026-03-01")
LOAN = AccountInfo(
    "b/loan",
    "USD",
    9,
    (
        ("loan.first_due", "2026-03-10"),
        ("loan.installment", "1000"),
        ("loan.installments", "12"),
        ("loan.kind", "loan"),
        ("loan.period_days", "30"),
        ("loan.product", "agri"),
    ),
)
_ids = iter(range(10**9))


def pay(engine: FlowEngine, on: int, source: str, destination: str, amount: int) -> bool:
    legs = (Leg(source, True, amount, "USD"), Leg(destination, False, amount, "USD"))
    return engine.add_flow(Flow(f"t{next(_ids)}", on * NS_PER_DAY + 3600, 1, (), legs))


def profile(engine: FlowEngine, on: int, key: str = "b") -> FlowProfile:
    found = engine.profile(key, on * NS_PER_DAY + 1)
    assert found is not None
    return found


def window(engine: FlowEngine, on: int, days: int, key: str = "b") -> WindowFeatures:
    found = profile(engine, on, key).window(days, "USD")
    assert found is not None
    return found


def test_windows_sum_inflow_outflow_and_counts_over_their_days() -> None:
    engine = FlowEngine()
    pay(engine, D0, "c/deposit", "b/deposit", 300)
    pay(engine, D0 + 10, "d/deposit", "b/deposit", 200)
    pay(engine, D0 + 10, "b/deposit", "c/deposit", 50)
    pay(engine, D0 + 14, "d/deposit", "b/deposit", 1)
    seven, fifteen = window(engine, D0 + 14, 7), window(engine, D0 + 14, 15)
    assert (seven.inflow, seven.outflow, seven.net_flow) == (201, 50, 151)
    assert (seven.inflow_count, seven.outflow_count, seven.transaction_count) == (2, 1, 3)
    assert (fifteen.inflow, fifteen.net_flow, fifteen.transaction_count) == (501, 451, 4)
    assert (fifteen.counterparty_count, fifteen.largest_counterparty) == (2, "c")
    assert fifteen.largest_counterparty_share == 300 / 501
    assert window(engine, D0 + 30, 15).inflow == 0  # the window moves with the profile's day


def test_own_transfers_and_disbursements_stay_out_of_inflow_and_repayments_out_of_outflow() -> None:
    engine = FlowEngine()
    engine.add_account(LOAN)
    pay(engine, D0, "b/loan", "b/deposit", 50_000)
    pay(engine, D0, "@funding/loans", "b/deposit", 20_000)
    pay(engine, D0 + 1, "b/deposit", "b/savings", 7_000)
    pay(engine, D0 + 2, "b/deposit", "b/loan", 1_000)
    pay(engine, D0 + 2, "c/deposit", "b/deposit", 400)
    features = window(engine, D0 + 2, 7)
    assert (features.inflow, features.outflow, features.disbursed) == (400, 0, 70_000)
    assert (features.own_transfer_amount, features.debt_service_paid) == (7_000, 1_000)
    assert (features.transaction_count, features.inflow_count, features.counterparty_count) == (
        5,
        1,
        1,
    )


def test_coverage_is_inflow_over_what_falls_due_and_undefined_when_nothing_does() -> None:
    engine = FlowEngine()
    engine.add_account(LOAN)  # 1000 due 2026-03-10, 04-09, 05-09, ...
    pay(engine, D0 + 5, "c/deposit", "b/deposit", 1500)
    at = day("2026-03-12")
    assert window(engine, at, 7).debt_service_due == 1000
    assert window(engine, at, 7).coverage == 1.5
    assert window(engine, at, 90).debt_service_due == 1000  # 04-09 is not yet
    assert window(engine, day("2026-03-09"), 7).coverage is None
    assert window(engine, day("2026-05-09"), 90).debt_service_due == 3000
    assert profile(engine, at).product == "agri"
    engine.forget_account("b/loan")
    assert window(engine, at, 7).coverage is None
    assert profile(engine, at).product is None


def test_a_borrower_with_nothing_coming_in_has_a_coverage_of_zero() -> None:
    engine = FlowEngine()
    engine.add_account(LOAN)
    assert engine.borrowers() == ["b"]
    assert window(engine, day("2026-03-12"), 30).coverage == 0.0
    assert engine.profile("nobody", D0 * NS_PER_DAY) is None


def test_the_portfolio_counts_borrowers_per_coverage_bucket() -> None:
    engine = FlowEngine()
    engine.add_account(LOAN)
    engine.add_account(AccountInfo("e/loan", "USD", 9, (("loan.kind", "loan"),)))
    pay(engine, D0 + 5, "c/deposit", "b/deposit", 1100)
    summary = engine.portfolio(day("2026-03-12") * NS_PER_DAY)
    assert summary.borrower_count == 2  # c pays, but has no loan: not in the portfolio
    assert dict(summary.coverage_counts) == {
        0.5: 0, 0.8: 0, 1.0: 0, 1.25: 1, 1.5: 0, 2.0: 0, 3.0: 0, math.inf: 0,
    }  # fmt: skip
    assert summary.coverage_undefined_count == 1


def test_the_baseline_is_the_previous_30_day_windows_of_the_borrowers_own_history() -> None:
    engine = FlowEngine()
    start = D0 - 150
    inflows = [900, 1100, 1000, 1000]  # four whole windows before the current one
    for number, amount in enumerate(inflows):
        pay(engine, start + 30 * number, "c/deposit", "b/deposit", amount)
    today = start + 30 * len(inflows) + 29
    pay(engine, today, "c/deposit", "b/deposit", 400)
    baseline = profile(engine, today).baseline("USD")
    assert baseline is not None
    assert (baseline.window_count, baseline.current_inflow) == (4, 400)
    assert baseline.mean == 1000.0
    assert baseline.spread == math.sqrt((100**2 + 100**2) / 4)
    assert baseline.ratio == 0.4
    assert baseline.z_score == -600 / math.sqrt(5000)
    # A window starting before the borrower's first retained day is no part of it.
    young = profile(engine, start + 30 + 29).baseline("USD")
    assert young is not None and young.window_count == 1 and young.mean is None


def test_money_coming_back_within_the_round_trip_days_is_a_round_trip() -> None:
    for round_trip_days, expected in ((7, 600), (4, 0)):
        engine = FlowEngine(EngineConfig(round_trip_days=round_trip_days))
        pay(engine, D0, "b/deposit", "c/deposit", 1000)
        pay(engine, D0 + 5, "c/deposit", "b/deposit", 600)
        pay(engine, D0 + 5, "d/deposit", "b/deposit", 400)
        features = window(engine, D0 + 6, 30)
        assert features.round_trip_amount == expected
        assert features.round_trip_share == expected / 1000


def test_each_amount_comes_back_once_oldest_first() -> None:
    engine = FlowEngine(EngineConfig(round_trip_days=3))
    pay(engine, D0, "b/deposit", "c/deposit", 100)
    pay(engine, D0 + 2, "b/deposit", "c/deposit", 100)
    pay(engine, D0 + 2, "c/deposit", "b/deposit", 150)  # 100 of day 0, 50 of day 2
    pay(engine, D0 + 5, "c/deposit", "b/deposit", 150)  # day 0's has expired: 50 of day 2
    assert window(engine, D0 + 5, 7).round_trip_amount == 200


def test_inflow_from_counterparties_that_pay_each_other_is_linked() -> None:
    engine = FlowEngine()
    pay(engine, D0, "x/deposit", "b/deposit", 300)
    pay(engine, D0, "y/deposit", "b/deposit", 200)
    pay(engine, D0, "z/deposit", "b/deposit", 500)
    assert window(engine, D0, 7).linked_inflow_amount == 0
    pay(engine, D0 + 1, "y/deposit", "x/deposit", 1)  # not a flow of b's at all
    features = window(engine, D0 + 1, 7)
    assert (features.linked_inflow_amount, features.linked_inflow_share) == (500, 0.5)
    assert engine.footprint().pair_count == 4  # x-b, y-b, z-b and x-y
    # A pair last seen before a window started does not link inflow within it.
    pay(engine, D0 + 20, "x/deposit", "b/deposit", 10)
    pay(engine, D0 + 20, "y/deposit", "b/deposit", 10)
    assert window(engine, D0 + 20, 7).linked_inflow_amount == 0
    assert window(engine, D0 + 20, 30).linked_inflow_amount == 520
    # Pairs are forgotten 90 days after they last paid.
    pay(engine, D0 + 200, "q/deposit", "r/deposit", 1)
    assert engine.footprint().pair_count == 1


def test_pairs_past_their_limit_are_not_recorded_and_counted() -> None:
    engine = FlowEngine(EngineConfig(pair_count_max=2))
    for payer in ("p", "q", "r"):
        pay(engine, D0, f"{payer}/deposit", "b/deposit", 5)
    pay(engine, D0, "p/deposit", "b/deposit", 5)  # known: no overflow
    assert (engine.footprint().pair_count, engine.pair_overflow_count) == (2, 1)
    assert engine.portfolio(D0 * NS_PER_DAY).pair_overflow_count == 1


def test_a_days_counterparties_past_the_limit_count_in_totals_only() -> None:
    engine = FlowEngine(EngineConfig(counterparty_per_day_max=2))
    for payer, amount in (("p", 10), ("q", 20), ("r", 500), ("p", 1)):
        pay(engine, D0, f"{payer}/deposit", "b/deposit", amount)
    pay(engine, D0 + 1, "r/deposit", "b/deposit", 5)  # another day: room again
    today = window(engine, D0, 7)
    assert (today.inflow, today.counterparty_count, today.largest_counterparty) == (531, 2, "q")
    assert today.counterparties_truncated
    week = window(engine, D0 + 1, 7)
    assert (week.counterparty_count, week.largest_counterparty, week.inflow) == (3, "q", 536)
    assert engine.footprint().counterparty_entry_max == 2


def test_days_past_retention_are_dropped_and_late_flows_counted_not_added() -> None:
    engine = FlowEngine()
    assert pay(engine, D0, "c/deposit", "b/deposit", 100)
    assert pay(engine, D0 + RETENTION_DAYS - 1, "c/deposit", "d/deposit", 1)
    assert engine.footprint().oldest_day == D0  # still retained: the oldest day kept
    assert pay(engine, D0, "c/deposit", "b/deposit", 5)  # out of order, within retention
    assert window(engine, D0 + 1, 7).inflow == 105
    assert pay(engine, D0 + RETENTION_DAYS, "c/deposit", "d/deposit", 1)
    assert engine.footprint().oldest_day == D0 + RETENTION_DAYS - 1
    assert engine.profile("b", D0 * NS_PER_DAY) is None  # forgotten: nothing retained
    assert not pay(engine, D0, "c/deposit", "b/deposit", 5)
    assert engine.late_flow_count == 1
    assert engine.borrowers() == ["c", "d"]


def test_advance_moves_time_on_without_flows() -> None:
    engine = FlowEngine()
    pay(engine, D0, "c/deposit", "b/deposit", 100)
    engine.advance((D0 + RETENTION_DAYS) * NS_PER_DAY)
    engine.advance(D0 * NS_PER_DAY)  # never back
    assert engine.day == D0 + RETENTION_DAYS
    assert engine.borrowers() == []


def test_a_snapshot_is_canonical_and_restores_the_same_engine() -> None:
    first, second = FlowEngine(), FlowEngine()
    first.add_account(LOAN)
    pay(first, D0, "c/deposit", "b/deposit", 1)
    pay(first, D0, "d/deposit", "b/deposit", 2)
    pay(second, D0, "d/deposit", "b/deposit", 2)
    pay(second, D0, "c/deposit", "b/deposit", 1)
    second.add_account(LOAN)
    assert first.snapshot() == second.snapshot()
    restored = FlowEngine.restore(first.snapshot())
    assert restored.snapshot() == first.snapshot()
    assert restored.profile("b", D0 * NS_PER_DAY) == first.profile("b", D0 * NS_PER_DAY)
    assert restored.config == first.config


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not a flow engine snapshot"),
        (b'{"version": 2}', "not a version 1 flow engine snapshot"),
        (b"[]", "not a version 1"),
    ],
)
def test_bytes_that_are_not_a_snapshot_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(SnapshotError, match=message):
        FlowEngine.restore(data)


def test_a_damaged_snapshot_is_refused() -> None:
    engine = FlowEngine()
    pay(engine, D0, "c/deposit", "b/deposit", 1)
    good = engine.snapshot().decode()
    for damaged in (good.replace('"inflow":1', '"inflow":-1'), good.replace('"day":', '"dy":')):
        with pytest.raises(SnapshotError):
            FlowEngine.restore(damaged.encode())


def test_a_pair_is_recorded_while_its_day_is_within_the_longest_window() -> None:
    engine = FlowEngine()
    engine.advance((D0 + 100) * NS_PER_DAY)
    for source, destination in (("x", "b"), ("y", "b"), ("x", "y")):
        pay(engine, D0 + 11, f"{source}/deposit", f"{destination}/deposit", 10)  # 89 days ago
    pay(engine, D0 + 10, "z/deposit", "x/deposit", 10)  # 90 days ago: no pair recorded
    assert window(engine, D0 + 100, 90).linked_inflow_amount == 20
    assert engine.footprint().pair_count == 3


def test_a_hub_of_many_pairs_links_like_any_counterparty() -> None:
    engine = FlowEngine()
    for other in ("p", "q", "r", "s", "t"):
        pay(engine, D0, "h/deposit", f"{other}/deposit", 1)  # h has more pairs than b payers
    pay(engine, D0, "h/deposit", "b/deposit", 100)
    pay(engine, D0, "t/deposit", "b/deposit", 50)
    pay(engine, D0, "u/deposit", "b/deposit", 25)
    assert window(engine, D0, 7).linked_inflow_amount == 150
