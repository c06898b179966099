"""The change stream of a node whose journal is partly cold: given its cold history, from the
start the same messages, byte for byte, as before archiving (both encodings); without it (a
node whose journal went cold while it served), from before the horizon a clear
FAILED_PRECONDITION naming the horizon (never INTERNAL, never a block without its rows), and
from the horizon on, served as ever."""

from __future__ import annotations

import time
from pathlib import Path

import asyncpg
import grpc

from core.store.cold.archive import archive_and_remove
from tally.v1 import ledger_pb2 as pb
from tests.support import security, streams
from tests.support.cold import post_journal
from tests.support.helpers import Client, start_node, transfer

ENCODINGS = (pb.JOURNAL_ENCODING_UNSPECIFIED, pb.JOURNAL_ENCODING_LINES)


async def _collect_all(target: str) -> list[list[bytes]]:
    async with security.channel(target) as channel:
        return [
            [b.SerializeToString() for b in await streams.collect(channel, encoding=encoding)]
            for encoding in ENCODINGS
        ]


async def test_a_stream_from_the_start_is_the_same_bytes_after_archiving(
    dsn: str, tmp_path: Path
) -> None:
    await post_journal(dsn, [f"cust-1/a{n}" for n in range(4)], every_kind=True)
    handle = await start_node(dsn)
    try:
        before = await _collect_all(handle.target)
    finally:
        await handle.stop()
    root = tmp_path / "segments"
    connection = await asyncpg.connect(dsn)
    try:
        _, removed = await archive_and_remove(
            connection, root, created_before_ns=time.time_ns(), blocks_per_segment=3
        )
        assert removed and await connection.fetchval("SELECT count(*) FROM postings") == 0
    finally:
        await connection.close()
    handle = await start_node(dsn, cold_dir=str(root))
    try:
        assert await _collect_all(handle.target) == before
    finally:
        await handle.stop()


async def test_a_stream_from_before_the_horizon_needs_the_cold_directory(
    dsn: str, tmp_path: Path
) -> None:
    handle = await start_node(dsn)  # no cold directory: its rows were all hot when it started
    try:
        async with security.channel(handle.target) as channel:
            client = Client(channel)
            await streams.every_kind_of_record(client)
            before = await streams.collect(channel)
            connection = await asyncpg.connect(dsn)
            try:
                _, removed = await archive_and_remove(
                    connection, tmp_path / "segments", created_before_ns=time.time_ns()
                )
            finally:
                await connection.close()
            last_cold = removed[-1].last_block
            # A block after them, so no page read before the archive (kept, shared) answers.
            item = transfer("cust-1/late", "cust-1/deposit", "cust-2/deposit", 1)
            assert await client.codes(item) == [streams.CREATED]
            for position in (0, last_cold - 1):
                code, details = await streams.refusal(channel, streams.request({0: position}))
                assert code is grpc.StatusCode.FAILED_PRECONDITION, details
                assert f"up to block {last_cold} is in cold segments" in details
                assert "cold directory" in details
            tail = await streams.collect(channel, {0: last_cold})
            assert [b.sequence for b in tail] == list(range(last_cold + 1, last_cold + 2))
            assert tail[0].previous_hash == before[-1].hash
    finally:
        await handle.stop()
