"""Fuzz the internal tally.v1.Shard API of a two-shard cluster's nodes.

Valid requests of every Shard method are built as a gateway would (each transfer between two
shards' customers split into pieces balanced by the clearing account, fresh attempts, holds and
their posts and voids, reversals), aimed at the shard a gateway would call, then mutated at
random through their descriptors (tests/support/fuzzing.py: nasty strings, integers at the type
boundaries, unknown enum numbers such as an abort reason of 12345, repeated items dropped,
duplicated or multiplied to beyond a batch); a share are raw bytes (random, or a valid request
corrupted). They are sent where a gateway sends them: to each node's internal listener, with
the cluster's credentials (mutual TLS, role `cluster`), the only listener that serves Shard.

Every RPC must answer (one result per item, each a known ResultCode; and no item may fault in
the writer's loop, which the state machine logs: a fault is a bug this fuzz exists to find; an
ITEM_FAULT answer alone may be an abort reason recorded as sent) or fail with INVALID_ARGUMENT or
RESOURCE_EXHAUSTED (or UNAVAILABLE "abort not recorded": the documented retryable answer),
never INTERNAL or UNKNOWN (nor an authentication or permission refusal: the caller is the
cluster). At the end both nodes are healthy on both listeners, a transfer within a shard and one
across shards still apply through the gateway, and the audit of each shard finds no problem.

Reproduce with TALLY_SHARD_FUZZ_SEED=<seed printed on failure>; TALLY_SHARD_FUZZ_MESSAGES and
TALLY_SHARD_FUZZ_SECONDS bound the run (defaults 6000 messages, 25 s).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core import ids, limits
from core.model import Leg, ResultCode
from core.slots import SlotMap
from shards.crossshard.coordinator import piece_message, split_pieces
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tally.v1 import shard_pb2 as spb
from tests.support import security
from tests.support.fuzzing import NASTY_STRINGS, Tally, corrupt, mutate, random_unicode
from tests.support.helpers import (
    Client,
    InProcessCluster,
    account,
    audit_problems,
    in_process_cluster,
    names,
    transfer,
)

SEED = int(os.environ.get("TALLY_SHARD_FUZZ_SEED", "20261201"))
MESSAGE_COUNT = int(os.environ.get("TALLY_SHARD_FUZZ_MESSAGES", "6000"))
TIME_BUDGET_S = float(os.environ.get("TALLY_SHARD_FUZZ_SECONDS", "25"))
WAVE = 8
RAW_SHARE = 0.12
SHARDS = 2
MAX = limits.amount_max

SERVICE = spb.DESCRIPTOR.services_by_name["Shard"]
METHODS = {
    m.name: (getattr(spb, m.input_type.name), getattr(spb, m.output_type.name))
    for m in SERVICE.methods
}
ANSWERS = {name: "decisions" if name == "Abort" else "results" for name in METHODS}
ITEMS = {name: "currencies" if name == "CreateClearingAccounts" else "items" for name in METHODS}
ALLOWED_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
KNOWN_CODES = {code.value for code in ResultCode}
# Never an item's answer: a code that is not a write's.
CODES_NEVER = {ResultCode.UNSPECIFIED, ResultCode.OK}
REASONS = [int(code) for code in ResultCode] + [12345, -1, 2**31 - 1, -(2**31)]


@dataclass
class Unit:
    """A cross-shard transfer as a gateway runs it: its pieces by shard and its attempt."""

    message: pb.Transaction
    coordinator: int
    pieces: dict[int, list[Leg]]
    attempt: str

    @property
    def participant(self) -> int:
        return next(s for s in self.pieces if s != self.coordinator)


@dataclass
class World:
    """What the generator knows; never updated from answers (a seed sends the same messages)."""

    rng: random.Random
    slot_map: SlotMap
    customers: dict[int, list[str]] = field(default_factory=dict)
    units: list[Unit] = field(default_factory=list)
    holds: list[Unit] = field(default_factory=list)
    counter: int = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def attempt(self) -> str:
        return f"{self.rng.getrandbits(48):012x}"

    def all_accounts(self) -> list[str]:
        return [a for accounts in self.customers.values() for a in accounts] + ["@cash"]

    def known_ids(self) -> list[str]:
        found = [u.message.id for u in self.units[-30:]] + [u.attempt for u in self.units[-30:]]
        return found + self.all_accounts() + [ids.clearing_account("USD")]

    def amount(self) -> int:
        roll = self.rng.random()
        if roll < 0.85:
            return self.rng.randint(1, 1000)
        return self.rng.choice([1, 2**31, 2**62, MAX - 1, MAX])

    def string(self) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.45:
            return rng.choice(NASTY_STRINGS)
        if roll < 0.7:
            return rng.choice(self.known_ids())
        if roll < 0.97:
            return random_unicode(rng, rng.randint(1, 40))
        return rng.choice(["x", "é", "\x00"]) * rng.choice([257, 4096, 100_000])


# ---- the generator: requests as a gateway sends them ----


def new_unit(world: World, pending: bool = False) -> Unit:
    rng = world.rng
    payer_shard = rng.randrange(SHARDS)
    payer = rng.choice(world.customers[payer_shard])
    payee = rng.choice(world.customers[(payer_shard + 1) % SHARDS])
    fields: dict[str, Any] = {"pending": True, "timeout_seconds": 3600} if pending else {}
    if rng.random() < 0.2:
        fields["metadata"] = {"ref": random_unicode(rng, 8)}
    # Named under the payer's key, as the gateway's units are: its home coordinates it.
    tid = world.fresh(f"{payer.split('/', 1)[0]}/fz-x")
    message = transfer(tid, payer, payee, world.amount(), **fields)
    legs = [Leg(x.account_id, x.side == pb.SIDE_DEBIT, x.amount, x.currency) for x in message.legs]
    coordinator, pieces = split_pieces(legs, world.slot_map)
    unit = Unit(message, coordinator, pieces, world.attempt())
    world.units.append(unit)
    if pending:
        world.holds.append(unit)
    return unit


def old_unit(world: World) -> Unit:
    if world.units and world.rng.random() < 0.7:
        return world.rng.choice(world.units[-50:])
    return new_unit(world, pending=world.rng.random() < 0.3)


def gen_prepare(world: World) -> tuple[int, Message]:
    rng = world.rng
    units = [new_unit(world, pending=rng.random() < 0.3) for _ in range(rng.choice([1, 1, 2, 4]))]
    shard = units[0].participant
    items = []
    for n, unit in enumerate(units):
        if unit.participant != shard:
            continue
        item = spb.PrepareItem(
            piece=piece_message(unit.message, unit.pieces[shard], linked=n < len(units) - 1),
            coordinator_shard=unit.coordinator,
            deadline_seconds=rng.choice([1, 2, 30]),
            attempt=unit.attempt,
        )
        if rng.random() < 0.1 and world.units:
            item.reverses_id = rng.choice(world.units).message.id
        items.append(item)
    return shard, spb.PrepareRequest(items=items)


def gen_commit(world: World) -> tuple[int, Message]:
    rng = world.rng
    unit = old_unit(world)
    item = spb.CommitItem(
        piece=piece_message(unit.message, unit.pieces[unit.coordinator]), attempt=unit.attempt
    )
    roll = rng.random()
    if roll < 0.1 and world.units:
        original = rng.choice(world.units)
        item.reverses_id = original.message.id
    elif roll < 0.2 and world.holds:
        hold = rng.choice(world.holds)
        item.as_sent = True
        item.piece.CopyFrom(pb.Transaction(id=world.fresh("fz-v"), code=1))
        item.piece.void_pending_id = hold.message.id
        item.decide_before_ns = time.time_ns() + rng.choice([-(10**9), 10**10])
    return unit.coordinator, spb.CommitRequest(items=[item])


def gen_abort(world: World) -> tuple[int, Message]:
    rng = world.rng
    unit = old_unit(world)
    item = spb.AbortItem(
        transaction_id=unit.message.id,
        attempt=unit.attempt if rng.random() < 0.8 else world.attempt(),
        reason=rng.choice(REASONS),
        message=rng.choice(["", "refused", random_unicode(rng, 20)]),
    )
    if rng.random() < 0.3:
        item.piece.CopyFrom(piece_message(unit.message, unit.pieces[unit.coordinator]))
    return unit.coordinator, spb.AbortRequest(items=[item])


def gen_resolve(world: World) -> tuple[int, Message]:
    unit = old_unit(world)
    item = spb.ResolveItem(
        transaction_id=unit.message.id, commit=world.rng.random() < 0.5, attempt=unit.attempt
    )
    return unit.participant, spb.ResolveRequest(items=[item])


def _resolution(world: World, hold: Unit) -> pb.Transaction:
    rng = world.rng
    if rng.random() < 0.5:
        return pb.Transaction(id=world.fresh("fz-v"), code=1, void_pending_id=hold.message.id)
    post = pb.Transaction(id=world.fresh("fz-p"), code=1, post_pending_id=hold.message.id)
    if rng.random() < 0.5:
        post.legs.extend(hold.message.legs)
    return post


def gen_decide(world: World) -> tuple[int, Message]:
    hold = world.rng.choice(world.holds) if world.holds else new_unit(world, pending=True)
    item = spb.DecideHoldItem(
        resolution=_resolution(world, hold),
        decide_before_ns=time.time_ns() + world.rng.choice([-(10**9), 10**10]),
    )
    return hold.coordinator, spb.DecideHoldsRequest(items=[item])


def gen_settle(world: World) -> tuple[int, Message]:
    rng = world.rng
    hold = rng.choice(world.holds) if world.holds else new_unit(world, pending=True)
    fate = rng.choice(
        [spb.HOLD_FATE_OPEN, spb.HOLD_FATE_POSTED, spb.HOLD_FATE_VOIDED, spb.HOLD_FATE_EXPIRED]
    )
    item = spb.SettleHoldItem(
        transaction_id=hold.message.id,
        attempt=hold.attempt,
        fate=fate,
        deadline_ns=time.time_ns() + rng.choice([0, 10**9, 10**12]),
        before_decision=rng.random() < 0.5,
    )
    if fate in (spb.HOLD_FATE_POSTED, spb.HOLD_FATE_VOIDED):
        resolution = _resolution(world, hold)
        if (fate == spb.HOLD_FATE_POSTED) != bool(resolution.post_pending_id):
            resolution = _resolution(world, hold)
        item.resolution.CopyFrom(resolution)
    return hold.participant, spb.SettleHoldsRequest(items=[item])


def gen_clearing(world: World) -> tuple[int, Message]:
    currencies = world.rng.sample(["USD", "EUR", "JPY", "usd", "XXX", ""], world.rng.randint(1, 3))
    return world.rng.randrange(SHARDS), spb.CreateClearingAccountsRequest(currencies=currencies)


GENERATORS: dict[str, Callable[[World], tuple[int, Message]]] = {
    "Prepare": gen_prepare,
    "Commit": gen_commit,
    "Abort": gen_abort,
    "Resolve": gen_resolve,
    "DecideHolds": gen_decide,
    "SettleHolds": gen_settle,
    "CreateClearingAccounts": gen_clearing,
}


def gen_message(world: World) -> tuple[int, str, bytes]:
    rng = world.rng
    # Not the slot-move RPCs: a well-formed one moves slots, by design, out of the world this
    # fuzz checks; their bad inputs are tested in tests/shards/gateway/test_slot_move.py.
    method = rng.choice(list(GENERATORS))
    shard, request = GENERATORS[method](world)
    if rng.random() < 0.1:
        shard = 1 - shard  # a gateway with an old map, or no gateway at all
    if rng.random() < RAW_SHARE:
        if rng.random() < 0.3:
            return shard, method, rng.randbytes(rng.choice([0, 1, 2, 5, 16, 64, 300]))
        return shard, method, corrupt(world, request.SerializeToString())
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        mutate(world, request)
    return shard, method, request.SerializeToString()


# ---- checking the answers ----


def check_response(method: str, request: Message, response: Message, tally: Tally) -> str:
    items = getattr(request, ITEMS[method])
    answers = getattr(response, ANSWERS[method])
    if len(answers) != len(items):
        return f"{len(items)} items but {len(answers)} answers"
    for index, answer in enumerate(answers):
        code = answer.reason if method == "Abort" else answer.code
        if method == "Abort" and answer.committed:
            tally.codes["committed"] += 1
            continue
        if code not in KNOWN_CODES:
            return f"answers[{index}] has unknown code {code}"
        tally.codes[ResultCode(code).name] += 1
        if ResultCode(code) in CODES_NEVER:
            return f"answers[{index}] is {ResultCode(code).name}: {answer.message!r}"
    return ""


async def send(
    calls: dict[tuple[int, str], Any], shard: int, method: str, body: bytes, tally: Tally
) -> None:
    request_type, response_type = METHODS[method]
    try:
        request: Message | None = request_type.FromString(body)
    except DecodeError:
        request = None
    try:
        raw = await calls[shard, method](body, timeout=60)
    except grpc.aio.AioRpcError as error:
        status = error.code()
        tally.statuses[f"{method} {status.name}"] += 1
        details = error.details() or ""
        if request is None:
            expected = {grpc.StatusCode.INVALID_ARGUMENT}
            if len(body) > limits.message_size_max_bytes:
                expected.add(grpc.StatusCode.RESOURCE_EXHAUSTED)
            if status not in expected:
                tally.fail(method, body, f"undecodable body answered {status.name}: {details}")
        elif status in ALLOWED_ERRORS:
            if not details:
                tally.fail(method, body, f"{status.name} without details")
        elif not (
            method == "Abort"
            and status == grpc.StatusCode.UNAVAILABLE
            and "abort not recorded" in details
        ):
            tally.fail(method, body, f"{status.name}: {details[:300]}")
        return
    tally.statuses[f"{method} OK"] += 1
    if request is None:
        tally.fail(method, body, "the server accepted a body that does not parse")
        return
    problem = check_response(method, request, response_type.FromString(raw), tally)
    if problem:
        tally.fail(method, body, problem)


async def setup_world(cluster: InProcessCluster, client: Client) -> World:
    world = World(random.Random(SEED), SlotMap.even(SHARDS))
    for n in range(400):
        key = f"fz{n}"
        shard = world.slot_map.shard_of_key(key)
        if len(world.customers.setdefault(shard, [])) < 3:
            world.customers[shard].append(f"{key}/dep")
    accounts = [account("@cash"), *(account(a) for a in world.all_accounts() if a != "@cash")]
    assert set(names(await client.create(*accounts))) == {"RESULT_CODE_CREATED"}
    await cluster.gateway.cluster.ensure_clearing_accounts({"USD"})
    return world


class _Faults(logging.Handler):
    """The items that faulted in a writer's loop (core.state logs each with its traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_fuzz_the_shard_api(pg: EmbeddedPostgres) -> None:
    print(f"shard fuzz seed {SEED}, up to {MESSAGE_COUNT} messages / {TIME_BUDGET_S}s")
    prefix = f"sfz{os.getpid()}_{time.time_ns() % 10**6}"
    async with in_process_cluster(pg, prefix, SHARDS, expiry_interval_ms=100) as cluster:
        async with security.channel(cluster.target) as gateway_channel:
            client = Client(gateway_channel)
            world = await setup_world(cluster, client)
            channels = [security.cluster_channel(node.internal_target) for node in cluster.nodes]
            faults = _Faults()
            logging.getLogger("tally.state").addHandler(faults)
            try:
                await _fuzz(cluster, client, world, channels)
            finally:
                logging.getLogger("tally.state").removeHandler(faults)
                for channel in channels:
                    await channel.close()
            assert not faults.records, [
                logging.Formatter().format(record) for record in faults.records[:3]
            ]


