"""The relay (shards/relay): a node's change stream into a real NATS JetStream broker, each block
once and in order, resuming from what the broker stored; across kill -9 of the relay process
or of the node under load, and with two relays racing.

Each test compares the broker's messages, byte for byte, with the node's own stream of its
journal: equal means gap-free, duplicate-free and in order (tests/support/streams.py checks the
sequences and the hash chain too)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from shards.local.embedded_pg import EmbeddedPostgres
from shards.relay.relay import Relay, RelayConfig
from shards.rpc import stream as messages
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.broker import Broker, running_broker
from tests.support.helpers import Client, NodeHandle, account, start_node, transfer
from tests.support.processes import SERVING, NodeProcess, spawn_node, wait_health
from tests.support.streams import check_contiguous, collect

STREAM = "TALLY_JOURNAL"
WAIT_S = 30.0


@pytest.fixture
async def node(pg: EmbeddedPostgres) -> AsyncIterator[NodeHandle]:
    database = f"relay_{os.getpid()}_{time.time_ns()}"
    await pg.create_database_async(database)
    handle = await start_node(pg.dsn(database))
    try:
        async with security.channel(handle.target) as channel:
            created = await Client(channel).create(account("@bank"), account("c1/dep"))
            assert created == [pb.RESULT_CODE_CREATED] * 2
        yield handle
    finally:
        await handle.stop()


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with running_broker(tmp_path) as running:
        yield running


def _config(node: NodeHandle | NodeProcess, broker: Broker) -> RelayConfig:
    return RelayConfig(
        target=node.target, security=security.admin(), nats_url=broker.server.url,
        nats_tls=broker.tls(), stream_name=STREAM,
    )  # fmt: skip


async def _post(node: NodeHandle, first: int, count: int) -> None:
    async with security.channel(node.target) as channel:
        client = Client(channel)
        for n in range(first, first + count):
            assert await client.codes(transfer(f"c1/t-{n}", "@bank", "c1/dep", 1 + n % 7)) == [
                pb.RESULT_CODE_CREATED
            ]


async def _journal(node: NodeHandle | NodeProcess) -> list[pb.JournalBlock]:
    """The node's journal as the relay publishes it: the lines the writer hashed, checked and
    made into records (what they lose against the records the node sends is held to its two
    fields by tests/shards/node/test_stream_lines.py)."""
    async with security.channel(node.target) as channel:
        lines = await collect(channel, encoding=pb.JOURNAL_ENCODING_LINES)
    return [messages.records_of_lines(block) for block in lines]


async def _until_relayed(node: NodeHandle | NodeProcess, broker: Broker) -> list[pb.JournalBlock]:
    """Once the broker holds as many blocks as the node's journal: the broker's blocks."""
    deadline = time.monotonic() + WAIT_S
    while True:
        journal = await _journal(node)
        with contextlib.suppress(Exception):  # the stream may not exist yet
            stored = await broker.blocks(STREAM)
            if len(stored) >= len(journal):
                return stored
        assert time.monotonic() < deadline, "the broker did not catch up with the journal"
        await asyncio.sleep(0.2)


async def _exactly_the_journal(node: NodeHandle | NodeProcess, broker: Broker) -> None:
    stored = await _until_relayed(node, broker)
    journal = await _journal(node)
    check_contiguous(stored, {})
    assert [b.SerializeToString() for b in stored] == [b.SerializeToString() for b in journal]


@contextlib.asynccontextmanager
async def _relaying(relay: Relay) -> AsyncIterator[None]:
    stopping = asyncio.Event()
    task = asyncio.create_task(relay.run(stopping))
    try:
        yield
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=WAIT_S)


async def test_each_block_once_in_order_and_a_restart_resumes_from_the_broker(
    node: NodeHandle, broker: Broker
) -> None:
    await _post(node, 0, 20)
    first = Relay(_config(node, broker))
    async with _relaying(first):
        await _exactly_the_journal(node, broker)
        await _post(node, 20, 10)  # followed as they commit
        await _exactly_the_journal(node, broker)
    assert sum(first.counters.published.values()) == len(await _journal(node))
    await _post(node, 30, 10)  # while no relay runs
    second = Relay(_config(node, broker))
    async with _relaying(second):
        await _exactly_the_journal(node, broker)
    # The second relay sent only what the broker lacked: the 10 blocks' worth posted after.
    assert 0 < sum(second.counters.published.values()) <= 10
    assert second.counters.restarts == 0


async def test_two_relays_racing_still_store_each_block_once(
    node: NodeHandle, broker: Broker
) -> None:
    """The broker refuses a message that does not follow the last one it stored on the
    shard's subject: the relay that loses a race starts over from the broker's position."""
    one, other = Relay(_config(node, broker)), Relay(_config(node, broker))
    async with _relaying(one), _relaying(other):
        await _post(node, 0, 40)
        await _exactly_the_journal(node, broker)


def _relay_command(node: NodeHandle, broker: Broker) -> list[str]:
    credentials = broker.credentials
    return [
        sys.executable, "-m", "shards.cli", "relay", "--target", node.target,
        "--nats-url", broker.server.url, "--nats-ca", str(credentials / "ca.pem"),
        "--nats-cert", str(credentials / "tally-relay.pem"),
        "--nats-key", str(credentials / "tally-relay.key"), "--stream", STREAM,
        *security.client_flags(),
    ]  # fmt: skip


async def _start_relay(
    node: NodeHandle, broker: Broker, log_path: Path
) -> asyncio.subprocess.Process:
    """A `tally relay` process, returned once it has read the broker's position (its log says
    where it resumes): from then on it is relaying."""
    seen = _resumptions(log_path)
    with log_path.open("ab") as log:
        relay = await asyncio.create_subprocess_exec(
            *_relay_command(node, broker), stdout=log, stderr=log
        )
    deadline = time.monotonic() + WAIT_S
    while _resumptions(log_path) == seen:
        assert relay.returncode is None and time.monotonic() < deadline, _text(log_path)
        await asyncio.sleep(0.05)
    return relay


def _text(log_path: Path) -> str:
    return log_path.read_text() if log_path.exists() else ""


def _resumptions(log_path: Path) -> int:
    return _text(log_path).count("relay: resuming")


async def _post_until(node: NodeHandle, enough: asyncio.Event) -> int:
    """Posts one transfer after another until told it is enough; how many it posted."""
    async with security.channel(node.target) as channel:
        client = Client(channel)
        n = 0
        while not enough.is_set():
            transfer_ = transfer(f"c1/t-{n}", "@bank", "c1/dep", 1 + n % 7)
            assert await client.codes(transfer_) == [pb.RESULT_CODE_CREATED]
            n += 1
        return n


async def test_kill_9_of_the_relay_process_under_load_loses_and_doubles_nothing(
    node: NodeHandle, broker: Broker, tmp_path: Path
) -> None:
    """The load goes on for as long as the kills take (a fixed amount of load may end before
    the relay has been killed at all on a slow machine)."""
    rng = random.Random(11)
    log_path = tmp_path / "relay.log"
    enough = asyncio.Event()
    posting = asyncio.create_task(_post_until(node, enough))
    try:
        for _ in range(3):
            relay = await _start_relay(node, broker, log_path)
            await asyncio.sleep(rng.uniform(0.1, 1.0))  # at any point of its relaying
            relay.send_signal(signal.SIGKILL)
            await relay.wait()
            assert not posting.done(), "the load stopped"
    finally:
        enough.set()
    assert await posting > 0
    relay = await _start_relay(node, broker, log_path)
    try:
        await _exactly_the_journal(node, broker)
    finally:
        relay.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(relay.wait(), timeout=WAIT_S)
    assert code == 0, _text(log_path)


async def _post_through_kills(target: str, enough: asyncio.Event) -> int:
    """Transfers one after another until told it is enough, each retried with its own id
    while its node is down (a kill may land before or after its commit: the retry then reads
    REPLAYED); how many were posted."""
    n = 0
    while not enough.is_set():
        item = transfer(f"c1/k-{n}", "@bank", "c1/dep", 1 + n % 5)
        while True:
            try:
                async with security.channel(target) as channel:
                    codes = await Client(channel).codes(item)
            except grpc.aio.AioRpcError:
                codes = []
            if codes and codes[0] in (pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED):
                break
            await asyncio.sleep(0.1)
        n += 1
    return n


async def test_kill_9_of_the_node_under_load_loses_and_doubles_nothing(
    pg: EmbeddedPostgres, broker: Broker, tmp_path: Path
) -> None:
    """The relay follows a node process that is killed (kill -9) twice under load and started
    again on its port: each time the relay's stream breaks (the followers' blocks were served
    from the dead writer's memory), the relay resumes from what the broker stored, and in the
    end the broker holds the journal, each block once and in order."""
    rng = random.Random(5)
    database = f"relay_kill_{os.getpid()}_{time.time_ns()}"
    await pg.create_database_async(database)
    dsn = pg.dsn(database)
    node = await spawn_node(dsn, tmp_path, "node-0")
    try:
        await wait_health(node, SERVING)
        async with security.channel(node.target) as channel:
            created = await Client(channel).create(account("@bank"), account("c1/dep"))
            assert created == [pb.RESULT_CODE_CREATED] * 2
        relay = Relay(_config(node, broker))
        async with _relaying(relay):
            enough = asyncio.Event()
            posting = asyncio.create_task(_post_through_kills(node.target, enough))
            try:
                for kill in range(2):
                    await asyncio.sleep(rng.uniform(0.5, 1.5))  # at any point of its load
                    await node.kill()
                    await node.close()
                    node = await spawn_node(dsn, tmp_path, f"node-{kill + 1}", port=node.port)
                    await wait_health(node, SERVING)
                await asyncio.sleep(0.5)
            finally:
                enough.set()
            assert await asyncio.wait_for(posting, timeout=60) > 0
            await _exactly_the_journal(node, broker)
        assert relay.counters.restarts >= 2, "the relay did not see the node go"
    finally:
        await node.close()
