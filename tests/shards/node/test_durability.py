"""Durability of a real node process: acknowledged means committed, a batch is all or nothing,
and ids stay idempotent across kill -9, graceful stops and restarts.

The node runs as `python -m shards.cli node` (its own process, on uvloop); the test talks to it
over gRPC and looks at PostgreSQL directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc
from tests.support import security
from tests.support.helpers import (
    CREDIT,
    DEBIT,
    Client,
    account,
    audit_problems,
    leg,
    name,
    start_node,
    transfer,
)
from tests.support.processes import (
    SERVING,
    STOPPED_LINE,
    JournalBlocker,
    NodeProcess,
    connected,
    fetch_rows,
    running_node,
    spawn_node,
    wait_health,
)

CUSTOMER_COUNT = 8
FUNDING_AMOUNT = 10**9  # far above what a run can spend: no item is refused for funds
BANK = "@bank"
CLIENT_COUNT = 16
RPC_TIMEOUT_S = 5.0
RETRY_CHUNK_ITEM_COUNT_MAX = 1000
READ_CHUNK_ID_COUNT_MAX = 1000

CREATED = pb.RESULT_CODE_CREATED
REPLAYED = pb.RESULT_CODE_REPLAYED


def deposit(number: int) -> str:
    return f"c{number}/dep"


def loan(number: int) -> str:
    return f"c{number}/loan"


# ---- what the clients sent and what they were told ----


@dataclass
class Record:
    """Client-side truth: every transaction sent, grouped as sent, and each one's answer."""

    sent: dict[str, pb.Transaction] = field(default_factory=dict)
    requests: list[list[str]] = field(default_factory=list)
    acknowledged: dict[str, int] = field(default_factory=dict)  # id -> timestamp_ns (CREATED)
    unanswered: set[str] = field(default_factory=set)  # the RPC failed: outcome unknown
    other: dict[str, str] = field(default_factory=dict)  # id -> any other result code
    linked_pairs: list[tuple[str, str]] = field(default_factory=list)
    hold_of: dict[str, str] = field(default_factory=dict)  # post/void id -> hold id

    def register(self, transactions: Sequence[pb.Transaction]) -> None:
        self.requests.append([t.id for t in transactions])
        for transaction in transactions:
            self.sent[transaction.id] = transaction
            target = transaction.post_pending_id or transaction.void_pending_id
            if target:
                self.hold_of[transaction.id] = target
        for first, second in itertools.pairwise(transactions):
            if first.linked:
                self.linked_pairs.append((first.id, second.id))

    def answer(
        self, transactions: Sequence[pb.Transaction], results: Sequence[pb.ItemResult]
    ) -> None:
        assert len(results) == len(transactions)
        for transaction, result in zip(transactions, results, strict=True):
            if result.code == CREATED:
                self.acknowledged[transaction.id] = result.timestamp_ns
            else:
                self.other[transaction.id] = f"{name(result.code)}: {result.message}"

    def expected_posting_count(self, transaction_id: str) -> int:
        """Postings a transaction writes: one per leg; a post/void one per leg of its hold."""
        hold_id = self.hold_of.get(transaction_id)
        if hold_id is not None:
            return len(self.sent[hold_id].legs)
        return len(self.sent[transaction_id].legs)


# ---- load: concurrent clients posting mixed transactions ----


