"""`tally segments archive`, the archiver, as its own process beside a serving node that keeps
committing: killed (SIGKILL, by a failpoint) after a segment is written, after its rows are
deleted but before that transaction commits, and after it commits, then run again; every time,
the node's history reads hold every posting exactly once and every transaction by id, the
writer never refused a transfer, and in the end the segments verify against the database."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import asyncpg

from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.cold import check_whole, tally_segments
from tests.support.helpers import Client, account, start_node, transfer

CREATED = pb.RESULT_CODE_CREATED
TIMEOUT_S = 120.0
ACCOUNTS = ("@cash", "cust-1/deposit", "cust-2/deposit")
STEPS = ("segment_written", "rows_deleted", "segment_recorded")


# Why long: one archiver killed at each of its steps while the writer commits, then finished.
async def test_the_archiver_killed_at_each_step_loses_and_doubles_nothing(
    dsn: str, tmp_path: Path
) -> None:
    root = tmp_path / "cold"
    archive = ("archive", "--dir", str(root), "--older-than", "0s", "--blocks-per-segment", "20")
    handle = await start_node(dsn, cold_dir=str(root))
    posted: list[tuple[str, str, int]] = []
    stop = asyncio.Event()
    between = asyncio.Lock()  # a check reads between two posts, never during one
    try:
        async with security.channel(handle.target) as channel:
            client = Client(channel)
            assert await client.create(*(account(a) for a in ACCOUNTS)) == [CREATED] * 3

            async def post_until_stopped() -> None:
                while not stop.is_set():
                    n = len(posted)
                    to = f"cust-{1 + n % 2}/deposit"
                    item = transfer(f"cust-1/t-{n}", "@cash", to, 1 + n)
                    async with between:
                        assert await client.codes(item) == [CREATED]  # never refused
                        posted.append((item.id, to, 1 + n))
                    await asyncio.sleep(0.02)

            poster = asyncio.create_task(post_until_stopped())
            await asyncio.sleep(0.5)
            for step in STEPS:
                code, output = await tally_segments(dsn, *archive, failpoint=step)
                assert code == -signal.SIGKILL, output
                assert f"failpoint archive.{step} reached" in output
                async with between:
                    await check_whole(client, ACCOUNTS[1:], posted)
            code, output = await tally_segments(dsn, *archive)
            assert code == 0, output
            await asyncio.sleep(0.3)
            stop.set()
            await poster
            code, output = await tally_segments(dsn, *archive)
            assert code == 0 and "moved segment-" in output, output
            await check_whole(client, ACCOUNTS[1:], posted)
    finally:
        stop.set()
        await handle.stop()

    connection = await asyncpg.connect(dsn)
    try:
        spans = await connection.fetch(
            "SELECT first_block, last_block FROM cold_segments ORDER BY last_block"
        )
        hot = await connection.fetchval("SELECT count(*) FROM postings")
    finally:
        await connection.close()
    assert [s["first_block"] for s in spans] == [1] + [s["last_block"] + 1 for s in spans[:-1]]
    assert hot == 0  # every block archived
    code, output = await tally_segments(dsn, "verify", "--dir", str(root))
    assert code == 0, output
    # Nothing half-written left behind by the killed writes.
    assert not [p for p in (root / "shard-0").iterdir() if not p.name.startswith("segment-")]
