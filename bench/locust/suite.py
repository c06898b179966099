"""The Locust benchmark suite in one command: `make bench`, or
`python -m bench.locust.suite [options]`.

Without --target it starts a cluster on the embedded PostgreSQL (`tally up --shards N` in a
temporary directory, metrics on; TLS with the credentials tally up makes there, the loader and
Locust presenting its admin identity; against a --target, --ca --cert --key or --token as the
`tally` commands take them), loads the population (bench/locust/loader.py, with a progress
bar), and seeds the conventional row-locking ledger (bench/common/rowlock.py) in its own
database of the same
PostgreSQL. Then, for each scenario, it runs Locust headless as a subprocess (gevent's
monkey-patching stays out of this process) while it scrapes every process's /metrics about
once a second and meters the CPU of each process role; after the transfers and hot account
scenarios it runs the row-locking ledger on the same shape (closed loop, in this process).
Finally it measures bytes on disk per account and per posting, applies the cost model
(bench/locust/cost.py), draws the plots and writes the report folder (default
bench/reports/<timestamp>/): Locust's CSVs, metrics CSVs, PNG plots, report.md, report.html and
results.json.

Exit status 0 when every scenario made requests and Locust counted no failure (and the
end-of-day accrual finished), 1 otherwise. Slow figures are results, never failures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench.common import cpu, machine, rowlock
from bench.common.credentials import ClientCredentials
from bench.common.local_cluster import (
    admin_credentials,
    postgres_sampler,
    role_sampler,
    start_cluster,
    stop_cluster,
)
from bench.common.measure import CallOutcome, latency_summary_ms, run_closed_loop
from bench.common.paths import REPO_ROOT, REPORTS_DIR
from bench.common.workload import Distribution, Shape, TransferSource, Workload
from bench.locust import cost, loader, metrics, population
from bench.locust.options import SUITE_MODULE, cost_inputs, parse
from shards.local.embedded_pg import EmbeddedPostgres, EmbeddedPostgresConfig, free_port

LOCUSTFILE: Final = REPO_ROOT / "bench" / "locust" / "locustfile.py"
DEFAULT_USERS: Final = {"loans": 32, "transfers": 32, "hot": 32, "eod": 4, "mixed": 32}
ROWLOCK_SHAPES: Final = {"transfers": Distribution.UNIFORM, "hot": Distribution.HOT}
LOCUST_GRACE_S: Final = 120.0
ROWLOCK_WARMUP_S: Final = 2.0
DB_TIMEOUT_S: Final = 60.0

JOURNAL_TOTALS_SQL: Final = """
SELECT count(*) AS blocks, coalesce(sum(posting_count), 0) AS postings,
       coalesce(sum(transaction_count), 0) AS transactions
