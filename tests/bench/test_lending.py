"""The lending scenario (bench/lending): its determinism and ground truth, and a small run through
the real pipeline (tally up, NATS, tally relay, tally monitor as processes) that must find every
planted pattern and alert no healthy or seasonal borrower. Timing is never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.lending import offline
from bench.lending.run import RULES_PATH
from bench.lending.scenario import (
    HEALTHY,
    LOAN_DAY,
    PATTERN_RULES,
    PATTERNS,
    SEASONAL,
    ScenarioConfig,
    build,
)
from bench.lending.score import score
from core.flows import rules
from core.flows.model import AccountInfo
from core.flows.schedule import loan_account
from tests.support.paths import REPO_ROOT

SMALL = ScenarioConfig(
    seed=11,
    days=120,
    counts=tuple((pattern, 2 if pattern == HEALTHY else 1) for pattern in PATTERNS),
)
SMALL_FLAG = ",".join(f"{pattern}={count}" for pattern, count in SMALL.counts)


def test_the_same_config_gives_the_same_scenario_and_another_seed_another() -> None:
    first, second = build(SMALL), build(SMALL)
    assert first.accounts == second.accounts
    assert first.loan_accounts == second.loan_accounts
    assert first.payments_by_day == second.payments_by_day
    assert first.borrowers == second.borrowers
    other = build(ScenarioConfig(seed=12, days=SMALL.days, counts=SMALL.counts))
    assert other.payments_by_day != first.payments_by_day


def test_the_scenario_is_well_formed_and_says_what_each_borrower_should_trip() -> None:
    scenario = build(SMALL)
    account_ids = {a.account_id for a in (*scenario.accounts, *scenario.loan_accounts)}
    ids = [p.transaction_id for day in scenario.payments_by_day for p in day]
    assert len(ids) == len(set(ids))  # idempotent ids: one per payment
    for offset, payments in enumerate(scenario.payments_by_day):
        for payment in payments:
            assert payment.day == offset and payment.amount > 0
            assert {payment.debit_account_id, payment.credit_account_id} <= account_ids
            # Ids live under the debit account's partition key, as a client library names them.
            assert payment.transaction_id.split("/")[0] == payment.debit_account_id.split("/")[0]
            if payment.debit_account_id.endswith("/loan"):
                assert offset == LOAN_DAY  # the disbursement, once the loan is open
    for borrower in scenario.borrowers:
        assert borrower.expected_rules == PATTERN_RULES[borrower.pattern]
        (record,) = [a for a in scenario.loan_accounts if a.account_id == borrower.loan]
        loan = loan_account(AccountInfo(record.account_id, "USD", record.code, record.metadata))
        assert loan is not None and loan.schedule is not None and loan.problem is None
        assert loan.schedule.installment == borrower.installment
        assert loan.product == ("seasonal" if borrower.pattern == SEASONAL else "sme")
    for rule in rules.RULE_NAMES:
        expected = {b.key for b in scenario.borrowers if rule in PATTERN_RULES[b.pattern]}
        assert scenario.planted(rule) == expected and expected


def test_the_engine_itself_finds_every_planted_pattern_of_the_scenario() -> None:
    """The ground truth holds for core.flows fed the scenario directly (no pipeline)."""
    scenario = build(SMALL)
    rule_set = rules.parse_rules(RULES_PATH.read_text())
    found = score(scenario, offline.fired(offline.run(scenario, rule_set).alerts))
    assert found.every_pattern_found, found


def test_a_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="days"):
        ScenarioConfig(days=30)
    with pytest.raises(ValueError, match="pattern"):
        ScenarioConfig(counts=(("nosuch", 1),))
    with pytest.raises(ValueError, match="borrowers"):
        ScenarioConfig(counts=((HEALTHY, 0),))


@pytest.mark.timeout(120)
def test_a_small_run_through_the_real_pipeline_finds_every_planted_pattern(
    tmp_path: Path,
) -> None:
    out = tmp_path / "report"
    command = [
        sys.executable, "-m", "bench.lending", "--seed", str(SMALL.seed),
        "--days", str(SMALL.days), "--borrowers", SMALL_FLAG, "--shards", "2",
        "--out", str(out),
    ]  # fmt: skip
    finished = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=110, check=False
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    for name in ("report.md", "results.json", "coverage.png", "alerts.png", "throughput.png"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert results["score"]["every_pattern_found"] is True
    for rule in results["score"]["rules"]:
        assert rule["missed"] == [] and rule["recall"] == 1.0, rule
        assert rule["false_positives"] == [], rule
    negatives = {b["key"] for b in results["borrowers"] if b["pattern"] in (HEALTHY, SEASONAL)}
    alerted = {key for rule in results["score"]["rules"] for key in rule["alerted"]}
    assert negatives and not negatives & alerted
    figures = results["throughput"]
    assert figures["lag_postings_at_end"] == 0
    assert figures["monitor_postings_applied"] == figures["journal_postings"] > 0
    assert results["codes"].keys() <= {"CREATED", "REPLAYED"}
    assert results["scrape_failures"] == []  # /metrics answered while the books changed
    assert results["monitor_restarts"] == 0
    assert results["throughput"]["replay_same_alerts"] is True
    # The online profiles and alerts are what the engine makes of the scenario itself.
    assert results["offline"]["same_fired"] is True
    assert results["offline"]["profile_differences"] == []
    assert "Every planted pattern found: **yes**" in (out / "report.md").read_text()


def test_the_pace_run_measures_the_monitor_against_a_batched_load(tmp_path: Path) -> None:
    """`python -m bench.lending pace`, briefly: the monitor applied every posting the ledger
    produced once it caught up, and the report says both rates."""
    out = tmp_path / "pace"
    command = [
        sys.executable, "-m", "bench.lending", "pace", "--accounts", "2000",
        "--duration-s", "2", "--out", str(out),
    ]  # fmt: skip
    finished = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=110, check=False
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["postings_produced"] > 0
    caught_up = results["caught_up"]
    assert caught_up["monitor_postings"] == caught_up["ledger_postings"] > 0
    assert caught_up["monitor_blocks"] == caught_up["ledger_blocks"]
    assert "postings the monitor consumed" in (out / "report.md").read_text()
