"""The Locust benchmark suite: the cost model's arithmetic, the Locust client's judgement of
results and retries, the metrics scraper's arithmetic, and one short run of the suite
(`python -m bench.locust.suite`, what `make bench` runs) against a real 2-shard cluster that
runs every scenario through Locust headless and writes the report.

No timing is asserted: performance is measured by `make bench`, never by tests. This process
never imports Locust (it would monkey-patch it with gevent); Locust runs in subprocesses.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from bench.locust import cost, population
from bench.locust import metrics as locust_metrics
from bench.locust.grpc_client import LedgerClient, Tallies, leg
from tally.v1 import ledger_pb2 as pb
from tests.support.paths import REPO_ROOT

SCENARIOS = ("loans", "transfers", "hot", "eod", "mixed")
BENCH_POPULATION = 200

# ------------------------------------------------------------------------------ cost model


MEASURED = cost.Measured(
    scenario="transfers",
    cpu_s_per_tx_by_role={"nodes": 400e-6, "gateway": 300e-6, "postgres": 300e-6},
    postings_per_tx=2.5,
    bytes_per_account=500.0,
    bytes_per_posting=400.0,
)
PRICES = cost.Prices(price_per_hour_usd=0.1, vcpu_count=2, storage_price_per_gib_month_usd=0.08)
ACTIVITY = cost.Activity(
    postings_per_account_month=60.0,
    peak_to_average=5.0,
    cpu_utilisation_max=0.5,
    retention_months=12.0,
)
# The model before the hot/cold split and the standby: every month online hot, one copy
# (tests/bench/test_cost.py checks the split and the standby).
ALL_HOT_ONE_COPY = cost.Deployment(hot_days=12 * 365.25 / 12, standby_copies=0)


def test_cost_model_arithmetic() -> None:
    e = cost.estimate(PRICES, ACTIVITY, MEASURED, ALL_HOT_ONE_COPY)
    # 1 ms of CPU per transaction; 2 vCPU at 50%: 1,000 transactions/s per node.
    assert e.cpu_s_per_tx == pytest.approx(1e-3)
    assert e.node_tx_per_s == pytest.approx(1000.0)
    # 60 postings, 2 on customer accounts per transaction: 30 a month; peak 5x the average.
    seconds_per_month = 365.25 * 86400 / 12
    assert e.tx_per_account_month == pytest.approx(30.0)
    assert e.peak_tx_per_account_s == pytest.approx(30.0 / seconds_per_month * 5)
    assert e.accounts_by_cpu == pytest.approx(1000.0 * seconds_per_month / 150.0)
    # 500 B + 30 transactions x 2.5 postings stored each x 12 months x 400 B.
    assert e.bytes_per_account_stored == pytest.approx(500 + 30 * 2.5 * 12 * 400)
    assert e.accounts_by_storage == pytest.approx(16 * 2**40 / 360_500)
    assert e.accounts_per_node == pytest.approx(min(e.accounts_by_cpu, e.accounts_by_storage))
    assert e.limited_by == "CPU"
    hours_per_year = 365.25 * 24
    assert e.compute_per_account_year_usd == pytest.approx(
        0.1 * hours_per_year / e.accounts_per_node
    )
    assert e.storage_per_account_year_usd == pytest.approx(360_500 / 2**30 * 0.08 * 12)
    assert e.cost_per_account_year_usd == pytest.approx(
        e.compute_per_account_year_usd + e.storage_per_account_year_usd
    )
    lines = cost.arithmetic(e)
    assert lines[0].startswith("CPU per transaction = 400.0 µs (nodes)")
    assert any(line.startswith("accounts per node") and "limited by CPU" in line for line in lines)
    assert lines[-1].startswith("cost per account per year = $")


def test_cost_model_storage_bound_and_sensitivity() -> None:
    tiny_volume = cost.Prices(volume_max_bytes=10**9)
    e = cost.estimate(tiny_volume, ACTIVITY, MEASURED, ALL_HOT_ONE_COPY)
    assert e.limited_by == "storage volume"
    assert e.accounts_per_node == pytest.approx(10**9 / e.bytes_per_account_stored)
    rows = cost.sensitivity(PRICES, ACTIVITY, MEASURED, [6.0, 60.0, 600.0], ALL_HOT_ONE_COPY)
    assert [r[0] for r in rows] == [6.0, 60.0, 600.0]
    # Compute and storage both grow with activity (here CPU-bound: in proportion).
    assert rows[1][1] == pytest.approx(10 * rows[0][1])
    assert rows[2][2] > rows[1][2] > rows[0][2]
    with pytest.raises(ValueError, match="CPU seconds"):
        cost.estimate(PRICES, ACTIVITY, cost.Measured("x", {}, 2.0, 1.0, 1.0))


def test_bytes_per_row_over_shards() -> None:
    shards = [
        {
            "accounts": {"bytes": 1000, "rows": 2},
            "postings": {"bytes": 3000, "rows": 10},
            "transactions": {"bytes": 1000, "rows": 5},
        },
        {"accounts": {"bytes": 500, "rows": 1}, "postings": {"bytes": 1000, "rows": 10}},
    ]
    per_account, per_posting = cost.bytes_per_row(shards)
    assert per_account == pytest.approx(1500 / 3)
    assert per_posting == pytest.approx(5000 / 20)


# --------------------------------------------------------------- the Locust client's judgement


class FakeRpcError(grpc.RpcError):
    def __init__(self, status: grpc.StatusCode) -> None:
        super().__init__(status.name)
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status


class FakeChannel:
    """Answers each call with the next scripted answer: a response or an exception."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.requests: list[Any] = []

    def unary_unary(self, path: str, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        def call(request: Any, timeout: float | None = None) -> Any:
            self.requests.append(request)
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        return call

    def unary_stream(self, path: str, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        """The stub builds every method (StreamJournal too); the load never streams."""

        def call(request: Any, timeout: float | None = None) -> Any:
            raise AssertionError(f"{path} was not scripted")

        return call


def _results(*codes: int) -> pb.PostTransactionsResponse:
    return pb.PostTransactionsResponse(results=[pb.ItemResult(code=c) for c in codes])


def _client(answers: list[Any]) -> tuple[LedgerClient, list[dict[str, Any]], Tallies, FakeChannel]:
    fired: list[dict[str, Any]] = []
    tallies = Tallies()
    channel = FakeChannel(answers)
    client = LedgerClient(channel, lambda **event: fired.append(event), tallies)
    return client, fired, tallies, channel


def _transfer(transaction_id: str) -> pb.Transaction:
    legs = [leg("cust-000001/deposit", True, 100, "USD"), leg("@cash", False, 100, "USD")]
    return pb.Transaction(id=transaction_id, code=1, legs=legs)


def test_expected_rejection_is_a_success_and_tallied_apart() -> None:
    client, fired, tallies, _ = _client(
        [_results(pb.RESULT_CODE_CREATED, pb.RESULT_CODE_INSUFFICIENT_FUNDS)]
    )
    codes = client.post([_transfer("a"), _transfer("b")], expected={"INSUFFICIENT_FUNDS"})
    assert codes == ["CREATED", "INSUFFICIENT_FUNDS"]
    assert len(fired) == 1
    assert fired[0]["request_type"] == "grpc"
    assert fired[0]["name"] == "PostTransactions"
    assert fired[0]["exception"] is None
    assert fired[0]["response_length"] > 0
    assert tallies.expected == {"PostTransactions INSUFFICIENT_FUNDS": 1}
    assert tallies.results == {
        "PostTransactions CREATED": 1,
        "PostTransactions INSUFFICIENT_FUNDS": 1,
    }


def test_unexpected_result_is_a_failure() -> None:
    client, fired, tallies, _ = _client([_results(pb.RESULT_CODE_INSUFFICIENT_FUNDS)])
    client.post([_transfer("a")])
    assert str(fired[0]["exception"]) == "PostTransactions: unexpected result INSUFFICIENT_FUNDS"
    assert tallies.expected == {}


def test_replayed_on_a_first_attempt_is_a_failure() -> None:
    """A REPLAYED answer to an id sent once means two transactions shared an id."""
    client, fired, _, _ = _client([_results(pb.RESULT_CODE_REPLAYED)])
    client.post([_transfer("a")])
    assert "REPLAYED" in str(fired[0]["exception"])


def test_transport_error_and_unavailable_items_are_retried_with_the_same_ids() -> None:
    client, fired, tallies, channel = _client(
        [
            FakeRpcError(grpc.StatusCode.UNAVAILABLE),
            _results(pb.RESULT_CODE_REPLAYED, pb.RESULT_CODE_UNAVAILABLE),
            _results(pb.RESULT_CODE_CREATED),
        ]
    )
    codes = client.post([_transfer("a"), _transfer("b")])
    assert codes == ["REPLAYED", "CREATED"]
    assert fired[0]["exception"] is None  # one Locust request for the whole exchange
    assert len(fired) == 1
    sent = [[t.id for t in request.transactions] for request in channel.requests]
    assert sent == [["a", "b"], ["a", "b"], ["b"]]
    assert tallies.retries == {"grpc UNAVAILABLE": 1, "item UNAVAILABLE": 1}


def test_non_retryable_transport_error_is_reported() -> None:
    client, fired, _, _ = _client([FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT)])
    client.post([_transfer("a")])
    assert isinstance(fired[0]["exception"], FakeRpcError)


def test_lookups_not_found_are_failures() -> None:
    response = pb.GetAccountsResponse(
        results=[
            pb.AccountLookup(code=pb.RESULT_CODE_OK),
            pb.AccountLookup(code=pb.RESULT_CODE_ACCOUNT_NOT_FOUND),
        ]
    )
    client, fired, _, _ = _client([response])
    assert client.get_accounts(["x", "y"]) is None
    assert "ACCOUNT_NOT_FOUND" in str(fired[0]["exception"])


def test_tallies_add_up_across_workers() -> None:
    worker, master = Tallies(), Tallies()
    worker.count("PostTransactions", "CREATED", False)
    worker.count("PostTransactions", "INSUFFICIENT_FUNDS", True)
    worker.eod_progress(100, 10.0, 12.0)
    master.merge(worker.take())
    worker.eod_progress(50, 11.0, 15.0)
    master.merge(worker.take())
    assert worker.results == {}
    assert master.results == {
        "PostTransactions CREATED": 1,
        "PostTransactions INSUFFICIENT_FUNDS": 1,
    }
    assert master.expected == {"PostTransactions INSUFFICIENT_FUNDS": 1}
    assert master.eod == {"items": 150, "started_s": 10.0, "finished_s": 15.0}


def test_placement_pairs_cross_shards_as_asked() -> None:
    import random

    placement = population.Placement.of(2000, 2)
    shard_of = {n: s for s, group in enumerate(placement.by_shard) for n in group}
    rng = random.Random(7)
    for share, expected in ((0.0, 0.0), (1.0, 1.0)):
        pairs = [placement.pair(rng, share) for _ in range(500)]
        assert all(a != b for a, b in pairs)
        crossing = sum(shard_of[a] != shard_of[b] for a, b in pairs) / len(pairs)
        assert crossing == expected
    half = [placement.pair(rng, 0.5) for _ in range(2000)]
    assert 0.4 < sum(shard_of[a] != shard_of[b] for a, b in half) / len(half) < 0.6


# ----------------------------------------------------------------------------- metrics


def test_metrics_endpoints_and_summary() -> None:
    lines = [
        "tally: shard 0 on 127.0.0.1:1",
        "tally: metrics of node-0 on http://127.0.0.1:9001/metrics",
        "tally: metrics of gateway on http://127.0.0.1:9003/metrics",
        "tally: serving tally.v1.Ledger on 127.0.0.1:7400 (gateway, 1 shards)",
    ]
    assert locust_metrics.endpoints_from_lines(lines) == [
        locust_metrics.Endpoint("node-0", "http://127.0.0.1:9001/metrics"),
        locust_metrics.Endpoint("gateway", "http://127.0.0.1:9003/metrics"),
    ]
    assert locust_metrics.endpoints_from_urls(["10.0.0.5:9100"]) == [
        locust_metrics.Endpoint("10.0.0.5:9100", "http://10.0.0.5:9100/metrics")
    ]

    def scrape(commits: int, seconds_sum: float, items_sum: float, fast: int) -> str:
        return f"""
# TYPE tally_commit_duration_seconds histogram
tally_commit_duration_seconds_bucket{{le="0.005",shard="0"}} {fast}
tally_commit_duration_seconds_bucket{{le="0.05",shard="0"}} {commits}
tally_commit_duration_seconds_bucket{{le="+Inf",shard="0"}} {commits}
tally_commit_duration_seconds_sum{{shard="0"}} {seconds_sum}
tally_commit_duration_seconds_count{{shard="0"}} {commits}
# TYPE tally_batch_items histogram
tally_batch_items_sum{{shard="0"}} {items_sum}
tally_batch_items_count{{shard="0"}} {commits}
# TYPE tally_queue_depth gauge
tally_queue_depth{{shard="0"}} {commits % 7}
# TYPE other_metric gauge
other_metric 1
"""

    rows: list[locust_metrics.Row] = []
    for t, text in ((0.0, scrape(10, 0.05, 100, 10)), (2.0, scrape(110, 0.55, 1100, 20))):
        rows += [(t, "node-0", n, labels, v) for n, labels, v in locust_metrics.parse_samples(text)]
    assert {r[2] for r in rows} >= {"tally_commit_duration_seconds_bucket", "tally_queue_depth"}
    assert "other_metric" not in {r[2] for r in rows}
    summary = locust_metrics.summary(rows)["node-0"]
    assert summary["commits"] == 100
    assert summary["commits_per_s"] == 50.0
    assert summary["commit_ms_mean"] == 5.0
    assert summary["batch_items_mean"] == 10.0
    # 10 of the 100 commits in the window took <= 5 ms: the p99 is in the 50 ms bucket.
    assert summary["commit_ms_p99_bucket"] == 50.0
    assert summary["queue_depth_max"] == 5.0
    means = locust_metrics.histogram_mean(rows, "tally_commit_duration_seconds")
    assert means["node-0"] == [(2.0, pytest.approx(0.005))]
    assert not math.isnan(summary["commit_ms_mean"])


# --------------------------------------------------------------------- a real, short run


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """`python -m bench.locust.suite` with no target: it starts `tally up --shards 2`, loads 200
    customers and runs each scenario through Locust headless for a few seconds."""
    out = tmp_path_factory.mktemp("bench") / "report"
    command = [
        sys.executable, "-m", "bench.locust.suite",
        "--shards", "2",
        "--population", str(BENCH_POPULATION),
        "--users", "4",
        "--duration-s", "3",
        "--eod-batch-size", "50",
        "--rowlock-duration-s", "1",
        "--quiet-wait-s", "0",
        "--out", str(out),
    ]  # fmt: skip
    finished = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=150, check=False
    )
    log = finished.stdout[-4000:] + finished.stderr[-4000:]
    results = json.loads((out / "results.json").read_text()) if out.exists() else {}
    assert finished.returncode == 0, log
    return out, results, log


