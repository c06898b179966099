"""Defence in depth at one node: what the gateway refuses, the node refuses too.

A node is reachable without its gateway (its client listener serves tally.v1.Ledger), so it
must not rely on the gateway's checks: clients cannot post to, create or close the cluster's
`@clearing/...` accounts, nor use ids or metadata keys of the reserved `~` namespace. The
internal tally.v1.Shard service is served only on the internal listener, to cluster identities
(the client listener neither serves nor lists it), and even there every field of its RPCs is
checked before anything reaches the writer. The clearing accounts themselves reach a node only
through Shard.CreateClearingAccounts.

All cases share one node (module scope, with an internal listener); each uses its own ids, and
the last test audits that nothing was half-applied.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from core import ids, limits
from core.validation import CLEARING_RESERVED
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tally.v1 import shard_pb2 as spb
from tally.v1 import shard_pb2_grpc as spb_grpc
from tests.support import security
from tests.support.helpers import (
    CREDIT,
    DEBIT,
    Client,
    NodeHandle,
    account,
    audit_problems,
    leg,
    name,
    names,
    start_node,
    transfer,
)

CLEARING = ids.clearing_account("USD")


@dataclass
class Shard:
    """The node, a client on its client listener (the admin identity) and a Shard stub on its
    internal listener (the cluster identity, as a gateway's)."""

    node: NodeHandle
    channel: grpc.aio.Channel
    client: Client
    internal: grpc.aio.Channel
    stub: spb_grpc.ShardStub

    async def balance(self, account_id: str) -> pb.Balance:
        return await self.client.balance(account_id)


@pytest.fixture(scope="module")
async def shard(pg: EmbeddedPostgres) -> AsyncIterator[Shard]:
    database = f"defence_{os.getpid()}_{time.time_ns()}"
    await pg.create_database_async(database)
    handle = await start_node(pg.dsn(database), internal_listen="127.0.0.1:0")
    try:
        async with (
            security.channel(handle.target) as channel,
            security.cluster_channel(handle.internal_target) as internal,
        ):
            client = Client(channel)
            accounts = [account("@bank"), account("c1/dep"), account("c2/dep")]
            assert set(names(await client.create(*accounts))) == {"RESULT_CODE_CREATED"}
            funding = transfer("fund-c1", "@bank", "c1/dep", 1_000)
            assert names(await client.codes(funding)) == ["RESULT_CODE_CREATED"]
            stub = spb_grpc.ShardStub(internal)
            response = await stub.CreateClearingAccounts(
                spb.CreateClearingAccountsRequest(currencies=["USD"]), timeout=30
            )
            assert names([r.code for r in response.results]) == ["RESULT_CODE_CREATED"]
            yield Shard(handle, channel, client, internal, stub)
    finally:
        await handle.stop()


async def _invalid_argument(call: Any, request: Any, *wanted: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    details = raised.value.details() or ""
    for text in wanted:
        assert text in details, details
    return details


# ---- the Ledger API: clearing accounts and the reserved namespace ----


async def test_clearing_accounts_come_only_through_the_shard_api(shard: Shard) -> None:
    record = await shard.client.account(CLEARING)
    assert record.account.code == 9999 and record.account.currency == "USD"
    again = await shard.stub.CreateClearingAccounts(
        spb.CreateClearingAccountsRequest(currencies=["USD", "EUR", "usd", ""]), timeout=30
    )
    assert names([r.code for r in again.results]) == [
        "RESULT_CODE_REPLAYED",
        "RESULT_CODE_CREATED",
        "RESULT_CODE_INVALID_CURRENCY",
        "RESULT_CODE_INVALID_CURRENCY",
    ]
    assert "currencies[2]" in again.results[2].message
    assert (await shard.client.account(ids.clearing_account("EUR"))).account.currency == "EUR"


async def test_clients_cannot_create_or_close_clearing_accounts(shard: Shard) -> None:
    created = await shard.client.stub.CreateAccounts(
        pb.CreateAccountsRequest(
            accounts=[account("@clearing/JPY", currency="JPY"), account("c-ok/dep")]
        ),
        timeout=30,
    )
    assert names([r.code for r in created.results]) == [
        "RESULT_CODE_INVALID_ID",
        "RESULT_CODE_CREATED",
    ]
    assert created.results[0].message == CLEARING_RESERVED
    closed = await shard.client.stub.CloseAccounts(
        pb.CloseAccountsRequest(accounts=[pb.CloseAccount(account_id=CLEARING)]), timeout=30
    )
    assert [(name(r.code), r.message) for r in closed.results] == [
        ("RESULT_CODE_INVALID_ID", CLEARING_RESERVED)
    ]
    lookup = await shard.client.stub.GetAccounts(
        pb.GetAccountsRequest(ids=["@clearing/JPY"]), timeout=30
    )
    assert lookup.results[0].code == pb.RESULT_CODE_ACCOUNT_NOT_FOUND
    assert not (await shard.client.account(CLEARING)).closed


async def test_clients_cannot_post_to_clearing_accounts(shard: Shard) -> None:
    """The outsider's mint: debit the clearing account, credit a customer."""
    before = await shard.balance("c2/dep")
    mint = transfer("mint-1", CLEARING, "c2/dep", 1_000_000_000)
    hold = transfer("mint-2", CLEARING, "c2/dep", 5, pending=True)
    drain = transfer("drain-1", "c1/dep", CLEARING, 5)
    linked = transfer("mint-3a", "@bank", "c2/dep", 5, linked=True)
    results = await shard.client.post(
        mint, hold, drain, linked, transfer("mint-3b", CLEARING, "c2/dep", 5)
    )
    assert [(name(r.code), r.message) for r in results] == [
        ("RESULT_CODE_INVALID_LEGS", CLEARING_RESERVED),
        ("RESULT_CODE_INVALID_LEGS", CLEARING_RESERVED),
        ("RESULT_CODE_INVALID_LEGS", CLEARING_RESERVED),
        ("RESULT_CODE_LINKED_ITEM_FAILED", "item 1 of this linked group failed"),
        ("RESULT_CODE_INVALID_LEGS", CLEARING_RESERVED),
    ]
    assert await shard.balance("c2/dep") == before
    clearing = await shard.balance(CLEARING)
    assert (clearing.debits_posted, clearing.credits_posted, clearing.debits_pending) == (0, 0, 0)


async def test_clients_cannot_post_a_hold_part_to_a_clearing_account(shard: Shard) -> None:
    hold = transfer("hold-c1", "c1/dep", "c2/dep", 10, pending=True)
    assert names(await shard.client.codes(hold)) == ["RESULT_CODE_CREATED"]
    post = pb.Transaction(
        id="post-c1",
        code=1,
        post_pending_id="hold-c1",
        legs=[leg("c1/dep", DEBIT, 10), leg(CLEARING, CREDIT, 10)],
    )
    (result,) = await shard.client.post(post)
    assert (name(result.code), result.message) == ("RESULT_CODE_INVALID_LEGS", CLEARING_RESERVED)
    assert (await shard.client.transaction("hold-c1")).status == pb.TRANSACTION_STATUS_PENDING


@pytest.mark.parametrize(
    ("item", "code", "text"),
    [
        (transfer("~piece/a1/t", "@bank", "c2/dep", 5), "INVALID_ID", "id '~piece/a1/t'"),
        (transfer("~abort/a1/t", "@bank", "c2/dep", 5), "INVALID_ID", "id '~abort/a1/t'"),
        (transfer("res-1", "~x", "c2/dep", 5), "INVALID_ID", "legs[0].account_id '~x'"),
        (
            transfer("res-2", "@bank", "c2/dep", 5, metadata={"~reverses": "fund-c1"}),
            "INVALID_METADATA",
            "metadata key '~reverses'",
        ),
        (
            pb.Transaction(id="res-3", code=1, reverses_id="~reversal/fund-c1"),
            "INVALID_ID",
            "reverses_id '~reversal/fund-c1'",
        ),
        (
            pb.Transaction(id="res-4", code=1, void_pending_id="~piece/a1/t"),
            "INVALID_ID",
            "void_pending_id '~piece/a1/t'",
        ),
        (
            pb.Transaction(id="res-5", code=1, post_pending_id="~expired/h"),
            "INVALID_ID",
            "post_pending_id '~expired/h'",
        ),
    ],
)
async def test_reserved_namespace_refused_in_transactions(
    shard: Shard, item: pb.Transaction, code: str, text: str
) -> None:
    (result,) = await shard.client.post(item)
    assert name(result.code) == f"RESULT_CODE_{code}", result
    assert text in result.message, result.message


async def test_reserved_namespace_refused_in_accounts(shard: Shard) -> None:
    created = await shard.client.stub.CreateAccounts(
        pb.CreateAccountsRequest(
            accounts=[account("~x"), account("c9/dep", metadata={"~fate": "post"})]
        ),
        timeout=30,
    )
    assert [name(r.code) for r in created.results] == [
        "RESULT_CODE_INVALID_ID",
        "RESULT_CODE_INVALID_METADATA",
    ]
    assert "id '~x'" in created.results[0].message
    assert "metadata key '~fate'" in created.results[1].message
    closed = await shard.client.stub.CloseAccounts(
        pb.CloseAccountsRequest(accounts=[pb.CloseAccount(account_id="~x")]), timeout=30
    )
    assert closed.results[0].code == pb.RESULT_CODE_INVALID_ID


# ---- the Shard API: only on the internal listener ----


async def _listed_services(channel: grpc.aio.Channel) -> set[str]:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = [r async for r in reflection.ServerReflectionInfo(iter([request]), timeout=10)]
    return {service.name for service in responses[0].list_services_response.service}


async def test_client_listener_does_not_serve_the_shard_api(shard: Shard) -> None:
    """Not to the admin identity, nor to the cluster identity: the client listener has no
    tally.v1.Shard at all (UNIMPLEMENTED, as for any method it does not have), and its
    reflection does not list it; the internal listener lists it and serves it."""
    request = spb.CreateClearingAccountsRequest(currencies=["CHF"])
    async with security.cluster_channel(shard.node.target) as cluster_on_client:
        for channel in (shard.channel, cluster_on_client):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await spb_grpc.ShardStub(channel).CreateClearingAccounts(request, timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED, refused.value.details()
        assert "tally.v1.Shard" not in await _listed_services(cluster_on_client)
    client_listed = await _listed_services(shard.channel)
    assert "tally.v1.Shard" not in client_listed
    assert {"tally.v1.Ledger", "grpc.health.v1.Health"} <= client_listed
    assert "tally.v1.Shard" in await _listed_services(shard.internal)
    lookup = await shard.client.stub.GetAccounts(
        pb.GetAccountsRequest(ids=[ids.clearing_account("CHF")]), timeout=30
    )
    assert lookup.results[0].code == pb.RESULT_CODE_ACCOUNT_NOT_FOUND  # nothing was applied


async def test_internal_listener_refuses_identities_that_are_not_the_clusters(
    shard: Shard,
) -> None:
    """The admin identity (every client role, every account) is no cluster identity."""
    request = spb.CreateClearingAccountsRequest(currencies=["CHF"])
    async with security.channel(shard.node.internal_target) as admin_on_internal:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await spb_grpc.ShardStub(admin_on_internal).CreateClearingAccounts(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, refused.value.details()
    assert "cluster identities" in (refused.value.details() or "")


# ---- the Shard API: every field checked before the writer ----


@pytest.mark.parametrize(
    "reason", [12345, -1, pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED, pb.RESULT_CODE_OK]
)
async def test_abort_reason_must_be_a_refusal(shard: Shard, reason: int) -> None:
    """Before: 12345 was recorded, and the Commit of that attempt killed the node (ValueError
    inside the writer's batch); CREATED made the genuine Commit answer CREATED, applying
    nothing."""
    transaction_id = f"ab-{reason & 0xFFFF}"
    abort = spb.AbortRequest(
        items=[spb.AbortItem(transaction_id=transaction_id, attempt="a1", reason=reason)]
    )
    await _invalid_argument(shard.stub.Abort, abort, "items[0].reason")
    before = await shard.balance("c2/dep")
    piece = transfer(transaction_id, "@bank", "c2/dep", 3)
    committed = await shard.stub.Commit(
        spb.CommitRequest(items=[spb.CommitItem(piece=piece, attempt="a1")]), timeout=30
    )
    assert names([r.code for r in committed.results]) == ["RESULT_CODE_CREATED"]
    assert (await shard.balance("c2/dep")).credits_posted == before.credits_posted + 3
    assert (await shard.client.transaction(transaction_id)).status == pb.TRANSACTION_STATUS_POSTED


async def test_abort_with_a_refusal_reason_still_records_it(shard: Shard) -> None:
    abort = spb.AbortRequest(
        items=[
            spb.AbortItem(
                transaction_id="ab-ok",
                attempt="a1",
                reason=pb.RESULT_CODE_INSUFFICIENT_FUNDS,
                message="no money",
            ),
            spb.AbortItem(transaction_id="ab-default", attempt="a1"),
        ]
    )
    decisions = (await shard.stub.Abort(abort, timeout=30)).decisions
    assert [(d.committed, name(d.reason), d.message) for d in decisions] == [
        (False, "RESULT_CODE_INSUFFICIENT_FUNDS", "no money"),
        (False, "RESULT_CODE_UNAVAILABLE", ""),
    ]
    piece = transfer("ab-ok", "@bank", "c2/dep", 3)
    committed = await shard.stub.Commit(
        spb.CommitRequest(items=[spb.CommitItem(piece=piece, attempt="a1")]), timeout=30
    )
    assert [(name(r.code), r.message) for r in committed.results] == [
        ("RESULT_CODE_INSUFFICIENT_FUNDS", "no money")
    ]


async def test_prepare_names_a_coordinator_that_exists(shard: Shard) -> None:
    """Before: a piece whose coordinator no shard is held its funds forever (nobody to ask)."""
    before = await shard.balance("c1/dep")
    piece = transfer("pr-1", "c1/dep", CLEARING, 7)
    request = spb.PrepareRequest(
        items=[spb.PrepareItem(piece=piece, coordinator_shard=7, deadline_seconds=30, attempt="a1")]
    )
    await _invalid_argument(shard.stub.Prepare, request, "items[0].coordinator_shard", "7")
    assert await shard.balance("c1/dep") == before


async def test_prepare_deadline_is_bounded(shard: Shard) -> None:
    piece = transfer("pr-2", "c1/dep", CLEARING, 7)
    request = spb.PrepareRequest(
        items=[
            spb.PrepareItem(
                piece=piece, coordinator_shard=0, deadline_seconds=2**32 - 1, attempt="a1"
            )
        ]
    )
    await _invalid_argument(shard.stub.Prepare, request, "items[0].deadline_seconds")


async def test_prepare_piece_kinds(shard: Shard) -> None:
    """A participant's piece is a transfer or a hold (or a reversal's, a post's or a void's
    piece, said by reverses_id / decides): the piece message itself names no target."""
    items = [
        spb.PrepareItem(
            piece=pb.Transaction(id="pr-3", code=1, post_pending_id="hold-c1"),
            coordinator_shard=0,
            deadline_seconds=30,
            attempt="a1",
        ),
        spb.PrepareItem(
            piece=pb.Transaction(id="pr-4", code=0),
            coordinator_shard=0,
            deadline_seconds=30,
            attempt="a1",
            reverses_id="fund-c1",
        ),
        spb.PrepareItem(
            piece=pb.Transaction(id="pr-5", code=1, value_date="2026-02-30"),
            coordinator_shard=0,
            deadline_seconds=30,
            attempt="a1",
            reverses_id="fund-c1",
        ),
        spb.PrepareItem(
            piece=pb.Transaction(id="pr-6", code=1, metadata={"~fate": "post"}),
            coordinator_shard=0,
            deadline_seconds=30,
            attempt="a1",
            reverses_id="fund-c1",
        ),
    ]
    response = await shard.stub.Prepare(spb.PrepareRequest(items=items), timeout=30)
    assert [name(r.code) for r in response.results] == [
        "RESULT_CODE_INVALID_FLAGS",
        "RESULT_CODE_INVALID_CODE",
        "RESULT_CODE_INVALID_VALUE_DATE",
        "RESULT_CODE_INVALID_METADATA",
    ]
    assert "post_pending_id" in response.results[0].message
    assert (await shard.client.transaction("fund-c1")).reversed_by_id == ""


async def test_prepare_deciding_piece_refuses_clearing_legs(shard: Shard) -> None:
    """A piece deciding a hold here carries the client's post: checked as a client's."""
    post = pb.Transaction(
        id="pr-7",
        code=1,
        post_pending_id="hold-c1",
        legs=[leg("c1/dep", DEBIT, 1), leg(CLEARING, CREDIT, 1)],
    )
    item = spb.PrepareItem(
        piece=post, coordinator_shard=0, deadline_seconds=30, attempt="a1", decides=True
    )
    response = await shard.stub.Prepare(spb.PrepareRequest(items=[item]), timeout=30)
    assert [(name(r.code), r.message) for r in response.results] == [
        ("RESULT_CODE_INVALID_LEGS", CLEARING_RESERVED)
    ]


async def test_commit_without_legs_checks_its_fields(shard: Shard) -> None:
    items = [
        spb.CommitItem(piece=pb.Transaction(id="cm-1", code=0), attempt="a1"),
        spb.CommitItem(piece=pb.Transaction(id="cm-2", code=1, value_date="x"), attempt="a1"),
        spb.CommitItem(piece=pb.Transaction(id="cm-3", code=1, metadata={"~x": "y"}), attempt="a1"),
        spb.CommitItem(
            piece=pb.Transaction(id="cm-4", code=1, pending=True, timeout_seconds=2**32 - 1),
            attempt="a1",
        ),
    ]
    response = await shard.stub.Commit(spb.CommitRequest(items=items), timeout=30)
    assert [name(r.code) for r in response.results] == [
        "RESULT_CODE_INVALID_CODE",
        "RESULT_CODE_INVALID_VALUE_DATE",
        "RESULT_CODE_INVALID_METADATA",
        "RESULT_CODE_INVALID_TIMEOUT",
    ]


async def test_commit_as_sent_is_only_a_reversal_post_or_void(shard: Shard) -> None:
    """Before: as_sent applied any transaction as sent, so one the gateway would refuse (a
    client leg on a clearing account) was created."""
    before = await shard.balance("c2/dep")
    mint = spb.CommitItem(
        piece=transfer("cm-mint", CLEARING, "c2/dep", 1_000_000), attempt="a1", as_sent=True
    )
    await _invalid_argument(
        shard.stub.Commit, spb.CommitRequest(items=[mint]), "items[0].piece", "as_sent"
    )
    plain = spb.CommitItem(
        piece=transfer("cm-plain", "@bank", "c2/dep", 1), attempt="a1", as_sent=True
    )
    await _invalid_argument(shard.stub.Commit, spb.CommitRequest(items=[plain]), "as_sent")
    post = spb.CommitItem(
        piece=pb.Transaction(
            id="cm-post",
            code=1,
            post_pending_id="hold-x",
            legs=[leg("c1/dep", DEBIT, 1), leg(CLEARING, CREDIT, 1)],
        ),
        attempt="a1",
        as_sent=True,
    )
    await _invalid_argument(
        shard.stub.Commit, spb.CommitRequest(items=[post]), "items[0].piece", "@clearing/"
    )
    assert await shard.balance("c2/dep") == before


async def test_decide_holds_refuses_clearing_legs(shard: Shard) -> None:
    resolution = pb.Transaction(
        id="dh-1",
        code=1,
        post_pending_id="hold-c1",
        legs=[leg("c1/dep", DEBIT, 1), leg(CLEARING, CREDIT, 1)],
    )
    request = spb.DecideHoldsRequest(
        items=[spb.DecideHoldItem(resolution=resolution, decide_before_ns=time.time_ns() + 10**10)]
    )
    await _invalid_argument(shard.stub.DecideHolds, request, "items[0].resolution", "@clearing/")


@pytest.mark.parametrize(
    ("legs", "text"),
    [
        ([leg("c1/dep", DEBIT, 0), leg("c2/dep", CREDIT, 0)], "legs[0].amount"),
        ([leg("c1/dep", DEBIT, 5), leg("c2/dep", CREDIT, 4)], "differ by 1"),
        ([leg("c1/dep", DEBIT, 5, "ZZZ"), leg("c2/dep", CREDIT, 5, "ZZZ")], "legs[0].currency"),
        ([leg("c 1", DEBIT, 5), leg("c2/dep", CREDIT, 5)], "legs[0].account_id"),
        ([pb.Leg(account_id="c1/dep", amount=5, currency="USD"), leg("c2/dep", CREDIT, 5)], "side"),
        ([leg("c1/dep", DEBIT, 5), leg(CLEARING, CREDIT, 5)], "@clearing/"),
        ([leg("c1/dep", DEBIT, limits.amount_max + 1), leg("c2/dep", CREDIT, 5)], "amount"),
    ],
)
async def test_settle_holds_checks_the_post_legs(
    shard: Shard, legs: list[pb.Leg], text: str
) -> None:
    resolution = pb.Transaction(id="sh-post", code=1, post_pending_id="sh-hold", legs=legs)
    request = spb.SettleHoldsRequest(
        items=[
            spb.SettleHoldItem(
                transaction_id="sh-hold",
                attempt="a1",
                fate=spb.HOLD_FATE_POSTED,
                resolution=resolution,
            )
        ]
    )
    await _invalid_argument(shard.stub.SettleHolds, request, "items[0].resolution", text)


async def test_settle_holds_resolution_matches_the_fate(shard: Shard) -> None:
    void = pb.Transaction(id="sh-void", code=1, void_pending_id="sh-hold")
    post = pb.Transaction(id="sh-post", code=1, post_pending_id="other-hold")
    bad_id = pb.Transaction(id="sh void", code=1, void_pending_id="sh-hold")
    for fate, resolution, text in (
        (spb.HOLD_FATE_POSTED, void, "post"),
        (spb.HOLD_FATE_POSTED, post, "sh-hold"),
        (spb.HOLD_FATE_VOIDED, bad_id, "id"),
    ):
        item = spb.SettleHoldItem(
            transaction_id="sh-hold", attempt="a1", fate=fate, resolution=resolution
        )
        await _invalid_argument(
            shard.stub.SettleHolds, spb.SettleHoldsRequest(items=[item]), "items[0]", text
        )


@pytest.mark.parametrize("deadline_ns", [0, -5])
async def test_settle_holds_never_leaves_a_piece_without_a_deadline(
    shard: Shard, deadline_ns: int
) -> None:
    """Before: deadline 0 ("none") was accepted, and a held piece without a deadline is never
    asked about again (its funds held for good if the decision's news is lost)."""
    item = spb.SettleHoldItem(
        transaction_id="sh-hold", attempt="a1", fate=spb.HOLD_FATE_OPEN, deadline_ns=deadline_ns
    )
    await _invalid_argument(
        shard.stub.SettleHolds, spb.SettleHoldsRequest(items=[item]), "deadline_ns > 0"
    )


async def test_resolve_checks_the_transaction_id(shard: Shard) -> None:
    for bad in ("", "a b", "~piece/a1/x", "x" * 200):
        request = spb.ResolveRequest(
            items=[spb.ResolveItem(transaction_id=bad, commit=True, attempt="a1")]
        )
        await _invalid_argument(shard.stub.Resolve, request, "items[0].transaction_id")


async def test_zz_node_serves_and_books_are_whole(shard: Shard) -> None:
    health = await health_pb2_grpc.HealthStub(shard.channel).Check(
        health_pb2.HealthCheckRequest(service="tally.v1.Ledger"), timeout=10
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert not shard.node.task.done()
    assert names(await shard.client.codes(transfer("zz-1", "@bank", "c2/dep", 11))) == [
        "RESULT_CODE_CREATED"
    ]
    assert await audit_problems(shard.node.dsn) == []


# ---- the Shard API's limits: those of the Ledger's ----

SHARD_BATCHES = {
    "Prepare": lambda n: spb.PrepareRequest(items=[spb.PrepareItem()] * n),
    "Commit": lambda n: spb.CommitRequest(items=[spb.CommitItem()] * n),
    "Abort": lambda n: spb.AbortRequest(items=[spb.AbortItem()] * n),
    "Resolve": lambda n: spb.ResolveRequest(items=[spb.ResolveItem()] * n),
    "DecideHolds": lambda n: spb.DecideHoldsRequest(items=[spb.DecideHoldItem()] * n),
    "SettleHolds": lambda n: spb.SettleHoldsRequest(items=[spb.SettleHoldItem()] * n),
    "CreateClearingAccounts": lambda n: spb.CreateClearingAccountsRequest(currencies=[""] * n),
}


@pytest.mark.parametrize("method", list(SHARD_BATCHES))
async def test_every_shard_rpc_takes_at_most_a_batch(shard: Shard, method: str) -> None:
    """An internal RPC is limited as a client's: more than a batch of items is refused whole,
    before any of it reaches the writer."""
    what = "currencies" if method == "CreateClearingAccounts" else "items"
    request = SHARD_BATCHES[method](limits.batch_item_count_max + 1)
    details = await _invalid_argument(getattr(shard.stub, method), request, f"{what} has 8191")
    assert f"at most {limits.batch_item_count_max} per request" in details


async def test_a_shard_request_over_the_message_limit_is_resource_exhausted(shard: Shard) -> None:
    big = spb.AbortItem(transaction_id="x", attempt="a1", message="m" * (1 << 20))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await shard.stub.Abort(spb.AbortRequest(items=[big] * 17), timeout=30)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "CLIENT" not in (raised.value.details() or ""), "refused by the node, not the caller"
