"""Reads while the node's PostgreSQL is away: a retryable gRPC code, never UNKNOWN.

A node on a PostgreSQL of its own, which the test stops under it (as a crashed `tally up`
PostgreSQL is): every read answers UNAVAILABLE saying the storage is unreachable, and once
PostgreSQL is back the same reads answer again. A read the storage does not answer in time (a
table held locked) is DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from core.authority import Role
from shards.local.embedded_pg import EmbeddedPostgres, EmbeddedPostgresConfig, free_port
from shards.security.credentials import aio_channel
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.helpers import Client, account, names, start_node, transfer
from tests.support.processes import connected, running_node

CREATED = "RESULT_CODE_CREATED"
RECOVERY_TIMEOUT_S = 20.0


@pytest.fixture
def own_pg() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own, which it may stop and start. Not under pytest's
    temporary root (see the session fixture in conftest.py)."""
    root = Path(tempfile.mkdtemp(prefix="tally-test-own-pg-"))
    server = EmbeddedPostgres(EmbeddedPostgresConfig(data_dir=root / "data", port=free_port()))
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def reads(client: Client) -> dict[str, Callable[[], Awaitable[Any]]]:
    stub = client.stub
    return {
        "GetAccounts": lambda: stub.GetAccounts(pb.GetAccountsRequest(ids=["c1/dep"]), timeout=15),
        "GetTransactions": lambda: stub.GetTransactions(
            pb.GetTransactionsRequest(ids=["t-1"]), timeout=15
        ),
        "ListPostings": lambda: stub.ListPostings(
            pb.ListPostingsRequest(account_id="c1/dep"), timeout=15
        ),
        "BalanceAt": lambda: stub.BalanceAt(
            pb.BalanceAtRequest(account_id="c1/dep", at_ns=time.time_ns()), timeout=15
        ),
    }


async def refused_code(call: Callable[[], Awaitable[Any]]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call()
    return refused.value.code(), refused.value.details() or ""


async def test_reads_answer_unavailable_while_the_nodes_postgresql_is_down(
    own_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """Stop the node's PostgreSQL: each read, twice (a pooled connection that died, then a
    refused connect), is UNAVAILABLE naming the storage; so is a scoped poster's void, whose
    hold the node must read to check the caller's scope. Start PostgreSQL again: reads answer."""
    await own_pg.create_database_async("shard")
    dsn = own_pg.dsn("shard")
    async with running_node(dsn, tmp_path, "node") as node, connected(node) as client:
        created = await client.create(account("@bank"), account("c1/dep"))
        assert names(created) == [CREATED, CREATED]
        (hold,) = await client.post(
            transfer("t-1", "@bank", "c1/dep", 10, pending=True, timeout_seconds=3600)
        )
        assert names([hold.code]) == [CREATED]
        for read in reads(client).values():
            await read()  # every read works, and the read pool holds open connections
        scoped = security.identity([Role.POSTER], ["c1/*", "@bank"], name="scoped-poster")
        void = pb.PostTransactionsRequest(
            transactions=[pb.Transaction(id="v-1", void_pending_id="t-1", code=1)]
        )

        await asyncio.to_thread(own_pg.stop, "immediate")
        for _ in range(2):
            for rpc, read in reads(client).items():
                code, details = await refused_code(read)
                assert code == grpc.StatusCode.UNAVAILABLE, (rpc, code, details)
                assert "storage" in details and "unreachable" in details, (rpc, details)
        async with aio_channel(node.target, scoped) as channel:
            stub = Client(channel).stub
            code, details = await refused_code(lambda: stub.PostTransactions(void, timeout=15))
            assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
            assert "storage" in details, details

        await asyncio.to_thread(own_pg.start)
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        for rpc, read in reads(client).items():
            while True:
                try:
                    await read()
                    break
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, (rpc, error)
                    assert time.monotonic() < deadline, (rpc, error, node.describe())
                    await asyncio.sleep(0.2)
        assert (await client.balance("c1/dep")).credits_pending == 10


async def test_a_read_the_storage_does_not_answer_in_time_is_deadline_exceeded(dsn: str) -> None:
    """A session holds the accounts table locked: GetAccounts waits for it past the node's read
    timeout and answers DEADLINE_EXCEEDED; once the lock goes the same read answers."""
    handle = await start_node(dsn, read_timeout_s=0.5)
    try:
        async with security.channel(handle.target) as channel:
            client = Client(channel)
            assert names(await client.create(account("c1/dep"))) == [CREATED]
            locker = await asyncpg.connect(dsn, timeout=30.0)
            try:
                transaction = locker.transaction()
                await transaction.start()
                await locker.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
                code, details = await refused_code(reads(client)["GetAccounts"])
                assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
                assert "storage" in details and "0.5" in details, details
                await transaction.rollback()
            finally:
                await locker.close(timeout=5.0)
            assert (await client.account("c1/dep")).account.id == "c1/dep"
    finally:
        await handle.stop()
