"""tally.client against a real 2-shard cluster (nodes and a gateway in this process, TLS, on the
session's PostgreSQL): batching of concurrent single calls, final refusals never retried,
replays, linked groups, reads and the blocking client."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import AsyncIterator

import pytest

from shards.local.embedded_pg import EmbeddedPostgres
from tally.client import (
    Account,
    AsyncClient,
    CallError,
    Client,
    Credentials,
    Outcome,
    capture,
    hold,
    new_id,
    reversal,
    transfer,
    void,
)
from tests.support import security
from tests.support.helpers import InProcessCluster, in_process_cluster

_numbers = itertools.count(1)
CUSTOMERS = [f"cust-{n}" for n in range(8)]


def credentials() -> Credentials:
    return Credentials.from_directory(security.root())


@pytest.fixture
async def cluster(pg: EmbeddedPostgres) -> AsyncIterator[InProcessCluster]:
    prefix = f"cl{os.getpid()}_{next(_numbers)}"
    async with in_process_cluster(pg, prefix, 2, slot_map_poll_interval_s=0.2) as c:
        yield c


@pytest.fixture
async def tally(cluster: InProcessCluster) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(cluster.target, credentials()) as client:
        accounts = [Account("@bank", "USD")] + [
            Account(f"{c}/dep", "USD", debits_must_not_exceed_credits=True) for c in CUSTOMERS
        ]
        results = await client.create_accounts(accounts)
        assert [r.outcome for r in results] == [Outcome.APPLIED] * len(accounts), results
        yield client


async def balance(client: AsyncClient, account_id: str) -> int:
    state = await client.get_account(account_id)
    assert state is not None
    return state.balance.credits_posted - state.balance.debits_posted


async def test_concurrent_single_posts_share_rpcs_and_each_applies_once(
    tally: AsyncClient,
) -> None:
    before = tally.stats.rpcs.get("PostTransactions", 0)
    posts = [
        transfer(new_id(c, "fund"), "@bank", f"{c}/dep", n + 1, "USD")
        for n in range(50)
        for c in CUSTOMERS
    ]
    results = await asyncio.gather(*(tally.post(t) for t in posts))
    assert {r.outcome for r in results} == {Outcome.APPLIED}
    assert {r.code for r in results} == {"created"}
    rpcs = tally.stats.rpcs["PostTransactions"] - before
    # 400 calls from 400 tasks: at most in_flight_max go alone, the rest coalesce.
    assert rpcs < len(posts) / 4, rpcs
    for customer in CUSTOMERS:
        assert await balance(tally, f"{customer}/dep") == sum(range(1, 51))
    # The same transactions again (a product replaying its outbox): replayed, not applied.
    again = await tally.post_many(posts[:20])
    assert [r.code for r in again] == ["replayed"] * 20
    assert [r.timestamp_ns for r in again] == [r.timestamp_ns for r in results[:20]]
    assert await balance(tally, f"{CUSTOMERS[0]}/dep") == sum(range(1, 51))


async def test_concurrent_calls_keep_their_order_and_never_share_a_batch_with_their_id(
    tally: AsyncClient,
) -> None:
    """A hold and its capture called together (as tasks, in that order) coalesce without the
    capture overtaking the hold; the same transaction called twice at once is created once and
    replayed once, never refused as a duplicate in one batch."""
    customer = CUSTOMERS[6]
    await tally.post(transfer(new_id(customer), "@bank", f"{customer}/dep", 1000, "USD"))
    calls = []
    for n in range(20):
        held = hold(new_id(customer, f"h{n}"), f"{customer}/dep", "@bank", 10, "USD")
        calls += [tally.post(held), tally.post(capture(new_id(customer, f"c{n}"), held.id))]
    twice = transfer(new_id(customer), f"{customer}/dep", "@bank", 7, "USD")
    calls += [tally.post(twice), tally.post(twice)]
    results = await asyncio.gather(*calls)
    assert [r.code for r in results[:40]] == ["created"] * 40
    assert sorted(r.code for r in results[40:]) == ["created", "replayed"]
    assert await balance(tally, f"{customer}/dep") == 1000 - 20 * 10 - 7


async def test_accounts_close_through_the_client(tally: AsyncClient) -> None:
    customer = CUSTOMERS[7]
    await tally.post(transfer(new_id(customer), "@bank", f"{customer}/dep", 5, "USD"))
    (refused,) = await tally.close_accounts([f"{customer}/dep"])
    assert (refused.outcome, refused.code) == (Outcome.REFUSED, "account_has_balance")
    await tally.post(transfer(new_id(customer), f"{customer}/dep", "@bank", 5, "USD"))
    assert [r.code for r in await tally.close_accounts([f"{customer}/dep"])] == ["created"]
    assert [r.code for r in await tally.close_accounts([f"{customer}/dep"])] == ["replayed"]
    state = await tally.get_account(f"{customer}/dep")
    assert state is not None and state.closed


async def test_a_refusal_is_final_and_never_retried(tally: AsyncClient) -> None:
    customer = CUSTOMERS[1]
    rpcs = tally.stats.rpcs.get("PostTransactions", 0)
    retries = tally.stats.retries
    result = await tally.post(transfer(new_id(customer), f"{customer}/dep", "@bank", 5, "USD"))
    assert result.outcome is Outcome.REFUSED
    assert result.code == "insufficient_funds"
    assert result.attempts == 1
    assert tally.stats.rpcs["PostTransactions"] == rpcs + 1
    assert tally.stats.retries == retries
    # The same id with other content, after it was applied: a conflict, also final.
    paid = transfer(new_id(customer), "@bank", f"{customer}/dep", 10, "USD")
    assert (await tally.post(paid)).code == "created"
    other = transfer(paid.id, "@bank", f"{customer}/dep", 11, "USD")
    conflict = await tally.post(other)
    assert (conflict.outcome, conflict.code) == (Outcome.REFUSED, "idempotency_conflict")
    assert await balance(tally, f"{customer}/dep") == 10


async def test_a_linked_group_is_applied_or_refused_whole(tally: AsyncClient) -> None:
    customer = CUSTOMERS[2]
    funded = transfer(new_id(customer), "@bank", f"{customer}/dep", 100, "USD")
    fee = transfer(new_id(customer, "fee"), f"{customer}/dep", "@bank", 150, "USD")
    results = await tally.post_linked([funded, fee])
    assert [(r.outcome, r.code) for r in results] == [
        (Outcome.REFUSED, "linked_item_failed"),
        (Outcome.REFUSED, "insufficient_funds"),
    ]
    assert await balance(tally, f"{customer}/dep") == 0
    fee = transfer(new_id(customer, "fee"), f"{customer}/dep", "@bank", 40, "USD")
    results = await tally.post_linked([funded, fee])
    assert [r.code for r in results] == ["created", "created"]
    assert await balance(tally, f"{customer}/dep") == 60


async def test_holds_captures_voids_reversals_and_reads(tally: AsyncClient) -> None:
    a, b = CUSTOMERS[3], CUSTOMERS[4]
    await tally.post(transfer(new_id(a), "@bank", f"{a}/dep", 500, "USD"))
    held = hold(new_id(a, "hold"), f"{a}/dep", f"{b}/dep", 200, "USD", timeout_seconds=600)
    other = hold(new_id(a, "hold"), f"{a}/dep", f"{b}/dep", 100, "USD")
    assert [r.code for r in await tally.post_many([held, other])] == ["created", "created"]
    state = await tally.get_account(f"{a}/dep")
    assert state is not None and state.balance.debits_pending == 300
    assert state.balance.available == 200
    # Captured in part through a cross-shard hold, the other voided, then a reversal.
    captured = capture(new_id(a, "capture"), held.id)
    assert (await tally.post(captured)).outcome is Outcome.APPLIED
    assert (await tally.post(void(new_id(a, "void"), other.id))).outcome is Outcome.APPLIED
    refund = reversal(new_id(a, "refund"), captured.id)
    assert (await tally.post(refund)).outcome is Outcome.APPLIED
    record = await tally.get_transaction(held.id)
    assert record is not None and record.status == "pending_posted"
    assert record.resolved_by_id == captured.id
    assert await tally.get_transaction(f"{a}/never-posted") is None
    assert await balance(tally, f"{a}/dep") == 500
    assert await balance(tally, f"{b}/dep") == 0
    postings = [p async for p in tally.postings(f"{a}/dep", page_size=2)]
    # Funded, two holds, the capture, the void, the refund: six postings, read in pages of two.
    assert len(postings) == 6
    assert postings[3].transaction_id == captured.id
    assert (
        postings[-1].balance_after.credits_posted - postings[-1].balance_after.debits_posted == 500
    )
    assert await tally.get_account(f"{a}/nothing") is None
    with pytest.raises(CallError) as raised:
        await tally.get_account("not an id")
    assert raised.value.code == "invalid_id"


async def test_the_blocking_client_batches_calls_from_threads(cluster: InProcessCluster) -> None:
    # The cluster serves on this test's event loop: the blocking calls run in threads.
    await asyncio.to_thread(_blocking_scenario, cluster.target)


def _blocking_scenario(target: str) -> None:
    customer = CUSTOMERS[5]
    with Client(target, credentials()) as client:
        assert client.create_account(Account("@bank", "USD")).outcome is Outcome.APPLIED
        assert client.create_account(Account(f"{customer}/dep", "USD")).applied
        results: list[str] = []

        def post_fifty() -> None:
            for _ in range(50):
                done = client.post(transfer(new_id(customer), "@bank", f"{customer}/dep", 1, "USD"))
                results.append(done.code)

        threads = [threading.Thread(target=post_fifty) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == ["created"] * 400
        assert client.stats.rpcs["PostTransactions"] < 400
        state = client.get_account(f"{customer}/dep")
        assert state is not None and state.balance.credits_posted == 400
        assert len(client.postings(f"{customer}/dep")) == 400
