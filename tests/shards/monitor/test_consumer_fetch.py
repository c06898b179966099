"""The monitor's consumer and the event loop it shares with GetFlowProfile and /metrics: a fetch
that finds nothing in time is no failure, and the loop gets a turn between blocks.

nats-py's pull fetch raises a bare asyncio.TimeoutError (not nats.errors.TimeoutError) when its
first, no-wait request's answer is handled after the fetch's whole timeout, which a loop held
by other work makes happen (the lending bench, bench/lending, on a loaded 2-core machine: the
idle monitor reloaded its checkpoint and reconnected twice in a minute). Real broker, no
relay: the journal stream is made (and, for the second test, filled) by the test."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js.api import StorageType, StreamConfig

from core.flows import rules
from shards.monitor.books import Books
from shards.monitor.consumer import FETCH_BATCH, Consumer, MonitorConfig
from tally.v1 import ledger_pb2 as pb
from tests.support.broker import MONITOR_NAME, Broker, running_broker

STALL_S = 0.3  # a few of these are longer than the consumer's fetch timeout (1 s)
RUN_S = 10.0
RULES = "[default]\ncoverage_below = 1.0\n"


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with running_broker(tmp_path) as running:
        client = await running.connect()
        try:
            await client.jetstream().add_stream(
                StreamConfig(
                    name="TALLY_JOURNAL", subjects=["tally.journal.>"], storage=StorageType.FILE
                )
            )
        finally:
            await client.close()
        yield running


async def test_a_fetch_outlasted_by_a_busy_loop_does_not_restart_the_consumer(
    broker: Broker, tmp_path: Path
) -> None:
    config = MonitorConfig(
        nats_url=broker.server.url, nats_tls=broker.tls(MONITOR_NAME),
        checkpoint_path=tmp_path / "checkpoint.json",
    )  # fmt: skip
    consumer = Consumer(config, rules.parse_rules(RULES))
    stopping = asyncio.Event()
    running = asyncio.create_task(consumer.run(stopping))
    try:
        await asyncio.sleep(1.0)  # connected and fetching
        # Every turn of the loop held a while, as by a scrape or a profile made on it: a fetch
        # takes a few turns, so its answer is handled after its timeout.
        deadline = time.monotonic() + RUN_S
        while time.monotonic() < deadline:
            time.sleep(STALL_S)  # noqa: ASYNC251 (holding the loop is the point)
            await asyncio.sleep(0)
    finally:
        stopping.set()
        await asyncio.wait_for(running, timeout=30)
    assert consumer.restarts == 0, consumer.last_error


async def test_the_loop_gets_a_turn_between_the_blocks_of_one_fetch(
    broker: Broker, tmp_path: Path
) -> None:
    block_count = 2 * FETCH_BATCH
    client = await broker.connect()
    try:
        js = client.jetstream()
        for sequence in range(1, block_count + 1):
            block = pb.JournalBlock(shard_id=0, sequence=sequence)
            await js.publish("tally.journal.0", block.SerializeToString(), stream="TALLY_JOURNAL")
    finally:
        await client.close()
    turns = 0
    seen: list[int] = []  # the loop's turn count when each block was applied

    def applied(books: Books) -> None:
        seen.append(turns)

    config = MonitorConfig(
        nats_url=broker.server.url, nats_tls=broker.tls(MONITOR_NAME),
        checkpoint_path=tmp_path / "checkpoint.json",
    )  # fmt: skip
    consumer = Consumer(config, rules.parse_rules(RULES), on_applied=applied)
    stopping = asyncio.Event()
    running = asyncio.create_task(consumer.run(stopping))
    try:
        while len(seen) < block_count:
            turns += 1  # what another task (a profile, a scrape) would do in its turn
            await asyncio.sleep(0)
            assert not running.done()
    finally:
        stopping.set()
        await asyncio.wait_for(running, timeout=30)
    assert consumer.books.positions == {0: block_count}
    # Without a turn between blocks, a fetch's blocks would all be applied in one turn.
    assert all(later > earlier for earlier, later in itertools.pairwise(seen)), seen
