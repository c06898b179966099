"""The change stream's LINES encoding (JOURNAL_ENCODING_LINES): each block's canonical lines,
exactly the bytes its hash covers, the same whether a follower takes them from the writer's
memory or a fresh node makes them again from the store; made into records, they are the RECORDS
block but for the two fields the lines do not hold; a tampered block's lines do not pass; a
scoped caller is refused; the gateway passes them through."""

from __future__ import annotations

import asyncio
import os

import asyncpg
import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import journal
from core.authority import Role
from core.model import AccountSpec, Kind, Leg, Posting, Status, TransactionSpec, TransactionState
from shards.local.embedded_pg import EmbeddedPostgres
from shards.rpc import stream as messages
from shards.security.credentials import aio_channel
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc
from tests.support import security, streams
from tests.support.helpers import Client, account, in_process_cluster, start_node, transfer

LINES = pb.JOURNAL_ENCODING_LINES
CREATED = pb.RESULT_CODE_CREATED


def without_unheld_fields(block: pb.JournalBlock, created: set[str]) -> pb.JournalBlock:
    """The RECORDS block less what a block's lines do not hold (records_of_lines)."""
    copy = pb.JournalBlock()
    copy.CopyFrom(block)
    for posting in copy.postings:
        if posting.account_id not in created:
            posting.balance_after.available = 0
    for record in copy.transactions:
        if record.transaction.post_pending_id and record.HasField("cross_shard_piece"):
            record.ClearField("cross_shard_piece")
    return copy


async def test_lines_hash_to_the_block_from_memory_and_from_the_store(dsn: str) -> None:
    handle = await start_node(dsn)
    try:
        async with security.channel(handle.target) as channel:
            follower = pb_grpc.LedgerStub(channel).StreamJournal(
                streams.request({0: 0}, follow=True, encoding=LINES), timeout=60
            )
            shared = handle.node.streams
            assert shared is not None
            for _ in range(500):
                if shared.open_count == 1:
                    break
                await asyncio.sleep(0.01)
            client = Client(channel)
            await streams.every_kind_of_record(client)
            odd = {"note": "a|b|c", "quote": 'it\'s "x"\nand more'}  # '|', quotes, a line break
            assert await client.create(account("cust-3/odd", metadata=odd)) == [CREATED]
            item = transfer("cust-3/odd-pay", "@cash", "cust-3/odd", 9, metadata=odd)
            assert await client.codes(item) == [CREATED]
            head = handle.node.writer.head_sequence if handle.node.writer else 0
            followed = await streams.take(follower, head)
            follower.cancel()
            assert shared.page_read_count == 0  # every block from the writer's memory
            records = await streams.collect(channel)
    finally:
        await handle.stop()
    fresh = await start_node(dsn)  # nothing in memory: lines made again from the rows
    try:
        async with security.channel(fresh.target) as channel:
            stored = await streams.collect(channel, encoding=LINES)
    finally:
        await fresh.stop()
    assert len(followed) == head >= 8
    assert [b.SerializeToString() for b in followed] == [b.SerializeToString() for b in stored]
    previous = journal.GENESIS_HASH
    created: set[str] = set()
    for lines_block, records_block in zip(stored, records, strict=True):
        assert lines_block.lines and not lines_block.postings and not lines_block.transactions
        assert lines_block.previous_hash == previous  # the chain, checked by the consumer
        body_hash = journal.body_hash(previous, lines_block.sequence, lines_block.lines)
        assert body_hash == lines_block.hash
        previous = lines_block.hash
        converted = messages.records_of_lines(lines_block)
        created = {a.account.id for a in records_block.accounts}
        assert converted == without_unheld_fields(records_block, created)
    assert any("a|b|c" in r.transaction.metadata.get("note", "") for r in converted.transactions)


