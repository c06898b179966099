"""`python -m bench.lending`: the lending scenario through the real pipeline, and its report.

    python -m bench.lending [--out DIR] [--seed 7] [--days 270] [--shards 2]
                            [--borrowers healthy=40,seasonal=10,...] [--rules PATH]
                            [--no-offline] [--keep-data]

Exit status 0 when every planted pattern was found and no negative (healthy, seasonal)
borrower alerted, 1 otherwise; 2 for usage errors. Slow figures are results, not failures.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

from bench.common import machine
from bench.lending import offline, online, report
from bench.lending.online import OnlineRun
from bench.lending.scenario import PATTERNS, Scenario, ScenarioConfig, build
from bench.lending.score import Score, fired_by_rule, score
from core.flows import rules
from core.flows.engine import FlowEngine
from shards.monitor import convert
from shards.monitor.books import end_of_day_ns

RULES_PATH: Final = Path(__file__).with_name("rules.toml")
SHARDS_DEFAULT: Final = 2
_DEFAULT: Final = ScenarioConfig()


def _counts(text: str) -> tuple[tuple[str, int], ...]:
    counts = []
    for part in text.split(","):
        name, _, number = part.partition("=")
        if name.strip() not in PATTERNS or not number.strip().isdigit():
            raise argparse.ArgumentTypeError(f"{part!r}: PATTERN=COUNT, PATTERN one of {PATTERNS}")
        counts.append((name.strip(), int(number)))
    return tuple(counts)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.lending", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=None, help="report folder (default: a temp dir)")
    p.add_argument("--seed", type=int, default=_DEFAULT.seed)
    p.add_argument("--days", type=int, default=_DEFAULT.days)
    p.add_argument("--start-date", default=_DEFAULT.start_date)
    p.add_argument("--borrowers", type=_counts, default=_DEFAULT.counts,
                   help="PATTERN=COUNT,... (healthy, seasonal, failing, concentrated, "
                        "round_trip, ring)")  # fmt: skip
    p.add_argument("--shards", type=int, default=SHARDS_DEFAULT)
    p.add_argument("--rules", type=Path, default=RULES_PATH)
    p.add_argument("--no-offline", action="store_true", help="skip the offline cross-check")
    p.add_argument("--keep-data", action="store_true", help="keep the cluster's data directory")
    return p


def agreement(
    scenario: Scenario, run: OnlineRun, offline_run: offline.OfflineRun
) -> dict[str, Any]:
    """Whether the online profiles and alerts are what the engine makes of the scenario."""
    engine: FlowEngine = offline_run.engine
    differences = []
    for borrower in scenario.borrowers:
        online_profile = run.profiles[borrower.key]
        expected = engine.profile(borrower.key, end_of_day_ns(engine.day or 0))
        assert expected is not None  # every borrower has a loan account
        message = convert.profile_to_proto(expected, {}, 0)
        if (list(message.windows), list(message.baselines)) != (
            list(online_profile.windows),
            list(online_profile.baselines),
        ):
            differences.append(borrower.key)
    online_fired = fired_by_rule((a.rule, a.partition_key, a.firing) for a in run.alerts)
    offline_fired = offline.fired(offline_run.alerts)
    return {
        "same_fired": online_fired == offline_fired,
        "online_alerts": len(run.alerts),
        "offline_alerts": len(offline_run.alerts),
        "same_alert_stream": [convert.alert_to_proto(a) for a in offline_run.alerts] == run.alerts,
        "profile_differences": differences,
    }


async def run_all(args: argparse.Namespace, out: Path) -> tuple[Score, list[Path]]:
    config = ScenarioConfig(
        seed=args.seed, start_date=args.start_date, days=args.days, counts=args.borrowers
    )
    scenario = build(config)
    rules_text = args.rules.read_text()
    rule_set = rules.parse_rules(rules_text)
    (out / "rules.toml").write_text(rules_text)
    workdir = Path(tempfile.mkdtemp(prefix="tally-lending-"))
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"lending: {len(scenario.borrowers)} borrowers, {scenario.payment_count:,} payments "
          f"over {config.days} days; report in {out}", flush=True)  # fmt: skip
    try:
        async with online.running(workdir, args.shards, args.rules.absolute(), log_dir) as line:
            run = await online.run(line, scenario)
    finally:
        if (workdir / "up.log").exists():
            shutil.copy2(workdir / "up.log", log_dir / "up.log")
        if not args.keep_data:
            shutil.rmtree(workdir, ignore_errors=True)
    online_score = score(
        scenario, fired_by_rule((a.rule, a.partition_key, a.firing) for a in run.alerts)
    )
    offline_score, compared = None, {}
    if not args.no_offline:
        offline_run = offline.run(scenario, rule_set)
        offline_score = score(scenario, offline.fired(offline_run.alerts))
        compared = agreement(scenario, run, offline_run)
    header = {
        "command": shlex.join(["python", "-m", "bench.lending", *sys.argv[1:]]),
        "commit": machine.source_version(),
        "machine": _machine_line(),
        "shards": args.shards,
        "rules": str(args.rules),
    }
    inputs = report.Inputs(scenario, run, online_score, offline_score, compared, header)
    return online_score, report.write(out, inputs)


def _machine_line() -> str:
    info = machine.host_info()
    cores = f"{info['nproc']} cores ({info['cpu_model']})"
    return f"{cores}, {info['memory_gib']} GiB, Python {info['python']}"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="tally-lending-report-"))
    out.mkdir(parents=True, exist_ok=True)
    outcome, written = asyncio.run(run_all(args, out))
    for path in written:
        print(f"lending: wrote {path}", flush=True)
    print(f"lending: every planted pattern found: {'yes' if outcome.every_pattern_found else 'no'}")
    print(f"lending: report in {out}", flush=True)
    return 0 if outcome.every_pattern_found else 1
