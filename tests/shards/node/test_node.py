"""The node as an operator sees it: health, reflection, graceful shutdown, back-pressure."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from shards.node.writer import WriterConfig
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.helpers import (
    CREDIT,
    DEBIT,
    Client,
    account,
    audit_problems,
    leg,
    start_node,
    transfer,
)


async def test_health_serving_and_reflection(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tally.v1.Ledger"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = [r async for r in reflection.ServerReflectionInfo(iter([request]), timeout=5)]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"tally.v1.Ledger", "grpc.health.v1.Health"} <= names


async def test_graceful_stop_answers_in_flight_requests(dsn: str) -> None:
    import asyncpg

    handle = await start_node(dsn)
    blocker = await asyncpg.connect(dsn)
    try:
        async with security.channel(f"127.0.0.1:{handle.port}") as channel:
            client = Client(channel)
            await client.create(account("@cash"), *(account(f"c{n}/d") for n in range(50)))
            # Hold the lease row: the writer's commit waits, so requests pile up in its queue.
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute("SELECT * FROM writer_lease FOR UPDATE")
            calls = [
                asyncio.ensure_future(client.post(transfer(f"t{n}", "@cash", f"c{n}/d", 1)))
                for n in range(50)
            ]
            writer = handle.node.writer
            assert writer is not None
            for _ in range(200):  # until some requests wait in the queue, behind the commit
                if writer.queue.qsize() > 0:
                    break
                await asyncio.sleep(0.01)
            queued = writer.queue.qsize()
            assert queued > 0
            stopping = asyncio.ensure_future(handle.stop())
            await asyncio.sleep(0.2)
            await transaction.rollback()  # the commit proceeds; the drain must finish the queue
            await stopping
            results = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await blocker.close()
    answered = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    # Everything that reached the node is answered CREATED; only calls the stopping server
    # never took (they had not arrived, say on a loaded machine) are refused, and those are
    # not applied: the stored transactions are exactly the answered ones.
    assert len(answered) >= queued + 1, (len(answered), queued)
    assert {r[0].code for r in answered} == {pb.RESULT_CODE_CREATED}
    refusals = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert all(e.code() in refusals for e in refused), [e.code() for e in refused[:3]]
    connection = await asyncpg.connect(dsn)
    try:
        stored = await connection.fetchval("SELECT count(*) FROM transactions")
    finally:
        await connection.close()
    assert stored == len(answered)
    assert await audit_problems(dsn) == []


async def test_standby_serves_reads_but_refuses_writes(node, dsn: str) -> None:
    async with security.channel(f"127.0.0.1:{node.port}") as channel:
        await Client(channel).create(account("@cash"))
    from shards.node.server import Node, NodeConfig

    standby = Node(
        NodeConfig(
            dsn=dsn,
            listen="127.0.0.1:0",
            security=security.server_security(),
            durability="single-server",
        )
    )
    port = await standby.start()
    task = asyncio.create_task(standby.run())
    try:
        async with security.channel(f"127.0.0.1:{port}") as channel:
            client = Client(channel)
            assert (await client.account("@cash")).account.id == "@cash"
            health = health_pb2_grpc.HealthStub(channel)
            status = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
            try:
                await client.create(account("other"))
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                assert "standby" in (error.details() or "")
            else:
                raise AssertionError("a standby accepted a write")
    finally:
        standby.request_stop()
        await asyncio.wait_for(task, timeout=30)


@contextlib.asynccontextmanager
async def _writer_stalled(dsn: str) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Another session holds the lease row, so the writer's next commit waits; yields the
    release (also done on leaving the block)."""
    import asyncpg

    blocker = await asyncpg.connect(dsn)
    transaction = blocker.transaction()
    await transaction.start()
    await blocker.execute("SELECT * FROM writer_lease FOR UPDATE")
    released = False

    async def release() -> None:
        nonlocal released
        if not released:
            released = True
            await transaction.rollback()

    try:
        yield release
    finally:
        await release()
        await blocker.close()


async def _spaced(client: Client, messages: list[pb.Transaction]) -> list[asyncio.Future[Any]]:
    """Each message posted in its own call, 50 ms apart, not awaited."""
    calls = []
    for message in messages:
        calls.append(asyncio.ensure_future(client.post(message)))
        await asyncio.sleep(0.05)
    return calls


