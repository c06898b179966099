"""A scoped poster acts on its own accounts only, also through what it names rather than lists:
the post or void of a hold, the reversal of a transaction, on one node and through a gateway
(whose holds and originals may live on other shards). And every denial is counted and written
to the security log."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from core.authority import Role
from shards.cli.logs import JsonLineFormatter
from shards.security.credentials import ClientSecurity, aio_channel
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc
from tests.support import security
from tests.support.helpers import (
    NodeHandle,
    account,
    in_process_cluster,
    start_node,
    transfer,
)

LOAN_SCOPE = ("cust-*/loan-*", "@funding/loans")
ACCOUNTS = ("cust-1/loan-1", "cust-1/deposit", "cust-7/loan-7", "cust-7/deposit", "@funding/loans")


async def seed(stub: Any) -> None:
    created = await stub.CreateAccounts(
        pb.CreateAccountsRequest(accounts=[account(i) for i in ACCOUNTS])
    )
    assert {r.code for r in created.results} == {pb.RESULT_CODE_CREATED}
    posted = await stub.PostTransactions(
        pb.PostTransactionsRequest(
            transactions=[
                transfer("hold-in", "cust-1/loan-1", "@funding/loans", 300, pending=True),
                transfer("hold-out", "cust-1/deposit", "@funding/loans", 300, pending=True),
                transfer("paid-out", "cust-7/deposit", "@funding/loans", 40),
                transfer("paid-in", "cust-7/loan-7", "@funding/loans", 40),
            ]
        )
    )
    assert {r.code for r in posted.results} == {pb.RESULT_CODE_CREATED}, posted


@pytest.fixture(params=["node", "gateway"])
async def target(request: pytest.FixtureRequest, pg: Any, dsn: str) -> AsyncIterator[str]:
    if request.param == "node":
        handle: NodeHandle = await start_node(dsn)
        try:
            async with security.channel(handle.target) as channel:
                await seed(pb_grpc.LedgerStub(channel))
            yield handle.target
        finally:
            await handle.stop()
    else:
        async with in_process_cluster(pg, f"scopes_{id(request)}", 2) as cluster:
            async with security.channel(cluster.target) as channel:
                await seed(pb_grpc.LedgerStub(channel))
            yield cluster.target


def ref(transaction_id: str, **fields: str) -> pb.Transaction:
    """A post, void or reversal: it names its target and lists no legs."""
    return pb.Transaction(id=transaction_id, code=1, **fields)


def poster() -> ClientSecurity:
    return security.identity({Role.POSTER, Role.READER}, LOAN_SCOPE, name="loan-product")


async def post(target: str, who: ClientSecurity, *items: pb.Transaction) -> Any:
    async with aio_channel(target, who) as channel:
        return await pb_grpc.LedgerStub(channel).PostTransactions(
            pb.PostTransactionsRequest(transactions=list(items)), timeout=30
        )


async def denied(target: str, who: ClientSecurity, *items: pb.Transaction) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await post(target, who, *items)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, caught.value
    return caught.value.details() or ""


async def test_a_poster_voids_and_reverses_only_what_is_in_its_scope(target: str) -> None:
    product = poster()
    void_out = ref("void-out", void_pending_id="hold-out")
    assert "cust-1/deposit" in await denied(target, product, void_out)
    reverse_out = ref("rev-out", reverses_id="paid-out")
    assert "cust-7/deposit" in await denied(target, product, reverse_out)
    # Nothing of a refused batch is applied, not even its items in scope.
    void_in = ref("void-in", void_pending_id="hold-in")
    await denied(target, product, void_in, void_out)
    async with security.channel(target) as channel:
        stub = pb_grpc.LedgerStub(channel)
        looked = await stub.GetTransactions(pb.GetTransactionsRequest(ids=["void-in", "hold-out"]))
    assert looked.results[0].code == pb.RESULT_CODE_TRANSACTION_NOT_FOUND
    assert looked.results[1].transaction.status == pb.TRANSACTION_STATUS_PENDING
    # In scope: applied.
    applied = await post(
        target,
        product,
        void_in,
        ref("rev-in", reverses_id="paid-in"),
    )
    assert [r.code for r in applied.results] == [pb.RESULT_CODE_CREATED] * 2


async def test_a_poster_may_name_what_it_creates_in_the_same_batch(target: str) -> None:
    product = poster()
    results = await post(
        target,
        product,
        transfer("own-hold", "cust-7/loan-7", "@funding/loans", 10, pending=True),
        ref("own-capture", post_pending_id="own-hold"),
    )
    assert [r.code for r in results.results] == [pb.RESULT_CODE_CREATED] * 2


async def test_a_poster_cannot_name_what_it_cannot_see(target: str) -> None:
    """A target that does not exist (yet) is refused rather than left to a race: the poster
    could otherwise void a hold someone else places under that id meanwhile."""
    message = await denied(target, poster(), ref("void-ghost", void_pending_id="no-such-hold"))
    assert "no-such-hold" in message


async def test_a_reader_reads_only_its_scope(target: str) -> None:
    reader = security.identity({Role.READER}, LOAN_SCOPE, name="loan-reader")
    async with aio_channel(target, reader) as channel:
        stub = pb_grpc.LedgerStub(channel)
        found = await stub.GetTransactions(pb.GetTransactionsRequest(ids=["hold-in", "paid-in"]))
        assert {r.code for r in found.results} == {pb.RESULT_CODE_OK}
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetTransactions(pb.GetTransactionsRequest(ids=["paid-in", "paid-out"]))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "cust-7/deposit" in (caught.value.details() or "")


async def test_denials_are_counted_and_logged(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    handle = await start_node(dsn, metrics_listen="127.0.0.1:0")
    try:
        reader = security.identity({Role.READER}, LOAN_SCOPE, name="counted-reader")
        with caplog.at_level(logging.WARNING, logger="tally.security"):
            async with aio_channel(handle.target, reader) as channel:
                stub = pb_grpc.LedgerStub(channel)
                for _ in range(2):
                    with pytest.raises(grpc.aio.AioRpcError):
                        await stub.CreateAccounts(
                            pb.CreateAccountsRequest(accounts=[account("cust-1/loan-1")])
                        )
        registry = handle.node.metrics.registry
        value = registry.get_sample_value(
            "tally_security_denials_total",
            {
                "listener": "client",
                "method": "/tally.v1.Ledger/CreateAccounts",
                "code": "PERMISSION_DENIED",
                "reason": "role",
            },
        )
        assert value == 2
        records = [r for r in caplog.records if r.name == "tally.security"]
        assert len(records) == 2
        line = json.loads(JsonLineFormatter().format(records[0]))
        fields = line["security"]
        assert fields["event"] == "denied"
        assert fields["subject"] == "counted-reader"
        assert fields["method"] == "/tally.v1.Ledger/CreateAccounts"
        assert fields["code"] == "PERMISSION_DENIED" and fields["reason"] == "role"
        assert fields["via"] == "certificate" and fields["credential"]
        assert fields["peer"].startswith("ipv4:127.0.0.1:")
    finally:
        await handle.stop()


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0"])
def test_a_cluster_node_on_a_wildcard_address_needs_advertise(listen: str) -> None:
    """Registered as 0.0.0.0, the node could never be reached over TLS (no certificate names
    it): refused at start, naming --advertise."""
    from shards.node.server import Node, NodeConfig
    from shards.security.credentials import SecurityConfigError

    config = NodeConfig(
        dsn="postgresql://unused",
        control_dsn="postgresql://unused",
        internal_listen=listen,
        security=security.server_security(),
    )
    with pytest.raises(SecurityConfigError, match="--advertise"):
        Node(config)
    Node(dataclasses.replace(config, advertise="node-0.example:7401"))
