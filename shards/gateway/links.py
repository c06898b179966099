"""A gateway's link to one shard node: a channel, and coalescing of concurrent small writes.

While a call to the shard is in flight, further sub-batches queue; they leave together as one
call when a slot frees (up to inflight_call_count_max calls at once), so many small client
requests become few large shard batches. With a coalescing wait (coalesce_wait_s > 0) a request
that finds a free slot waits, at most that long, for as many requests to queue as the last call
carried, unless the call is full already. Under a closed loop of callers (each sends its next
request when the last is answered) those are the callers the last call answered, coming back:
without the wait the first of them leaves alone as soon as it arrives, the call slot is taken,
and the shard commits a few items a block while the rest queue behind; with it they leave
together. A lone caller never waits (its last call carried one request), and a load that fell
waits once, for the bound, then expects what came. Each client request's linked groups are
closed within it (the gateway checks), so concatenating requests never joins two groups.

A call is full at limits.batch_item_count_max items or at CALL_SIZE_MAX_BYTES, its encoded size
measured from the items it carries: bounded in items alone, requests that fit the message limit
one by one coalesced into a call beyond it, which the shard refused, failing every request in
it, again on every retry. A request larger than that on its own leaves alone.

Metrics (when given): per call, the requests and items it carried, its oldest request's wait
and its duration; calls in flight and requests queued are plain ints read at scrape time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from core import limits
from shards.gateway.metrics import GatewayMetrics, ShardCallMetrics
from shards.rpc import outcomes
from shards.security.credentials import ClientSecurity, aio_channel
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc

log = logging.getLogger("tally.links")

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", limits.message_size_max_bytes),
    ("grpc.max_send_message_length", limits.message_size_max_bytes),
    # A restarted shard must be found again in seconds, not after gRPC's default backoff
    # (which grows to two minutes).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

# A coalesced call's encoded request stays below the gRPC message limit, with room for what the
# transport counts beside the message.
CALL_SIZE_MAX_BYTES = limits.message_size_max_bytes - 64 * 1024

Results = list[pb.ItemResult]
# The write methods, as their metrics name them.
POST = "PostTransactions"
CREATE = "CreateAccounts"
CLOSE = "CloseAccounts"
# A client request's items, its answer, when it was queued (time.perf_counter()) and the
# items' encoded size in a request.
Entry = tuple[list[Any], "asyncio.Future[Results]", float, int]


def encoded_size_bytes(items: list[Any]) -> int:
    """The bytes items take as the repeated field of a request: each its tag (one byte: field
    numbers below 16), its length as a varint, and itself."""
    size = 0
    for item in items:
        length = item.ByteSize()
        size += 1 + _varint_size(length) + length
    return size


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


class _Coalescer:
    """Queue of (items, future) for one write RPC of one shard."""

    def __init__(
        self,
        call: Callable[[list[Any]], Any],
        inflight_call_count_max: int,
        item_count_max: int,
        id_of: Callable[[Any], str],
        metrics: ShardCallMetrics | None = None,
        coalesce_wait_s: float = 0.0,
        size_max_bytes: int = CALL_SIZE_MAX_BYTES,
    ) -> None:
        self._call = call
        self._id_of = id_of
        self._queue: list[Entry] = []
        self._queued_item_count = 0
        self._queued_size_bytes = 0
        self._size_max_bytes = size_max_bytes
        self._inflight = 0
        self._inflight_max = inflight_call_count_max
        self._item_count_max = item_count_max
        self._tasks: set[asyncio.Task[None]] = set()
        self._metrics = metrics
        self._wait_s = coalesce_wait_s
        self._timer: asyncio.TimerHandle | None = None
        # Requests the last call carried: with a wait, the company a request waits for.
        self._expected_request_count = 1

    @property
    def inflight_call_count(self) -> int:
        return self._inflight

    @property
    def queued_request_count(self) -> int:
        return len(self._queue)

    @property
    def expected_request_count(self) -> int:
        """Requests the last call carried: what a request waits for, with a wait."""
        return self._expected_request_count

    async def submit(self, items: list[Any]) -> Results:
        future: asyncio.Future[Results] = asyncio.get_running_loop().create_future()
        size_bytes = encoded_size_bytes(items)
        self._queue.append((items, future, time.perf_counter(), size_bytes))
        self._queued_item_count += len(items)
        self._queued_size_bytes += size_bytes
        self._pump()
        return await future

    def _pump(self) -> None:
        while self._queue and self._inflight < self._inflight_max:
            if self._wait_s and not self._queued_full() and not self._company_came():
                waited_s = time.perf_counter() - self._queue[0][2]
                if waited_s < self._wait_s:  # the oldest may wait a little longer for company
                    if self._timer is None:
                        loop = asyncio.get_running_loop()
                        self._timer = loop.call_later(self._wait_s - waited_s, self._waited)
                    return
            if self._timer is not None:  # leaving now: the oldest's wait is over
                self._timer.cancel()
                self._timer = None
            group = self._take()
            self._inflight += 1
            task = asyncio.ensure_future(self._send(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _queued_full(self) -> bool:
        """What queues fills a call already: no reason to wait for more."""
        return (
            self._queued_item_count >= self._item_count_max
            or self._queued_size_bytes >= self._size_max_bytes
        )

    def _company_came(self) -> bool:
        """As many requests queue as the last call carried: the callers whose answers it
        carried have come back (a closed loop), or the load is as large as it was."""
        return len(self._queue) >= self._expected_request_count

    def _waited(self) -> None:
        self._timer = None
        self._pump()

    def _take(self) -> list[Entry]:
        """The oldest request, and after it the next ones while they fit (in items and in
        bytes) and share no id with those taken: the same id twice in one shard batch would be
        DUPLICATE_ID_IN_BATCH, where two separate requests get CREATED and REPLAYED."""
        group = [self._queue.pop(0)]
        count = len(group[0][0])
        size_bytes = group[0][3]
        ids = {self._id_of(item) for item in group[0][0]}
        while self._queue and self._fits(count, size_bytes, self._queue[0]):
            next_ids = {self._id_of(item) for item in self._queue[0][0]}
            if next_ids & ids:
                break
            entry = self._queue.pop(0)
            group.append(entry)
            count += len(entry[0])
            size_bytes += entry[3]
            ids |= next_ids
        self._queued_item_count -= count
        self._queued_size_bytes -= size_bytes
        self._expected_request_count = len(group)
        return group

    def _fits(self, count: int, size_bytes: int, entry: Entry) -> bool:
        return (
            count + len(entry[0]) <= self._item_count_max
            and size_bytes + entry[3] <= self._size_max_bytes
        )

    async def _send(self, group: list[Entry]) -> None:
        try:
            merged = [item for items, _, _, _ in group for item in items]
            started = time.perf_counter()
            failed = False
            try:
                results = list(await self._call(merged))
            except grpc.aio.AioRpcError as error:
                log.warning("shard call failed: %s %s", error.code().name, error.details())
                results = await self._learn(merged, error)
                failed = True
            else:
                if any(r.code == pb.RESULT_CODE_OUTCOME_UNKNOWN for r in results):
                    results = await self._learn_unknown(merged, results)
            if self._metrics is not None:
                self._metrics.observe(
                    len(group),
                    len(merged),
                    started - group[0][2],
                    time.perf_counter() - started,
                    failed,
                )
            offset = 0
            for items, future, _, _ in group:
                if not future.done():
                    future.set_result(results[offset : offset + len(items)])
                offset += len(items)
        finally:
            self._inflight -= 1
            self._pump()

    async def _learn(self, merged: list[Any], error: grpc.aio.AioRpcError) -> Results:
        """A call that failed: nothing applied if it never arrived; else ask the shard by
        sending the same items again (same ids: the shard's writer answers REPLAYED for what
        landed, after the first call's items, which it serialises before these), and answer
        OUTCOME_UNKNOWN if that fails too."""
        if not outcomes.may_have_applied(error):
            return [outcomes.unavailable(error)] * len(merged)
        try:
            return list(await self._call(merged))
        except grpc.aio.AioRpcError as again:
            log.warning("asking the shard again failed: %s", again.code().name)
            return [outcomes.outcome_unknown(error, "the shard did not answer")] * len(merged)

    async def _learn_unknown(self, merged: list[Any], results: Results) -> Results:
        """Items the shard itself answered OUTCOME_UNKNOWN (its commit's answer was lost): sent
        again once, after its writer re-read its journal, they answer the truth."""
        unknown = [n for n, r in enumerate(results) if r.code == pb.RESULT_CODE_OUTCOME_UNKNOWN]
        try:
            again = list(await self._call([merged[n] for n in unknown]))
        except grpc.aio.AioRpcError as error:
            log.warning("asking the shard again failed: %s", error.code().name)
            return results
        for n, result in zip(unknown, again, strict=True):
            results[n] = result
        return results

    async def close(self) -> None:
        if self._timer is not None:  # nothing may stay queued: send what waits now
            self._timer.cancel()
            self._timer = None
            self._wait_s = 0.0
            self._pump()
        for task in list(self._tasks):
            await task


def _transaction_id(item: pb.Transaction) -> str:
    return str(item.id)


def _account_id(item: pb.Account) -> str:
    return str(item.id)


def _closed_id(item: pb.CloseAccount) -> str:
    return str(item.account_id)


class ShardLink:
    def __init__(
        self,
        shard_id: int,
        endpoint: str,
        call_timeout_s: float,
        inflight_call_count_max: int = 1,
        metrics: GatewayMetrics | None = None,
        coalesce_wait_s: float = 0.0,
        security: ClientSecurity | None = None,
    ) -> None:
        self.shard_id = shard_id
        self.endpoint = endpoint
        if security is None:
            raise ValueError("a link to a shard is mutual TLS: give the gateway's credentials")
        # The node's internal listener, as a cluster identity (the gateway's certificate).
        self.channel = aio_channel(endpoint, security, CHANNEL_OPTIONS)
        self.stub = pb_grpc.LedgerStub(self.channel)
        self.call_timeout_s = call_timeout_s
        item_count_max = limits.batch_item_count_max
        inflight = inflight_call_count_max

        def calls(method: str) -> ShardCallMetrics | None:
            return metrics.shard_calls(shard_id, method) if metrics is not None else None

        self._post = _Coalescer(
            self._post_call, inflight, item_count_max, _transaction_id, calls(POST), coalesce_wait_s
        )
        self._create = _Coalescer(
            self._create_call, inflight, item_count_max, _account_id, calls(CREATE), coalesce_wait_s
        )
        self._close = _Coalescer(
            self._close_call, inflight, item_count_max, _closed_id, calls(CLOSE), coalesce_wait_s
        )

    def call_queues(self) -> tuple[tuple[str, _Coalescer], ...]:
        """Each write method's coalescing queue (for the gateway's metrics)."""
        return ((POST, self._post), (CREATE, self._create), (CLOSE, self._close))

    async def _post_call(self, items: list[pb.Transaction]) -> Any:
        response = await self.stub.PostTransactions(
            pb.PostTransactionsRequest(transactions=items), timeout=self.call_timeout_s
        )
        return response.results

    async def _create_call(self, items: list[pb.Account]) -> Any:
        response = await self.stub.CreateAccounts(
            pb.CreateAccountsRequest(accounts=items), timeout=self.call_timeout_s
        )
        return response.results

    async def _close_call(self, items: list[pb.CloseAccount]) -> Any:
        response = await self.stub.CloseAccounts(
            pb.CloseAccountsRequest(accounts=items), timeout=self.call_timeout_s
        )
        return response.results

    async def post(self, items: list[pb.Transaction]) -> Results:
        return await self._post.submit(items)

    async def create(self, items: list[pb.Account]) -> Results:
        return await self._create.submit(items)

    async def close_accounts(self, items: list[pb.CloseAccount]) -> Results:
        return await self._close.submit(items)

    async def close(self) -> None:
        for coalescer in (self._post, self._create, self._close):
            await coalescer.close()
        await self.channel.close()