async def test_a_tampered_block_is_refused_and_a_scoped_caller_too(dsn: str) -> None:
    handle = await start_node(dsn)
    try:
        async with security.channel(handle.target) as channel:
            client = Client(channel)
            assert await client.create(account("@cash"), account("cust-1/d")) == [CREATED] * 2
            assert await client.codes(transfer("cust-1/t", "@cash", "cust-1/d", 100)) == [CREATED]
            block = (await streams.collect(channel, encoding=LINES))[-1]
        tampered = pb.JournalBlock()
        tampered.CopyFrom(block)
        tampered.lines = block.lines.replace(b"|100|", b"|900|")
        assert tampered.lines != block.lines
        with pytest.raises(messages.LinesError, match="do not hash to its hash"):
            messages.records_of_lines(tampered)
        monitor = security.identity({Role.MONITOR}, ("cust-1/*",), name="lines-monitor")
        async with aio_channel(handle.target, monitor) as scoped:
            code, details = await streams.refusal(scoped, streams.request(encoding=LINES))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "JOURNAL_ENCODING_RECORDS" in details
    finally:
        await handle.stop()


async def test_a_stored_block_whose_rows_were_changed_ends_the_stream_data_loss(dsn: str) -> None:
    handle = await start_node(dsn)
    try:
        async with security.channel(handle.target) as channel:
            client = Client(channel)
            assert await client.create(account("@cash"), account("cust-1/d")) == [CREATED] * 2
            assert await client.codes(transfer("cust-1/t", "@cash", "cust-1/d", 100)) == [CREATED]
    finally:
        await handle.stop()
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "UPDATE postings SET posted_amount = 900 WHERE posted_amount = 100"
        )
    finally:
        await connection.close()
    fresh = await start_node(dsn)
    try:
        async with security.channel(fresh.target) as channel:
            code, details = await streams.refusal(channel, streams.request(encoding=LINES))
        assert code == grpc.StatusCode.DATA_LOSS and "do not hash to its hash" in details, details
    finally:
        await fresh.stop()


async def test_the_gateway_passes_lines_through(pg: EmbeddedPostgres) -> None:
    async with (
        in_process_cluster(pg, f"lines{os.getpid()}", 2) as cluster,
        security.channel(cluster.target) as channel,
    ):
        client = Client(channel)
        assert (
            await client.create(account("@cash"), account("a/d"), account("b/d")) == [CREATED] * 3
        )
        assert await client.codes(transfer("a/t", "a/d", "b/d", 5)) == [CREATED]
        blocks = await streams.collect(channel, encoding=LINES)
    assert {b.shard_id for b in blocks} == {0, 1} and all(b.lines for b in blocks)
    for block in blocks:
        messages.records_of_lines(block)  # each verifies against its own hash


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_ids = st.from_regex(r"[a-z][a-z0-9/_.-]{0,10}", fullmatch=True)
_amounts = st.integers(min_value=0, max_value=2**62)


@settings(max_examples=200, deadline=None)
@given(
    metadata=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_.-]{0,6}", fullmatch=True), _text),
    ids=st.lists(_ids, min_size=3, max_size=3, unique=True),
    amounts=st.lists(_amounts, min_size=7, max_size=7),
    flags=st.tuples(st.booleans(), st.booleans()),
)
def test_lines_parse_back_to_what_made_them(
    metadata: dict[str, str], ids: list[str], amounts: list[int], flags: tuple[bool, bool]
) -> None:
    meta = tuple(sorted(metadata.items()))
    spec = AccountSpec(ids[0], "USD", 7, flags[0], flags[1], meta)
    legs = (Leg(ids[0], True, amounts[0], "USD"), Leg(ids[1], False, amounts[0], "USD"))
    transaction = TransactionSpec(ids[2], Kind.ORDINARY, legs, 3, meta, "2026-12-03", 0, "")
    state = TransactionState(transaction, legs, amounts[1], Status.POSTED)
    posting = Posting(5, ids[2], ids[0], True, *amounts[:7])
    lines = [
        journal.created_account_line(spec, amounts[2]),
        journal.transaction_line(state, *journal.legs_texts(state)),
        journal.posting_line(posting),
        journal.closure_line(ids[1], amounts[3]),
    ]
    parsed = journal.parse_lines(journal.block_body(lines))
    assert parsed.accounts == [(spec, amounts[2])]
    assert parsed.transactions == [(transaction, legs, amounts[1])]
    assert parsed.postings == [posting]
    assert parsed.closures == [(ids[1], amounts[3])]
    with pytest.raises(journal.LineError):
        journal.parse_lines(b"Q|what")