async def test_full_queue_pushes_back(dsn: str) -> None:

    handle = await start_node(dsn, writer=WriterConfig(queue_request_count_max=2))
    try:
        async with security.channel(f"127.0.0.1:{handle.port}") as channel:
            client = Client(channel)
            await client.create(account("@cash"), account("c/d"))
            async with _writer_stalled(dsn) as release:  # so its queue fills up
                calls = await _spaced(
                    client, [transfer(f"t{n}", "@cash", "c/d", 1) for n in range(8)]
                )
                await release()
            results = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await handle.stop()
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    accepted = [r for r in results if not isinstance(r, BaseException)]
    assert refused and all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
    assert accepted and all(r[0].code == pb.RESULT_CODE_CREATED for r in accepted)
    assert len(refused) + len(accepted) == 8


async def test_queue_is_bounded_in_bytes_too(dsn: str) -> None:
    """Before (issue 12): bounded in requests only, so a few thousand requests of 16 MiB each
    could queue. Now the bytes of the requests waiting for the writer are bounded too: past
    the bound one more is RESOURCE_EXHAUSTED saying so, and the bytes are counted until the
    writer answers (then released)."""

    metadata = {f"k{n:02d}" + "x" * 60: "v" * 256 for n in range(16)}

    def big(n: int) -> pb.Transaction:
        return pb.Transaction(
            id=f"big{n}",
            code=1,
            legs=[leg("@cash", DEBIT, 1), leg("c/d", CREDIT, 1)],
            metadata=metadata,
        )

    size_bytes = pb.PostTransactionsRequest(transactions=[big(0)]).ByteSize()
    bound_bytes = 3 * size_bytes + size_bytes // 2  # three requests fit, not four
    handle = await start_node(dsn, writer=WriterConfig(queue_size_max_bytes=bound_bytes))
    try:
        async with security.channel(f"127.0.0.1:{handle.port}") as channel:
            client = Client(channel)
            await client.create(account("@cash"), account("c/d"))
            async with _writer_stalled(dsn) as release:  # so requests pile up
                calls = await _spaced(client, [big(n) for n in range(8)])
                await asyncio.sleep(0.3)
                writer = handle.node.writer
                assert writer is not None
                assert writer.pending_size_bytes == 3 * size_bytes
                await release()
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert writer.pending_size_bytes == 0
    finally:
        await handle.stop()
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    accepted = [r for r in results if not isinstance(r, BaseException)]
    assert len(accepted) == 3 and all(r[0].code == pb.RESULT_CODE_CREATED for r in accepted)
    assert len(refused) == 5
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"at most {bound_bytes} bytes" in (error.details() or ""), error.details()


async def test_lost_lease_session_is_taken_back_when_nobody_took_over(node, channel) -> None:
    import asyncpg

    client = Client(channel)
    await client.create(account("@cash"), account("c/d"))
    connection = await asyncpg.connect(node.dsn)
    try:
        epoch = await connection.fetchval("SELECT epoch FROM writer_lease")
        lease_pid = await connection.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        )
        assert await connection.fetchval("SELECT pg_terminate_backend($1, 5000)", lease_pid)
        for _ in range(100):
            holder = await connection.fetchval(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            )
            if holder is not None and holder != lease_pid:
                break
            await asyncio.sleep(0.05)
        assert holder is not None and holder != lease_pid
        assert await connection.fetchval("SELECT epoch FROM writer_lease") == epoch
    finally:
        await connection.close()
    assert await client.codes(transfer("after", "@cash", "c/d", 1)) == [pb.RESULT_CODE_CREATED]
    assert not node.node.fenced


async def test_a_stop_asked_before_the_writer_runs_stops_the_node(dsn: str) -> None:
    """The lease is taken at start, so a SIGTERM that arrives right after the serving line (before
    run() has made the writer) must still stop the node, not leave its writer running."""
    from shards.node.server import Node, NodeConfig
    from tests.support import security

    node = Node(
        NodeConfig(
            dsn=dsn,
            listen="127.0.0.1:0",
            security=security.server_security(),
            durability="single-server",
        )
    )
    await node.start()
    node.request_stop()
    await asyncio.wait_for(node.run(), timeout=30)
    assert node.writer is None or node.writer.state.name != "RUNNING"
