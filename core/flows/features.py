"""A profile's records, and the formulas that make its ratios from integer sums.

Amounts are integers in minor units; ratios are floats made from those integers by one
division (or, for the baseline, exact fractions down to one float each), so that the same
sums always give the same profile, bit for bit, however they were summed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

COVERAGE_BUCKET_BOUNDS: Final = (0.5, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, math.inf)
"""Upper bounds (inclusive) of the portfolio's coverage buckets, as a Prometheus histogram's."""


@dataclass(frozen=True, slots=True)
class WindowFeatures:
    """One borrower's flows in one currency over the window_days ending on end_day."""

    window_days: int
    currency: str
    start_day: int
    end_day: int
    inflow: int  # from counterparties: own-account transfers and disbursements kept out
    outflow: int  # to counterparties: repayments of the borrower's own loans kept out
    net_flow: int
    inflow_count: int  # transactions that brought inflow
    outflow_count: int
    transaction_count: int  # transactions that moved the borrower's money in any way
    own_transfer_amount: int
    disbursed: int
    debt_service_paid: int  # into the borrower's loan accounts
    debt_service_due: int  # principal and interest due in the window (loan schedules)
    coverage: float | None  # inflow / due; None when nothing is due
    counterparty_count: int  # distinct, either way
    largest_counterparty: str | None  # by inflow (ties: the smallest name)
    largest_counterparty_share: float | None  # of inflow; None without inflow
    counterparties_truncated: bool  # a day's counterparty limit overflowed in the window
    round_trip_amount: int  # inflow that came back from where money went, within N days
    round_trip_share: float | None  # of inflow
    linked_inflow_amount: int  # inflow from counterparties that paid each other
    linked_inflow_share: float | None  # of inflow


@dataclass(frozen=True, slots=True)
class Baseline:
    """The current 30-day inflow against the borrower's previous whole 30-day windows."""

    currency: str
    window_days: int
    current_inflow: int
    window_count: int  # previous windows within the borrower's retained history
    mean: float | None  # None with fewer than BASELINE_WINDOW_COUNT_MIN windows
    spread: float | None  # population standard deviation
    ratio: float | None  # current / mean; None when mean is None or 0
    z_score: float | None  # (current - mean) / spread; None when spread is None or 0


@dataclass(frozen=True, slots=True)
class FlowProfile:
    partition_key: str
    as_of_ns: int
    as_of_day: int
    product: str | None  # the first product of the borrower's loan accounts, by account id
    windows: tuple[WindowFeatures, ...]  # by currency, then window
    baselines: tuple[Baseline, ...]  # by currency

    def window(self, window_days: int, currency: str) -> WindowFeatures | None:
        for features in self.windows:
            if features.window_days == window_days and features.currency == currency:
                return features
        return None

    def baseline(self, currency: str) -> Baseline | None:
        return next((b for b in self.baselines if b.currency == currency), None)


@dataclass(frozen=True, slots=True)
class PortfolioSummary:
    """What the Prometheus adapter exports: the distribution of coverage over (borrower,
    currency) pairs with something due, counts per bucket (not cumulative), and alerts."""

    as_of_ns: int
    window_days: int
    borrower_count: int
    coverage_counts: tuple[tuple[float, int], ...]  # (upper bound, count) per bucket
    coverage_undefined_count: int  # (borrower, currency) pairs with nothing due
    active_alert_counts: tuple[tuple[str, int], ...]  # by rule
    late_flow_count: int
    pair_overflow_count: int


def share(part: int, whole: int) -> float | None:
    return None if whole == 0 else part / whole


def round_trip_amount(daily: Iterable[tuple[int, int, int]], round_trip_days: int) -> int:
    """Inflow from one counterparty that comes back within round_trip_days of money leaving
    to it: (day, outflow, inflow) in day order; each day's inflow is matched against what left
    in the round_trip_days before (same day included), oldest first, each amount once."""
    outstanding: list[list[int]] = []  # [day, amount not matched yet]
    matched = 0
    for day, outflow, inflow in daily:
        if outflow:
            outstanding.append([day, outflow])
        outstanding = [entry for entry in outstanding if entry[0] >= day - round_trip_days]
        for entry in outstanding:
            if not inflow:
                break
            taken = min(inflow, entry[1])
            entry[1] -= taken
            inflow -= taken
            matched += taken
        outstanding = [entry for entry in outstanding if entry[1]]
    return matched


def baseline(
    currency: str, window_days: int, current: int, previous: list[int], count_min: int
) -> Baseline:
    if len(previous) < count_min:
        return Baseline(currency, window_days, current, len(previous), None, None, None, None)
    mean = Fraction(sum(previous), len(previous))
    variance = sum((Fraction(value) - mean) ** 2 for value in previous) / len(previous)
    spread = math.sqrt(variance)
    ratio = float(current / mean) if mean else None
    z_score = float(current - mean) / spread if spread else None
    return Baseline(
        currency, window_days, current, len(previous), float(mean), spread, ratio, z_score
    )


def coverage_counts(coverages: Iterable[float]) -> tuple[tuple[float, int], ...]:
    counts = [0] * len(COVERAGE_BUCKET_BOUNDS)
    for coverage in coverages:
        counts[next(i for i, b in enumerate(COVERAGE_BUCKET_BOUNDS) if coverage <= b)] += 1
    return tuple(zip(COVERAGE_BUCKET_BOUNDS, counts, strict=True))
