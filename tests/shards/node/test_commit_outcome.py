"""A commit whose answer is lost may have landed: its items are OUTCOME_UNKNOWN, never UNAVAILABLE.

The node runs on a PostgreSQL of this test's own, with WAL senders, so the test can name a
synchronous standby that never connects: every COMMIT then waits in the server (wait event
`SyncRep`) after its commit record is durable locally, where a real commit waits for its disk
or its replica. Terminating that backend (as an administrator, a crash of the link or a
failover would) or the writer's commit timeout ends the wait; PostgreSQL keeps the local commit
("The transaction has already committed locally") and the writer never hears it. So the item
is applied while the writer's COMMIT failed: the client must hear OUTCOME_UNKNOWN, and its
retry with the same id REPLAYED, applied once. A failure before COMMIT was sent (a statement
timing out on a locked table) is UNAVAILABLE, and then nothing was applied.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest

from shards.local.embedded_pg import EmbeddedPostgres, EmbeddedPostgresConfig, free_port
from shards.node.writer import WriterConfig
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.helpers import Client, NodeHandle, account, audit_problems, start_node, transfer

WAIT_S = 20.0
ABSENT_STANDBY = "tally_absent_standby"


@pytest.fixture
def replicating_pg() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own that may name a synchronous standby (which changes the
    whole server, so not the session's shared one)."""
    root = Path(tempfile.mkdtemp(prefix="tally-test-syncrep-"))
    server = EmbeddedPostgres(
        EmbeddedPostgresConfig(
            data_dir=root / "data",
            port=free_port(),
            settings={"wal_level": "replica", "max_wal_senders": "2"},
        )
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


class Storage:
    """The test's administrator connection to the node's PostgreSQL (from another database)."""

    def __init__(self, connection: asyncpg.Connection, dsn: str) -> None:
        self.connection = connection
        self.dsn = dsn

    async def hold_commits(self, held: bool) -> None:
        """Make every COMMIT wait for a standby that never comes (held), or stop waiting."""
        names = ABSENT_STANDBY if held else ""
        await self.connection.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{names}'")
        await self.connection.execute("SELECT pg_reload_conf()")
        await self._until_probe_commits(waiting=held)

    async def _until_probe_commits(self, waiting: bool) -> None:
        """The reload reaches the backends asynchronously: commit probe rows until one waits
        for the standby (or until one does not); a probe left waiting is let go by a cancel
        (its row stays committed locally)."""
        probe = await asyncpg.connect(self.dsn)
        try:
            for _ in range(int(WAIT_S / 0.1)):
                insert = asyncio.ensure_future(probe.execute("INSERT INTO probe VALUES (1)"))
                done, _ = await asyncio.wait({insert}, timeout=0.5)
                waited = not done
                if waited:
                    pid = probe.get_server_pid()
                    await self.connection.execute("SELECT pg_cancel_backend($1)", pid)
                try:
                    await insert
                except asyncpg.QueryCanceledError:
                    pass
                if waited == waiting:
                    return
                await asyncio.sleep(0.1)
        finally:
            await probe.close()
        raise AssertionError(f"commits never {'waited' if waiting else 'stopped waiting'}")

    async def waiting_commit_pid(self, database: str) -> int:
        """The backend of `database` whose COMMIT waits for the standby (the writer's)."""
        for _ in range(int(WAIT_S / 0.05)):
            pid = await self.connection.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND wait_event = 'SyncRep'",
                database,
            )
            if pid is not None:
                return int(pid)
            await asyncio.sleep(0.05)
        raise AssertionError("no commit of the node waited for the standby")

    async def recorded_soon(self, shard_dsn: str, transaction_id: str) -> int:
        """recorded(), once it is not 0 (or 0 after WAIT_S)."""
        for _ in range(int(WAIT_S / 0.1)):
            count = await self.recorded(shard_dsn, transaction_id)
            if count:
                return count
            await asyncio.sleep(0.1)
        return 0

    async def recorded(self, shard_dsn: str, transaction_id: str) -> int:
        """How many times the transaction is in the shard's journal, read by SQL."""
        shard = await asyncpg.connect(shard_dsn)
        try:
            count = await shard.fetchval(
                "SELECT count(*) FROM transactions WHERE id = $1", transaction_id
            )
            return int(count)
        finally:
            await shard.close()


@pytest.fixture
async def storage(replicating_pg: EmbeddedPostgres) -> AsyncIterator[Storage]:
    await replicating_pg.create_database_async("shard")
    await replicating_pg.create_database_async("scratch")
    dsn = replicating_pg.dsn("scratch")
    connection = await asyncpg.connect(dsn)
    await connection.execute("CREATE TABLE probe (n int)")  # while commits do not wait
    storage = Storage(connection, dsn)
    try:
        yield storage
    finally:
        await storage.hold_commits(False)
        await connection.close()


