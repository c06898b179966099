"""Automatic batching: concurrent units from many tasks coalesce into one RPC.

A unit is one item or one linked group (kept whole and in order). A unit submitted while
fewer than `in_flight_max` RPCs are out goes at once; the rest wait in the queue and leave
together, as one RPC, as soon as an RPC returns. So a lone caller pays no added latency, and
under load each RPC carries everything that arrived while the others were out: batch economics
without a timer. A batch is bounded in items and in bytes (below the servers' message limit),
and never holds two units with the same id (the ledger would refuse the second as a duplicate
in the batch): the later one waits for the next RPC.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Message = TypeVar("Message")
Send = Callable[[list[Any], float], Awaitable[Sequence[Any]]]


class NotSent(Exception):
    """The unit's attempt timed out before it left in any RPC: nothing of it was applied."""


@dataclass
class Stats:
    """What the client sent: write RPCs and items per method; direct_*: RPCs and items sent
    straight to a node by direct routing (writes, of those counted before, and lookups by id:
    GetAccounts, GetTransactions); attempts beyond the first; routed units and lookups sent
    again to the gateway (fallbacks); and GetRouting calls (routing_loads)."""

    rpcs: dict[str, int] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    direct_rpcs: dict[str, int] = field(default_factory=dict)
    direct_items: dict[str, int] = field(default_factory=dict)
    fallbacks: int = 0
    routing_loads: int = 0

    def count(self, method: str, items: int, direct: bool = False) -> None:
        self.rpcs[method] = self.rpcs.get(method, 0) + 1
        self.items[method] = self.items.get(method, 0) + items
        if direct:
            self.count_direct(method, items)

    def count_direct(self, method: str, items: int) -> None:
        self.direct_rpcs[method] = self.direct_rpcs.get(method, 0) + 1
        self.direct_items[method] = self.direct_items.get(method, 0) + items


@dataclass
class _Unit(Generic[Message]):
    messages: list[Message]
    ids: frozenset[str]
    size: int
    deadline: float
    future: asyncio.Future[Sequence[Any]]
    sent: bool = False


class Batcher(Generic[Message]):
    def __init__(
        self,
        method: str,
        send: Send,
        stats: Stats,
        items_max: int,
        bytes_max: int,
        in_flight_max: int,
        *,
        direct: bool = False,
    ) -> None:
        self._method = method
        self._direct = direct
        self._send = send
        self._stats = stats
        self._items_max = items_max
        self._bytes_max = bytes_max
        self._in_flight_max = in_flight_max
        self._queue: list[_Unit[Message]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(
        self, messages: list[Message], ids: Sequence[str], size: int, timeout_s: float
    ) -> Sequence[Any]:
        """The unit's item results, in order; the RPC's AioRpcError as it came; NotSent or
        TimeoutError (sent, no answer yet) when timeout_s passes first."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Sequence[Any]] = loop.create_future()
        future.add_done_callback(_retrieve)
        unit = _Unit(messages, frozenset(ids), size, loop.time() + timeout_s, future)
        self._queue.append(unit)
        self._kick()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            if not unit.sent:
                self._queue.remove(unit)
                raise NotSent() from None
            raise

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _kick(self) -> None:
        while self._queue and self._in_flight < self._in_flight_max:
            batch = self._take()
            self._in_flight += 1
            task = asyncio.create_task(self._call(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Unit[Message]]:
        """The next batch: units from the queue's head, in order, while they fit the bounds
        and bring no id already in it. It stops at the first that cannot go, so a unit never
        overtakes one queued before it (a capture never leaves before its hold)."""
        taken: list[_Unit[Message]] = []
        ids: set[str] = set()
        items = size = 0
        for unit in self._queue:
            fits = items + len(unit.messages) <= self._items_max and (
                size + unit.size <= self._bytes_max
            )
            if taken and (not fits or not ids.isdisjoint(unit.ids)):
                break
            taken.append(unit)
            ids |= unit.ids
            items += len(unit.messages)
            size += unit.size
        del self._queue[: len(taken)]
        for unit in taken:
            unit.sent = True
        return taken

    async def _call(self, batch: list[_Unit[Message]]) -> None:
        loop = asyncio.get_running_loop()
        messages = [m for unit in batch for m in unit.messages]
        try:
            timeout_s = max(unit.deadline for unit in batch) - loop.time()
            self._stats.count(self._method, len(messages), self._direct)
            results = await self._send(messages, max(timeout_s, 0.001))
            if len(results) != len(messages):
                raise RuntimeError(f"{len(results)} results for {len(messages)} items")
            start = 0
            for unit in batch:
                end = start + len(unit.messages)
                if not unit.future.done():
                    unit.future.set_result(results[start:end])
                start = end
        except BaseException as error:
            for unit in batch:
                if not unit.future.done():
                    unit.future.set_exception(error)
            if isinstance(error, asyncio.CancelledError):
                raise
        finally:
            self._in_flight -= 1
            self._kick()


def _retrieve(future: asyncio.Future[Any]) -> None:
    """A caller that gave up leaves its future unread: mark its exception retrieved."""
    if not future.cancelled():
        future.exception()
