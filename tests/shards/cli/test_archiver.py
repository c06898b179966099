"""`tally segments archive`, the archiver, as its own process beside a serving node that keeps
committing: killed (SIGKILL, by a failpoint) after a segment is written, after its rows are
deleted but before that transaction commits, and after it commits, then run again; every time,
the node's history reads hold every posting exactly once and every transaction by id, the
writer never refused a transfer, and in the end the segments verify against the database."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import asyncpg

from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.helpers import Client, account, start_node, transfer
from tests.support.paths import REPO_ROOT

CREATED = pb.RESULT_CODE_CREATED
TIMEOUT_S = 120.0
ACCOUNTS = ("@cash", "cust-1/deposit", "cust-2/deposit")
STEPS = ("segment_written", "rows_deleted", "segment_recorded")


async def _tally(dsn: str, *arguments: str, failpoint: str = "") -> tuple[int, str]:
    environment = {**os.environ, "TALLY_DSN": dsn}
    environment.pop("TALLY_FAILPOINTS", None)
    if failpoint:
        environment["TALLY_FAILPOINTS"] = f"archive.{failpoint}=exit"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shards.cli", "segments", *arguments,
        cwd=REPO_ROOT, env=environment,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def _history(client: Client, account_id: str) -> list[pb.Posting]:
    read: list[pb.Posting] = []
    cursor = ""
    while True:
        page = await client.stub.ListPostings(
            pb.ListPostingsRequest(account_id=account_id, cursor=cursor, limit=5), timeout=30
        )
        read.extend(page.postings)
        if not page.next_cursor:
            return read
        cursor = page.next_cursor


async def _check_whole(client: Client, posted: list[tuple[str, str, int]]) -> None:
    """Every posting once, in order, each with its transaction; every id found."""
    for account_id in ACCOUNTS[1:]:
        mine = [(i, amount) for i, to, amount in posted if to == account_id]
        history = await _history(client, account_id)
        assert [(p.transaction_id, p.posted_amount) for p in history] == mine
        assert [p.sequence for p in history] == sorted({p.sequence for p in history})
        balance = await client.balance(account_id)
        assert balance.credits_posted == sum(amount for _, amount in mine)
    ids = [i for i, _, _ in posted]
    found = await client.stub.GetTransactions(pb.GetTransactionsRequest(ids=ids), timeout=30)
    assert [r.code for r in found.results] == [pb.RESULT_CODE_OK] * len(ids)


# Why long: one archiver killed at each of its steps while the writer commits, then finished.
async def test_the_archiver_killed_at_each_step_loses_and_doubles_nothing(
    dsn: str, tmp_path: Path
) -> None:
    root = tmp_path / "cold"
    archive = ("archive", "--dir", str(root), "--older-than", "0s", "--blocks-per-segment", "3")
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
                    await asyncio.sleep(0.01)

            poster = asyncio.create_task(post_until_stopped())
            await asyncio.sleep(0.5)
            for step in STEPS:
                code, output = await _tally(dsn, *archive, failpoint=step)
                assert code == -signal.SIGKILL, output
                assert f"failpoint archive.{step} reached" in output
                async with between:
                    await _check_whole(client, posted)
            code, output = await _tally(dsn, *archive)
            assert code == 0, output
            await asyncio.sleep(0.3)
            stop.set()
            await poster
            code, output = await _tally(dsn, *archive)
            assert code == 0 and "moved segment-" in output, output
            await _check_whole(client, posted)
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
    code, output = await _tally(dsn, "verify", "--dir", str(root))
    assert code == 0, output
    # Nothing half-written left behind by the killed writes.
    assert not [p for p in (root / "shard-0").iterdir() if not p.name.startswith("segment-")]
