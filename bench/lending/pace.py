"""Does the monitor keep up with the ledger's batched write rate? `python -m bench.lending pace`.

The lending scenario (bench/lending/run.py) posts at a borrower's pace, day by day; this posts
as fast as the ledger takes batched transfers (`bench.closed_loop.single_node --workloads
batch-uniform`: 16 clients, 1,000 transfers per call, uniform over --accounts accounts, one
per partition key), through the whole pipeline of bench/lending/online.py on one machine: `tally
up` (one shard), the NATS broker, `tally relay` and `tally monitor` as processes. Every 0.5 s
it reads the postings the journal holds (PostgreSQL) and the postings the monitor applied (its
/metrics), and reports postings/s produced and consumed over the load's whole run, the lag at
its end and how long the monitor took to catch up after it. All of it shares the machine's
cores, so the ledger's rate here is below its rate alone (`bench.closed_loop.stream_cost`).

Writes report.md and results.json to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.common.credentials import ClientCredentials
from bench.common.local_cluster import batched_load
from bench.lending import online

DEFAULT_RULES = Path(__file__).with_name("rules.toml")


async def _sample(
    pipeline: online.Pipeline, connections: list[Any], started: float
) -> dict[str, Any]:
    metrics = await online.monitor_metrics(pipeline)  # first: it never counts ahead
    postings, blocks = await online.journal_heads(connections)
    return {
        "at_s": round(time.monotonic() - started, 2),
        "ledger_postings": postings,
        "ledger_blocks": blocks,
        "monitor_postings": int(metrics.get(online.POSTINGS_APPLIED, 0)),
        "monitor_blocks": int(metrics.get("tally_monitor_stream_sequence", 0)),
    }


async def _sampling(
    pipeline: online.Pipeline, connections: list[Any], started: float, until: asyncio.Event
) -> list[dict[str, Any]]:
    samples = []
    while not until.is_set():
        samples.append(await _sample(pipeline, connections, started))
        try:
            await asyncio.wait_for(until.wait(), timeout=online.SAMPLE_INTERVAL_S)
        except TimeoutError:
            pass
    return samples


async def measure(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tally-monitor-pace-"))
    log_dir = out / "logs"
    await asyncio.to_thread(log_dir.mkdir, parents=True, exist_ok=True)
    async with online.running(workdir, 1, args.rules, log_dir) as pipeline:
        connections = [await asyncpg.connect(dsn) for dsn in pipeline.shard_dsns]
        try:
            started = time.monotonic()
            before = await _sample(pipeline, connections, started)
            done = asyncio.Event()
            sampling = asyncio.create_task(_sampling(pipeline, connections, started, done))
            try:
                load = await batched_load(
                    pipeline.target, ClientCredentials.admin_of(pipeline.tls_root),
                    args.accounts, args.duration_s, out / "load",
                )  # fmt: skip
            finally:
                done.set()
            samples = await sampling
            at_end = await _sample(pipeline, connections, started)
            await online.caught_up(pipeline, connections)
            caught_up = await _sample(pipeline, connections, started)
        finally:
            for connection in connections:
                await connection.close()
    return _summary(args, load, before, at_end, caught_up, samples)


def _summary(
    args: argparse.Namespace,
    load: dict[str, Any],
    before: dict[str, Any],
    at_end: dict[str, Any],
    caught_up: dict[str, Any],
    samples: list[dict[str, Any]],
) -> dict[str, Any]:
    seconds = at_end["at_s"] - before["at_s"]
    produced = at_end["ledger_postings"] - before["ledger_postings"]
    consumed = at_end["monitor_postings"] - before["monitor_postings"]
    lags = [s["ledger_postings"] - s["monitor_postings"] for s in samples]
    return {
        "accounts": args.accounts,
        "duration_s": args.duration_s,
        "load": load,
        "seconds": round(seconds, 2),
        "postings_produced": produced,
        "postings_consumed": consumed,
        "produced_per_s": round(produced / seconds, 1),
        "consumed_per_s": round(consumed / seconds, 1),
        "lag_at_end_postings": at_end["ledger_postings"] - at_end["monitor_postings"],
        "peak_lag_postings": max(lags, default=0),
        "caught_up_after_s": round(caught_up["at_s"] - at_end["at_s"], 2),
        "caught_up": caught_up,
        "samples": samples,
    }


def report(summary: dict[str, Any]) -> str:
    load = summary["load"]
    lines = [
        "# Does the monitor keep up with the ledger's batched write rate?",
        "",
        "`python -m bench.lending pace`: `tally up` (one shard), the NATS broker, `tally relay` "
        "and `tally monitor` as processes on one 2-core machine; batched uniform transfers "
        f"(`single_node --workloads batch-uniform`, {summary['accounts']:,} accounts, "
        f"{summary['duration_s']:g} s window after a 2 s warm-up) as fast as the ledger takes "
        "them. Postings the journal holds (PostgreSQL) and the monitor applied "
        "(`tally_monitor_postings_applied_total`), sampled every 0.5 s over the load's whole run.",
        "",
        "| | value |",
        "|---|---:|",
        f"| the load's rate (its window) | {load['transfers_per_s']:,.0f} transfers/s |",
        f"| the load's run | {summary['seconds']:.1f} s |",
        f"| postings the ledger produced | {summary['postings_produced']:,} "
        f"(**{summary['produced_per_s']:,.0f}/s**) |",
        f"| postings the monitor consumed | {summary['postings_consumed']:,} "
        f"(**{summary['consumed_per_s']:,.0f}/s**) |",
        f"| lag when the load ended | {summary['lag_at_end_postings']:,} postings |",
        f"| peak lag | {summary['peak_lag_postings']:,} postings |",
        f"| caught up after the load ended | {summary['caught_up_after_s']:.1f} s |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lending pace")
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--rules", type=Path, default=DEFAULT_RULES)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="tally-monitor-pace-report-"))
    out.mkdir(parents=True, exist_ok=True)
    summary = asyncio.run(measure(args, out))
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = report(summary)
    (out / "report.md").write_text(text)
    print(text)
    print(f"bench: wrote {out / 'report.md'} and results.json", flush=True)
    return 0
