"""A request larger than the writer's batch (--batch-item-count-max) is split where its linked
groups end, into consecutive batches: no batch exceeds the bound but a single linked group
longer than it, and each linked group stays all-or-nothing in one batch (issue 12: the writer
never split a request, so one request, or a Commit's two records per reversal, made a batch of
any size up to twice the request limit)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from shards.node.writer import WriterConfig, split_request
from tests.support import security
from tests.support.helpers import Client, account, names, start_node, transfer

BATCH_MAX = 10


@dataclass(frozen=True)
class _Item:
    linked: bool


def _shape(parts: list[object]) -> list[int]:
    return [len(part) for part in parts]  # type: ignore[arg-type]


def test_split_request_cuts_only_where_linked_groups_end() -> None:
    loose = [_Item(False)] * 25
    assert _shape(split_request(loose, 10)) == [10, 10, 5]
    assert split_request(loose[:10], 10) == [loose[:10]]  # one batch's worth: as it is
    group = [_Item(True)] * 3 + [_Item(False)]  # positions 8..11
    assert _shape(split_request([_Item(False)] * 8 + group + [_Item(False)] * 8, 10)) == [8, 10, 2]
    long_group = [_Item(True)] * 13 + [_Item(False)]  # longer than a batch: stays whole
    assert _shape(split_request([_Item(False)] * 2 + long_group + [_Item(False)] * 3, 10)) == [
        2,
        14,
        3,
    ]


async def test_a_request_larger_than_a_batch_commits_as_several_bounded_blocks(dsn: str) -> None:
    handle = await start_node(dsn, writer=WriterConfig(batch_item_count_max=BATCH_MAX))
    try:
        async with security.channel(handle.target) as channel:
            client = Client(channel)
            await client.create(account("@cash"), account("c/d", no_overdraft=True))
            items = [transfer(f"t{n}", "@cash", "c/d", 1) for n in range(35)]
            for n in (8, 9, 10):  # a linked group across the first cut: 8..11
                items[n].linked = True
            for n in range(20, 33):  # a group longer than a batch: 20..33
                items[n].linked = True
            items[25] = transfer("t25", "c/d", "@cash", 1_000, linked=True)  # fails the group
            results = await client.post(*items)
    finally:
        await handle.stop()
    codes = names([r.code for r in results])
    assert codes[:20] == ["RESULT_CODE_CREATED"] * 20 and codes[34] == "RESULT_CODE_CREATED"
    assert codes[25] == "RESULT_CODE_INSUFFICIENT_FUNDS"
    assert set(codes[20:25] + codes[26:34]) == {"RESULT_CODE_LINKED_ITEM_FAILED"}
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT id, block_sequence FROM transactions WHERE id LIKE 't%'"
        )
        counts = await connection.fetch(
            "SELECT transaction_count FROM journal_blocks WHERE sequence = ANY($1::bigint[])",
            list({row["block_sequence"] for row in rows}),
        )
    finally:
        await connection.close()
    block_of = {row["id"]: row["block_sequence"] for row in rows}
    assert len(block_of) == 21  # 0..19 and 34
    assert len({block_of[f"t{n}"] for n in (8, 9, 10, 11)}) == 1
    assert max(row["transaction_count"] for row in counts) <= BATCH_MAX
    assert len(counts) >= 3
