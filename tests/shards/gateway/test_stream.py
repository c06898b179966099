"""The change stream through the gateway of a 2-shard cluster: cluster positions (one sequence
per shard), each shard's journal exactly as its node streams it, a monitor's scope, bad input;
and with real processes, a node killed (kill -9) while the other shard keeps streaming, then
restarted: the stream resumes gap-free and duplicate-free."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from core.authority import Role
from core.slots import SlotMap
from shards.local.embedded_pg import EmbeddedPostgres
from shards.security.credentials import aio_channel
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc
from tests.support import security, streams
from tests.support.cluster_processes import log_text, process_cluster
from tests.support.crossshard_crash import connected_to, customer_on
from tests.support.helpers import Client, InProcessCluster, account, in_process_cluster, transfer
from tests.support.processes import fetch_rows

CREATED = pb.RESULT_CODE_CREATED
SHARDS = 2
RESOLVED = (
    pb.TRANSACTION_STATUS_PENDING_POSTED,
    pb.TRANSACTION_STATUS_PENDING_VOIDED,
    pb.TRANSACTION_STATUS_PENDING_EXPIRED,
)


def _customers() -> list[str]:
    """A customer key on each of the two shards (the even map)."""
    slot_map = SlotMap.even(SHARDS)
    chosen: dict[int, str] = {}
    for n in range(1_000):
        chosen.setdefault(slot_map.shard_of_key(f"cust-{n}"), f"cust-{n}")
    return [chosen[s] for s in range(SHARDS)]


_numbers = itertools.count(1)


@pytest.fixture
async def two_shards(pg: EmbeddedPostgres) -> AsyncIterator[InProcessCluster]:
    async with in_process_cluster(pg, f"gs{os.getpid()}_{next(_numbers)}", SHARDS) as c:
        yield c


async def _books(client: Client, customers: list[str], rounds: int) -> None:
    await client.create(account("@cash"), *(account(f"{c}/dep") for c in customers))
    for n in range(rounds):
        for c in customers:
            assert await client.codes(transfer(f"{c}/t{n}", "@cash", f"{c}/dep", 10 + n)) == [
                CREATED
            ]


async def _heads(dsns: list[str]) -> dict[int, int]:
    heads = {}
    for shard_id, dsn in enumerate(dsns):
        rows = await fetch_rows(
            dsn, "SELECT coalesce(max(sequence), 0) AS head FROM journal_blocks"
        )
        heads[shard_id] = rows[0]["head"]
    return heads


def _in_journal_order(blocks: list[pb.JournalBlock]) -> list[pb.JournalBlock]:
    """Shard by shard (the merge interleaves shards as their blocks arrive)."""
    return sorted(blocks, key=lambda b: (b.shard_id, b.sequence))


async def _same_as_each_node_reads(
    cluster: InProcessCluster, blocks: list[pb.JournalBlock]
) -> None:
    """Every streamed transaction is its shard's record as the node's GetTransactions reads it
    (pieces and all), but as created: the cross-shard hold and its pieces still PENDING."""
    pieces = resolved = 0
    for shard_id, node in enumerate(cluster.nodes):
        records = [t for b in blocks if b.shard_id == shard_id for t in b.transactions]
        async with security.channel(node.target) as direct:
            stub = pb_grpc.LedgerStub(direct)
            for record in records:
                request = pb.GetTransactionsRequest(ids=[record.transaction.id])
                (lookup,) = (await stub.GetTransactions(request, timeout=30)).results
                if lookup.code == pb.RESULT_CODE_INVALID_ID:  # a record no client reads by id
                    assert record.transaction.id.startswith("~deadline/"), lookup.message
                    continue
                assert lookup.code == pb.RESULT_CODE_OK, lookup.message
                now = lookup.transaction
                assert record.transaction == now.transaction
                assert record.applied_legs == now.applied_legs
                assert record.cross_shard_piece == now.cross_shard_piece, record.transaction.id
                pieces += record.HasField("cross_shard_piece")
                if now.status in RESOLVED:  # its fate came in a later block
                    assert record.status == pb.TRANSACTION_STATUS_PENDING, record
                    resolved += 1
                else:
                    assert record.status == now.status, record
    assert pieces >= 5  # the transfer's two, the hold's two, the post's at the coordinator
    assert resolved >= 3  # the hold's pieces and the transfer's participant piece


async def test_cluster_positions_and_each_shard_as_its_node_streams_it(
    two_shards: InProcessCluster,
) -> None:
    cluster = two_shards
    customers = _customers()
    async with security.channel(cluster.target) as channel:
        client = Client(channel)
        await _books(client, customers, 3)
        # Cross-shard: a transfer, and a hold posted later (each shard streams its pieces).
        a, b = (f"{c}/dep" for c in customers)
        hold = transfer(f"{customers[0]}/x-hold", a, b, 4, pending=True)
        capture = pb.Transaction(id=f"{customers[0]}/x-post", code=1, post_pending_id=hold.id)
        for item in (transfer(f"{customers[0]}/x", a, b, 3), hold, capture):
            assert await client.codes(item) == [CREATED], item.id
        merged = await streams.collect(channel)
        await _same_as_each_node_reads(cluster, merged)
        heads = await _heads(cluster.dsns)
        assert streams.check_contiguous(merged, {}) == heads
        for shard_id, node in enumerate(cluster.nodes):
            async with security.channel(node.target) as direct:
                assert [b for b in merged if b.shard_id == shard_id] == await streams.collect(
                    direct
                )
        # Resuming from a cluster position: exactly the rest of each shard.
        position = {0: 2, 1: heads[1] - 1}
        rest = await streams.collect(channel, position)
        assert streams.check_contiguous(rest, position) == heads
        assert sorted((b.shard_id, b.sequence) for b in rest) == sorted(
            (b.shard_id, b.sequence) for b in merged if b.sequence > position[b.shard_id]
        )
        assert await streams.collect(channel, heads) == []

        for message, code, words in [
            (streams.request({5: 0}), grpc.StatusCode.INVALID_ARGUMENT, "shard 5"),
            (streams.request({0: -3}), grpc.StatusCode.INVALID_ARGUMENT, "negative"),
            (
                streams.request({1: heads[1] + 1}),
                grpc.StatusCode.FAILED_PRECONDITION,
                f"shard 1's head, block {heads[1]}",
            ),
        ]:
            got, details = await streams.refusal(channel, message)
            assert (got, words in details) == (code, True), (message, got, details)

    monitor = security.identity({Role.MONITOR}, (f"{customers[1]}/*",), name="gw-monitor")
    async with aio_channel(cluster.target, monitor) as channel:
        seen = await streams.collect(channel)
    assert sorted((b.shard_id, b.sequence) for b in seen) == sorted(
        (b.shard_id, b.sequence) for b in merged
    )
    assert {p.account_id for b in seen for p in b.postings} == {f"{customers[1]}/dep"}
    mine = f"{customers[1]}/dep"
    touching = [
        t
        for b in _in_journal_order(merged)
        for t in b.transactions
        if mine in {leg.account_id for leg in (*t.transaction.legs, *t.applied_legs)}
    ]
    assert [t for b in _in_journal_order(seen) for t in b.transactions] == touching
    assert any(t.transaction.id.startswith("~piece/") for t in touching)  # pieces count too

    poster = security.identity({Role.POSTER}, ("**",), name="gw-poster")
    async with aio_channel(cluster.target, poster) as channel:
        code, details = await streams.refusal(channel, streams.request())
    assert code == grpc.StatusCode.PERMISSION_DENIED and "monitor" in details


async def test_a_killed_node_stops_only_its_shard_and_resumes_gap_free(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """kill -9 of shard 1's node while a follower streams the cluster: shard 0's blocks keep
    arriving meanwhile; once shard 1's node is back the stream (the same call) carries on with
    shard 1's next block; in the end every block of both journals arrived once, in order."""
    async with process_cluster(pg, tmp_path, shard_count=SHARDS) as cluster:
        taken: set[str] = set()
        deposits = [customer_on(cluster, s, taken) for s in range(SHARDS)]
        keys = [d.split("/")[0] for d in deposits]
        async with connected_to(cluster.target) as client:
            await client.create(account("@cash"), *(account(d) for d in deposits))

            async def post(shard_id: int, name: str) -> None:
                """Retried while UNAVAILABLE (nothing applied): the gateway's link to a
                restarted node may still be in its reconnect backoff."""
                item = transfer(f"{keys[shard_id]}/{name}", "@cash", deposits[shard_id], 5)
                for _ in range(50):
                    codes = await client.codes(item)
                    if codes != [pb.RESULT_CODE_UNAVAILABLE]:
                        break
                    await asyncio.sleep(0.2)
                assert codes == [CREATED], cluster.describe()

            async with security.channel(cluster.target) as channel:
                stream = pb_grpc.LedgerStub(channel).StreamJournal(
                    streams.request(follow=True), timeout=120
                )
                received: list[pb.JournalBlock] = []

                async def until(predicate: Callable[[], bool]) -> None:
                    while not predicate():
                        received.extend(await streams.take(stream, 1, timeout_s=30))

                try:
                    for shard_id in range(SHARDS):
                        await post(shard_id, "before")
                    heads = await _heads(cluster.shard_dsns)
                    await until(lambda: streams.check_contiguous(received, {}) == heads)

                    await cluster.kill_node(1)
                    for n in range(3):
                        await post(0, f"during-{n}")
                    during = await _heads(cluster.shard_dsns[:1])
                    await until(lambda: streams.check_contiguous(received, {})[0] == during[0])
                    # Without follow, a shard that stays away ends the stream, retryably.
                    try:
                        await streams.collect(channel, heads)
                        raise AssertionError("a stream without shard 1 ended OK")
                    except grpc.aio.AioRpcError as error:
                        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                        assert "shard 1" in (error.details() or ""), error

                    await cluster.start_node(1)
                    await post(1, "after")
                    heads = await _heads(cluster.shard_dsns)
                    await until(lambda: streams.check_contiguous(received, {}) == heads)
                finally:
                    stream.cancel()
        streams.check_contiguous(received, {})  # gap-free, no duplicates, chained
        assert cluster.gateway is not None
        # The gateway's stream from shard 1 failed and was opened again from its position.
        assert "stream from shard 1 after" in log_text(cluster.gateway), cluster.describe()
        ids = {t.transaction.id for b in received for t in b.transactions}
        assert {f"{keys[0]}/during-{n}" for n in range(3)} | {f"{keys[1]}/after"} <= ids


