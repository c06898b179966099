"""The campaign's report: `report.md` (seed and how to rerun, the schedule as injected, the
operations and their answers, the anomalies by kind, latency during each kind of fault and
outside faults) and `latency.png` (every request's latency over time, faults shaded).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from bench.chaos.bank import Sample, code_name
from bench.chaos.faults import Fault
from bench.chaos.outcome import Outcome

EXAMPLES_MAX = 10


def _fault_of(sample: Sample, schedule: Sequence[Fault]) -> str:
    """The kind of fault under way when the request started, or "none"."""
    for fault in schedule:
        if fault.started_s is None or fault.healed_s is None:
            continue
        if fault.started_s <= sample.started_at <= fault.healed_s:
            return fault.kind
    return "none"


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def latency_table(samples: Sequence[Sample], schedule: Sequence[Fault]) -> list[str]:
    by_fault: dict[str, list[float]] = defaultdict(list)
    gave_up: Counter[str] = Counter()
    for sample in samples:
        fault = _fault_of(sample, schedule)
        by_fault[fault].append(sample.latency_s)
        gave_up[fault] += sample.outcome == "GAVE_UP"
    lines = [
        "| during | requests | p50 ms | p99 ms | max ms | gave up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for fault, values in sorted(by_fault.items()):
        lines.append(
            f"| {fault} | {len(values)} | {statistics.median(values) * 1000:.0f} | "
            f"{_percentile(values, 0.99) * 1000:.0f} | {max(values) * 1000:.0f} | "
            f"{gave_up[fault]} |"
        )
    return lines


def plot_latency(path: Path, samples: Sequence[Sample], schedule: Sequence[Fault]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(12, 5))
    colours = plt.get_cmap("tab10")
    kinds = sorted({f.kind for f in schedule})
    for fault in schedule:
        if fault.started_s is None or fault.healed_s is None:
            continue
        colour = colours(kinds.index(fault.kind) % 10)
        axes.axvspan(fault.started_s, fault.healed_s, color=colour, alpha=0.2)
        axes.text(fault.started_s, 1.02, fault.kind, rotation=60, fontsize=7,
                  transform=axes.get_xaxis_transform())  # fmt: skip
    answered = [s for s in samples if s.outcome != "GAVE_UP"]
    axes.scatter([s.started_at for s in answered], [s.latency_s * 1000 for s in answered],
                 s=3, color="black", label="answered")  # fmt: skip
    given_up = [s for s in samples if s.outcome == "GAVE_UP"]
    if given_up:
        axes.scatter([s.started_at for s in given_up], [s.latency_s * 1000 for s in given_up],
                     s=12, color="red", marker="x", label="gave up")  # fmt: skip
    axes.set_yscale("log")
    axes.set_xlabel("seconds since the load started")
    axes.set_ylabel("request latency, retries included (ms)")
    axes.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def operations_table(outcome: Outcome) -> list[str]:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    cross: Counter[str] = Counter()
    retried: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for item in outcome.history.items.values():
        answer = code_name(item.result.code) if item.result else "UNKNOWN (gave up)"
        counts[item.kind][answer] += 1
        cross[item.kind] += item.cross_shard
        retried[item.kind] += item.attempt_count > 1
        errors.update(item.errors)
    lines = ["| kind | items | cross-shard | retried | answers |", "|---|---:|---:|---:|---|"]
    for kind, answers in sorted(counts.items()):
        total = sum(answers.values())
        text = ", ".join(f"{a} {n}" for a, n in answers.most_common())
        lines.append(f"| {kind} | {total} | {cross[kind]} | {retried[kind]} | {text} |")
    lines += ["", "Errors and retryable answers met on the way (per attempt): "
              + (", ".join(f"{e} {n}" for e, n in errors.most_common()) or "none")]  # fmt: skip
    return lines


def schedule_table(schedule: Sequence[Fault]) -> list[str]:
    lines = [
        "| # | at s | kind | target | detail | for s | injected s | healed s | problems |",
        "|---:|---:|---|---|---|---:|---:|---:|---|",
    ]
    for number, f in enumerate(schedule, 1):
        injected = f"{f.started_s:.1f}" if f.started_s is not None else "not reached"
        healed = f"{f.healed_s:.1f}" if f.healed_s is not None else ""
        lines.append(
            f"| {number} | {f.at_s:.1f} | {f.kind} | {f.target} | {f.detail} | "
            f"{f.duration_s:.1f} | {injected} | {healed} | {'; '.join(f.problems)} |"
        )
    return lines


def anomalies_section(outcome: Outcome) -> list[str]:
    by_kind = outcome.verdict.by_kind()
    if not by_kind:
        return ["None."]
    lines = ["| kind | count |", "|---|---:|"]
    lines += [f"| {kind} | {len(found)} |" for kind, found in sorted(by_kind.items())]
    for kind, found in sorted(by_kind.items()):
        lines += ["", f"**{kind}** (first {min(EXAMPLES_MAX, len(found))}):", ""]
        lines += [f"- `{a.transaction_id}`: {a.detail}" for a in found[:EXAMPLES_MAX]]
    return lines


def write(outcome: Outcome) -> Path:
    config = outcome.config
    out = config.out_dir
    plot_latency(out / "latency.png", outcome.history.samples, outcome.schedule)
    kinds_run = Counter(f.kind for f in outcome.schedule if f.started_s is not None)
    verdict = "clean" if outcome.ok else f"{len(outcome.verdict.anomalies)} anomalies"
    checked = ", ".join(f"{k} {n}" for k, n in sorted(outcome.verdict.checked.items()))
    lines = [
        f"# Fault campaign, seed {config.seed}: {verdict}",
        "",
        f"Rerun: `make chaos CHAOS_ARGS='--seed {config.seed} --duration {config.duration_s:g} "
        f"--shards {config.shard_count} --gateways {config.gateway_count} "
        f"--clients {config.client_count}'`",
        "",
        f"{config.shard_count} shards (a PostgreSQL each, and one for the control database), "
        f"{config.gateway_count} gateways, {config.client_count} clients, "
        f"{config.customer_count} customers; load {outcome.timings_s.get('load_s', 0):.0f} s, "
        f"settling {outcome.timings_s.get('settle_s', 0):.0f} s (every gateway serving "
        f"{outcome.timings_s.get('healthy_s', 0):.0f} s, unanswered requests resent "
        f"{outcome.timings_s.get('resolve_s', 0):.0f} s), "
        f"checking {outcome.timings_s.get('check_s', 0):.0f} s.",
        f"Faults injected by kind: {dict(sorted(kinds_run.items()))}.",
        f"Checked: {checked}.",
        "",
        "## Anomalies",
        "",
        *anomalies_section(outcome),
        "",
        "## Schedule",
        "",
        *schedule_table(outcome.schedule),
        "",
        "## Operations",
        "",
        *operations_table(outcome),
        "",
        "## Latency during faults",
        "",
        "By the fault under way when the request was first sent (retries included).",
        "",
        *latency_table(outcome.history.samples, outcome.schedule),
        "",
        "![latency](latency.png)",
        "",
        "## Restarts by the watchdog",
        "",
        *([f"- {e}" for e in outcome.events] or ["None."]),
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
