"""The ledger's semantics through the real gRPC API, as scenarios: every result code, replays,
holds, links. tests/shards/node/test_api.py runs each against a single node, and
tests/shards/gateway/test_api_cluster.py runs the same against the gateway of a 4-shard cluster
(SCENARIOS lists them, and each of those modules checks that it runs them all).

A scenario takes a Client whose ledger already holds the accounts of `client_with_accounts`; the few
that restart a node or start their own also take the `node` and `dsn` fixtures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest

from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.helpers import (
    CREDIT,
    DEBIT,
    Client,
    NodeHandle,
    account,
    audit_problems,
    leg,
    names,
    start_node,
    transfer,
)

CREATED = pb.RESULT_CODE_CREATED
REPLAYED = pb.RESULT_CODE_REPLAYED


async def client_with_accounts(channel: grpc.aio.Channel) -> Client:
    """A client on `channel`, its ledger holding the accounts every scenario uses."""
    client = Client(channel)
    codes = await client.create(
        account("@funding/loans"),
        account("@income/fees"),
        account("cust-1/deposit", no_overdraft=True),
        account("cust-1/loan", code=200),
        account("cust-2/deposit", no_overdraft=True),
        account("cust-3/limit", credit_limit=True),
        account("eu/wallet", currency="EUR"),
        account("@funding/eur", currency="EUR"),
    )
    assert set(codes) == {CREATED}
    return client


async def fund(client: Client, account_id: str, amount: int, tid: str) -> None:
    """Fund account_id by a transaction named tid under the account's partition key (so that,
    through a gateway, it is recorded with the account: core.slots)."""
    tid = f"{account_id.split('/', 1)[0]}/{tid}"
    assert await client.codes(transfer(tid, "@funding/loans", account_id, amount)) == [CREATED]


async def accounts_replay_and_conflict(client: Client) -> None:
    first = await client.create(account("new/a", metadata={"branch": "7"}))
    again = await client.create(account("new/a", metadata={"branch": "7"}))
    other = await client.stub.CreateAccounts(
        pb.CreateAccountsRequest(accounts=[account("new/a", currency="EUR", code=5)])
    )
    assert names(first + again) == ["RESULT_CODE_CREATED", "RESULT_CODE_REPLAYED"]
    conflict = other.results[0]
    assert conflict.code == pb.RESULT_CODE_IDEMPOTENCY_CONFLICT
    assert "currency" in conflict.message and "code" in conflict.message


async def transaction_replay_returns_original_and_conflict_names_field(client: Client) -> None:
    original = (
        await client.post(transfer("cust-1/loan-1", "@funding/loans", "cust-1/deposit", 900))
    )[0]
    replay = (
        await client.post(transfer("cust-1/loan-1", "@funding/loans", "cust-1/deposit", 900))
    )[0]
    changed = (
        await client.post(transfer("cust-1/loan-1", "@funding/loans", "cust-1/deposit", 901))
    )[0]
    assert (original.code, replay.code) == (CREATED, REPLAYED)
    assert replay.timestamp_ns == original.timestamp_ns
    assert changed.code == pb.RESULT_CODE_IDEMPOTENCY_CONFLICT and "legs" in changed.message
    assert (await client.balance("cust-1/deposit")).credits_posted == 900


async def replay_after_restart(client: Client, node: NodeHandle, dsn: str) -> None:
    original = (await client.post(transfer("cust-1/r-1", "@funding/loans", "cust-1/deposit", 10)))[
        0
    ]
    await node.stop()
    restarted = await start_node(dsn)
    try:
        async with security.channel(f"127.0.0.1:{restarted.port}") as channel:
            again = Client(channel)
            replay = (
                await again.post(transfer("cust-1/r-1", "@funding/loans", "cust-1/deposit", 10))
            )[0]
            conflict = (
                await again.post(transfer("cust-1/r-1", "@funding/loans", "cust-2/deposit", 10))
            )[0]
            assert replay.code == REPLAYED and replay.timestamp_ns == original.timestamp_ns
            assert conflict.code == pb.RESULT_CODE_IDEMPOTENCY_CONFLICT
            assert (await again.balance("cust-1/deposit")).credits_posted == 10
    finally:
        await restarted.stop()


async def limits_insufficient_funds_and_credits_exceed_debits(client: Client) -> None:
    await fund(client, "cust-1/deposit", 100, "f1")
    assert names(
        await client.codes(
            transfer("cust-1/w1", "cust-1/deposit", "@income/fees", 101),
            transfer("cust-1/w2", "cust-1/deposit", "@income/fees", 100),
            transfer("cust-3/c1", "@funding/loans", "cust-3/limit", 1),
        )
    ) == [
        "RESULT_CODE_INSUFFICIENT_FUNDS",
        "RESULT_CODE_CREATED",
        "RESULT_CODE_CREDITS_EXCEED_DEBITS",
    ]
    # A rejected transaction is not recorded: the same id succeeds after funding.
    await fund(client, "cust-1/deposit", 1, "f2")
    assert await client.codes(transfer("cust-1/w1", "cust-1/deposit", "@income/fees", 1)) == [
        CREATED
    ]
    assert (await client.balance("cust-1/deposit")).available == 0


async def stateful_rejections(client: Client) -> None:
    results = await client.post(
        transfer("nobody/x1", "@funding/loans", "nobody/deposit", 5),
        transfer("eu/x2", "@funding/loans", "eu/wallet", 5),
        transfer("eu/x3", "@funding/eur", "eu/wallet", 2**62, currency="EUR"),
        transfer("eu/x4", "@funding/eur", "eu/wallet", 2**62, currency="EUR"),
    )
    assert names([r.code for r in results]) == [
        "RESULT_CODE_ACCOUNT_NOT_FOUND",
        "RESULT_CODE_CURRENCY_MISMATCH",
        "RESULT_CODE_CREATED",
        "RESULT_CODE_AMOUNT_OVERFLOW",
    ]
    assert "nobody/deposit" in results[0].message
    assert "legs[1].currency" in results[1].message


async def unbalanced_and_multi_currency(client: Client) -> None:
    unbalanced = pb.Transaction(
        id="cust-1/u1",
        code=1,
        legs=[leg("@funding/loans", DEBIT, 10), leg("cust-1/deposit", CREDIT, 9)],
    )
    fx = pb.Transaction(
        id="cust-1/fx1",
        code=7,
        legs=[
            leg("@funding/loans", DEBIT, 110),
            leg("cust-1/deposit", CREDIT, 110),
            leg("@funding/eur", DEBIT, 100, "EUR"),
            leg("eu/wallet", CREDIT, 100, "EUR"),
        ],
    )
    assert names(await client.codes(unbalanced, fx)) == [
        "RESULT_CODE_UNBALANCED",
        "RESULT_CODE_CREATED",
    ]


async def linked_group_is_all_or_nothing(client: Client) -> None:
    await fund(client, "cust-1/deposit", 50, "f1")
    codes = await client.codes(
        transfer("cust-1/l1", "cust-1/deposit", "cust-2/deposit", 30, linked=True),
        transfer("cust-1/l2", "cust-1/deposit", "cust-2/deposit", 30, linked=True),
        transfer("cust-1/l3", "@funding/loans", "cust-2/deposit", 1),
        transfer("cust-2/after", "@funding/loans", "cust-2/deposit", 2),
    )
    assert names(codes) == [
        "RESULT_CODE_LINKED_ITEM_FAILED",
        "RESULT_CODE_INSUFFICIENT_FUNDS",
        "RESULT_CODE_LINKED_ITEM_FAILED",
        "RESULT_CODE_CREATED",
    ]
    assert (await client.balance("cust-2/deposit")).credits_posted == 2
    assert (await client.balance("cust-1/deposit")).available == 50
    codes = await client.codes(
        transfer("cust-1/l1", "cust-1/deposit", "cust-2/deposit", 30, linked=True),
        transfer("cust-1/l2", "cust-1/deposit", "cust-2/deposit", 20),
    )
    assert codes == [CREATED, CREATED]
    assert (await client.balance("cust-1/deposit")).available == 0


async def hold_posted_in_part(client: Client) -> None:
    await fund(client, "cust-1/deposit", 1000, "f1")
    hold = transfer("cust-1/h1", "cust-1/deposit", "@income/fees", 400, pending=True)
    assert await client.codes(hold) == [CREATED]
    balance = await client.balance("cust-1/deposit")
    assert (balance.debits_pending, balance.available) == (400, 600)
    # Cannot spend what is held.
    assert names(
        await client.codes(transfer("cust-1/w", "cust-1/deposit", "@income/fees", 601))
    ) == ["RESULT_CODE_INSUFFICIENT_FUNDS"]
    too_much = pb.Transaction(
        id="cust-1/p-too-much",
        code=1,
        post_pending_id="cust-1/h1",
        legs=[leg("cust-1/deposit", DEBIT, 401), leg("@income/fees", CREDIT, 401)],
    )
    part = pb.Transaction(
        id="cust-1/p1",
        code=1,
        post_pending_id="cust-1/h1",
        legs=[leg("cust-1/deposit", DEBIT, 250), leg("@income/fees", CREDIT, 250)],
    )
    again = pb.Transaction(id="cust-1/p2", code=1, post_pending_id="cust-1/h1")
    void = pb.Transaction(id="cust-1/v1", code=1, void_pending_id="cust-1/h1")
    assert names(await client.codes(too_much, part, again, void)) == [
        "RESULT_CODE_POST_EXCEEDS_PENDING",
        "RESULT_CODE_CREATED",
        "RESULT_CODE_PENDING_ALREADY_RESOLVED",
        "RESULT_CODE_PENDING_ALREADY_RESOLVED",
    ]
    balance = await client.balance("cust-1/deposit")
    assert (balance.debits_pending, balance.debits_posted, balance.available) == (0, 250, 750)
    record = await client.transaction("cust-1/h1")
    assert (
        record.status == pb.TRANSACTION_STATUS_PENDING_POSTED
        and record.resolved_by_id == "cust-1/p1"
    )


async def hold_posted_in_full_and_voided(client: Client) -> None:
    await fund(client, "cust-1/deposit", 100, "f1")
    codes = await client.codes(
        transfer("cust-1/h1", "cust-1/deposit", "@income/fees", 60, pending=True),
        transfer("cust-1/h2", "cust-1/deposit", "@income/fees", 40, pending=True),
        pb.Transaction(id="cust-1/post-h1", code=1, post_pending_id="cust-1/h1"),
        pb.Transaction(id="cust-1/void-h2", code=1, void_pending_id="cust-1/h2"),
        pb.Transaction(id="cust-1/void-missing", code=1, void_pending_id="cust-1/nothing"),
        pb.Transaction(id="cust-1/void-f1", code=1, void_pending_id="cust-1/f1"),
    )
    assert names(codes) == ["RESULT_CODE_CREATED"] * 4 + ["RESULT_CODE_PENDING_NOT_FOUND"] * 2
    balance = await client.balance("cust-1/deposit")
    assert (balance.debits_posted, balance.debits_pending, balance.available) == (60, 0, 40)
    assert (await client.transaction("cust-1/h2")).status == pb.TRANSACTION_STATUS_PENDING_VOIDED


async def hold_expires_without_a_client_asking(dsn: str) -> None:
    handle = await start_node(dsn, expiry_interval_ms=50)
    try:
        async with security.channel(f"127.0.0.1:{handle.port}") as channel:
            client = Client(channel)
            await client.create(account("@cash"), account("c/dep", no_overdraft=True))
            await client.codes(transfer("c/f", "@cash", "c/dep", 100))
            hold = transfer("c/h", "c/dep", "@cash", 70, pending=True, timeout_seconds=1)
            assert await client.codes(hold) == [CREATED]
            assert (await client.balance("c/dep")).available == 30
            for _ in range(100):
                if (
                    await client.transaction("c/h")
                ).status == pb.TRANSACTION_STATUS_PENDING_EXPIRED:
                    break
                await asyncio.sleep(0.05)
            record = await client.transaction("c/h")
            assert record.status == pb.TRANSACTION_STATUS_PENDING_EXPIRED
            balance = await client.balance("c/dep")
            assert (balance.debits_pending, balance.available) == (0, 100)
            late = pb.Transaction(id="c/late", code=1, post_pending_id="c/h")
            assert names(await client.codes(late)) == ["RESULT_CODE_PENDING_EXPIRED"]
            expiry = await client.transaction(record.resolved_by_id)
            assert expiry.applied_legs[0].amount == 70
        assert await audit_problems(dsn) == []
    finally:
        await handle.stop()


async def reversal(client: Client) -> None:
    await fund(client, "cust-1/deposit", 100, "disb")
    codes = await client.codes(
        pb.Transaction(id="cust-1/rev1", code=9, reverses_id="cust-1/disb"),
        pb.Transaction(id="cust-1/rev2", code=9, reverses_id="cust-1/disb"),
        pb.Transaction(id="cust-1/rev3", code=9, reverses_id="cust-1/missing"),
        transfer("cust-2/hold", "@funding/loans", "cust-2/deposit", 1, pending=True),
        pb.Transaction(id="cust-2/rev4", code=9, reverses_id="cust-2/hold"),
    )
    assert names(codes) == [
        "RESULT_CODE_CREATED",
        "RESULT_CODE_ALREADY_REVERSED",
        "RESULT_CODE_TRANSACTION_NOT_FOUND",
        "RESULT_CODE_CREATED",
        "RESULT_CODE_NOT_REVERSIBLE",
    ]
    balance = await client.balance("cust-1/deposit")
    assert (balance.debits_posted, balance.credits_posted) == (100, 100)
    original = await client.transaction("cust-1/disb")
    assert original.reversed_by_id == "cust-1/rev1"
    reversal = await client.transaction("cust-1/rev1")
    assert [(x.account_id, x.side) for x in reversal.applied_legs] == [
        ("@funding/loans", CREDIT),
        ("cust-1/deposit", DEBIT),
    ]


async def reversal_limited_by_funds(client: Client) -> None:
    await fund(client, "cust-1/deposit", 100, "disb")
    await client.codes(transfer("cust-1/spend", "cust-1/deposit", "cust-2/deposit", 60))
    assert names(
        await client.codes(pb.Transaction(id="cust-1/r", code=9, reverses_id="cust-1/disb"))
    ) == ["RESULT_CODE_INSUFFICIENT_FUNDS"]


async def close_account(client: Client) -> None:
    await fund(client, "cust-2/deposit", 5, "f")
    close = client.stub.CloseAccounts
    request = pb.CloseAccountsRequest(
        accounts=[
            pb.CloseAccount(account_id="cust-2/deposit"),
            pb.CloseAccount(account_id="cust-1/loan"),
            pb.CloseAccount(account_id="ghost"),
        ]
    )
    codes = [r.code for r in (await close(request)).results]
    assert names(codes) == [
        "RESULT_CODE_ACCOUNT_HAS_BALANCE",
        "RESULT_CODE_CREATED",
        "RESULT_CODE_ACCOUNT_NOT_FOUND",
    ]
    again = await close(
        pb.CloseAccountsRequest(accounts=[pb.CloseAccount(account_id="cust-1/loan")])
    )
    assert again.results[0].code == REPLAYED
    assert names(await client.codes(transfer("cust-1/x", "@funding/loans", "cust-1/loan", 1))) == [
        "RESULT_CODE_ACCOUNT_CLOSED"
    ]
    record = await client.account("cust-1/loan")
    assert record.closed and record.closed_at_ns > 0
    await client.codes(transfer("cust-2/h", "cust-2/deposit", "@income/fees", 5, pending=True))
    pending = await close(
        pb.CloseAccountsRequest(accounts=[pb.CloseAccount(account_id="cust-2/deposit")])
    )
    assert pending.results[0].code == pb.RESULT_CODE_ACCOUNT_HAS_PENDING


async def history_pagination_and_balance_at(client: Client) -> None:
    stamps = []
    for n in range(5):
        result = (
            await client.post(transfer(f"cust-1/t{n}", "@funding/loans", "cust-1/deposit", 10))
        )[0]
        stamps.append(result.timestamp_ns)
    stub = client.stub
    page1 = await stub.ListPostings(pb.ListPostingsRequest(account_id="cust-1/deposit", limit=3))
    page2 = await stub.ListPostings(
        pb.ListPostingsRequest(account_id="cust-1/deposit", limit=3, cursor=page1.next_cursor)
    )
    postings = list(page1.postings) + list(page2.postings)
    assert [p.transaction_id for p in postings] == [f"cust-1/t{n}" for n in range(5)]
    assert [p.balance_after.credits_posted for p in postings] == [10, 20, 30, 40, 50]
    assert page2.next_cursor == ""
    ranged = await stub.ListPostings(
        pb.ListPostingsRequest(account_id="cust-1/deposit", from_ns=stamps[1], to_ns=stamps[3])
    )
    assert [p.transaction_id for p in ranged.postings] == ["cust-1/t1", "cust-1/t2"]
    at = await stub.BalanceAt(pb.BalanceAtRequest(account_id="cust-1/deposit", at_ns=stamps[2]))
    assert at.balance.credits_posted == 30 and at.balance.available == 30
    before = await stub.BalanceAt(pb.BalanceAtRequest(account_id="cust-1/deposit", at_ns=1))
    assert before.balance.credits_posted == 0 and before.as_of_sequence == 0
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.BalanceAt(pb.BalanceAtRequest(account_id="ghost/x", at_ns=1))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def get_accounts_reports_each_id(client: Client) -> None:
    response = await client.stub.GetAccounts(
        pb.GetAccountsRequest(ids=["cust-1/deposit", "ghost", "bad id"])
    )
    assert names([r.code for r in response.results]) == [
        "RESULT_CODE_OK",
        "RESULT_CODE_ACCOUNT_NOT_FOUND",
        "RESULT_CODE_INVALID_ID",
    ]
    assert response.results[0].account.version >= 1


async def books_balance_after_everything(client: Client, node: NodeHandle) -> None:
    await hold_posted_in_part(client)
    assert await audit_problems(node.dsn) == []


SCENARIOS: tuple[Callable[..., Awaitable[None]], ...] = (
    accounts_replay_and_conflict,
    transaction_replay_returns_original_and_conflict_names_field,
    replay_after_restart,
    limits_insufficient_funds_and_credits_exceed_debits,
    stateful_rejections,
    unbalanced_and_multi_currency,
    linked_group_is_all_or_nothing,
    hold_posted_in_part,
    hold_posted_in_full_and_voided,
    hold_expires_without_a_client_asking,
    reversal,
    reversal_limited_by_funds,
    close_account,
    history_pagination_and_balance_at,
    get_accounts_reports_each_id,
    books_balance_after_everything,
)


def scenarios_not_run(namespace: dict[str, object]) -> list[str]:
    """The scenarios that a test module (its globals()) has no test_<scenario> function for."""
    return [s.__name__ for s in SCENARIOS if not callable(namespace.get(f"test_{s.__name__}"))]
