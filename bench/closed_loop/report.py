"""Turn measured runs into results.json, report.md and the table printed at the end.

Transfers/s counts only transfers answered CREATED inside the measured window. CPU is shown as
microseconds of CPU per created transfer, per role, and as cores busy (CPU seconds / window).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from bench.closed_loop.storage import Breakdown
from bench.closed_loop.storage import markdown as storage_markdown
from bench.common.measure import Recorder, Window, latency_summary_ms

EXPECTED_CODES: Final = frozenset({"CREATED"})
# Issue 13: Tally's batched rate as a share of PostgreSQL's own batched ceiling (the same rows,
# same server, same run), and the hot account at least as fast as uniform.
CEILING_SHARE_MIN: Final = 0.7
CEILING_WORKLOADS: Final = ("batch-uniform", "batch-hot")
ROLES: Final = ("node", "postgres", "bench")


@dataclass(frozen=True, slots=True)
class RunResult:
    system: str
    workload: str
    shape: str
    distribution: str
    clients: int
    transfers_per_call: int
    window_s: float
    calls: int
    transfers_created: int
    transfers_per_s: float
    latency_ms: dict[str, float]
    results: dict[str, int]
    unexpected_results: int
    call_errors: dict[str, int]
    retries: int
    cpu_s: dict[str, float]
    cpu_us_per_transfer: dict[str, float]
    cores_busy: dict[str, float]
    # Cores the machine was using just before the window (our processes idle): other work.
    busy_cores_before: float
    # WAL bytes per transfer; Tally also commits/s and transfers per commit (journal blocks).
    storage: dict[str, float | None]


def build_result(
    system: str,
    workload: Any,
    clients: int,
    transfers_per_call: int,
    window: Window,
    recorder: Recorder,
    cpu_s: dict[str, float],
    busy_cores_before: float,
    storage: dict[str, float | None],
) -> RunResult:
    created = round(recorder.created_in_window)
    unexpected = sum(n for code, n in recorder.codes.items() if code not in EXPECTED_CODES)
    return RunResult(
        system=system,
        workload=workload.name,
        shape=workload.shape.value,
        distribution=workload.distribution.value,
        clients=clients,
        transfers_per_call=transfers_per_call,
        window_s=round(window.seconds, 3),
        calls=len(recorder.latencies_ns),
        transfers_created=created,
        transfers_per_s=round(recorder.created_in_window / window.seconds, 1),
        latency_ms=latency_summary_ms(recorder.latencies_ns),
        results=dict(sorted(recorder.codes.items())),
        unexpected_results=unexpected,
        call_errors=dict(recorder.errors),
        retries=recorder.retries,
        cpu_s=cpu_s,
        cpu_us_per_transfer={
            role: round(seconds * 1e6 / created, 1) if created else 0.0
            for role, seconds in cpu_s.items()
        },
        cores_busy={role: round(seconds / window.seconds, 2) for role, seconds in cpu_s.items()},
        busy_cores_before=busy_cores_before,
        storage=storage,
    )


# ---- targets ----


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    measured: float | None
    threshold: float
    unit: str
    at_most: bool = False  # the threshold is a ceiling, not a floor

    @property
    def verdict(self) -> str:
        if self.measured is None:
            return "n/a"
        met = self.measured <= self.threshold if self.at_most else self.measured >= self.threshold
        return "PASS" if met else "MISS"

    @property
    def bound(self) -> str:
        return ("<= " if self.at_most else ">= ") + f"{self.threshold:,.2f}{self.unit}"


def _rate(runs: Sequence[RunResult], system: str, workload: str) -> float | None:
    for run in runs:
        if run.system == system and run.workload == workload:
            return run.transfers_per_s
    return None


def _ratio(top: float | None, bottom: float | None) -> float | None:
    if top is None or bottom is None or bottom == 0:
        return None
    return round(top / bottom, 2)


def targets(runs: Sequence[RunResult]) -> list[Target]:
    """The issue's targets on 2 cores, each against what this run measured."""

    def rate(system: str, workload: str) -> float | None:
        return _rate(runs, system, workload)

    return [
        Target("(a) Tally single-uniform transfers/s", rate("tally", "single-uniform"), 2500, "/s"),
        Target("(a) Tally single-hot transfers/s", rate("tally", "single-hot"), 2500, "/s"),
        Target("(b) Tally batch-uniform transfers/s", rate("tally", "batch-uniform"), 25000, "/s"),
        Target(
            "(b) Tally hot / uniform",
            _ratio(rate("tally", "batch-hot"), rate("tally", "batch-uniform")),
            0.9,
            "x",
        ),
        Target(
            "(a) hot: Tally / row-locking",
            _ratio(rate("tally", "single-hot"), rate("rowlock", "single-hot")),
            3.0,
            "x",
        ),
        Target(
            "(b) hot: Tally / row-locking",
            _ratio(rate("tally", "batch-hot"), rate("rowlock", "batch-hot")),
            20.0,
            "x",
        ),
        Target(
            "(b) uniform: Tally / PostgreSQL's batched ceiling",
            _ratio(rate("tally", "batch-uniform"), rate("ceiling", "batch-uniform")),
            CEILING_SHARE_MIN,
            "x",
        ),
        Target(
            "(b) hot: Tally / PostgreSQL's batched ceiling",
            _ratio(rate("tally", "batch-hot"), rate("ceiling", "batch-hot")),
            CEILING_SHARE_MIN,
            "x",
        ),
        Target(
            "(b) Tally hot / uniform, issue 13 (hot at least as fast)",
            _ratio(rate("tally", "batch-hot"), rate("tally", "batch-uniform")),
            1.0,
            "x",
        ),
        Target(
            "unexpected results + failed calls, all runs",
            sum(r.unexpected_results + sum(r.call_errors.values()) for r in runs) if runs else None,
            0,
            "",
            at_most=True,
        ),
    ]