@pytest.mark.timeout(180)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_made_requests_without_failures(
    bench_run: tuple[Path, dict[str, Any], str], scenario: str
) -> None:
    out, results, log = bench_run
    by_name = {r["scenario"]: r for r in results["scenarios"]}
    result = by_name[scenario]
    # Locust's own counts, as it left them at the end of the run.
    stats = json.loads((out / f"{scenario}_results.json").read_text())["locust_stats"]
    assert stats["Aggregated"]["Request Count"] > 0, log
    assert stats["Aggregated"]["Failure Count"] == 0, (result["results"], log)
    assert result["failures"] == 0
    assert result["writes"] > 0
    assert (out / f"{scenario}_stats.csv").exists()
    assert (out / f"{scenario}_stats_history.csv").exists()
    unexpected = {
        key
        for key in result["results"]
        if not key.endswith((" CREATED", " OK", " REPLAYED")) and key not in result["expected"]
    }
    assert not unexpected, result["results"]
    # Every node's metrics were scraped during the run.
    assert {"node-0", "node-1"} <= set(result["metrics"]), result["metrics"]
    if scenario in ("loans", "mixed"):
        assert result["expected_rejections"] > 0  # declined overdrafts, by design
    if scenario == "eod":
        assert result["eod"]["accruals"] == BENCH_POPULATION
    if scenario in ("transfers", "hot"):
        assert result["rowlock"]["transfers_per_s"] > 0
        assert result["rowlock"]["errors"] == {}


