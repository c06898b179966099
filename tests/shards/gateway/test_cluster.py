"""A 4-shard cluster behind the gateway: routing, spread accounts, coalescing, slot moves."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator

import grpc
import pytest

from core import audit, limits
from core.audit import AuditConfig
from core.slots import SlotMap, account_slot
from core.store import control as control_store
from shards import control
from shards.gateway import links
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.cluster import SHARD_COUNT, Cluster, customers_on_distinct_shards
from tests.support.helpers import (
    CREDIT,
    DEBIT,
    Client,
    account,
    audit_problems,
    in_process_cluster,
    leg,
    names,
    transfer,
)
from tests.support.readme import TIME, example_steps, run_tally

_numbers = itertools.count(1)


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[Client]:
    async with security.channel(cluster.target) as channel:
        yield Client(channel)


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
        async with security.channel(node.target) as channel:
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
        batch.append(transfer(f"{c}/disb", f"{c}/loan", f"{c}/dep", 50 + n))
        batch.append(transfer(f"{c}/over", f"{c}/dep", "@cash", 10_000))
        batch.append(transfer(f"{c}/fee", f"{c}/dep", "@cash", 5, linked=True))
        batch.append(transfer(f"{c}/fee2", f"{c}/dep", "@cash", 5))
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
    assert await client.codes(transfer(f"{c}/hold", f"{c}/dep", "@cash", 7, pending=True)) == [
        pb.RESULT_CODE_CREATED
    ]
    codes = await client.codes(
        pb.Transaction(id=f"{c}/capture", code=1, post_pending_id=f"{c}/hold"),
        pb.Transaction(id=f"{c}/undo-fee", code=1, reverses_id=f"{c}/fee"),
    )
    assert codes == [pb.RESULT_CODE_CREATED, pb.RESULT_CODE_CREATED]
    assert (await client.transaction(f"{c}/hold")).status == pb.TRANSACTION_STATUS_PENDING_POSTED


async def _funded_pair(client: Client) -> tuple[str, str]:
    first, second = customers_on_distinct_shards(2)
    await client.create(account("@cash"))
    await client.create(
        account(f"{first}/dep", no_overdraft=True), account(f"{second}/dep", no_overdraft=True)
    )
    assert (
        await client.codes(
            transfer(f"{first}/fund-1", "@cash", f"{first}/dep", 100),
            transfer(f"{second}/fund-2", "@cash", f"{second}/dep", 100),
        )
        == [pb.RESULT_CODE_CREATED] * 2
    )
    return first, second


async def _clearing_nets_to_zero(client: Client) -> pb.Balance:
    clearing = await client.balance("@clearing/USD")
    assert clearing.debits_posted == clearing.credits_posted
    assert clearing.debits_pending == clearing.credits_pending == 0
    return clearing


async def test_cross_shard_transfer_commits_atomically(cluster: Cluster, client: Client) -> None:
    first, second = await _funded_pair(client)
    result = (await client.post(transfer(f"{first}/x", f"{first}/dep", f"{second}/dep", 30)))[0]
    assert result.code == pb.RESULT_CODE_CREATED, result.message
    again = (await client.post(transfer(f"{first}/x", f"{first}/dep", f"{second}/dep", 30)))[0]
    assert (again.code, again.timestamp_ns) == (pb.RESULT_CODE_REPLAYED, result.timestamp_ns)
    one, two = await client.balance(f"{first}/dep"), await client.balance(f"{second}/dep")
    assert (one.available, two.available) == (70, 130)
    assert (one.debits_pending, two.credits_pending) == (0, 0)
    clearing = await _clearing_nets_to_zero(client)
    assert clearing.debits_posted == 30
    for node in cluster.nodes:  # every shard's books balance on their own
        assert await audit_problems(node.dsn) == []
    # Read through the gateway, it is one transaction: the client's legs, no clearing legs.
    record = await client.transaction(f"{first}/x")
    assert record.status == pb.TRANSACTION_STATUS_POSTED
    assert record.timestamp_ns == result.timestamp_ns
    assert not record.HasField("cross_shard_piece")
    assert [(x.account_id, x.side, x.amount) for x in record.transaction.legs] == [
        (f"{first}/dep", DEBIT, 30),
        (f"{second}/dep", CREDIT, 30),
    ]


async def test_clearing_accounts_are_the_clusters_own(cluster: Cluster, client: Client) -> None:
    first, _ = await _funded_pair(client)
    results = await client.post(transfer("steal", "@clearing/USD", f"{first}/dep", 5))
    assert results[0].code == pb.RESULT_CODE_INVALID_LEGS
    assert "@clearing/" in results[0].message
    created = await client.stub.CreateAccounts(
        pb.CreateAccountsRequest(accounts=[account("@clearing/EUR", currency="EUR")])
    )
    assert created.results[0].code == pb.RESULT_CODE_INVALID_ID
    closed = await client.stub.CloseAccounts(
        pb.CloseAccountsRequest(accounts=[pb.CloseAccount(account_id="@clearing/USD")])
    )
    assert closed.results[0].code == pb.RESULT_CODE_INVALID_ID


async def test_cross_shard_refusal_records_nothing_and_holds_nothing(
    cluster: Cluster, client: Client
) -> None:
    first, second = await _funded_pair(client)
    # The coordinator (first debit leg) refuses.
    refused = (await client.post(transfer(f"{first}/big", f"{first}/dep", f"{second}/dep", 500)))[0]
    assert refused.code == pb.RESULT_CODE_INSUFFICIENT_FUNDS
    # A participant refuses: the second debit leg lives on the other shard.
    three_legs = pb.Transaction(
        id=f"{first}/three",
        code=1,
        legs=[
            leg(f"{first}/dep", DEBIT, 5),
            leg(f"{second}/dep", DEBIT, 900),
            leg("@cash", CREDIT, 905),
        ],
    )
    participant = (await client.post(three_legs))[0]
    assert participant.code == pb.RESULT_CODE_INSUFFICIENT_FUNDS
    one, two = await client.balance(f"{first}/dep"), await client.balance(f"{second}/dep")
    assert (one.available, two.available) == (100, 100)
    assert one.debits_pending == two.debits_pending == two.credits_pending == 0
    await _clearing_nets_to_zero(client)
    # As on one shard, a refused transaction is not recorded: after funding, the same id
    # succeeds, once.
    await client.codes(transfer(f"{first}/fund-3", "@cash", f"{first}/dep", 1_000))
    retry = (await client.post(transfer(f"{first}/big", f"{first}/dep", f"{second}/dep", 500)))[0]
    assert retry.code == pb.RESULT_CODE_CREATED
    again = (await client.post(transfer(f"{first}/big", f"{first}/dep", f"{second}/dep", 500)))[0]
    assert (again.code, again.timestamp_ns) == (pb.RESULT_CODE_REPLAYED, retry.timestamp_ns)
    one, two = await client.balance(f"{first}/dep"), await client.balance(f"{second}/dep")
    assert (one.available, two.available) == (600, 600)
    # The same id with other content is another transaction: refused, naming what differs.
    changed = (await client.post(transfer(f"{first}/big", f"{first}/dep", f"{second}/dep", 501)))[0]
    assert changed.code == pb.RESULT_CODE_IDEMPOTENCY_CONFLICT and "legs" in changed.message
    await _clearing_nets_to_zero(client)
    for node in cluster.nodes:
        assert await audit_problems(node.dsn) == []


async def _four_funded(client: Client) -> list[str]:
    customers = [f"{c}/dep" for c in customers_on_distinct_shards(4)]
    await client.create(account("@cash"))
    await client.create(*(account(c, no_overdraft=True) for c in customers))
    funding = [transfer(f"{c.split('/')[0]}/fund", "@cash", c, 100) for c in customers]
    assert await client.codes(*funding) == [pb.RESULT_CODE_CREATED] * 4
    return customers


async def test_linked_group_across_shards_commits_as_one(cluster: Cluster, client: Client) -> None:
    a, b, c, d = await _four_funded(client)
    key = a.split("/")[0]  # the group's ids' home: a's shard coordinates it
    # The coordinator is a's shard; g2 has no leg there (its decision is recorded anyway).
    group = [
        transfer(f"{key}/g1", a, b, 10, linked=True),
        transfer(f"{key}/g2", c, d, 20, linked=True),
        transfer(f"{key}/g3", d, "@cash", 5),
    ]
    first = await client.post(*group)
    assert [r.code for r in first] == [pb.RESULT_CODE_CREATED] * 3, first
    again = await client.post(*group)
    assert [r.code for r in again] == [pb.RESULT_CODE_REPLAYED] * 3
    assert [r.timestamp_ns for r in again] == [r.timestamp_ns for r in first]
    balances = [(await client.balance(x)).available for x in (a, b, c, d)]
    assert balances == [90, 110, 80, 115]
    await _clearing_nets_to_zero(client)
    for node in cluster.nodes:
        assert await audit_problems(node.dsn) == []


async def test_linked_group_across_shards_fails_as_one(cluster: Cluster, client: Client) -> None:
    a, b, c, d = await _four_funded(client)
    key = a.split("/")[0]
    group = [
        transfer(f"{key}/h1", a, b, 10, linked=True),
        transfer(f"{key}/h2", c, d, 500, linked=True),  # c has 100: refused by c's shard
        transfer(f"{key}/h3", b, "@cash", 1),
    ]
    first = await client.post(*group)
    assert names([r.code for r in first]) == [
        "RESULT_CODE_LINKED_ITEM_FAILED",
        "RESULT_CODE_INSUFFICIENT_FUNDS",
        "RESULT_CODE_LINKED_ITEM_FAILED",
    ]
    assert first[0].message == "item 1 of this linked group failed"
    for x in (a, b, c, d):
        balance = await client.balance(x)
        assert (balance.available, balance.debits_pending, balance.credits_pending) == (100, 0, 0)
    await _clearing_nets_to_zero(client)
    response = await client.stub.GetTransactions(
        pb.GetTransactionsRequest(ids=[f"{key}/h1", f"{key}/h2"])
    )
    assert [r.code for r in response.results] == [pb.RESULT_CODE_TRANSACTION_NOT_FOUND] * 2
    # Nothing was recorded for these ids: once c can pay, the same group goes through.
    await client.codes(transfer(f"{c.split('/')[0]}/fund-more", "@cash", c, 1_000))
    again = await client.post(*group)
    assert [r.code for r in again] == [pb.RESULT_CODE_CREATED] * 3
    balances = [(await client.balance(x)).available for x in (a, b, c, d)]
    assert balances == [90, 109, 600, 600]
    await _clearing_nets_to_zero(client)
    for node in cluster.nodes:
        assert await audit_problems(node.dsn) == []


async def test_cross_shard_reversal_is_applied_once(cluster: Cluster, client: Client) -> None:
    first, second = await _funded_pair(client)
    payer, payee = f"{first}/dep", f"{second}/dep"
    x, r1, r2 = f"{first}/x", f"{first}/r1", f"{first}/r2"
    await client.create(account("@fees"))
    original = pb.Transaction(
        id=x,
        code=1,
        legs=[leg(payer, DEBIT, 30), leg(payee, CREDIT, 25), leg("@fees", CREDIT, 5)],
    )
    assert await client.codes(original) == [pb.RESULT_CODE_CREATED]
    reverse = pb.Transaction(id=r1, code=9, reverses_id=x)
    (reversed_,) = await client.post(reverse)
    assert reversed_.code == pb.RESULT_CODE_CREATED, reversed_.message
    one, two = await client.balance(payer), await client.balance(payee)
    assert (one.available, two.available) == (100, 100)
    assert (await client.balance("@fees")).credits_posted == (
        await client.balance("@fees")
    ).debits_posted
    # Exactly once: the same reversal replays, another is refused.
    (again,) = await client.post(reverse)
    assert (again.code, again.timestamp_ns) == (pb.RESULT_CODE_REPLAYED, reversed_.timestamp_ns)
    (other,) = await client.post(pb.Transaction(id=r2, code=9, reverses_id=x))
    assert other.code == pb.RESULT_CODE_ALREADY_REVERSED and repr(r1) in other.message
    assert (await client.transaction(x)).reversed_by_id == r1
    # Read back as its client sent it (a reversal, no legs of its own), and what it applied.
    record = await client.transaction(r1)
    assert (record.transaction.reverses_id, list(record.transaction.legs)) == (x, [])
    assert [(x.account_id, x.side, x.amount) for x in record.applied_legs] == [
        (payer, CREDIT, 30),
        ("@fees", DEBIT, 5),
        (payee, DEBIT, 25),
    ]
    # Limited by funds, as on one shard: the payee spent what it received.
    assert await client.codes(transfer(f"{first}/y", payer, payee, 50)) == [pb.RESULT_CODE_CREATED]
    assert await client.codes(transfer(f"{second}/spend", payee, "@cash", 120)) == [
        pb.RESULT_CODE_CREATED
    ]
    (refused,) = await client.post(
        pb.Transaction(id=f"{first}/ry", code=9, reverses_id=f"{first}/y")
    )
    assert refused.code == pb.RESULT_CODE_INSUFFICIENT_FUNDS
    assert (await client.transaction(f"{first}/y")).reversed_by_id == ""
    await _clearing_nets_to_zero(client)
    for node in cluster.nodes:
        assert await audit_problems(node.dsn) == []


async def test_linked_group_with_a_cross_shard_reversal(cluster: Cluster, client: Client) -> None:
    first, second = await _funded_pair(client)
    payer, payee = f"{first}/dep", f"{second}/dep"
    assert await client.codes(transfer(f"{first}/x", payer, payee, 40)) == [pb.RESULT_CODE_CREATED]
    # Reverse x and send the money again, differently, as one group: both or neither.
    group = [
        pb.Transaction(id=f"{first}/undo", code=9, reverses_id=f"{first}/x", linked=True),
        transfer(f"{first}/redo", payer, payee, 15),
    ]
    refused = await client.post(
        pb.Transaction(id=f"{first}/undo-0", code=9, reverses_id=f"{first}/missing", linked=True),
        transfer(f"{first}/redo-0", payer, payee, 15),
    )
    assert names([r.code for r in refused]) == [
        "RESULT_CODE_TRANSACTION_NOT_FOUND",
        "RESULT_CODE_LINKED_ITEM_FAILED",
    ]
    assert [r.code for r in await client.post(*group)] == [pb.RESULT_CODE_CREATED] * 2
    assert [r.code for r in await client.post(*group)] == [pb.RESULT_CODE_REPLAYED] * 2
    one, two = await client.balance(payer), await client.balance(payee)
    assert (one.available, two.available) == (85, 115)
    assert (await client.transaction(f"{first}/x")).reversed_by_id == f"{first}/undo"
    await _clearing_nets_to_zero(client)
    for node in cluster.nodes:
        assert await audit_problems(node.dsn) == []


async def test_linked_group_with_a_cross_shard_hold_commits_whole(
    cluster: Cluster, client: Client
) -> None:
    first, second = await _funded_pair(client)
    group = [
        transfer(f"{first}/ok", "@cash", f"{first}/dep", 1),
        transfer(f"{first}/l1", f"{first}/dep", "@cash", 1, linked=True),
        transfer(f"{first}/l2", f"{first}/dep", f"{second}/dep", 500, pending=True),
    ]
    refused = await client.post(*group)  # l2 holds more than first has: nothing of l1, l2
    assert names([r.code for r in refused]) == [
        "RESULT_CODE_CREATED",
        "RESULT_CODE_LINKED_ITEM_FAILED",
        "RESULT_CODE_INSUFFICIENT_FUNDS",
    ]
    group[2].legs[0].amount = group[2].legs[1].amount = 50
    group[0].id = f"{first}/ok2"
    assert await client.codes(*group) == [pb.RESULT_CODE_CREATED] * 3
    one, two = await client.balance(f"{first}/dep"), await client.balance(f"{second}/dep")
    assert (one.available, one.debits_pending, two.credits_pending) == (51, 50, 50)
    # The hold's post, linked with a transfer: both or neither.
    assert (
        await client.codes(
            transfer(f"{first}/l3", f"{first}/dep", "@cash", 1, linked=True),
            pb.Transaction(id=f"{first}/p2", code=1, post_pending_id=f"{first}/l2"),
        )
        == [pb.RESULT_CODE_CREATED] * 2
    )
    one, two = await client.balance(f"{first}/dep"), await client.balance(f"{second}/dep")
    assert (one.available, one.debits_pending, two.credits_pending) == (50, 0, 0)
    await _clearing_nets_to_zero(client)
    for node in cluster.nodes:
        assert await audit_problems(node.dsn) == []


async def _shard_stub(cluster: Cluster, shard_id: int) -> tuple[grpc.aio.Channel, object]:
    from tally.v1 import shard_pb2_grpc

    # tally.v1.Shard is served on the node's internal listener alone, to cluster identities.
    channel = security.cluster_channel(cluster.nodes[shard_id].internal_target)
    return channel, shard_pb2_grpc.ShardStub(channel)


async def test_participant_past_its_deadline_learns_the_decision(
    cluster: Cluster, client: Client
) -> None:
    """What a crashed gateway leaves behind: pieces prepared and never resolved."""
    from shards.crossshard.coordinator import piece_message, split_pieces
    from tally.v1 import shard_pb2 as spb

    first, second = await _funded_pair(client)
    await cluster.gateway.cluster.ensure_clearing_accounts({"USD"})
    slot_map = SlotMap.even(SHARD_COUNT)
    outcomes = {}
    undecided, decided = f"{second}/undecided", f"{second}/decided"  # at the coordinator
    for tid, commit in ((undecided, False), (decided, True)):
        message = transfer(tid, f"{second}/dep", f"{first}/dep", 10)
        legs = tuple(
            __import__("core.model", fromlist=["Leg"]).Leg(
                x.account_id, x.side == DEBIT, x.amount, x.currency
            )
            for x in message.legs
        )
        coordinator, pieces = split_pieces(legs, slot_map)
        (participant,) = [s for s in pieces if s != coordinator]
        channel, stub = await _shard_stub(cluster, participant)
        async with channel:
            item = spb.PrepareItem(
                piece=piece_message(message, pieces[participant]),
                coordinator_shard=coordinator,
                deadline_seconds=1,
                attempt="a1",
            )
            prepared = await stub.Prepare(spb.PrepareRequest(items=[item]))  # type: ignore[attr-defined]
            assert prepared.results[0].code == pb.RESULT_CODE_CREATED
        if commit:
            channel, stub = await _shard_stub(cluster, coordinator)
            async with channel:
                piece = spb.CommitItem(
                    piece=piece_message(message, pieces[coordinator]), attempt="a1"
                )
                committed = await stub.Commit(spb.CommitRequest(items=[piece]))  # type: ignore[attr-defined]
                assert committed.results[0].code == pb.RESULT_CODE_CREATED
        outcomes[tid] = participant
    held = await client.balance(f"{first}/dep")
    assert held.credits_pending == 20
    for _ in range(200):
        balance = await client.balance(f"{first}/dep")
        if balance.credits_pending == 0:
            break
        await asyncio.sleep(0.05)
    # The decided one was posted, the undecided one aborted (recorded at the coordinator).
    assert balance.credits_pending == 0 and balance.credits_posted == 110
    assert (await client.balance(f"{second}/dep")).debits_posted == 10
    await _clearing_nets_to_zero(client)
    # The decided one's retry is a replay; the aborted attempt left its id free, so the
    # undecided one's retry runs it now, once.
    decided = (await client.post(transfer(decided, f"{second}/dep", f"{first}/dep", 10)))[0]
    assert decided.code == pb.RESULT_CODE_REPLAYED
    retry = (await client.post(transfer(undecided, f"{second}/dep", f"{first}/dep", 10)))[0]
    assert retry.code == pb.RESULT_CODE_CREATED
    again = (await client.post(transfer(undecided, f"{second}/dep", f"{first}/dep", 10)))[0]
    assert again.code == pb.RESULT_CODE_REPLAYED
    assert (await client.balance(f"{first}/dep")).credits_posted == 120
    await _clearing_nets_to_zero(client)
    for node in cluster.nodes:
        assert await audit_problems(node.dsn) == []


async def test_moved_slot_old_shard_refuses_gateway_reaches_new(
    cluster: Cluster, client: Client
) -> None:
    await client.create(account("@cash"))  # the gateway now holds map version 1
    key = customers_on_distinct_shards(1)[0]
    old_owner = SlotMap.even(SHARD_COUNT).shard_of_key(key)
    new_owner = (old_owner + 1) % SHARD_COUNT
    connection = await control.connect(cluster.control_dsn)
    try:
        moved = await control_store.move_slots(connection, [account_slot(f"{key}/a")], new_owner)
    finally:
        await connection.close()
    old_node = cluster.nodes[old_owner]
    for _ in range(100):  # the nodes poll the control database
        if old_node.node.slot_map is not None and old_node.node.slot_map.version == moved.version:
            break
        await asyncio.sleep(0.05)
    async with security.channel(old_node.target) as channel:
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
    async with security.channel(cluster.nodes[new_owner].target) as channel:
        assert (await Client(channel).balance(f"{key}/a")).credits_posted == 3


async def test_concurrent_small_requests_are_coalesced(cluster: Cluster, client: Client) -> None:
    key = customers_on_distinct_shards(1)[0]
    await client.create(account("@cash"), account(f"{key}/dep"))
    shard = cluster.nodes[SlotMap.even(SHARD_COUNT).shard_of_key(key)]
    assert shard.node.writer is not None
    before = shard.node.writer.committed_batch_count
    results = await asyncio.gather(
        *(client.post(transfer(f"{key}/t{n}", "@cash", f"{key}/dep", 1)) for n in range(200))
    )
    assert {r[0].code for r in results} == {pb.RESULT_CODE_CREATED}
    commits = shard.node.writer.committed_batch_count - before
    assert commits < 100, commits
    assert (await client.balance(f"{key}/dep")).credits_posted == 200


@pytest.mark.parametrize("wait_ms", [0.0, 300.0])
async def test_coalescing_wait_gathers_the_callers_the_last_call_answered(
    pg: EmbeddedPostgres, wait_ms: float
) -> None:
    """Callers of one shard in a burst, then as many single transfers as the burst's last
    call carried, 20 ms apart: the same callers coming back one by one. Without a wait the
    first of them leaves alone; with a 300 ms wait they leave together, in one commit."""
    prefix = f"w{os.getpid()}_{next(_numbers)}"
    options: dict[str, object] = {"coalesce_wait_ms": wait_ms}
    async with in_process_cluster(pg, prefix, SHARD_COUNT, gateway_options=options) as running:
        async with security.channel(running.target) as channel:
            client = Client(channel)
            key = customers_on_distinct_shards(1)[0]
            await client.create(account("@cash"), account(f"{key}/dep"))
            shard_id = SlotMap.even(SHARD_COUNT).shard_of_key(key)
            writer = running.nodes[shard_id].node.writer
            assert writer is not None
            posts = dict(running.gateway.cluster.link(shard_id).call_queues())[links.POST]
            expected = 0
            for burst in range(10):  # until a call carried at least three (the loop's pace)
                await asyncio.gather(
                    *(
                        client.post(transfer(f"{key}/b{burst}.{n}", "@cash", f"{key}/dep", 1))
                        for n in range(8)
                    )
                )
                expected = posts.expected_request_count
                if expected >= 3:
                    break
            assert expected >= 3, expected
            before = writer.committed_batch_count
            trickle = []
            for n in range(expected):
                trickle.append(
                    asyncio.create_task(
                        client.post(transfer(f"{key}/w{n}", "@cash", f"{key}/dep", 1))
                    )
                )
                await asyncio.sleep(0.02)
            results = await asyncio.gather(*trickle)
            assert {r[0].code for r in results} == {pb.RESULT_CODE_CREATED}
            commits = writer.committed_batch_count - before
    assert commits == 1 if wait_ms else commits >= 2, commits


async def test_coalesced_calls_stay_below_the_message_limit(pg: EmbeddedPostgres) -> None:
    """Two requests to one shard of about 9 MiB each, each within the 16 MiB message limit.
    Before (issue 12): coalescing bounded calls in items only, joined them into one call of
    18 MiB that the shard refused, and answered every item of both UNAVAILABLE (and so again
    on every retry). Now a call is bounded in encoded bytes too: two calls, every item
    answered by the shard itself."""
    prefix = f"mb{os.getpid()}_{next(_numbers)}"
    options: dict[str, object] = {"coalesce_wait_ms": 1000.0}  # so that the two would join
    metadata = {f"k{n:02d}" + "x" * 60: "v" * 256 for n in range(16)}
    key = customers_on_distinct_shards(1)[0]

    def request(name: str) -> list[pb.Transaction]:
        return [
            pb.Transaction(
                id=f"{name}-{n}",
                code=1,
                legs=[leg(f"{key}/gone", DEBIT, 1), leg(f"{key}/away", CREDIT, 1)],
                metadata=metadata,
            )
            for n in range(1_750)
        ]

    first, second = request("a"), request("b")
    size_bytes = pb.PostTransactionsRequest(transactions=first).ByteSize()
    assert limits.message_size_max_bytes / 2 < size_bytes < links.CALL_SIZE_MAX_BYTES
    assert links.encoded_size_bytes(first) == size_bytes  # what the gateway measures
    async with in_process_cluster(pg, prefix, SHARD_COUNT, gateway_options=options) as running:
        async with security.channel(running.target) as channel:
            client = Client(channel)
            results = await asyncio.gather(client.post(*first), client.post(*second))
    codes = set(names([r.code for answer in results for r in answer]))
    assert codes == {"RESULT_CODE_ACCOUNT_NOT_FOUND"}, codes


async def test_readme_example_runs_unchanged_through_the_gateway(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The commands run as a user's would, in an environment naming the admin identity (the
    # tests' credentials, not those of a `tally up` data directory); run_tally inherits it.
    for variable, value in security.client_environment().items():
        monkeypatch.setenv(variable, value)
    for command, expected in example_steps():
        output = await run_tally(command, cluster.gateway.port)
        got = [TIME.sub("<time>", line) for line in output.rstrip("\n").splitlines()]
        assert got == [TIME.sub("<time>", line) for line in expected], f"$ {command}"


async def test_concurrent_requests_with_one_id_replay_rather_than_clash(
    cluster: Cluster, client: Client
) -> None:
    """Coalescing must not put one id twice into a shard batch (DUPLICATE_ID_IN_BATCH)."""
    key = customers_on_distinct_shards(1)[0]
    await client.create(account("@cash"), account(f"{key}/dep"))
    created = await asyncio.gather(*(client.create(account(f"{key}/new")) for _ in range(20)))
    assert (
        sorted(c[0] for c in created) == [pb.RESULT_CODE_CREATED] + [pb.RESULT_CODE_REPLAYED] * 19
    )
    posted = await asyncio.gather(
        *(client.post(transfer(f"{key}/same", "@cash", f"{key}/dep", 5)) for _ in range(20))
    )
    assert (
        sorted(p[0].code for p in posted)
        == [pb.RESULT_CODE_CREATED] + [pb.RESULT_CODE_REPLAYED] * 19
    )
    assert len({p[0].timestamp_ns for p in posted}) == 1
    assert (await client.balance(f"{key}/dep")).credits_posted == 5


async def test_many_concurrent_cross_shard_transfers(cluster: Cluster, client: Client) -> None:
    customers = customers_on_distinct_shards(SHARD_COUNT)
    await client.create(account("@cash"), *(account(f"{c}/dep") for c in customers))
    await client.codes(*(transfer(f"{c}/f", "@cash", f"{c}/dep", 1_000) for c in customers))

    async def one(n: int) -> int:
        debit, credit = customers[n % SHARD_COUNT], customers[(n + 1) % SHARD_COUNT]
        return (await client.post(transfer(f"{debit}/x{n}", f"{debit}/dep", f"{credit}/dep", 1)))[
            0
        ].code

    codes = await asyncio.gather(*(one(n) for n in range(200)))
    assert set(codes) == {pb.RESULT_CODE_CREATED}
    for c in customers:  # each sent 50 and received 50
        assert (await client.balance(f"{c}/dep")).available == 1_000
    await _clearing_nets_to_zero(client)
    for node in cluster.nodes:
        assert await audit_problems(node.dsn) == []


# Why long: one scenario (originals at three shards, a failed group, a committed one, its replay
# and a second reversal) whose steps build on each other.
async def test_linked_reversals_of_transactions_recorded_at_different_shards(
    cluster: Cluster, client: Client
) -> None:
    """One group reverses transactions decided at three shards: two cross-shard ones with
    different coordinators and a single-shard one. All or nothing; each reversed once."""
    ka, kb, kc = customers_on_distinct_shards(3)
    a, b, c = f"{ka}/dep", f"{kb}/dep", f"{kc}/dep"
    await client.create(account("@cash"))
    await client.create(*(account(x, no_overdraft=True) for x in (a, b, c)))
    funding = [transfer(f"{x.split('/')[0]}/fund", "@cash", x, 100) for x in (a, b, c)]
    assert await client.codes(*funding) == [pb.RESULT_CODE_CREATED] * 3
    originals = [
        transfer(f"{ka}/t1", a, b, 10),  # coordinated at a's shard
        transfer(f"{kb}/t2", b, c, 20),  # at b's
        transfer(f"{kc}/t3", c, "@cash", 5),  # c's shard alone
        transfer(f"{ka}/t4", a, b, 1),
        transfer(f"{kb}/t5", b, c, 2),
    ]
    assert await client.codes(*originals) == [pb.RESULT_CODE_CREATED] * 5

    def undo(tid: str, original: str, linked: bool = True) -> pb.Transaction:
        return pb.Transaction(id=tid, code=1, reverses_id=original, linked=linked)

    # A group failing on its last item leaves every original unreversed.
    # A group is recorded at its ids' home (a's shard); the originals are decided where they
    # were recorded.
    failing = [
        undo(f"{ka}/u4", f"{ka}/t4"),
        undo(f"{ka}/u5", f"{kb}/t5"),
        transfer(f"{ka}/big", c, a, 10_000),
    ]
    assert names([r.code for r in await client.post(*failing)]) == [
        "RESULT_CODE_LINKED_ITEM_FAILED",
        "RESULT_CODE_LINKED_ITEM_FAILED",
        "RESULT_CODE_INSUFFICIENT_FUNDS",
    ]
    assert (await client.transaction(f"{kb}/t5")).reversed_by_id == ""
    group = [
        undo(f"{ka}/u1", f"{ka}/t1"),
        undo(f"{ka}/u2", f"{kb}/t2"),
        undo(f"{ka}/u3", f"{kc}/t3", linked=False),
    ]
    results = await client.post(*group)
    assert [r.code for r in results] == [pb.RESULT_CODE_CREATED] * 3, [r.message for r in results]
    assert await client.codes(*group) == [pb.RESULT_CODE_REPLAYED] * 3
    for original, reversal in (
        (f"{ka}/t1", f"{ka}/u1"),
        (f"{kb}/t2", f"{ka}/u2"),
        (f"{kc}/t3", f"{ka}/u3"),
    ):
        assert (await client.transaction(original)).reversed_by_id == reversal
    again = await client.post(undo(f"{kb}/u9", f"{kb}/t2", linked=False))
    assert again[0].code == pb.RESULT_CODE_ALREADY_REVERSED, again[0].message
    assert f"{ka}/u2" in again[0].message
    balances = [await client.balance(x) for x in (a, b, c)]
    assert [x.credits_posted - x.debits_posted for x in balances] == [99, 99, 102]
    read = await client.transaction(f"{ka}/u2")
    assert sorted((x.account_id, x.side, x.amount) for x in read.applied_legs) == sorted(
        [(b, CREDIT, 20), (c, DEBIT, 20)]
    )
    # The failed group's originals are free: reversed now, by a group of their own.
    assert (
        await client.codes(undo(f"{ka}/u4", f"{ka}/t4"), undo(f"{ka}/u5", f"{kb}/t5", linked=False))
        == [pb.RESULT_CODE_CREATED] * 2
    )
    await _clearing_nets_to_zero(client)
    for node in cluster.nodes:
        assert await audit_problems(node.dsn) == []
    report = await audit.audit_cluster(cluster.dsns, AuditConfig())
    assert report.ok, [f.message for shard in report.shards for f in shard.findings]
    assert report.cross_shard.in_flight_count == 0


async def test_a_reversal_piece_nobody_decided_frees_its_original(
    cluster: Cluster, client: Client
) -> None:
    """What a gateway dead after preparing leaves: a reversal's piece at the original's shard
    marks it reversed while held; past its deadline the participant asks the coordinator,
    which records abort; the piece is voided and the original can be reversed again."""
    from core.model import Leg
    from shards.crossshard.coordinator import piece_message
    from tally.v1 import shard_pb2 as spb

    first, second = await _funded_pair(client)
    t, u = f"{first}/t", f"{second}/u"  # t coordinated at first's shard, u at second's
    assert await client.codes(transfer(t, first + "/dep", second + "/dep", 7)) == [
        pb.RESULT_CODE_CREATED
    ]
    slot_map = SlotMap.even(SHARD_COUNT)
    original_shard = slot_map.shard_of_account(first + "/dep")
    other = slot_map.shard_of_account(second + "/dep")
    message = pb.Transaction(id=u, code=1, reverses_id=t)
    piece = piece_message(
        message,
        [
            Leg(first + "/dep", False, 7, "USD"),
            Leg("@clearing/USD", True, 7, "USD"),
        ],
    )
    channel, stub = await _shard_stub(cluster, original_shard)
    async with channel:
        item = spb.PrepareItem(
            piece=piece,
            coordinator_shard=other,
            deadline_seconds=1,
            attempt="c1",
            reverses_id=t,
        )
        prepared = await stub.Prepare(spb.PrepareRequest(items=[item]))  # type: ignore[attr-defined]
        assert prepared.results[0].code == pb.RESULT_CODE_CREATED
        again = spb.PrepareItem()
        again.CopyFrom(item)
        again.attempt = "c2"
        locked = await stub.Prepare(spb.PrepareRequest(items=[again]))  # type: ignore[attr-defined]
        assert locked.results[0].code == pb.RESULT_CODE_ALREADY_REVERSED
    assert (await client.transaction(t)).reversed_by_id == u  # locked while held
    for _ in range(100):
        if (await client.transaction(t)).reversed_by_id == "":
            break
        await asyncio.sleep(0.1)
    assert (await client.transaction(t)).reversed_by_id == ""
    assert await client.codes(pb.Transaction(id=u, code=1, reverses_id=t)) == [
        pb.RESULT_CODE_CREATED
    ]
    assert (await client.transaction(t)).reversed_by_id == u
    await _clearing_nets_to_zero(client)


async def test_reversing_a_transaction_with_no_legs_where_it_was_committed(
    cluster: Cluster, client: Client
) -> None:
    """A linked group's transaction may have no legs at the shard that committed it; reversed
    in a group coordinated elsewhere, that shard's piece of the reversal holds nothing but
    the lock on the original."""
    k0, k1, k2, k3 = customers_on_distinct_shards(4)
    c0, c1, c2, c3 = (f"{x}/dep" for x in (k0, k1, k2, k3))
    await client.create(account("@cash"))
    await client.create(*(account(x, no_overdraft=True) for x in (c0, c1, c2, c3)))
    funding = [transfer(f"{x.split('/')[0]}/fund", "@cash", x, 100) for x in (c0, c1, c2, c3)]
    assert await client.codes(*funding) == [pb.RESULT_CODE_CREATED] * 4
    group = [transfer(f"{k1}/x1", c1, c2, 10, linked=True), transfer(f"{k1}/x2", c3, c0, 20)]
    assert await client.codes(*group) == [pb.RESULT_CODE_CREATED] * 2  # committed at c1's shard
    assert await client.codes(transfer(f"{k0}/t3", c0, "@cash", 5)) == [pb.RESULT_CODE_CREATED]
    undo = [
        pb.Transaction(id=f"{k0}/u3", code=1, reverses_id=f"{k0}/t3", linked=True),
        pb.Transaction(id=f"{k0}/u2", code=1, reverses_id=f"{k1}/x2"),
    ]
    results = await client.post(*undo)
    assert [r.code for r in results] == [pb.RESULT_CODE_CREATED] * 2, [r.message for r in results]
    assert (await client.transaction(f"{k1}/x2")).reversed_by_id == f"{k0}/u2"
    again = await client.post(pb.Transaction(id=f"{k0}/u9", code=1, reverses_id=f"{k1}/x2"))
    assert again[0].code == pb.RESULT_CODE_ALREADY_REVERSED
    balances = [await client.balance(x) for x in (c0, c1, c2, c3)]
    assert [b.credits_posted - b.debits_posted for b in balances] == [100, 90, 110, 100]
    await _clearing_nets_to_zero(client)
    report = await audit.audit_cluster(cluster.dsns, AuditConfig())
    assert report.ok, [f.message for shard in report.shards for f in shard.findings]


async def test_a_group_reverses_a_single_shard_post_decided_at_its_own_shard(
    cluster: Cluster, client: Client
) -> None:
    k0, k1 = customers_on_distinct_shards(2)
    c0, c1 = f"{k0}/dep", f"{k1}/dep"
    await client.create(account("@cash"))
    await client.create(*(account(x, no_overdraft=True) for x in (c0, c1)))
    funding = [transfer(f"{x.split('/')[0]}/fund", "@cash", x, 100) for x in (c0, c1)]
    assert await client.codes(*funding) == [pb.RESULT_CODE_CREATED] * 2
    assert (
        await client.codes(
            transfer(f"{k0}/t0", c0, "@cash", 7),
            transfer(f"{k1}/h", c1, "@cash", 30, pending=True),
        )
        == [pb.RESULT_CODE_CREATED] * 2
    )
    assert await client.codes(pb.Transaction(id=f"{k1}/p", code=1, post_pending_id=f"{k1}/h")) == [
        pb.RESULT_CODE_CREATED
    ]
    undo = [
        pb.Transaction(id=f"{k0}/u0", code=1, reverses_id=f"{k0}/t0", linked=True),
        pb.Transaction(id=f"{k0}/up", code=1, reverses_id=f"{k1}/p"),
    ]
    results = await client.post(*undo)
    assert [r.code for r in results] == [pb.RESULT_CODE_CREATED] * 2, [r.message for r in results]
    assert (await client.transaction(f"{k1}/p")).reversed_by_id == f"{k0}/up"
    balances = [await client.balance(x) for x in (c0, c1)]
    assert [b.credits_posted - b.debits_posted for b in balances] == [100, 100]
    refused = await client.post(
        pb.Transaction(id=f"{k0}/u9", code=1, reverses_id=f"{k1}/p", linked=True),
        pb.Transaction(id=f"{k0}/u8", code=1, reverses_id=f"{k1}/h"),
    )
    assert names([r.code for r in refused]) == [
        "RESULT_CODE_ALREADY_REVERSED",
        "RESULT_CODE_LINKED_ITEM_FAILED",
    ]
    await _clearing_nets_to_zero(client)