FROM journal_blocks
"""


@dataclass(slots=True)
class Cluster:
    """What the bench knows of the system under test."""

    target: str
    shards: int
    credentials: ClientCredentials  # what the loader and Locust present (TLS)
    endpoints: list[metrics.Endpoint]
    shard_dsns: list[str]
    rowlock_dsn: str | None
    roles: dict[str, cpu.Sampler] = field(default_factory=dict)
    local: bool = False
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------- the cluster


@contextlib.asynccontextmanager
async def local_cluster(args: argparse.Namespace, out: Path) -> AsyncIterator[Cluster]:
    workdir = Path(tempfile.mkdtemp(prefix="tally-bench-"))
    data_dir = workdir / "data"
    port = free_port()
    lines: list[str] = []
    print(f"bench: starting tally up --shards {args.shards} in {workdir}", flush=True)
    metrics_flag = ["--metrics-listen", "127.0.0.1:0"]
    up = await start_cluster(data_dir, args.shards, port, metrics_flag, lines)
    try:
        pg_port = int((data_dir / "pg-port").read_text())
        # The server `tally up` started: its DSNs carry the password kept in its data dir.
        server = EmbeddedPostgres(EmbeddedPostgresConfig(data_dir=data_dir / "pg", port=pg_port))
        rowlock_dsn = None
        if args.rowlock:
            await _create_database(server.dsn("postgres"), "rowlock")
            rowlock_dsn = server.dsn("rowlock")
        yield Cluster(
            target=f"127.0.0.1:{port}",
            shards=args.shards,
            credentials=admin_credentials(data_dir),
            endpoints=metrics.endpoints_from_lines(lines),
            shard_dsns=[server.dsn(f"tally_shard_{n}") for n in range(args.shards)],
            rowlock_dsn=rowlock_dsn,
            roles={
                "nodes": role_sampler(up.pid, "shards.cli node"),
                "gateway": role_sampler(up.pid, "shards.cli gateway"),
                "postgres": postgres_sampler(data_dir),
            },
            local=True,
        )
    finally:
        await stop_cluster(up)
        _keep_logs(workdir, out)
        if args.keep_data:
            print(f"bench: cluster data kept in {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def remote_cluster(args: argparse.Namespace) -> AsyncIterator[Cluster]:
    cluster = Cluster(
        target=args.target,
        shards=args.shards,
        credentials=ClientCredentials.of(args.ca, args.cert, args.key, args.token),
        endpoints=metrics.endpoints_from_urls(args.metrics),
        shard_dsns=list(args.shard_dsn),
        rowlock_dsn=args.rowlock_dsn if args.rowlock else None,
    )
    if not cluster.shard_dsns:
        cluster.notes.append(
            "no --shard-dsn: bytes on disk, postings per transaction and the server's CPU were "
            "not measured (a remote cluster's processes are not visible from here)"
        )
    yield cluster


def _keep_logs(workdir: Path, out: Path) -> None:
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for path in [workdir / "up.log", *sorted((workdir / "data" / "logs").glob("*.log"))]:
        if path.exists():
            shutil.copy(path, logs / path.name)


async def _create_database(admin_dsn: str, name: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(admin_dsn, timeout=DB_TIMEOUT_S)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{name}"', timeout=DB_TIMEOUT_S)
    finally:
        await connection.close(timeout=10.0)


async def journal_totals(dsns: Sequence[str]) -> dict[str, int]:
    """Journal blocks (commits), postings and transactions committed, over all shards."""
    import asyncpg

    totals = {"blocks": 0, "postings": 0, "transactions": 0}
    for dsn in dsns:
        connection = await asyncpg.connect(dsn, timeout=DB_TIMEOUT_S)
        try:
            row = await connection.fetchrow(JOURNAL_TOTALS_SQL, timeout=DB_TIMEOUT_S)
        finally:
            await connection.close(timeout=10.0)
        for key in totals:
            totals[key] += int(row[key])
    return totals


# ------------------------------------------------------------------------------ one scenario


def reaped_children() -> dict[cpu.SampleKey, float]:
    """CPU of this process's children it has waited for: Locust, measured over its whole run
    once it has exited (one Locust process at a time runs under the bench)."""
    times = os.times()
    return {(os.getpid(), 0.0, "children"): times.children_user + times.children_system}


def locust_command(
    args: argparse.Namespace, cluster: Cluster, name: str, out: Path, run_id: str
) -> list[str]:
    users = args.users or DEFAULT_USERS[name]
    seconds = args.eod_max_s if name == "eod" else args.duration_s
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--tags", name,
        "--headless", "--only-summary", "-H", cluster.target,
        "-u", str(users), "-r", str(users), "-t", f"{seconds:g}s", "--stop-timeout", "5",
        "--csv", str(out / name), "--csv-full-history",
        "--tally-population", str(args.population),
        "--tally-shards", str(cluster.shards),
        "--tally-cross-share", str(args.cross_share),
        "--tally-transfers-per-call", str(args.transfers_per_call),
        "--tally-eod-batch-size", str(args.eod_batch_size),
        "--tally-run-id", run_id,
        "--tally-results-file", str(out / f"{name}_results.json"),
        *cluster.credentials.locust_flags(),
    ]  # fmt: skip


async def run_scenario(
    args: argparse.Namespace, cluster: Cluster, name: str, out: Path, run_id: str
) -> dict[str, Any]:
    command = locust_command(args, cluster, name, out, run_id)
    seconds = args.eod_max_s if name == "eod" else args.duration_s
    # A shared machine: wait (a little) for other jobs to go quiet; what they still take shows
    # as `other` cores in the report.
    busy_cores_before = await cpu.wait_for_quiet(args.quiet_cores, args.quiet_wait_s)
    before = await journal_totals(cluster.shard_dsns)
    scraper = metrics.Scraper(cluster.endpoints)
    stop = asyncio.Event()
    scraping = asyncio.create_task(scraper.run(stop))
    log_path = out / f"{name}_locust.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT
        )
    meter = cpu.CpuMeter({**cluster.roles, "locust": reaped_children})
    meter.start()
    started = time.monotonic()
    try:
        exit_code = await asyncio.wait_for(process.wait(), timeout=seconds + LOCUST_GRACE_S)
    except TimeoutError:
        process.kill()
        exit_code = await process.wait()
    finally:
        meter.stop()
        stop.set()
        await scraping
    wall_s = time.monotonic() - started
    after = await journal_totals(cluster.shard_dsns)
    scraper.write_csv(out / f"{name}_metrics.csv")
    result = collect(name, out, exit_code, wall_s, meter.seconds_by_role())
    result["users"] = args.users or DEFAULT_USERS[name]
    result["busy_cores_before"] = busy_cores_before
    result["other_cores"] = round(result["cpu_s"].get("other", 0.0) / max(1e-6, wall_s), 2)
    result["journal"] = {k: after[k] - before[k] for k in after}
    result["metrics"] = metrics.summary(scraper.rows)
    result["gateway_metrics"] = gateway_summary(scraper.rows)
    result["scrapes"] = scraper.scrapes
    result["scrape_failures"] = dict(scraper.failures)
    return result


def collect(
    name: str, out: Path, exit_code: int, wall_s: float, cpu_s: dict[str, float]
) -> dict[str, Any]:
    """Locust's own statistics (stats CSV) and the item results the locustfile counted."""
    tallies = _read_json(out / f"{name}_results.json")
    stats = tallies.get("locust_stats") or _read_stats(out / f"{name}_stats.csv")
    aggregated = stats.get("Aggregated", {})
    results: dict[str, int] = tallies.get("results", {})
    created = sum(n for key, n in results.items() if key.endswith((" CREATED", " REPLAYED")))
    created -= sum(n for key, n in results.items() if key.startswith("CreateAccounts"))
    run_s = max(1e-6, tallies.get("stopped_s", 0.0) - tallies.get("started_s", 0.0))
    eod = tallies.get("eod") or {}
    result: dict[str, Any] = {
        "scenario": name,
        "locust_exit_code": exit_code,
        "wall_s": round(wall_s, 1),
        "run_s": round(run_s, 1),
        "calls": int(_num(aggregated.get("Request Count"))),
        "failures": int(_num(aggregated.get("Failure Count"))),
        "calls_per_s": _num(aggregated.get("Requests/s")),
        "p50_ms": _num(aggregated.get("50%")),
        "p95_ms": _num(aggregated.get("95%")),
        "p99_ms": _num(aggregated.get("99%")),
        "by_method": {k: v for k, v in stats.items() if k != "Aggregated"},
        "results": results,
        "expected_rejections": sum(tallies.get("expected", {}).values()),
        "expected": tallies.get("expected", {}),
        "retries": tallies.get("retries", {}),
        "writes": created,
        "writes_per_s": round(created / run_s, 1),
        "cpu_s": cpu_s,
        "cpu_us_per_write": {
            role: round(1e6 * seconds / created, 1) if created else None
            for role, seconds in cpu_s.items()
            if role not in ("machine",)
        },
    }
    if eod:
        seconds = eod["finished_s"] - eod["started_s"]
        result["eod"] = {
            "accruals": int(eod["items"]),
            "seconds": round(seconds, 2),
            "per_s": round(eod["items"] / seconds, 1) if seconds > 0 else None,
        }
    return result


