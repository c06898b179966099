"""Throughput before and after adding a shard: `python -m bench.closed_loop.grow`.

Starts `tally up --shards N` in a temporary directory, seeds funded customers and measures the
cluster bench's cases (bench.closed_loop.cluster: one transfer per call from many clients and
1,000-transfer batches, a share of them across shards). Then it stops the cluster and starts
`tally up --shards N+1` on the same data directory: the added shard's node starts owning no
slots, and `tally slots rebalance` spreads the slots onto it while single-transfer clients keep
posting (their throughput while slots move, and each move's pause as the mover prints it). The
same cases are measured again on the grown cluster.

This machine has 2 cores for every process, so an added shard cannot add CPU here: the figures
that carry to a cluster with a machine per shard are the CPU-normalised ones, transfers per
node CPU-second (and per shard), which say whether a transfer costs the nodes more once the
cluster has more shards and its slot map has moved. Writes results.json and report.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from bench.closed_loop.cluster import Case, customer_id, measure, seed
from bench.common import cpu
from bench.common.local_cluster import (
    admin_credentials,
    postgres_sampler,
    role_sampler,
    start_cluster,
    stop_cluster,
)
from bench.common.paths import REPO_ROOT, REPORTS_DIR
from bench.common.tally_client import TallyClient
from core.slots import SlotMap
from core.store import control as control_store
from shards import control
from shards.local.embedded_pg import SUPERUSER, free_port
from shards.security import directory, flags

MODULE: Final = "bench.closed_loop.grow"
REBALANCE_TIMEOUT_S: Final = 900.0
_MOVE_LINE: Final = re.compile(
    r"move (\w+) (?:done|resumed and finished): slots \[([\d, ]*)\] from shard (\d+) to shard "
    r"(\d+), (\d+) accounts, (\d+) records"
)
_PAUSE_LINE: Final = re.compile(r"slot (\d+) pause_ms ([\d.]+)")


def control_dsn(data_dir: Path) -> str:
    """The control database of `tally up --data-dir data_dir` (its superuser's password is
    kept in the data directory; a secret: it goes to the mover in its environment only)."""
    port = int((data_dir / "pg-port").read_text().strip())
    password = urllib.parse.quote((data_dir / "pg" / "superuser.password").read_text().strip())
    return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{port}/tally_control"


async def load_map(dsn: str) -> SlotMap:
    connection = await control.connect(dsn)
    try:
        slot_map = await control_store.load_slot_map(connection)
    finally:
        await connection.close(timeout=5.0)
    if slot_map is None:
        raise RuntimeError("the control database holds no slot map")
    return slot_map


def by_shard_of(slot_map: SlotMap, accounts: Sequence[str]) -> list[list[str]]:
    shards: dict[int, list[str]] = {shard: [] for shard in slot_map.shard_ids}
    for account in accounts:
        shards[slot_map.shard_of_account(account)].append(account)
    return [shards[shard] for shard in sorted(shards)]


def moves_of(stdout: str) -> list[dict[str, Any]]:
    """The mover's lines: each move's slots, shards, counts and pause."""
    found: list[dict[str, Any]] = []
    pauses: dict[int, float] = {}
    for line in stdout.splitlines():
        if match := _PAUSE_LINE.search(line):
            pauses[int(match[1])] = float(match[2])
        elif match := _MOVE_LINE.search(line):
            slots = [int(s) for s in match[2].split(",") if s.strip()]
            found.append(
                {
                    "move": match[1],
                    "slots": len(slots),
                    "first_slot": slots[0] if slots else -1,
                    "source": int(match[3]),
                    "target": int(match[4]),
                    "accounts": int(match[5]),
                    "records": int(match[6]),
                }
            )
    for move in found:
        move["pause_ms"] = pauses.get(move["first_slot"], 0.0)
    return found


async def run_mover(data_dir: Path, arguments: Sequence[str], timeout_s: float) -> str:
    """`tally slots ARGUMENTS` as its own process, the cluster identity tally up made; its
    stdout (RuntimeError with its stderr's end if it fails)."""
    paths = directory.Paths(flags.local_directory(data_dir))
    environment = {**os.environ, "TALLY_CONTROL_DSN": control_dsn(data_dir)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shards.cli", "slots", *arguments,
        f"--ca={paths.certificate(directory.CA)}",
        f"--cert={paths.certificate(directory.CLUSTER)}",
        f"--key={paths.key(directory.CLUSTER)}",
        cwd=REPO_ROOT, env=environment,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    if process.returncode != 0:
        raise RuntimeError(f"tally slots {arguments[0]} failed: {stderr.decode()[-2000:]}")
    return stdout.decode()


async def rebalance(data_dir: Path, slots_per_move: int) -> dict[str, Any]:
    """`tally slots rebalance` as its own process."""
    started = time.monotonic()
    arguments = ("rebalance", "--slots-per-move", str(slots_per_move))
    stdout = await run_mover(data_dir, arguments, REBALANCE_TIMEOUT_S)
    return {"seconds": round(time.monotonic() - started, 2), "moves": moves_of(stdout)}


def _meter(up_pid: int, data_dir: Path) -> cpu.CpuMeter:
    return cpu.CpuMeter(
        {
            "nodes": role_sampler(up_pid, "shards.cli node"),
            "gateway": role_sampler(up_pid, "shards.cli gateway"),
            "postgres": postgres_sampler(data_dir),
            "bench": cpu.bench_process(),
        }
    )


def cases(args: argparse.Namespace) -> list[Case]:
    shapes = ((1, args.clients), (args.batch_size, args.batch_clients))
    shares = [float(s) for s in args.cross.split(",") if s]
    return [Case(share, size, clients) for share in shares for size, clients in shapes]


def normalised(result: dict[str, Any], shard_count: int) -> dict[str, Any]:
    """A case's result with its CPU-normalised figures: transfers per node CPU-second, and the
    rate and node cores per shard."""
    node_us = result["cpu_us_per_transfer"].get("nodes", 0.0)
    per_node_cpu_s = round(1e6 / node_us, 1) if node_us else 0.0
    node_cores = result["cores"].get("nodes", 0.0)
    return {
        **result,
        "shards": shard_count,
        "transfers_per_node_cpu_s": per_node_cpu_s,
        "transfers_per_s_per_shard": round(result["transfers_per_s"] / shard_count, 1),
        "node_cores_per_shard": round(node_cores / shard_count, 2),
    }


async def phase(
    data_dir: Path,
    shard_count: int,
    accounts: list[str],
    args: argparse.Namespace,
    grow: bool,
) -> dict[str, Any]:
    """One cluster's measurements (grow: first rebalance onto its new shard under load)."""
    port = free_port()
    lines: list[str] = []
    up = await start_cluster(data_dir, shard_count, port, lines=lines)
    client: TallyClient | None = None
    try:
        client = TallyClient(f"127.0.0.1:{port}", admin_credentials(data_dir).security())
        meter = _meter(up.pid, data_dir)
        dsn = control_dsn(data_dir)
        out: dict[str, Any] = {"shards": shard_count, "results": []}
        if not grow:
            await seed(client, accounts)
        else:
            out["slotless_line"] = next((x for x in lines if "own no slots yet" in x), "")
            before = by_shard_of(await load_map(dsn), accounts)
            args.id_prefix = "moving."
            moving = asyncio.create_task(rebalance(data_dir, args.slots_per_move))
            during = await measure(client, Case(0.0, 1, args.clients), before, meter, args)
            out["rebalance"] = await moving
            out["during_rebalance"] = normalised(during, shard_count)
            print(json.dumps(out["rebalance"]), flush=True)
        slot_map = await load_map(dsn)
        out["map_version"] = slot_map.version
        by_shard = by_shard_of(slot_map, accounts)
        args.id_prefix = f"s{shard_count}."
        for case in cases(args):
            result = normalised(await measure(client, case, by_shard, meter, args), shard_count)
            print(json.dumps(result), flush=True)
            out["results"].append(result)
        return out
    finally:
        if client is not None:
            await client.close()
        await stop_cluster(up)


def _ratio(new: dict[str, Any], old: dict[str, Any], key: str) -> str:
    return f"{new[key] / old[key]:.2f}x" if old.get(key) else "-"


def _row(label: str, r: dict[str, Any]) -> str:
    us, lat = r["cpu_us_per_transfer"], r["latency_ms"]
    errors = sum(r["errors"].values())
    return (
        f"| {label} | {r['shards']} | {r['case']} | {r['transfers_per_s']:,} | {lat['p50']} "
        f"| {lat['p99']} | {errors} | {us['nodes']} | {us['gateway']} | {us['postgres']} "
        f"| {r['transfers_per_node_cpu_s']:,} | {r['transfers_per_s_per_shard']:,} "
        f"| {r['node_cores_per_shard']} |"
    )


def report(
    before: dict[str, Any],
    after: dict[str, Any],
    fresh: dict[str, Any] | None,
    args: argparse.Namespace,
) -> str:
    lines = [
        f"# Adding a shard: {before['shards']} -> {after['shards']} shards "
        f"— {time.strftime('%Y-%m-%dT%H:%M:%S')}",
        "",
        f"Command: `python -m {MODULE} {' '.join(sys.argv[1:])}`; {args.accounts:,} funded "
        f"customers; {args.duration_s:g} s measured after {args.warmup_s:g} s warm-up; "
        f"{os.cpu_count()} cores shared by every process.",
        "",
        "| phase | shards | case | transfers/s | p50 ms | p99 ms | errors | CPU µs/t nodes "
        "| gateway | postgres | transfers per node CPU-s | transfers/s per shard "
        "| node cores per shard |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row("before", r) for r in before["results"]]
    lines.append(_row("while rebalancing", after["during_rebalance"]))
    lines += [_row("after", r) for r in after["results"]]
    if fresh is not None:
        lines += [_row("fresh, never moved", r) for r in fresh["results"]]
    lines += [
        "",
        "| case | transfers/s after/before | per node CPU-s after/before "
        "| transfers/s after/fresh | per node CPU-s after/fresh |",
        "|---|---|---|---|---|",
    ]
    fresh_results = fresh["results"] if fresh is not None else [{}] * len(after["results"])
    for old, new, same in zip(before["results"], after["results"], fresh_results, strict=True):
        lines.append(
            f"| {new['case']} | {_ratio(new, old, 'transfers_per_s')} "
            f"| {_ratio(new, old, 'transfers_per_node_cpu_s')} "
            f"| {_ratio(new, same, 'transfers_per_s')} "
            f"| {_ratio(new, same, 'transfers_per_node_cpu_s')} |"
        )
    moves = after["rebalance"]["moves"]
    pauses = [m["pause_ms"] for m in moves]
    lines += [
        "",
        f"Rebalance: {len(moves)} moves, {sum(m['slots'] for m in moves)} slots, "
        f"{sum(m['accounts'] for m in moves):,} accounts and {sum(m['records'] for m in moves):,} "
        f"records in {after['rebalance']['seconds']} s while {args.clients} clients posted; "
        f"pause per move {min(pauses, default=0):.0f}-{max(pauses, default=0):.0f} ms; "
        f"slot map version {after['map_version']}.",
        "",
        "| move | slots | from | to | accounts | records | pause ms |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {m['move']} | {m['slots']} | {m['source']} | {m['target']} | {m['accounts']} "
        f"| {m['records']} | {m['pause_ms']} |"
        for m in moves
    ]
    lines += [
        "",
        "*transfers per node CPU-s*: created transfers per CPU-second of all node processes "
        "together (1e6 / CPU µs per transfer of the nodes): the CPU-normalised rate, the one "
        "that carries to a machine per shard. *while rebalancing*: single transfers posted while "
        "`tally slots rebalance` ran, placed by the map before it (the gateway follows the map; "
        "clients never see `wrong_shard`). *fresh, never moved*: a cluster started with "
        f"{after['shards']} shards and the even slot map, seeded alike: what the grown cluster "
        "is compared with to tell the cost of more shards from the cost of moved slots.",
    ]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--shards", type=int, default=2, help="the shards before one is added")
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=64, help="single-transfer clients")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--batch-clients", type=int, default=16)
    parser.add_argument("--cross", default="0,0.1", help="cross-shard shares")
    parser.add_argument("--slots-per-move", type=int, default=256)
    parser.add_argument(
        "--no-fresh",
        dest="fresh",
        action="store_false",
        help="leave out the comparison with a cluster started with the added shard",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.bare_ids = False
    if args.shards < 1:
        parser.error("--shards must be at least 1")
    return args


async def run(args: argparse.Namespace) -> int:
    out = args.out or REPORTS_DIR / f"grow-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="tally-grow-bench-"))
    try:
        accounts = [customer_id(n) for n in range(args.accounts)]
        before = await phase(workdir / "data", args.shards, accounts, args, grow=False)
        after = await phase(workdir / "data", args.shards + 1, accounts, args, grow=True)
        fresh = None
        if args.fresh:
            fresh = await phase(workdir / "fresh", args.shards + 1, accounts, args, grow=False)
        results = {"before": before, "after": after, "fresh": fresh}
        (out / "results.json").write_text(json.dumps(results, indent=2))
        text = report(before, after, fresh, args)
        (out / "report.md").write_text(text)
        print(text)
        every = [*before["results"], *after["results"], after["during_rebalance"]]
        every += fresh["results"] if fresh is not None else []
        return 1 if any(sum(r["errors"].values()) for r in every) else 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    import uvloop

    return uvloop.run(run(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
