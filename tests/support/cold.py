"""Shard databases with cold history in tests: a node's journal written (every kind of record,
then transfers), later archived (core.store.cold.archive.archive_and_remove), and the change
stream read whole from a position (core.store.stream.read_page, page after page)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from core.model import AccountSpec, TransactionState
from core.store import stream as journal_stream
from tally.v1 import ledger_pb2 as pb
from tests.support import security, streams
from tests.support.helpers import Client, start_node, transfer
from tests.support.paths import REPO_ROOT

TIMEOUT_S = 30.0
PROCESS_TIMEOUT_S = 120.0


async def tally_segments(dsn: str, *arguments: str, failpoint: str = "") -> tuple[int, str]:
    """`tally segments ARGUMENTS` as a process on dsn (TALLY_DSN), killed (SIGKILL) at the
    archiver's step `failpoint` if one is given: its exit status and its output."""
    environment = {**os.environ, "TALLY_DSN": dsn}
    environment.pop("TALLY_FAILPOINTS", None)
    if failpoint:
        environment["TALLY_FAILPOINTS"] = f"archive.{failpoint}=exit"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shards.cli", "segments", *arguments,
        cwd=REPO_ROOT, env=environment,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=PROCESS_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def history_pages(client: Client, account_id: str, limit: int = 5) -> list[pb.Posting]:
    """An account's whole history through the API (ListPostings), limit postings a page."""
    read: list[pb.Posting] = []
    cursor = ""
    while True:
        page = await client.stub.ListPostings(
            pb.ListPostingsRequest(account_id=account_id, cursor=cursor, limit=limit), timeout=30
        )
        read.extend(page.postings)
        if not page.next_cursor:
            return read
        cursor = page.next_cursor


async def check_whole(
    client: Client, accounts: tuple[str, ...], posted: list[tuple[str, str, int]]
) -> None:
    """Posted (id, credited account, amount): each account's history is its postings once, in
    order, summing to its credits, and every id is found."""
    for account_id in accounts:
        mine = [(i, amount) for i, to, amount in posted if to == account_id]
        history = await history_pages(client, account_id)
        assert [(p.transaction_id, p.posted_amount) for p in history] == mine
        assert [p.sequence for p in history] == sorted({p.sequence for p in history})
        balance = await client.balance(account_id)
        assert balance.credits_posted == sum(amount for _, amount in mine)
    ids = [i for i, _, _ in posted]
    found = await client.stub.GetTransactions(pb.GetTransactionsRequest(ids=ids), timeout=30)
    assert [r.code for r in found.results] == [pb.RESULT_CODE_OK] * len(ids)


async def post_journal(
    dsn: str, names: list[str], every_kind: bool = False, cold_dir: Path | None = None
) -> None:
    """Start a node on dsn, write (every kind of record, then) one transfer per name, stop."""
    handle = await start_node(dsn, cold_dir=str(cold_dir or ""))
    try:
        async with security.channel(handle.target) as channel:
            client = Client(channel)
            if every_kind:
                await streams.every_kind_of_record(client)
            for n, name in enumerate(names):
                item = transfer(name, "cust-1/deposit", "cust-2/deposit", 3 + n)
                assert await client.codes(item) == [pb.RESULT_CODE_CREATED]
    finally:
        await handle.stop()


async def stream_whole(
    connection: object, after: int = 0, cold: journal_stream.ColdBlocks | None = None
) -> tuple[list[journal_stream.StreamedBlock], dict[str, AccountSpec]]:
    """Every block after `after` up to the head, as the stream reads them, and the accounts
    their postings name (each page's posted accounts checked to cover its postings)."""
    head = await journal_stream.head_sequence(connection, TIMEOUT_S)
    blocks: list[journal_stream.StreamedBlock] = []
    posted: dict[str, AccountSpec] = {}
    while after < head:
        page = await journal_stream.read_page(connection, after, head, TIMEOUT_S, cold)
        assert page.blocks and page.blocks[0].sequence == after + 1
        assert {p.account_id for b in page.blocks for p in b.postings} <= set(page.posted_accounts)
        blocks.extend(page.blocks)
        posted.update(page.posted_accounts)
        after = page.blocks[-1].sequence
    return blocks, posted


def comparable(block: journal_stream.StreamedBlock) -> tuple[object, ...]:
    """A streamed block as plain values (a TransactionState compares by identity)."""
    transactions = [
        (tuple(getattr(t.state, name) for name in TransactionState.__slots__), t.target_kind)
        for t in block.transactions
    ]
    return (
        block.sequence,
        block.hash,
        block.previous_hash,
        block.created_at_ns,
        transactions,
        block.postings,
        block.accounts,
        block.closures,
    )
