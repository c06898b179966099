"""How long a slot move pauses writes, against the size of the source shard: `python -m
bench.closed_loop.move_pause`.

Starts `tally up --shards 2` in a temporary directory, seeds funded customers, then grows the
journal in steps (1,000-transfer batches from several clients for `--grow-s` seconds each).
After each step it moves a few small sets of shard 0's slots to shard 1 with `tally slots move`
(its own process, as an operator would) while single-transfer clients keep posting, and
records each move's pause (from the source's move-out to the map moved, as the mover prints
it), the accounts and records it moved, and the source's table sizes at the time.

What it shows: whether a move's pause follows what moves (the slots' rows) or the whole
shard (its tables' rows), and what the clients posting meanwhile saw. Writes results.json and
report.md.
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
from pathlib import Path
from typing import Any, Final

import asyncpg

from bench.closed_loop.cluster import Case, customer_id, measure, seed
from bench.closed_loop.grow import by_shard_of, control_dsn, load_map, moves_of, run_mover
from bench.common import cpu
from bench.common.local_cluster import admin_credentials, start_cluster, stop_cluster
from bench.common.paths import REPORTS_DIR
from bench.common.tally_client import TallyClient
from core.slots import SlotMap
from shards.local.embedded_pg import free_port

MODULE: Final = "bench.closed_loop.move_pause"
MOVE_TIMEOUT_S: Final = 600.0


def _shard_dsn(data_dir: Path, shard: int) -> str:
    return control_dsn(data_dir).rsplit("/", 1)[0] + f"/tally_shard_{shard}"


async def table_rows(data_dir: Path, shard: int) -> dict[str, int]:
    """The shard's row counts (exact: the bench waits for them)."""
    connection = await asyncpg.connect(_shard_dsn(data_dir, shard))
    try:
        found = {
            table: int(await connection.fetchval(f"SELECT count(*) FROM {table}"))
            for table in ("accounts", "transactions", "postings")
        }
        for index in ("accounts_by_slot", "transactions_by_slot"):  # none before migration 10
            size = await connection.fetchval("SELECT pg_relation_size(to_regclass($1))", index)
            found[f"{index}_bytes"] = int(size or 0)
        return found
    finally:
        await connection.close()


async def move(data_dir: Path, slots: list[int], target: int) -> dict[str, Any]:
    """`tally slots move` as its own process: the move, its pause and where it went."""
    started = time.monotonic()
    arguments = ("move", "--slots", ",".join(map(str, slots)), "--to", str(target))
    stdout = await run_mover(data_dir, arguments, MOVE_TIMEOUT_S)
    (found,) = moves_of(stdout)
    steps = re.search(r"steps_ms (.*)", stdout)
    taken = dict(part.split("=") for part in steps[1].split()) if steps else {}
    return {**found, "seconds": round(time.monotonic() - started, 2), "steps_ms": taken}


def next_slots(slot_map: SlotMap, count: int) -> list[int]:
    """The first `count` slots shard 0 still owns."""
    return [slot for slot, owner in enumerate(slot_map.owners) if owner == 0][:count]


