"""The change stream of one node (Ledger.StreamJournal): every committed block once, in order,
with the content the journal has; resuming; following new commits; a slow reader that the
writer never waits for; a monitor's scope; refusals and bad input."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest

from core.authority import Role
from core.store import shard as store
from core.store import stream as journal_stream
from shards.node import writer as writer_module
from shards.node.server import Node, NodeConfig
from shards.security.credentials import aio_channel
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc
from tests.support import security, streams
from tests.support.helpers import Client, NodeHandle, account, start_node, transfer
from tests.support.processes import fetch_rows

CREATED = pb.RESULT_CODE_CREATED
# 16 entries of 250 bytes: some 4 KiB per transaction in a block message.
WIDE = {f"note-{n}": "x" * 250 for n in range(16)}


async def _postings_of(client: Client, account_id: str) -> list[pb.Posting]:
    response = await client.stub.ListPostings(
        pb.ListPostingsRequest(account_id=account_id, limit=1000), timeout=30
    )
    return list(response.postings)


async def test_a_stream_from_the_start_is_the_journal_once_with_its_content(
    channel: grpc.aio.Channel, node: NodeHandle
) -> None:
    client = Client(channel)
    transaction_ids = await streams.every_kind_of_record(client)
    blocks = await streams.collect(channel)
    rows = await fetch_rows(node.dsn, "SELECT sequence, hash FROM journal_blocks ORDER BY 1")
    assert [(b.sequence, b.hash) for b in blocks] == [
        (r["sequence"], bytes(r["hash"])) for r in rows
    ]
    streams.check_contiguous(blocks, {})
    assert {b.shard_id for b in blocks} == {0}

    # Postings: exactly each account's history, balances after and block numbers included.
    streamed = [p for b in blocks for p in b.postings]
    assert [p.sequence for p in streamed] == sorted(p.sequence for p in streamed)
    assert all(p.block_sequence == b.sequence for b in blocks for p in b.postings)
    for account_id in streams.ACCOUNTS:
        mine = [p for p in streamed if p.account_id == account_id]
        assert mine == await _postings_of(client, account_id), account_id

    # Transactions: as GetTransactions reads them, but as created.
    records = {t.transaction.id: t for b in blocks for t in b.transactions}
    assert list(records) == transaction_ids
    for transaction_id, record in records.items():
        now = await client.transaction(transaction_id)
        assert record.transaction == now.transaction
        assert (record.timestamp_ns, record.applied_legs) == (now.timestamp_ns, now.applied_legs)
        assert record.cross_shard_piece == now.cross_shard_piece
        assert (record.resolved_by_id, record.reversed_by_id) == ("", "")
    hold = records["cust-1/hold"]
    assert (
        hold.status == pb.TRANSACTION_STATUS_PENDING
    )  # its post came later, in a block of its own
    assert (await client.transaction("cust-1/hold")).status == pb.TRANSACTION_STATUS_PENDING_POSTED
    assert (await client.transaction("cust-2/pay")).reversed_by_id == "cust-2/undo"
    assert records["cust-2/pay"].status == pb.TRANSACTION_STATUS_POSTED

    # Accounts as created, and the closure.
    created = {a.account.id: a for b in blocks for a in b.accounts}
    assert set(created) == set(streams.ACCOUNTS)
    for account_id in streams.ACCOUNTS:
        record = await client.account(account_id)
        assert created[account_id].account == record.account
        assert created[account_id].created_at_ns == record.created_at_ns
    closures = [c for b in blocks for c in b.closures]
    assert [c.account_id for c in closures] == ["cust-2/spare"]
    assert closures[0].closed_at_ns == (await client.account("cust-2/spare")).closed_at_ns
    assert blocks[-1].closures  # the last block is the closure's


async def test_resuming_from_a_position_gets_exactly_the_rest(channel: grpc.aio.Channel) -> None:
    await streams.every_kind_of_record(Client(channel))
    every = await streams.collect(channel)
    for position in (0, 1, 3, len(every) - 1, len(every)):
        rest = await streams.collect(channel, {0: position})
        assert [b.sequence for b in rest] == list(range(position + 1, len(every) + 1))
        assert rest == every[position:]


async def test_following_delivers_blocks_committed_after_the_call(
    channel: grpc.aio.Channel,
) -> None:
    client = Client(channel)
    await streams.every_kind_of_record(client)
    head = len(await streams.collect(channel))
    stub = pb_grpc.LedgerStub(channel)
    call = stub.StreamJournal(streams.request({0: head}, follow=True), timeout=60)
    try:
        later = [transfer(f"cust-1/later-{n}", "cust-1/deposit", "@cash", 1) for n in range(3)]
        for item in later:
            assert await client.codes(item) == [CREATED]
        blocks = await streams.take(call, 3)
    finally:
        call.cancel()
    streams.check_contiguous(blocks, {0: head})
    assert [t.transaction.id for b in blocks for t in b.transactions] == [i.id for i in later]


async def test_a_slow_reader_does_not_hold_the_writer_and_catches_up(
    channel: grpc.aio.Channel, node: NodeHandle
) -> None:
    """A follower that reads nothing while the writer commits 150 blocks of 20 wide transfers
    (12 MB: well past gRPC's flow-control windows, so its sends wait for the client): every
    write is answered meanwhile, and once it reads it gets every block, in order."""
    client = Client(channel)
    await client.create(account("@cash"), *(account(f"cust-{n}/d") for n in range(20)))
    stub = pb_grpc.LedgerStub(channel)
    call = stub.StreamJournal(streams.request(follow=True), timeout=120)
    first = await streams.take(call, 1)  # the stream is open and sending
    assert node.node.streams is not None and node.node.streams.open_count == 1
    block_count = 150
    for n in range(block_count):
        batch = [
            transfer(f"cust-{k}/t{n}", "@cash", f"cust-{k}/d", 1 + n, metadata=WIDE)
            for k in range(20)
        ]
        assert await client.codes(*batch) == [CREATED] * 20
    # Every write was answered while the stream sat behind the client's flow-control window.
    registry = node.node.metrics.registry
    sent = registry.get_sample_value("tally_stream_blocks_sent_total", {"shard": "0"})
    assert sent is not None and sent < block_count, sent
    assert registry.get_sample_value("tally_streams_open", {"shard": "0"}) == 1
    try:
        rest = await streams.take(call, block_count)
    finally:
        call.cancel()
    blocks = first + rest
    streams.check_contiguous(blocks, {})
    assert sum(len(b.transactions) for b in rest) == block_count * 20
    assert sum(len(b.postings) for b in rest) == block_count * 40


async def test_a_scoped_monitor_gets_every_block_with_only_its_accounts(node: NodeHandle) -> None:
    async with security.channel(node.target) as channel:
        await streams.every_kind_of_record(Client(channel))
        every = await streams.collect(channel)
    monitor = security.identity({Role.MONITOR}, ("cust-2/*",), name="stream-monitor")
    async with aio_channel(node.target, monitor) as channel:
        seen = await streams.collect(channel)
    assert [(b.sequence, b.hash, b.previous_hash) for b in seen] == [
        (b.sequence, b.hash, b.previous_hash) for b in every
    ]
    postings = [p for b in seen for p in b.postings]
    assert postings and {p.account_id for p in postings} == {"cust-2/deposit"}
    assert postings == [p for b in every for p in b.postings if p.account_id.startswith("cust-2/")]
    # A transaction with a leg in scope comes whole (its counterparty's leg too).
    ids = [t.transaction.id for b in seen for t in b.transactions]
    assert ids == ["cust-2/fund", "cust-2/pay", "cust-2/undo"]
    assert {a.account.id for b in seen for a in b.accounts} == {"cust-2/deposit", "cust-2/spare"}
    assert [c.account_id for b in seen for c in b.closures] == ["cust-2/spare"]
    assert any(not b.transactions and not b.postings and not b.accounts for b in seen)


@pytest.mark.parametrize("role", [Role.POSTER, Role.READER, Role.ADMIN])
async def test_other_roles_cannot_stream(node: NodeHandle, role: Role) -> None:
    someone = security.identity({role}, ("**",), name=f"stream-{role.value}")
    async with aio_channel(node.target, someone) as channel:
        code, details = await streams.refusal(channel, streams.request())
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "needs the role" in details and "monitor" in details


async def test_bad_positions_are_refused_naming_the_fault(channel: grpc.aio.Channel) -> None:
    await streams.every_kind_of_record(Client(channel))
    head = len(await streams.collect(channel))
    too_many = [pb.ShardPosition(shard_id=0, sequence=0)] * 1025
    cases = [
        (streams.request({0: -1}), grpc.StatusCode.INVALID_ARGUMENT, "must not be negative"),
        (streams.request({1: 0}), grpc.StatusCode.INVALID_ARGUMENT, "shard 1"),
        (
            pb.StreamJournalRequest(after=[pb.ShardPosition(), pb.ShardPosition(sequence=1)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "a second time",
        ),
        (pb.StreamJournalRequest(after=too_many), grpc.StatusCode.INVALID_ARGUMENT, "at most 1024"),
        (streams.request({0: head + 1}), grpc.StatusCode.FAILED_PRECONDITION, f"block {head}"),
        (
            streams.request({0: head + 1}, follow=True),
            grpc.StatusCode.FAILED_PRECONDITION,
            "beyond",
        ),
    ]
    for message, code, words in cases:
        got, details = await streams.refusal(channel, message)
        assert (got, words in details) == (code, True), (message, got, details)
    garbage = channel.unary_stream(
        "/tally.v1.Ledger/StreamJournal",
        request_serializer=lambda body: body,
        response_deserializer=pb.JournalBlock.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in garbage(b"\xff\xff\xff", timeout=10):
            pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_follower_ends_unavailable_when_the_node_stops(dsn: str) -> None:
    """The stream neither hangs nor holds the node's shutdown: it ends UNAVAILABLE (resume
    from the position kept) well within the servers' 10 s grace."""
    handle = await start_node(dsn)
    try:
        async with security.channel(handle.target) as channel:
            await Client(channel).create(account("@cash"))
            call = pb_grpc.LedgerStub(channel).StreamJournal(
                streams.request(follow=True), timeout=60
            )
            assert len(await streams.take(call, 1)) == 1
            started = asyncio.get_running_loop().time()
            stopping = asyncio.ensure_future(handle.stop())
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await streams.take(call, 1)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value
            await stopping
            assert asyncio.get_running_loop().time() - started < 8.0
    finally:
        await handle.stop()


