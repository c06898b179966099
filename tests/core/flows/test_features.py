"""The formulas of a profile (core.flows.features)."""

from __future__ import annotations

import math

from core.flows.features import (
    COVERAGE_BUCKET_BOUNDS,
    Baseline,
    baseline,
    coverage_counts,
    round_trip_amount,
    share,
)


def test_coverage_buckets_have_inclusive_upper_bounds_and_a_last_one_for_the_rest() -> None:
    counts = dict(coverage_counts([0.0, 0.5, 0.51, 1.0, 2.99, 3.0, 3.01, 1e9]))
    assert counts == {0.5: 2, 0.8: 1, 1.0: 1, 1.25: 0, 1.5: 0, 2.0: 0, 3.0: 2, math.inf: 2}
    assert tuple(counts) == COVERAGE_BUCKET_BOUNDS


def test_a_share_of_nothing_is_undefined() -> None:
    assert share(1, 0) is None
    assert share(0, 5) == 0.0
    assert share(1, 3) == 1 / 3


def test_round_trips_of_zero_days_are_same_day_only() -> None:
    daily = [(10, 100, 0), (10, 0, 40), (11, 0, 100)]
    assert round_trip_amount(daily, 0) == 40
    assert round_trip_amount(daily, 1) == 100
    assert round_trip_amount([(10, 0, 100), (11, 100, 0)], 5) == 0  # back before it left


def test_a_flat_baseline_has_no_z_score_and_a_zero_one_no_ratio() -> None:
    assert baseline("USD", 30, 50, [100, 100], 2) == Baseline(
        "USD", 30, 50, 2, 100.0, 0.0, 0.5, None
    )
    assert baseline("USD", 30, 50, [0, 0, 0], 2) == Baseline("USD", 30, 50, 3, 0.0, 0.0, None, None)
    assert baseline("USD", 30, 50, [7], 2) == Baseline("USD", 30, 50, 1, None, None, None, None)
