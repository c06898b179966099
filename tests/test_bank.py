"""The bank test: money is neither created nor destroyed, whatever the clients and crashes do.

A 4-shard cluster of real processes (four `tally node`, one `tally gateway`). The bank of the
fault campaign (bench/chaos/bank.py): 500 customers (250 in USD, 250 in EUR), each with a
deposit and a savings account (debits_must_not_exceed_credits) funded from @cash: 1,000
customer accounts spread over the shards by their partition key. 50 concurrent bank clients
then run for LOAD_S seconds (and on until 1,000 transfers were sent): transfers (mostly across
shards, some above the balance: refused), holds posted in full, in part, voided or left to
expire, linked groups and reversals. In the middle, one node and then the gateway are killed
with SIGKILL and restarted. Every client retries with the same ids and content on any error
until it has a definitive answer.

Afterwards the campaign's checker (bench/chaos/checker.py) judges the whole history: every
acknowledged transaction recorded exactly once with its content, nothing refused recorded,
retries REPLAYED, every transfer whole or absent on every shard, every hold's fate the one its
client was told, every balance what the answers say, totals exact per currency, clearing net
zero, every shard's books balanced, nothing overdrawn, the audit clean. (`make chaos` runs the
same clients and checker through every kind of fault; tests/test_chaos.py a short campaign.)
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from bench.chaos import checker
from bench.chaos.bank import Bank, BankClient, Gateways, History, Workload, code_name, open_bank
from shards.local.embedded_pg import EmbeddedPostgres
from tests.support import security
from tests.support.cluster_processes import (
    ProcessCluster,
    process_cluster,
    wait_gateway_reaches_every_shard,
    wait_nothing_pending,
)
from tests.support.helpers import Client

CUSTOMER_COUNT = 500
CLIENT_COUNT = 50
LOAD_S = 10.0
# The load goes on past LOAD_S until this many transfers were sent (so the checks below always
# have enough to judge, on a slow machine too), for at most LOAD_MAX_S.
TRANSFER_COUNT_MIN = 1_000
LOAD_MAX_S = 60.0
NODE_KILL_AT_S = 3.0
GATEWAY_KILL_AT_S = 6.5
KILLED_SHARD = 1
DEADLINE_S = 5
# After the load stops, every client must have its definitive answers within this.
SETTLE_TIMEOUT_S = 40.0
SEED = 7
# Transfers and holds mostly, linked groups too (reversals: tests/test_chaos.py).
WORKLOAD = Workload(operations=(("transfer", 70), ("hold", 20), ("linked", 10)))
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


async def chaos(cluster: ProcessCluster, started: float, log: list[str]) -> None:
    """kill -9 a node (restarted at once), later the gateway (likewise)."""
    await asyncio.sleep(max(0.0, started + NODE_KILL_AT_S - time.monotonic()))
    await cluster.kill_node(KILLED_SHARD)
    log.append(f"node {KILLED_SHARD} killed at {time.monotonic() - started:.1f}s")
    await cluster.start_node(KILLED_SHARD)
    log.append(f"node {KILLED_SHARD} back at {time.monotonic() - started:.1f}s")
    await asyncio.sleep(max(0.0, started + GATEWAY_KILL_AT_S - time.monotonic()))
    await cluster.kill_gateway()
    log.append(f"gateway killed at {time.monotonic() - started:.1f}s")
    await cluster.start_gateway({"TALLY_PREPARE_DEADLINE_S": str(DEADLINE_S)})
    log.append(f"gateway back at {time.monotonic() - started:.1f}s")


async def enough_transfers_sent(history: History, started: float) -> None:
    """Until TRANSFER_COUNT_MIN transfers were sent, or LOAD_MAX_S since the start."""
    while len(history.of_kind("transfer")) < TRANSFER_COUNT_MIN:
        if time.monotonic() - started >= LOAD_MAX_S:
            return
        await asyncio.sleep(0.2)


async def run_the_load_through_chaos(
    cluster: ProcessCluster, gateways: Gateways, history: History, events: list[str]
) -> None:
    """CLIENT_COUNT bank clients for LOAD_S seconds while chaos kills processes (and on until
    TRANSFER_COUNT_MIN transfers were sent, within LOAD_MAX_S), then until every client has its
    answers (or SETTLE_TIMEOUT_S passes)."""
    stop = asyncio.Event()
    give_up_at = [time.monotonic() + LOAD_MAX_S + SETTLE_TIMEOUT_S]
    clients = [
        BankClient(n, SEED, gateways, history, cluster.shard_of, WORKLOAD)
        for n in range(CLIENT_COUNT)
    ]
    started = time.monotonic()
    tasks = [asyncio.create_task(c.run(stop, lambda: give_up_at[0])) for c in clients]
    chaos_task = asyncio.create_task(chaos(cluster, started, events))
    try:
        await asyncio.sleep(LOAD_S)
        await enough_transfers_sent(history, started)
        stop.set()
        give_up_at[0] = time.monotonic() + SETTLE_TIMEOUT_S
        await asyncio.wait_for(chaos_task, timeout=30)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=SETTLE_TIMEOUT_S + 15)
    finally:
        stop.set()
        for task in [*tasks, chaos_task]:
            task.cancel()
        await asyncio.gather(*tasks, chaos_task, return_exceptions=True)


def check_every_item_decided_and_counted(
    cluster: ProcessCluster, history: History, events: list[str]
) -> None:
    """Every item has a definitive answer, of the expected codes, and the run did what it is
    for: enough transfers, across shards, refused, retried through crashes (printed summary)."""
    undecided = [i.transaction_id for i in history.items.values() if i.unknown]
    assert undecided == [], (undecided[:10], events, cluster.describe())
    codes = Counter(code_name(i.result.code) for i in history.items.values() if i.result)
    assert set(codes) <= {
        "CREATED", "REPLAYED", "INSUFFICIENT_FUNDS", "PENDING_EXPIRED", "LINKED_ITEM_FAILED",
    }, codes  # fmt: skip
    transfers = history.of_kind("transfer")
    cross = sum(i.cross_shard for i in transfers)
    retried = sum(i.attempt_count > 1 for i in history.items.values())
    cross_holds = sum(i.cross_shard and i.applied for i in history.of_kind("hold"))
    errors = Counter(e for i in history.items.values() for e in i.errors)
    summary = (
        f"{len(transfers)} transfers ({cross} cross-shard); all items {dict(codes)}, "
        f"{retried} retried after {dict(errors)}; {cross_holds} holds across shards; {events}"
    )
    print(summary)
    assert len(transfers) >= TRANSFER_COUNT_MIN, summary
    assert sum(i.applied for i in transfers) >= len(transfers) // 2, summary
    assert codes["INSUFFICIENT_FUNDS"] >= 1, summary
    assert cross >= len(transfers) // 2, summary
    assert retried >= 1, f"no client saw the crashes: {summary}"
    assert cross_holds >= 50, summary
    for kind in ("post", "post_part", "void", "linked"):
        assert any(i.applied for i in history.of_kind(kind)), (kind, summary)


async def test_money_is_conserved_under_concurrent_transfers_and_crashes(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    gateway_environment = {"TALLY_PREPARE_DEADLINE_S": str(DEADLINE_S)}
    async with process_cluster(pg, tmp_path, gateway_environment=gateway_environment) as cluster:
        history = History(Bank(customer_count=CUSTOMER_COUNT))
        events: list[str] = []
        async with security.channel(cluster.target, CHANNEL_OPTIONS) as channel:
            gateways = Gateways.of([channel])
            await open_bank(gateways.stubs[0], history)
            await run_the_load_through_chaos(cluster, gateways, history, events)
            check_every_item_decided_and_counted(cluster, history, events)

            # Holds expire and pieces whose resolve was lost are settled by their deadline.
            await wait_nothing_pending(cluster, timeout_s=DEADLINE_S + 10)
            await wait_gateway_reaches_every_shard(Client(channel), "@cash/USD")
            books = checker.Books(cluster.shard_dsns, cluster.shard_of, gateways)
            verdict = await checker.check(books, history, SEED)
        assert verdict.ok, verdict.summary()
        assert verdict.checked["items"] == len(history.items) > TRANSFER_COUNT_MIN
        assert verdict.checked["audited shards"] == len(cluster.shard_dsns)