async def test_a_page_never_skips_a_block_it_cannot_see_yet(dsn: str) -> None:
    """Block 3 visible without block 2 (as a reader could see it if commits ever overlapped):
    the page stops before the gap, and the next read from 1 raises GapError for 2, never
    returning block 3 in its place."""
    connection = await asyncpg.connect(dsn)
    try:
        await store.migrate(connection)
        for sequence in (1, 3):
            await connection.execute(
                "INSERT INTO journal_blocks VALUES ($1, '', '', 1, 0, 1, 0, 0, 0, 0, 0, '', '')",
                sequence,
            )
        page = await journal_stream.read_page(connection, 0, 10, 10.0)
        assert [b.sequence for b in page.blocks] == [1]
        with pytest.raises(journal_stream.GapError) as raised:
            await journal_stream.read_page(connection, 1, 10, 10.0)
        assert raised.value.missing_sequence == 2
        assert (await journal_stream.read_page(connection, 3, 10, 10.0)).blocks == []
    finally:
        await connection.close()


async def test_streams_past_the_limit_are_refused(
    channel: grpc.aio.Channel, node: NodeHandle
) -> None:
    streams_of_node = node.node.streams
    assert streams_of_node is not None
    await Client(channel).create(account("@cash"))
    streams_of_node.stream_count_max = 1  # the limit, made small for the test
    call = pb_grpc.LedgerStub(channel).StreamJournal(streams.request(follow=True), timeout=60)
    try:
        assert len(await streams.take(call, 1)) == 1
        code, details = await streams.refusal(channel, streams.request())
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most 1 streams" in details
    finally:
        call.cancel()


