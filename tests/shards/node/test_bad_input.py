"""Bad input through the real gRPC server: one case per kind of client mistake.

Every case asserts the exact result code (or gRPC status) and that the message names the field
at fault. All cases share one node and database (module scope) so the whole table runs in a
few seconds; each case uses its own ids, and the last test audits that nothing was half-applied.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from core import limits
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc
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

MAX = limits.amount_max
BATCH_MAX = limits.batch_item_count_max


@dataclass
class Ledger:
    node: NodeHandle
    channel: grpc.aio.Channel
    client: Client

    @property
    def stub(self) -> pb_grpc.LedgerStub:
        return self.client.stub


SETUP_ACCOUNTS = (
    account("@bank"),
    account("@eur", currency="EUR"),
    account("@src-a"),
    account("@src-b"),
    account("@src-c"),
    account("@src-d"),
    account("c1/dep", no_overdraft=True),
    account("c2/dep"),
    account("eu/w", currency="EUR"),
)


@pytest.fixture(scope="module")
async def ledger(pg: EmbeddedPostgres) -> AsyncIterator[Ledger]:
    """One node for the whole module: the cases are independent by their ids."""
    database = f"bad_input_{os.getpid()}_{time.time_ns()}"
    await pg.create_database_async(database)
    handle = await start_node(pg.dsn(database))
    try:
        async with security.channel(f"127.0.0.1:{handle.port}") as channel:
            client = Client(channel)
            assert set(names(await client.create(*SETUP_ACCOUNTS))) == {"RESULT_CODE_CREATED"}
            yield Ledger(handle, channel, client)
    finally:
        await handle.stop()


@dataclass(frozen=True)
class Case:
    """One mistake: the item, the result code it must get, and text its message must hold."""

    name: str
    item: Any
    code: str
    names: str

    def check(self, result: Any) -> None:
        assert name(result.code) == f"RESULT_CODE_{self.code}", (self.name, result)
        assert self.names in result.message, (self.name, result.message)


def case_ids(case: Case) -> str:
    return case.name


def tx(transaction_id: str, *legs: pb.Leg, **fields: Any) -> pb.Transaction:
    fields.setdefault("code", 1)
    return pb.Transaction(id=transaction_id, legs=legs, **fields)


def ok_legs(amount: int = 5) -> list[pb.Leg]:
    return [leg("@bank", DEBIT, amount), leg("c2/dep", CREDIT, amount)]


def with_leg1(transaction_id: str, second: pb.Leg, **fields: Any) -> pb.Transaction:
    """A transaction whose second leg is the mistake."""
    return tx(transaction_id, leg("@bank", DEBIT, 5), second, **fields)


async def transaction_lookup(ledger: Ledger, transaction_id: str) -> str:
    response = await ledger.stub.GetTransactions(
        pb.GetTransactionsRequest(ids=[transaction_id]), timeout=30
    )
    return name(response.results[0].code)


async def account_lookup(ledger: Ledger, account_id: str) -> str:
    response = await ledger.stub.GetAccounts(pb.GetAccountsRequest(ids=[account_id]), timeout=30)
    return name(response.results[0].code)


async def rpc_error(call: Any, request: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request, timeout=30)
    return caught.value


# ---- CreateAccounts ----

METADATA_17 = {f"k{i}": "v" for i in range(17)}

ACCOUNT_CASES = [
    Case("empty id", account(""), "INVALID_ID", "id is empty"),
    Case("id of 129 bytes", account("a" * 129), "INVALID_ID", "id is longer than 128 bytes"),
    Case("id of 65 two-byte chars", account("é" * 65), "INVALID_ID", "longer than 128 bytes"),
    Case("id with a space", account("a b"), "INVALID_ID", "id 'a b'"),
    Case("id with unicode", account("café"), "INVALID_ID", "id 'café'"),
    Case("id with NUL", account("a\x00b"), "INVALID_ID", "id 'a\\x00b'"),
    Case("id with newline", account("a\nb"), "INVALID_ID", "id 'a\\nb'"),
    Case("id with tab", account("a\tb"), "INVALID_ID", "id 'a\\tb'"),
    Case("id with ';'", account("a;b"), "INVALID_ID", "id 'a;b'"),
    Case("'@' in the middle", account("a@b"), "INVALID_ID", "id 'a@b'"),
    Case("only '@'", account("@"), "INVALID_ID", "id '@'"),
    Case("'@@' prefix", account("@@x"), "INVALID_ID", "id '@@x'"),
    Case("leading '/'", account("/x"), "INVALID_ID", "id '/x'"),
    Case("reserved '~expired/'", account("~expired/x"), "INVALID_ID", "id '~expired/x'"),
    Case("unknown currency", account("cur/1", currency="ZZZ"), "INVALID_CURRENCY", "currency"),
    Case("lowercase 'usd'", account("cur/2", currency="usd"), "INVALID_CURRENCY", "'usd'"),
    Case("empty currency", account("cur/3", currency=""), "INVALID_CURRENCY", "currency"),
    Case("currency with space", account("cur/4", currency="USD "), "INVALID_CURRENCY", "currency"),
    Case("code 0", account("code/0", code=0), "INVALID_CODE", "code must be 1..65535"),
    Case("code 65536", account("code/1", code=65536), "INVALID_CODE", "code must be 1..65535"),
    Case(
        "both must-not-exceed flags",
        account("flags/1", no_overdraft=True, credit_limit=True),
        "INVALID_FLAGS",
        "debits_must_not_exceed_credits and credits_must_not_exceed_debits",
    ),
    Case(
        "spread account with debits_must_not_exceed_credits",
        account("@x", no_overdraft=True),
        "INVALID_SPREAD_ACCOUNT_FLAGS",
        "must-not-exceed flags",
    ),
    Case(
        "spread account with credits_must_not_exceed_debits",
        account("@y", credit_limit=True),
        "INVALID_SPREAD_ACCOUNT_FLAGS",
        "must-not-exceed flags",
    ),
    Case("17 metadata entries", account("md/1", metadata=METADATA_17), "INVALID_METADATA", "16"),
    Case(
        "metadata key of 65 chars",
        account("md/2", metadata={"k" * 65: "v"}),
        "INVALID_METADATA",
        "metadata key",
    ),
    Case("empty metadata key", account("md/3", metadata={"": "v"}), "INVALID_METADATA", "key ''"),
    Case(
        "metadata key with a space",
        account("md/4", metadata={"a b": "v"}),
        "INVALID_METADATA",
        "metadata key 'a b'",
    ),
    Case(
        "metadata value of 257 bytes",
        account("md/5", metadata={"note": "v" * 257}),
        "INVALID_METADATA",
        "metadata[note]",
    ),
    Case(
        "metadata value of 129 two-byte chars",
        account("md/6", metadata={"note": "é" * 129}),
        "INVALID_METADATA",
        "metadata[note]",
    ),
]

ACCOUNTS_AT_THE_LIMITS = [
    account("a" * 128),
    account("@spread/ok"),
    account("Ab0-_.:/+=x"),
    account("code/min", code=1),
    account("code/max", code=65535),
    account("flags/one", no_overdraft=True),
    account(
        "md/max",
        metadata={f"{i:02d}" + "k" * 62: "é" * 128 for i in range(16)},
    ),
]


@pytest.mark.parametrize("case", ACCOUNT_CASES, ids=case_ids)
async def test_create_account_rejects(ledger: Ledger, case: Case) -> None:
    response = await ledger.stub.CreateAccounts(
        pb.CreateAccountsRequest(accounts=[case.item]), timeout=30
    )
    assert len(response.results) == 1
    case.check(response.results[0])
    assert response.results[0].timestamp_ns == 0
    if case.code != "INVALID_ID":
        assert await account_lookup(ledger, case.item.id) == "RESULT_CODE_ACCOUNT_NOT_FOUND"


async def test_create_accounts_one_batch_each_item_its_own_result(ledger: Ledger) -> None:
    """All the mistakes in one batch around a valid account: each item gets its own code."""
    items = [case.item for case in ACCOUNT_CASES]
    middle = len(items) // 2
    items.insert(middle, account("batch/valid"))
    response = await ledger.stub.CreateAccounts(pb.CreateAccountsRequest(accounts=items))
    results = list(response.results)
    assert len(results) == len(items)
    valid = results.pop(middle)
    assert name(valid.code) == "RESULT_CODE_CREATED" and valid.timestamp_ns > 0
    for case, result in zip(ACCOUNT_CASES, results, strict=True):
        case.check(result)
    wanted = [c.item.id for c in ACCOUNT_CASES if c.code != "INVALID_ID"]
    lookups = await ledger.stub.GetAccounts(pb.GetAccountsRequest(ids=wanted))
    assert {name(r.code) for r in lookups.results} == {"RESULT_CODE_ACCOUNT_NOT_FOUND"}


async def test_create_accounts_at_the_limits(ledger: Ledger) -> None:
    codes = await ledger.client.create(*ACCOUNTS_AT_THE_LIMITS)
    assert set(names(codes)) == {"RESULT_CODE_CREATED"}
    record = await ledger.client.account("md/max")
    assert len(record.account.metadata) == 16


async def test_duplicate_account_id_in_one_batch(ledger: Ledger) -> None:
    response = await ledger.stub.CreateAccounts(
        pb.CreateAccountsRequest(
            accounts=[account("dup/a"), account("dup/a"), account("dup/a", currency="EUR")]
        )
    )
    assert names([r.code for r in response.results]) == [
        "RESULT_CODE_CREATED",
        "RESULT_CODE_DUPLICATE_ID_IN_BATCH",
        "RESULT_CODE_DUPLICATE_ID_IN_BATCH",
    ]
    assert all("id 'dup/a'" in r.message for r in response.results[1:])
    assert (await ledger.client.account("dup/a")).account.currency == "USD"


# ---- PostTransactions: stateless mistakes ----

TRANSACTION_CASES = [
    Case("empty id", tx("", *ok_legs()), "INVALID_ID", "id is empty"),
    Case("id of 129 bytes", tx("t" * 129, *ok_legs()), "INVALID_ID", "id is longer than 128"),
    Case("id with a space", tx("t 1", *ok_legs()), "INVALID_ID", "id 't 1'"),
    Case("id with control char", tx("t\x07", *ok_legs()), "INVALID_ID", "id 't\\x07'"),
    Case("id '@' in the middle", tx("t@1", *ok_legs()), "INVALID_ID", "id 't@1'"),
    Case("no legs", tx("no-legs"), "INVALID_LEGS", "at least two legs"),
    Case("one leg", tx("one-leg", leg("@bank", DEBIT, 5)), "INVALID_LEGS", "at least two legs"),
    Case(
        "33 legs",
        tx("33-legs", *[leg("@bank", DEBIT, 1)] * 17, *[leg("c2/dep", CREDIT, 1)] * 16),
        "INVALID_LEGS",
        "at most 32 legs",
    ),
    Case(
        "leg account id empty",
        with_leg1("leg-id-1", leg("", CREDIT, 5)),
        "INVALID_ID",
        "legs[1].account_id is empty",
    ),
    Case(
        "leg account id bad chars",
        with_leg1("leg-id-2", leg("c2 dep", CREDIT, 5)),
        "INVALID_ID",
        "legs[1].account_id 'c2 dep'",
    ),
    Case(
        "zero amount",
        with_leg1("amount-0", leg("c2/dep", CREDIT, 0)),
        "INVALID_AMOUNT",
        "legs[1].amount",
    ),
    Case(
        "amount 2^63",
        with_leg1("amount-2p63", leg("c2/dep", CREDIT, 2**63)),
        "INVALID_AMOUNT",
        "legs[1].amount",
    ),
    Case(
        "amount 2^64-1",
        with_leg1("amount-2p64", leg("c2/dep", CREDIT, 2**64 - 1)),
        "INVALID_AMOUNT",
        "legs[1].amount",
    ),
    Case(
        "unspecified side",
        with_leg1("side-0", leg("c2/dep", pb.SIDE_UNSPECIFIED, 5)),
        "INVALID_SIDE",
        "legs[1].side",
    ),
    Case(
        "unknown side 7",
        with_leg1("side-7", leg("c2/dep", 7, 5)),
        "INVALID_SIDE",
        "legs[1].side",
    ),
    Case(
        "negative side",
        with_leg1("side-neg", leg("c2/dep", -1, 5)),
        "INVALID_SIDE",
        "legs[1].side",
    ),
    Case(
        "unknown currency",
        with_leg1("cur-zzz", leg("c2/dep", CREDIT, 5, "ZZZ")),
        "INVALID_CURRENCY",
        "legs[1].currency 'ZZZ'",
    ),
    Case(
        "lowercase currency",
        with_leg1("cur-usd", leg("c2/dep", CREDIT, 5, "usd")),
        "INVALID_CURRENCY",
        "legs[1].currency 'usd'",
    ),
    Case(
        "empty currency",
        with_leg1("cur-empty", leg("c2/dep", CREDIT, 5, "")),
        "INVALID_CURRENCY",
        "legs[1].currency",
    ),
    Case(
        "unbalanced",
        with_leg1("unbalanced", leg("c2/dep", CREDIT, 4)),
        "UNBALANCED",
        "USD debits and credits differ by 1",
    ),
    Case(
        "balanced in sum but not per currency",
        with_leg1("unbalanced-fx", leg("eu/w", CREDIT, 5, "EUR")),
        "UNBALANCED",
        "debits and credits differ by 5",
    ),
    Case(
        "same account debited and credited",
        tx("both-sides", leg("c2/dep", DEBIT, 5), leg("c2/dep", CREDIT, 5)),
        "INVALID_LEGS",
        "'c2/dep' is both debited and credited",
    ),
    Case(
        "pending and post_pending_id",
        tx("flags-1", *ok_legs(), pending=True, post_pending_id="hold-1"),
        "INVALID_FLAGS",
        "pending and post_pending_id are exclusive",
    ),
    Case(
        "void_pending_id and reverses_id",
        tx("flags-2", void_pending_id="hold-1", reverses_id="t-1"),
        "INVALID_FLAGS",
        "void_pending_id and reverses_id are exclusive",
    ),
    Case(
        "pending and reverses_id",
        tx("flags-3", *ok_legs(), pending=True, reverses_id="t-1"),
        "INVALID_FLAGS",
        "pending and reverses_id are exclusive",
    ),
    Case(
        "timeout without pending",
        tx("timeout-1", *ok_legs(), timeout_seconds=60),
        "INVALID_TIMEOUT",
        "timeout_seconds",
    ),
    Case(
        "timeout over 90 days",
        tx("timeout-2", *ok_legs(), pending=True, timeout_seconds=7_776_001),
        "INVALID_TIMEOUT",
        "timeout_seconds must be at most 7776000",
    ),
    Case(
        "timeout 2^32-1",
        tx("timeout-3", *ok_legs(), pending=True, timeout_seconds=2**32 - 1),
        "INVALID_TIMEOUT",
        "timeout_seconds",
    ),
    Case(
        "value_date 2026-02-30",
        tx("date-1", *ok_legs(), value_date="2026-02-30"),
        "INVALID_VALUE_DATE",
        "value_date '2026-02-30'",
    ),
    Case(
        "value_date tomorrow",
        tx("date-2", *ok_legs(), value_date="tomorrow"),
        "INVALID_VALUE_DATE",
        "value_date 'tomorrow'",
    ),
    Case(
        "value_date without dashes",
        tx("date-3", *ok_legs(), value_date="20260101"),
        "INVALID_VALUE_DATE",
        "value_date",
    ),
    Case(
        "value_date year 0",
        tx("date-4", *ok_legs(), value_date="0000-01-01"),
        "INVALID_VALUE_DATE",
        "value_date",
    ),
    Case(
        "value_date in Arabic-Indic digits",
        tx("date-5", *ok_legs(), value_date="٢٠٢٦-٠١-٠١"),
        "INVALID_VALUE_DATE",
        "value_date",
    ),
    Case(
        "legs with void_pending_id",
        tx("derived-1", *ok_legs(), void_pending_id="hold-1"),
        "INVALID_LEGS",
        "legs must be empty",
    ),
    Case(
        "legs with reverses_id",
        tx("derived-2", *ok_legs(), reverses_id="t-1"),
        "INVALID_LEGS",
        "legs must be empty",
    ),
    Case(
        "bad post_pending_id",
        tx("target-1", post_pending_id="hold 1"),
        "INVALID_ID",
        "post_pending_id 'hold 1'",
    ),
    Case(
        "bad void_pending_id",
        tx("target-2", void_pending_id="~expired/h"),
        "INVALID_ID",
        "void_pending_id",
    ),
    Case(
        "bad reverses_id",
        tx("target-3", reverses_id="x" * 129),
        "INVALID_ID",
        "reverses_id is longer than 128",
    ),
    Case("code 0", tx("code-0", *ok_legs(), code=0), "INVALID_CODE", "code must be 1..65535"),
    Case("code 65536", tx("code-1", *ok_legs(), code=65536), "INVALID_CODE", "code must be"),
    Case(
        "17 metadata entries",
        tx("md-1", *ok_legs(), metadata=METADATA_17),
        "INVALID_METADATA",
        "metadata has more than 16 entries",
    ),
    Case(
        "metadata key of 65 chars",
        tx("md-2", *ok_legs(), metadata={"k" * 65: "v"}),
        "INVALID_METADATA",
        "metadata key",
    ),
    Case(
        "metadata value of 257 bytes",
        tx("md-3", *ok_legs(), metadata={"note": "v" * 257}),
        "INVALID_METADATA",
        "metadata[note]",
    ),
]

STATEFUL_CASES = [
    Case(
        "unknown account",
        with_leg1("st-1", leg("ghost/acct", CREDIT, 5)),
        "ACCOUNT_NOT_FOUND",
        "legs[1].account_id 'ghost/acct' not found",
    ),
    Case(
        "leg currency differs from the account's",
        tx("st-2", leg("@eur", DEBIT, 5, "EUR"), leg("c2/dep", CREDIT, 5, "EUR")),
        "CURRENCY_MISMATCH",
        "legs[1].currency is EUR",
    ),
    Case(
        "two credits of 2^62 to one account",
        tx(
            "st-3",
            leg("@src-a", DEBIT, 2**62),
            leg("@src-b", DEBIT, 2**62),
            leg("c2/dep", CREDIT, 2**62),
            leg("c2/dep", CREDIT, 2**62),
        ),
        "AMOUNT_OVERFLOW",
        "'c2/dep' would exceed",
    ),
    Case(
        "debit beyond a no-overdraft account's funds",
        tx("st-4", leg("c1/dep", DEBIT, 1), leg("c2/dep", CREDIT, 1)),
        "INSUFFICIENT_FUNDS",
        "'c1/dep'",
    ),
    Case(
        "post of an unknown hold",
        tx("st-5", post_pending_id="no-such-hold"),
        "PENDING_NOT_FOUND",
        "post_pending_id 'no-such-hold'",
    ),
    Case(
        "void of an unknown hold",
        tx("st-6", void_pending_id="no-such-hold"),
        "PENDING_NOT_FOUND",
        "void_pending_id 'no-such-hold'",
    ),
    Case(
        "reversal of an unknown transaction",
        tx("st-7", reverses_id="no-such-txn"),
        "TRANSACTION_NOT_FOUND",
        "reverses_id 'no-such-txn'",
    ),
]


@pytest.mark.parametrize("case", TRANSACTION_CASES + STATEFUL_CASES, ids=case_ids)
async def test_post_transaction_rejects(ledger: Ledger, case: Case) -> None:
    before = await ledger.client.balance("c2/dep")
    results = await ledger.client.post(case.item)
    assert len(results) == 1
    case.check(results[0])
    assert results[0].timestamp_ns == 0
    if case.code != "INVALID_ID":
        assert await transaction_lookup(ledger, case.item.id) == "RESULT_CODE_TRANSACTION_NOT_FOUND"
    assert await ledger.client.balance("c2/dep") == before


async def test_post_transactions_one_batch_each_item_its_own_result(ledger: Ledger) -> None:
    """All the stateless mistakes in one batch with a valid transfer: each its own code."""
    items = []
    for index, case in enumerate(TRANSACTION_CASES):
        item = pb.Transaction()
        item.CopyFrom(case.item)
        if case.code != "INVALID_ID":
            item.id = f"batch-{index}"  # distinct within the batch and from the single cases
        items.append(item)
    items.append(transfer("batch-valid", "@bank", "c2/dep", 3))
    results = await ledger.client.post(*items)
    assert len(results) == len(items)
    assert name(results.pop().code) == "RESULT_CODE_CREATED"
    for case, result in zip(TRANSACTION_CASES, results, strict=True):
        case.check(result)
    pairs = zip(items[:-1], TRANSACTION_CASES, strict=True)
    wanted = [item.id for item, c in pairs if c.code != "INVALID_ID"]
    lookups = await ledger.stub.GetTransactions(pb.GetTransactionsRequest(ids=wanted))
    assert {name(r.code) for r in lookups.results} == {"RESULT_CODE_TRANSACTION_NOT_FOUND"}


async def test_transactions_at_the_limits(ledger: Ledger) -> None:
    assert await ledger.client.create(account("lim/max")) == [pb.RESULT_CODE_CREATED]
    before = await ledger.client.balance("c2/dep")
    results = await ledger.client.post(
        tx("lim-32-legs", *[leg("@bank", DEBIT, 1)] * 16, *[leg("c2/dep", CREDIT, 1)] * 16),
        tx("lim-max", leg("@src-c", DEBIT, MAX), leg("lim/max", CREDIT, MAX)),
        tx("lim-hold", *ok_legs(1), pending=True, timeout_seconds=7_776_000),
        tx("lim-code", *ok_legs(1), code=65535, value_date="2024-02-29"),
        tx("lim-md", *ok_legs(1), metadata={"k" * 64: "v" * 256, "n": "\x00é"}),
        tx("l" * 128, *ok_legs(1)),
    )
    assert set(names([r.code for r in results])) == {"RESULT_CODE_CREATED"}
    assert (await ledger.client.balance("lim/max")).credits_posted == MAX
    after = await ledger.client.balance("c2/dep")
    assert after.credits_posted == before.credits_posted + 16 + 1 + 1 + 1
    assert after.credits_pending == before.credits_pending + 1
    md = (await ledger.client.transaction("lim-md")).transaction.metadata
    assert md["n"] == "\x00é"


async def test_amount_overflow_across_two_transactions(ledger: Ledger) -> None:
    assert await ledger.client.create(account("ovf/two")) == [pb.RESULT_CODE_CREATED]
    results = await ledger.client.post(
        transfer("ovf-1", "@src-d", "ovf/two", 2**62),
        transfer("ovf-2", "@bank", "ovf/two", 2**62),
    )
    assert names([r.code for r in results]) == [
        "RESULT_CODE_CREATED",
        "RESULT_CODE_AMOUNT_OVERFLOW",
    ]
    assert "'ovf/two' would exceed" in results[1].message
    assert (await ledger.client.balance("ovf/two")).credits_posted == 2**62
    assert await transaction_lookup(ledger, "ovf-2") == "RESULT_CODE_TRANSACTION_NOT_FOUND"


async def test_duplicate_transaction_ids_in_one_batch(ledger: Ledger) -> None:
    before = (await ledger.client.balance("c2/dep")).credits_posted
    results = await ledger.client.post(
        transfer("dup-1", "@bank", "c2/dep", 7),
        transfer("dup-1", "@bank", "c2/dep", 7),
        transfer("dup-1", "@bank", "c2/dep", 8),
    )
    assert names([r.code for r in results]) == [
        "RESULT_CODE_CREATED",
        "RESULT_CODE_DUPLICATE_ID_IN_BATCH",
        "RESULT_CODE_DUPLICATE_ID_IN_BATCH",
    ]
    assert all("id 'dup-1' appears earlier" in r.message for r in results[1:])
    assert (await ledger.client.balance("c2/dep")).credits_posted == before + 7
    recorded = await ledger.client.transaction("dup-1")
    assert [leg.amount for leg in recorded.applied_legs] == [7, 7]


async def test_linked_chain_left_open(ledger: Ledger) -> None:
    before = (await ledger.client.balance("c2/dep")).credits_posted
    results = await ledger.client.post(
        transfer("open-0", "@bank", "c2/dep", 1),
        transfer("open-1", "@bank", "c2/dep", 10, linked=True),
        transfer("open-2", "@bank", "c2/dep", 100, linked=True),
    )
    assert names([r.code for r in results]) == [
        "RESULT_CODE_CREATED",
        "RESULT_CODE_LINKED_CHAIN_OPEN",
        "RESULT_CODE_LINKED_CHAIN_OPEN",
    ]
    assert all("linked" in r.message for r in results[1:])
    assert (await ledger.client.balance("c2/dep")).credits_posted == before + 1
    for transaction_id in ("open-1", "open-2"):
        assert await transaction_lookup(ledger, transaction_id) == (
            "RESULT_CODE_TRANSACTION_NOT_FOUND"
        )


async def test_linked_chain_all_items_linked_and_open(ledger: Ledger) -> None:
    results = await ledger.client.post(
        transfer("open-a", "@bank", "c2/dep", 1, linked=True),
        tx("open-b", leg("@bank", DEBIT, 0), leg("c2/dep", CREDIT, 0), linked=True),
    )
    assert names([r.code for r in results]) == ["RESULT_CODE_LINKED_CHAIN_OPEN"] * 2


@pytest.mark.parametrize(
    ("bad", "code", "text"),
    [
        (
            with_leg1("lg-x-2", leg("c2/dep", CREDIT, 0), linked=True),
            "RESULT_CODE_INVALID_AMOUNT",
            "legs[1].amount",
        ),
        (
            with_leg1("lg-y-2", leg("ghost/acct", CREDIT, 5), linked=True),
            "RESULT_CODE_ACCOUNT_NOT_FOUND",
            "legs[1].account_id 'ghost/acct'",
        ),
        (
            tx("lg-z-2", leg("c1/dep", DEBIT, 1), leg("c2/dep", CREDIT, 1), linked=True),
            "RESULT_CODE_INSUFFICIENT_FUNDS",
            "'c1/dep'",
        ),
    ],
    ids=["invalid item", "unknown account", "insufficient funds"],
)
async def test_failing_item_inside_linked_group(
    ledger: Ledger, bad: pb.Transaction, code: str, text: str
) -> None:
    prefix = bad.id[:-2]
    before = (await ledger.client.balance("c2/dep")).credits_posted
    results = await ledger.client.post(
        transfer(f"{prefix}-1", "@bank", "c2/dep", 10, linked=True),
        bad,
        transfer(f"{prefix}-3", "@bank", "c2/dep", 100),
        transfer(f"{prefix}-4", "@bank", "c2/dep", 1000),
    )
    assert names([r.code for r in results]) == [
        "RESULT_CODE_LINKED_ITEM_FAILED",
        code,
        "RESULT_CODE_LINKED_ITEM_FAILED",
        "RESULT_CODE_CREATED",
    ]
    assert text in results[1].message
    assert "item 1 of this linked group failed" in results[0].message
    assert results[0].message == results[2].message
    assert (await ledger.client.balance("c2/dep")).credits_posted == before + 1000
    for suffix in ("-1", "-2", "-3"):
        assert await transaction_lookup(ledger, prefix + suffix) == (
            "RESULT_CODE_TRANSACTION_NOT_FOUND"
        )


# ---- whole-request mistakes: gRPC INVALID_ARGUMENT ----


def _batch(method: str, count: int) -> Any:
    if method == "CreateAccounts":
        return pb.CreateAccountsRequest(accounts=[account("")] * count)
    if method == "PostTransactions":
        return pb.PostTransactionsRequest(transactions=[pb.Transaction()] * count)
    if method == "CloseAccounts":
        return pb.CloseAccountsRequest(accounts=[pb.CloseAccount()] * count)
    if method == "GetAccounts":
        return pb.GetAccountsRequest(ids=["ghost"] * count)
    return pb.GetTransactionsRequest(ids=["ghost"] * count)


BATCH_FIELD = {
    "CreateAccounts": "accounts",
    "PostTransactions": "transactions",
    "CloseAccounts": "accounts",
    "GetAccounts": "ids",
    "GetTransactions": "ids",
}


@pytest.mark.parametrize("method", list(BATCH_FIELD))
async def test_empty_and_oversize_batches(ledger: Ledger, method: str) -> None:
    call = getattr(ledger.stub, method)
    empty = await rpc_error(call, _batch(method, 0))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert empty.details() == f"{BATCH_FIELD[method]} is empty"
    oversize = await rpc_error(call, _batch(method, BATCH_MAX + 1))
    assert oversize.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert oversize.details().startswith(f"{BATCH_FIELD[method]} has 8191 items")
    assert "at most 8190" in oversize.details()
    full = await call(_batch(method, BATCH_MAX), timeout=30)
    assert len(full.results) == BATCH_MAX


async def test_request_over_16_mib(ledger: Ledger) -> None:
    request = pb.GetAccountsRequest(ids=["x" * (1 << 20)] * 17)
    error = await rpc_error(ledger.stub.GetAccounts, request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# ---- CloseAccounts and reads ----


async def test_close_accounts_bad_ids(ledger: Ledger) -> None:
    ids = ["", "a b", "x" * 129, "a@b", "ghost/acct", "close/bal", "dup/close", "dup/close"]
    assert (
        await ledger.client.create(account("dup/close"), account("close/bal"))
        == [pb.RESULT_CODE_CREATED] * 2
    )
    assert await ledger.client.codes(transfer("close-fund", "@bank", "close/bal", 1)) == [
        pb.RESULT_CODE_CREATED
    ]
    response = await ledger.stub.CloseAccounts(
        pb.CloseAccountsRequest(accounts=[pb.CloseAccount(account_id=i) for i in ids])
    )
    results = list(response.results)
    assert names([r.code for r in results]) == [
        "RESULT_CODE_INVALID_ID",
        "RESULT_CODE_INVALID_ID",
        "RESULT_CODE_INVALID_ID",
        "RESULT_CODE_INVALID_ID",
        "RESULT_CODE_ACCOUNT_NOT_FOUND",
        "RESULT_CODE_ACCOUNT_HAS_BALANCE",
        "RESULT_CODE_CREATED",
        "RESULT_CODE_DUPLICATE_ID_IN_BATCH",
    ]
    assert results[0].message == "account_id is empty"
    assert "account_id 'a b'" in results[1].message
    assert "account_id is longer than 128" in results[2].message
    assert "account_id 'a@b'" in results[3].message
    assert "'ghost/acct' not found" in results[4].message
    assert "posted balance" in results[5].message
    assert "account_id 'dup/close' appears earlier" in results[7].message
    assert not (await ledger.client.account("close/bal")).closed
    assert (await ledger.client.account("dup/close")).closed


async def test_get_accounts_bad_ids(ledger: Ledger) -> None:
    ids = ["", "a b", "x" * 129, "é", "a\x00", "c2/dep", "ghost/acct"]
    response = await ledger.stub.GetAccounts(pb.GetAccountsRequest(ids=ids))
    results = list(response.results)
    assert names([r.code for r in results]) == ["RESULT_CODE_INVALID_ID"] * 5 + [
        "RESULT_CODE_OK",
        "RESULT_CODE_ACCOUNT_NOT_FOUND",
    ]
    for index in range(5):
        assert results[index].message.startswith(f"ids[{index}]"), results[index].message
    assert "'ghost/acct' not found" in results[6].message


async def test_get_transactions_bad_ids(ledger: Ledger) -> None:
    assert await ledger.client.codes(transfer("gt-ok", "@bank", "c2/dep", 1)) == [
        pb.RESULT_CODE_CREATED
    ]
    ids = ["", "t 1", "t" * 129, "~expired/", "~expired/a b", "~other/x", "gt-ok", "ghost"]
    response = await ledger.stub.GetTransactions(pb.GetTransactionsRequest(ids=ids))
    results = list(response.results)
    assert names([r.code for r in results]) == ["RESULT_CODE_INVALID_ID"] * 6 + [
        "RESULT_CODE_OK",
        "RESULT_CODE_TRANSACTION_NOT_FOUND",
    ]
    for index in range(6):
        assert results[index].message.startswith(f"ids[{index}]"), results[index].message
    assert "'ghost' not found" in results[7].message


LIST_POSTINGS_CASES = [
    ("limit 1001", {"limit": 1001}, "limit must be at most 1000"),
    ("limit 2^32-1", {"limit": 2**32 - 1}, "limit"),
    ("cursor 'abc'", {"cursor": "abc"}, "cursor"),
    ("cursor '-1'", {"cursor": "-1"}, "cursor"),
    ("cursor '1.5'", {"cursor": "1.5"}, "cursor"),
    ("cursor of 20 digits", {"cursor": "1" * 20}, "cursor"),
    ("negative from_ns", {"from_ns": -1}, "from_ns"),
    ("negative to_ns", {"to_ns": -5}, "to_ns"),
    ("to_ns equal to from_ns", {"from_ns": 10, "to_ns": 10}, "to_ns must be after from_ns"),
    ("to_ns before from_ns", {"from_ns": 10, "to_ns": 9}, "to_ns must be after from_ns"),
    ("empty account_id", {"account_id": ""}, "account_id is empty"),
    ("bad account_id", {"account_id": "c2 dep"}, "account_id 'c2 dep'"),
]


@pytest.mark.parametrize(
    ("fields", "text"),
    [pytest.param(f, t, id=n) for n, f, t in LIST_POSTINGS_CASES],
)
async def test_list_postings_invalid_argument(
    ledger: Ledger, fields: dict[str, Any], text: str
) -> None:
    request = pb.ListPostingsRequest(**{"account_id": "c2/dep", **fields})
    error = await rpc_error(ledger.stub.ListPostings, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert text in error.details()


async def test_list_postings_and_balance_at_unknown_account(ledger: Ledger) -> None:
    for call, request in (
        (ledger.stub.ListPostings, pb.ListPostingsRequest(account_id="ghost/acct")),
        (ledger.stub.BalanceAt, pb.BalanceAtRequest(account_id="ghost/acct", at_ns=1)),
    ):
        error = await rpc_error(call, request)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "'ghost/acct' not found" in error.details()


async def test_list_postings_at_the_limits(ledger: Ledger) -> None:
    assert await ledger.client.codes(transfer("lp-ok", "@bank", "c2/dep", 1)) == [
        pb.RESULT_CODE_CREATED
    ]
    response = await ledger.stub.ListPostings(
        pb.ListPostingsRequest(
            account_id="c2/dep", limit=1000, cursor="0" * 19, from_ns=0, to_ns=2**63 - 1
        )
    )
    assert len(response.postings) > 0
    assert (
        await ledger.stub.ListPostings(pb.ListPostingsRequest(account_id="c2/dep", cursor="1" * 18))
    ).postings == []


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        pytest.param({"at_ns": -1}, "at_ns must not be negative", id="negative at_ns"),
        pytest.param({"at_ns": -(2**63)}, "at_ns", id="at_ns int64 min"),
        pytest.param({"account_id": ""}, "account_id is empty", id="empty account_id"),
        pytest.param({"account_id": "a@b"}, "account_id 'a@b'", id="bad account_id"),
    ],
)
async def test_balance_at_invalid_argument(
    ledger: Ledger, fields: dict[str, Any], text: str
) -> None:
    request = pb.BalanceAtRequest(**{"account_id": "c2/dep", "at_ns": 1, **fields})
    error = await rpc_error(ledger.stub.BalanceAt, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert text in error.details()


# ---- edges that were bugs (found by these tests) ----


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("9223372036854775808", id="2^63"),
        pytest.param("9999999999999999999", id="19 nines"),
        pytest.param("²", id="superscript two"),
        pytest.param("9223372036854775807", id="2^63-1"),
    ],
)
async def test_list_postings_cursor_out_of_range(ledger: Ledger, cursor: str) -> None:
    """Only a cursor this API could have returned may pass; the rest is INVALID_ARGUMENT."""
    request = pb.ListPostingsRequest(account_id="c2/dep", cursor=cursor)
    try:
        response = await ledger.stub.ListPostings(request, timeout=30)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert "cursor" in error.details()
    else:
        assert response.postings == []


async def test_balance_beyond_int64_is_still_readable(ledger: Ledger) -> None:
    """An unflagged account could once reach debits_posted = debits_pending = amount_max (both
    within amount_max), so available = -(2^64 - 2) and every read of it was gRPC UNKNOWN. The
    net balance is now bounded too: the hold is AMOUNT_OVERFLOW and the account stays readable."""
    assert set(names(await ledger.client.create(account("@deep"), account("deep/a")))) == {
        "RESULT_CODE_CREATED"
    }
    results = await ledger.client.post(
        transfer("deep-1", "deep/a", "@deep", MAX),
        transfer("deep-2", "deep/a", "@deep", MAX, pending=True),
    )
    assert names([r.code for r in results]) == [
        "RESULT_CODE_CREATED",
        "RESULT_CODE_AMOUNT_OVERFLOW",
    ]
    assert "net balance" in results[1].message
    reads = (
        (ledger.stub.GetAccounts, pb.GetAccountsRequest(ids=["deep/a"])),
        (ledger.stub.ListPostings, pb.ListPostingsRequest(account_id="deep/a")),
        (ledger.stub.BalanceAt, pb.BalanceAtRequest(account_id="deep/a", at_ns=2**63 - 1)),
    )
    statuses = []
    for call, request in reads:
        try:
            await call(request, timeout=30)
            statuses.append(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as error:
            statuses.append(error.code())
    assert statuses == [grpc.StatusCode.OK] * 3


LEDGER_METHODS = [
    "CreateAccounts",
    "PostTransactions",
    "CloseAccounts",
    "GetAccounts",
    "GetTransactions",
    "ListPostings",
    "BalanceAt",
]


@pytest.mark.parametrize("body", [b"\xff\xff\xff", b"\x0a\x02\xff\xfe"], ids=["wire", "utf8"])
@pytest.mark.parametrize("method", LEDGER_METHODS)
async def test_undecodable_request_is_invalid_argument(
    ledger: Ledger, method: str, body: bytes
) -> None:
    """A body that is not a valid message (corrupt wire format, bad UTF-8 in a string)."""
    call = ledger.channel.unary_unary(f"/tally.v1.Ledger/{method}")
    error = await rpc_error(call, body)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert f"tally.v1.{method}Request" in error.details()


# ---- last: nothing half-applied ----


async def test_zz_books_whole_after_all_bad_input(ledger: Ledger) -> None:
    """Runs last in this module: after every mistake above, the books audit clean."""
    assert await audit_problems(ledger.node.dsn) == []
    response = await ledger.stub.GetAccounts(
        pb.GetAccountsRequest(ids=[a.id for a in SETUP_ACCOUNTS])
    )
    assert {name(r.code) for r in response.results} == {"RESULT_CODE_OK"}
