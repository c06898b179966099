"""The reference recomputation of core.flows' profiles: every flow at once, no buckets.

Given the accounts and every flow in the order the engine got them, it computes a borrower's
window features straight from the flows' movements: which flows were late (their day already
dropped when they came), which days are retained at the end, sums, counts and counterparties
over each window, the per-day counterparty limit (the first counterparties of a day to arrive
are kept), round trips, pairs that paid each other, the baseline's windows. The property
tests hold the incremental engine (buckets, retention as time moves, checkpoints) to it.

It shares with the engine only what defines a movement (core.flows.attribution), a loan's
schedule (core.flows.schedule), the round-trip matching and the baseline's statistics
(core.flows.features), each of which has tests of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.flows import features
from core.flows.attribution import Movement, MovementKind, movements, paying_pairs
from core.flows.features import FlowProfile, WindowFeatures
from core.flows.model import (
    BASELINE_WINDOW_COUNT,
    BASELINE_WINDOW_COUNT_MIN,
    BASELINE_WINDOW_DAYS,
    RETENTION_DAYS,
    WINDOW_DAYS,
    AccountInfo,
    EngineConfig,
    Flow,
    day_of,
)
from core.flows.schedule import LoanAccount, loan_account
from core.slots import partition_key

PAIR_DAYS = max(WINDOW_DAYS)


@dataclass(frozen=True)
class Seen:
    """A movement of a kept flow, with its flow's place in the stream and its day."""

    order: int
    day: int
    movement: Movement
    tracked: bool  # its counterparty is among its day's first counterparty_per_day_max


