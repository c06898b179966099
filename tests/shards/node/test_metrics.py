"""Prometheus metrics of a shard node, scraped over HTTP: a posted batch moves what it should."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.error
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest

from core.store import control as control_store
from core.store.cold.archive import archive_and_remove
from shards import control
from shards.cli.main import build_parser
from shards.local.embedded_pg import EmbeddedPostgres
from shards.node.server import Node, NodeConfig
from shards.rpc.metrics import parse_listen
from tally.v1 import ledger_pb2 as pb
from tally.v1 import shard_pb2 as spb
from tally.v1 import shard_pb2_grpc as spb_grpc
from tests.support import security
from tests.support.helpers import Client, NodeHandle, account, names, start_node, transfer
from tests.support.metrics import Samples, metrics_text_on_port, parse_samples

POST = "PostTransactions"


@pytest.fixture
async def metered(dsn: str) -> AsyncIterator[NodeHandle]:
    handle = await start_node(
        dsn,
        metrics_listen="127.0.0.1:0",
        metrics_prepared_interval_s=0.05,
        expiry_interval_ms=50,
        internal_listen="127.0.0.1:0",  # tally.v1.Shard, for the prepared piece below
    )
    try:
        yield handle
    finally:
        await handle.stop()


@pytest.fixture
async def client(metered: NodeHandle) -> AsyncIterator[Client]:
    async with security.channel(f"127.0.0.1:{metered.port}") as channel:
        client = Client(channel)
        codes = await client.create(
            account("@funding"),
            account("cust-1/deposit", no_overdraft=True),
            account("cust-2/deposit", no_overdraft=True),
        )
        assert set(names(codes)) == {"RESULT_CODE_CREATED"}
        assert names(await client.codes(transfer("fund-1", "@funding", "cust-1/deposit", 100))) == [
            "RESULT_CODE_CREATED"
        ]
        yield client


async def scrape(port: int) -> Samples:
    return parse_samples(await asyncio.to_thread(metrics_text_on_port, port))


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample of shard 0 (absent: 0, as for a counter not yet incremented)."""
    return samples.get((name, frozenset({"shard": "0", **labels}.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_posted_batch_moves_counters(metered: NodeHandle, client: Client) -> None:
    before = await scrape(metered.node.metrics_port)
    results = await client.post(
        transfer("fund-1", "@funding", "cust-1/deposit", 100),  # a retry: replayed
        transfer("t-2", "cust-1/deposit", "cust-2/deposit", 50),
        transfer("t-3", "cust-2/deposit", "cust-1/deposit", 1_000),
        transfer("t-4", "cust-1/deposit", "cust-2/deposit", 1_000),
    )
    assert names([r.code for r in results]) == [
        "RESULT_CODE_REPLAYED",
        "RESULT_CODE_CREATED",
        "RESULT_CODE_INSUFFICIENT_FUNDS",
        "RESULT_CODE_INSUFFICIENT_FUNDS",
    ]
    after = await scrape(metered.node.metrics_port)

    def moved(name: str, **labels: str) -> float:
        return delta(before, after, name, **labels)

    item_results = "tally_item_results_total"
    assert moved(item_results, method=POST, code="CREATED") == 1
    assert moved(item_results, method=POST, code="REPLAYED") == 1
    assert moved(item_results, method=POST, code="INSUFFICIENT_FUNDS") == 2
    assert moved("tally_rpc_total", method=POST, status="OK") == 1
    assert moved("tally_rpc_duration_seconds_count", method=POST) == 1
    assert moved("tally_batches_committed_total") == 1
    assert moved("tally_commit_duration_seconds_count") == 1
    assert moved("tally_commit_duration_seconds_sum") > 0
    assert moved("tally_batch_load_seconds_count") == 1
    assert moved("tally_batch_items_count") == 1
    assert moved("tally_batch_items_sum") == 4
    # The three accounts are cached since they were created; each of the four transaction ids
    # is looked up once (a hit or a miss, as the caching policy decides).
    assert moved("tally_cache_hits_total", cache="accounts") == 3
    assert moved("tally_cache_misses_total", cache="accounts") == 0
    transaction_lookups = moved("tally_cache_hits_total", cache="transactions") + moved(
        "tally_cache_misses_total", cache="transactions"
    )
    assert transaction_lookups == 4

    writer = metered.node.writer
    assert writer is not None
    assert value(after, "tally_writer_epoch") == writer.epoch > 0
    assert value(after, "tally_slot_map_version") == 0  # no control database: no slot map
    assert value(after, "tally_queue_depth") == 0
    assert value(after, "tally_prepared_pieces") == 0
    assert value(after, "tally_commit_failures_total", kind="error") == 0
    assert value(after, "tally_commit_failures_total", kind="fenced") == 0


async def test_refused_calls_count_by_status(metered: NodeHandle, client: Client) -> None:
    before = await scrape(metered.node.metrics_port)
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await client.stub.PostTransactions(pb.PostTransactionsRequest(), timeout=10)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with security.channel(f"127.0.0.1:{metered.port}") as channel:
        raw = channel.unary_unary("/tally.v1.Ledger/GetAccounts")
        with pytest.raises(grpc.aio.AioRpcError) as garbage:  # not a valid message
            await raw(b"\xff\xff\xff", timeout=10)
    assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = await scrape(metered.node.metrics_port)

    def moved(name: str, **labels: str) -> float:
        return delta(before, after, name, **labels)

    assert moved("tally_rpc_total", method=POST, status="INVALID_ARGUMENT") == 1
    assert moved("tally_rpc_total", method="GetAccounts", status="INVALID_ARGUMENT") == 1
    assert moved("tally_rpc_total", method=POST, status="OK") == 0
    assert moved("tally_batches_committed_total") == 0


async def test_prepared_pieces_and_expired_holds(metered: NodeHandle, client: Client) -> None:
    """Both are counted by background tasks (sampled every 50 ms, swept every 50 ms here)."""
    hold = transfer("h-1", "cust-1/deposit", "@funding", 70, pending=True, timeout_seconds=1)
    assert names(await client.codes(hold)) == ["RESULT_CODE_CREATED"]
    async with security.cluster_channel(metered.internal_target) as channel:
        shard = spb_grpc.ShardStub(channel)
        piece = transfer("x-1", "cust-1/deposit", "cust-2/deposit", 10)
        response = await shard.Prepare(
            spb.PrepareRequest(
                items=[
                    spb.PrepareItem(
                        piece=piece, coordinator_shard=0, deadline_seconds=60, attempt="a1"
                    )
                ]
            ),
            timeout=10,
        )
    assert names([r.code for r in response.results]) == ["RESULT_CODE_CREATED"]
    port = metered.node.metrics_port
    samples = await wait_for_value(port, "tally_prepared_pieces", 1)
    assert 0 <= value(samples, "tally_prepared_oldest_age_seconds") < 60
    assert value(samples, "tally_rpc_total", method="Prepare", status="OK") == 1
    assert value(samples, "tally_item_results_total", method="Prepare", code="CREATED") == 1
    await wait_for_value(port, "tally_holds_expired_total", 1)  # the hold's 1 s timeout


async def wait_for_value(port: int, name: str, wanted: float, timeout_s: float = 5.0) -> Samples:
    """Scrapes until a sample reaches a value (one a background task sets)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    samples = await scrape(port)
    while value(samples, name) != wanted:
        assert asyncio.get_running_loop().time() < deadline, f"{name} is {value(samples, name)}"
        await asyncio.sleep(0.05)
        samples = await scrape(port)
    return samples


async def test_slot_map_version_and_endpoint_lifecycle(pg: EmbeddedPostgres, dsn: str) -> None:
    control_name = f"t{os.getpid()}_metrics_control"
    await pg.create_database_async(control_name)
    connection = await control.connect(pg.dsn(control_name))
    try:
        slot_map = await control_store.initialise(connection, 1)
    finally:
        await connection.close()
    handle = await start_node(
        dsn, metrics_listen="127.0.0.1:0", control_dsn=pg.dsn(control_name), shard_id=0
    )
    port = handle.node.metrics_port
    try:
        samples = await scrape(port)
        assert value(samples, "tally_slot_map_version") == slot_map.version > 0
    finally:
        await handle.stop()
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(metrics_text_on_port, port)  # stopped with the node


async def test_metrics_endpoint_is_off_by_default() -> None:
    node = Node(NodeConfig(dsn="postgresql://unused", security=security.server_security()))
    assert (node.config.metrics_listen, node.metrics_port) == ("", 0)


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:9400") == ("::1", 9400)
    for bad in ("9400", ":9400", "localhost:", "localhost:http", "localhost:70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_cli_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TALLY_METRICS_LISTEN", raising=False)
    flag = build_parser().parse_args(["node", "--dsn", "x", "--metrics-listen", "0.0.0.0:9400"])
    assert flag.metrics_listen == "0.0.0.0:9400"
    gateway = ["gateway", "--control-dsn", "x"]
    assert build_parser().parse_args(gateway).metrics_listen == ""  # off unless asked
    assert build_parser().parse_args(["up"]).metrics_listen == "127.0.0.1:0"  # on: a free port
    flag = build_parser().parse_args([*gateway, "--metrics-listen", "127.0.0.1:9402"])
    assert flag.metrics_listen == "127.0.0.1:9402"
    monkeypatch.setenv("TALLY_METRICS_LISTEN", "127.0.0.1:9401")
    assert build_parser().parse_args(["up"]).metrics_listen == "127.0.0.1:9401"
    assert build_parser().parse_args(gateway).metrics_listen == "127.0.0.1:9401"


async def test_how_far_history_is_cold(dsn: str, tmp_path: Path) -> None:
    """The archiver's progress as the node samples it (every 50 ms here): the last cold block,
    and the age of the oldest block still in PostgreSQL, which grows while no archiver runs."""
    handle = await start_node(
        dsn, metrics_listen="127.0.0.1:0", metrics_prepared_interval_s=0.05, cold_dir=str(tmp_path)
    )
    try:
        async with security.channel(f"127.0.0.1:{handle.port}") as channel:
            client = Client(channel)
            await client.create(account("@funding"), account("cust-1/deposit"))
            for n in range(3):
                item = transfer(f"t-{n}", "@funding", "cust-1/deposit", 1 + n)
                assert names(await client.codes(item)) == ["RESULT_CODE_CREATED"]
            port = handle.node.metrics_port
            await asyncio.sleep(0.3)
            samples = await scrape(port)
            assert value(samples, "tally_cold_last_block") == 0
            assert value(samples, "tally_hot_history_age_seconds") >= 0.3  # block 1's age
            connection = await asyncpg.connect(dsn)
            try:
                run, _ = await archive_and_remove(
                    connection, tmp_path, created_before_ns=time.time_ns()
                )
            finally:
                await connection.close()
            samples = await wait_for_value(port, "tally_cold_last_block", run.last_block)
            assert value(samples, "tally_hot_history_age_seconds") == 0  # nothing hot left
            item = transfer("t-3", "@funding", "cust-1/deposit", 4)
            assert names(await client.codes(item)) == ["RESULT_CODE_CREATED"]
            await asyncio.sleep(0.2)
            samples = await scrape(port)
            assert 0 < value(samples, "tally_hot_history_age_seconds") < 60
    finally:
        await handle.stop()