def informative_ratios(runs: Sequence[RunResult]) -> dict[str, float | None]:
    """Ratios without a target that still tell the story."""

    def rate(system: str, workload: str) -> float | None:
        return _rate(runs, system, workload)

    return {
        "tally single hot/uniform": _ratio(
            rate("tally", "single-hot"), rate("tally", "single-uniform")
        ),
        "rowlock single hot/uniform": _ratio(
            rate("rowlock", "single-hot"), rate("rowlock", "single-uniform")
        ),
        "rowlock batch hot/uniform": _ratio(
            rate("rowlock", "batch-hot"), rate("rowlock", "batch-uniform")
        ),
        "uniform single: tally/rowlock": _ratio(
            rate("tally", "single-uniform"), rate("rowlock", "single-uniform")
        ),
        "uniform batch: tally/rowlock": _ratio(
            rate("tally", "batch-uniform"), rate("rowlock", "batch-uniform")
        ),
    }


def ceiling_comparison(runs: Sequence[RunResult]) -> dict[str, Any]:
    """Per batch workload: Tally's transfers/s, the ceiling's, and Tally's share of it; and
    for each whether hot is at least as fast as uniform."""
    rows = []
    for workload in CEILING_WORKLOADS:
        tally, ceiling = _rate(runs, "tally", workload), _rate(runs, "ceiling", workload)
        rows.append(
            {
                "workload": workload,
                "tally_transfers_per_s": tally,
                "ceiling_transfers_per_s": ceiling,
                "tally_share_of_ceiling": _ratio(tally, ceiling),
            }
        )
    hot_at_least_uniform: dict[str, bool | None] = {}
    for system in ("tally", "ceiling"):
        hot, uniform = _rate(runs, system, "batch-hot"), _rate(runs, system, "batch-uniform")
        hot_at_least_uniform[system] = None if hot is None or uniform is None else hot >= uniform
    return {"workloads": rows, "hot_at_least_uniform": hot_at_least_uniform}


def _ceiling_rows(runs: Sequence[RunResult]) -> list[list[str]]:
    rows = []
    for row in ceiling_comparison(runs)["workloads"]:
        share = row["tally_share_of_ceiling"]
        verdict = "n/a" if share is None else ("PASS" if share >= CEILING_SHARE_MIN else "MISS")
        rows.append(
            [
                row["workload"],
                _number(row["tally_transfers_per_s"]),
                _number(row["ceiling_transfers_per_s"]),
                "-" if share is None else f"{share:.2f}",
                verdict,
            ]
        )
    return rows


