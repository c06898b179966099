"""`tally init-cluster --shards N`: make a cluster's control database ready for its nodes and
gateways: the control tables and an even slot map over N shards, made once and kept after.

`tally up --shards N` does this for itself; a cluster of separate machines (deploy/: the compose
file's and Kubernetes' one-shot init) runs it before its nodes start, since a node of a cluster
refuses to serve without a slot map. Run again on an initialised database it changes nothing:
with a larger N it says which shards own no slots yet (start their nodes, then `tally slots
rebalance` moves slots onto them while the cluster serves); with an N that would leave a shard
owning slots unserved it fails (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any, Final

import asyncpg

from core.slots import SlotMap
from core.store import control as control_store
from shards import control

COMMAND: Final = "init-cluster"
CONTROL_DSN_ENV: Final = "TALLY_CONTROL_DSN"
SHARD_COUNT_MAX: Final = 1024


def add_command(commands: Any) -> None:
    sub: argparse.ArgumentParser = commands.add_parser(
        COMMAND, help="make a cluster's control database: its tables and slot map (once)"
    )
    sub.add_argument(
        "--control-dsn",
        default=os.environ.get(CONTROL_DSN_ENV, ""),
        help=f"the control database (default: ${CONTROL_DSN_ENV}; keep secrets off the "
        "command line)",
    )
    sub.add_argument("--shards", type=int, required=True, help="the cluster's shard count")


def run(args: argparse.Namespace) -> int:
    if not args.control_dsn:
        print(f"tally {COMMAND}: give --control-dsn or set {CONTROL_DSN_ENV}", file=sys.stderr)
        return 2
    if not 1 <= args.shards <= SHARD_COUNT_MAX:
        print(f"tally {COMMAND}: --shards must be 1..{SHARD_COUNT_MAX}", file=sys.stderr)
        return 2
    try:
        slot_map = asyncio.run(_initialise(args.control_dsn, args.shards))
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        print(f"tally {COMMAND}: the control database: {error!r}", file=sys.stderr)
        return 2
    refusal = slot_map.shrink_refusal(args.shards)
    if refusal:
        print(f"tally {COMMAND}: {refusal}; left as it is", file=sys.stderr)
        return 2
    print(
        f"tally: control database ready: slot map version {slot_map.version}, "
        f"shards {len(slot_map.shard_ids)}"
    )
    slotless = slot_map.slotless(args.shards)
    if slotless:
        print(
            f"tally: shards {list(slotless)} own no slots yet: start their nodes, then "
            "`tally slots rebalance` spreads the slots onto them while the cluster serves"
        )
    return 0


async def _initialise(control_dsn: str, shard_count: int) -> SlotMap:
    connection = await control.connect(control_dsn)
    try:
        return await control_store.initialise(connection, shard_count)
    finally:
        await connection.close(timeout=5.0)
