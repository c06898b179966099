"""What the change stream costs the writer: `python -m bench.closed_loop.stream_cost`.

Starts `tally up` (one node on the embedded PostgreSQL) once, then measures the batched write
rate (`bench.closed_loop.single_node --target ... --systems tally --workloads batch-uniform`)
in alternating phases on that same node: without any stream open, and with --followers
StreamJournal readers following the journal (`bench.closed_loop.stream_followers`, a separate
process, each reading from the journal's start, so it first catches up from the store and then
follows every commit). Alternating (without, with, without, with, ...) in one sitting is how a
shared, noisy machine can still give a ratio. Writes report.md and results.json to --out.

Where the followers read (--follow-at): `writer` (the node itself, which `tally up` runs alone
for one shard: blocks from the batches its writer holds) or `standby` (a second `tally node` on
the shard's database, without the writer lease, started here: it follows the stored journal,
off the writer's process). The load always goes to the writer. The report gives each phase's
CPU per transfer of the writer's process, the standby's and the followers', since on one
machine a follower elsewhere still shares the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.closed_loop.environment import listening_pid
from bench.common.local_cluster import (
    admin_credentials,
    batched_load,
    start_cluster,
    stop_cluster,
)
from bench.common.paths import REPO_ROOT
from shards.local import supervisor
from shards.local.embedded_pg import EmbeddedPostgres, EmbeddedPostgresConfig, free_port
from shards.local.supervisor import TallyProcess
from shards.security import directory, flags

FOLLOW_AT = ("writer", "standby")


async def _start_standby(data_dir: Path, log: Path) -> TallyProcess:
    """A second node of shard 0, on tally up's PostgreSQL and credentials: a standby (the
    writer holds the lease), serving its stored journal on a port of its own."""
    pg_port = int((data_dir / "pg-port").read_text())
    server = EmbeddedPostgres(EmbeddedPostgresConfig(data_dir=data_dir / "pg", port=pg_port))
    environment = supervisor.dsn_environment(dsn=server.dsn("tally_shard_0"))
    arguments = [
        "node", "--shard-id", "0", "--listen", f"127.0.0.1:{free_port()}",
        "--durability=single-server",  # tally up's one embedded server, as tally up says
        *directory.server_flags(flags.local_directory(data_dir)),
    ]  # fmt: skip
    return await supervisor.start(
        arguments, log, name="standby", environment=environment, cwd=REPO_ROOT,
        serving_timeout_s=60.0,
    )  # fmt: skip


async def _followers(
    target: str, data_dir: Path, count: int, from_head: bool, log: Path, encoding: str
) -> Any:
    command = [
        sys.executable, "-m", "bench.closed_loop.stream_followers", "--target", target,
        "--count", str(count), *(["--from-head"] if from_head else []), "--encoding", encoding,
        *admin_credentials(data_dir).client_flags(),
    ]  # fmt: skip
    with log.open("ab") as file:
        return await asyncio.create_subprocess_exec(
            *command, cwd=REPO_ROOT, stdout=file, stderr=file
        )


def _listening_pid(address: str) -> int:
    pid = listening_pid(address)
    if pid is None:
        raise RuntimeError(f"no process listens on {address}")
    return pid


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    found = {}
    for role, pid in pids.items():
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            found[role] = times.user + times.system
    return found


async def _phase(
    n: int, args: argparse.Namespace, cluster: dict[str, str], data_dir: Path, out: Path
) -> dict[str, Any]:
    """One phase: the load through the gateway, with followers (odd phases) or without; the
    CPU seconds per transfer of each process of the cluster (and the followers) meanwhile."""
    with_streams = n % 2 == 1
    followers = None
    pids = {role: _listening_pid(address) for role, address in cluster.items() if role != "at"}
    if with_streams:
        followers = await _followers(
            cluster["at"], data_dir, args.followers, args.from_head, out / "followers.log",
            args.encoding,
        )  # fmt: skip
        pids["followers"] = followers.pid
        await asyncio.sleep(1.0)
    print(f"stream-cost: phase {n + 1}, streams {'on' if with_streams else 'off'}", flush=True)
    before, started = _cpu_seconds(pids), time.monotonic()
    measured = await batched_load(
        cluster["writer"], admin_credentials(data_dir), args.accounts, args.duration_s,
        out / f"phase-{n + 1}",
    )  # fmt: skip
    after, seconds = _cpu_seconds(pids), time.monotonic() - started
    if followers is not None:
        followers.send_signal(signal.SIGINT)
        await asyncio.wait_for(followers.wait(), timeout=30)
    # The phase's transfers at the window's rate over the whole phase (warm-up included): an
    # estimate, the same for every phase.
    transfers = measured["transfers_per_s"] * seconds
    measured["process_cpu_us_per_transfer"] = {
        role: round((after[role] - before[role]) / transfers * 1e6, 1)
        for role in before
        if role in after and transfers
    }
    print(f"stream-cost:   {measured['transfers_per_s']:,.0f} transfers/s", flush=True)
    return {"phase": n + 1, "streams": args.followers if with_streams else 0, **measured}


async def main_async(args: argparse.Namespace) -> int:
    out: Path = (
        args.out
        or REPO_ROOT / "bench" / "reports" / f"stream-cost-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="tally-stream-cost-"))
    data_dir = root / "data"
    port = free_port()
    up = await start_cluster(data_dir, 1, port)
    cluster = {"writer": f"127.0.0.1:{port}"}  # one shard: tally up runs its node alone
    standby = None
    phases: list[dict[str, Any]] = []
    try:
        if args.follow_at == "standby":
            standby = await _start_standby(data_dir, root / "standby.log")
            cluster["standby"] = standby.endpoint
        cluster["at"] = cluster[args.follow_at]
        for n in range(args.rounds * 2):
            phases.append(await _phase(n, args, cluster, data_dir, out))
    finally:
        if standby is not None:
            await standby.stop(30.0, signal.SIGTERM)
        await stop_cluster(up)
    _write(out, args, phases)
    return 0


def _write(out: Path, args: argparse.Namespace, phases: list[dict[str, Any]]) -> None:
    without = [p["transfers_per_s"] for p in phases if not p["streams"]]
    with_ = [p["transfers_per_s"] for p in phases if p["streams"]]
    ratio = statistics.mean(with_) / statistics.mean(without)
    summary = {
        "phases": phases,
        "ratio_with_to_without": round(ratio, 4),
        "followers": args.followers,
    }
    lines = [
        "# What the change stream costs the writer",
        "",
        "One node (`tally up`), batched uniform transfers (`single_node --workloads "
        f"batch-uniform`, {args.accounts:,} accounts, {args.duration_s:g} s windows), alternating "
        f"phases without streams and with {args.followers} StreamJournal readers following from "
        f"the journal's {'head' if args.from_head else 'start'} at the {args.follow_at} "
        f"(--follow-at), asking for {args.encoding} (--encoding), in one sitting.",
        "",
        "CPU µs per transfer of each process (psutil, over the whole phase): the writer node, "
        "the standby node (with --follow-at standby) and the followers' process.",
        "",
        "| phase | streams | transfers/s | p50 ms | p99 ms | writer | standby | followers |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in phases:
        latency = p["latency_ms"]
        cpu = p["process_cpu_us_per_transfer"]
        lines.append(
            f"| {p['phase']} | {p['streams']} | {p['transfers_per_s']:,.0f} | "
            f"{latency.get('p50', 0):.1f} | {latency.get('p99', 0):.1f} | "
            + " | ".join(
                f"{cpu[role]:.1f}" if role in cpu else "-"
                for role in ("writer", "standby", "followers")
            )
            + " |"
        )
    writer_without = [
        p["process_cpu_us_per_transfer"]["writer"] for p in phases if not p["streams"]
    ]
    writer_with = [p["process_cpu_us_per_transfer"]["writer"] for p in phases if p["streams"]]
    writer_ratio = statistics.mean(writer_with) / statistics.mean(writer_without)
    summary["writer_cpu_ratio_with_to_without"] = round(writer_ratio, 4)
    lines += [
        "",
        f"Mean with streams / mean without: **{ratio:.3f}** (transfers/s); the writer node's "
        f"CPU per transfer with / without: **{writer_ratio:.3f}**.",
        "",
    ]
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.closed_loop.stream_cost")
    parser.add_argument("--followers", type=int, default=2)
    parser.add_argument(
        "--from-head", action="store_true", help="readers follow from the head, not the start"
    )
    parser.add_argument("--rounds", type=int, default=2, help="pairs of phases (without, with)")
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--follow-at", choices=FOLLOW_AT, default="writer",
        help="where the followers read the stream (see the module's docstring)",
    )  # fmt: skip
    parser.add_argument(
        "--encoding",
        choices=("records", "lines"),
        default="lines",
        help="how the followers ask for the blocks (JOURNAL_ENCODING_*): lines costs the writer "
        "nothing but the send, records a message built per block",
    )
    args = parser.parse_args(argv)
    if args.followers < 1 or args.rounds < 1:
        parser.error("--followers and --rounds must be at least 1")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
