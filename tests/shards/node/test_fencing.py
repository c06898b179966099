"""The writer lease: one writer per shard database, standbys take over, zombies cannot commit.

A node takes the lease (advisory lock + epoch bump) before it writes, and every commit checks
the epoch inside its own database transaction. These tests run real node processes for the
standby and takeover paths, an in-process node for the epoch fence, and the store directly for
the commit-time check and its race with a new holder.

A node of a cluster registers as its shard's endpoint in the control database only once it
holds the lease, with its epoch: a standby never takes its shard's endpoint, and a registration
carrying an older epoch than the one recorded never overwrites it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from core.journal import BlockHeader
from core.model import AccountSpec
from core.state import Batch, JournalPosition
from core.store import control as control_store
from core.store import schema
from core.store import shard as store
from shards import control
from shards.cli.main import EXIT_FENCED
from shards.local import supervisor
from shards.local.embedded_pg import EmbeddedPostgres, free_port
from shards.node.server import EpochBehindError, Node, NodeConfig
from shards.node.writer import WriterState
from tally.v1 import ledger_pb2 as pb
from tests.support import helpers, security
from tests.support.cluster_processes import process_cluster
from tests.support.helpers import (
    Client,
    NodeHandle,
    account,
    audit_problems,
    name,
    names,
    start_node,
)
from tests.support.helpers import transfer as make_transfer
from tests.support.processes import (
    NOT_SERVING,
    SERVING,
    JournalBlocker,
    NodeProcess,
    connected,
    fetch_rows,
    health_status,
    running_node,
    spawn_cli,
    spawn_node,
    wait_health,
)

TAKEOVER_TIMEOUT_S = 15.0
CREATED = "RESULT_CODE_CREATED"
REPLAYED = "RESULT_CODE_REPLAYED"
UNAVAILABLE = "RESULT_CODE_UNAVAILABLE"


def transfer(transaction_id: str, amount: int = 10, **fields: Any) -> pb.Transaction:
    return make_transfer(transaction_id, "@bank", "c1/dep", amount, **fields)


async def set_up(client: Client) -> None:
    created = await client.create(account("@bank"), account("c1/dep", no_overdraft=True))
    assert names(created) == [CREATED, CREATED]


async def lease_row(dsn: str) -> asyncpg.Record:
    (row,) = await fetch_rows(
        dsn, "SELECT epoch, holder, last_block_sequence FROM writer_lease WHERE id = 1"
    )
    return row


async def present_ids(dsn: str, ids: list[str]) -> tuple[set[str], set[str]]:
    """(ids with a transactions row, ids with any posting)."""
    rows = await fetch_rows(dsn, "SELECT id FROM transactions WHERE id = ANY($1::text[])", ids)
    postings = await fetch_rows(
        dsn, "SELECT DISTINCT transaction_id FROM postings WHERE transaction_id = ANY($1)", ids
    )
    return {r["id"] for r in rows}, {r["transaction_id"] for r in postings}


async def post_refused(client: Client, *transactions: pb.Transaction) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.post(*transactions)
    return refused.value


async def replay_all(
    client: Client, acknowledged: dict[str, pb.ItemResult], sent: dict[str, pb.Transaction]
) -> None:
    results = await client.post(*(sent[i] for i in acknowledged))
    assert names([r.code for r in results]) == [REPLAYED] * len(acknowledged)
    assert [r.timestamp_ns for r in results] == [a.timestamp_ns for a in acknowledged.values()]


# ---- real processes: standby and takeover ----


async def test_standby_cannot_write_until_the_writer_dies_then_takes_over(
    pg: EmbeddedPostgres, dsn: str, tmp_path: Path
) -> None:
    """Node B on A's database stays a standby (NOT_SERVING, writes UNAVAILABLE, reads work)
    while A commits; kill -9 A and B takes the lease with a higher epoch, serves writes, and
    replays A's acknowledged transactions."""
    sent: dict[str, pb.Transaction] = {}
    acknowledged: dict[str, pb.ItemResult] = {}
    async with running_node(dsn, tmp_path, "a") as node_a, connected(node_a) as client_a:
        await set_up(client_a)
        first = [transfer(f"a-{n}", 10 + n) for n in range(20)]
        for transaction, result in zip(first, await client_a.post(*first), strict=True):
            assert name(result.code) == CREATED
            sent[transaction.id], acknowledged[transaction.id] = transaction, result
        lease_a = await lease_row(dsn)
        assert lease_a["holder"].endswith(f":{node_a.pid}")

        node_b = await spawn_node(dsn, tmp_path, "b")
        try:
            async with connected(node_b) as client_b:
                refused = await post_refused(client_b, transfer("b-early"))
                assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
                assert "standby" in (refused.details() or "")
                with pytest.raises(grpc.aio.AioRpcError) as refused_create:
                    await client_b.create(account("c2/dep"))
                assert refused_create.value.code() == grpc.StatusCode.UNAVAILABLE
                # A keeps committing while B polls for the lease (several poll intervals).
                for n in range(6):
                    transaction = transfer(f"a-late-{n}")
                    (result,) = await client_a.post(transaction)
                    assert name(result.code) == CREATED
                    sent[transaction.id], acknowledged[transaction.id] = transaction, result
                    assert await health_status(node_b.target) == NOT_SERVING
                    await asyncio.sleep(0.2)
                # Reads are served by a standby, and see A's commits.
                balance_b = await client_b.balance("c1/dep")
                assert balance_b == await client_a.balance("c1/dep")
                assert balance_b.credits_posted == sum(10 + n for n in range(20)) + 6 * 10
                lease_now = await lease_row(dsn)
                assert (lease_now["epoch"], lease_now["holder"]) == (
                    lease_a["epoch"],
                    lease_a["holder"],
                )
                assert await present_ids(dsn, ["b-early"]) == (set(), set())

                await node_a.kill()
                takeover_s = await wait_health(node_b, SERVING, TAKEOVER_TIMEOUT_S)
                assert takeover_s < TAKEOVER_TIMEOUT_S

                lease_b = await lease_row(dsn)
                assert lease_b["epoch"] > lease_a["epoch"]
                assert lease_b["holder"].endswith(f":{node_b.pid}")
                results = await client_b.post(transfer("b-early"), transfer("b-1"))
                assert names([r.code for r in results]) == [CREATED, CREATED]
                await replay_all(client_b, acknowledged, sent)
                assert (await client_b.balance("c1/dep")).credits_posted == (
                    balance_b.credits_posted + 20
                )
        finally:
            await node_b.close()

    epochs = await fetch_rows(
        dsn, "SELECT epoch, count(*) AS blocks FROM journal_blocks GROUP BY epoch ORDER BY epoch"
    )
    assert [r["epoch"] for r in epochs] == [lease_a["epoch"], lease_b["epoch"]]
    assert await audit_problems(dsn) == []


