"""Every server caps the RPCs it serves at once (--rpc-concurrency-max): at its limit one more
RPC is refused at once with RESOURCE_EXHAUSTED, neither queued without bound nor crashing the
server, which serves again as soon as a place frees (issue 12: no server set
maximum_concurrent_rpcs). Each test holds one RPC in flight by a real means (the writer's batch
wait, directly or under the gateway, a table lock the audit waits for) and asks for health
meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shards.audit.server import AuditServer, AuditServiceConfig
from shards.local.embedded_pg import EmbeddedPostgres
from shards.node.writer import WriterConfig
from shards.rpc.serving import RPC_CONCURRENCY_MAX_MESSAGE
from tally.v1 import audit_pb2 as apb
from tally.v1 import audit_pb2_grpc as apb_grpc
from tests.support import security
from tests.support.helpers import Client, account, in_process_cluster, names, start_node

HOLD_MS = 3000
SERVING = health_pb2.HealthCheckResponse.SERVING


async def _health(channel: grpc.aio.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    return int(response.status)


async def _refusal_while(held: asyncio.Future[object], channel: grpc.aio.Channel) -> str:
    """Ask for health while `held` runs: the first refusal's code and details ("" if none).
    The held call leaves first (else a health check could take the one place before it)."""
    await asyncio.sleep(0.3)
    while not held.done():
        try:
            await _health(channel)
        except grpc.aio.AioRpcError as error:
            return f"{error.code().name}: {error.details()}"
        await asyncio.sleep(0.05)
    return ""


async def test_a_node_at_its_limit_refuses_with_resource_exhausted(dsn: str) -> None:
    writer = WriterConfig(batch_wait_ms=HOLD_MS)
    handle = await start_node(dsn, writer=writer, rpc_concurrency_max=1)
    try:
        async with security.channel(handle.target) as channel:
            assert await _health(channel) == SERVING
            held = asyncio.ensure_future(Client(channel).create(account("c1/dep")))
            refusal = await _refusal_while(held, channel)
            assert refusal == f"RESOURCE_EXHAUSTED: {RPC_CONCURRENCY_MAX_MESSAGE}"
            assert names(await held) == ["RESULT_CODE_CREATED"]
            assert await _health(channel) == SERVING  # a freed place serves again
    finally:
        await handle.stop()


async def test_a_gateway_at_its_limit_refuses_with_resource_exhausted(
    pg: EmbeddedPostgres,
) -> None:
    prefix = f"rpclimit{os.getpid()}_{time.time_ns()}"
    # The gateway's call to the shard is held by the node's writer (its batch wait).
    options = {"rpc_concurrency_max": 1}
    writer = WriterConfig(batch_wait_ms=HOLD_MS)
    async with (
        in_process_cluster(pg, prefix, 2, gateway_options=options, writer=writer) as cluster,
        security.channel(cluster.target) as channel,
    ):
        assert await _health(channel) == SERVING
        held = asyncio.ensure_future(Client(channel).create(account("c1/dep")))
        refusal = await _refusal_while(held, channel)
        assert refusal == f"RESOURCE_EXHAUSTED: {RPC_CONCURRENCY_MAX_MESSAGE}"
        assert names(await held) == ["RESULT_CODE_CREATED"]
        assert await _health(channel) == SERVING


@contextlib.asynccontextmanager
async def _journal_locked(dsn: str) -> AsyncIterator[None]:
    """journal_blocks locked against every reader until the block ends."""
    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction():
            await connection.execute("LOCK TABLE journal_blocks IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await connection.close()


async def test_an_audit_server_at_its_limit_refuses_with_resource_exhausted(dsn: str) -> None:
    handle = await start_node(dsn)  # a shard database with its schema and a journal
    await handle.stop()
    config = AuditServiceConfig(
        dsns=(dsn,),
        listen="127.0.0.1:0",
        security=security.server_security(),
        rpc_concurrency_max=1,
    )
    server = AuditServer(config)
    port = await server.start()
    task = asyncio.create_task(server.run())
    try:
        async with security.channel(f"127.0.0.1:{port}") as channel:
            assert await _health(channel) == SERVING
            stub = apb_grpc.AuditStub(channel)
            async with _journal_locked(dsn):
                held = asyncio.ensure_future(stub.RunAudit(apb.RunAuditRequest(), timeout=60))
                refusal = await asyncio.wait_for(_refusal_while(held, channel), timeout=30)
            assert refusal == f"RESOURCE_EXHAUSTED: {RPC_CONCURRENCY_MAX_MESSAGE}"
            report = await held
            assert report.ok, list(report.findings)
            assert await _health(channel) == SERVING
    finally:
        server.request_stop()
        await asyncio.wait_for(task, timeout=30)


async def test_every_server_command_takes_the_flag() -> None:
    from shards.cli.main import build_parser

    parser = build_parser()
    for argv in (
        ["node", "--dsn", "postgresql://x/y"],
        ["up"],
        ["gateway", "--control-dsn", "postgresql://x/y"],
        ["audit-serve"],
    ):
        assert parser.parse_args([*argv, "--rpc-concurrency-max", "7"]).rpc_concurrency_max == 7
        assert parser.parse_args(argv).rpc_concurrency_max == 1000
