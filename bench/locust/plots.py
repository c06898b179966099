"""PNG plots of a Locust benchmark run: throughput, latency percentiles, what the node metrics
showed, the row-locking comparison and the cost model (matplotlib, no display needed)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import itertools

import matplotlib.pyplot as plt

from bench.locust import cost, metrics

DPI = 110


def read_history(path: Path) -> list[dict[str, str]]:
    """The Aggregated rows of Locust's --csv-full-history file, in time order."""
    if not path.exists():
        return []
    with path.open(newline="") as file:
        return [row for row in csv.DictReader(file) if row["Name"] == "Aggregated"]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def throughput_and_latency(history: list[dict[str, str]], title: str, path: Path) -> bool:
    """Calls/s and failures/s (from the running totals, per second), users, and the p50, p95
    and p99 latency Locust reports over its rolling window."""
    if len(history) < 2:
        return False
    start = float(history[0]["Timestamp"])
    times, calls, failures = [], [], []
    for previous, row in itertools.pairwise(history):
        dt = float(row["Timestamp"]) - float(previous["Timestamp"])
        if dt <= 0:
            continue
        times.append(float(row["Timestamp"]) - start)
        calls.append((int(row["Total Request Count"]) - int(previous["Total Request Count"])) / dt)
        failures.append(
            (int(row["Total Failure Count"]) - int(previous["Total Failure Count"])) / dt
        )
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    top.plot(times, calls, label="calls/s")
    top.plot(times, failures, label="failures/s", color="tab:red")
    top.set_ylabel("per second")
    users = top.twinx()
    users.plot(
        [float(r["Timestamp"]) - start for r in history],
        [int(r["User Count"]) for r in history],
        color="tab:gray",
        linestyle=":",
        label="users",
    )
    users.set_ylabel("users")
    top.legend(loc="upper left")
    top.set_title(f"{title}: throughput")
    for column, label in (("50%", "p50"), ("95%", "p95"), ("99%", "p99")):
        points = [
            (float(r["Timestamp"]) - start, _number(r[column]))
            for r in history
            if _number(r[column])
        ]
        if points:
            bottom.plot([t for t, _ in points], [v for _, v in points], label=label)
    bottom.set_ylabel("latency per call, ms")
    bottom.set_xlabel("seconds")
    bottom.set_title("latency percentiles (Locust's rolling window)")
    bottom.legend(loc="upper left")
    _save(figure, path)
    return True


def node_metrics(rows: list[metrics.Row], title: str, path: Path) -> bool:
    """Commit latency, batch size, commits/s and queue depth per node over the run."""
    commit_ms = metrics.histogram_mean(rows, "tally_commit_duration_seconds")
    if not commit_ms:
        return False
    batch = metrics.histogram_mean(rows, "tally_batch_items")
    commits = {
        e: metrics.rate(p) for e, p in metrics.series(rows, "tally_batches_committed_total").items()
    }
    depth = metrics.series(rows, "tally_queue_depth")
    pieces = metrics.series(rows, "tally_prepared_pieces")
    figure, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    panels = [
        (axes[0][0], {e: [(t, v * 1000) for t, v in p] for e, p in commit_ms.items()},
         "mean commit latency, ms"),
        (axes[0][1], batch, "mean items per batch"),
        (axes[1][0], commits, "commits (journal blocks) per second"),
        (axes[1][1], depth, "writer queue depth (and held cross-shard pieces, dashed)"),
    ]  # fmt: skip
    for axis, data, label in panels:
        for endpoint, points in sorted(data.items()):
            axis.plot([t for t, _ in points], [v for _, v in points], label=endpoint)
        axis.set_title(label, fontsize=10)
        axis.legend(fontsize=8)
    for endpoint, points in sorted(pieces.items()):
        if any(v for _, v in points):
            axes[1][1].plot(
                [t for t, _ in points], [v for _, v in points], "--", label=f"{endpoint} pieces"
            )
    for axis in axes[1]:
        axis.set_xlabel("seconds (scrapes about 1/s)")
    figure.suptitle(f"{title}: node metrics (Prometheus)")
    _save(figure, path)
    return True


def comparison(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    """Tally (Locust) against the row-locking ledger (closed loop), transfers per second."""
    if not rows:
        return False
    figure, axis = plt.subplots(figsize=(7, 4))
    names = [r["scenario"] for r in rows]
    positions = range(len(names))
    axis.bar([p - 0.2 for p in positions], [r["tally_per_s"] for r in rows], 0.4, label="Tally")
    axis.bar(
        [p + 0.2 for p in positions], [r["rowlock_per_s"] for r in rows], 0.4, label="row-locking"
    )
    axis.set_xticks(list(positions), names)
    axis.set_ylabel("transfers per second")
    axis.set_title("Tally against a conventional row-locking ledger (same PostgreSQL)")
    axis.legend()
    _save(figure, path)
    return True


def cost_model(e: cost.Estimate, path: Path) -> None:
    """The cost per account-year split into compute, hot and cold storage (one copy and with
    the standbys), and how the headline moves with the activity profile (postings per account
    per month)."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    splits = [("one copy", e.one_copy)]
    if e.deployment.standby_copies:
        splits.append((f"with {e.deployment.standby_copies} standby", e.with_standby))
    bottom = [0.0] * len(splits)
    for part, colour in (
        ("compute_usd", "tab:blue"),
        ("hot_storage_usd", "tab:orange"),
        ("cold_storage_usd", "tab:green"),
    ):
        heights = [getattr(s, part) * 1e6 for _, s in splits]
        label = part.removesuffix("_usd").replace("_", " ")
        left.bar([n for n, _ in splits], heights, 0.5, bottom=bottom, color=colour, label=label)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    left.set_ylabel("USD per million accounts per year")
    left.legend(fontsize=8)
    left.set_title(
        f"${e.cost_per_account_year_usd * 1e6:,.0f} per million accounts per year (headline)\n"
        f"({e.accounts_per_node:,.0f} accounts per node, limited by {e.limited_by}; "
        f"{e.deployment.hot_days:g} days hot)",
        fontsize=10,
    )
    grid = [1, 3, 10, 30, 60, 100, 300, 1000]
    rows = cost.sensitivity(
        e.prices, e.activity, e.measured, [float(g) for g in grid], e.deployment
    )
    right.loglog([r[0] for r in rows], [r[1] * 1e6 for r in rows], marker="o", label="compute")
    right.loglog([r[0] for r in rows], [r[2] * 1e6 for r in rows], marker="o", label="storage")
    right.loglog(
        [r[0] for r in rows], [(r[1] + r[2]) * 1e6 for r in rows], marker="o", label="total"
    )
    right.axvline(e.activity.postings_per_account_month, color="tab:gray", linestyle=":")
    right.set_xlabel("postings per account per month")
    right.set_ylabel("USD per million accounts per year")
    right.set_title("the headline against activity (dotted: the profile used)", fontsize=10)
    right.legend()
    figure.suptitle(e.prices.instance_name, fontsize=9)
    _save(figure, path)


def _save(figure: Any, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
