"""The gateway's cross-shard calls stay below the message limit (issue 12: every call bounded in
bytes): a client request just within the limit carries, in each shard's Prepare or Commit, its
pieces with their clearing legs, attempts and digests, which can weigh more than the request."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from core import limits
from shards.crossshard.coordinator import split_by_bytes
from tally.v1 import ledger_pb2 as pb
from tally.v1 import shard_pb2 as spb
from tests.support import security
from tests.support.cluster import Cluster, customers_on_distinct_shards
from tests.support.helpers import Client, account, transfer


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[Client]:
    async with security.channel(cluster.target) as channel:
        yield Client(channel)


def _item(n: int, linked: bool, metadata_bytes: int = 1_000) -> spb.PrepareItem:
    piece = transfer(f"k/t{n}", "k/a", "@clearing/USD", 1, linked=linked)
    piece.metadata["m"] = "x" * metadata_bytes
    return spb.PrepareItem(piece=piece, attempt="a1", coordinator_shard=0)


def test_a_request_is_cut_in_order_within_the_bound_and_never_inside_a_chain() -> None:
    # Chains of 1, 3, 1, 2 and 1 pieces (linked on all but a chain's last).
    shape = [False, True, True, False, False, True, False, False]
    request = spb.PrepareRequest(items=[_item(n, linked) for n, linked in enumerate(shape)])
    one = _item(0, False).ByteSize()
    parts = split_by_bytes(request, 3 * one + 30)
    assert [i.piece.id for p in parts for i in p.items] == [i.piece.id for i in request.items]
    assert all(p.ByteSize() <= 3 * one + 30 for p in parts)
    assert len(parts) > 1
    for part in parts:
        assert not part.items[-1].piece.linked  # every part ends where a chain ends
    assert split_by_bytes(request, request.ByteSize()) == [request]  # within: as it is


def test_a_chain_larger_than_the_bound_travels_whole_and_alone() -> None:
    request = spb.PrepareRequest(
        items=[_item(0, True), _item(1, True), _item(2, False), _item(3, False)]
    )
    parts = split_by_bytes(request, _item(0, False).ByteSize() + 10)
    assert [[i.piece.id for i in p.items] for p in parts] == [
        ["k/t0", "k/t1", "k/t2"],
        ["k/t3"],
    ]


async def test_a_cross_shard_request_near_the_message_limit_commits(client: Client) -> None:
    """About 16 MiB of cross-shard transfers with the largest metadata allowed: each shard's
    Prepare and the coordinator's Commit would be over the message limit in one call (the
    request failed, again on every retry); cut into calls within it, every transfer commits."""
    payer_key, payee_key = customers_on_distinct_shards(2)
    payer, payee = f"{payer_key}/dep", f"{payee_key}/dep"
    assert await client.create(account(payer), account(payee)) == [pb.RESULT_CODE_CREATED] * 2
    metadata = {
        f"{n:02d}".ljust(limits.metadata_key_length_max, "k"): "v"
        * limits.metadata_value_length_max
        for n in range(limits.metadata_entry_count_max)
    }

    def one(n: int) -> pb.Transaction:
        message = transfer(f"{payer_key}/big-{n}", payer, payee, 1)
        message.metadata.update(metadata)
        return message

    item_bytes = pb.PostTransactionsRequest(transactions=[one(0)]).ByteSize()
    count = (limits.message_size_max_bytes - 128 * 1024) // item_bytes
    request = pb.PostTransactionsRequest(transactions=[one(n) for n in range(count)])
    assert limits.message_size_max_bytes - 256 * 1024 < request.ByteSize()
    assert request.ByteSize() < limits.message_size_max_bytes
    response = await client.stub.PostTransactions(request, timeout=120)
    codes = {r.code for r in response.results}
    assert codes == {pb.RESULT_CODE_CREATED}, [r.message for r in response.results[:3]]
    assert (await client.balance(payee)).credits_posted == count
