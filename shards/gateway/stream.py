"""The gateway's change stream (Ledger.StreamJournal): one node stream per shard, each from that
shard's position, merged as blocks arrive (each says its shard).

Each shard's stream is read by a task of its own into the stream's one queue, at most
SHARD_QUEUE_BLOCK_COUNT_MAX blocks ahead of the client: a slow client is not read from faster
than it reads, so the gateway's node streams wait on gRPC flow control in turn, and the nodes
fall back to reading their journal from PostgreSQL. A shard that fails or cannot be reached is
opened again from the last block queued from it, after a backoff (SHARD_RETRY_DELAY_S doubling
to SHARD_RETRY_DELAY_MAX_S), while the other shards keep flowing; without follow a shard that
fails SHARD_RETRY_COUNT_MAX times in a row ends the stream UNAVAILABLE. A node's refusal that
retrying cannot change (a position beyond its head, DATA_LOSS) ends the stream with its status.
The nodes are asked as the gateway's cluster identity, for every block whole; the caller's
scope is applied here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import grpc

from core.authority import stream_scope
from shards.gateway.cluster import Cluster
from shards.rpc import stream as messages
from shards.rpc.servicer import Unavailable, abort
from shards.security.guard import caller
from tally.v1 import ledger_pb2 as pb

log = logging.getLogger("tally.gateway")

Context = Any  # grpc.aio.ServicerContext

SHARD_QUEUE_BLOCK_COUNT_MAX: Final = 4
SHARD_RETRY_DELAY_S: Final = 0.1
SHARD_RETRY_DELAY_MAX_S: Final = 2.0
SHARD_RETRY_COUNT_MAX: Final = 5
# What a node stream can fail with that another try may not: it was lost, refused for now, or
# the node went away mid-message (gRPC reports some broken streams as INTERNAL).
RETRYABLE: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)


@dataclass(frozen=True, slots=True)
class _Block:
    block: pb.JournalBlock
    credit: asyncio.Semaphore  # its shard's room in the queue, given back when it is taken


@dataclass(frozen=True, slots=True)
class _Done:
    shard_id: int


@dataclass(frozen=True, slots=True)
class _Failed:
    code: grpc.StatusCode
    message: str


_Item = _Block | _Done | _Failed


class GatewayStreams:
    """The StreamJournal streams of one gateway, counted against stream_count_max."""

    def __init__(self, cluster: Cluster, stream_count_max: int) -> None:
        self._cluster = cluster
        self.stream_count_max = stream_count_max
        self._metrics = cluster.metrics
        self._queues: set[asyncio.Queue[_Item]] = set()

    @property
    def open_count(self) -> int:
        return len(self._queues)

    def stop(self) -> None:
        """The gateway is stopping: every stream ends UNAVAILABLE at its next block."""
        for queue in self._queues:
            queue.put_nowait(_Failed(grpc.StatusCode.UNAVAILABLE, "the gateway is stopping"))

    async def serve(
        self, request: pb.StreamJournalRequest, context: Context
    ) -> AsyncIterator[pb.JournalBlock]:
        shard_ids = sorted(self._cluster.map().shard_ids)
        positions, problem = messages.positions_of(request, shard_ids, "this cluster")
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        if self.open_count >= self.stream_count_max:
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this gateway serves at most {self.stream_count_max} streams at once; retry "
                "after a delay",
            )
        in_scope = stream_scope(caller())
        lines = request.encoding == pb.JOURNAL_ENCODING_LINES
        if lines and in_scope is not None:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, messages.LINES_NEED_WHOLE)
        queue: asyncio.Queue[_Item] = asyncio.Queue()  # bounded by each shard's credits
        readers = [
            asyncio.ensure_future(
                self._read_shard(
                    shard_id, positions.get(shard_id, 0), request.follow, queue, request.encoding
                )
            )
            for shard_id in shard_ids
        ]
        self._queues.add(queue)
        self._metrics.streams.open.inc()
        try:
            async for block in _merged(queue, len(shard_ids), context):
                message = messages.in_scope_of(block, in_scope) if in_scope is not None else block
                yield message
                self._metrics.streams.blocks_sent.inc()
        finally:
            self._queues.discard(queue)
            self._metrics.streams.open.dec()
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _read_shard(
        self,
        shard_id: int,
        after: int,
        follow: bool,
        queue: asyncio.Queue[_Item],
        encoding: pb.JournalEncoding.ValueType = pb.JOURNAL_ENCODING_RECORDS,
    ) -> None:
        """One shard's blocks into the queue, in order, each once, from `after`; opened again
        after a retryable failure, from the last block queued."""
        credit = asyncio.Semaphore(SHARD_QUEUE_BLOCK_COUNT_MAX)
        position = after
        failures = 0
        while True:
            try:
                link = self._cluster.link(shard_id)
                # No deadline: a follower is open-ended by design; it ends with its client
                # (cancelled below) or its node, and each node read has its own timeout.
                request = messages_request(shard_id, position, follow, encoding)
                call = link.stub.StreamJournal(request)
                try:
                    async for block in call:
                        if block.shard_id != shard_id or block.sequence != position + 1:
                            disorder = _disorder(shard_id, position, block)
                            queue.put_nowait(_Failed(grpc.StatusCode.DATA_LOSS, disorder))
                            return
                        await credit.acquire()
                        queue.put_nowait(_Block(block, credit))
                        position = block.sequence
                        failures = 0
                finally:
                    call.cancel()  # a no-op once it ended; else the node stops sending
                queue.put_nowait(_Done(shard_id))
                return
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE:
                    message = f"shard {shard_id}: {error.details() or error.code().name}"
                    queue.put_nowait(_Failed(error.code(), message))
                    return
                reason = f"{error.code().name}: {error.details()}"
            except Unavailable as error:  # no endpoint registered (no writer yet)
                reason = str(error)
            failures += 1
            if not follow and failures > SHARD_RETRY_COUNT_MAX:
                queue.put_nowait(_Failed(grpc.StatusCode.UNAVAILABLE, _gave_up(shard_id, reason)))
                return
            self._metrics.stream_shard_retries.labels(str(shard_id)).inc()
            delay_s = min(SHARD_RETRY_DELAY_MAX_S, SHARD_RETRY_DELAY_S * 2 ** (failures - 1))
            log.info("stream from shard %d after %d failed (%s); again in %g s", shard_id,
                     position, reason, delay_s)  # fmt: skip
            await asyncio.sleep(delay_s)


async def _merged(
    queue: asyncio.Queue[_Item], shard_count: int, context: Context
) -> AsyncIterator[pb.JournalBlock]:
    """The queue's blocks as they come, until every shard is done; a failure ends it."""
    done: set[int] = set()
    while len(done) < shard_count:
        item = await queue.get()
        if isinstance(item, _Done):
            done.add(item.shard_id)
        elif isinstance(item, _Failed):
            await abort(context, item.code, item.message)
        else:
            item.credit.release()
            yield item.block


def messages_request(
    shard_id: int,
    position: int,
    follow: bool,
    encoding: pb.JournalEncoding.ValueType = pb.JOURNAL_ENCODING_RECORDS,
) -> pb.StreamJournalRequest:
    return pb.StreamJournalRequest(
        after=[pb.ShardPosition(shard_id=shard_id, sequence=position)],
        follow=follow,
        encoding=encoding,
    )


def _disorder(shard_id: int, position: int, block: pb.JournalBlock) -> str:
    return (
        f"shard {shard_id} sent block {block.sequence} of shard {block.shard_id} after block "
        f"{position}: report it"
    )


def _gave_up(shard_id: int, reason: str) -> str:
    return (
        f"shard {shard_id} could not be streamed after {SHARD_RETRY_COUNT_MAX} retries "
        f"({reason}); resume from the position kept"
    )