class LoadClient:
    """Posts single, multi-leg, batched, linked and two-phase transactions until stopped."""

    def __init__(self, stub: pb_grpc.LedgerStub, number: int, record: Record) -> None:
        self.stub = stub
        self.number = number
        self.record = record
        self.random = random.Random(number)
        self.open_holds: list[str] = []
        self.sequence = 0
        self.rpc_error_count = 0

    def _id(self) -> str:
        self.sequence += 1
        return f"k{self.number}-{self.sequence}"

    def _customers(self, count: int) -> list[int]:
        return self.random.sample(range(CUSTOMER_COUNT), count)

    def _single(self, linked: bool = False) -> pb.Transaction:
        a, b = self._customers(2)
        fields: dict[str, Any] = {"linked": linked}
        if self.random.random() < 0.3:
            fields["metadata"] = {"channel": "api", "note": "dépôt n°7"}
        if self.random.random() < 0.3:
            fields["value_date"] = "2025-03-31"
        amount = self.random.randint(1, 100)
        return transfer(self._id(), deposit(a), deposit(b), amount, code=7, **fields)

    def _multi_leg(self) -> pb.Transaction:
        a, b, c = self._customers(3)
        debit, fee = self.random.randint(10, 100), self.random.randint(1, 9)
        legs = [
            leg(deposit(a), DEBIT, debit),
            leg(loan(a), DEBIT, fee),
            leg(deposit(b), CREDIT, debit - 5),
            leg(loan(c), CREDIT, 5),
            leg(BANK, CREDIT, fee),
        ]
        return pb.Transaction(id=self._id(), legs=legs, code=8, metadata={"kind": "split"})

    def _hold(self) -> pb.Transaction:
        (a,) = self._customers(1)
        amount = self.random.randint(10, 100)
        timeout_seconds = self.random.choice([0, 3600])
        return transfer(
            self._id(),
            deposit(a),
            BANK,
            amount,
            code=9,
            pending=True,
            timeout_seconds=timeout_seconds,
        )

    def _resolve(self, hold_id: str) -> pb.Transaction:
        hold = self.record.sent[hold_id]
        choice = self.random.randrange(3)
        if choice == 0:
            return pb.Transaction(id=self._id(), code=10, post_pending_id=hold_id)
        if choice == 1:
            return pb.Transaction(id=self._id(), code=11, void_pending_id=hold_id)
        part = self.random.randint(1, hold.legs[0].amount)
        legs = [leg(hold.legs[0].account_id, DEBIT, part), leg(BANK, CREDIT, part)]
        return pb.Transaction(id=self._id(), code=12, post_pending_id=hold_id, legs=legs)

    def next_request(self) -> list[pb.Transaction]:
        roll = self.random.random()
        if roll < 0.15 and self.open_holds:
            return [self._resolve(self.open_holds.pop(0))]
        if roll < 0.30:
            return [self._hold()]
        if roll < 0.45:
            return [self._single(linked=True), self._single()]
        if roll < 0.60:
            return [self._multi_leg()]
        if roll < 0.75:
            return [self._single() for _ in range(self.random.randint(2, 5))]
        return [self._single()]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            transactions = self.next_request()
            self.record.register(transactions)
            try:
                response = await self.stub.PostTransactions(
                    pb.PostTransactionsRequest(transactions=transactions), timeout=RPC_TIMEOUT_S
                )
            except grpc.aio.AioRpcError:
                self.rpc_error_count += 1
                self.record.unanswered.update(t.id for t in transactions)
                await asyncio.sleep(0.01)
                continue
            self.record.answer(transactions, response.results)
            for transaction in transactions:
                if transaction.pending and transaction.id in self.record.acknowledged:
                    self.open_holds.append(transaction.id)


async def set_up_accounts(client: Client) -> None:
    accounts = [account(BANK)]
    for number in range(CUSTOMER_COUNT):
        accounts += [account(deposit(number), no_overdraft=True), account(loan(number), code=200)]
    assert set(await client.create(*accounts)) == {CREATED}
    funding = [
        transfer(f"fund-{number}", BANK, deposit(number), FUNDING_AMOUNT)
        for number in range(CUSTOMER_COUNT)
    ]
    assert {r.code for r in await client.post(*funding)} == {CREATED}


async def wait_for_acknowledgements(
    record: Record, count_min: int, duration_s: float, timeout_s: float
) -> None:
    """At least duration_s of load and count_min acknowledgements, within timeout_s."""
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        if elapsed >= duration_s and len(record.acknowledged) >= count_min:
            return
        assert elapsed < timeout_s, f"only {len(record.acknowledged)} acknowledged in {elapsed}s"
        await asyncio.sleep(0.05)


# ---- checking a database against the record ----


def chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def recorded_in_database(
    dsn: str, ids: Sequence[str]
) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int, int]]]:
    """(transactions: id -> (timestamp_ns, block), postings: id -> (count, blocks, block))."""
    transactions = {
        row["id"]: (row["timestamp_ns"], row["block_sequence"])
        for row in await fetch_rows(
            dsn,
            "SELECT id, timestamp_ns, block_sequence FROM transactions WHERE id = ANY($1::text[])",
            list(ids),
        )
    }
    postings = {
        row["transaction_id"]: (row["posting_count"], row["block_count"], row["block"])
        for row in await fetch_rows(
            dsn,
            """
            SELECT transaction_id, count(*) AS posting_count,
                   count(DISTINCT block_sequence) AS block_count, min(block_sequence) AS block
            FROM postings WHERE transaction_id = ANY($1::text[]) GROUP BY transaction_id
            """,
            list(ids),
        )
    }
    return transactions, postings


async def check_all_or_nothing(dsn: str, record: Record) -> set[str]:
    """Each transaction is wholly present (its row and every posting, in one block) or wholly
    absent; acknowledged ones are present. Returns the ids present."""
    transactions, postings = await recorded_in_database(dsn, list(record.sent))
    problems = []
    for transaction_id in record.sent:
        posting_count, block_count, block = postings.get(transaction_id, (0, 0, 0))
        if transaction_id in transactions:
            expected = record.expected_posting_count(transaction_id)
            if (posting_count, block_count) != (expected, 1):
                problems.append(f"{transaction_id}: {posting_count} postings, expected {expected}")
            elif block != transactions[transaction_id][1]:
                problems.append(f"{transaction_id}: postings and row in different blocks")
        else:
            if transaction_id in record.acknowledged:
                problems.append(f"{transaction_id}: acknowledged but not in the database")
            if posting_count:
                problems.append(f"{transaction_id}: {posting_count} postings without its row")
    for first, second in record.linked_pairs:
        if (first in transactions) != (second in transactions):
            problems.append(f"linked pair {first}, {second}: only one is present")
    assert problems == [], problems[:20]
    return set(transactions)


async def check_acknowledged_readable(client: Client, record: Record) -> None:
    """GetTransactions returns every acknowledged transaction as submitted, at its timestamp."""
    ids = sorted(record.acknowledged)
    problems = []
    for chunk in chunks(ids, READ_CHUNK_ID_COUNT_MAX):
        response = await client.stub.GetTransactions(
            pb.GetTransactionsRequest(ids=chunk), timeout=30
        )
        for transaction_id, lookup in zip(chunk, response.results, strict=True):
            sent = record.sent[transaction_id]
            found = lookup.transaction
            if lookup.code != pb.RESULT_CODE_OK:
                problems.append(f"{transaction_id}: {name(lookup.code)}")
            elif found.timestamp_ns != record.acknowledged[transaction_id]:
                problems.append(f"{transaction_id}: timestamp changed")
            elif list(found.transaction.legs) != list(sent.legs) or not found.applied_legs:
                problems.append(f"{transaction_id}: legs differ from what was sent")
            elif dict(found.transaction.metadata) != dict(sent.metadata):
                problems.append(f"{transaction_id}: metadata differs")
    assert problems == [], problems[:20]


def retry_requests(record: Record) -> list[list[pb.Transaction]]:
    """Every request again, in order, packed into large requests (a request is never split,
    so linked groups stay whole; a hold precedes its post or void)."""
    packed: list[list[pb.Transaction]] = [[]]
    for ids in record.requests:
        if len(packed[-1]) + len(ids) > RETRY_CHUNK_ITEM_COUNT_MAX:
            packed.append([])
        packed[-1].extend(record.sent[i] for i in ids)
    return [request for request in packed if request]


async def retry_everything(client: Client, record: Record) -> dict[str, pb.ItemResult]:
    answers: dict[str, pb.ItemResult] = {}
    for request in retry_requests(record):
        results = await client.post(*request)
        for transaction, result in zip(request, results, strict=True):
            answers[transaction.id] = result
    return answers


