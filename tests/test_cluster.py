"""A 4-shard cluster behind the gateway: routing, spread accounts, coalescing, slot moves."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from core.embedded_pg import EmbeddedPostgres
from core.slots import SlotMap, account_slot
from shards import control
from shards.gateway import Gateway, GatewayConfig
from tally.v1 import ledger_pb2 as pb
from tests.helpers import Client, NodeHandle, account, audit_problems, names, start_node, transfer

SHARD_COUNT = 4
_numbers = itertools.count(1)


@dataclass
class Cluster:
    control_dsn: str
    nodes: list[NodeHandle]
    gateway: Gateway
    gateway_task: asyncio.Task[None]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"


@pytest.fixture
async def cluster(pg: EmbeddedPostgres) -> AsyncIterator[Cluster]:
    prefix = f"c{os.getpid()}_{next(_numbers)}"
    await pg.create_database_async(f"{prefix}_control")
    control_dsn = pg.dsn(f"{prefix}_control")
    connection = await control.connect(control_dsn)
    try:
        await control.initialise(connection, SHARD_COUNT)
    finally:
        await connection.close()
    nodes = []
    for shard_id in range(SHARD_COUNT):
        await pg.create_database_async(f"{prefix}_s{shard_id}")
        nodes.append(
            await start_node(
                pg.dsn(f"{prefix}_s{shard_id}"),
                control_dsn=control_dsn,
                shard_id=shard_id,
                slot_map_poll_interval_s=0.2,
            )
        )
    gateway = Gateway(GatewayConfig(control_dsn=control_dsn, listen="127.0.0.1:0"))
    await gateway.start()
    task = asyncio.create_task(gateway.run())
    try:
        yield Cluster(control_dsn, nodes, gateway, task)
    finally:
        gateway.request_stop()
        await asyncio.wait_for(task, timeout=30)
        for node in nodes:
            await node.stop()


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[Client]:
    async with grpc.aio.insecure_channel(cluster.target) as channel:
        yield Client(channel)


def customers_on_distinct_shards(count: int) -> list[str]:
    """Customer partition keys, one per shard, under the even map."""
    slot_map = SlotMap.even(SHARD_COUNT)
    chosen: dict[int, str] = {}
    for n in range(10_000):
        key = f"cust-{n}"
        chosen.setdefault(slot_map.shard_of_key(key), key)
        if len(chosen) == count:
            break
    return [chosen[s] for s in sorted(chosen)]


async def test_spread_account_has_a_piece_on_every_shard(cluster: Cluster, client: Client) -> None:
    assert names(await client.create(account("@cash"))) == ["RESULT_CODE_CREATED"]
    assert names(await client.create(account("@cash"))) == ["RESULT_CODE_REPLAYED"]
    refused = await client.stub.CreateAccounts(
        pb.CreateAccountsRequest(accounts=[account("@vault", no_overdraft=True)])
    )
    assert refused.results[0].code == pb.RESULT_CODE_INVALID_SPREAD_ACCOUNT_FLAGS
    customers = customers_on_distinct_shards(SHARD_COUNT)
    await client.create(*(account(f"{c}/dep") for c in customers))
    # One funding transfer per shard: each lands on the @cash piece of that customer's shard.
    codes = await client.codes(
        *(
            transfer(f"fund-{c}", "@cash", f"{c}/dep", 100 * (n + 1))
            for n, c in enumerate(customers)
        )
    )
    assert set(codes) == {pb.RESULT_CODE_CREATED}
    cash = await client.balance("@cash")
    assert cash.debits_posted == 100 + 200 + 300 + 400
    for node in cluster.nodes:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
            piece = await Client(channel).balance("@cash")
            assert piece.debits_posted in (100, 200, 300, 400)
    for node in cluster.nodes:
        assert await audit_problems(node.dsn) == []


async def test_one_request_split_across_shards_answers_in_order(
    cluster: Cluster, client: Client
) -> None:
    customers = customers_on_distinct_shards(SHARD_COUNT)
    await client.create(account("@cash"))
    await client.create(*(account(f"{c}/dep", no_overdraft=True) for c in customers))
    await client.create(*(account(f"{c}/loan") for c in customers))
    batch = []
    for n, c in enumerate(customers):
        batch.append(transfer(f"disb-{c}", f"{c}/loan", f"{c}/dep", 50 + n))
        batch.append(transfer(f"over-{c}", f"{c}/dep", "@cash", 10_000))
        batch.append(transfer(f"fee-{c}", f"{c}/dep", "@cash", 5, linked=True))
        batch.append(transfer(f"fee2-{c}", f"{c}/dep", "@cash", 5))
    results = await client.post(*batch)
    expected = [
        "RESULT_CODE_CREATED",
        "RESULT_CODE_INSUFFICIENT_FUNDS",
        "RESULT_CODE_CREATED",
        "RESULT_CODE_CREATED",
    ] * SHARD_COUNT
    assert names([r.code for r in results]) == expected
    for n, c in enumerate(customers):
        assert (await client.balance(f"{c}/dep")).available == 50 + n - 10
    # Holds and their resolution find the shard of the hold.
    c = customers[2]
    assert await client.codes(transfer("hold", f"{c}/dep", "@cash", 7, pending=True)) == [
        pb.RESULT_CODE_CREATED
    ]
    codes = await client.codes(
        pb.Transaction(id="capture", code=1, post_pending_id="hold"),
        pb.Transaction(id="undo-fee", code=1, reverses_id=f"fee-{c}"),
    )
    assert codes == [pb.RESULT_CODE_CREATED, pb.RESULT_CODE_CREATED]
    assert (await client.transaction("hold")).status == pb.TRANSACTION_STATUS_PENDING_POSTED


async def test_cross_shard_request_is_refused_whole(cluster: Cluster, client: Client) -> None:
    first, second = customers_on_distinct_shards(2)
    await client.create(account(f"{first}/dep"), account(f"{second}/dep"), account("@cash"))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.post(
            transfer("ok", "@cash", f"{first}/dep", 1),
            transfer("x", f"{first}/dep", f"{second}/dep", 1),
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "item 1" in (error.value.details() or "")
    response = await client.stub.GetTransactions(pb.GetTransactionsRequest(ids=["ok", "x"]))
    assert [r.code for r in response.results] == [pb.RESULT_CODE_TRANSACTION_NOT_FOUND] * 2


async def test_moved_slot_old_shard_refuses_gateway_reaches_new(
    cluster: Cluster, client: Client
) -> None:
    await client.create(account("@cash"))  # the gateway now holds map version 1
    key = customers_on_distinct_shards(1)[0]
    old_owner = SlotMap.even(SHARD_COUNT).shard_of_key(key)
    new_owner = (old_owner + 1) % SHARD_COUNT
    connection = await control.connect(cluster.control_dsn)
    try:
        moved = await control.move_slots(connection, [account_slot(f"{key}/a")], new_owner)
    finally:
        await connection.close()
    old_node = cluster.nodes[old_owner]
    for _ in range(100):  # the nodes poll the control database
        if old_node.node.slot_map is not None and old_node.node.slot_map.version == moved.version:
            break
        await asyncio.sleep(0.05)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{old_node.port}") as channel:
        direct = await Client(channel).stub.CreateAccounts(
            pb.CreateAccountsRequest(accounts=[account(f"{key}/a")])
        )
    assert direct.results[0].code == pb.RESULT_CODE_WRONG_SHARD
    assert f"version {moved.version}" in direct.results[0].message
    # Through the gateway (still on version 1) the client sees no error.
    assert names(await client.create(account(f"{key}/a"), account(f"{key}/b"))) == [
        "RESULT_CODE_CREATED",
        "RESULT_CODE_CREATED",
    ]
    assert await client.codes(transfer("t", "@cash", f"{key}/a", 3)) == [pb.RESULT_CODE_CREATED]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cluster.nodes[new_owner].port}") as channel:
        assert (await Client(channel).balance(f"{key}/a")).credits_posted == 3


async def test_concurrent_small_requests_are_coalesced(cluster: Cluster, client: Client) -> None:
    key = customers_on_distinct_shards(1)[0]
    await client.create(account("@cash"), account(f"{key}/dep"))
    shard = cluster.nodes[SlotMap.even(SHARD_COUNT).shard_of_key(key)]
    assert shard.node.writer is not None
    before = shard.node.writer.committed_batch_count
    results = await asyncio.gather(
        *(client.post(transfer(f"t{n}", "@cash", f"{key}/dep", 1)) for n in range(200))
    )
    assert {r[0].code for r in results} == {pb.RESULT_CODE_CREATED}
    commits = shard.node.writer.committed_batch_count - before
    assert commits < 100, commits
    assert (await client.balance(f"{key}/dep")).credits_posted == 200


async def test_readme_example_runs_unchanged_through_the_gateway(cluster: Cluster) -> None:
    from tests.test_readme import TIME, example_steps, run_tally

    for command, expected in example_steps():
        output = await run_tally(command, cluster.gateway.port)
        got = [TIME.sub("<time>", line) for line in output.rstrip("\n").splitlines()]
        assert got == [TIME.sub("<time>", line) for line in expected], f"$ {command}"
