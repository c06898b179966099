"""The first benchmark runs end to end with tiny parameters (timing is never asserted here:
performance is measured by `make bench`, not by tests)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

WORKLOADS = {"single-uniform", "single-hot", "batch-uniform", "batch-hot"}
BATCH_WORKLOADS = {"batch-uniform", "batch-hot"}


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """PostgreSQL's data, not under pytest's temporary root: another pytest session starting
    meanwhile resets that root's permissions, and the server (an unprivileged user when we are
    root) then loses its data directory mid-run (as tests/conftest.py's pg fixture explains)."""
    root = Path(tempfile.mkdtemp(prefix="tally-bench-smoke-"))
    try:
        yield root / "data"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(60)
def test_first_benchmark_end_to_end(tmp_path: Path, data_dir: Path) -> None:
    out_dir = tmp_path / "report"
    command = [
        sys.executable, "-m", "bench.closed_loop.single_node",
        "--accounts", "2000",
        "--duration-s", "1",
        "--warmup-s", "0.2",
        "--clients", "8",
        "--batch-size", "100",
        "--batch-clients", "2",
        "--seed-batch-size", "1000",
        "--quiet-wait-s", "0",
        "--out", str(out_dir),
        "--data-dir", str(data_dir),
    ]  # fmt: skip
    finished = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=55, check=False
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    results = json.loads((out_dir / "results.json").read_text())
    runs = {(run["system"], run["workload"]): run for run in results["runs"]}
    expected = {(system, w) for system in ("tally", "rowlock") for w in WORKLOADS}
    expected |= {("ceiling", w) for w in BATCH_WORKLOADS}  # PostgreSQL's own batched ceiling
    assert set(runs) == expected
    for key, run in runs.items():
        assert run["transfers_created"] > 0, key
        assert run["unexpected_results"] == 0, (key, run["results"])
        assert run["call_errors"] == {}, (key, run["call_errors"])
        assert set(run["results"]) == {"CREATED"}, (key, run["results"])
    assert results["clean"] is True
    assert results["seeding"]["audit"] == {"tally": [], "rowlock": [], "ceiling": []}
    assert {target["verdict"] for target in results["targets"]} <= {"PASS", "MISS"}
    assert (out_dir / "report.md").read_text().startswith("# Tally first benchmark")


@pytest.mark.timeout(120)
def test_client_singles_runs_end_to_end(tmp_path: Path) -> None:
    """bench.closed_loop.client_singles: raw one-item RPCs and tally.client calls without and
    with direct routing, and with batching and routing off, every phase posting, nothing
    failed, the report written."""
    out_dir = tmp_path / "report"
    command = [
        sys.executable, "-m", "bench.closed_loop.client_singles",
        "--callers", "8", "--customers", "100", "--duration-s", "1", "--rounds", "1",
        "--out", str(out_dir),
    ]  # fmt: skip
    finished = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=110, check=False
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    results = json.loads((out_dir / "results.json").read_text())
    assert [p["phase"] for p in results["phases"]] == [
        "raw",
        "library",
        "library-direct",
        "library-unbatched",
    ]
    for phase in results["phases"]:
        assert phase["transfers"] > 0 and phase["failed"] == 0, phase
    assert (out_dir / "report.md").read_text().startswith("# One transfer per call")


@pytest.mark.timeout(150)
def test_grow_adds_a_shard_to_a_tally_up_cluster_and_measures_both(tmp_path: Path) -> None:
    """bench.closed_loop.grow: `tally up --shards 2`, then `tally up --shards 3` on the same data
    directory names shard 2 as owning no slots, `tally slots rebalance` moves slots onto it
    while clients post (none of them failing), and the same cases run on both clusters."""
    out_dir = tmp_path / "report"
    command = [
        sys.executable, "-m", "bench.closed_loop.grow",
        "--accounts", "300", "--duration-s", "0.5", "--warmup-s", "0.2", "--clients", "8",
        "--batch-size", "50", "--batch-clients", "2", "--cross", "0.5", "--no-fresh",
        "--out", str(out_dir),
    ]  # fmt: skip
    finished = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=140, check=False
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    results = json.loads((out_dir / "results.json").read_text())
    before, after = results["before"], results["after"]
    assert (before["shards"], after["shards"]) == (2, 3)
    assert "shards [2] own no slots yet" in after["slotless_line"]
    moves = after["rebalance"]["moves"]
    assert moves and {m["target"] for m in moves} == {2}
    assert sum(m["slots"] for m in moves) == 4096 // 3  # shard 2's share of 4,096
    assert after["map_version"] == 1 + len(moves)
    for result in [*before["results"], *after["results"], after["during_rebalance"]]:
        assert result["transfers_per_s"] > 0 and not result["errors"], result
        assert set(result["codes"]) == {"CREATED"}, result
    assert (out_dir / "report.md").read_text().startswith("# Adding a shard: 2 -> 3 shards")
