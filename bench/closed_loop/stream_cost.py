"""What the change stream costs the writer: `python -m bench.closed_loop.stream_cost`.

Starts `tally up` (one node on the embedded PostgreSQL) once, then measures the batched write
rate (`bench.closed_loop.single_node --target ... --systems tally --workloads batch-uniform`)
in alternating phases on that same node: without any stream open, and with --followers
StreamJournal readers following the journal (`bench.closed_loop.stream_followers`, a separate
process, each reading from the journal's start, so it first catches up from the store and then
follows every commit). Alternating (without, with, without, with, ...) in one sitting is how a
shared, noisy machine can still give a ratio. Writes report.md and results.json to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common.local_cluster import admin_credentials, start_cluster, stop_cluster
from bench.common.paths import REPO_ROOT
from shards.local.embedded_pg import free_port


def _credential_flags(data_dir: Path) -> list[str]:
    credentials = admin_credentials(data_dir)
    return ["--ca", credentials.ca, "--cert", credentials.certificate, "--key", credentials.key]


async def _load(target: str, data_dir: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One measured window of the batched write rate against the running node."""
    command = [
        sys.executable, "-m", "bench.closed_loop.single_node", "--target", target,
        "--systems", "tally", "--workloads", "batch-uniform", "--accounts", str(args.accounts),
        "--duration-s", str(args.duration_s), "--warmup-s", "2", "--out", str(out),
        "--quiet-wait-s", "0", *_credential_flags(data_dir),
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(*command, cwd=REPO_ROOT)
    code = await process.wait()
    if code != 0:
        raise RuntimeError(f"the load failed (exit {code}); see {out}")
    results = json.loads((out / "results.json").read_text())
    (run,) = [r for r in results["runs"] if r["system"] == "tally"]
    return {"transfers_per_s": run["transfers_per_s"], "latency_ms": run["latency_ms"]}


async def _followers(target: str, data_dir: Path, count: int, from_head: bool, log: Path) -> Any:
    command = [
        sys.executable, "-m", "bench.closed_loop.stream_followers", "--target", target,
        "--count", str(count), *(["--from-head"] if from_head else []),
        *_credential_flags(data_dir),
    ]  # fmt: skip
    with log.open("ab") as file:
        return await asyncio.create_subprocess_exec(
            *command, cwd=REPO_ROOT, stdout=file, stderr=file
        )


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
    target = f"127.0.0.1:{port}"
    phases: list[dict[str, Any]] = []
    try:
        for n in range(args.rounds * 2):
            with_streams = n % 2 == 1
            followers = None
            if with_streams:
                followers = await _followers(
                    target, data_dir, args.followers, args.from_head, out / "followers.log"
                )
                await asyncio.sleep(1.0)
            print(
                f"stream-cost: phase {n + 1}, streams {'on' if with_streams else 'off'}", flush=True
            )
            measured = await _load(target, data_dir, out / f"phase-{n + 1}", args)
            if followers is not None:
                followers.send_signal(signal.SIGINT)
                await asyncio.wait_for(followers.wait(), timeout=30)
            phases.append(
                {"phase": n + 1, "streams": args.followers if with_streams else 0, **measured}
            )
            print(f"stream-cost:   {measured['transfers_per_s']:,.0f} transfers/s", flush=True)
    finally:
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
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "# What the change stream costs the writer",
        "",
        "One node (`tally up`), batched uniform transfers (`single_node --workloads "
        f"batch-uniform`, {args.accounts:,} accounts, {args.duration_s:g} s windows), alternating "
        f"phases without streams and with {args.followers} StreamJournal readers following from "
        f"the journal's {'head' if args.from_head else 'start'}, in one sitting.",
        "",
        "| phase | streams | transfers/s | p50 ms | p99 ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    for p in phases:
        latency = p["latency_ms"]
        lines.append(
            f"| {p['phase']} | {p['streams']} | {p['transfers_per_s']:,.0f} | "
            f"{latency.get('p50', 0):.1f} | {latency.get('p99', 0):.1f} |"
        )
    lines += ["", f"Mean with streams / mean without: **{ratio:.3f}**.", ""]
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
    args = parser.parse_args(argv)
    if args.followers < 1 or args.rounds < 1:
        parser.error("--followers and --rounds must be at least 1")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
