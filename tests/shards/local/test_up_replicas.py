"""`tally up --shards 2 --replicas 1` (real processes): the shards' PostgreSQL has a synchronous
standby, its nodes require one (--durability sync-standby), and a kill -9 of the primary
PostgreSQL under bank clients posting single-shard and cross-shard transfers fails over to the
standby: every acknowledged transfer is there after it, none is applied twice (every balance is
exactly what the acknowledged transfers make it), the audit is clean, and the old primary is the
new one's synchronous standby."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import pytest

from core.slots import SlotMap
from shards.local.replicated_pg import PRIMARY_FILE, ReplicatedPostgres, member_name
from tally.v1 import audit_pb2, audit_pb2_grpc
from tally.v1 import ledger_pb2 as pb
from tests.support.helpers import Client, account, transfer
from tests.support.local_up import LocalUp, kill_9, running_up, wait_line, wait_serving

SHARD_COUNT = 2
CUSTOMERS_PER_SHARD = 3
WORKERS = 6
LOAD_BEFORE_KILL_S = 3.0
LOAD_AFTER_FAILOVER_S = 3.0
FAILOVER_TIMEOUT_S = 120.0
# The supervisor's line when it finds the primary gone (shards.local.replicated_pg).
PROMOTING = "tally: PostgreSQL primary "
APPLIED = {pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED}
RETRYABLE_RESULTS = {
    pb.RESULT_CODE_UNAVAILABLE,
    pb.RESULT_CODE_ABORTED,
    pb.RESULT_CODE_OUTCOME_UNKNOWN,
}
RETRYABLE_STATUSES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
AUDIT_LINE = "tally: audit (tally.v1.Audit, read-only) on "


@pytest.fixture
async def replicated_cluster(scratch: Path, tmp_path: Path) -> AsyncIterator[LocalUp]:
    arguments = ["--shards", str(SHARD_COUNT), "--replicas", "1"]
    async with running_up(tmp_path / "up.log", arguments, data_dir=scratch / "data") as up:
        await wait_serving(up)
        yield up


def customers() -> list[str]:
    """CUSTOMERS_PER_SHARD partition keys on each shard."""
    slot_map = SlotMap.even(SHARD_COUNT)
    chosen: dict[int, list[str]] = {shard: [] for shard in range(SHARD_COUNT)}
    for n in itertools.count():
        keys = chosen[slot_map.shard_of_key(f"cust-{n}")]
        if len(keys) < CUSTOMERS_PER_SHARD:
            keys.append(f"cust-{n}")
        if all(len(keys) == CUSTOMERS_PER_SHARD for keys in chosen.values()):
            return [key for keys in chosen.values() for key in keys]
    raise AssertionError("unreachable")


@dataclass
class Book:
    """What the clients were told: each acknowledged transfer, when it was first sent and when
    acknowledged (time.monotonic), and how often a retry of one was needed."""

    acknowledged: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    spans: list[tuple[float, float]] = field(default_factory=list)
    retries: Counter[str] = field(default_factory=Counter)


async def post_until_applied(client: Client, book: Book, item: pb.Transaction) -> None:
    """One transfer, retried with the same id while the answer is retryable."""
    sent = time.monotonic()
    deadline = sent + FAILOVER_TIMEOUT_S
    while True:
        try:
            (result,) = await client.post(item)
        except grpc.aio.AioRpcError as error:
            assert error.code() in RETRYABLE_STATUSES, error
            book.retries[error.code().name] += 1
        else:
            if result.code in APPLIED:
                legs = {leg.side: leg.account_id for leg in item.legs}
                book.acknowledged[item.id] = (legs[pb.SIDE_DEBIT], legs[pb.SIDE_CREDIT], 1)
                book.spans.append((sent, time.monotonic()))
                return
            assert result.code in RETRYABLE_RESULTS, result
            book.retries[pb.ResultCode.Name(result.code)] += 1
        assert time.monotonic() < deadline, f"{item.id} not applied within the bound"
        await asyncio.sleep(0.1)


async def clients(up: LocalUp, deposits: list[str], book: Book, stop: asyncio.Event) -> None:
    async def worker(number: int) -> None:
        rng = random.Random(number)
        async with up.channel() as channel:
            client = Client(channel)
            for n in itertools.count():
                if stop.is_set():
                    return
                debit, credit = rng.sample(deposits, 2)  # about half of them cross-shard
                await post_until_applied(client, book, transfer(f"w{number}-{n}", debit, credit, 1))

    async with asyncio.TaskGroup() as group:
        for number in range(WORKERS):
            group.create_task(worker(number))


async def settled_balance(client: Client, account_id: str) -> pb.Balance:
    """The account's balance once no cross-shard piece of it is still held: an acknowledged
    cross-shard transfer is decided, and its pieces settle on each shard after it."""
    deadline = time.monotonic() + FAILOVER_TIMEOUT_S
    while True:
        balance = await client.balance(account_id)
        if not (balance.debits_pending or balance.credits_pending):
            return balance
        assert time.monotonic() < deadline, f"{account_id} still holds pieces: {balance}"
        await asyncio.sleep(0.2)


async def audit_is_clean(up: LocalUp) -> None:
    target = (await wait_line(up, AUDIT_LINE)).removeprefix(AUDIT_LINE).strip()
    async with up.channel(target) as channel:
        report = await audit_pb2_grpc.AuditStub(channel).RunAudit(
            audit_pb2.RunAuditRequest(), timeout=60
        )
    assert report.ok, str(report)[:6000]


@pytest.mark.timeout(420)
async def test_a_killed_primary_postgresql_fails_over_with_every_acknowledged_transfer(
    replicated_cluster: LocalUp,
) -> None:
    up = replicated_cluster
    deposits = [f"{key}/deposit" for key in customers()]
    async with up.channel() as channel:
        created = await Client(channel).create(*(account(d) for d in deposits))
    assert set(created) == {pb.RESULT_CODE_CREATED}
    book, stop = Book(), asyncio.Event()
    load = asyncio.create_task(clients(up, deposits, book, stop))
    try:
        await asyncio.sleep(LOAD_BEFORE_KILL_S)
        before_kill = len(book.acknowledged)
        seen = len(up.lines)
        primary_pid = int((up.data_dir / "pg" / "postmaster.pid").read_text().split()[0])
        killed_at = time.monotonic()
        await kill_9(primary_pid)
        line = await asyncio.wait_for(wait_line(up, PROMOTING, after=seen), FAILOVER_TIMEOUT_S)
        promoting_at = time.monotonic()  # the primary is dead, its standby not yet promoted
        assert "exited; promoting its standby" in line, line
        await asyncio.wait_for(
            wait_line(up, "tally: PostgreSQL failover done", after=seen), FAILOVER_TIMEOUT_S
        )
        at_failover = len(book.acknowledged)
        await asyncio.sleep(LOAD_AFTER_FAILOVER_S)
    finally:
        stop.set()
        await load
    assert before_kill > 0 and len(book.acknowledged) > at_failover, (before_kill, book)
    # A client's transfer was sent before the kill and acknowledged only once the supervisor
    # had seen the primary dead and begun promoting its standby, so by the new primary:
    # retried, or held by its node until the standby took over (which one is the timing's: a
    # run saw no retry at all). Not "after the failover done line": the commits held waiting
    # for a synchronous standby are acknowledged the moment it is back, before that line is
    # printed and read (a run saw every such transfer acknowledged in between).
    crossed = [span for span in book.spans if span[0] < killed_at and span[1] > promoting_at]
    assert crossed, f"no client's transfer crossed the failover (retries {book.retries})"

    # Every acknowledged transfer is there, once: each balance is what they make it.
    expected: Counter[str] = Counter()
    for debit, credit, amount in book.acknowledged.values():
        expected[debit] -= amount
        expected[credit] += amount
    async with up.channel() as channel:
        client = Client(channel)
        for transaction_id in book.acknowledged:
            assert (await client.transaction(transaction_id)).transaction.id == transaction_id
        for deposit in deposits:
            balance = await settled_balance(client, deposit)
            assert balance.credits_posted - balance.debits_posted == expected[deposit], deposit
    await audit_is_clean(up)

    # The old primary is now the new one's synchronous standby.
    assert (up.data_dir / PRIMARY_FILE).read_text().strip() == "1"
    ports = [int((up.data_dir / name).read_text()) for name in ("pg-port", "pg-replica-1-port")]
    replicated = ReplicatedPostgres(up.data_dir, ports)
    connection = await asyncpg.connect(replicated.dsn(), timeout=10)
    try:
        state = await connection.fetchval(
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1",
            member_name(0),
        )
    finally:
        await connection.close()
    assert state == "sync"
    assert replicated.members[0].is_standby()