async def check_retries(
    client: Client, dsn: str, record: Record, present: set[str]
) -> dict[str, str]:
    """First retry: present ids are REPLAYED with their recorded timestamp, absent ones CREATED.
    Second retry: everything REPLAYED with the first retry's timestamps."""
    recorded, _ = await recorded_in_database(dsn, sorted(present))
    first = await retry_everything(client, record)
    problems = []
    for transaction_id, result in first.items():
        if transaction_id in present:
            if result.code != REPLAYED or result.timestamp_ns != recorded[transaction_id][0]:
                problems.append(f"{transaction_id}: {name(result.code)} {result.message}")
        elif result.code != CREATED:
            problems.append(f"{transaction_id} (absent): {name(result.code)} {result.message}")
    assert problems == [], problems[:20]
    second = await retry_everything(client, record)
    problems = [
        f"{transaction_id}: {name(result.code)} {result.message}"
        for transaction_id, result in second.items()
        if result.code != REPLAYED or result.timestamp_ns != first[transaction_id].timestamp_ns
    ]
    assert problems == [], problems[:20]
    return {i: name(r.code) for i, r in first.items()}


async def check_holds_resolved(client: Client, record: Record) -> None:
    """Every acknowledged post or void left its hold resolved by it."""
    resolutions = [i for i in record.hold_of if i in record.acknowledged]
    for chunk in chunks(resolutions, READ_CHUNK_ID_COUNT_MAX):
        holds = [record.hold_of[i] for i in chunk]
        response = await client.stub.GetTransactions(
            pb.GetTransactionsRequest(ids=holds), timeout=30
        )
        for resolution_id, lookup in zip(chunk, response.results, strict=True):
            assert lookup.transaction.resolved_by_id == resolution_id
            assert lookup.transaction.status in (
                pb.TRANSACTION_STATUS_PENDING_POSTED,
                pb.TRANSACTION_STATUS_PENDING_VOIDED,
            )


async def run_load(node: NodeProcess, record: Record, stop: asyncio.Event) -> list[LoadClient]:
    """Clients posting until `stop`; returns them once every one has finished."""
    async with security.channel(node.target) as channel:
        stub = pb_grpc.LedgerStub(channel)
        clients = [LoadClient(stub, n, record) for n in range(CLIENT_COUNT)]
        async with asyncio.timeout(60), asyncio.TaskGroup() as group:
            for load_client in clients:
                group.create_task(load_client.run(stop))
    return clients


# ---- the tests ----


async def test_kill_9_under_load_keeps_every_acknowledged_transaction(
    pg: EmbeddedPostgres, dsn: str, tmp_path: Path
) -> None:
    """SIGKILL while 16 clients post: after a restart every acknowledged transaction is there as
    sent, nothing is half there, linked pairs are together, retries apply once, books audit."""
    record = Record()
    async with running_node(dsn, tmp_path, "first") as node:
        async with connected(node) as client:
            await set_up_accounts(client)
        stop = asyncio.Event()
        load = asyncio.create_task(run_load(node, record, stop))
        try:
            await wait_for_acknowledgements(record, 300, duration_s=1.5, timeout_s=20)
            await node.kill()
        finally:
            stop.set()
            clients = await asyncio.wait_for(load, timeout=60)
        port = node.port
    assert record.other == {}, list(record.other.items())[:10]
    assert sum(c.rpc_error_count for c in clients) >= 1, "the kill was not seen by any client"
    assert record.unanswered, "no request was in flight or refused when the node died"

    async with running_node(dsn, tmp_path, "restarted", port=port) as node:
        present = await check_all_or_nothing(dsn, record)
        async with connected(node) as client:
            await check_acknowledged_readable(client, record)
            await check_holds_resolved(client, record)
            outcome = await check_retries(client, dsn, record, present)
    assert await audit_problems(dsn) == []
    assert set(outcome.values()) <= {"RESULT_CODE_CREATED", "RESULT_CODE_REPLAYED"}


MID_COMMIT_BATCH = [
    transfer("mid-1", deposit(0), deposit(1), 40, metadata={"ref": "a"}),
    transfer("mid-2", deposit(1), BANK, 30, pending=True),
    transfer("mid-3", deposit(2), deposit(3), 20, linked=True),
    transfer("mid-4", deposit(3), loan(4), 10),
]
MID_COMMIT_IDS = [t.id for t in MID_COMMIT_BATCH]