@pytest.mark.timeout(180)
def test_report_folder_has_plots_and_cost(bench_run: tuple[Path, dict[str, Any], str]) -> None:
    out, results, _ = bench_run
    assert results["clean"] is True
    for name in ("report.md", "report.html", "cost_model.png", "rowlock_comparison.png"):
        assert (out / name).stat().st_size > 0, name
    for scenario in ("loans", "transfers", "hot", "mixed"):
        assert (out / f"{scenario}_locust.png").stat().st_size > 0
        assert (out / f"{scenario}_metrics.png").stat().st_size > 0
        assert (out / f"{scenario}_metrics.csv").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert report.startswith("# Tally Locust benchmark")
    assert "cost per account per year = $" in report
    assert results["cost"]["cost_per_account_year_usd"] > 0
    assert results["storage"]["bytes_per_account"] > 0
    assert results["storage"]["bytes_per_posting"] > 0
    # Every shard's journal was written as cold segments and their size priced as cold bytes.
    cold = results["storage"]["cold"]
    assert cold["segments"] >= 2 and cold["postings"] > 0
    assert (
        0 < results["storage"]["cold_bytes_per_posting"] < results["storage"]["bytes_per_posting"]
    )
    assert results["cost"]["cold_bytes_measured"] is True
    assert results["cost"]["cold_bytes_per_posting"] == results["storage"]["cold_bytes_per_posting"]
    html = (out / "report.html").read_text()
    assert '<img src="cost_model.png"' in html
