"""No request can raise inside the writer's loop: an item that faults is its own error.

The record that once killed a node remotely: an abort marker whose reason is no ResultCode
(Shard.Abort took any integer before it checked the reason; a journal written then still holds
such markers). A Commit of that attempt made the state machine raise inside the writer's batch,
and the writer task died with every item of the batch. Now that item is answered ITEM_FAULT,
its batch's other items apply, and the node keeps serving. The Shard call goes to the node's
internal listener, as a gateway's would, with the cluster identity.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core import ids
from core.model import Kind, Leg, ResultCode, TransactionSpec
from tally.v1 import ledger_pb2 as pb
from tally.v1 import shard_pb2 as spb
from tally.v1 import shard_pb2_grpc as spb_grpc
from tests.support import security
from tests.support.helpers import (
    Client,
    NodeHandle,
    account,
    audit_problems,
    names,
    start_node,
    transfer,
)


@pytest.fixture
async def node(dsn: str) -> AsyncIterator[NodeHandle]:
    """The conftest node, with an internal listener (tally.v1.Shard) as a cluster's has."""
    handle = await start_node(dsn, internal_listen="127.0.0.1:0")
    try:
        yield handle
    finally:
        await handle.stop()


def _marker(transaction_id: str, reason: int) -> TransactionSpec:
    """An abort marker as Shard.Abort recorded any reason before it was checked."""
    marker_id = ids.abort_marker_id(transaction_id, "a1")
    return TransactionSpec(marker_id, Kind.ABORT, (), reason, (), "", 0, transaction_id)


def _spec(transaction_id: str, debit: str, credit: str, amount: int) -> TransactionSpec:
    legs = (Leg(debit, True, amount, "USD"), Leg(credit, False, amount, "USD"))
    return TransactionSpec(transaction_id, Kind.ORDINARY, legs, 1, (), "", 0, "")


async def test_a_faulting_item_does_not_stop_the_writer(
    node: NodeHandle, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    client = Client(channel)
    accounts = [account("@bank"), account("c1/dep"), account("c2/dep")]
    assert set(names(await client.create(*accounts))) == {"RESULT_CODE_CREATED"}
    writer = node.node.writer
    assert writer is not None
    (recorded,) = await writer.submit([_marker("x", 12345)])
    assert recorded.code is ResultCode.CREATED

    commit = _spec("x", "@bank", "c1/dep", 1_000)._replace(
        kind=Kind.COMMIT, target_id=ids.abort_marker_id("x", "a1")
    )
    with caplog.at_level(logging.ERROR, logger="tally.state"):
        # One request: the faulting item and two transfers in one batch, and a client's
        # request beside it (in the same batch or the next).
        batch, alongside = await asyncio.gather(
            writer.submit(
                [_spec("t1", "@bank", "c1/dep", 10), commit, _spec("t2", "@bank", "c2/dep", 20)]
            ),
            client.codes(transfer("t3", "@bank", "c2/dep", 30)),
        )
    assert [r.code for r in batch] == [
        ResultCode.CREATED,
        ResultCode.ITEM_FAULT,
        ResultCode.CREATED,
    ]
    assert "nothing of it was applied" in batch[1].message
    assert names(alongside) == ["RESULT_CODE_CREATED"]
    assert any(r.exc_info and "'x'" in r.getMessage() for r in caplog.records)
    assert (await client.balance("c1/dep")).credits_posted == 10
    assert (await client.balance("c2/dep")).credits_posted == 50

    # Through the Shard API, the Commit of that attempt is an answer too, not a dead node.
    async with security.cluster_channel(node.internal_target) as internal:
        committed = await spb_grpc.ShardStub(internal).Commit(
            spb.CommitRequest(
                items=[spb.CommitItem(piece=transfer("x", "@bank", "c1/dep", 1_000), attempt="a1")]
            ),
            timeout=30,
        )
    assert [r.code for r in committed.results] == [pb.RESULT_CODE_ITEM_FAULT]

    assert not node.task.done() and node.node.writer is writer
    health = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="tally.v1.Ledger"), timeout=10
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert names(await client.codes(transfer("t4", "@bank", "c1/dep", 1))) == [
        "RESULT_CODE_CREATED"
    ]
    assert (await client.balance("c1/dep")).credits_posted == 11
    lookup = await client.stub.GetTransactions(pb.GetTransactionsRequest(ids=["x"]), timeout=30)
    assert lookup.results[0].code == pb.RESULT_CODE_TRANSACTION_NOT_FOUND
    assert await audit_problems(node.dsn) == []
