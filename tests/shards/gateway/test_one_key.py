"""One idempotency key for the whole cluster (issue 12's findings, as a client found them through
the gateway of a 4-shard cluster): a transaction id means one thing wherever its legs live, a
post, void, reversal or read by id finds exactly one record, and the shard that records an id
(its home) is the only one a lookup waits for."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from core.slots import SlotMap
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.cluster import SHARD_COUNT, Cluster, customers_on_distinct_shards
from tests.support.cluster_processes import process_cluster
from tests.support.crossshard_crash import connected_to, gateway_environment, open_accounts
from tests.support.helpers import Client, account, audit_problems, transfer
from tests.support.processes import fetch_rows

CREATED, REPLAYED = pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED
CONFLICT = pb.RESULT_CODE_IDEMPOTENCY_CONFLICT


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[Client]:
    async with security.channel(cluster.target) as channel:
        yield Client(channel)


async def _two_customers(client: Client) -> tuple[tuple[str, str], tuple[str, str]]:
    """Customers A and B on different shards, each with two funded deposit accounts."""
    a, b = customers_on_distinct_shards(2)
    accounts = [f"{c}/{n}" for c in (a, b) for n in ("dep", "sav")]
    await client.create(account("@cash"), *(account(x) for x in accounts))
    funding = [transfer(f"{x.split('/')[0]}/fund-{x}", "@cash", x, 1_000) for x in accounts]
    assert await client.codes(*funding) == [CREATED] * 4
    return (f"{a}/dep", f"{a}/sav"), (f"{b}/dep", f"{b}/sav")


async def _rows_everywhere(cluster: Cluster, transaction_id: str) -> list[int]:
    """The shards whose database holds a row with exactly this id."""
    found = []
    for shard_id, dsn in enumerate(cluster.dsns):
        rows = await fetch_rows(dsn, "SELECT id FROM transactions WHERE id = $1", transaction_id)
        if rows:
            found.append(shard_id)
    return found


@pytest.mark.parametrize("tid", ["pay-1", "cust-0/pay-1"])
async def test_an_id_reused_with_another_customers_accounts_is_a_conflict(
    cluster: Cluster, client: Client, tid: str
) -> None:
    """Finding: the same id posted with A's accounts and again, with other content, with B's
    accounts on another shard was applied twice (both CREATED, B's balance moved). Now the
    second is IDEMPOTENCY_CONFLICT naming what differs, whether or not the id carries a
    partition key, and B's books do not move."""
    (a_dep, a_sav), (b_dep, b_sav) = await _two_customers(client)
    first = transfer(tid, a_dep, a_sav, 100)
    assert await client.codes(first) == [CREATED]
    (second,) = await client.post(transfer(tid, b_dep, b_sav, 70))
    assert second.code == CONFLICT, second.message
    assert "legs" in second.message
    assert await client.codes(first) == [REPLAYED]
    assert (await client.balance(b_dep)).credits_posted == 1_000
    assert (await client.balance(b_dep)).debits_posted == 0
    assert (await client.balance(a_sav)).credits_posted == 1_100
    # One record, at the id's home, and it is A's.
    record = await client.transaction(tid)
    assert {x.account_id for x in record.applied_legs} == {a_dep, a_sav}
    assert await _rows_everywhere(cluster, tid) == [SlotMap.even(SHARD_COUNT).home_of(tid)]


async def test_one_hold_per_id_and_its_capture_takes_that_hold(
    cluster: Cluster, client: Client
) -> None:
    """Finding: two holds with one id, on two shards, were both created, and a post of that id
    captured whichever the gateway's lookup found last (one customer's capture could take
    another's hold). Now the second hold is refused, and the post and the read by id find
    the one hold."""
    (a_dep, a_sav), (b_dep, b_sav) = await _two_customers(client)
    hold = transfer("hold-1", a_dep, a_sav, 300, pending=True)
    assert await client.codes(hold) == [CREATED]
    (other,) = await client.post(transfer("hold-1", b_dep, b_sav, 300, pending=True))
    assert other.code == CONFLICT, other.message
    assert (await client.balance(b_dep)).debits_pending == 0

    post = pb.Transaction(id="cap-1", code=1, post_pending_id="hold-1")
    assert await client.codes(post) == [CREATED]
    assert (await client.balance(a_sav)).credits_posted == 1_300
    assert (await client.balance(b_sav)).credits_posted == 1_000
    record = await client.transaction("hold-1")
    assert (record.status, record.resolved_by_id) == (pb.TRANSACTION_STATUS_PENDING_POSTED, "cap-1")
    assert {x.account_id for x in record.applied_legs} == {a_dep, a_sav}
    for node in cluster.nodes:
        assert await audit_problems(node.dsn) == []


async def test_a_node_refuses_an_id_another_shard_records(cluster: Cluster) -> None:
    """A client that goes to a node directly cannot record there an id whose home is another
    shard: the node answers WRONG_SHARD (retryable through the gateway), so no second record
    of that id can appear behind the gateway's back."""
    slot_map = SlotMap.even(SHARD_COUNT)
    a = customers_on_distinct_shards(1)[0]
    shard = slot_map.shard_of_key(a)
    foreign = next(f"x-{n}" for n in range(1_000) if slot_map.home_of(f"x-{n}") != shard)
    async with security.channel(cluster.nodes[shard].target) as channel:
        node = Client(channel)
        await node.create(account(f"{a}/dep"), account(f"{a}/sav"))
        (refused,) = await node.post(transfer(foreign, f"{a}/dep", f"{a}/sav", 1))
        assert refused.code == pb.RESULT_CODE_WRONG_SHARD, refused.message
        assert "home" in refused.message
        assert await node.codes(transfer(f"{a}/local", f"{a}/dep", f"{a}/sav", 1)) == [CREATED]


def _homed_on(slot_map: SlotMap, shard_id: int, stem: str) -> str:
    return next(f"{stem}-{n}" for n in range(10_000) if slot_map.home_of(f"{stem}-{n}") == shard_id)


async def test_a_paused_shard_does_not_stop_lookups_of_ids_homed_elsewhere(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """Finding: with one node paused (SIGSTOP), every lookup by id through the gateway waited
    for it until the client's deadline. Now a read, a void and a reversal of ids recorded
    elsewhere answer at once, and only work that needs the paused shard waits (and gets a
    retryable answer within its deadline)."""
    async with process_cluster(pg, tmp_path, gateway_environment=gateway_environment()) as cluster:
        slot_map = cluster.slot_map
        paused = 3
        async with connected_to(cluster.target) as client:
            a, b = await open_accounts(cluster, client, [0, 1])
            ka, kb = a.split("/")[0], b.split("/")[0]
            setup = [
                transfer(f"{ka}/t", a, "@cash", 10),
                transfer(f"{ka}/h", a, "@cash", 20, pending=True),
                transfer(f"{kb}/x", b, a, 30),  # across shards 0 and 1
            ]
            assert await client.codes(*setup) == [CREATED] * 3
            on_paused = _homed_on(slot_map, paused, "elsewhere")
            assert await client.codes(transfer(on_paused, a, "@cash", 1)) == [CREATED]
            node = cluster.nodes[paused].process
            node.send_signal(signal.SIGSTOP)
            try:
                # Each within a deadline that waiting for the paused shard would use up.
                response = await client.stub.GetTransactions(
                    pb.GetTransactionsRequest(ids=[f"{ka}/t", f"{ka}/h", f"{kb}/x"]), timeout=20
                )
                assert [r.code for r in response.results] == [pb.RESULT_CODE_OK] * 3
                void = pb.Transaction(id=f"{ka}/v", code=1, void_pending_id=f"{ka}/h")
                undo = pb.Transaction(id=f"{kb}/u", code=1, reverses_id=f"{kb}/x")
                assert await client.codes(void, undo) == [CREATED, CREATED]
                # What the paused shard records waits for it, and is told to retry.
                with pytest.raises(grpc.aio.AioRpcError) as waited:
                    await client.stub.GetTransactions(
                        pb.GetTransactionsRequest(ids=[on_paused]), timeout=3
                    )
                assert waited.value.code() in (
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.UNAVAILABLE,
                )
            finally:
                with contextlib.suppress(ProcessLookupError):
                    node.send_signal(signal.SIGCONT)
            record = await client.transaction(f"{kb}/x")
            assert record.reversed_by_id == f"{kb}/u"
