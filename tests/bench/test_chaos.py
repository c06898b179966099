"""The fault campaign (bench/chaos), short: every kind of fault at least once on a cluster of
real processes (a PostgreSQL per shard, three nodes behind fault proxies, two gateways) under
bank clients, then the checker over the whole history and the report. `make chaos` runs the
same campaign for as long as asked.

On main (2026-12-02) this test fails on its last assertion, the checker's, with the findings of
issue 12 that other work is fixing (not marked xfail, on purpose): a cross-shard reversal reads
back without its reverses_id (reversal_read_as_transfer); a post, void or reversal through the
gateway answers gRPC UNKNOWN while a shard's PostgreSQL is down (forbidden_status: the gateway's
lookup on every shard lets one shard's UNAVAILABLE escape); and, in some runs, a cross-shard
hold's piece is left held (one with no deadline) and the books are short by its amount
(held_at_end, balance, total, clearing, trial_balance, audit)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from bench.chaos import campaign, faults
from bench.chaos.outcome import CampaignConfig

DURATION_S = 40.0
SEED = 12


@pytest.mark.timeout(300)
async def test_a_short_campaign_injects_every_fault_and_finds_no_anomaly() -> None:
    # Not under pytest's temporary root, whose permissions another pytest session may reset
    # under the PostgreSQL servers (tests/conftest.py says more); kept if the test fails.
    out_dir = Path(tempfile.mkdtemp(prefix="tally-chaos-"))
    config = CampaignConfig(out_dir=out_dir, duration_s=DURATION_S, seed=SEED, client_count=12)
    outcome = await campaign.run(config)
    print(f"campaign report: {outcome.report_path}")
    injected = {f.kind for f in outcome.schedule if f.started_s is not None}
    assert injected == set(faults.KINDS), outcome.schedule
    problems = [(f.describe(), f.problems) for f in outcome.schedule if f.problems]
    assert problems == []
    assert all(f.healed_s is not None for f in outcome.schedule if f.started_s is not None)
    # The checker ran over the whole history, and the load was what the campaign is for.
    history = outcome.history
    assert outcome.verdict.checked["items"] == len(history.items)
    assert outcome.verdict.checked["audited shards"] == config.shard_count
    transfers = history.of_kind("transfer")
    assert sum(i.cross_shard for i in transfers) >= len(transfers) // 2
    for kind in ("transfer", "linked", "hold", "post", "post_part", "void", "reversal"):
        assert any(i.applied for i in history.of_kind(kind)), kind
    assert any(i.attempt_count > 1 for i in history.items.values()), "no fault was felt"
    assert outcome.report_path is not None
    text = outcome.report_path.read_text()
    assert f"seed {SEED}" in text and "## Anomalies" in text
    assert (config.out_dir / "latency.png").stat().st_size > 0
    # A failing run keeps its history beside the report.
    assert (config.out_dir / "history.jsonl").exists() == (not outcome.ok)
    assert outcome.verdict.ok, outcome.verdict.summary()
    shutil.rmtree(out_dir, ignore_errors=True)
