"""The engine's invariants under any stream of flows (hypothesis): it equals the reference
recomputation from every flow at once, its checkpoints are exact at any cut, its memory
stays within its bounds, and the order of flows within retention does not matter."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.flows.engine import FlowEngine
from core.flows.model import NS_PER_DAY, RETENTION_DAYS, AccountInfo, EngineConfig, Flow
from core.flows.rules import Alert, parse_rules
from tests.core.flows.strategies import DAY_ZERO, flows, loan_accounts, reaching_stream, streams
from tests.support.flows_reference import Reference

RULES = parse_rules(
    """
    [default]
    coverage_below = 1.0
    round_trip_share_above = 0.2
    largest_counterparty_share_above = 0.7
    linked_inflow_share_above = 0.3
    inflow_drop_below = 0.8
    [products.agri]
    window_days = 15
    coverage_below = 2.0
    """
)
SMALL = settings(max_examples=25, deadline=None)


def _engine(config: EngineConfig, stream: list[Flow]) -> FlowEngine:
    engine = FlowEngine(config)
    for info in loan_accounts():
        engine.add_account(info)
    for flow in stream:
        engine.add_flow(flow)
    return engine


@SMALL
@example(stream=reaching_stream(), per_day=2, round_trip_days=7, as_of_offset=-85)
@example(stream=reaching_stream(), per_day=2, round_trip_days=3, as_of_offset=0)
@given(
    stream=streams(min_size=5, max_size=30),
    per_day=st.integers(1, 3),
    round_trip_days=st.integers(0, 10),
    as_of_offset=st.integers(-120, 20),
)
def test_the_engine_equals_the_reference_recomputation(
    stream: list[Flow], per_day: int, round_trip_days: int, as_of_offset: int
) -> None:
    config = EngineConfig(counterparty_per_day_max=per_day, round_trip_days=round_trip_days)
    engine = _engine(config, stream)
    reference = Reference(config, loan_accounts(), stream)
    assert engine.borrowers() == reference.borrowers()
    assert engine.late_flow_count == reference.late_flow_count
    as_of_ns = ((engine.day or DAY_ZERO) + as_of_offset) * NS_PER_DAY
    for key in engine.borrowers():
        assert engine.profile(key, as_of_ns) == reference.profile(key, as_of_ns), key


Event = Flow | int | AccountInfo | str


def _run(engine: FlowEngine, events: list[Event]) -> list[Alert]:
    """Flows, evaluations of the rules (an int: the day to evaluate on), loan accounts
    opened (AccountInfo) and closed (their id)."""
    alerts: list[Alert] = []
    for event in events:
        if isinstance(event, Flow):
            engine.add_flow(event)
        elif isinstance(event, AccountInfo):
            engine.add_account(event)
        elif isinstance(event, str):
            engine.forget_account(event)
        else:
            alerts += engine.evaluate(RULES, event * NS_PER_DAY)
    return alerts


@SMALL
@given(
    events=st.lists(
        st.one_of(
            flows(),
            flows(),
            st.integers(DAY_ZERO, DAY_ZERO + 560),
            st.sampled_from(loan_accounts()),
            st.sampled_from([info.account_id for info in loan_accounts()]),
        ),
        min_size=5,
        max_size=50,
    ),
    data=st.data(),
)
def test_a_checkpoint_restored_goes_on_as_if_never_stopped(
    events: list[Event], data: st.DataObject
) -> None:
    config = EngineConfig(counterparty_per_day_max=2, pair_count_max=3)
    uninterrupted = _engine(config, [])
    alerts = _run(uninterrupted, events)
    cut = data.draw(st.integers(0, len(events)))
    before = _engine(config, [])
    alerts_before = _run(before, events[:cut])
    snapshot = before.snapshot()
    restored = FlowEngine.restore(snapshot)
    assert restored.snapshot() == snapshot
    alerts_after = _run(restored, events[cut:])
    assert restored.snapshot() == uninterrupted.snapshot()
    assert alerts_before + alerts_after == alerts
    as_of_ns = (uninterrupted.day or DAY_ZERO) * NS_PER_DAY
    assert restored.portfolio(as_of_ns) == uninterrupted.portfolio(as_of_ns)
    assert restored.footprint() == uninterrupted.footprint()
    for key in uninterrupted.borrowers():
        assert restored.profile(key, as_of_ns) == uninterrupted.profile(key, as_of_ns)


@SMALL
@given(stream=streams(min_size=5, max_size=40, day_span=800))
def test_memory_stays_within_its_bounds(stream: list[Flow]) -> None:
    config = EngineConfig(counterparty_per_day_max=2, pair_count_max=4)
    engine = _engine(config, [])
    for flow in stream:
        engine.add_flow(flow)
        footprint = engine.footprint()
        assert engine.day is not None
        assert footprint.oldest_day is None or footprint.oldest_day > engine.day - RETENTION_DAYS
        assert footprint.counterparty_entry_max <= config.counterparty_per_day_max
        assert footprint.pair_count <= config.pair_count_max
        assert footprint.day_count <= footprint.borrower_count * RETENTION_DAYS


@SMALL
@example(stream=reaching_stream()[:-2], data=None)
@given(stream=streams(min_size=2, max_size=20, day_span=240), data=st.data())
def test_the_order_of_flows_within_retention_does_not_matter(
    stream: list[Flow], data: st.DataObject | None
) -> None:
    """With no day's counterparty limit reached (the one place arrival order counts)."""
    config = EngineConfig(counterparty_per_day_max=100)
    shuffled = list(reversed(stream)) if data is None else data.draw(st.permutations(stream))
    first, second = _engine(config, stream), _engine(config, shuffled)
    assert first.snapshot() == second.snapshot()
    assert first.late_flow_count == 0
    as_of_ns = (first.day or DAY_ZERO) * NS_PER_DAY
    for key in first.borrowers():
        assert first.profile(key, as_of_ns) == second.profile(key, as_of_ns)


def test_the_hand_made_stream_reaches_every_feature() -> None:
    """The streams drawn reach these only now and then: the hand-made one, an explicit
    example of every property above, reaches each of them."""
    engine = _engine(EngineConfig(counterparty_per_day_max=2), reaching_stream())
    assert engine.late_flow_count == 1
    as_of_ns = (DAY_ZERO + 205) * NS_PER_DAY
    reached = [
        w
        for key in engine.borrowers()
        for w in engine.profile(key, as_of_ns).windows  # type: ignore[union-attr]
        if w.window_days == 90
    ]
    b0 = next(w for w in reached if w.inflow)
    assert b0.round_trip_amount and b0.linked_inflow_amount and b0.counterparties_truncated
    assert b0.coverage is not None and b0.debt_service_paid
    baseline = engine.profile("b0", as_of_ns).baseline("USD")  # type: ignore[union-attr]
    assert baseline is not None and baseline.mean is not None
    assert any(w.disbursed and w.own_transfer_amount for w in reached)