async def _node(pg: EmbeddedPostgres, commit_timeout_s: float) -> NodeHandle:
    return await start_node(pg.dsn("shard"), writer=WriterConfig(commit_timeout_s=commit_timeout_s))


async def _funded(client: Client) -> None:
    created = await client.create(account("@bank"), account("c1/dep"))
    assert created == [pb.RESULT_CODE_CREATED] * 2


def _outcome_unknown(results: list[pb.ItemResult]) -> None:
    assert [r.code for r in results] == [pb.RESULT_CODE_OUTCOME_UNKNOWN], results
    assert "retry with the same id" in results[0].message


async def _retry_replays(client: Client, storage: Storage, dsn: str) -> None:
    """Once commits flow again, the same id answers REPLAYED: applied once, not twice."""
    await storage.hold_commits(False)
    (again,) = await client.post(transfer("t-1", "@bank", "c1/dep", 100))
    assert again.code == pb.RESULT_CODE_REPLAYED, again
    assert (await client.balance("c1/dep")).credits_posted == 100
    assert await storage.recorded(dsn, "t-1") == 1
    assert await audit_problems(dsn) == []


async def test_a_commit_whose_connection_is_lost_in_flight_is_outcome_unknown(
    replicating_pg: EmbeddedPostgres, storage: Storage
) -> None:
    """The writer's backend is terminated while its COMMIT waits: the commit landed, and the
    client hears OUTCOME_UNKNOWN (it heard UNAVAILABLE, "nothing was applied", before)."""
    node = await _node(replicating_pg, commit_timeout_s=30.0)
    try:
        async with security.channel(node.target) as channel:
            client = Client(channel)
            await _funded(client)
            await storage.hold_commits(True)
            post = asyncio.ensure_future(client.post(transfer("t-1", "@bank", "c1/dep", 100)))
            pid = await storage.waiting_commit_pid("shard")
            await storage.connection.execute("SELECT pg_terminate_backend($1)", pid)
            _outcome_unknown(await post)
            assert await storage.recorded(node.dsn, "t-1") == 1  # landed all the same
            assert node.node.writer is not None
            assert node.node.writer.commit_outcome_unknown_count == 1
            assert node.node.writer.commit_failed_count == 0
            await _retry_replays(client, storage, node.dsn)
    finally:
        await node.stop()


async def test_a_commit_that_times_out_in_flight_is_outcome_unknown(
    replicating_pg: EmbeddedPostgres, storage: Storage
) -> None:
    """The writer's commit timeout passes while its COMMIT waits: the commit landed, and the
    client hears OUTCOME_UNKNOWN (before, COMMIT had no timeout and the client waited for as
    long as the server did: here, past its own deadline)."""
    node = await _node(replicating_pg, commit_timeout_s=1.0)
    try:
        async with security.channel(node.target) as channel:
            client = Client(channel)
            await _funded(client)
            await storage.hold_commits(True)
            try:
                results = await client.post(transfer("t-1", "@bank", "c1/dep", 100))
            except grpc.aio.AioRpcError as error:
                raise AssertionError(f"the client was not answered: {error.code()}") from error
            _outcome_unknown(results)
            # Landed all the same, with commits still held: the writer's recovery ends the
            # old backend, which keeps its local commit.
            assert await storage.recorded_soon(node.dsn, "t-1") == 1
            await _retry_replays(client, storage, node.dsn)
    finally:
        await node.stop()


async def test_a_commit_failing_before_commit_is_sent_is_unavailable_and_not_applied(
    replicating_pg: EmbeddedPostgres, storage: Storage
) -> None:
    """A statement of the batch times out on a table another session holds locked: COMMIT is
    never sent, the client hears UNAVAILABLE and nothing was applied; the retry creates it."""
    node = await _node(replicating_pg, commit_timeout_s=1.0)
    locker = await asyncpg.connect(node.dsn)
    try:
        async with security.channel(node.target) as channel:
            client = Client(channel)
            await _funded(client)
            locking = locker.transaction()
            await locking.start()
            await locker.execute("LOCK TABLE journal_blocks IN EXCLUSIVE MODE")  # reads pass
            (refused,) = await client.post(transfer("t-1", "@bank", "c1/dep", 100))
            assert refused.code == pb.RESULT_CODE_UNAVAILABLE, refused
            await locking.rollback()
            assert await storage.recorded(node.dsn, "t-1") == 0
            assert node.node.writer is not None
            assert node.node.writer.commit_outcome_unknown_count == 0
            (created,) = await client.post(transfer("t-1", "@bank", "c1/dep", 100))
            assert created.code == pb.RESULT_CODE_CREATED, created
            assert (await client.balance("c1/dep")).credits_posted == 100
    finally:
        await locker.close()
        await node.stop()
