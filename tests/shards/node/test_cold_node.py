"""A node serving a shard whose old history is cold (--cold-dir): through its real gRPC API,
history pages, balance-at and transactions by id read the same before and after the archiver
moved blocks out of PostgreSQL; an archived transaction id stays idempotent (replayed, never
applied twice) and reversible; a node refuses a database with cold history without its
segments' directory; a segment file gone while serving is a clear, retryable answer."""

from __future__ import annotations

import time
from pathlib import Path

import asyncpg
import grpc
import pytest

from core.store.cold.archive import archive_and_remove
from core.store.cold.read import segment_paths
from shards.node.server import ColdDirectoryError
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.helpers import Client, account, start_node, transfer

CREATED = pb.RESULT_CODE_CREATED
REPLAYED = pb.RESULT_CODE_REPLAYED
ACCOUNTS = ("@cash", "cust-1/deposit", "cust-2/deposit")
TRANSFER_COUNT = 12


async def _api_reads(client: Client) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Every history page of size 2 of both customers, balance-at every posting's time and a
    nanosecond before it, and every transaction by id: serialized, to compare whole."""
    pages: list[bytes] = []
    times: list[int] = []
    for account_id in ACCOUNTS[1:]:
        cursor = ""
        while True:
            page = await client.stub.ListPostings(
                pb.ListPostingsRequest(account_id=account_id, cursor=cursor, limit=2), timeout=30
            )
            pages.append(page.SerializeToString(deterministic=True))
            times.extend(p.timestamp_ns for p in page.postings)
            if not page.next_cursor:
                break
            cursor = page.next_cursor
    balances = []
    for at_ns in sorted({t + d for t in times for d in (-1, 0)}):
        for account_id in ACCOUNTS[1:]:
            answer = await client.stub.BalanceAt(
                pb.BalanceAtRequest(account_id=account_id, at_ns=at_ns), timeout=30
            )
            balances.append(answer.SerializeToString(deterministic=True))
    ids = [f"cust-1/t-{n}" for n in range(TRANSFER_COUNT)]
    found = await client.stub.GetTransactions(pb.GetTransactionsRequest(ids=ids), timeout=30)
    records = [r.SerializeToString(deterministic=True) for r in found.results]
    return pages, balances, records


async def _archive(dsn: str, root: Path) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        _, removed = await archive_and_remove(
            connection, root, created_before_ns=time.time_ns(), blocks_per_segment=3
        )
        return sum(r.postings_deleted for r in removed)
    finally:
        await connection.close()


# Why long: one node's whole story across the boundary, each step reading what the last left.
async def test_a_node_reads_and_replays_archived_history(dsn: str, tmp_path: Path) -> None:
    root = tmp_path / "cold"
    handle = await start_node(dsn, cold_dir=str(root))
    try:
        async with security.channel(handle.target) as channel:
            client = Client(channel)
            assert await client.create(*(account(a) for a in ACCOUNTS)) == [CREATED] * 3
            for n in range(TRANSFER_COUNT):  # one block each
                item = transfer(f"cust-1/t-{n}", "@cash", f"cust-{1 + n % 2}/deposit", 10 + n)
                assert await client.codes(item) == [CREATED]
            before = await _api_reads(client)
            assert await _archive(dsn, root) == 2 * TRANSFER_COUNT  # every posting left
            assert await _api_reads(client) == before

            # An archived id retried: the original, never a second application.
            again = await client.post(transfer("cust-1/t-3", "@cash", "cust-2/deposit", 13))
            assert again[0].code == REPLAYED
            changed = await client.post(transfer("cust-1/t-3", "@cash", "cust-2/deposit", 14))
            assert changed[0].code == pb.RESULT_CODE_IDEMPOTENCY_CONFLICT
            assert (await client.balance("cust-2/deposit")).credits_posted == sum(
                10 + n for n in range(1, TRANSFER_COUNT, 2)
            )
            # An archived transfer reversed: its record is written hot again, reversed.
            reversal = pb.Transaction(id="cust-1/undo", code=9, reverses_id="cust-1/t-4")
            assert await client.codes(reversal) == [CREATED]
            assert (await client.transaction("cust-1/t-4")).reversed_by_id == "cust-1/undo"
            twice = pb.Transaction(id="cust-1/undo-2", code=9, reverses_id="cust-1/t-4")
            assert await client.codes(twice) == [pb.RESULT_CODE_ALREADY_REVERSED]
    finally:
        await handle.stop()

    # Restarted (its writer's cache empty: the ids are looked up in the segments), archived
    # again (the reversal's block too): the same answers.
    handle = await start_node(dsn, cold_dir=str(root))
    try:
        async with security.channel(handle.target) as channel:
            client = Client(channel)
            again = await client.post(transfer("cust-1/t-5", "@cash", "cust-2/deposit", 15))
            assert again[0].code == REPLAYED
            reversal = pb.Transaction(id="cust-1/undo-6", code=9, reverses_id="cust-1/t-6")
            assert await client.codes(reversal) == [CREATED]
            after_reversal = await _api_reads(client)
            await _archive(dsn, root)
            assert await _api_reads(client) == after_reversal
            assert (await client.transaction("cust-1/t-4")).reversed_by_id == "cust-1/undo"
            twice = pb.Transaction(id="cust-1/undo-3", code=9, reverses_id="cust-1/t-4")
            assert await client.codes(twice) == [pb.RESULT_CODE_ALREADY_REVERSED]
    finally:
        await handle.stop()


async def test_a_node_refuses_cold_history_it_cannot_read(dsn: str, tmp_path: Path) -> None:
    root = tmp_path / "cold"
    handle = await start_node(dsn, cold_dir=str(root))
    try:
        async with security.channel(handle.target) as channel:
            client = Client(channel)
            await client.create(*(account(a) for a in ACCOUNTS))
            for n in range(4):
                item = transfer(f"cust-1/t-{n}", "@cash", "cust-1/deposit", 1 + n)
                assert await client.codes(item) == [CREATED]
    finally:
        await handle.stop()
    await _archive(dsn, root)

    with pytest.raises(ColdDirectoryError, match="--cold-dir"):
        await start_node(dsn)  # answering from the rows alone would lose history
    with pytest.raises(ColdDirectoryError, match="is not as recorded"):
        await start_node(dsn, cold_dir=str(tmp_path / "elsewhere"))

    handle = await start_node(dsn, cold_dir=str(root))
    try:
        async with security.channel(handle.target) as channel:
            client = Client(channel)
            for segment in segment_paths(root / "shard-0"):
                (segment / "postings.parquet").unlink()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await client.stub.ListPostings(
                    pb.ListPostingsRequest(account_id="cust-1/deposit"), timeout=30
                )
            assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "postings.parquet" in (raised.value.details() or "")
    finally:
        await handle.stop()
