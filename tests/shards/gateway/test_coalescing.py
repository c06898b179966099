"""The gateway's coalescing of small writes per shard (shards/gateway/links.py), on its own:
which requests leave together, and when. The shard call is a function that records each call's
items and answers when the test lets it (the calls through a real cluster are
tests/shards/gateway/test_cluster.py's)."""

from __future__ import annotations

import asyncio
from typing import Any

from shards.gateway.links import _Coalescer
from tally.v1 import ledger_pb2 as pb


class Shard:
    """A shard call that records what each call carried and answers when released."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self._released: list[asyncio.Event] = []

    async def call(self, items: list[Any]) -> list[pb.ItemResult]:
        self.calls.append([item.id for item in items])
        released = asyncio.Event()
        self._released.append(released)
        await released.wait()
        return [pb.ItemResult(code=pb.RESULT_CODE_CREATED) for _ in items]

    def release(self) -> None:
        for event in self._released:
            event.set()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def coalescer(shard: Shard, wait_s: float, item_count_max: int = 8190) -> _Coalescer:
    return _Coalescer(shard.call, 1, item_count_max, _id, coalesce_wait_s=wait_s)


def _id(item: pb.Transaction) -> str:
    return str(item.id)


def items(*names: str) -> list[pb.Transaction]:
    return [pb.Transaction(id=name) for name in names]


async def test_a_wait_gathers_the_company_the_last_call_carried() -> None:
    shard = Shard()
    queue = coalescer(shard, wait_s=60.0)  # never reached: each call leaves on its company
    first = asyncio.ensure_future(queue.submit(items("r1")))
    await settle()
    assert shard.calls == [["r1"]]  # a lone request leaves at once, wait or not
    behind = [asyncio.ensure_future(queue.submit(items(f"r{n}"))) for n in (2, 3, 4, 5)]
    await settle()
    shard.release()
    await settle()
    assert shard.calls[1] == ["r2", "r3", "r4", "r5"]  # queued behind the call: at once
    shard.release()
    await asyncio.gather(first, *behind)
    # The four come back, one at a time: the call waits for all four.
    again = []
    for n in (6, 7, 8):
        again.append(asyncio.ensure_future(queue.submit(items(f"r{n}"))))
        await settle()
        assert len(shard.calls) == 2
    again.append(asyncio.ensure_future(queue.submit(items("r9"))))
    await settle()
    assert shard.calls[2] == ["r6", "r7", "r8", "r9"]
    shard.release()
    assert [r[0].code for r in await asyncio.gather(*again)] == [pb.RESULT_CODE_CREATED] * 4


async def test_company_that_does_not_come_is_waited_for_once_within_the_bound() -> None:
    shard = Shard()
    queue = coalescer(shard, wait_s=0.05)
    first = asyncio.ensure_future(queue.submit(items("a")))
    await settle()
    behind = [asyncio.ensure_future(queue.submit(items(f"b{n}"))) for n in range(3)]
    await settle()
    shard.release()
    await settle()
    shard.release()
    await asyncio.gather(first, *behind)
    assert shard.calls == [["a"], ["b0", "b1", "b2"]]
    # One caller is left: it waits for the three it expects, at most the bound, then leaves.
    alone = asyncio.ensure_future(queue.submit(items("c")))
    await settle()
    assert len(shard.calls) == 2
    for _ in range(100):
        await asyncio.sleep(0.01)
        if len(shard.calls) == 3:
            break
    assert shard.calls[2] == ["c"]
    shard.release()
    await alone
    # It now expects one: the next lone request leaves at once.
    last = asyncio.ensure_future(queue.submit(items("d")))
    await settle()
    assert shard.calls[3] == ["d"]
    shard.release()
    await last


async def test_without_a_wait_the_first_of_the_company_leaves_alone() -> None:
    shard = Shard()
    queue = coalescer(shard, wait_s=0.0)
    first = asyncio.ensure_future(queue.submit(items("r1")))
    await settle()
    behind = [asyncio.ensure_future(queue.submit(items(f"r{n}"))) for n in (2, 3, 4)]
    await settle()
    shard.release()
    await settle()
    shard.release()
    await asyncio.gather(first, *behind)
    back = asyncio.ensure_future(queue.submit(items("r5")))
    await settle()
    assert shard.calls == [["r1"], ["r2", "r3", "r4"], ["r5"]]
    shard.release()
    await back


async def test_a_full_call_does_not_wait_for_company() -> None:
    shard = Shard()
    queue = coalescer(shard, wait_s=60.0, item_count_max=4)
    first = asyncio.ensure_future(queue.submit(items("r1")))
    await settle()
    behind = [asyncio.ensure_future(queue.submit(items(name))) for name in "abc"]
    await settle()
    shard.release()
    await settle()
    shard.release()
    await asyncio.gather(first, *behind)
    assert shard.calls == [["r1"], ["a", "b", "c"]]
    # One request where three are expected, but of four items: the call is full, it leaves.
    full = asyncio.ensure_future(queue.submit(items(*"wxyz")))
    await settle()
    assert shard.calls[2] == ["w", "x", "y", "z"]
    shard.release()
    assert len(await full) == 4
