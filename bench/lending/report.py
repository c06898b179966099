"""The lending report: report.md, results.json and the plots, from the online run.

- coverage.png: the 30-day debt-service coverage of every borrower at the end (GetFlowProfile),
  stacked by planted pattern;
- alerts.png: firing alerts over the scenario's days, cumulative, by rule (TALLY_ALERTS);
- throughput.png: postings the shards' journals held against postings the monitor had applied
  (its tally_monitor_postings_applied), over the run, and the lag between them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.lending.online import POSTINGS_APPLIED, OnlineRun
from bench.lending.scenario import CURRENCY, PATTERNS, Scenario
from bench.lending.score import Score
from core.flows import rules
from core.flows.model import NS_PER_DAY

COVERAGE_WINDOW_DAYS: Final = 30
COVERAGE_CLIP: Final = 6.0


@dataclass(frozen=True)
class Inputs:
    scenario: Scenario
    online: OnlineRun
    score: Score
    offline_score: Score | None
    agreement: dict[str, Any]  # the offline cross-check's comparison (empty without it)
    header: dict[str, Any]  # command, commit, machine, shards, rules


def coverage_of(profile: Any, window_days: int = COVERAGE_WINDOW_DAYS) -> float | None:
    for window in profile.windows:
        if window.window_days == window_days and window.currency == CURRENCY:
            return float(window.coverage) if window.has_coverage else None
    return None


def throughput(run: OnlineRun) -> dict[str, float]:
    """Postings/s the ledger produced and the monitor consumed while posting, and after."""
    posting_s = max(run.posting_s, 1e-9)
    produced = run.ledger_postings_at_end - run.ledger_postings_at_start
    consumed = run.monitor_postings_at_end - run.monitor_postings_at_start
    final = int(run.final_monitor.get(POSTINGS_APPLIED, 0))
    peak_lag = max((s.ledger_postings - _applied(s.monitor) for s in run.samples), default=0)
    return {
        "posting_s": run.posting_s,
        "caught_up_s": run.caught_up_s,
        "catch_up_after_posting_s": run.caught_up_s - run.posting_s,
        "transactions_posted": run.transactions_posted,
        "transactions_per_s": run.transactions_posted / posting_s,
        "ledger_postings_during_posting": produced,
        "ledger_postings_per_s": produced / posting_s,
        "monitor_postings_during_posting": consumed,
        "monitor_postings_per_s_during_posting": consumed / posting_s,
        "monitor_postings_per_s_until_caught_up": (final - run.monitor_postings_at_start)
        / max(run.caught_up_s, 1e-9),
        "lag_postings_at_posting_end": run.ledger_postings_at_end - run.monitor_postings_at_end,
        "lag_messages_at_posting_end": run.lag_messages_at_end,
        "lag_postings_peak": peak_lag,
        "lag_postings_at_end": run.journal_postings - final,
        "lag_messages_at_end": int(run.final_monitor.get("tally_monitor_lag_messages", 0)),
        "journal_postings": run.journal_postings,
        "journal_blocks": run.journal_blocks,
        "monitor_postings_applied": final,
        **_replay_figures(run),
    }


def _replay_figures(run: OnlineRun) -> dict[str, float]:
    replay = run.replay
    if replay is None:
        return {}
    return {
        "replay_s": replay.seconds,
        "replay_postings": replay.postings,
        "replay_blocks": replay.blocks,
        "replay_postings_per_s": replay.postings_per_s,
        "replay_same_alerts": replay.same_alerts,
    }


def _applied(metrics: dict[str, float]) -> int:
    return int(metrics.get(POSTINGS_APPLIED, 0))


def write(out: Path, inputs: Inputs) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    figures = throughput(inputs.online)
    results = _results(inputs, figures)
    written = [out / "results.json"]
    written[0].write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    written += [
        _plot_coverage(out / "coverage.png", inputs),
        _plot_alerts(out / "alerts.png", inputs),
        _plot_throughput(out / "throughput.png", inputs.online),
    ]
    report = out / "report.md"
    report.write_text(_markdown(inputs, figures))
    return [report, *written]


def _results(inputs: Inputs, figures: dict[str, float]) -> dict[str, Any]:
    scenario, run = inputs.scenario, inputs.online
    borrowers = []
    for b in scenario.borrowers:
        profile = run.profiles.get(b.key)
        borrowers.append(
            {
                "key": b.key, "pattern": b.pattern, "product": b.product,
                "installment": b.installment, "monthly_inflow": b.monthly_inflow,
                "expected_rules": sorted(b.expected_rules),
                "coverage_30": None if profile is None else coverage_of(profile),
                "coverage_90": None if profile is None else coverage_of(profile, 90),
                "active_alerts": [] if profile is None else
                sorted(a.rule for a in profile.active_alerts),
            }
        )  # fmt: skip
    portfolio = run.portfolio
    return {
        **inputs.header,
        "scenario": {
            "seed": scenario.config.seed, "start_date": scenario.config.start_date,
            "days": scenario.config.days, "counts": dict(scenario.config.counts),
            "accounts": len(scenario.accounts) + len(scenario.loan_accounts),
            "payments": scenario.payment_count,
        },
        "throughput": figures,
        "calls": run.calls, "retried_items": run.retried_items, "codes": dict(run.codes),
        "scrape_failures": run.scrape_failures,
        "monitor_restarts": run.restarts,
        "alerts": {"messages": len(run.alerts),
                   "firing": sum(1 for a in run.alerts if a.firing)},
        "score": inputs.score.as_json(),
        "offline": None if inputs.offline_score is None else {
            "score": inputs.offline_score.as_json(), **inputs.agreement,
        },
        "portfolio": None if portfolio is None else {
            "borrowers": portfolio.borrower_count,
            "coverage": [[c.upper_bound, c.count] for c in portfolio.coverage],
            "coverage_undefined": portfolio.coverage_undefined_count,
            "active_alerts": {r.rule: r.count for r in portfolio.active_alerts},
            "late_flows": portfolio.late_flow_count,
        },
        "monitor_metrics_final": run.final_monitor,
        "borrowers": borrowers,
    }  # fmt: skip


def _plot_coverage(path: Path, inputs: Inputs) -> Path:
    figure, axes = plt.subplots(figsize=(8, 4.5))
    stacks, labels = [], []
    for pattern in PATTERNS:
        values = []
        for b in inputs.scenario.by_pattern(pattern):
            coverage = coverage_of(inputs.online.profiles[b.key])
            if coverage is not None:
                values.append(min(coverage, COVERAGE_CLIP))
        if values:
            stacks.append(values)
            labels.append(f"{pattern} ({len(values)})")
    bins = [i * 0.25 for i in range(int(COVERAGE_CLIP / 0.25) + 1)]
    axes.hist(stacks, bins=bins, stacked=True, label=labels)
    axes.axvline(1.0, color="black", linestyle="--", linewidth=1, label="coverage 1.0")
    axes.set_xlabel(f"{COVERAGE_WINDOW_DAYS}-day debt-service coverage at the end (clipped at 6)")
    axes.set_ylabel("borrowers")
    axes.set_title("Coverage distribution (GetFlowProfile, online run)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _plot_alerts(path: Path, inputs: Inputs) -> Path:
    figure, axes = plt.subplots(figsize=(8, 4.5))
    first_day = inputs.scenario.first_day
    for rule in rules.RULE_NAMES:
        days = sorted(
            a.at_ns // NS_PER_DAY - first_day
            for a in inputs.online.alerts
            if a.rule == rule and a.firing
        )
        if days:
            axes.step(days, range(1, len(days) + 1), where="post", label=f"{rule} ({len(days)})")
    axes.set_xlim(0, inputs.scenario.config.days)
    axes.set_xlabel(f"scenario day (day 0 = {inputs.scenario.config.start_date})")
    axes.set_ylabel("firing alerts, cumulative")
    axes.set_title("Alerts over time by rule (TALLY_ALERTS)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _plot_throughput(path: Path, run: OnlineRun) -> Path:
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    times = [s.at_s for s in run.samples]
    ledger = [s.ledger_postings for s in run.samples]
    applied = [_applied(s.monitor) for s in run.samples]
    top.plot(times, ledger, label="ledger: postings in the journals")
    top.plot(times, applied, label="monitor: tally_monitor_postings_applied")
    top.axvline(run.posting_s, color="grey", linestyle=":", label="posting ends")
    top.set_ylabel("postings, cumulative")
    top.legend(fontsize=8)
    top.set_title("Does the monitor keep up?")
    bottom.plot(times, [a - b for a, b in zip(ledger, applied, strict=True)], color="tab:red")
    bottom.axvline(run.posting_s, color="grey", linestyle=":")
    bottom.set_ylabel("lag, postings")
    bottom.set_xlabel("seconds since posting started")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _markdown(inputs: Inputs, figures: dict[str, float]) -> str:
    lines = _markdown_header(inputs)
    lines += _markdown_score(inputs)
    lines += _markdown_throughput(inputs, figures)
    lines += _markdown_offline(inputs)
    return "\n".join(lines) + "\n"


def _markdown_header(inputs: Inputs) -> list[str]:
    scenario, header = inputs.scenario, inputs.header
    config = scenario.config
    counts = ", ".join(f"{n} {p}" for p, n in config.counts)
    return [
        "# Lending scenario: in-loan monitoring through the real pipeline",
        "",
        f"Command: `{header.get('command', '')}`; commit {header.get('commit', '')}; "
        f"{header.get('machine', '')}.",
        "",
        f"Scenario: seed {config.seed}, {config.days} days from {config.start_date}, "
        f"{len(scenario.borrowers)} borrowers ({counts}), "
        f"{len(scenario.accounts) + len(scenario.loan_accounts):,} accounts, "
        f"{scenario.payment_count:,} payments (bench/lending/scenario.py); rules "
        f"`{header.get('rules', '')}`.",
        "",
        f"Pipeline: `tally up --shards {header.get('shards', '')}`, a NATS JetStream broker, "
        "`tally relay` and `tally monitor` as processes; every payment posted through the "
        "gateway with its value date, a day at a time; alerts read back from TALLY_ALERTS, "
        "profiles from GetFlowProfile. Every figure below is from that run.",
        "",
    ]


def _markdown_score(inputs: Inputs) -> list[str]:
    score = inputs.score
    verdict = "**yes**" if score.every_pattern_found else "**no**"
    lines = [
        f"## Every planted pattern found: {verdict}",
        "",
        "| pattern | borrowers | should fire | borrowers alerted | rules fired (borrowers) "
        "| found |",
        "|---|---:|---|---:|---|---|",
    ]
    for p in score.patterns:
        fired = ", ".join(f"{rule} ({n})" for rule, n in p.fired) or "none"
        lines.append(
            f"| {p.pattern} | {p.borrower_count} | {', '.join(p.expected_rules) or 'nothing'} "
            f"| {p.alerted_count} | {fired} | {'yes' if p.found else '**no**'} |"
        )
    lines += [
        "",
        "Per rule, against the ground truth (a borrower counts as alerted when the rule fired "
        "for it at least once):",
        "",
        "| rule | planted | alerted | true positives | precision | recall | false positives "
        "| missed | firing messages |",
        "|---|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    firings = {rule: 0 for rule in rules.RULE_NAMES}
    for alert in inputs.online.alerts:
        firings[alert.rule] = firings.get(alert.rule, 0) + alert.firing
    for r in score.rules:
        lines.append(
            f"| {r.rule} | {len(r.planted)} | {len(r.alerted)} | {r.true_positives} "
            f"| {_ratio(r.precision)} | {_ratio(r.recall)} "
            f"| {', '.join(r.false_positives) or '–'} | {', '.join(r.missed) or '–'} "
            f"| {firings[r.rule]} |"
        )
    lines += [
        "",
        "Firing messages above the borrowers alerted: a rule that cleared and fired again for "
        "the same borrower (a share hovering near its threshold).",
        "",
        "![coverage](coverage.png)",
        "",
        "![alerts](alerts.png)",
        "",
    ]
    return lines


def _markdown_throughput(inputs: Inputs, f: dict[str, float]) -> list[str]:
    run = inputs.online
    return [
        "## Does the monitor keep up?",
        "",
        "Ledger: postings the shards' journals hold (each shard's last block's posting "
        "sequence, read from PostgreSQL every 0.5 s; a cross-shard payment is a piece and a "
        "clearing leg on each shard). Monitor: `tally_monitor_postings_applied` (the postings "
        "of the blocks it applied), scraped at the same times.",
        "",
        "| | value |",
        "|---|---:|",
        f"| posting phase | {f['posting_s']:.1f} s, {run.transactions_posted:,} transactions "
        f"({f['transactions_per_s']:,.0f}/s) in {run.calls:,} calls |",
        f"| postings the ledger produced while posting | {f['ledger_postings_during_posting']:,} "
        f"(**{f['ledger_postings_per_s']:,.0f}/s**) |",
        f"| postings the monitor consumed while posting | "
        f"{f['monitor_postings_during_posting']:,} "
        f"(**{f['monitor_postings_per_s_during_posting']:,.0f}/s**) |",
        f"| monitor until caught up | {f['monitor_postings_per_s_until_caught_up']:,.0f} "
        f"postings/s over {f['caught_up_s']:.1f} s |",
        f"| lag when posting ended | {f['lag_postings_at_posting_end']:,} postings behind the "
        "journals (end to end: the relay's part included); "
        f"{f['lag_messages_at_posting_end']:,} messages behind the broker "
        "(`tally_monitor_lag_messages`) |",
        f"| peak lag | {f['lag_postings_peak']:,} postings behind the journals |",
        f"| caught up | {f['catch_up_after_posting_s']:.1f} s after posting ended |",
        f"| lag at the end | {f['lag_postings_at_end']:,} postings, "
        f"{f['lag_messages_at_end']:,} messages |",
        f"| journal | {f['journal_blocks']:,} blocks, {f['journal_postings']:,} postings; "
        f"monitor applied {f['monitor_postings_applied']:,} |",
        f"| retried items | {run.retried_items:,} |",
        f"| failed scrapes of the monitor's /metrics | {len(run.scrape_failures)} |",
        f"| monitor restarts (reloaded its checkpoint after a failure; its log says which) | "
        f"{run.restarts} |",
        *_replay_rows(f),
        "",
        "![throughput](throughput.png)",
        "",
    ]


def _replay_rows(f: dict[str, float]) -> list[str]:
    if "replay_s" not in f:
        return []
    same = "yes" if f["replay_same_alerts"] else "**no**"
    return [
        f"| a fresh monitor replaying the whole stream, ledger idle (its own pace) | "
        f"{f['replay_postings']:,} postings in {f['replay_s']:.1f} s "
        f"(**{f['replay_postings_per_s']:,.0f}/s**); its alert stream the same, message for "
        f"message: {same} |",
    ]


def _markdown_offline(inputs: Inputs) -> list[str]:
    if inputs.offline_score is None:
        return []
    agreement = inputs.agreement
    same = agreement.get("same_fired", False)
    offline_found = inputs.offline_score.every_pattern_found
    return [
        "## Offline cross-check",
        "",
        "The same scenario fed straight into `core.flows.FlowEngine` (bench/lending/offline.py: "
        "no ledger, no stream; days closed as the monitor closes them). "
        f"Offline every pattern found: {'yes' if offline_found else 'no'}"
        f"; the same (rule, borrower) pairs fired online and offline: {'yes' if same else 'no'}"
        f"; alert messages online {agreement.get('online_alerts', 0)}, offline "
        f"{agreement.get('offline_alerts', 0)}, the same message for message: "
        f"{'yes' if agreement.get('same_alert_stream') else 'no'}; borrowers whose final "
        "profile (every window and baseline) differs: "
        f"{', '.join(agreement.get('profile_differences', [])) or 'none'}.",
        "",
        "## Notes",
        "",
        "- Loans open on day 30, after a month of deposit history. Opened on day 0, the first "
        "evaluation reads shares of a day or two of payments: offline, "
        "largest_counterparty_share_above then fired for 31 of the default scenario's 80 "
        "borrowers on day 0 (the rules have no minimum history or payment count).",
        "- A day is evaluated when a flow of a later day arrives (shards/monitor/books.py), so "
        "the scenario's last day is never evaluated.",
        "- The journals' postings count each cross-shard payment's pieces and clearing legs "
        "on every shard it touches, as the monitor's counter does.",
        "",
    ]
