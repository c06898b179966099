"""A shard node's change stream (Ledger.StreamJournal): its journal from a position, read from
PostgreSQL a page at a time, then (follow) each block as the writer commits it.

The writer's part is one event it sets after each commit (Writer.head_advanced) and a reference
to each of its last RECENT_BLOCK_COUNT_MAX batches (Writer.recent_blocks): a stream waits on the
event only once it has sent everything up to the head, and takes the new blocks from those
batches (core.store.stream.committed_block: the same records the store read would give), so a
follower at the head reads nothing back from PostgreSQL. A stream further behind reads pages
from the store through the read pool. Either way each block is built into its message and
encoded once, for every stream that sends it (ENCODED_BLOCK_COUNT_MAX kept). So a slow reader
costs the writer nothing: the reader falls behind, its gRPC send waits on the client's
flow-control window, and it catches up from the store; nothing is buffered for it but the page
it is sending.

A standby (a node of the shard that does not hold the writer lease) follows too, from the
store alone: it reads the stored head every STORE_POLL_INTERVAL_S (one query for all its
followers) and the new blocks as pages. Streams served there cost the writer's process nothing
(docs/design.md, "The change stream": where a heavy follower such as the relay should read).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc

from core.authority import stream_scope
from core.invariant import InvariantError
from core.model import AccountSpec
from core.store import stream as journal_stream
from shards.node.ledger_service import NodeView, storage_answers
from shards.node.writer import CommittedBlock, Writer, WriterState
from shards.rpc import stream as messages
from shards.rpc.metrics import StreamMetrics
from shards.rpc.servicer import abort
from shards.security.guard import caller
from tally.v1 import ledger_pb2 as pb

Context = Any  # grpc.aio.ServicerContext

# A block after the position seen without it is read again this often, this many times, before
# the stream ends with DATA_LOSS (sequences are contiguous and a block's rows commit with it:
# a gap that lasts is a journal missing a block).
GAP_RETRY_COUNT_MAX: Final = 100
GAP_RETRY_INTERVAL_S: Final = 0.01
# A following stream looks at the head at least this often even without a commit.
FOLLOW_CHECK_INTERVAL_S: Final = 1.0
# A stream following at a standby (a node of the shard without its writer lease) reads the
# stored head this often: a block reaches it within about this long of its commit.
STORE_POLL_INTERVAL_S: Final = 0.05
# Pages kept to share between streams asking for the same one (followers at the head all ask
# for the block just committed): one read per commit, not one per follower.
SHARED_PAGE_COUNT_MAX: Final = 8
# Blocks kept built and encoded, to send to every stream at the same place (followers at the
# head all send the block just committed): at most this many, and (beyond the newest) at most
# this many bytes of them in all.
ENCODED_BLOCK_COUNT_MAX: Final = 64
ENCODED_SIZE_MAX_BYTES: Final = 32 * 1024 * 1024


class _Encoded:
    """A block's message, its encoding (made on first need) and why it cannot be sent."""

    __slots__ = ("_data", "message", "problem", "size")

    def __init__(self, message: pb.JournalBlock) -> None:
        self.message = message
        self.size = message.ByteSize()
        self.problem = messages.oversized(message, self.size)
        self._data: bytes | None = None

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = self.message.SerializeToString()
        return self._data


# Where a block to send comes from: a page read from the store, or a block its writer holds.
_Source = tuple[journal_stream.StreamedBlock, dict[str, AccountSpec]] | CommittedBlock