async def _fuzz(
    cluster: InProcessCluster, client: Client, world: World, channels: list[grpc.aio.Channel]
) -> None:
    calls = {
        (shard, method): channel.unary_unary(f"/{SERVICE.full_name}/{method}")
        for shard, channel in enumerate(channels)
        for method in METHODS
    }
    tally = Tally(preview_byte_count=160)
    started = time.monotonic()
    sent = 0
    while sent < MESSAGE_COUNT and time.monotonic() - started < TIME_BUDGET_S:
        wave = [gen_message(world) for _ in range(min(WAVE, MESSAGE_COUNT - sent))]
        await asyncio.gather(*(send(calls, s, m, body, tally) for s, m, body in wave))
        sent += len(wave)
    elapsed = time.monotonic() - started
    print(f"sent {sent} messages in {elapsed:.1f}s")
    print("statuses:", dict(sorted(tally.statuses.items())))
    print("answers:", dict(sorted(tally.codes.items())))
    assert not tally.failures, (
        f"seed {SEED}: {len(tally.failures)} bad answers; first ones:\n"
        + "\n".join(tally.failures[:20])
    )

    # Both nodes are up and healthy (on the internal listener fuzzed and on the client one),
    # and the cluster still moves money.
    for node, channel in zip(cluster.nodes, channels, strict=True):
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tally.v1.Ledger"), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        async with security.channel(node.target) as client_listener:
            health = await health_pb2_grpc.HealthStub(client_listener).Check(
                health_pb2.HealthCheckRequest(service="tally.v1.Ledger"), timeout=10
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert node.node.writer is not None and not node.task.done()
    # Fresh accounts on each shard, in a currency the fuzz never used (it may have pushed its
    # accounts and the USD clearing pieces to a counter's limit).
    key, there_key = (world.customers[n][0].split("/", 1)[0] for n in (0, 1))
    here, near, there = f"{key}/after-a", f"{key}/after-b", f"{there_key}/after-c"
    assert set(await client.create(*(account(a, currency="GBP") for a in (here, near, there)))) == {
        pb.RESULT_CODE_CREATED
    }
    local = transfer(f"{key}/after-local", here, near, 5, currency="GBP")  # at here's shard
    cross = transfer(f"{key}/after-cross", here, there, 7, currency="GBP")
    after = await client.post(local, cross)
    assert names([r.code for r in after]) == ["RESULT_CODE_CREATED"] * 2, after
    assert (await client.transaction(f"{key}/after-cross")).status == pb.TRANSACTION_STATUS_POSTED
    for node in cluster.nodes:
        assert await audit_problems(node.dsn) == [], node.dsn
    assert sent >= min(MESSAGE_COUNT, 500), f"only {sent} messages in {elapsed:.1f}s"
    # Not degenerate: a good share got through validation and were applied.
    assert tally.codes["CREATED"] >= sent // 20, tally.codes