async def _single_writer(nodes: list[NodeProcess], timeout_s: float) -> NodeProcess:
    """Wait until one node reports SERVING; the others must stay NOT_SERVING."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        statuses = [await health_status(n.target) for n in nodes]
        serving = [n for n, status in zip(nodes, statuses, strict=True) if status == SERVING]
        assert len(serving) <= 1, [n.describe() for n in serving]
        if serving:
            return serving[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no node became the writer: " + nodes[0].describe())


async def test_nodes_started_together_elect_one_writer_and_hand_over_on_sigterm(
    pg: EmbeddedPostgres, dsn: str, tmp_path: Path
) -> None:
    """Three nodes start at once on a fresh database (migrations race): exactly one writes. A
    standby stops cleanly on SIGTERM without touching the lease; the writer drains, releases the
    lease and exits 0, and the remaining standby takes over with the next epoch."""
    nodes = list(await asyncio.gather(*(spawn_node(dsn, tmp_path, f"n{n}") for n in range(3))))
    try:
        writer = await _single_writer(nodes, TAKEOVER_TIMEOUT_S)
        standbys = [n for n in nodes if n is not writer]
        lease = await lease_row(dsn)
        assert (lease["epoch"], lease["holder"].endswith(f":{writer.pid}")) == (1, True)
        async with connected(writer) as client:
            await set_up(client)
            (first,) = await client.post(transfer("first"))
            assert name(first.code) == CREATED
        for _ in range(10):  # several lease poll intervals: the standbys stay standbys
            assert [await health_status(n.target) for n in standbys] == [NOT_SERVING] * 2
            await asyncio.sleep(0.1)

        assert await standbys[0].terminate() == 0, standbys[0].describe()
        assert (await lease_row(dsn))["epoch"] == 1
        assert await writer.terminate() == 0, writer.describe()
        successor = standbys[1]
        await wait_health(successor, SERVING, TAKEOVER_TIMEOUT_S)
        lease = await lease_row(dsn)
        assert (lease["epoch"], lease["holder"].endswith(f":{successor.pid}")) == (2, True)
        async with connected(successor) as client:
            (replayed,) = await client.post(transfer("first"))
            assert (name(replayed.code), replayed.timestamp_ns) == (REPLAYED, first.timestamp_ns)
            (second,) = await client.post(transfer("second"))
            assert name(second.code) == CREATED
        assert await successor.terminate() == 0, successor.describe()
        held = await fetch_rows(
            dsn,
            """
            SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database
            WHERE l.locktype = 'advisory' AND d.datname = current_database()
            """,
        )
        assert held == []
    finally:
        for node in nodes:
            await node.close()
    assert await audit_problems(dsn) == []


async def _lease_session_pid(dsn: str) -> int:
    rows = await fetch_rows(
        dsn,
        """
        SELECT pid FROM pg_locks
        WHERE locktype = 'advisory' AND granted AND database = (
            SELECT oid FROM pg_database WHERE datname = current_database()
        ) AND ((classid::bigint << 32) | objid::bigint) = $1
        """,
        schema.WRITER_LEASE_LOCK_KEY,
    )
    assert len(rows) == 1, rows
    pid: int = rows[0]["pid"]
    return pid


async def test_writer_whose_lease_session_died_is_fenced_by_the_new_holder(
    pg: EmbeddedPostgres, dsn: str, tmp_path: Path
) -> None:
    """A zombie: A's lease session dies (as in a network partition) while its writer connection
    lives. Standby B takes the lease; A still believes it is the writer, but its next batch is
    refused by the epoch check (items UNAVAILABLE, nothing written) and A exits with
    EXIT_FENCED. B then applies the same items.

    A is paused (SIGSTOP) while its lease session is cut and B takes over, as a partitioned or
    stalled writer would be: a running A notices the lost session at once and rightly takes
    the lock back while the epoch is still its own, and B would then wait forever."""
    async with running_node(dsn, tmp_path, "a") as node_a, connected(node_a) as client_a:
        await set_up(client_a)
        (before,) = await client_a.post(transfer("before"))
        assert name(before.code) == CREATED
        async with running_node(dsn, tmp_path, "b", wait_writer=False) as node_b:
            assert await health_status(node_b.target) == NOT_SERVING
            lease_session = await _lease_session_pid(dsn)
            node_a.process.send_signal(signal.SIGSTOP)
            try:
                terminated = await fetch_rows(
                    dsn, "SELECT pg_terminate_backend($1, 5000) AS ok", lease_session
                )
                assert terminated[0]["ok"]
                await wait_health(node_b, SERVING, TAKEOVER_TIMEOUT_S)
            finally:
                node_a.process.send_signal(signal.SIGCONT)
            lease_b = await lease_row(dsn)
            assert lease_b["holder"].endswith(f":{node_b.pid}")

            zombie_batch = [transfer("z-1", linked=True), transfer("z-2"), transfer("z-3", 5)]
            # A either still answers (each item UNAVAILABLE: the epoch check refuses the
            # commit) or has already noticed, through its lease watch, that the lease moved on
            # and stopped (the RPC fails UNAVAILABLE, or CANCELLED when it reached A's server as
            # it stopped: gRPC's own answer, grpc/grpc#41785). Either way nothing of it is written.
            try:
                results = await client_a.post(*zombie_batch)
            except grpc.aio.AioRpcError as error:
                assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            else:
                assert names([r.code for r in results]) == [UNAVAILABLE] * 3, results
            assert await present_ids(dsn, ["z-1", "z-2", "z-3"]) == (set(), set())
            exit_code = await asyncio.wait_for(node_a.process.wait(), timeout=20)
            assert exit_code == EXIT_FENCED, node_a.describe()

            async with connected(node_b) as client_b:
                results = await client_b.post(*zombie_batch)
                assert names([r.code for r in results]) == [CREATED] * 3
                (replayed,) = await client_b.post(transfer("before"))
                assert name(replayed.code) == REPLAYED
                assert replayed.timestamp_ns == before.timestamp_ns
    assert await audit_problems(dsn) == []


# ---- in process: the epoch fence on a running node ----


async def test_node_stops_when_its_epoch_is_taken(node: NodeHandle, channel: object) -> None:
    """Bump writer_lease.epoch under a running node (what a new holder does): its next batch is
    not committed (items UNAVAILABLE, no rows), the node stops as fenced and refuses RPCs, and a
    successor on the same database takes over and applies the same batch."""
    client = Client(channel)
    dsn = node.dsn
    await set_up(client)
    (before,) = await client.post(transfer("before"))
    assert name(before.code) == CREATED
    blocks_before = await fetch_rows(dsn, "SELECT count(*) AS n FROM journal_blocks")
    connection = await asyncpg.connect(dsn, timeout=30.0)
    try:
        epoch = await connection.fetchval(
            "UPDATE writer_lease SET epoch = epoch + 1, holder = 'usurper' RETURNING epoch"
        )
    finally:
        await connection.close(timeout=5.0)
    batch = [
        transfer("z-1", linked=True),
        transfer("z-2"),
        transfer("z-3", pending=True, timeout_seconds=60),
    ]
    results = await client.post(*batch)
    assert names([r.code for r in results]) == [UNAVAILABLE] * 3
    assert all("lease" in r.message for r in results), results
    ids = [t.id for t in batch]
    assert await present_ids(dsn, ids) == (set(), set())
    assert await fetch_rows(dsn, "SELECT 1 FROM holds WHERE transaction_id = 'z-3'") == []
    assert await fetch_rows(dsn, "SELECT count(*) AS n FROM journal_blocks") == blocks_before
    assert (await lease_row(dsn))["epoch"] == epoch

    await asyncio.wait_for(asyncio.shield(node.task), timeout=20)
    assert node.task.exception() is None
    assert node.node.fenced
    assert node.node.writer is not None and node.node.writer.state is WriterState.FENCED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.post(transfer("after"))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    successor = await start_node(dsn)
    try:
        assert successor.node.writer is not None and successor.node.writer.epoch == epoch + 1
        async with security.channel(f"127.0.0.1:{successor.port}") as successor_channel:
            successor_client = Client(successor_channel)
            results = await successor_client.post(*batch)
            assert names([r.code for r in results]) == [CREATED] * 3
            (replayed,) = await successor_client.post(transfer("before"))
            assert name(replayed.code) == REPLAYED
            assert replayed.timestamp_ns == before.timestamp_ns
    finally:
        await successor.stop()
    assert await audit_problems(dsn) == []


async def _taken_by_the_writer(node: NodeHandle, timeout_s: float = 10.0) -> None:
    """Until the next request reaches the writer's queue and the writer has taken it (however
    long the RPC takes to arrive on a busy machine), and a moment for it to be applied."""
    writer = node.node.writer
    assert writer is not None
    put = writer.queue.put_nowait
    queued = asyncio.Event()

    def recording(request: object) -> None:
        put(request)  # type: ignore[arg-type]
        queued.set()

    writer.queue.put_nowait = recording  # type: ignore[method-assign]
    try:
        await asyncio.wait_for(queued.wait(), timeout_s)
    finally:
        writer.queue.put_nowait = put  # type: ignore[method-assign]
    deadline = time.monotonic() + timeout_s
    while writer.queue.qsize() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)


async def _wait_for_waiting_query(dsn: str, prefix: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = await fetch_rows(
            dsn,
            """
            SELECT 1 FROM pg_stat_activity
            WHERE datname = current_database() AND wait_event_type = 'Lock'
              AND query LIKE $1 || '%'
            """,
            prefix,
        )
        if rows:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no session is waiting in {prefix!r}")


async def test_new_holder_waits_for_a_commit_in_progress_and_fences_the_next_batch(
    node: NodeHandle, channel: object
) -> None:
    """Batch k has passed its epoch check and is held at its last statement; batch k+1 queues
    behind it (applied on top of k). A new holder's epoch bump waits for k's commit rather than
    cutting under it: k commits and is CREATED, and nothing commits under the old epoch after
    the bump: k+1 is fenced (UNAVAILABLE, nothing written), or, should its epoch check have
    overtaken the bump, committed whole before it, and the next batch is fenced."""
    client = Client(channel)
    dsn = node.dsn
    await set_up(client)
    batch_k = [transfer("k-1", 11), transfer("k-2", 12, linked=True), transfer("k-3", 13)]
    batch_k1 = [transfer("k1-1", 21), transfer("k1-2", 22, pending=True)]
    holder = await asyncpg.connect(dsn, timeout=30.0)
    try:
        async with JournalBlocker(dsn) as blocker:
            post_k = asyncio.create_task(client.post(*batch_k))
            await blocker.wait_until_a_commit_waits()
            post_k1 = asyncio.create_task(client.post(*batch_k1))
            await _taken_by_the_writer(node)  # k+1 queued, then collected on top of k
            bump = asyncio.create_task(
                holder.fetchval(
                    "UPDATE writer_lease SET epoch = epoch + 1, holder = 'new' RETURNING epoch",
                    timeout=20.0,
                )
            )
            try:
                await _wait_for_waiting_query(dsn, "UPDATE writer_lease SET epoch")
                assert not post_k.done() and not post_k1.done()
                await blocker.release()
                new_epoch = await asyncio.wait_for(bump, timeout=10)
                results_k = await asyncio.wait_for(post_k, timeout=10)
                results_k1 = await asyncio.wait_for(post_k1, timeout=10)
            finally:
                for task in (post_k, post_k1, bump):
                    if not task.done():
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
    finally:
        await holder.close(timeout=5.0)
    assert names([r.code for r in results_k]) == [CREATED] * 3
    committed = {"k-1", "k-2", "k-3"}
    # A bump waiting on the lease row that k updated takes the row's newest version only after
    # k's commit, and k+1's epoch check can lock it first (seen once in a full suite): k+1 then
    # committed before the bump, which fences the batch after it.
    if names([r.code for r in results_k1]) == [CREATED] * 2:
        committed |= {"k1-1", "k1-2"}
        try:
            late = names([r.code for r in await client.post(transfer("k2-1", 31))])
        except grpc.aio.AioRpcError as error:  # the node saw the bump first, and stopped
            late = [error.code().name]
        assert late in ([UNAVAILABLE], ["UNAVAILABLE"]), late
    else:
        assert names([r.code for r in results_k1]) == [UNAVAILABLE] * 2
    rows, postings = await present_ids(dsn, [t.id for t in batch_k + batch_k1] + ["k2-1"])
    assert rows == postings == committed
    blocks = await fetch_rows(dsn, "SELECT DISTINCT epoch FROM journal_blocks")
    assert [r["epoch"] for r in blocks] == [new_epoch - 1]
    await asyncio.wait_for(asyncio.shield(node.task), timeout=20)
    assert node.node.fenced
    assert await audit_problems(dsn) == []


# ---- the store: the epoch check inside every commit ----


def _account_block(previous: BlockHeader, epoch: int, account_id: str) -> store.Block:
    spec = AccountSpec(account_id, "USD", 100, False, False, ())
    batch = Batch({account_id: None}, {}, JournalPosition(1, 0), time.time_ns())
    (results,) = batch.apply([[spec]])
    assert [r.code.name for r in results] == ["CREATED"]
    end = batch.position
    return store.build_block(
        batch.out, previous, epoch, end.next_posting_sequence, end.last_timestamp_ns, 1
    )


async def _table_counts(connection: asyncpg.Connection) -> tuple[int, int, int]:
    row = await connection.fetchrow(
        """
        SELECT (SELECT count(*) FROM accounts) AS accounts,
               (SELECT count(*) FROM journal_blocks) AS blocks,
               (SELECT last_block_sequence FROM writer_lease) AS last_block
        """
    )
    return (row["accounts"], row["blocks"], row["last_block"])


async def test_commit_block_refuses_any_epoch_but_the_current_one(dsn: str) -> None:
    connection = await asyncpg.connect(dsn, timeout=30.0)
    try:
        await store.migrate(connection)
        await connection.execute("UPDATE writer_lease SET epoch = 2")
        genesis = await store.last_block(connection, 10.0)
        for stale_epoch in (1, 3):
            block = _account_block(genesis, stale_epoch, "acct-1")
            with pytest.raises(store.FencedError):
                await store.commit_block(connection, block, 10.0)
            assert not connection.is_in_transaction()
            assert await _table_counts(connection) == (0, 0, 0)
        await store.commit_block(connection, _account_block(genesis, 2, "acct-1"), 10.0)
        assert await _table_counts(connection) == (1, 1, 1)
    finally:
        await connection.close(timeout=5.0)


@pytest.mark.parametrize("new_holder_commits", [True, False])
async def test_commit_racing_a_new_holder_waits_for_it(dsn: str, new_holder_commits: bool) -> None:
    """A zombie's commit that starts while a new holder's epoch bump is uncommitted waits on the
    lease row, then is fenced if the bump commits, or goes through if it rolls back."""
    zombie = await asyncpg.connect(dsn, timeout=30.0)
    holder = await asyncpg.connect(dsn, timeout=30.0)
    try:
        await store.migrate(zombie)
        await zombie.execute("UPDATE writer_lease SET epoch = 1")
        block = _account_block(await store.last_block(zombie, 10.0), 1, "acct-1")
        bump = holder.transaction()
        await bump.start()
        await holder.execute("UPDATE writer_lease SET epoch = epoch + 1 WHERE id = 1")
        commit = asyncio.create_task(store.commit_block(zombie, block, 10.0))
        try:
            await asyncio.sleep(0.3)
            assert not commit.done(), "the commit did not wait for the lease row"
            if new_holder_commits:
                await bump.commit()
                with pytest.raises(store.FencedError):
                    await asyncio.wait_for(commit, timeout=10)
                assert await _table_counts(zombie) == (0, 0, 0)
            else:
                await bump.rollback()
                await asyncio.wait_for(commit, timeout=10)
                assert await _table_counts(zombie) == (1, 1, 1)
        finally:
            if not commit.done():
                commit.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await commit
    finally:
        await holder.close(timeout=5.0)
        await zombie.close(timeout=5.0)


# ---- the control database: a shard's endpoint follows its lease ----


async def endpoint_row(control_dsn: str, shard_id: int) -> tuple[str, int] | None:
    rows = await fetch_rows(
        control_dsn, "SELECT endpoint, epoch FROM shards WHERE shard_id = $1", shard_id
    )
    return (rows[0]["endpoint"], rows[0]["epoch"]) if rows else None


async def control_database(pg: EmbeddedPostgres, dsn: str, shard_count: int = 1) -> str:
    """A fresh control database (named after the test's shard database), slot map made."""
    name = dsn.rsplit("/", 1)[1].split("?", 1)[0] + "_control"
    return await helpers.control_database(pg, name, shard_count)


async def post_until_created(client: Client, transaction: pb.Transaction) -> None:
    """Through a gateway that may still call the shard's old endpoint for a poll or two."""
    deadline = time.monotonic() + TAKEOVER_TIMEOUT_S
    while True:
        try:
            (result,) = await client.post(transaction)
            if name(result.code) in (CREATED, REPLAYED):
                return
            assert name(result.code) == UNAVAILABLE, result
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert time.monotonic() < deadline, f"{transaction.id} not created through the gateway"
        await asyncio.sleep(0.1)


async def test_a_standby_never_takes_its_shards_endpoint_the_next_writer_does(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """A one-shard cluster of processes (node, gateway) and a standby node started on the
    shard's database: the control database keeps the writer's endpoint and epoch, and writes
    through the gateway keep succeeding, for several of the gateway's polls. kill -9 the writer:
    the standby takes the lease, registers with the next epoch, and the gateway follows."""
    async with process_cluster(pg, tmp_path, shard_count=1) as cluster:
        writer, dsn, control_dsn = cluster.nodes[0], cluster.shard_dsns[0], cluster.control_dsn
        assert await endpoint_row(control_dsn, 0) == (writer.internal_target, 1)
        async with security.channel(cluster.target) as channel:
            client = Client(channel)
            await set_up(client)
            standby = await spawn_cli(
                ["node", "--shard-id", "0"],
                free_port(),
                dsn,
                tmp_path / "standby.stderr.log",
                supervisor.dsn_environment(dsn=dsn, control_dsn=control_dsn),
            )
            try:
                for n in range(6):  # the gateway polls the control database every second
                    assert await health_status(standby.target) == NOT_SERVING
                    assert await endpoint_row(control_dsn, 0) == (writer.internal_target, 1)
                    (result,) = await client.post(transfer(f"during-{n}"))
                    assert name(result.code) == CREATED, result
                    await asyncio.sleep(0.4)
                await cluster.kill_node(0)
                await wait_health(standby, SERVING, TAKEOVER_TIMEOUT_S)
                assert await endpoint_row(control_dsn, 0) == (standby.internal_target, 2)
                await post_until_created(client, transfer("after-takeover"))
            finally:
                await standby.close()
    assert await audit_problems(dsn) == []


async def test_a_registration_with_an_older_epoch_never_overwrites_a_newer_one(
    pg: EmbeddedPostgres, dsn: str
) -> None:
    control_dsn = await control_database(pg, dsn, 2)
    connection = await control.connect(control_dsn)
    try:
        assert await control_store.register_shard(connection, 0, "127.0.0.1:7001", 2) is None
        assert await control_store.register_shard(connection, 1, "127.0.0.1:7101", 1) is None
        # Shard 0's writer of epoch 1 (a zombie, or a stale standby) comes second: refused, and
        # told the epoch that beat it.
        assert await control_store.register_shard(connection, 0, "127.0.0.1:7002", 1) == 2
        assert await control_store.shard_endpoints(connection) == {
            0: "127.0.0.1:7001",
            1: "127.0.0.1:7101",
        }
        # The same epoch again (the same writer) and a newer one both take the endpoint.
        assert await control_store.register_shard(connection, 0, "127.0.0.1:7003", 2) is None
        assert await control_store.register_shard(connection, 0, "127.0.0.1:7004", 3) is None
    finally:
        await connection.close(timeout=5.0)
    assert await endpoint_row(control_dsn, 0) == ("127.0.0.1:7004", 3)
    assert await endpoint_row(control_dsn, 1) == ("127.0.0.1:7101", 1)


async def test_the_control_migration_keeps_the_endpoints_registered_before_it(
    pg: EmbeddedPostgres, dsn: str
) -> None:
    """A control database of the first schema (endpoints without epochs): migrated in place,
    its rows kept at epoch 0, which any writer's registration then overwrites."""
    name_ = dsn.rsplit("/", 1)[1].split("?", 1)[0] + "_old_control"
    await pg.create_database_async(name_)
    connection = await control.connect(pg.dsn(name_))
    try:
        await store.migrate(connection, schema.CONTROL_MIGRATIONS[:1])
        await connection.execute("INSERT INTO shards (shard_id, endpoint) VALUES (0, 'old:1')")
        await control_store.prepare(connection)
        versions = await connection.fetch("SELECT version FROM tally_schema_migrations")
        every = [version for version, _, _ in schema.CONTROL_MIGRATIONS]
        assert sorted(r["version"] for r in versions) == every
        assert await endpoint_row(pg.dsn(name_), 0) == ("old:1", 0)
        assert await control_store.register_shard(connection, 0, "new:1", 1) is None
    finally:
        await connection.close(timeout=5.0)
    assert await endpoint_row(pg.dsn(name_), 0) == ("new:1", 1)


def _cluster_node(dsn: str, control_dsn: str) -> Node:
    return Node(
        NodeConfig(
            dsn=dsn,
            listen="127.0.0.1:0",
            control_dsn=control_dsn,
            shard_id=0,
            lease_poll_interval_s=0.1,
            security=security.server_security(),
            durability="single-server",
        )
    )


async def test_a_writer_behind_the_registered_epoch_never_registers_nor_serves(
    pg: EmbeddedPostgres, dsn: str
) -> None:
    """The control database records epoch 7 for shard 0 (its writers use another database, or
    this one was restored from an old backup). A node taking this database's lease at epoch 1
    refuses to start; the endpoint and the lease stay as they were."""
    control_dsn = await control_database(pg, dsn)
    connection = await control.connect(control_dsn)
    try:
        await control_store.register_shard(connection, 0, "127.0.0.1:7001", 7)
    finally:
        await connection.close(timeout=5.0)
    node = _cluster_node(dsn, control_dsn)
    with pytest.raises(EpochBehindError) as refused:
        await node.start()
    message = str(refused.value)
    assert "epoch 7" in message and "epoch 1" in message and "shard 0" in message, message
    assert await endpoint_row(control_dsn, 0) == ("127.0.0.1:7001", 7)
    held = await fetch_rows(dsn, "SELECT 1 FROM pg_locks WHERE locktype = 'advisory'")
    assert held == []
    successor = await start_node(dsn)  # the lease was let go: a single node takes it
    await successor.stop()


async def test_a_standby_behind_the_registered_epoch_stops_fenced_at_takeover(
    pg: EmbeddedPostgres, dsn: str
) -> None:
    """Writer A registered at epoch 1, standby B waits. Then a writer of shard 0 elsewhere
    registers epoch 99, and A stops: B takes this database's lease (epoch 2) but its
    registration is refused, so it stops as fenced without serving, leaving the endpoint be."""
    control_dsn = await control_database(pg, dsn)
    writer = await start_node(dsn, control_dsn=control_dsn, shard_id=0)
    standby = _cluster_node(dsn, control_dsn)
    await standby.start()
    task = asyncio.create_task(standby.run())
    try:
        assert await endpoint_row(control_dsn, 0) == (writer.node.internal_target, 1)
        connection = await control.connect(control_dsn)
        try:
            await connection.execute(
                "UPDATE shards SET endpoint = '127.0.0.1:7001', epoch = 99 WHERE shard_id = 0"
            )
        finally:
            await connection.close(timeout=5.0)
        await writer.stop()
        await asyncio.wait_for(asyncio.shield(task), timeout=20)
    finally:
        if not task.done():
            standby.request_stop()
            await asyncio.wait_for(task, timeout=20)
    assert standby.fenced and standby.writer is None
    assert (await lease_row(dsn))["epoch"] == 2
    assert await endpoint_row(control_dsn, 0) == ("127.0.0.1:7001", 99)
