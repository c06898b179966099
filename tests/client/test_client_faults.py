"""tally.client's retry rules against real failures: a deadline that expires while the commit
lands, and a node and a gateway killed (kill -9) mid-call under `tally up --shards 2`. Never
applied twice, never a refusal retried, an unknown outcome resolved by the retry."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from tally.client import (
    Account,
    AccountState,
    AsyncClient,
    Credentials,
    Outcome,
    Result,
    RetryOptions,
    Side,
    TransactionState,
    new_id,
    transfer,
)
from tests.support import security
from tests.support.cluster import customers_on_distinct_shards
from tests.support.helpers import NodeHandle, audit_problems
from tests.support.local_up import (
    LocalUp,
    child_of,
    kill_9,
    running_up,
    scratch_directory,
    wait_line,
    wait_serving,
)
from tests.support.processes import JournalBlocker

SHARDS = 2


async def test_a_deadline_that_expires_while_the_commit_lands_is_resolved_by_the_retry(
    node: NodeHandle,
) -> None:
    """The first attempt's deadline passes while its commit waits (the next journal block's key
    held by another transaction); the commit then lands. The retry, with the same id, answers
    replayed: applied once, and the result says so."""
    retry = RetryOptions(timeout_s=30.0, attempt_timeout_s=0.5)
    credentials = Credentials.from_directory(security.root())
    async with AsyncClient(node.target, credentials, retry=retry) as client:
        accounts = [Account("@bank", "USD"), Account("c1/dep", "USD")]
        assert {r.code for r in await client.create_accounts(accounts)} == {"created"}
        paid = transfer("c1/pay-1", "@bank", "c1/dep", 100, "USD")
        async with JournalBlocker(node.dsn) as blocker:
            posting = asyncio.create_task(client.post(paid))
            await blocker.wait_until_a_commit_waits()
            await asyncio.sleep(1.5)  # three attempts' deadlines pass, the commit still waits
            assert not posting.done()
            await blocker.release()
            result = await posting
        assert (result.outcome, result.code) == (Outcome.APPLIED, "replayed"), result
        assert result.attempts >= 2
        state = await client.get_account("c1/dep")
        assert state is not None and state.balance.credits_posted == 100
    assert await audit_problems(node.dsn) == []


async def _post_until(
    client: AsyncClient, customers: list[str], stop: asyncio.Event, results: list[Result]
) -> None:
    """Post transfers one at a time (same-shard and cross-shard, alternating) until stopped."""
    for n in itertools.count():
        if stop.is_set():
            return
        a, b = customers[n % 2], customers[(n + 1) % 2]
        target = f"{b}/dep" if n % 3 == 0 else "@bank"
        done = await client.post(transfer(new_id(a), f"{a}/dep", target, 1, "USD"))
        results.append(done)


async def _kill_and_wait(up: LocalUp, name: str, *words: str) -> None:
    seen = len(up.lines)
    await kill_9(child_of(up, *words))
    await wait_line(up, f"tally: {name} restarted (pid ", after=seen)


@pytest.mark.timeout(300)
async def test_a_node_and_a_gateway_killed_mid_call_are_retried_to_one_application(
    tmp_path: Path,
) -> None:
    with scratch_directory() as scratch:
        arguments = ["--shards", str(SHARDS)]
        async with running_up(tmp_path / "up.log", arguments, data_dir=scratch / "data") as up:
            await wait_serving(up)
            await _kill_mid_calls(up)


async def _kill_mid_calls(up: LocalUp) -> None:
    customers = customers_on_distinct_shards(SHARDS)
    credentials = Credentials.from_directory(up.credentials)
    retry = RetryOptions(timeout_s=60.0, attempt_timeout_s=3.0)
    async with AsyncClient(up.target, credentials, retry=retry) as client:
        accounts = [Account("@bank", "USD")] + [Account(f"{c}/dep", "USD") for c in customers]
        assert {r.outcome for r in await client.create_accounts(accounts)} == {Outcome.APPLIED}
        funding = [transfer(new_id(c), "@bank", f"{c}/dep", 10_000, "USD") for c in customers]
        assert {r.outcome for r in await client.post_many(funding)} == {Outcome.APPLIED}
        stop = asyncio.Event()
        results: list[Result] = []
        posters = [
            asyncio.create_task(_post_until(client, customers, stop, results)) for _ in range(8)
        ]
        try:
            for name, words in [("node-0", ("node", "--shard-id", "0")), ("gateway", ("gateway",))]:
                await asyncio.sleep(2.0)
                await _kill_and_wait(up, name, *words)
            started = len(results)
            deadline = time.monotonic() + 60
            while len(results) < started + 50:  # the cluster serves again, through the client
                assert time.monotonic() < deadline, results[-5:]
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.gather(*posters)
        await _applied_once(client, customers, results)


async def _applied_once(client: AsyncClient, customers: list[str], results: list[Result]) -> None:
    """Every post ended applied (none refused, none left unknown), the kills made retries, and
    each id is recorded once: the balances moved by exactly what was acknowledged."""
    assert {r.outcome for r in results} == {Outcome.APPLIED}, [
        r for r in results if r.outcome is not Outcome.APPLIED
    ][:5]
    assert client.stats.retries > 0
    ids = [r.id for r in results]
    assert len(set(ids)) == len(ids)
    found = await client.get_transactions(ids)
    assert all(found[i] is not None for i in ids)
    states = await client.get_accounts([f"{c}/dep" for c in customers])
    total = sum(s.balance.credits_posted - s.balance.debits_posted for s in _present(states))
    to_bank = [r for r in results if _credited(found[r.id]) == "@bank"]
    assert total == 10_000 * len(customers) - len(to_bank)


def _present(states: dict[str, AccountState | None]) -> list[AccountState]:
    assert all(state is not None for state in states.values()), states
    return [state for state in states.values() if state is not None]


def _credited(record: TransactionState | None) -> str:
    assert record is not None
    return next(leg.account_id for leg in record.transaction.legs if leg.side is Side.CREDIT)