async def test_a_standby_follows_the_stored_journal_off_the_writers_process(
    node: NodeHandle,
) -> None:
    """A second node on the writer's database waits as a standby: it streams the stored
    journal and follows it (polling the stored head, one read for all its followers), so a
    heavy follower costs the writer's process nothing; blocks as the writer's own stream."""
    async with security.channel(node.target) as channel:
        client = Client(channel)
        await client.create(account("@cash"), account("cust-1/d"))
        stored = await streams.collect(channel)
    standby = Node(
        NodeConfig(
            dsn=node.dsn,
            listen="127.0.0.1:0",
            security=security.server_security(),
            durability="single-server",
        )
    )
    port = await standby.start()
    running = asyncio.create_task(standby.run())
    try:
        assert standby.writer is None
        async with security.channel(f"127.0.0.1:{port}") as channel:
            assert await streams.collect(channel) == stored
            stub = pb_grpc.LedgerStub(channel)
            calls = [
                stub.StreamJournal(streams.request({0: 1}, follow=True), timeout=60) for _ in "ab"
            ]
            try:
                async with security.channel(node.target) as writer_channel:
                    client = Client(writer_channel)
                    for n in range(3):
                        item = transfer(f"cust-1/t{n}", "@cash", "cust-1/d", 1)
                        assert await client.codes(item) == [CREATED]
                    followed = [await streams.take(call, 3) for call in calls]
                    at_writer = await streams.collect(writer_channel, {0: 1})
            finally:
                for call in calls:
                    call.cancel()
        assert followed[0] == followed[1] == at_writer
        assert [t.transaction.id for b in followed[0] for t in b.transactions] == [
            f"cust-1/t{n}" for n in range(3)
        ]
        shared = standby.streams
        assert shared is not None
        # From the store, by polling its head: one read an interval for both followers.
        assert shared.memory_block_count == 0 and shared.head_read_count > 0
    finally:
        standby.request_stop()
        await asyncio.wait_for(running, timeout=30)


