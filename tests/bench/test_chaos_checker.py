"""The campaign's history checker (bench/chaos/checker.py) on a real cluster (two nodes and a
gateway in this process, real gRPC and PostgreSQL): clean on the history of a quiet run, and
each kind of anomaly it names found once the books and the history disagree."""

from __future__ import annotations

import asyncio
import os
import time

from bench.chaos import checker
from bench.chaos.bank import (
    Bank,
    BankClient,
    Gateways,
    History,
    Item,
    Workload,
    open_bank,
    send_until_definitive,
    transfer,
)
from core.slots import SlotMap
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.helpers import in_process_cluster

SHARD_COUNT = 2
LOAD_S = 2.0
SETTLE_TIMEOUT_S = 30.0
SEED = 5
# No reversals: a cross-shard one reads back without its reverses_id on main (a finding of the
# campaign, which tests/bench/test_chaos.py keeps).
WORKLOAD = Workload(operations=(("transfer", 50), ("hold", 30), ("linked", 20)))


async def run_clients(gateways: Gateways, history: History, slot_map: SlotMap) -> None:
    stop = asyncio.Event()
    give_up_at = time.monotonic() + 60
    clients = [
        BankClient(n, SEED, gateways, history, slot_map.shard_of_account, WORKLOAD)
        for n in range(4)
    ]
    async with asyncio.TaskGroup() as group:
        for client in clients:
            group.create_task(client.run(stop, lambda: give_up_at))
        await asyncio.sleep(LOAD_S)
        stop.set()


async def wait_nothing_held(dsns: list[str]) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        rows = await checker.fetch_each_shard(dsns, "SELECT count(*) AS n FROM holds")
        if all(r[0]["n"] == 0 for r in rows):
            return
        await asyncio.sleep(0.2)
    raise AssertionError("holds left after their deadlines")


async def send_overdraft(gateways: Gateways, history: History, slot_map: SlotMap) -> None:
    """One transfer sure to be refused, so that the history holds a refusal whatever the random
    load drew (a refused item that the lie below turns into an acknowledgement)."""
    bank = history.bank
    debit, credit = bank.accounts_of(0)
    cross = slot_map.shard_of_account(debit) != slot_map.shard_of_account(credit)
    amount = 1000 * bank.funding * bank.customer_count
    message = transfer("cust-0/overdraft", debit, credit, amount, bank.currency_of(0))
    item = Item(message, "transfer", cross, 99)
    history.add(item)
    give_up_at = time.monotonic() + 30
    await send_until_definitive(gateways, [item], history, lambda: give_up_at)
    assert item.refused, item.result


def first(history: History, applied: bool) -> Item:
    return next(i for i in history.of_kind("transfer") if i.applied == applied and not i.errors)


async def test_the_checker_is_clean_on_a_true_history_and_finds_every_lie(
    pg: EmbeddedPostgres,
) -> None:
    slot_map = SlotMap.even(SHARD_COUNT)
    prefix = f"chk{os.getpid()}"
    async with (
        in_process_cluster(pg, prefix, SHARD_COUNT, slot_map_poll_interval_s=0.2) as cluster,
        security.channel(cluster.target) as channel,
    ):
        gateways = Gateways.of([channel])
        history = History(Bank(customer_count=20))
        await open_bank(gateways.stubs[0], history)
        await run_clients(gateways, history, slot_map)
        await send_overdraft(gateways, history, slot_map)
        await wait_nothing_held(cluster.dsns)
        books = checker.Books(cluster.dsns, slot_map.shard_of_account, gateways)
        verdict = await checker.check(books, history, SEED)
        assert verdict.ok, verdict.summary()
        assert verdict.checked["items"] == len(history.items)
        assert any(i.refused for i in history.of_kind("transfer"))

        # What a broken ledger would do, told apart from what its clients were told:
        applied, refused = first(history, True), first(history, False)
        assert applied.result is not None
        refused.result = pb.ItemResult(code=pb.RESULT_CODE_CREATED, timestamp_ns=1)
        applied.result = pb.ItemResult(code=pb.RESULT_CODE_INSUFFICIENT_FUNDS)
        changed = next(i for i in history.of_kind("transfer") if i.applied and i is not refused)
        changed.message.legs[0].amount += 1
        changed.message.legs[1].amount += 1
        unsent = [
            transfer("cust-0/phantom", "cust-0/dep", "cust-2/dep", 1, "USD"),
            transfer("cust-0/held", "cust-0/dep", "cust-2/dep", 1, "USD", pending=True),
        ]
        response = await gateways.stubs[0].PostTransactions(
            pb.PostTransactionsRequest(transactions=unsent), timeout=30
        )
        assert [r.code for r in response.results] == [pb.RESULT_CODE_CREATED] * 2
        found = (await checker.check(books, history, SEED)).by_kind()
    assert {a.transaction_id for a in found["phantom"]} == {"cust-0/phantom", "cust-0/held"}
    assert [a.transaction_id for a in found["refused_present"]] == [applied.transaction_id]
    assert [a.transaction_id for a in found["ack_missing"]] == [refused.transaction_id]
    assert changed.transaction_id in {a.transaction_id for a in found["ack_content"]}
    assert {a.transaction_id for a in found["held_at_end"]} >= {"cust-0/held"}
    assert found["balance"] and found["trial_balance"]