_CEILING_HEADER: Final = (
    "workload", "Tally transfers/s", "ceiling transfers/s", "Tally / ceiling",
    f"share >= {CEILING_SHARE_MIN:g}",
)  # fmt: skip


def _yes_no(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


def ceiling_text(runs: Sequence[RunResult]) -> str:
    """The comparison as printed at the end of a run."""
    lines = ["PostgreSQL's batched ceiling (same rows, same server, same run):"]
    for row in _ceiling_rows(runs):
        lines.append(
            f"  {row[0]}: Tally {row[1]}/s, ceiling {row[2]}/s, Tally / ceiling {row[3]} "
            f"({row[4]} against {CEILING_SHARE_MIN:g})"
        )
    hot = ceiling_comparison(runs)["hot_at_least_uniform"]
    lines.append(
        f"  hot >= uniform: Tally {_yes_no(hot['tally'])}, ceiling {_yes_no(hot['ceiling'])}"
    )
    return "\n".join(lines)


# ---- rendering ----


def _cores(run: RunResult) -> str:
    busy = run.cores_busy
    parts = [busy.get(role, 0.0) for role in (*ROLES, "other")]
    return "/".join(f"{part:.2f}" for part in parts)


_COLUMNS: Final[tuple[tuple[str, Callable[[RunResult], str]], ...]] = (
    ("system", lambda r: r.system),
    ("workload", lambda r: r.workload),
    ("clients", lambda r: str(r.clients)),
    ("transfers/s", lambda r: f"{r.transfers_per_s:,.0f}"),
    ("p50 ms", lambda r: f"{r.latency_ms['p50']:.2f}"),
    ("p95 ms", lambda r: f"{r.latency_ms['p95']:.2f}"),
    ("p99 ms", lambda r: f"{r.latency_ms['p99']:.2f}"),
    ("max ms", lambda r: f"{r.latency_ms['max']:.1f}"),
    ("rejected", lambda r: str(r.unexpected_results)),
    ("errors", lambda r: str(sum(r.call_errors.values()))),
    ("CPU µs/t node", lambda r: f"{r.cpu_us_per_transfer.get('node', 0.0):.0f}"),
    ("pg", lambda r: f"{r.cpu_us_per_transfer.get('postgres', 0.0):.0f}"),
    ("bench", lambda r: f"{r.cpu_us_per_transfer.get('bench', 0.0):.0f}"),
    ("cores node/pg/bench/other", _cores),
)


def table_rows(runs: Sequence[RunResult]) -> list[list[str]]:
    return [[render(run) for _, render in _COLUMNS] for run in runs]


def text_table(runs: Sequence[RunResult]) -> str:
    header = [name for name, _ in _COLUMNS]
    rows = [header, *table_rows(runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def targets_text(runs: Sequence[RunResult]) -> str:
    lines = []
    for target in targets(runs):
        measured = "n/a" if target.measured is None else f"{target.measured:,.2f}{target.unit}"
        lines.append(f"{target.verdict:4}  {target.name}: {measured} (target {target.bound})")
    return "\n".join(lines)


@dataclass(slots=True)
class Report:
    started_at: str
    command: list[str]
    options: dict[str, Any]
    host: dict[str, Any]
    postgres: dict[str, str]
    node: dict[str, Any]
    seeding: dict[str, Any]
    runs: list[RunResult] = field(default_factory=list)
    profiles: dict[str, str] = field(default_factory=dict)
    # Tally's shard database after the runs (bench/closed_loop/storage.py)
    storage: Breakdown | None = None

    @property
    def clean(self) -> bool:
        """No unexpected result code and no failed call in any run."""
        return all(not r.unexpected_results and not r.call_errors for r in self.runs)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["targets"] = [{**asdict(t), "verdict": t.verdict} for t in targets(self.runs)]
        data["ratios"] = informative_ratios(self.runs)
        data["ceiling"] = ceiling_comparison(self.runs)
        data["clean"] = self.clean
        return data


def write(report: Report, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown(report))


def markdown(report: Report) -> str:
    runs = report.runs
    target_rows = [
        [t.name, "n/a" if t.measured is None else f"{t.measured:,.2f}{t.unit}", t.bound,
         t.verdict]
        for t in targets(runs)
    ]  # fmt: skip
    sections = [
        f"# Tally first benchmark — {report.started_at}",
        "Command: `" + " ".join(report.command) + "`",
        "## Results\n\n" + markdown_table([n for n, _ in _COLUMNS], table_rows(runs)),
        _COLUMN_NOTES,
        "## Targets (2 cores)\n\n"
        + markdown_table(["target", "measured", "target", "verdict"], target_rows),
        "Other ratios: " + ", ".join(f"{k} = {v}" for k, v in informative_ratios(runs).items()),
        _ceiling_section(runs),
        "## Per run: result codes, errors, storage\n\n" + _codes_table(runs),
        _DETAIL_NOTES,
        "## Machine\n\n" + _key_values(report.host),
        "## PostgreSQL\n\n" + _key_values(report.postgres),
        "## Node\n\n" + _key_values(report.node),
        "## Seeding\n\n" + _key_values(report.seeding),
        "## Options\n\n" + _key_values(report.options),
    ]
    if report.storage is not None:
        sections.append(
            "## Storage of Tally's shard database after the runs\n\n"
            + storage_markdown(report.storage)
        )
    for name, text in report.profiles.items():
        sections.append(f"## Profile: {name}\n\n```\n{text}\n```")
    return "\n\n".join(sections) + "\n"


def _ceiling_section(runs: Sequence[RunResult]) -> str:
    hot = ceiling_comparison(runs)["hot_at_least_uniform"]
    return (
        "## PostgreSQL's batched ceiling (same rows, same server, same run)\n\n"
        + markdown_table(_CEILING_HEADER, _ceiling_rows(runs))
        + f"\n\nHot at least as fast as uniform: Tally {_yes_no(hot['tally'])}, ceiling "
        f"{_yes_no(hot['ceiling'])}.\n\n"
        "*ceiling* (bench/common/ceiling.py): the batch workloads' very transfers written by "
        "the bench process straight into PostgreSQL, on its own database of the same server, in "
        "tables with the shard schema's columns and indexes: one statement per batch (the "
        "transactions and their postings inserted set-based, one update per touched account, "
        "rows locked in id order), one commit, synchronous_commit on; as many connections as "
        "batch clients."
    )


_COLUMN_NOTES: Final = """\
*transfers/s*: transfers answered CREATED inside the measured window, divided by the window (a
call that straddles an edge counts with the share of its duration inside the window).
*latency*: per call (one transfer for `single`, one batch for `batch`), client side.
*rejected*: item results other than CREATED, *errors*: failed calls (transport or database),
both over every call of the run including warm-up.
*CPU µs/t*: CPU microseconds per created transfer, by role: *node* is the Tally node process,
*pg* every PostgreSQL process, *bench* this process (the load generator, and for `rowlock` also
the row-locking ledger itself, which has no server of its own).
*cores*: CPU seconds / window for node / pg / bench / *other* (every other process on the
machine; above ~0.05 the window shared the cores with unrelated work and reads low)."""


_DETAIL_NOTES: Final = """\
*WAL B/transfer*: PostgreSQL WAL bytes written in the window per created transfer.
*commits/s*, *transfers/commit*: Tally's journal blocks (one block = one writer batch = one
commit); the row-locking ledger commits once per transfer by construction.
*busy cores before*: what the machine used just before the window while the benchmark was idle
(other jobs on a shared machine)."""


def _codes_table(runs: Sequence[RunResult]) -> str:
    rows = [
        [
            r.system,
            r.workload,
            ", ".join(f"{code} {n:,}" for code, n in r.results.items()) or "-",
            ", ".join(f"{error} {n:,}" for error, n in r.call_errors.items()) or "-",
            str(r.retries),
            f"{r.calls:,}",
            _number(r.storage.get("wal_bytes_per_transfer")),
            _number(r.storage.get("commits_per_s")),
            _number(r.storage.get("transfers_per_commit")),
            f"{r.busy_cores_before:.2f}",
        ]
        for r in runs
    ]
    header = [
        "system", "workload", "results", "call errors", "retries", "calls in window",
        "WAL B/transfer", "commits/s", "transfers/commit", "busy cores before",
    ]  # fmt: skip
    return markdown_table(header, rows)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _key_values(values: dict[str, Any]) -> str:
    return "\n".join(f"- {key}: `{value}`" for key, value in values.items())