async def test_followers_at_the_head_share_one_encoding_and_read_nothing_back(
    channel: grpc.aio.Channel, node: NodeHandle
) -> None:
    """Three followers waiting at the head: each commit is taken from the batch the writer
    holds, built and encoded once for all of them; nothing is read back from PostgreSQL."""
    client = Client(channel)
    await client.create(account("@cash"), account("cust-1/d"))
    shared = node.node.streams
    assert shared is not None
    stub = pb_grpc.LedgerStub(channel)
    calls = [stub.StreamJournal(streams.request({0: 1}, follow=True), timeout=60) for _ in "abc"]
    try:
        for n in range(3):
            for _ in range(500):  # every follower open (bounded wait), then at the head
                if shared.open_count == 3:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            reads_before, taken_before = shared.page_read_count, shared.memory_block_count
            assert await client.codes(transfer(f"cust-1/t{n}", "@cash", "cust-1/d", 1)) == [CREATED]
            blocks = [await streams.take(call, 1) for call in calls]
            assert {b[0].sequence for b in blocks} == {n + 2}
            assert shared.page_read_count == reads_before, (n, shared.page_read_count)
            assert shared.memory_block_count == taken_before + 3
            assert shared.encoded_block_count == n + 1  # once per block, not per follower
    finally:
        for call in calls:
            call.cancel()


