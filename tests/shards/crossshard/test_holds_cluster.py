"""Holds whose legs span shards, through the gateway of a 4-shard cluster.

A cross-shard hold holds funds on every shard it touches; its fate (posted in full or in
part, voided, expired) is decided once, at its coordinator, and every other shard settles its
piece as decided. Each test ends with the cluster's books checked: clearing pieces net to zero,
nothing held that should not be, and every shard's audit clean.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from core import audit
from core.audit import AuditConfig
from core.slots import SlotMap
from shards.crossshard import coordinator as crossshard
from tally.v1 import ledger_pb2 as pb
from tally.v1 import shard_pb2 as spb
from tally.v1 import shard_pb2_grpc as spb_grpc
from tests.support import security
from tests.support.cluster import SHARD_COUNT, Cluster, customers_on_distinct_shards
from tests.support.helpers import (
    CREDIT,
    DEBIT,
    Client,
    account,
    audit_problems,
    leg,
    names,
    transfer,
)
from tests.support.processes import fetch_rows

CREATED, REPLAYED = pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[Client]:
    async with security.channel(cluster.target) as channel:
        yield Client(channel)
    await _books_balance(cluster, client_channel_target=cluster.target)


async def _books_balance(running: Cluster, client_channel_target: str) -> None:
    """Clearing nets to zero, and the cluster's audit (every shard, and every cross-shard
    transaction and hold merged over the shards) finds nothing."""
    async with security.channel(client_channel_target) as channel:
        clearing = await Client(channel).balance("@clearing/USD")
    assert clearing.debits_posted == clearing.credits_posted
    for node in running.nodes:
        assert await audit_problems(node.dsn) == []
    report = await audit.audit_cluster(running.dsns, AuditConfig())
    found = [f.message for shard in report.shards for f in shard.findings]
    assert report.ok, found + [f.message for f in report.cluster_problems]
    assert report.cross_shard.checked
    assert report.cross_shard.in_flight_count == 0


async def _customers(client: Client, count: int, funded: int = 1_000) -> list[str]:
    """count customers on distinct shards, each with a no-overdraft deposit holding `funded`."""
    customers = customers_on_distinct_shards(count)
    await client.create(account("@cash"))
    await client.create(*(account(f"{c}/dep", no_overdraft=True) for c in customers))
    codes = await client.codes(
        *(transfer(f"fund-{c}", "@cash", f"{c}/dep", funded) for c in customers)
    )
    assert codes == [CREATED] * count
    return customers


def _post(tid: str, hold: str, *legs: pb.Leg) -> pb.Transaction:
    return pb.Transaction(id=tid, code=1, post_pending_id=hold, legs=legs)


def _void(tid: str, hold: str) -> pb.Transaction:
    return pb.Transaction(id=tid, code=1, void_pending_id=hold)


async def _counters(client: Client, account_id: str) -> tuple[int, int, int, int]:
    b = await client.balance(account_id)
    return (b.debits_posted, b.credits_posted, b.debits_pending, b.credits_pending)


async def test_hold_across_shards_posted_in_part(client: Client) -> None:
    payer, payee = (f"{c}/dep" for c in await _customers(client, 2))
    hold = transfer("h1", payer, payee, 400, pending=True)
    created = (await client.post(hold))[0]
    assert created.code == CREATED, created.message
    again = (await client.post(hold))[0]
    assert (again.code, again.timestamp_ns) == (REPLAYED, created.timestamp_ns)
    assert (await client.balance(payer)).available == 600
    assert await _counters(client, payee) == (0, 1_000, 0, 400)
    record = await client.transaction("h1")
    assert record.status == pb.TRANSACTION_STATUS_PENDING
    assert record.transaction.pending
    assert sorted(x.account_id for x in record.applied_legs) == sorted([payer, payee])

    too_much = _post("p0", "h1", leg(payer, DEBIT, 401), leg(payee, CREDIT, 401))
    refused = (await client.post(too_much))[0]
    assert refused.code == pb.RESULT_CODE_POST_EXCEEDS_PENDING, refused.message
    assert "401" in refused.message and "400" in refused.message
    elsewhere = _post("p0", "h1", leg(payer, DEBIT, 1), leg("@cash", CREDIT, 1))
    assert await client.codes(elsewhere) == [pb.RESULT_CODE_POST_EXCEEDS_PENDING]

    post = _post("p1", "h1", leg(payer, DEBIT, 250), leg(payee, CREDIT, 250))
    posted = (await client.post(post))[0]
    assert posted.code == CREATED, posted.message
    assert (await client.post(post))[0].code == REPLAYED
    changed = _post("p1", "h1", leg(payer, DEBIT, 200), leg(payee, CREDIT, 200))
    assert await client.codes(changed) == [pb.RESULT_CODE_IDEMPOTENCY_CONFLICT]
    later = await client.post(_post("p2", "h1"), _void("v1", "h1"))
    assert names([r.code for r in later]) == ["RESULT_CODE_PENDING_ALREADY_RESOLVED"] * 2
    assert "p1" in later[0].message

    assert await _counters(client, payer) == (250, 1_000, 0, 0)
    assert await _counters(client, payee) == (0, 1_250, 0, 0)
    record = await client.transaction("h1")
    assert (record.status, record.resolved_by_id) == (pb.TRANSACTION_STATUS_PENDING_POSTED, "p1")
    post_record = await client.transaction("p1")
    assert post_record.transaction.post_pending_id == "h1"
    assert sorted((x.account_id, x.amount) for x in post_record.applied_legs) == sorted(
        [(payer, 250), (payee, 250)]
    )


async def test_hold_across_shards_posted_in_full_and_voided(client: Client) -> None:
    payer, payee = (f"{c}/dep" for c in await _customers(client, 2))
    assert (
        await client.codes(
            transfer("h1", payer, payee, 60, pending=True),
            transfer("h2", payee, payer, 40, pending=True),
        )
        == [CREATED] * 2
    )
    assert await client.codes(_post("post-h1", "h1"), _void("void-h2", "h2")) == [CREATED] * 2
    assert await client.codes(_void("void-h2", "h2")) == [REPLAYED]
    assert await _counters(client, payer) == (60, 1_000, 0, 0)
    assert await _counters(client, payee) == (0, 1_060, 0, 0)
    assert (await client.transaction("h2")).status == pb.TRANSACTION_STATUS_PENDING_VOIDED
    full = await client.transaction("post-h1")
    assert sorted((x.account_id, x.amount) for x in full.applied_legs) == sorted(
        [(payer, 60), (payee, 60)]
    )
    # A void or post of what is not a hold, or of nothing, is refused as on one shard.
    refused = await client.post(_void("v-x", "nothing"), _post("p-x", "post-h1"))
    assert names([r.code for r in refused]) == ["RESULT_CODE_PENDING_NOT_FOUND"] * 2


async def test_hold_held_on_an_insufficient_shard_is_refused_whole(client: Client) -> None:
    payer, payee = (f"{c}/dep" for c in await _customers(client, 2))
    refused = (await client.post(transfer("h1", payer, payee, 1_001, pending=True)))[0]
    assert refused.code == pb.RESULT_CODE_INSUFFICIENT_FUNDS, refused.message
    assert await _counters(client, payee) == (0, 1_000, 0, 0)
    lookup = await client.stub.GetTransactions(pb.GetTransactionsRequest(ids=["h1"]))
    assert lookup.results[0].code == pb.RESULT_CODE_TRANSACTION_NOT_FOUND
    # The id is free: a smaller hold under it works.
    assert await client.codes(transfer("h1", payer, payee, 1_000, pending=True)) == [CREATED]
    assert await client.codes(_void("v", "h1")) == [CREATED]


async def test_hold_across_shards_expires_everywhere(client: Client) -> None:
    payer, payee = (f"{c}/dep" for c in await _customers(client, 2))
    hold = transfer("h1", payer, payee, 70, pending=True, timeout_seconds=1)
    assert await client.codes(hold) == [CREATED]
    assert (await client.balance(payer)).debits_pending == 70
    for _ in range(100):
        if (await _counters(client, payer))[2:] == (0, 0) and (await _counters(client, payee))[
            2:
        ] == (0, 0):
            break
        await asyncio.sleep(0.1)
    assert await _counters(client, payer) == (0, 1_000, 0, 0)
    assert await _counters(client, payee) == (0, 1_000, 0, 0)
    record = await client.transaction("h1")
    assert record.status == pb.TRANSACTION_STATUS_PENDING_EXPIRED
    late = (await client.post(_post("late", "h1")))[0]
    assert late.code == pb.RESULT_CODE_PENDING_EXPIRED, late.message


async def test_partial_post_over_three_shards_moves_clearing_where_none_was_held(
    client: Client,
) -> None:
    """A shard whose held legs net to zero holds no clearing; posting part of it needs some."""
    a, b, c = await _customers(client, 3)
    await client.create(account(f"{a}/other"))
    hold = pb.Transaction(
        id="h3",
        code=1,
        pending=True,
        legs=[
            leg(f"{a}/dep", DEBIT, 100),
            leg(f"{a}/other", CREDIT, 50),
            leg(f"{b}/dep", DEBIT, 50),
            leg(f"{c}/dep", CREDIT, 100),
        ],
    )
    assert await client.codes(hold) == [CREATED]
    post = _post("p3", "h3", leg(f"{a}/dep", DEBIT, 60), leg(f"{c}/dep", CREDIT, 60))
    result = (await client.post(post))[0]
    assert result.code == CREATED, result.message
    assert await _counters(client, f"{a}/dep") == (60, 1_000, 0, 0)
    assert await _counters(client, f"{a}/other") == (0, 0, 0, 0)
    assert await _counters(client, f"{b}/dep") == (0, 1_000, 0, 0)
    assert await _counters(client, f"{c}/dep") == (0, 1_060, 0, 0)
    clearing = await client.balance("@clearing/USD")
    assert clearing.debits_pending == clearing.credits_pending == 0


async def _stub(running: Cluster, shard: int) -> tuple[grpc.aio.Channel, spb_grpc.ShardStub]:
    # tally.v1.Shard is served on the node's internal listener alone, to cluster identities.
    channel = security.cluster_channel(running.nodes[shard].internal_target)
    return channel, spb_grpc.ShardStub(channel)


def _shards_of(payer: str, payee: str) -> tuple[int, int]:
    slot_map = SlotMap.even(SHARD_COUNT)
    return slot_map.shard_of_account(payer), slot_map.shard_of_account(payee)


async def test_participants_settle_a_decision_nobody_told_them(
    cluster: Cluster,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a gateway that died after the coordinator decided leaves behind: the participants
    had been given a short deadline; at it they ask the coordinator and settle as decided."""
    payer, payee = (f"{c}/dep" for c in await _customers(client, 2))
    assert await client.codes(transfer("h1", payer, payee, 300, pending=True)) == [CREATED]
    coordinator, participant = _shards_of(payer, payee)
    async with security.channel(cluster.nodes[coordinator].target) as node:
        record = await Client(node).transaction("h1")  # the coordinator's own record
    attempt = record.cross_shard_piece.attempt
    assert record.cross_shard_piece.coordinator and attempt
    post = _post("p1", "h1", leg(payer, DEBIT, 120), leg(payee, CREDIT, 120))
    channel, stub = await _stub(cluster, participant)
    async with channel:
        soon = time.time_ns() + 1_000_000_000
        rearm = spb.SettleHoldItem(
            transaction_id="h1",
            attempt=attempt,
            fate=spb.HOLD_FATE_OPEN,
            deadline_ns=soon,
            before_decision=True,
        )
        answer = await stub.SettleHolds(spb.SettleHoldsRequest(items=[rearm]))
        assert answer.results[0].code == CREATED
    channel, stub = await _stub(cluster, coordinator)
    async with channel:
        item = spb.DecideHoldItem(resolution=post, decide_before_ns=soon)
        decided = await stub.DecideHolds(spb.DecideHoldsRequest(items=[item]))
        assert decided.results[0].code == CREATED, decided.results[0].message
        late = spb.DecideHoldItem(resolution=_void("v", "h1"), decide_before_ns=time.time_ns())
        too_late = await stub.DecideHolds(spb.DecideHoldsRequest(items=[late]))
        assert too_late.results[0].code == pb.RESULT_CODE_UNAVAILABLE
    assert await _counters(client, payer) == (120, 1_000, 0, 0)  # the coordinator's side
    assert (await client.balance(payee)).credits_pending == 300  # not told yet
    for _ in range(100):
        if (await client.balance(payee)).credits_pending == 0:
            break
        await asyncio.sleep(0.1)
    assert await _counters(client, payee) == (0, 1_120, 0, 0)