async def test_a_slow_client_holds_back_the_gateway_not_the_writers(
    two_shards: InProcessCluster,
) -> None:
    """A follower through the gateway that reads nothing while both shards commit 60 wide
    blocks each (some 10 MB): every write is answered, the gateway sends only what the client's
    flow-control window takes, and then the client gets every block of both shards."""
    cluster = two_shards
    customers = _customers()
    wide = {f"note-{n}": "x" * 250 for n in range(16)}
    async with security.channel(cluster.target) as channel:
        client = Client(channel)
        await client.create(account("@cash"), *(account(f"{c}/dep") for c in customers))
        follower = pb_grpc.LedgerStub(channel).StreamJournal(
            streams.request(follow=True), timeout=120
        )
        received = await streams.take(follower, 2)  # open, and sending
        for n in range(60):
            batch = [
                transfer(f"{c}/w{n}-{k}", "@cash", f"{c}/dep", 1, metadata=wide)
                for c in customers
                for k in range(10)
            ]
            assert await client.codes(*batch) == [CREATED] * 20
        registry = cluster.gateway.cluster.metrics.registry
        sent = registry.get_sample_value("tally_gateway_stream_blocks_sent_total")
        heads = await _heads(cluster.dsns)
        assert sent is not None and sent < sum(heads.values()), (sent, heads)
        assert registry.get_sample_value("tally_gateway_streams_open") == 1
        try:
            while streams.check_contiguous(received, {}) != heads:
                received.extend(await streams.take(follower, 1))
        finally:
            follower.cancel()
    assert sum(len(b.transactions) for b in received) == 60 * 20
    # The client went away: the gateway closed its streams at both nodes.
    for _ in range(250):
        counts = [node.node.streams.open_count for node in cluster.nodes if node.node.streams]
        if counts == [0, 0]:
            break
        await asyncio.sleep(0.02)
    assert counts == [0, 0], counts
    assert cluster.gateway.streams is not None and cluster.gateway.streams.open_count == 0