async def test_what_followers_get_from_memory_is_what_the_store_holds(dsn: str) -> None:
    """Every kind of record (accounts with metadata, transfers, a hold with a timeout and its
    post, a hold voided, a reversal, a closure), followed from the head as each commits, so
    every block comes from the writer's batches; a new node on the same database, with nothing
    in memory, reads the same blocks from the store: byte for byte, and as a scoped monitor
    sees them."""
    monitor = security.identity({Role.MONITOR}, ("cust-2/*",), name="stream-monitor")
    handle = await start_node(dsn)
    try:
        async with (
            security.channel(handle.target) as channel,
            aio_channel(handle.target, monitor) as scoped_channel,
        ):
            shared = handle.node.streams
            assert shared is not None
            every = pb_grpc.LedgerStub(channel).StreamJournal(
                streams.request({0: 0}, follow=True), timeout=60
            )
            scoped = pb_grpc.LedgerStub(scoped_channel).StreamJournal(
                streams.request({0: 0}, follow=True), timeout=60
            )
            for _ in range(500):
                if shared.open_count == 2:
                    break
                await asyncio.sleep(0.01)
            client = Client(channel)
            await streams.every_kind_of_record(client)
            more = [
                transfer("cust-1/held", "cust-1/deposit", "@cash", 5, pending=True,
                         timeout_seconds=3600),
                transfer("cust-2/held", "cust-2/deposit", "@cash", 7, pending=True),
                pb.Transaction(id="cust-2/let-go", code=1, void_pending_id="cust-2/held"),
            ]  # fmt: skip
            for item in more:
                assert await client.codes(item) == [CREATED], item.id
            head = handle.node.writer.head_sequence if handle.node.writer else 0
            followed = await streams.take(every, head)
            followed_scoped = await streams.take(scoped, head)
            every.cancel()
            scoped.cancel()
            assert shared.page_read_count == 0
            assert shared.memory_block_count == 2 * head
    finally:
        await handle.stop()
    fresh = await start_node(dsn)
    try:
        async with (
            security.channel(fresh.target) as channel,
            aio_channel(fresh.target, monitor) as scoped_channel,
        ):
            stored = await streams.collect(channel)
            stored_scoped = await streams.collect(scoped_channel)
    finally:
        await fresh.stop()
    assert len(stored) == head >= 10
    assert [b.SerializeToString() for b in followed] == [b.SerializeToString() for b in stored]
    assert [b.SerializeToString() for b in followed_scoped] == [
        b.SerializeToString() for b in stored_scoped
    ]


async def test_the_writer_keeps_its_last_blocks_within_a_posting_bound(
    channel: grpc.aio.Channel, node: NodeHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batches kept for followers are bounded in postings as well as blocks (large
    batches would otherwise hold hundreds of MB): beyond the bound the oldest go, and a
    follower behind them reads the store; the newest is always kept."""
    monkeypatch.setattr(writer_module, "RECENT_POSTING_COUNT_MAX", 4)
    client = Client(channel)
    await client.create(account("@cash"), account("cust-1/d"))
    writer = node.node.writer
    assert writer is not None
    for n in range(3):  # a block of 2 postings each
        assert await client.codes(transfer(f"cust-1/b{n}", "@cash", "cust-1/d", 1)) == [CREATED]
    head = writer.head_sequence
    kept = writer.recent_blocks(head - 2)
    assert kept is not None and [c.header.sequence for c in kept] == [head - 1, head]
    assert writer.recent_blocks(head - 3) is None  # evicted: read from the store
    assert writer.recent_blocks(head) == []
    big = [transfer(f"cust-1/big{n}", "@cash", "cust-1/d", 1) for n in range(5)]
    assert await client.codes(*big) == [CREATED] * 5  # one block of 10 postings: kept alone
    assert [c.header.sequence for c in writer.recent_blocks(head) or []] == [head + 1]
    blocks = await streams.collect(channel, {0: head - 3})
    assert [b.sequence for b in blocks] == [head - 2, head - 1, head, head + 1]
