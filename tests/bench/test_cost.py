"""The cost model's hot/cold split and its durability copies (issue 13), on fixed inputs, and
the report's rendering of the split (bench/locust/cost.py, bench/locust/report.py).

No benchmark runs here: the report is built from a synthetic results dictionary.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench.locust import cost, options, report

BASELINE = (
    Path(__file__).resolve().parents[2]
    / "bench/baselines/2026-11-26-locust-2-shards-100k-customers-56869e5-fresh-clone"
    / "results.json"
)
# 1 ms of CPU per transaction; 30 transactions of 2.5 postings a month: 75 postings stored.
MEASURED = cost.Measured(
    scenario="transfers",
    cpu_s_per_tx_by_role={"nodes": 400e-6, "gateway": 300e-6, "postgres": 300e-6},
    postings_per_tx=2.5,
    bytes_per_account=500.0,
    bytes_per_posting=400.0,
)
PRICES = cost.Prices(
    price_per_hour_usd=0.1,
    storage_price_per_gib_month_usd=0.08,
    object_storage_price_per_gib_month_usd=0.02,
)
ACTIVITY = cost.Activity(retention_months=12.0, cpu_utilisation_max=0.5)
QUARTER = cost.Deployment(hot_days=365.25 / 4, standby_copies=1)  # 3 months hot
HOURS = 365.25 * 24


def test_hot_and_cold_split_sums_to_the_total() -> None:
    e = cost.estimate(PRICES, ACTIVITY, MEASURED, QUARTER)
    assert e.hot_months == pytest.approx(3.0)
    assert e.cold_months == pytest.approx(9.0)
    assert e.hot_bytes_per_account == pytest.approx(500 + 75 * 3 * 400)
    assert e.cold_bytes_per_account == pytest.approx(75 * 9 * 400)
    assert e.bytes_per_account_stored == pytest.approx(500 + 75 * 12 * 400)
    one = e.one_copy
    assert one.copies == 1
    assert one.compute_usd == pytest.approx(0.1 * HOURS / e.accounts_per_node)
    assert one.hot_storage_usd == pytest.approx((500 + 75 * 3 * 400) / 2**30 * 0.08 * 12)
    assert one.cold_storage_usd == pytest.approx(75 * 9 * 400 / 2**30 * 0.02 * 12)
    for s in (e.one_copy, e.with_standby):
        assert s.total_usd == pytest.approx(s.compute_usd + s.hot_storage_usd + s.cold_storage_usd)
    assert e.storage_per_account_year_usd == pytest.approx(
        e.hot_storage_per_account_year_usd + e.cold_storage_per_account_year_usd
    )
    # Cold is cheaper per byte here, so moving history out of PostgreSQL lowers the figure.
    all_hot = cost.estimate(PRICES, ACTIVITY, MEASURED, replace(QUARTER, hot_days=365.25))
    assert e.one_copy.total_usd < all_hot.one_copy.total_usd


def test_hot_days_equal_to_the_retention_is_the_model_before_the_split() -> None:
    all_hot = cost.Deployment(hot_days=12 * 365.25 / 12, standby_copies=0)
    e = cost.estimate(PRICES, ACTIVITY, MEASURED, all_hot)
    assert e.cold_months == 0 and e.cold_bytes_per_account == 0
    stored = 500 + 30 * 2.5 * 12 * 400
    before = 0.1 * HOURS / e.accounts_per_node + stored / 2**30 * 0.08 * 12
    assert e.cost_per_account_year_usd == before
    assert e.one_copy.total_usd == before


def test_hot_days_equal_to_the_retention_gives_the_baselines_figure() -> None:
    """The latest baseline's measured inputs, all 24 months hot, one copy: its figure, exactly
    ($6.59e-4 per account-year, storage $6.05e-4 of it)."""
    stored = json.loads(BASELINE.read_text())["cost"]
    m = stored["measured"]
    measured = cost.Measured(
        m["scenario"],
        m["cpu_s_per_tx_by_role"],
        m["postings_per_tx"],
        m["bytes_per_account"],
        m["bytes_per_posting"],
    )
    deployment = cost.Deployment(hot_days=24 * cost.DAYS_PER_MONTH, standby_copies=0)
    e = cost.estimate(cost.Prices(), cost.Activity(), measured, deployment)
    assert e.cost_per_account_year_usd == stored["cost_per_account_year_usd"]
    assert e.storage_per_account_year_usd == stored["storage_per_account_year_usd"]
    assert e.compute_per_account_year_usd == stored["compute_per_account_year_usd"]
    assert e.cost_per_account_year_usd == pytest.approx(6.591e-4, rel=1e-3)


def test_a_standby_doubles_hot_storage_and_compute_not_cold() -> None:
    e = cost.estimate(PRICES, ACTIVITY, MEASURED, QUARTER)
    one, two = e.one_copy, e.with_standby
    assert two.copies == 2
    assert two.compute_usd == pytest.approx(2 * one.compute_usd)
    assert two.hot_storage_usd == pytest.approx(2 * one.hot_storage_usd)
    assert two.cold_storage_usd == one.cold_storage_usd  # the provider replicates it
    # The headline is the durable deployment.
    assert e.headline == "with_standby"
    assert e.cost_per_account_year_usd == two.total_usd
    assert "sync-standby" in cost.headline_text(e)
    three = cost.estimate(PRICES, ACTIVITY, MEASURED, replace(QUARTER, standby_copies=2))
    assert three.with_standby.compute_usd == pytest.approx(3 * one.compute_usd)
    assert three.with_standby.hot_storage_usd == pytest.approx(3 * one.hot_storage_usd)
    none = cost.estimate(PRICES, ACTIVITY, MEASURED, replace(QUARTER, standby_copies=0))
    assert none.headline == "one_copy"
    assert none.cost_per_account_year_usd == none.one_copy.total_usd == one.total_usd


def test_cold_history_without_a_measurement_is_priced_at_the_hot_bytes() -> None:
    unmeasured = cost.estimate(PRICES, ACTIVITY, MEASURED, QUARTER)
    assert not unmeasured.cold_bytes_measured
    assert unmeasured.cold_bytes_per_posting == 400.0
    assert "not measured" in cost.cold_source(unmeasured)
    assert any("not measured" in line for line in cost.arithmetic(unmeasured))
    segment = replace(MEASURED, cold_bytes_per_posting=60.0)
    measured = cost.estimate(PRICES, ACTIVITY, segment, QUARTER)
    assert measured.cold_bytes_measured
    assert measured.cold_bytes_per_account == pytest.approx(75 * 9 * 60)
    assert measured.hot_bytes_per_account == unmeasured.hot_bytes_per_account
    assert measured.one_copy.cold_storage_usd == pytest.approx(
        unmeasured.one_copy.cold_storage_usd * 60 / 400
    )


def test_accounts_by_storage_count_only_the_hot_bytes() -> None:
    tiny = replace(PRICES, volume_max_bytes=10**9)
    e = cost.estimate(tiny, ACTIVITY, MEASURED, QUARTER)
    assert e.accounts_by_storage == pytest.approx(10**9 / (500 + 75 * 3 * 400))
    assert e.limited_by == "storage volume"
    assert e.accounts_per_node == e.accounts_by_storage
    # More cold bytes change nothing on the volume.
    heavy = cost.estimate(tiny, ACTIVITY, replace(MEASURED, cold_bytes_per_posting=4000.0), QUARTER)
    assert heavy.accounts_by_storage == e.accounts_by_storage
    lines = cost.arithmetic(e)
    assert any(line.startswith("accounts by storage") and "hot" in line for line in lines)


@pytest.mark.parametrize(
    ("deployment", "activity", "measured", "message"),
    [
        (cost.Deployment(hot_days=-1.0), ACTIVITY, MEASURED, "hot_days must be >= 0"),
        (cost.Deployment(hot_days=366.0), ACTIVITY, MEASURED, r"exceeds the retention"),
        (cost.Deployment(standby_copies=-1), ACTIVITY, MEASURED, "standby_copies"),
        (cost.Deployment(standby_copies=1.5), ACTIVITY, MEASURED, "whole number"),  # type: ignore[arg-type]
        (
            cost.Deployment(hot_days=0.0),
            replace(ACTIVITY, retention_months=-1.0),
            MEASURED,
            "retention_months must be >= 0",
        ),
        (
            QUARTER,
            ACTIVITY,
            replace(MEASURED, cold_bytes_per_posting=-5.0),
            "cold bytes per posting must be > 0",
        ),
        (QUARTER, ACTIVITY, replace(MEASURED, cold_bytes_per_posting=0.0), "cold bytes"),
        (QUARTER, ACTIVITY, replace(MEASURED, bytes_per_posting=0.0), "bytes per account"),
    ],
)
def test_bad_inputs_are_refused(
    deployment: cost.Deployment, activity: cost.Activity, measured: cost.Measured, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        cost.estimate(PRICES, activity, measured, deployment)


def test_a_negative_object_storage_price_is_refused() -> None:
    prices = replace(PRICES, object_storage_price_per_gib_month_usd=-0.01)
    with pytest.raises(ValueError, match="object_storage_price_per_gib_month_usd must be >= 0"):
        cost.estimate(prices, ACTIVITY, MEASURED, QUARTER)


def test_sensitivity_follows_the_headline() -> None:
    rows = cost.sensitivity(PRICES, ACTIVITY, MEASURED, [6.0, 60.0], QUARTER)
    e = cost.estimate(PRICES, ACTIVITY, MEASURED, QUARTER)
    assert rows[1] == (60.0, e.compute_per_account_year_usd, e.storage_per_account_year_usd)
    assert rows[1][1] == pytest.approx(10 * rows[0][1])  # CPU-bound: compute in proportion


# ----------------------------------------------------------------------------- the command


def test_suite_flags_reach_the_model() -> None:
    args = options.parse(
        [
            "--hot-days", "30",
            "--object-storage-price-gb-month", "0.01",
            "--cold-bytes-per-posting", "60",
            "--standby-copies", "2",
        ],
        "test",
    )  # fmt: skip
    inputs = options.cost_inputs(args)
    assert inputs.deployment == cost.Deployment(hot_days=30.0, standby_copies=2)
    assert inputs.prices.object_storage_price_per_gib_month_usd == 0.01
    assert inputs.cold_bytes_per_posting == 60.0
    defaults = options.cost_inputs(options.parse([], "test"))
    assert defaults.deployment == cost.Deployment()
    assert defaults.deployment.hot_days == pytest.approx(91.3125)
    assert defaults.cold_bytes_per_posting is None


def test_a_run_stored_before_the_split_is_recomputed_with_the_defaults() -> None:
    """`python -m bench.locust.report DIR` reads the options a run stored; the baseline's
    predate --hot-days and friends."""
    stored = json.loads(BASELINE.read_text())["options"]
    assert "hot_days" not in stored
    inputs = options.cost_inputs(argparse.Namespace(**stored))
    assert inputs.deployment == cost.Deployment()
    assert inputs.cold_bytes_per_posting is None
    assert inputs.prices.price_per_hour_usd == stored["price_per_hour"]


def test_suite_refuses_hot_days_beyond_the_retention(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        options.parse(["--hot-days", "800"], "test")
    assert "exceeds the retention" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the report


def _results() -> dict[str, Any]:
    """A results dictionary as the suite writes it, with one `transfers` scenario."""
    scenario = {
        "scenario": "transfers", "users": 4, "calls_per_s": 100.0, "writes_per_s": 100.0,
        "p50_ms": 5.0, "p99_ms": 20.0, "failures": 0, "expected_rejections": 0, "retries": {},
        "cpu_us_per_write": {"nodes": 400.0, "gateway": 300.0, "postgres": 300.0},
        "run_s": 10.0, "locust_exit_code": 0, "calls": 1000, "results": {"transfer CREATED": 1000},
        "writes": 1000, "cpu_s": {"nodes": 0.4, "gateway": 0.3, "postgres": 0.3},
        "journal": {"postings": 2500},
    }  # fmt: skip
    return {
        "scenarios": [scenario],
        "storage": {"bytes_per_account": 500.0, "bytes_per_posting": 400.0},
        "options": {"population": 100},
    }


def test_report_renders_the_cost_split(tmp_path: Path) -> None:
    results = _results()
    inputs = cost.Inputs(prices=PRICES)
    report.write(results, tmp_path, inputs, "transfers")
    text = (tmp_path / "report.md").read_text()
    e, _ = report.cost_estimate(_results(), inputs, "transfers")
    assert e is not None
    assert "| deployment | machines and hot volumes per shard | compute | hot storage | " in text
    one, two = e.one_copy, e.with_standby
    assert (
        f"| one copy (no standby) | 1 | ${one.compute_usd:.3e} | ${one.hot_storage_usd:.3e} | "
        f"${one.cold_storage_usd:.3e} | ${one.total_usd:.3e} |"
    ) in text
    assert (
        f"| with 1 synchronous standby **(headline)** | 2 | ${two.compute_usd:.3e} | "
        f"${two.hot_storage_usd:.3e} | ${two.cold_storage_usd:.3e} | ${two.total_usd:.3e} |"
    ) in text
    assert "for comparison: all 24 months hot, one copy" in text
    assert f"**${two.total_usd:.3e}**" in text  # the headline line
    assert f"one copy (no standby): ${one.total_usd:.3e}" in text
    assert "| days of history hot in PostgreSQL | 91.3125 (3 months) |" in text
    assert "| object storage price | $0.02/GiB-mo | cloudburn.io" in text
    assert "no cold segment size was measured" in text
    # Issue 13's before/after table of bytes, from the run's storage measurement.
    per_tx = 400.0 * e.measured.postings_per_tx
    assert "| per posting | 396.5 | 400.0 | <= 120 |" in text
    assert "| per account | 394.4 | 500.0 | <= 150 |" in text
    assert f"| per transaction | 793.1 (2 postings) | {per_tx:,.1f} (" in text
    sixty = cost.sensitivity(e.prices, e.activity, e.measured, [60.0], e.deployment)[0]
    assert "| postings per account per month | compute | storage (hot + cold) | total |" in text
    assert f"| 60 | ${sixty[1]:.3e} | ${sixty[2]:.3e} | ${sixty[1] + sixty[2]:.3e} |" in text
    assert (tmp_path / "cost_model.png").stat().st_size > 0
    stored = json.loads((tmp_path / "results.json").read_text())["cost"]
    assert stored["with_standby"]["total_usd"] == pytest.approx(two.total_usd)
    assert stored["one_copy"]["total_usd"] == pytest.approx(one.total_usd)
    assert "sync-standby" in stored["headline_is"]


def test_report_uses_a_measured_cold_segment_size(tmp_path: Path) -> None:
    inputs = cost.Inputs(prices=PRICES, cold_bytes_per_posting=60.0)
    e, notes = report.cost_estimate(_results(), inputs, "transfers")
    assert e is not None and e.cold_bytes_measured
    assert not any("cold" in note for note in notes)
    rows = {row[0]: row for row in report.cost_inputs_rows(e)}
    assert rows["bytes per posting (cold)"][1:] == ["60", "measured (a cold segment's size)"]
    # Without the flag, a size stored with the run's storage measurement is used.
    results = _results()
    results["storage"]["cold_bytes_per_posting"] = 70.0
    e, _ = report.cost_estimate(results, cost.Inputs(prices=PRICES), "transfers")
    assert e is not None and e.cold_bytes_per_posting == 70.0