async def moves_under_load(
    client: TallyClient, data_dir: Path, accounts: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """args.moves moves of args.slots_per_move slots, 0 -> 1, one after another, while
    args.clients single-transfer clients post."""
    dsn = control_dsn(data_dir)
    by_shard = by_shard_of(await load_map(dsn), accounts)
    rows = await table_rows(data_dir, 0)
    args.id_prefix = f"during{rows['transactions']}."
    load_args = argparse.Namespace(**{**vars(args), "duration_s": 3600.0, "warmup_s": 0.0})
    meter = cpu.CpuMeter({"bench": cpu.bench_process()})
    load = asyncio.create_task(
        measure(client, Case(0.0, 1, args.clients), by_shard, meter, load_args)
    )
    done = []
    try:
        for _ in range(args.moves):
            slots = next_slots(await load_map(dsn), args.slots_per_move)
            done.append(await move(data_dir, slots, 1))
            print(json.dumps(done[-1]), flush=True)
    finally:
        load.cancel()
        try:
            await load
        except (asyncio.CancelledError, Exception):  # the window was cut: its figures unused
            pass
    return {"source_rows": rows, "moves": done}


async def grow_journal(
    client: TallyClient, data_dir: Path, accounts: list[str], step: int, args: argparse.Namespace
) -> None:
    by_shard = by_shard_of(await load_map(control_dsn(data_dir)), accounts)
    args.id_prefix = f"grow{step}."
    meter = cpu.CpuMeter({"bench": cpu.bench_process()})
    grow_args = argparse.Namespace(**{**vars(args), "duration_s": args.grow_s, "warmup_s": 0.0})
    result = await measure(client, Case(0.0, 1000, 8), by_shard, meter, grow_args)
    print(json.dumps({"grow": step, "transfers_per_s": result["transfers_per_s"]}), flush=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="tally-move-pause-"))
    data_dir = root / "data"
    port = free_port()
    up = await start_cluster(data_dir, 2, port)
    client: TallyClient | None = None
    steps = []
    try:
        client = TallyClient(f"127.0.0.1:{port}", admin_credentials(data_dir).security())
        accounts = [customer_id(n) for n in range(args.accounts)]
        await seed(client, accounts)
        for step in range(args.steps):
            if step or args.grow_first:
                await grow_journal(client, data_dir, accounts, step, args)
            steps.append(await moves_under_load(client, data_dir, accounts, args))
        return {"args": {k: v for k, v in vars(args).items() if k != "out"}, "steps": steps}
    finally:
        if client is not None:
            await client.close()
        await stop_cluster(up)
        shutil.rmtree(root, ignore_errors=True)


def report(results: dict[str, Any]) -> str:
    args = results["args"]
    lines = [
        f"# Slot move pause against the source shard's size — {time.strftime('%Y-%m-%dT%H:%M:%S')}",
        "",
        f"Command: `python -m {MODULE} {' '.join(sys.argv[1:])}`; `tally up --shards 2`, "
        f"{args['accounts']:,} funded customers; each step grows the journal for "
        f"{args['grow_s']:g} s of 1,000-transfer batches, then moves {args['moves']} x "
        f"{args['slots_per_move']} slots of shard 0 to shard 1 while {args['clients']} clients "
        f"post single transfers; {os.cpu_count()} cores shared by every process.",
        "",
        "| source accounts | source transactions | move | slots | accounts | records | pause ms "
        "| mover s | steps ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    sizes = []
    for step in results["steps"]:
        rows = step["source_rows"]
        if rows.get("transactions_by_slot_bytes"):
            sizes.append(
                f"- at {rows['transactions']:,} transactions: the slot indexes "
                f"{rows['accounts_by_slot_bytes'] / rows['accounts']:.1f} B per account, "
                f"{rows['transactions_by_slot_bytes'] / rows['transactions']:.1f} B per "
                f"transaction ({rows['transactions_by_slot_bytes'] / rows['postings']:.1f} B per "
                "posting)"
            )
        for m in step["moves"]:
            lines.append(
                f"| {rows['accounts']:,} | {rows['transactions']:,} | {m['move']} | {m['slots']} "
                f"| {m['accounts']} | {m['records']} | {m['pause_ms']} | {m['seconds']} "
                f"| {' '.join(f'{k}={v}' for k, v in m.get('steps_ms', {}).items())} |"
            )
    if sizes:
        lines += ["", "Index sizes on the source (pg_relation_size, no VACUUM):", *sizes]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=2, help="journal sizes to move at")
    parser.add_argument("--grow-s", type=float, default=30.0, help="journal growth per step")
    parser.add_argument(
        "--grow-first", action="store_true", help="grow the journal before the first step too"
    )
    parser.add_argument("--moves", type=int, default=3, help="moves per step")
    parser.add_argument("--slots-per-move", type=int, default=8)
    parser.add_argument("--clients", type=int, default=16, help="single-transfer clients")
    parser.add_argument("--bare-ids", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    results = asyncio.run(run(args))
    out = args.out or REPORTS_DIR / f"move-pause-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "report.md").write_text(report(results))
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
