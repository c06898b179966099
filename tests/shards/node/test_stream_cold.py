"""The change stream of a node whose journal went partly cold while it served: from before the
horizon, without the cold history, a clear FAILED_PRECONDITION naming the horizon (never
INTERNAL, never a block without its rows); from the horizon on, served as ever."""

from __future__ import annotations

import time
from pathlib import Path

import asyncpg
import grpc

from core.store.cold.archive import archive_and_remove
from tests.support import security, streams
from tests.support.helpers import Client, start_node, transfer


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
