"""Shard databases with cold history in tests: a node's journal written (every kind of record,
then transfers), later archived (core.store.cold.archive.archive_and_remove), and the change
stream read whole from a position (core.store.stream.read_page, page after page)."""

from __future__ import annotations

from pathlib import Path

from core.model import AccountSpec, TransactionState
from core.store import stream as journal_stream
from tally.v1 import ledger_pb2 as pb
from tests.support import security, streams
from tests.support.helpers import Client, start_node, transfer

TIMEOUT_S = 30.0


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