async def test_kill_9_inside_the_commit_leaves_no_trace_of_the_batch(
    pg: EmbeddedPostgres, dsn: str, tmp_path: Path
) -> None:
    """Deterministic mid-commit crash: the node's commit has written accounts, transactions,
    postings and holds and waits on its last statement. The client is not answered, nothing of
    the batch is visible; kill -9; after a restart nothing of it exists, a retry applies it once."""
    async with running_node(dsn, tmp_path, "first") as node, connected(node) as client:
        await set_up_accounts(client)
        async with JournalBlocker(dsn) as blocker:
            post = asyncio.create_task(client.post(*MID_COMMIT_BATCH))
            try:
                await blocker.wait_until_a_commit_waits()
                await asyncio.sleep(0.2)
                assert not post.done(), "answered before its commit finished"
                assert await recorded_in_database(dsn, MID_COMMIT_IDS) == ({}, {})
                await node.kill()
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await asyncio.wait_for(post, timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            finally:
                if not post.done():
                    post.cancel()
                    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                        await post
            next_block = blocker.next_block
        port = node.port

    async with running_node(dsn, tmp_path, "restarted", port=port) as node:
        assert await recorded_in_database(dsn, MID_COMMIT_IDS) == ({}, {})
        assert await fetch_rows(dsn, "SELECT 1 FROM holds WHERE transaction_id = 'mid-2'") == []
        query = "SELECT sequence FROM journal_blocks WHERE sequence >= $1"
        assert await fetch_rows(dsn, query, next_block) == []
        async with connected(node) as client:
            first = await client.post(*MID_COMMIT_BATCH)
            again = await client.post(*MID_COMMIT_BATCH)
    assert [name(r.code) for r in first] == ["RESULT_CODE_CREATED"] * 4
    assert [name(r.code) for r in again] == ["RESULT_CODE_REPLAYED"] * 4
    assert [r.timestamp_ns for r in again] == [r.timestamp_ns for r in first]
    assert await audit_problems(dsn) == []


async def test_commit_that_lands_after_the_client_gave_up_survives_kill_9_and_replays(
    pg: EmbeddedPostgres, dsn: str, tmp_path: Path
) -> None:
    """The ambiguous case, made deterministic: the client's deadline expires while the commit
    waits; the commit then lands (unacknowledged). After kill -9 and a restart the batch is
    whole, and the client's retry is REPLAYED with the committed timestamp, not applied twice."""
    async with running_node(dsn, tmp_path, "first") as node, connected(node) as client:
        await set_up_accounts(client)
        async with JournalBlocker(dsn) as blocker:
            request = pb.PostTransactionsRequest(transactions=MID_COMMIT_BATCH)

            async def post_with_short_deadline() -> pb.PostTransactionsResponse:
                return await client.stub.PostTransactions(request, timeout=1.0)

            post = asyncio.create_task(post_with_short_deadline())
            await blocker.wait_until_a_commit_waits()
            with pytest.raises(grpc.aio.AioRpcError) as gave_up:
                await asyncio.wait_for(post, timeout=10)
            assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await blocker.release()
            await _wait_present(dsn, MID_COMMIT_IDS)
        await node.kill()
        port = node.port

    record = Record()
    record.register(MID_COMMIT_BATCH)
    record.unanswered.update(MID_COMMIT_IDS)
    async with running_node(dsn, tmp_path, "restarted", port=port) as node:
        present = await check_all_or_nothing(dsn, record)
        assert present == set(MID_COMMIT_IDS)
        async with connected(node) as client:
            outcome = await check_retries(client, dsn, record, present)
    assert set(outcome.values()) == {"RESULT_CODE_REPLAYED"}
    assert await audit_problems(dsn) == []


async def _wait_present(dsn: str, ids: Sequence[str], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        transactions, _ = await recorded_in_database(dsn, ids)
        if len(transactions) == len(ids):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the released commit did not land")


async def test_sigterm_drains_then_replays_return_the_original_result(
    pg: EmbeddedPostgres, dsn: str, tmp_path: Path
) -> None:
    """SIGTERM while clients post: every accepted item is answered with a real result (no
    UNAVAILABLE), the node exits 0. After a restart replays are REPLAYED with the original
    timestamp_ns, and a changed retry is IDEMPOTENCY_CONFLICT naming the changed field."""
    record = Record()
    node = await spawn_node(dsn, tmp_path, "first")
    try:
        await wait_health(node, SERVING)
        async with connected(node) as client:
            await set_up_accounts(client)
            known = [
                transfer("known-1", deposit(0), deposit(1), 500, metadata={"ref": "x"}),
                transfer("known-2", deposit(2), BANK, 70, pending=True, timeout_seconds=3600),
                transfer("known-3", deposit(3), loan(3), 9, value_date="2025-12-31"),
            ]
            record.register(known)
            record.answer(known, await client.post(*known))
        stop = asyncio.Event()
        load = asyncio.create_task(run_load(node, record, stop))
        try:
            await wait_for_acknowledgements(record, 100, duration_s=0.5, timeout_s=20)
            exit_code = await node.terminate(timeout_s=30)
        finally:
            stop.set()
            await asyncio.wait_for(load, timeout=60)
        await node.wait_stdout_closed()
        assert exit_code == 0, node.describe()
        assert node.stdout_lines[-1] == STOPPED_LINE, node.describe()
        port = node.port
    finally:
        await node.close()
    assert record.other == {}, list(record.other.items())[:10]

    async with running_node(dsn, tmp_path, "restarted", port=port) as node:
        present = await check_all_or_nothing(dsn, record)
        async with connected(node) as client:
            await check_acknowledged_readable(client, record)
            await check_retries(client, dsn, record, present)
            await check_conflicts(client, record)
    assert await audit_problems(dsn) == []


async def check_conflicts(client: Client, record: Record) -> None:
    single, hold, dated = (record.sent[i] for i in ("known-1", "known-2", "known-3"))
    changes: list[tuple[pb.Transaction, str]] = []

    def changed(original: pb.Transaction, field_name: str, **values: object) -> None:
        copy = pb.Transaction()
        copy.CopyFrom(original)
        for key, value in values.items():
            if key == "metadata":
                copy.metadata.clear()
                copy.metadata.update(value)
            elif key == "amount":
                copy.legs[0].amount = copy.legs[1].amount = value
            else:
                setattr(copy, key, value)
        changes.append((copy, field_name))

    changed(single, "legs", amount=501)
    changed(single, "code", code=2)
    changed(single, "metadata", metadata={"ref": "y"})
    changed(single, "value_date", value_date="2025-01-01")
    changed(single, "kind", pending=True)
    changed(hold, "timeout_seconds", timeout_seconds=60)
    changed(dated, "value_date", value_date="")
    for transaction, field_name in changes:
        (result,) = await client.post(transaction)
        assert name(result.code) == "RESULT_CODE_IDEMPOTENCY_CONFLICT", (field_name, result)
        assert field_name in result.message, (field_name, result.message)
    for original in (single, hold, dated):
        found = await client.transaction(original.id)
        assert found.timestamp_ns == record.acknowledged[original.id]
        assert list(found.transaction.legs) == list(original.legs)


async def test_writer_commits_with_synchronous_commit_on_whatever_the_database_default(
    dsn: str,
) -> None:
    """Acknowledged means durable: the writer must not inherit an asynchronous commit setting
    from the database it is pointed at (a managed PostgreSQL may be tuned that way)."""
    connection = await asyncpg.connect(dsn, timeout=30.0)
    try:
        database = await connection.fetchval("SELECT current_database()")
        await connection.execute(f'ALTER DATABASE "{database}" SET synchronous_commit = off')
    finally:
        await connection.close(timeout=5.0)
    handle = await start_node(dsn)
    try:
        writer = handle.node.writer
        assert writer is not None
        # The node is idle, so its commit connection is free for one query.
        setting = await writer.connection.fetchval("SHOW synchronous_commit", timeout=10.0)
    finally:
        await handle.stop()
    assert setting == "on"
