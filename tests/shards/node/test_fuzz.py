"""Fuzz the Ledger API: thousands of random and mutated messages, and raw bytes.

Valid requests for every Ledger method are generated against a small ledger, then mutated
at random through their descriptors (nasty strings, integers at the type boundaries, unknown
enum numbers, flag combinations, duplicated / dropped / multiplied repeated items, oversize
maps); a share of the requests are raw bytes (random, or a valid request with corrupted bytes)
sent with identity serializers. Everything goes over one generic call per method (unary-unary,
or unary-stream for StreamJournal, whose answers are read for a while and then cancelled: a
following stream never ends on its own).

Every RPC must either answer (one result per item, each a known ResultCode) or fail with
INVALID_ARGUMENT / NOT_FOUND / RESOURCE_EXHAUSTED, never INTERNAL or UNKNOWN. At the end the
node must still be healthy, a normal transfer must work, and the audit must find no problem.

Reproduce with TALLY_FUZZ_SEED=<seed printed on failure>; TALLY_FUZZ_MESSAGES and
TALLY_FUZZ_SECONDS bound the run (defaults 3000 messages, 30 s). Messages are generated in
waves from the seed alone (never from the answers), so a seed always sends the same messages
(apart from time stamps taken from the clock).

Any INTERNAL / UNKNOWN fails the test. (It found two such bugs, now fixed and covered in
test_bad_input.py: cursors outside int64, and net balances beyond int64.)
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from core import limits, validation
from core.currencies import is_known_currency
from core.model import Rejection, ResultCode, TransactionSpec
from tally.v1 import ledger_pb2 as pb
from tests.support.fuzzing import (
    NASTY_STRINGS,
    Tally,
    corrupt,
    mutate,
    random_unicode,
)
from tests.support.helpers import (
    CREDIT,
    DEBIT,
    Client,
    NodeHandle,
    account,
    audit_problems,
    leg,
    names,
    transfer,
)

SEED = int(os.environ.get("TALLY_FUZZ_SEED", "20261126"))
MESSAGE_COUNT = int(os.environ.get("TALLY_FUZZ_MESSAGES", "3000"))
TIME_BUDGET_S = float(os.environ.get("TALLY_FUZZ_SECONDS", "30"))
WAVE = 8  # requests in flight at once: exercises the writer's group commit
RAW_SHARE = 0.15

MAX = limits.amount_max
SERVICE = pb.DESCRIPTOR.services_by_name["Ledger"]
METHODS = {
    m.name: (getattr(pb, m.input_type.name), getattr(pb, m.output_type.name))
    for m in SERVICE.methods
}
ALLOWED_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    # StreamJournal: a position beyond the head.
    grpc.StatusCode.FAILED_PRECONDITION,
}
# Server-streaming methods, and how long a stream may be quiet before the fuzzer moves on.
STREAMS = {m.name for m in SERVICE.methods if m.server_streaming}
STREAM_QUIET_S = 0.2
KNOWN_CODES = {code.value for code in ResultCode}
# Never the answer to a client's mistake on a healthy single-shard node.
WRITE_CODES_NEVER = {
    ResultCode.UNSPECIFIED,
    ResultCode.OK,
    ResultCode.UNAVAILABLE,
    ResultCode.WRONG_SHARD,
}
SUCCESS_CODES = {ResultCode.CREATED, ResultCode.REPLAYED}
LOOKUP_CODES = {
    "GetAccounts": {ResultCode.OK, ResultCode.ACCOUNT_NOT_FOUND, ResultCode.INVALID_ID},
    "GetTransactions": {ResultCode.OK, ResultCode.TRANSACTION_NOT_FOUND, ResultCode.INVALID_ID},
}
WRITE_ITEMS = {
    "CreateAccounts": "accounts",
    "PostTransactions": "transactions",
    "CloseAccounts": "accounts",
}

# ---- the generator ----


@dataclass
class World:
    """What the generator knows: ids it has used. Never updated from answers, so a seed
    always produces the same messages."""

    rng: random.Random
    accounts: dict[str, list[str]] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    pendings: dict[str, tuple[str, str, int, str]] = field(default_factory=dict)
    posted: list[str] = field(default_factory=list)
    counter: int = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def all_accounts(self) -> list[str]:
        return [a for ids in self.accounts.values() for a in ids]

    def known_ids(self) -> list[str]:
        return self.all_accounts() + list(self.pendings) + self.posted[-50:]

    def amount(self) -> int:
        roll = self.rng.random()
        if roll < 0.8:
            return self.rng.randint(1, 1000)
        if roll < 0.9:
            return self.rng.choice([1, 2**31, 2**62, MAX - 1, MAX])
        return self.rng.randint(1, MAX)

    def string(self) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.45:
            return rng.choice(NASTY_STRINGS)
        if roll < 0.65:
            return rng.choice(self.known_ids())
        if roll < 0.95:
            return random_unicode(rng, rng.randint(1, 40))
        if roll < 0.998:
            return rng.choice(["x", "é", "\x00"]) * rng.choice([257, 4096, 100_000])
        return "x" * (17 << 20)  # beyond the 16 MiB message limit


def base_accounts() -> list[pb.Account]:
    return [
        account("@bank"),
        account("@fees"),
        account("c1/dep", no_overdraft=True),
        account("c1/loan", credit_limit=True),
        account("c2/dep", no_overdraft=True),
        account("c3/plain"),
        account("@bank-eur", currency="EUR"),
        account("eu/w", currency="EUR", no_overdraft=True),
        account("@bank-jpy", currency="JPY"),
        account("jp/w", currency="JPY"),
    ]


def gen_account(world: World) -> pb.Account:
    rng = world.rng
    currency = rng.choice(["USD", "EUR", "JPY"])
    spread = rng.random() < 0.2
    account_id = world.fresh("@fz-a" if spread else "fz/a")
    flags = {} if spread else rng.choice([{}, {"no_overdraft": True}, {"credit_limit": True}])
    metadata = {f"k{i}": f"v{i}" for i in range(rng.randint(0, 3))}
    world.accounts.setdefault(currency, []).append(account_id)
    world.created.append(account_id)
    return account(
        account_id, currency=currency, code=rng.randint(1, 65535), metadata=metadata, **flags
    )


def gen_transaction(world: World) -> pb.Transaction:
    rng = world.rng
    transaction_id = world.fresh("fz-t")
    if rng.random() < 0.05 and world.posted:
        transaction_id = rng.choice(world.posted)  # a replay or an idempotency conflict
    roll = rng.random()
    fields: dict[str, Any] = {"code": rng.randint(1, 65535)}
    if rng.random() < 0.2:
        fields["value_date"] = rng.choice(["2026-01-31", "2024-02-29", "1999-12-31"])
    if rng.random() < 0.2:
        fields["metadata"] = {"ref": random_unicode(rng, 10), "n": str(rng.randint(0, 99))}
    if roll < 0.5 or (roll < 0.8 and not world.pendings):
        currency = rng.choice(["USD", "USD", "EUR", "JPY"])
        debit, credit = rng.sample(world.accounts[currency], 2)
        amount = world.amount()
        pending = roll >= 0.5 or rng.random() < 0.2
        if pending:
            fields["pending"] = True
            fields["timeout_seconds"] = rng.choice([0, 0, 1, 2, 3600, 7_776_000])
            world.pendings[transaction_id] = (debit, credit, amount, currency)
        else:
            world.posted.append(transaction_id)
        if rng.random() < 0.2 and amount > 1:
            split = rng.randint(1, amount - 1)
            legs = [
                leg(debit, DEBIT, amount, currency),
                leg(credit, CREDIT, split, currency),
                leg(credit, CREDIT, amount - split, currency),
            ]
        else:
            legs = [leg(debit, DEBIT, amount, currency), leg(credit, CREDIT, amount, currency)]
        return pb.Transaction(id=transaction_id, legs=legs, **fields)
    if roll < 0.7:
        target = rng.choice(list(world.pendings)) if rng.random() < 0.9 else world.fresh("nohold")
        fields["post_pending_id"] = target
        world.posted.append(transaction_id)
        if target in world.pendings and rng.random() < 0.4:
            debit, credit, amount, currency = world.pendings[target]
            part = rng.randint(1, amount)
            fields["legs"] = [
                leg(debit, DEBIT, part, currency),
                leg(credit, CREDIT, part, currency),
            ]
        return pb.Transaction(id=transaction_id, **fields)
    if roll < 0.8:
        target = rng.choice(list(world.pendings)) if rng.random() < 0.9 else world.fresh("nohold")
        return pb.Transaction(id=transaction_id, void_pending_id=target, **fields)
    target = rng.choice(world.posted) if world.posted and rng.random() < 0.9 else world.fresh("no")
    world.posted.append(transaction_id)
    return pb.Transaction(id=transaction_id, reverses_id=target, **fields)


def gen_request(world: World, method: str) -> Message:
    rng = world.rng
    count = rng.choice([1, 1, 1, 2, 3, 5])
    if method == "CreateAccounts":
        return pb.CreateAccountsRequest(accounts=[gen_account(world) for _ in range(count)])
    if method == "PostTransactions":
        items = [gen_transaction(world) for _ in range(count + rng.randint(0, 3))]
        if len(items) > 1 and rng.random() < 0.15:
            for item in items[: rng.randint(1, len(items))]:
                item.linked = True
        return pb.PostTransactionsRequest(transactions=items)
    if method == "CloseAccounts":
        pool = world.created or world.all_accounts()
        return pb.CloseAccountsRequest(
            accounts=[pb.CloseAccount(account_id=rng.choice(pool)) for _ in range(count)]
        )
    if method == "GetAccounts":
        return pb.GetAccountsRequest(ids=[rng.choice(world.all_accounts()) for _ in range(count)])
    if method == "GetTransactions":
        pool = list(world.pendings) + world.posted + ["~expired/" + p for p in world.pendings]
        return pb.GetTransactionsRequest(ids=[rng.choice(pool) for _ in range(count)])
    if method == "ListPostings":
        now = time.time_ns()
        return pb.ListPostingsRequest(
            account_id=rng.choice(world.all_accounts()),
            cursor=rng.choice(["", "", "0", str(rng.randint(1, 500))]),
            limit=rng.choice([0, 1, 10, 1000]),
            from_ns=rng.choice([0, 0, now - 10**12]),
            to_ns=rng.choice([0, 0, now + 10**12]),
        )
    if method == "StreamJournal":
        positions = [
            pb.ShardPosition(
                shard_id=rng.choice([0, 0, 0, 1, 2**32 - 1]),
                sequence=rng.choice([0, 0, 1, 3, 10, 10**6, -1, 2**63 - 1]),
            )
            for _ in range(rng.choice([0, 0, 1, 1, 2]))
        ]
        return pb.StreamJournalRequest(after=positions, follow=rng.random() < 0.3)
    return pb.BalanceAtRequest(
        account_id=rng.choice(world.all_accounts()),
        at_ns=rng.choice([0, time.time_ns(), MAX, rng.randint(0, MAX)]),
    )


def gen_message(world: World) -> tuple[str, bytes]:
    rng = world.rng
    method = rng.choice(list(METHODS))
    if rng.random() < RAW_SHARE:
        if rng.random() < 0.3:
            return method, rng.randbytes(rng.choice([0, 1, 2, 5, 16, 64, 300]))
        return method, corrupt(world, gen_request(world, method).SerializeToString())
    request = gen_request(world, method)
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        mutate(world, request)
    return method, request.SerializeToString()


# ---- checking the answers ----


def check_response(method: str, request: Message, response: Message, tally: Tally) -> str:
    """Problems with a successful answer, or ""."""
    if method in WRITE_ITEMS:
        items = getattr(request, WRITE_ITEMS[method])
        if len(response.results) != len(items):
            return f"{len(items)} items but {len(response.results)} results"
        for index, result in enumerate(response.results):
            if result.code not in KNOWN_CODES:
                return f"results[{index}] has unknown code {result.code}"
            code = ResultCode(result.code)
            tally.codes[code.name] += 1
            if code in WRITE_CODES_NEVER:
                return f"results[{index}] is {code.name}: {result.message!r}"
            if code in SUCCESS_CODES and result.timestamp_ns <= 0:
                return f"results[{index}] is {code.name} without a timestamp"
            if code not in SUCCESS_CODES and not result.message:
                return f"results[{index}] is {code.name} without a message"
        return ""
    if method in LOOKUP_CODES:
        if len(response.results) != len(request.ids):
            return f"{len(request.ids)} ids but {len(response.results)} results"
        for index, result in enumerate(response.results):
            if result.code not in LOOKUP_CODES[method]:
                return f"results[{index}] has code {result.code}"
            tally.codes[ResultCode(result.code).name] += 1
            if result.code != ResultCode.OK and not result.message:
                return f"results[{index}] without a message"
        return ""
    if method == "ListPostings":
        limit = request.limit or limits.list_postings_limit_default
        if len(response.postings) > limit:
            return f"{len(response.postings)} postings for limit {limit}"
        if any(p.account_id != request.account_id for p in response.postings):
            return "a posting of another account"
    return ""


async def send(calls: dict[str, Any], method: str, body: bytes, dsn: str, tally: Tally) -> None:
    request_type, response_type = METHODS[method]
    try:
        request: Message | None = request_type.FromString(body)
    except DecodeError:
        request = None
    try:
        if method in STREAMS:
            await read_stream(calls[method], body, tally)
            return
        raw = await calls[method](body, timeout=60)
    except grpc.aio.AioRpcError as error:
        status = error.code()
        tally.statuses[f"{method} {status.name}"] += 1
        if request is None:
            expected = {grpc.StatusCode.INVALID_ARGUMENT}
            if len(body) > limits.message_size_max_bytes:
                expected.add(grpc.StatusCode.RESOURCE_EXHAUSTED)
            if status not in expected:
                tally.fail(method, body, f"undecodable body answered {status.name}")
        elif status in ALLOWED_ERRORS:
            if not error.details():
                tally.fail(method, body, f"{status.name} without details")
        else:
            tally.fail(method, body, f"{status.name}: {error.details()[:300]}")
        return
    tally.statuses[f"{method} OK"] += 1
    if request is None:
        tally.fail(method, body, "the server accepted a body that does not parse")
        return
    problem = check_response(method, request, response_type.FromString(raw), tally)
    if problem:
        tally.fail(method, body, problem)


async def read_stream(call: Any, body: bytes, tally: Tally) -> None:
    """A stream's blocks until it ends or is quiet for STREAM_QUIET_S (a follower at the head),
    then cancelled; its blocks must be contiguous."""
    stream = call(body, timeout=60)
    previous = -1
    try:
        while True:
            try:
                raw = await asyncio.wait_for(stream.read(), timeout=STREAM_QUIET_S)
            except TimeoutError:
                break
            if raw is grpc.aio.EOF:
                break
            block = pb.JournalBlock.FromString(raw)
            if previous >= 0 and block.sequence != previous + 1:
                tally.fail("StreamJournal", body, f"block {block.sequence} after {previous}")
            previous = block.sequence
    finally:
        stream.cancel()
    tally.statuses["StreamJournal OK"] += 1


async def setup_world(client: Client, rng: random.Random) -> World:
    world = World(rng)
    accounts = base_accounts()
    assert set(names(await client.create(*accounts))) == {"RESULT_CODE_CREATED"}
    for item in accounts:
        world.accounts.setdefault(item.currency, []).append(item.id)
    funding = await client.codes(
        transfer("fund-1", "@bank", "c1/dep", 1_000_000),
        transfer("fund-2", "@bank", "c2/dep", 1_000_000),
        transfer("fund-3", "c1/loan", "@bank", 1_000_000),
        transfer("fund-4", "@bank-eur", "eu/w", 1_000_000, currency="EUR"),
    )
    assert set(names(funding)) == {"RESULT_CODE_CREATED"}
    world.posted.extend(["fund-1", "fund-2", "fund-3", "fund-4"])
    return world


async def test_fuzz_random_and_mutated_messages(
    channel: grpc.aio.Channel, node: NodeHandle
) -> None:
    print(f"fuzz seed {SEED} (TALLY_FUZZ_SEED), up to {MESSAGE_COUNT} messages / {TIME_BUDGET_S}s")
    client = Client(channel)
    world = await setup_world(client, random.Random(SEED))
    calls = {
        method: (channel.unary_stream if method in STREAMS else channel.unary_unary)(
            f"/{SERVICE.full_name}/{method}"
        )
        for method in METHODS
    }
    tally = Tally(preview_byte_count=120)
    started = time.monotonic()
    sent = 0
    while sent < MESSAGE_COUNT and time.monotonic() - started < TIME_BUDGET_S:
        wave = [gen_message(world) for _ in range(min(WAVE, MESSAGE_COUNT - sent))]
        await asyncio.gather(*(send(calls, m, body, node.dsn, tally) for m, body in wave))
        sent += len(wave)
    elapsed = time.monotonic() - started
    print(f"sent {sent} messages in {elapsed:.1f}s")
    print("statuses:", dict(sorted(tally.statuses.items())))
    print("result codes:", dict(sorted(tally.codes.items())))

    assert not tally.failures, (
        f"seed {SEED}: {len(tally.failures)} bad answers; first ones:\n"
        + "\n".join(tally.failures[:20])
    )

    # The node is up: healthy, and an ordinary transfer still works.
    health = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=SERVICE.full_name), timeout=10
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert node.node.writer is not None and not node.task.done()
    assert (
        await client.create(account("after/a"), account("after/b")) == [pb.RESULT_CODE_CREATED] * 2
    )
    assert await client.codes(transfer("after-1", "after/a", "after/b", 123)) == [
        pb.RESULT_CODE_CREATED
    ]
    assert (await client.balance("after/b")).available == 123

    assert await audit_problems(node.dsn) == []
    assert sent >= min(MESSAGE_COUNT, 1000), f"only {sent} messages in {elapsed:.1f}s"
    # Not degenerate: a good share of the messages got through validation and applied.
    assert tally.codes["CREATED"] >= sent // 20, tally.codes


# ---- stateless validation alone (hypothesis) ----

ids = st.one_of(
    st.sampled_from(["a", "@a", "c1/dep", "A" * 128, "A" * 129, "", "a b", "a@b", "é", "\x00"]),
    st.text(max_size=140),
)
amounts = st.one_of(st.sampled_from([0, 1, MAX, MAX + 1, 2**64 - 1]), st.integers(0, 2**64 - 1))
currencies = st.one_of(st.sampled_from(["USD", "EUR", "usd", "", "ZZZ"]), st.text(max_size=4))
raw_legs = st.lists(
    st.tuples(ids, st.sampled_from([0, 1, 2, 3, 7, -1]), amounts, currencies), max_size=34
)
metadata = st.one_of(
    st.dictionaries(st.text(max_size=70), st.text(max_size=300), max_size=18),
    st.dictionaries(st.sampled_from(["a", "k" * 64, "k" * 65]), st.sampled_from(["v", "v" * 257])),
)
u32 = st.one_of(
    st.sampled_from([0, 1, 65535, 65536, 7_776_000, 7_776_001]), st.integers(0, 2**32 - 1)
)

# What a rejection's message must mention, by code.
TRANSACTION_NAMES = {
    ResultCode.INVALID_ID: ("id",),
    ResultCode.INVALID_FLAGS: ("exclusive",),
    ResultCode.INVALID_LEGS: ("legs", "both debited and credited"),
    ResultCode.INVALID_AMOUNT: (".amount",),
    ResultCode.INVALID_SIDE: (".side",),
    ResultCode.INVALID_CURRENCY: (".currency",),
    ResultCode.UNBALANCED: ("debits and credits differ",),
    ResultCode.INVALID_CODE: ("code",),
    ResultCode.INVALID_METADATA: ("metadata",),
    ResultCode.INVALID_VALUE_DATE: ("value_date",),
    ResultCode.INVALID_TIMEOUT: ("timeout_seconds",),
}
ACCOUNT_NAMES = {
    ResultCode.INVALID_ID: ("id",),
    ResultCode.INVALID_CURRENCY: ("currency",),
    ResultCode.INVALID_CODE: ("code",),
    ResultCode.INVALID_FLAGS: ("must_not_exceed",),
    ResultCode.INVALID_SPREAD_ACCOUNT_FLAGS: ("must-not-exceed",),
    ResultCode.INVALID_METADATA: ("metadata",),
}


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(
    transaction_id=ids,
    legs=raw_legs,
    code=u32,
    metadata=metadata,
    value_date=st.one_of(st.sampled_from(["", "2026-02-30", "2024-02-29"]), st.text(max_size=12)),
    pending=st.booleans(),
    timeout_seconds=u32,
    linked=st.booleans(),
    targets=st.tuples(
        st.sampled_from(["", "", "", "h1"]),
        st.sampled_from(["", "", "", "h1"]),
        st.sampled_from(["", "", "", "t 1", "t1"]),
    ),
)
def test_transaction_validation_never_raises_and_names_the_field(
    transaction_id: str,
    legs: list[tuple[str, int, int, str]],
    code: int,
    metadata: dict[str, str],
    value_date: str,
    pending: bool,
    timeout_seconds: int,
    linked: bool,
    targets: tuple[str, str, str],
) -> None:
    checked = validation.check_transaction(
        transaction_id, legs, code, metadata, value_date, pending, timeout_seconds, linked, *targets
    )
    if isinstance(checked, Rejection):
        assert checked.code in TRANSACTION_NAMES, checked
        assert any(n in checked.message for n in TRANSACTION_NAMES[checked.code]), checked
        assert checked.linked == linked
        return
    assert isinstance(checked, TransactionSpec)
    assert not validation.id_problem(checked.id, "id")
    assert all(1 <= leg.amount <= MAX and is_known_currency(leg.currency) for leg in checked.legs)
    assert not validation.balance_problem(checked.legs)
    assert len(checked.legs) in (0, *range(2, limits.leg_count_max + 1))


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    account_id=ids,
    currency=currencies,
    code=u32,
    flags=st.tuples(st.booleans(), st.booleans()),
    metadata=metadata,
)
def test_account_validation_never_raises_and_names_the_field(
    account_id: str, currency: str, code: int, flags: tuple[bool, bool], metadata: dict[str, str]
) -> None:
    checked = validation.check_account(account_id, currency, code, *flags, metadata)
    if isinstance(checked, Rejection):
        assert checked.code in ACCOUNT_NAMES, checked
        assert any(n in checked.message for n in ACCOUNT_NAMES[checked.code]), checked
    else:
        assert is_known_currency(checked.currency) and 1 <= checked.code <= limits.code_max