def _read_stats(path: Path) -> dict[str, dict[str, str]]:
    if not path.exists():
        return {}
    with path.open(newline="") as file:
        return {row["Name"]: row for row in csv.DictReader(file)}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {}


def _num(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return 0.0


def gateway_summary(rows: list[metrics.Row]) -> dict[str, float]:
    """What the gateway did with the load: client requests and items per shard call (its
    coalescing) and the mean time of a cross-shard transaction."""
    out: dict[str, float] = {}
    for label, name in (
        ("requests_per_shard_call", "tally_gateway_shard_call_requests"),
        ("items_per_shard_call", "tally_gateway_shard_call_items"),
        ("cross_shard_ms", "tally_gateway_cross_shard_duration_seconds"),
        ("rpc_ms", "tally_gateway_rpc_duration_seconds"),
    ):
        total = sum(metrics.increase_over_run(rows, name + "_sum").values())
        count = sum(metrics.increase_over_run(rows, name + "_count").values())
        if count:
            scale = 1000.0 if label.endswith("_ms") else 1.0
            out[label] = round(scale * total / count, 2)
    return out


# --------------------------------------------------------------------------- the comparison


async def run_rowlock(
    args: argparse.Namespace, cluster: Cluster, name: str, clients: int, run_id: str
) -> dict[str, Any]:
    """The same shape on the row-locking ledger: one transfer per call from `clients`
    concurrent clients (uniform customers, or every transfer debiting @cash), closed loop."""
    assert cluster.rowlock_dsn is not None
    accounts = [population.deposit_id(n) for n in range(args.population)]
    workload = Workload(Shape.SINGLE, ROWLOCK_SHAPES[name])
    sources = [
        TransferSource(accounts, workload, f"{run_id}.rowlock", n, seed=n) for n in range(clients)
    ]
    ledger = await rowlock.RowLockLedger.open(cluster.rowlock_dsn, clients)
    roles = {"bench (load + ledger)": cpu.bench_process()}
    if "postgres" in cluster.roles:
        roles["postgres"] = cluster.roles["postgres"]
    meter = cpu.CpuMeter(roles)

    async def call(number: int) -> CallOutcome:
        outcome: CallOutcome = await ledger.post(sources[number].take(1))
        return outcome

    async def begin() -> None:
        meter.start()

    async def end() -> None:
        meter.stop()

    try:
        window, recorder = await run_closed_loop(
            call, clients, ROWLOCK_WARMUP_S, args.rowlock_duration_s, begin, end
        )
    finally:
        await ledger.close()
    created = recorder.created_in_window
    return {
        "clients": clients,
        "transfers_per_s": round(created / window.seconds, 1),
        "latency_ms": latency_summary_ms(recorder.latencies_ns),
        "codes": dict(recorder.codes),
        "errors": dict(recorder.errors),
        "retries": recorder.retries,
        "cpu_us_per_transfer": {
            role: round(1e6 * s / created, 1) if created else None
            for role, s in meter.seconds_by_role().items()
            if role != "machine"
        },
    }


# ---------------------------------------------------------------------------------- the run


async def run_all(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    run_id = format(time.time_ns() // 1_000_000, "x")
    report: dict[str, Any] = {
        "started_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": ["python", "-m", SUITE_MODULE, *args.argv],
        "options": {k: v for k, v in vars(args).items() if k != "argv"},
        "host": {**machine.host_info(), "hostname": socket.gethostname()},
        "scenarios": [],
    }
    make_cluster = remote_cluster(args) if args.target else local_cluster(args, out)
    async with make_cluster as cluster:
        report["cluster"] = {
            "target": cluster.target,
            "shards": cluster.shards,
            "local": cluster.local,
            "metrics_endpoints": [e.name for e in cluster.endpoints],
            "notes": cluster.notes,
        }
        await prepare(args, cluster, report)
        for name in args.scenarios:
            print(
                f"bench: {name}: Locust, {args.users or DEFAULT_USERS[name]} users ...", flush=True
            )
            result = await run_scenario(args, cluster, name, out, run_id)
            if name in ROWLOCK_SHAPES and cluster.rowlock_dsn:
                print(f"bench: {name}: row-locking ledger, same shape ...", flush=True)
                result["rowlock"] = await run_rowlock(args, cluster, name, result["users"], run_id)
            print(f"bench:   {_one_line(result)}", flush=True)
            report["scenarios"].append(result)
        report["storage"] = await measure_storage(cluster)
    return report


async def prepare(args: argparse.Namespace, cluster: Cluster, report: dict[str, Any]) -> None:
    if args.skip_load:
        report["load"] = {"skipped": True}
    else:
        print(f"bench: loading {args.population:,} customers into {cluster.target}", flush=True)
        security = cluster.credentials.security()
        report["load"] = await loader.load(cluster.target, args.population, security)
    if cluster.rowlock_dsn:
        started = time.monotonic()
        accounts = [population.deposit_id(n) for n in range(args.population)]
        await rowlock.create_and_seed(cluster.rowlock_dsn, accounts)
        report["load"]["rowlock_seconds"] = round(time.monotonic() - started, 1)
    if cluster.shard_dsns:
        report["postgres"] = await machine.postgres_settings(cluster.shard_dsns[0])


async def measure_storage(cluster: Cluster) -> dict[str, Any]:
    if not cluster.shard_dsns:
        return {}
    shards = [await cost.relation_sizes(dsn) for dsn in cluster.shard_dsns]
    per_account, per_posting = cost.bytes_per_row(shards)
    print("bench: writing every shard's journal as cold segments, for their size", flush=True)
    cold = await cost.cold_segment_sizes(cluster.shard_dsns)
    return {
        "shards": shards,
        "bytes_per_account": round(per_account, 1),
        "bytes_per_posting": round(per_posting, 1),
        "cold": cold,
        "cold_bytes_per_posting": cold["cold_bytes_per_posting"],
    }


def _one_line(result: dict[str, Any]) -> str:
    text = (
        f"{result['calls_per_s']:,.0f} calls/s, {result['writes_per_s']:,.0f} writes/s, "
        f"p50 {result['p50_ms']:g} ms, p99 {result['p99_ms']:g} ms, "
        f"{result['failures']} failures, {result['expected_rejections']} expected rejections"
    )
    if "eod" in result:
        eod = result["eod"]
        text += f"; end of day: {eod['accruals']:,} accruals in {eod['seconds']:g} s"
    if "rowlock" in result:
        text += f"; row-locking: {result['rowlock']['transfers_per_s']:,.0f} transfers/s"
    return text


def clean(report: dict[str, Any], args: argparse.Namespace) -> bool:
    """Every scenario made requests, Locust counted no failure, the accrual finished."""
    ran = report.get("scenarios", [])
    if len(ran) != len(args.scenarios):
        return False
    for result in ran:
        if result["calls"] == 0 or result["failures"] != 0:
            return False
        if result["scenario"] == "eod":
            accruals = result.get("eod", {}).get("accruals", 0)
            if accruals < args.population:
                return False
    return True


# -------------------------------------------------------------------------------- main


async def main_async(args: argparse.Namespace) -> int:
    # Loaded only now: the report draws its plots with matplotlib.
    from bench.locust.report import write as write_report

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or REPORTS_DIR / stamp
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    started = time.monotonic()
    report: dict[str, Any] = {}
    try:
        report = await run_all(args, out)
    finally:
        report["wall_s"] = round(time.monotonic() - started, 1)
        report["clean"] = clean(report, args)
        text = write_report(report, out, cost_inputs(args), args.cost_scenario)
        print()
        print(text)
        print(f"bench: wrote {out / 'report.md'}, report.html, plots and CSVs", flush=True)
    return 0 if report["clean"] else 1


def main(argv: list[str] | None = None) -> int:
    args = parse(argv, (__doc__ or "").split("\n\n")[0])
    # This process spawns subprocesses (the cluster, Locust) while it holds gRPC channels.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    import uvloop

    try:
        exit_code: int = uvloop.run(main_async(args))
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
