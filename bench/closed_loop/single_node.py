"""Tally's first benchmark, one shard node against a row-locking ledger, closed loop:
`python -m bench.closed_loop.single_node`.

Starts an embedded PostgreSQL and one shard node (a separate process), seeds accounts, then
measures transfers/s and latency for

  (a) single: one transfer per call from --clients concurrent clients,
  (b) batch:  --batch-size transfers per call from --batch-clients concurrent clients,

each with every transfer between two uniformly drawn customer accounts (uniform) and with every
transfer debiting one hot account (hot); and, on the same PostgreSQL in the same run, the same
workloads against a conventional row-locking ledger (bench/common/rowlock.py), and the batch
workloads written straight into PostgreSQL, its own batched ceiling for the same rows
(bench/common/ceiling.py). Writes results.json and report.md to --out (with the storage breakdown
of Tally's shard database after the runs, bench/closed_loop/storage.py) and prints the table.
Exit status: 0 when every transfer was CREATED and no call failed (targets missed do not fail the
run: they are the measurement), 1 otherwise.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Final

import asyncpg
import uvloop

from bench.closed_loop import profiling, storage
from bench.closed_loop.environment import Environment, local_environment, target_environment
from bench.closed_loop.options import BATCH_ONLY_SYSTEMS, Options, parse_options
from bench.closed_loop.report import Report, ceiling_text, targets_text, text_table, write
from bench.closed_loop.runner import Runner
from bench.common import ceiling, machine, rowlock
from bench.common.tally_client import seed
from bench.common.workload import Shape, Workload, customer_account_ids
from core import audit as core_audit
from shards.node.server import NodeConfig
from shards.node.writer import WriterConfig

SETUP_TIMEOUT_S: Final = 900.0
AUDIT_TIMEOUT_S: Final = 300.0


async def seed_systems(
    options: Options, environment: Environment, accounts: list[str]
) -> dict[str, Any]:
    seeding: dict[str, Any] = {"accounts": len(accounts) + 1}
    if "tally" in options.systems:
        started = time.monotonic()
        codes = await seed(environment.tally, accounts, options.seed_batch_size)
        seconds = time.monotonic() - started
        seeding["tally_seconds"] = round(seconds, 2)
        seeding["tally_items_per_s"] = round(sum(codes.values()) / seconds)
        seeding["tally_results"] = dict(codes)
        unexpected = set(codes) - {"CREATED", "REPLAYED"}
        if unexpected:
            raise RuntimeError(f"seeding Tally gave unexpected results: {dict(codes)}")
    if "rowlock" in options.systems and environment.rowlock_dsn:
        started = time.monotonic()
        await rowlock.create_and_seed(environment.rowlock_dsn, accounts)
        seeding["rowlock_seconds"] = round(time.monotonic() - started, 2)
    if "ceiling" in options.systems and environment.ceiling_dsn:
        started = time.monotonic()
        await ceiling.create_and_seed(environment.ceiling_dsn, accounts)
        seeding["ceiling_seconds"] = round(time.monotonic() - started, 2)
    return seeding


def runs(system: str, workload: Workload) -> bool:
    """The ceiling is a batched one: it has nothing to say about one transfer per call."""
    return system not in BATCH_ONLY_SYSTEMS or workload.shape is Shape.BATCH


async def run_all(options: Options, environment: Environment, report: Report) -> None:
    accounts = customer_account_ids(options.account_count)
    report.seeding = await seed_systems(options, environment, accounts)
    report.postgres = await _postgres_settings(environment)
    runner = Runner(options, environment, accounts, _run_id())
    posts: dict[str, Callable[[list[Any]], Any]] = {"tally": environment.tally.post}
    ledger = batched = None
    if "rowlock" in options.systems and environment.rowlock_dsn:
        ledger = await rowlock.RowLockLedger.open(environment.rowlock_dsn, options.client_count)
        posts["rowlock"] = ledger.post
    if "ceiling" in options.systems and environment.ceiling_dsn:
        # One connection per concurrent batch sender, as Tally's batch workloads have.
        batched = await ceiling.CeilingLedger.open(
            environment.ceiling_dsn, options.batch_client_count
        )
        posts["ceiling"] = batched.post
    try:
        # Workloads outer, systems inner: each comparison pair runs back to back.
        for workload in options.workloads:
            for system in (s for s in options.systems if runs(s, workload)):
                print(f"bench: {system} {workload.name} ...", flush=True)
                result = await runner.measure(system, workload, posts[system])
                report.runs.append(result)
                print(f"bench:   {result.transfers_per_s:,.0f} transfers/s", flush=True)
    finally:
        report.profiles.update(runner.profiles)
        if ledger is not None:
            await ledger.close()
        if batched is not None:
            await batched.close()
    report.seeding["audit"] = await audit(options, environment)
    if "tally" in options.systems and environment.tally_dsn:
        # After the audit, on the database as the runs left it: one query set.
        report.storage = await storage.measure(environment.tally_dsn)


async def _postgres_settings(environment: Environment) -> dict[str, str]:
    dsn = environment.tally_dsn or environment.rowlock_dsn
    return await machine.postgres_settings(dsn) if dsn else {}


async def audit(options: Options, environment: Environment) -> dict[str, Any]:
    """After the runs: each ledger that ran must still balance, and its counters must equal
    the sums of its postings."""
    problems: dict[str, Any] = {}
    async with asyncio.timeout(AUDIT_TIMEOUT_S):
        if "tally" in options.systems and environment.tally_dsn:
            problems["tally"] = await _audit_tally(environment.tally_dsn)
        if "rowlock" in options.systems and environment.rowlock_dsn:
            problems["rowlock"] = await rowlock.audit(environment.rowlock_dsn)
        if "ceiling" in options.systems and environment.ceiling_dsn:
            problems["ceiling"] = await ceiling.audit(environment.ceiling_dsn)
    return problems


async def _audit_tally(dsn: str) -> list[str]:
    connection = await asyncpg.connect(dsn, timeout=30.0)
    try:
        found = await core_audit.check_trial_balance(connection)
        found += await core_audit.check_counters(connection)
        return found[:10]
    finally:
        await connection.close(timeout=10.0)


def _run_id() -> str:
    # Unique per run, so transaction ids never collide with an earlier run on the same node.
    return format(time.time_ns() // 1_000_000, "x")


def node_settings(options: Options, notes: dict[str, Any]) -> dict[str, Any]:
    node_config = NodeConfig(dsn="")
    return {
        **notes,
        "extra_args": list(options.node_args),
        "writer_defaults": asdict(WriterConfig()),
        "read_pool_size_max": node_config.read_pool_size_max,
        "profile": options.node_profile,
    }


async def main_async(options: Options) -> int:
    options.out_dir.mkdir(parents=True, exist_ok=True)
    report = Report(
        started_at=datetime.datetime.now().isoformat(timespec="seconds"),
        command=["python", "-m", "bench.closed_loop.single_node", *sys.argv[1:]],
        options=_options_summary(options),
        host={**machine.host_info(), "hostname": socket.gethostname()},
        postgres={},
        node={},
        seeding={},
    )
    make_environment = target_environment if options.target else local_environment
    notes: dict[str, Any] = {}
    try:
        async with asyncio.timeout(_budget_s(options)):
            async with make_environment(options) as environment:
                notes = environment.notes  # filled in further as the node stops
                await run_all(options, environment, report)
    finally:
        report.node = node_settings(options, notes)
        _finish(options, report)
    return 0 if report.clean and report.runs else 1


def _options_summary(options: Options) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, value in asdict(options).items():
        summary[name] = value if isinstance(value, int | float | str | None) else str(value)
    summary["workloads"] = ",".join(w.name for w in options.workloads)
    summary["systems"] = ",".join(options.systems)
    return summary


def _budget_s(options: Options) -> float:
    per_run_s = options.warmup_s + options.duration_s + 120.0
    run_count = sum(runs(s, w) for w in options.workloads for s in options.systems)
    return SETUP_TIMEOUT_S + per_run_s * run_count


def _finish(options: Options, report: Report) -> None:
    """Always write what was measured, also after an error or Ctrl-C."""
    if options.node_profile == "cprofile":
        path = options.out_dir / "node.prof"
        report.profiles["node (cProfile, whole run)"] = profiling.summarize_cprofile(path)
    write(report, options.out_dir)
    print()
    print(text_table(report.runs))
    print()
    print(targets_text(report.runs))
    print()
    print(ceiling_text(report.runs))
    if report.storage is not None:
        print("\nstorage of Tally's shard database after the runs:")
        print("\n".join(storage.totals_lines(report.storage)))
    print(f"\nbench: wrote {options.out_dir / 'report.md'} and results.json", flush=True)


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv, __doc__ or "")
    try:
        exit_code: int = uvloop.run(main_async(options))
        return exit_code
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