async def test_a_participant_that_missed_the_commit_keeps_holding_until_expiry(
    cluster: Cluster,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Prepared, then committed at the coordinator, and nobody told the participant: at its
    prepare deadline it asks, learns the hold is open, and keeps holding until the hold's
    own expiry; then it asks again and the coordinator expires the hold."""
    payer, payee = (f"{c}/dep" for c in await _customers(client, 2))
    coordinator, participant = _shards_of(payer, payee)
    await cluster.gateway.cluster.ensure_clearing_accounts({"USD"})
    message = transfer("h1", payer, payee, 90, pending=True, timeout_seconds=4)
    legs = tuple(
        crossshard.Leg(x.account_id, x.side == DEBIT, x.amount, x.currency) for x in message.legs
    )
    _, pieces = crossshard.split_pieces(legs, SlotMap.even(SHARD_COUNT))
    channel, stub = await _stub(cluster, participant)
    async with channel:
        item = spb.PrepareItem(
            piece=crossshard.piece_message(message, pieces[participant]),
            coordinator_shard=coordinator,
            deadline_seconds=1,
            attempt="b1",
        )
        assert (await stub.Prepare(spb.PrepareRequest(items=[item]))).results[0].code == CREATED
    channel, stub = await _stub(cluster, coordinator)
    async with channel:
        piece = spb.CommitItem(
            piece=crossshard.piece_message(message, pieces[coordinator]), attempt="b1"
        )
        committed = await stub.Commit(spb.CommitRequest(items=[piece]))
        assert committed.results[0].code == CREATED, committed.results[0].message
    started = time.monotonic()
    await asyncio.sleep(2.5)  # past the prepare deadline, before the hold's expiry
    assert (await client.balance(payee)).credits_pending == 90
    assert (await client.transaction("h1")).status == pb.TRANSACTION_STATUS_PENDING
    for _ in range(100):
        if (await client.balance(payee)).credits_pending == 0:
            break
        await asyncio.sleep(0.1)
    assert time.monotonic() - started >= 1.0
    assert await _counters(client, payee) == (0, 1_000, 0, 0)
    assert await _counters(client, payer) == (0, 1_000, 0, 0)
    assert (await client.transaction("h1")).status == pb.TRANSACTION_STATUS_PENDING_EXPIRED


async def test_posts_of_cross_shard_holds_are_reversed_once_and_holds_never(
    cluster: Cluster,
    client: Client,
) -> None:
    payer, payee = (f"{c}/dep" for c in await _customers(client, 2))
    assert (
        await client.codes(
            transfer("h1", payer, payee, 300, pending=True),
            transfer("h2", payer, payee, 200, pending=True),
        )
        == [CREATED] * 2
    )
    refused = (await client.post(pb.Transaction(id="r0", code=1, reverses_id="h1")))[0]
    assert refused.code == pb.RESULT_CODE_NOT_REVERSIBLE, refused.message
    post = _post("p1", "h1", leg(payer, DEBIT, 120), leg(payee, CREDIT, 120))
    assert await client.codes(post, _post("p2", "h2")) == [CREATED] * 2
    assert await _counters(client, payer) == (320, 1_000, 0, 0)
    # On its own shard alone, the post cannot be reversed: its legs live on two shards.
    coordinator = SlotMap.even(SHARD_COUNT).shard_of_account(payer)
    async with security.channel(cluster.nodes[coordinator].target) as node:
        # (named under the payer's partition key, so that this shard is its home)
        alone_id = f"{payer.split('/')[0]}/r-x"
        alone = (await Client(node).post(pb.Transaction(id=alone_id, code=1, reverses_id="p1")))[0]
    assert alone.code == pb.RESULT_CODE_NOT_REVERSIBLE, alone.message
    assert "gateway" in alone.message

    reversals = [pb.Transaction(id=f"r{n}", code=1, reverses_id=f"p{n}") for n in (1, 2)]
    results = await client.post(*reversals)
    assert [r.code for r in results] == [CREATED] * 2, [r.message for r in results]
    assert await client.codes(*reversals) == [REPLAYED] * 2
    again = (await client.post(pb.Transaction(id="r9", code=1, reverses_id="p1")))[0]
    assert again.code == pb.RESULT_CODE_ALREADY_REVERSED, again.message
    assert await _counters(client, payer) == (320, 1_320, 0, 0)
    assert await _counters(client, payee) == (320, 1_320, 0, 0)
    assert (await client.transaction("p2")).reversed_by_id == "r2"
    undo = await client.transaction("r2")
    assert sorted((x.account_id, x.side, x.amount) for x in undo.applied_legs) == sorted(
        [(payer, CREDIT, 200), (payee, DEBIT, 200)]
    )


async def test_linked_groups_decide_hold_fates_with_other_transactions(
    client: Client,
) -> None:
    """A post or void of a cross-shard hold linked with transfers and holds: all or nothing."""
    payer, payee, third = (f"{c}/dep" for c in await _customers(client, 3))
    # A linked group's ids share a partition key (the payer's): one shard records the group.
    k = payer.split("/")[0]
    assert (
        await client.codes(
            transfer(f"{k}/h1", payer, payee, 300, pending=True),
            transfer(f"{k}/h2", payer, third, 100, pending=True),
        )
        == [CREATED] * 2
    )
    capture = _post(f"{k}/p1", f"{k}/h1", leg(payer, DEBIT, 200), leg(payee, CREDIT, 200))
    capture.linked = True
    fee = transfer(f"{k}/fee1", payer, "@cash", 2_000, linked=True)  # more than payer has
    release = _void(f"{k}/v2", f"{k}/h2")
    refused = await client.post(capture, fee, release)
    assert names([r.code for r in refused]) == [
        "RESULT_CODE_LINKED_ITEM_FAILED",
        "RESULT_CODE_INSUFFICIENT_FUNDS",
        "RESULT_CODE_LINKED_ITEM_FAILED",
    ]
    assert (await client.transaction(f"{k}/h1")).status == pb.TRANSACTION_STATUS_PENDING
    assert (await client.transaction(f"{k}/h2")).status == pb.TRANSACTION_STATUS_PENDING
    assert await _counters(client, payee) == (0, 1_000, 0, 300)
    assert await _counters(client, third) == (0, 1_000, 0, 100)

    fee.legs[0].amount = fee.legs[1].amount = 5
    also = transfer(f"{k}/h3", third, payer, 50, pending=True, linked=True)
    assert await client.codes(capture, also, fee, release) == [CREATED] * 4
    assert await client.codes(capture, also, fee, release) == [REPLAYED] * 4
    assert await _counters(client, payer) == (205, 1_000, 0, 50)
    assert await _counters(client, payee) == (0, 1_200, 0, 0)
    assert await _counters(client, third) == (0, 1_000, 50, 0)
    assert (await client.transaction(f"{k}/h2")).resolved_by_id == f"{k}/v2"
    # A fate already decided fails the group, naming why.
    late = _void(f"{k}/v1", f"{k}/h1")
    late.linked = True
    answered = await client.post(late, transfer(f"{k}/fee2", payer, "@cash", 1))
    assert names([r.code for r in answered]) == [
        "RESULT_CODE_PENDING_ALREADY_RESOLVED",
        "RESULT_CODE_LINKED_ITEM_FAILED",
    ]
    assert await client.codes(_void(f"{k}/v3", f"{k}/h3")) == [CREATED]


async def test_a_linked_group_decides_holds_recorded_at_different_shards(
    cluster: Cluster,
    client: Client,
) -> None:
    """Holds recorded at three shards (two across shards, one on a single shard), decided by
    one linked group (its ids under one partition key, "g"): the group is coordinated at its
    ids' home; where a hold is recorded a piece locks the hold until the group's decision,
    then applies the post or void there."""
    a, b, c = (f"{x}/dep" for x in await _customers(client, 3))
    await client.create(account(f"{c.split('/')[0]}/sav"))
    c_sav = f"{c.split('/')[0]}/sav"
    assert (
        await client.codes(
            transfer("h1", a, b, 10, pending=True),  # recorded at a's shard
            transfer("h2", b, a, 20, pending=True),  # at b's
            transfer("h3", c, c_sav, 30, pending=True),  # c's shard alone
            transfer("h4", b, c, 40, pending=True),
            transfer("h5", c, c_sav, 50, pending=True),
        )
        == [CREATED] * 5
    )

    def linked(message: pb.Transaction) -> pb.Transaction:
        message.linked = True
        return message

    # A group failing on its last item decides nothing, and leaves no hold locked.
    failing = [
        linked(_void("g/v4", "h4")),
        linked(_post("g/p5", "h5")),
        transfer("g/big", a, b, 9_999),
    ]
    assert names([r.code for r in await client.post(*failing)]) == [
        "RESULT_CODE_LINKED_ITEM_FAILED",
        "RESULT_CODE_LINKED_ITEM_FAILED",
        "RESULT_CODE_INSUFFICIENT_FUNDS",
    ]
    for hold in ("h4", "h5"):
        record = await client.transaction(hold)
        assert (record.status, record.resolved_by_id) == (pb.TRANSACTION_STATUS_PENDING, "")
    group = [
        linked(_post("g/p1", "h1")),
        linked(_post("g/p2", "h2", leg(b, DEBIT, 5), leg(a, CREDIT, 5))),
        _void("g/v3", "h3"),
    ]
    results = await client.post(*group)
    assert [r.code for r in results] == [CREATED] * 3, [r.message for r in results]
    assert await client.codes(*group) == [REPLAYED] * 3
    expected = {
        "h1": (pb.TRANSACTION_STATUS_PENDING_POSTED, "g/p1"),
        "h2": (pb.TRANSACTION_STATUS_PENDING_POSTED, "g/p2"),
        "h3": (pb.TRANSACTION_STATUS_PENDING_VOIDED, "g/v3"),
    }
    for hold, (status, by) in expected.items():
        record = await client.transaction(hold)
        assert (record.status, record.resolved_by_id) == (status, by), hold
    assert await _counters(client, a) == (10, 1_005, 0, 0)
    assert await _counters(client, b) == (5, 1_010, 40, 0)
    assert await _counters(client, c_sav) == (0, 0, 0, 50)
    post = await client.transaction("g/p2")
    assert sorted((x.account_id, x.amount) for x in post.applied_legs) == sorted([(a, 5), (b, 5)])
    # The failed group's holds were free all along: decided now, one group again.
    assert await client.codes(linked(_void("g/v4", "h4")), _post("g/p5", "h5")) == [CREATED] * 2
    assert await _counters(client, c_sav) == (0, 50, 0, 0)


async def test_linked_groups_decided_where_their_records_live(client: Client) -> None:
    """Reversals, posts and voids of records on one shard, and of cross-shard transactions
    and holds recorded there, linked with transfers spanning shards: one unit coordinated by
    that shard, all or nothing."""
    a, b, c = (f"{x}/dep" for x in await _customers(client, 3))
    await client.create(account(f"{a.split('/')[0]}/sav"))
    a_sav = f"{a.split('/')[0]}/sav"
    # Recorded at a's shard: named under a's partition key (h5, at c's, under c's).
    ka, kc = a.split("/")[0], c.split("/")[0]
    assert (
        await client.codes(
            transfer(f"{ka}/local", a, a_sav, 100),  # one shard: a's
            transfer(f"{ka}/local-hold", a, a_sav, 50, pending=True),
            transfer(f"{ka}/cross", a, b, 70),  # coordinated at a's shard
            transfer(f"{ka}/cross-hold", a, c, 30, pending=True),
        )
        == [CREATED] * 4
    )
    undo = pb.Transaction(id=f"{ka}/undo-local", code=1, reverses_id=f"{ka}/local", linked=True)
    capture = _post(f"{ka}/cap-local", f"{ka}/local-hold")
    capture.linked = True
    undo_cross = pb.Transaction(
        id=f"{ka}/undo-cross", code=1, reverses_id=f"{ka}/cross", linked=True
    )
    release = _void(f"{ka}/rel-cross", f"{ka}/cross-hold")
    release.linked = True
    pay = transfer(f"{ka}/pay", b, c, 10)
    group = [undo, capture, undo_cross, release, pay]
    results = await client.post(*group)
    assert [r.code for r in results] == [CREATED] * 5, [r.message for r in results]
    assert await client.codes(*group) == [REPLAYED] * 5
    assert await _counters(client, a) == (220, 1_170, 0, 0)
    assert await _counters(client, a_sav) == (100, 150, 0, 0)
    assert await _counters(client, b) == (80, 1_070, 0, 0)
    assert await _counters(client, c) == (0, 1_010, 0, 0)
    assert (await client.transaction(f"{ka}/local")).reversed_by_id == f"{ka}/undo-local"
    assert (await client.transaction(f"{ka}/cross")).reversed_by_id == f"{ka}/undo-cross"

    # A group failing on its last item applies none of the others.
    assert (
        await client.codes(
            transfer(f"{ka}/h4", a, b, 5, pending=True), transfer(f"{kc}/h5", c, a, 5, pending=True)
        )
        == [CREATED] * 2
    )
    first = _void(f"{ka}/v4", f"{ka}/h4")
    first.linked = True
    failing = [first, transfer(f"{ka}/too-much", b, c, 5_000)]
    assert names([r.code for r in await client.post(*failing)]) == [
        "RESULT_CODE_LINKED_ITEM_FAILED",
        "RESULT_CODE_INSUFFICIENT_FUNDS",
    ]
    assert (await client.transaction(f"{ka}/h4")).status == pb.TRANSACTION_STATUS_PENDING
    # h4 is decided at a's shard, h5 at c's: one group decides both.
    first.id = f"{ka}/v4"
    assert await client.codes(first, _void(f"{ka}/v5", f"{kc}/h5")) == [CREATED] * 2


async def test_a_participant_asking_about_a_hold_being_decided_keeps_asking(
    cluster: Cluster,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hold locked at its coordinator by another unit's piece (a linked group deciding it,
    its gateway gone): the hold's participant, asking at its short deadline, hears "open,
    deciding" and keeps asking every prepare deadline, rather than going back to the hold's
    expiry (none here). When the lock's unit is found undecided and aborted, the hold is free
    again and the participant goes back to waiting for the hold's fate."""
    monkeypatch.setattr(crossshard, "PREPARE_DEADLINE_S", 1)
    payer, payee, other = (f"{c}/dep" for c in await _customers(client, 3))
    assert await client.codes(transfer("h1", payer, payee, 40, pending=True)) == [CREATED]
    coordinator, participant = _shards_of(payer, payee)
    third = SlotMap.even(SHARD_COUNT).shard_of_account(other)
    piece_deadline = await _piece_deadlines(cluster, participant)
    # Confirmed: the hold never expires, so the piece is asked about after HOLD_REASK_S.
    assert [d > time.time_ns() + 600 * 10**9 for d in piece_deadline.values()] == [True]
    await _lock_by_an_undecided_unit(cluster, "h1", coordinator, third)
    # A post meanwhile: its participant re-armed for a second, the decision refused.
    refused = (await client.post(_void("v2", "h1")))[0]
    assert refused.code == pb.RESULT_CODE_UNAVAILABLE and "being decided" in refused.message
    await asyncio.sleep(2.0)  # past that second, before the lock's deadline
    asking = (await _piece_deadlines(cluster, participant)).values()
    assert [d < time.time_ns() + 10 * 10**9 for d in asking] == [True]  # still asking, often
    for _ in range(100):  # the lock's unit is undecided: aborted at its deadline, lock freed
        if (await client.post(_void("v3", "h1")))[0].code == CREATED:
            break
        await asyncio.sleep(0.1)
    assert (await client.transaction("h1")).resolved_by_id == "v3"
    assert await _counters(client, payee) == (0, 1_000, 0, 0)


async def _lock_by_an_undecided_unit(
    running: Cluster,
    hold_id: str,
    coordinator: int,
    unit_coordinator: int,
) -> None:
    """Lock a hold at its coordinator by a piece voiding it, of a unit coordinated at another
    shard that never decides (its gateway gone): aborted at the piece's 3 s deadline."""
    channel, stub = await _stub(running, coordinator)
    async with channel:
        lock = spb.PrepareItem(
            piece=_void("v1", hold_id),
            coordinator_shard=unit_coordinator,
            deadline_seconds=3,
            attempt="d1",
            decides=True,
        )
        answer = await stub.Prepare(spb.PrepareRequest(items=[lock]))
        assert answer.results[0].code == CREATED, answer.results[0].message


async def _piece_deadlines(running: Cluster, shard: int) -> dict[str, int]:
    rows = await fetch_rows(
        running.nodes[shard].dsn, "SELECT transaction_id, expires_at_ns FROM holds"
    )
    return {row["transaction_id"]: row["expires_at_ns"] for row in rows}


async def test_a_locked_hold_expires_once_its_lock_is_gone(
    cluster: Cluster,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hold being decided by another unit's piece does not expire under it; once that
    unit is found undecided and the lock freed, the hold expires on every shard (its
    participant, told "deciding" at the hold's expiry, asks again a prepare deadline later)."""
    monkeypatch.setattr(crossshard, "PREPARE_DEADLINE_S", 1)
    payer, payee, other = (f"{c}/dep" for c in await _customers(client, 3))
    hold = transfer("h1", payer, payee, 40, pending=True, timeout_seconds=1)
    assert await client.codes(hold) == [CREATED]
    coordinator, _ = _shards_of(payer, payee)
    third = SlotMap.even(SHARD_COUNT).shard_of_account(other)
    await _lock_by_an_undecided_unit(cluster, "h1", coordinator, third)
    await asyncio.sleep(1.5)  # past the hold's expiry, before the lock's deadline
    assert (await client.transaction("h1")).status == pb.TRANSACTION_STATUS_PENDING
    for _ in range(100):
        if (await client.transaction("h1")).status == pb.TRANSACTION_STATUS_PENDING_EXPIRED:
            break
        await asyncio.sleep(0.1)
    assert (await client.transaction("h1")).status == pb.TRANSACTION_STATUS_PENDING_EXPIRED
    for _ in range(100):
        if (await client.balance(payee)).credits_pending == 0:
            break
        await asyncio.sleep(0.1)
    assert await _counters(client, payee) == (0, 1_000, 0, 0)
    assert await _counters(client, payer) == (0, 1_000, 0, 0)