class Reference:
    def __init__(self, config: EngineConfig, accounts: list[AccountInfo], flows: list[Flow]):
        self.config = config
        self.loans: dict[str, LoanAccount] = {}
        for info in accounts:
            loan = loan_account(info)
            if loan is not None:
                self.loans[info.account_id] = loan
        self.late_flow_count = 0
        self.final_day: int | None = None
        kept: list[tuple[int, Flow]] = []
        for order, flow in enumerate(flows):
            day = day_of(flow.timestamp_ns)
            self.final_day = day if self.final_day is None else max(self.final_day, day)
            if day < self.final_day - RETENTION_DAYS + 1:
                self.late_flow_count += 1
            else:
                kept.append((order, flow))
        self.seen = self._seen(kept)
        self.pairs = [
            (pair, day_of(flow.timestamp_ns)) for _, flow in kept for pair in paying_pairs(flow)
        ]

    def _seen(self, kept: list[tuple[int, Flow]]) -> list[Seen]:
        funding = frozenset(self.config.funding_account_ids)
        names: dict[tuple[str, int, str], list[str]] = {}  # (borrower, day, currency) -> names
        seen = []
        for order, flow in kept:
            day = day_of(flow.timestamp_ns)
            for movement in movements(flow, lambda a: a in self.loans, funding):
                tracked = False
                if movement.counterparty:
                    day_names = names.setdefault((movement.borrower, day, movement.currency), [])
                    if movement.counterparty not in day_names:
                        if len(day_names) < self.config.counterparty_per_day_max:
                            day_names.append(movement.counterparty)
                    tracked = movement.counterparty in day_names
                seen.append(Seen(order, day, movement, tracked))
        if self.final_day is not None:
            horizon = self.final_day - RETENTION_DAYS + 1
            seen = [s for s in seen if s.day >= horizon]
        return seen

    def borrowers(self) -> list[str]:
        keys = {s.movement.borrower for s in self.seen}
        return sorted(keys | {partition_key(a) for a in self.loans})

    def profile(self, key: str, as_of_ns: int) -> FlowProfile | None:
        mine = [s for s in self.seen if s.movement.borrower == key]
        loans = [self.loans[a] for a in sorted(self.loans) if partition_key(a) == key]
        if not mine and not loans:
            return None
        as_of_day = day_of(as_of_ns)
        currencies = sorted({s.movement.currency for s in mine} | {x.currency for x in loans})
        windows = []
        baselines = []
        for currency in currencies:
            of_currency = [s for s in mine if s.movement.currency == currency]
            for window_days in WINDOW_DAYS:
                due = sum(
                    loan.schedule.due(as_of_day - window_days + 1, as_of_day)
                    for loan in loans
                    if loan.currency == currency and loan.schedule is not None
                )
                windows.append(self._window(of_currency, currency, window_days, as_of_day, due))
            baselines.append(self._baseline(of_currency, currency, as_of_day))
        product = next((loan.product for loan in loans if loan.product), None)
        return FlowProfile(key, as_of_ns, as_of_day, product, tuple(windows), tuple(baselines))

    def _window(
        self, mine: list[Seen], currency: str, window_days: int, end: int, due: int
    ) -> WindowFeatures:
        start = end - window_days + 1
        inside = [s for s in mine if start <= s.day <= end]

        def amount(kind: MovementKind) -> int:
            return sum(s.movement.amount for s in inside if s.movement.kind is kind)

        def flow_count(kind: MovementKind | None) -> int:
            return len({s.order for s in inside if kind is None or s.movement.kind is kind})

        inflow, outflow = amount(MovementKind.INFLOW), amount(MovementKind.OUTFLOW)
        tracked = [s for s in inside if s.tracked]
        paid_by: dict[str, int] = {}
        for s in tracked:
            if s.movement.kind is MovementKind.INFLOW:
                paid_by[s.movement.counterparty] = (
                    paid_by.get(s.movement.counterparty, 0) + s.movement.amount
                )
        largest = None
        if paid_by:
            largest = sorted(paid_by, key=lambda name: (-paid_by[name], name))[0]
        round_trip = self._round_trip(tracked)
        linked = sum(paid_by[c] for c in paid_by if self._linked(c, set(paid_by), start))
        return WindowFeatures(
            window_days=window_days,
            currency=currency,
            start_day=start,
            end_day=end,
            inflow=inflow,
            outflow=outflow,
            net_flow=inflow - outflow,
            inflow_count=flow_count(MovementKind.INFLOW),
            outflow_count=flow_count(MovementKind.OUTFLOW),
            transaction_count=flow_count(None),
            own_transfer_amount=amount(MovementKind.OWN),
            disbursed=amount(MovementKind.DISBURSEMENT),
            debt_service_paid=amount(MovementKind.REPAYMENT),
            debt_service_due=due,
            coverage=None if due == 0 else inflow / due,
            counterparty_count=len({s.movement.counterparty for s in tracked}),
            largest_counterparty=largest,
            largest_counterparty_share=None if largest is None else paid_by[largest] / inflow,
            counterparties_truncated=any(s.movement.counterparty and not s.tracked for s in inside),
            round_trip_amount=round_trip,
            round_trip_share=None if inflow == 0 else round_trip / inflow,
            linked_inflow_amount=linked,
            linked_inflow_share=None if inflow == 0 else linked / inflow,
        )

    def _round_trip(self, tracked: list[Seen]) -> int:
        total = 0
        for name in {s.movement.counterparty for s in tracked}:
            days: dict[int, list[int]] = {}
            for s in tracked:
                if s.movement.counterparty == name:
                    entry = days.setdefault(s.day, [0, 0])
                    entry[0 if s.movement.kind is MovementKind.OUTFLOW else 1] += s.movement.amount
            daily = [(day, out, back) for day, (out, back) in sorted(days.items())]
            total += features.round_trip_amount(daily, self.config.round_trip_days)
        return total

    def _linked(self, name: str, payers: set[str], start: int) -> bool:
        assert self.final_day is not None
        since = max(start, self.final_day - PAIR_DAYS + 1)
        return any(
            day >= since and name in pair and (set(pair) - {name}) <= payers
            for pair, day in self.pairs
        )

    def _baseline(self, mine: list[Seen], currency: str, as_of_day: int) -> features.Baseline:
        def inflow(start: int, end: int) -> int:
            return sum(
                s.movement.amount
                for s in mine
                if s.movement.kind is MovementKind.INFLOW and start <= s.day <= end
            )

        first_day = min((s.day for s in mine), default=None)
        previous = []
        for back in range(1, BASELINE_WINDOW_COUNT + 1):
            end = as_of_day - BASELINE_WINDOW_DAYS * back
            start = end - BASELINE_WINDOW_DAYS + 1
            if first_day is not None and start >= first_day:
                previous.append(inflow(start, end))
        current = inflow(as_of_day - BASELINE_WINDOW_DAYS + 1, as_of_day)
        return features.baseline(
            currency, BASELINE_WINDOW_DAYS, current, previous, BASELINE_WINDOW_COUNT_MIN
        )