class JournalStreams:
    """The StreamJournal streams of one node, counted against limits.stream_count_max."""

    def __init__(
        self,
        node: NodeView,
        read_timeout_s: float,
        metrics: StreamMetrics | None,
        stream_count_max: int,
        cold: journal_stream.ColdBlocks | None = None,
    ) -> None:
        self._node = node
        # Where blocks before the cold horizon are read (the node's ColdHistory; None: a
        # stream from before it is refused, FAILED_PRECONDITION).
        self._cold = cold
        self._read_timeout_s = read_timeout_s
        self._metrics = metrics
        self.stream_count_max = stream_count_max
        self.open_count = 0
        self._stopping = asyncio.Event()
        # (position, head) -> the read of that page, running or done (never a failed one).
        self._pages: OrderedDict[tuple[int, int], asyncio.Future[journal_stream.Page]] = (
            OrderedDict()
        )
        self.page_read_count = 0
        self.memory_block_count = 0  # blocks taken from the writer's batches, not the store
        self._encoded: OrderedDict[int, _Encoded] = OrderedDict()
        self._built_count = 0
        self._encoded_size = 0
        # The same for the LINES encoding: each block's message, serialised.
        self._lines: OrderedDict[int, tuple[bytes, str]] = OrderedDict()
        self._lines_size = 0
        self._head_read: asyncio.Future[int] | None = None
        self._head_read_at = 0.0
        self.head_read_count = 0

    def stop(self) -> None:
        """The node is stopping: every stream ends (UNAVAILABLE) at its next block or wait, so
        none holds the server's shutdown for its grace period."""
        self._stopping.set()

    async def serve(
        self, request: pb.StreamJournalRequest, context: Context
    ) -> AsyncIterator[pb.JournalBlock | bytes]:
        shard_id = self._node.shard_id
        positions, problem = messages.positions_of(
            request, (shard_id,), f"this node (shard {shard_id})"
        )
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        if self.open_count >= self.stream_count_max:
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this node serves at most {self.stream_count_max} streams at once; retry "
                "after a delay",
            )
        in_scope = stream_scope(caller())
        lines = request.encoding == pb.JOURNAL_ENCODING_LINES
        if lines and in_scope is not None:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, messages.LINES_NEED_WHOLE)
        self.open_count += 1
        if self._metrics is not None:
            self._metrics.open.inc()
        try:
            async for sequence, source in self._blocks(
                context, positions.get(shard_id, 0), request.follow
            ):
                if lines:
                    try:
                        data, problem = self._lines_block(sequence, source)
                    except InvariantError as error:  # stored rows that no longer hash
                        await abort(
                            context,
                            grpc.StatusCode.DATA_LOSS,
                            f"shard {self._node.shard_id}: {error}: report it (tally audit)",
                        )
                    if problem:
                        await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, problem)
                    yield data
                    if self._metrics is not None:
                        self._metrics.blocks_sent.inc()
                    continue
                encoded = self._encoded_block(sequence, source)
                if in_scope is None:
                    if encoded.problem:
                        await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, encoded.problem)
                    yield encoded.data  # sent as encoded (servicer.stream_serializer)
                else:
                    scoped = messages.in_scope_of(encoded.message, in_scope)
                    problem = messages.oversized(scoped)
                    if problem:
                        await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, problem)
                    yield scoped
                if self._metrics is not None:
                    self._metrics.blocks_sent.inc()
        finally:
            self.open_count -= 1
            if self._metrics is not None:
                self._metrics.open.dec()

    @property
    def encoded_block_count(self) -> int:
        """Blocks built into their message since the node started (once each while kept)."""
        return self._built_count

    def _encoded_block(self, sequence: int, source: _Source) -> _Encoded:
        """The block's message, built once for every stream sending it."""
        encoded = self._encoded.get(sequence)
        if encoded is not None:
            return encoded
        if isinstance(source, CommittedBlock):
            header, batch = source.header, source.batch
            page = journal_stream.committed_block(
                header, batch.out, batch.accounts, batch.transactions
            )
            block, posted = page.blocks[0], page.posted_accounts
        else:
            block, posted = source
        encoded = _Encoded(messages.block_to_proto(self._node.shard_id, block, posted))
        self._built_count += 1
        self._encoded[sequence] = encoded
        self._encoded_size += encoded.size
        while len(self._encoded) > 1 and (
            len(self._encoded) > ENCODED_BLOCK_COUNT_MAX
            or self._encoded_size > ENCODED_SIZE_MAX_BYTES
        ):
            self._encoded_size -= self._encoded.popitem(last=False)[1].size
        return encoded

    def _lines_block(self, sequence: int, source: _Source) -> tuple[bytes, str]:
        """The block as JOURNAL_ENCODING_LINES sends it, serialised once for every stream:
        from its writer, the lines it hashed; from the store, the lines its records make
        (checked against its hash: InvariantError, DATA_LOSS to the caller, otherwise); and
        why it cannot be sent, if so."""
        kept = self._lines.get(sequence)
        if kept is not None:
            return kept
        if isinstance(source, CommittedBlock):
            header, body = source.header, source.body
            hash_, previous_hash, created_at_ns = (
                header.hash,
                header.previous_hash,
                header.created_at_ns,
            )
        else:
            block = source[0]
            body = journal_stream.block_body(block)
            hash_, previous_hash, created_at_ns = (
                block.hash,
                block.previous_hash,
                block.created_at_ns,
            )
        message = pb.JournalBlock(
            shard_id=self._node.shard_id,
            sequence=sequence,
            hash=hash_,
            previous_hash=previous_hash,
            created_at_ns=created_at_ns,
            lines=body,
        )
        data = message.SerializeToString()
        kept = data, messages.oversized(message, len(data))
        self._lines[sequence] = kept
        self._lines_size += len(data)
        while len(self._lines) > 1 and (
            len(self._lines) > ENCODED_BLOCK_COUNT_MAX or self._lines_size > ENCODED_SIZE_MAX_BYTES
        ):
            self._lines_size -= len(self._lines.popitem(last=False)[1][0])
        return kept

    async def _blocks(
        self, context: Context, after: int, follow: bool
    ) -> AsyncIterator[tuple[int, _Source]]:
        """Each block after `after`, in order, once; up to the head as of now, or (follow)
        for as long as this node's writer writes."""
        writer = self._node.writer  # None: a standby, which follows the stored journal
        async with storage_answers(context, self._read_timeout_s):
            head = await journal_stream.head_sequence(self._node.read_pool, self._read_timeout_s)
        if after > head:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"position {after} is beyond shard {self._node.shard_id}'s head, block {head}: "
                "the position is not of this shard's journal",
            )
        position = after
        while True:
            if self._stopping.is_set():
                await abort(
                    context,
                    grpc.StatusCode.UNAVAILABLE,
                    "this node is stopping: resume from the last block received",
                )
            advanced = writer.head_advanced() if follow and writer is not None else None
            if advanced is not None and writer is not None:
                head = writer.head_sequence  # committed: its rows are visible to the pool
            if position < head:
                recent = None
                if advanced is not None and writer is not None:
                    recent = writer.recent_blocks(position)
                if recent:
                    for committed in recent:
                        self.memory_block_count += 1
                        yield committed.header.sequence, committed
                        position = committed.header.sequence
                    continue
                page = await self._page(context, position, head)
                for block in page.blocks:
                    yield block.sequence, (block, page.posted_accounts)
                    position = block.sequence
                continue
            if not follow:
                return
            if advanced is None:  # a standby: the stored head, looked at again shortly
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), STORE_POLL_INTERVAL_S)
                head = await self._stored_head(context)
                continue
            await self._wait(context, writer, advanced)

    async def _stored_head(self, context: Context) -> int:
        """The stored journal's head, read once for every standby follower asking within half
        a poll interval (one query per interval however many follow)."""
        read = self._head_read
        now = time.monotonic()
        if read is None or (read.done() and now - self._head_read_at >= STORE_POLL_INTERVAL_S / 2):
            read = asyncio.ensure_future(
                journal_stream.head_sequence(self._node.read_pool, self._read_timeout_s)
            )
            self._head_read, self._head_read_at = read, now
            self.head_read_count += 1
        async with storage_answers(context, self._read_timeout_s):
            return await asyncio.shield(read)

    async def _wait(self, context: Context, writer: Writer | None, advanced: asyncio.Event) -> None:
        """Until the head moves; UNAVAILABLE if this node's writer stopped or changed."""
        if (
            writer is None
            or writer.state is not WriterState.RUNNING
            or self._node.writer is not writer
        ):
            await abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "this node's writer stopped (lease lost, draining or fenced): resume from the "
                "last block received, at the shard's writer",
            )
        waits = [asyncio.ensure_future(e.wait()) for e in (advanced, self._stopping)]
        try:
            await asyncio.wait(
                waits, timeout=FOLLOW_CHECK_INTERVAL_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for wait in waits:
                wait.cancel()

    async def _page(self, context: Context, position: int, head: int) -> journal_stream.Page:
        """The next page after position, read again while a later block is seen without the
        next one; DATA_LOSS for a gap that lasts or content that contradicts its block."""
        missing = position + 1
        for _ in range(GAP_RETRY_COUNT_MAX):
            try:
                async with storage_answers(context, self._read_timeout_s):
                    page = await self._shared_page(position, head)
                if page.blocks:
                    return page
                await asyncio.sleep(GAP_RETRY_INTERVAL_S)  # the head is committed: read again
            except journal_stream.GapError as gap:
                missing = gap.missing_sequence
                await asyncio.sleep(GAP_RETRY_INTERVAL_S)
            except InvariantError as error:
                await abort(
                    context, grpc.StatusCode.DATA_LOSS, f"shard {self._node.shard_id}: {error}"
                )
            except journal_stream.ColdHistoryNeeded as error:
                await abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"shard {self._node.shard_id}: {error}",
                )
        await abort(
            context,
            grpc.StatusCode.DATA_LOSS,
            f"shard {self._node.shard_id}'s journal has no block {missing} though later blocks "
            "exist: report it",
        )

    async def _shared_page(self, position: int, head: int) -> journal_stream.Page:
        """The page after position up to head, read once for every stream asking for it
        meanwhile or soon after (a committed block never changes); a failed read is forgotten,
        so the next ask reads again."""
        key = (position, head)
        read = self._pages.get(key)
        if read is None:
            read = asyncio.ensure_future(self._read_page(position, head))
            self._pages[key] = read
            while len(self._pages) > SHARED_PAGE_COUNT_MAX:
                self._pages.popitem(last=False)
            read.add_done_callback(lambda done: self._forget_failed(key, done))
        page = await asyncio.shield(read)  # a stream going away does not cancel the others'
        if not page.blocks:
            self._pages.pop(key, None)  # nothing yet (a gap): not worth keeping
        return page

    def _forget_failed(
        self, key: tuple[int, int], read: asyncio.Future[journal_stream.Page]
    ) -> None:
        if read.cancelled() or read.exception() is not None:  # retrieved: never unobserved
            if self._pages.get(key) is read:
                del self._pages[key]

    async def _read_page(self, position: int, head: int) -> journal_stream.Page:
        self.page_read_count += 1
        async with self._node.read_pool.acquire(timeout=self._read_timeout_s) as connection:
            return await journal_stream.read_page(
                connection, position, head, self._read_timeout_s, self._cold
            )
