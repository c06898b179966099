"""An attempt that lost to another attempt of the same id is voided only once its abort marker
is recorded at the coordinator.

Found by the 30-minute fault campaign (bench/baselines/2026-12-02-chaos-30min-seed7-38fd8ab):
two attempts of one cross-shard id (retries through two gateways at once); the winner committed;
the loser's Abort found the winner's commit and answered "committed by an earlier attempt"
(REPLAYED) although its own marker's write had failed, so the participants voided the loser's
pieces and no shard recorded what decided that attempt (an audit finding on every such
attempt). The marker's write is made to fail the way the campaign's faults do (a statement of
the writer's batch times out, so the batch is UNAVAILABLE and nothing of it is written): the
Abort must answer UNAVAILABLE, and its retry must record the marker and then answer the decision.
"""

from __future__ import annotations

import os
import time

import asyncpg
import grpc
import pytest

from core import ids
from shards.local.embedded_pg import EmbeddedPostgres
from shards.node.writer import WriterConfig
from tally.v1 import ledger_pb2 as pb
from tally.v1 import shard_pb2 as spb
from tally.v1 import shard_pb2_grpc as spb_grpc
from tests.support import security
from tests.support.helpers import Client, account, audit_problems, name, start_node, transfer
from tests.support.processes import fetch_rows


async def _markers(dsn: str, transaction_id: str) -> list[str]:
    rows = await fetch_rows(
        dsn,
        "SELECT id FROM transactions WHERE target_id = $1 AND id LIKE '~abort/%' ORDER BY id",
        transaction_id,
    )
    return [row["id"] for row in rows]


async def test_the_losing_attempt_is_decided_only_with_its_marker_recorded(
    pg: EmbeddedPostgres,
) -> None:
    database = f"abort_marker_{os.getpid()}_{time.time_ns()}"
    await pg.create_database_async(database)
    dsn = pg.dsn(database)
    node = await start_node(
        dsn, writer=WriterConfig(commit_timeout_s=1.0), internal_listen="127.0.0.1:0"
    )
    locker = await asyncpg.connect(dsn)
    try:
        async with (
            security.channel(node.target) as channel,
            security.cluster_channel(node.internal_target) as internal,
        ):
            client = Client(channel)
            assert (
                await client.create(account("@bank"), account("c1/dep"))
                == [pb.RESULT_CODE_CREATED] * 2
            )
            stub = spb_grpc.ShardStub(internal)
            piece = transfer("c1/t-1", "@bank", "c1/dep", 5)
            won = await stub.Commit(
                spb.CommitRequest(items=[spb.CommitItem(piece=piece, attempt="a1")]), timeout=30
            )
            assert names_of(won.results) == ["RESULT_CODE_CREATED"]
            lost = spb.AbortRequest(
                items=[spb.AbortItem(transaction_id="c1/t-1", attempt="a2", reason=0)]
            )
            locking = locker.transaction()
            await locking.start()
            await locker.execute("LOCK TABLE journal_blocks IN EXCLUSIVE MODE")  # reads pass
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Abort(lost, timeout=30)
            # Before: answered REPLAYED ("committed by an earlier attempt"), marker unwritten.
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
            await locking.rollback()
            assert await _markers(dsn, "c1/t-1") == []
            (decision,) = (await stub.Abort(lost, timeout=30)).decisions
            assert (decision.committed, name(decision.reason)) == (False, "RESULT_CODE_REPLAYED")
            assert await _markers(dsn, "c1/t-1") == [ids.abort_marker_id("c1/t-1", "a2")]
            # The winner is untouched: applied once.
            assert (await client.balance("c1/dep")).credits_posted == 5
            assert await audit_problems(dsn) == []
    finally:
        await locker.close()
        await node.stop()


def names_of(results: object) -> list[str]:
    return [name(r.code) for r in results]  # type: ignore[attr-defined]
