"""Reading the change stream (Ledger.StreamJournal) in tests: requests, collecting blocks, and
checking that a run of blocks is each shard's journal, gap-free and without duplicates."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import grpc

from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc
from tests.support.helpers import Client, account, transfer

STREAM_TIMEOUT_S = 60.0
CREATED = pb.RESULT_CODE_CREATED
ACCOUNTS = ("@cash", "cust-1/deposit", "cust-1/loan", "cust-2/deposit", "cust-2/spare")


def request(
    after: Mapping[int, int] | None = None,
    follow: bool = False,
    encoding: pb.JournalEncoding.ValueType = pb.JOURNAL_ENCODING_UNSPECIFIED,
) -> pb.StreamJournalRequest:
    positions = [pb.ShardPosition(shard_id=s, sequence=q) for s, q in (after or {}).items()]
    return pb.StreamJournalRequest(after=positions, follow=follow, encoding=encoding)


async def collect(
    channel: grpc.aio.Channel,
    after: Mapping[int, int] | None = None,
    encoding: pb.JournalEncoding.ValueType = pb.JOURNAL_ENCODING_UNSPECIFIED,
) -> list[pb.JournalBlock]:
    """Every block after the position up to the head (follow off)."""
    stub = pb_grpc.LedgerStub(channel)
    call = stub.StreamJournal(request(after, encoding=encoding), timeout=STREAM_TIMEOUT_S)
    return [b async for b in call]


async def refusal(
    channel: grpc.aio.Channel, message: pb.StreamJournalRequest
) -> tuple[grpc.StatusCode, str]:
    """The status a stream ends with, and its details (a stream that ends: not a follower
    that is served). Blocks sent first are read and dropped: through the gateway another
    shard's blocks may come before one shard's refusal."""
    stub = pb_grpc.LedgerStub(channel)
    try:
        async for _ in stub.StreamJournal(message, timeout=STREAM_TIMEOUT_S):
            pass
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def take(
    call: object, count: int, timeout_s: float = STREAM_TIMEOUT_S
) -> list[pb.JournalBlock]:
    """The next `count` blocks of an open stream call."""

    async def read() -> list[pb.JournalBlock]:
        blocks = []
        while len(blocks) < count:
            block = await call.read()  # type: ignore[attr-defined]
            assert block is not grpc.aio.EOF, f"the stream ended after {len(blocks)} blocks"
            blocks.append(block)
        return blocks

    return await asyncio.wait_for(read(), timeout=timeout_s)


def check_contiguous(blocks: Iterable[pb.JournalBlock], after: Mapping[int, int]) -> dict[int, int]:
    """Each shard's blocks are after[shard] + 1, + 2, ... in order, each once, and chained by
    hash; returns the position reached."""
    position = dict(after)
    last_hash: dict[int, bytes] = {}
    for block in blocks:
        expected = position.get(block.shard_id, 0) + 1
        assert block.sequence == expected, (block.shard_id, block.sequence, expected)
        if block.shard_id in last_hash:
            assert block.previous_hash == last_hash[block.shard_id], block.sequence
        last_hash[block.shard_id] = block.hash
        position[block.shard_id] = block.sequence
    return position


async def every_kind_of_record(client: Client) -> list[str]:
    """A journal with every kind of record: accounts (one with metadata), transfers, a hold
    and its post, a reversal, a closure. Returns the transaction ids, in order."""
    await client.create(
        *(
            account(a, metadata={"branch": "north"} if a == "cust-1/loan" else None)
            for a in ACCOUNTS
        )
    )
    posted = [
        transfer("cust-1/fund", "@cash", "cust-1/deposit", 1_000),
        transfer("cust-2/fund", "@cash", "cust-2/deposit", 500),
        transfer("cust-1/hold", "cust-1/deposit", "cust-1/loan", 300, pending=True),
        pb.Transaction(id="cust-1/capture", code=1, post_pending_id="cust-1/hold"),
        transfer("cust-2/pay", "cust-2/deposit", "cust-1/loan", 70),
        pb.Transaction(id="cust-2/undo", code=1, reverses_id="cust-2/pay"),
    ]
    for item in posted:  # one block each
        assert await client.codes(item) == [CREATED], item.id
    closed = await client.stub.CloseAccounts(
        pb.CloseAccountsRequest(accounts=[pb.CloseAccount(account_id="cust-2/spare")]), timeout=30
    )
    assert [r.code for r in closed.results] == [CREATED]
    return [item.id for item in posted]
