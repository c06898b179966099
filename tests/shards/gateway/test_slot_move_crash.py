"""A slot move survives its source or target node killed (SIGKILL, at a failpoint) before and
after its step's commit: the node is started again, the mover (its own process) asks the step
again and finishes, and nothing is lost or doubled (issue 14, docs/design.md "Moving slots").
Real processes: `tally node` per shard, `tally gateway`, `tally slots move`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from core.slots import slot_of
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.cluster_processes import SHARD_COUNT, ProcessCluster, process_cluster
from tests.support.helpers import Client, account, audit_problems, transfer
from tests.support.slot_moves import (
    customer_on,
    moves_net,
    post_until_done,
    retrying_load,
    run_slots,
)

CREATED, REPLAYED = pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED
SOURCE, TARGET = 1, 3


async def _wait_exit(cluster: ProcessCluster, shard_id: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while cluster.nodes[shard_id].returncode is None:
        assert time.monotonic() < deadline, cluster.describe()
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("shard_id", "failpoint"),
    [
        (SOURCE, "moves.before_out_commit"),
        (SOURCE, "moves.after_out_commit"),
        (TARGET, "moves.before_in_commit"),
        (TARGET, "moves.after_in_commit"),
    ],
)
async def test_a_node_killed_at_its_step_of_a_move_loses_and_doubles_nothing(
    pg: EmbeddedPostgres, tmp_path: Path, shard_id: int, failpoint: str
) -> None:
    environments = {shard_id: {"TALLY_FAILPOINTS": f"{failpoint}=exit"}}
    async with process_cluster(pg, tmp_path, node_environments=environments) as cluster:
        async with security.channel(cluster.target) as channel:
            client = Client(channel)
            key = customer_on(SOURCE, SHARD_COUNT)
            slot = slot_of(key)
            await client.create(account("@cash"), account(f"{key}/dep"), account(f"{key}/sav"))
            funding = transfer(f"{key}/fund", "@cash", f"{key}/dep", 10_000)
            seen: dict[str, int] = {}
            await post_until_done(client, funding, seen)
            first = transfer(f"{key}/t1", f"{key}/dep", f"{key}/sav", 40)
            first_at = await post_until_done(client, first, seen)
            stop = asyncio.Event()
            load = asyncio.create_task(retrying_load(client, key, stop, seen))
            mover = asyncio.create_task(
                run_slots(cluster.control_dsn, "move", "--slots", str(slot), "--to", str(TARGET))
            )
            await _wait_exit(cluster, shard_id)  # killed at the failpoint
            await cluster.start_node(shard_id)  # again, without it
            code, stdout, stderr = await mover
            assert code == 0, (stderr, cluster.describe())
            await asyncio.sleep(0.3)
            stop.set()
            count = await load
            print(stdout, "retryable answers seen by the client:", seen)
            sav = await client.balance(f"{key}/sav")
            assert (sav.debits_posted, sav.credits_posted) == (0, 40 + count)
            again = await client.post(first)
            assert (again[0].code, again[0].timestamp_ns) == (REPLAYED, first_at)
        async with security.channel(cluster.node_target(SOURCE)) as channel:
            late = transfer(f"{key}/late", f"{key}/dep", f"{key}/sav", 1)
            assert (await Client(channel).post(late))[0].code == pb.RESULT_CODE_WRONG_SHARD
        for dsn in cluster.shard_dsns:
            assert await audit_problems(dsn) == [], dsn
        assert await moves_net(cluster.shard_dsns) == 0
