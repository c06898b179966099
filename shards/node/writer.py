"""The single writer of a shard: queue, group commit, bounded cache.

One asyncio task owns the ledger state. Requests queue up (bounded in requests and in bytes; a
request larger than a batch queues as parts); a batch closes at batch_item_count_max items or
batch_wait_ms after its first request; the batch loads what it
misses in one query per table, is applied in memory by core.state, committed in one PostgreSQL
transaction, and only then is the cache updated and are the clients answered.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from core import ids
from core.invariant import check
from core.journal import BlockHeader
from core.model import (
    AccountState,
    Kind,
    Result,
    ResultCode,
    Status,
    TransactionSpec,
    TransactionState,
    account_from_record,
    account_to_record,
    transaction_from_record,
    transaction_to_record,
)
from core.moves import MOVE_PAGE_ITEM_COUNT, refuse_moved
from core.pieces import decided_by_piece, fate_of_piece, reversed_by_piece
from core.signing import Signer
from core.state import (
    Batch,
    Item,
    JournalPosition,
    WriteSet,
    check_balanced,
    needed_ids,
    reversal_targets,
)
from core.store import moves as store_moves
from core.store import shard as store
from shards import failpoints

log = logging.getLogger("tally.writer")


class CommittedBlock(NamedTuple):
    """A block this writer committed: its head, the batch it was made of, and its canonical
    lines as hashed (the change stream's LINES encoding sends them as they are)."""

    header: BlockHeader
    batch: Batch
    body: bytes


@dataclass(frozen=True, slots=True)
class WriterConfig:
    batch_item_count_max: int = 8190
    batch_wait_ms: float = 0.0
    queue_request_count_max: int = 10_000
    # Bytes of the requests admitted and not yet answered (queued, batching or committing),
    # as they came on the wire (ITEM_SIZE_BYTES_ESTIMATE per item for the node's own): one
    # more is refused, unless nothing is pending (a request as large as the gRPC message limit
    # always gets through alone). 64 MiB: four of the largest requests, some forty full
    # batches of ordinary transfers, many commits' worth of work.
    queue_size_max_bytes: int = 64 * 1024 * 1024
    cache_account_count_max: int = 1_000_000
    cache_transaction_count_max: int = 200_000
    commit_timeout_s: float = 30.0
    load_timeout_s: float = 30.0
    # A slot move's side is written in blocks of at most this many entries (lower in tests).
    move_page_item_count: int = MOVE_PAGE_ITEM_COUNT

    def __post_init__(self) -> None:
        check(self.batch_item_count_max >= 1, "batch_item_count_max must be positive")
        check(self.batch_wait_ms >= 0, "batch_wait_ms must not be negative")
        check(self.queue_request_count_max >= 1, "queue_request_count_max must be positive")
        check(self.queue_size_max_bytes >= 1, "queue_size_max_bytes must be positive")
        check(self.cache_account_count_max >= 1, "cache_account_count_max must be positive")
        check(self.move_page_item_count >= 1, "move_page_item_count must be positive")


class WriterState(enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"
    FENCED = "fenced"


# What a request of the node's own (the expiry and deadline sweeps) counts per item against
# queue_size_max_bytes: an ordinary transfer's encoded size, rounded up.
ITEM_SIZE_BYTES_ESTIMATE = 256
# The last blocks committed, kept as the writer made them (a reference to each batch) for the
# change stream's followers at the head, who then read nothing back from the store: at most
# this many, and (beyond the newest) at most this many postings in all, so that large batches
# keep tens of MB, not hundreds (followers at the head need the last few).
RECENT_BLOCK_COUNT_MAX = 64
RECENT_POSTING_COUNT_MAX = 65_536


class QueueFullError(RuntimeError):
    """Back-pressure: the writer's queue is at queue_request_count_max requests or at
    queue_size_max_bytes bytes."""


class WriterUnavailableError(RuntimeError):
    """The writer is draining, stopped or fenced and takes no new work."""


class BoundedCache:
    """Records by id, evicting the oldest past count_max (FIFO order, refreshed on put).

    Values are stored as plain-tuple records (see core.model), which the garbage collector
    stops tracking; get() and put() convert from and to the domain objects.
    """

    def __init__(
        self,
        count_max: int,
        to_record: Callable[[Any], tuple[Any, ...]],
        from_record: Callable[[tuple[Any, ...]], Any],
    ) -> None:
        self.count_max = count_max
        # OrderedDict: evicting the oldest is O(1); a plain dict's next(iter()) after many
        # deletions from its front scans their tombstones, every time.
        self.entries: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self._to_record = to_record
        self._from_record = from_record
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Any | None:
        record = self.entries.get(key)
        return None if record is None else self._from_record(record)

    def put(self, key: str, value: Any) -> None:
        entries = self.entries
        entries[key] = self._to_record(value)
        entries.move_to_end(key)
        while len(entries) > self.count_max:
            entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()


class _Prepared:
    """A batch applied in memory, possibly on top of the batch committing before it."""

    __slots__ = (
        "batch",
        "block",
        "commit_seconds",
        "head",
        "item_count",
        "load_seconds",
        "requests",
        "results",
    )

    def __init__(
        self,
        batch: Batch,
        block: store.Block | None,
        head: BlockHeader,
        requests: list[_Request],
        results: list[list[Result]],
        item_count: int,
        load_seconds: float,
    ) -> None:
        self.batch = batch
        self.block = block
        # The journal's head once this batch commits: its own block, or the one before it.
        self.head = head
        self.requests = requests
        self.results = results
        self.item_count = item_count
        self.load_seconds = load_seconds
        self.commit_seconds = 0.0  # set by _commit


class _InFlight:
    """A prepared batch whose commit is running."""

    __slots__ = ("prepared", "task")

    def __init__(self, prepared: _Prepared, task: asyncio.Future[BaseException | None]) -> None:
        self.prepared = prepared
        self.task = task

    @property
    def batch(self) -> Batch:
        return self.prepared.batch


class _Request:
    __slots__ = ("future", "items")

    def __init__(self, items: Sequence[Item], future: asyncio.Future[list[Result]]) -> None:
        self.items = items
        self.future = future


class _OperationRequest(_Request):
    """A step the writer runs alone, between batches (Writer.run_operation)."""

    __slots__ = ("operation",)

    def __init__(self, operation: Operation, future: asyncio.Future[Any]) -> None:
        super().__init__((), future)
        self.operation = operation


BatchObserver = Callable[[int, float, float], None]
"""Called after each committed batch (one that wrote a block) with (item_count, load_seconds,
commit_seconds); commit_seconds is the database commit's own round trip."""

HeadSink = Callable[[BlockHeader], None]
# Transactions by id: (connection, ids, timeout_s) -> {id: state} (core.store.cold.history).
TransactionLoader = Callable[[Any, Any, float], Awaitable[dict[str, TransactionState]]]
"""Called with each committed block's signed head, in commit order (the heads publisher)."""

Operation = Callable[["Writer"], Awaitable[Any]]
"""A step the writer runs alone between batches (Writer.run_operation)."""


def split_request(items: Sequence[Item], count_max: int) -> list[Sequence[Item]]:
    """items in parts of at most count_max, each ending where a linked group does (a group is
    all-or-nothing within one batch); a group longer than count_max is a part of its own."""
    if len(items) <= count_max:
        return [items]
    parts: list[Sequence[Item]] = []
    start = 0
    group_end = 0  # where the last whole linked group since start ends
    for index, item in enumerate(items):
        if index - start >= count_max and group_end > start:
            parts.append(items[start:group_end])
            start = group_end
        if not getattr(item, "linked", False):
            group_end = index + 1
    parts.append(items[start:])
    return parts


class Writer:
    def __init__(
        self,
        config: WriterConfig,
        connect: Callable[[], Any],
        epoch: int,
        observer: BatchObserver | None = None,
        signer: Signer | None = None,
        shard_id: int = 0,
        publish: HeadSink | None = None,
        load_transactions: TransactionLoader = store.load_transactions,
    ) -> None:
        self.config = config
        # By id, wherever the records lie (core.store.cold.history): the idempotency lookups
        # reach archived transactions, so an archived id is never applied again.
        self._load_transactions = load_transactions
        # Signs each block's head (None: unsigned blocks); the key never reaches the database.
        self.signer = signer
        self.shard_id = shard_id
        self._publish = publish
        self._connect = connect
        self.epoch = epoch
        self.state = WriterState.RUNNING
        self.queue: asyncio.Queue[_Request] = asyncio.Queue(config.queue_request_count_max)
        self.accounts = BoundedCache(
            config.cache_account_count_max, account_to_record, account_from_record
        )
        self.transactions = BoundedCache(
            config.cache_transaction_count_max, transaction_to_record, transaction_from_record
        )
        self.connection: Any = None  # commits only
        self.load_connection: Any = None  # loads, concurrent with a commit
        self.previous = BlockHeader(0, b"", b"", 0, 0, 1, 0)
        self.position = JournalPosition(1, 0)
        self._observer = observer
        self.committed_batch_count = 0
        # Read by metrics at scrape time: plain counters cost the commit path nothing.
        self.commit_fenced_count = 0
        self.commit_failed_count = 0
        # Commits that failed while their COMMIT was in flight (answered OUTCOME_UNKNOWN); the
        # failed ones above failed before it was sent (answered UNAVAILABLE, nothing written).
        self.commit_outcome_unknown_count = 0
        # Bytes of the requests admitted and not yet answered (see queue_size_max_bytes).
        self.pending_size_bytes = 0
        # The change stream's one signal: set, and replaced by a fresh one, each time the head
        # advances (after the commit and the cache update) and when the writer stops. The
        # writer keeps nothing per reader and never awaits one.
        self._head_advanced = asyncio.Event()
        # The last blocks committed, contiguous up to the head (cleared when the writer cannot
        # know the tail: after an ambiguous failure it reloads the head from the store).
        self._recent: deque[CommittedBlock] = deque()
        self._recent_posting_count = 0
        # Slots moved out of this shard (slot -> the move): their items are refused here, by
        # the writer itself, so nothing lands after the records a move-out handed over. Empty
        # almost always, and then checked at no cost (docs/design.md, "Moving slots").
        self.moved_out: dict[int, str] = {}

    # ---- lifecycle ----

    async def start(self) -> None:
        self.connection = await self._connect()
        self.load_connection = await self._connect()
        # A writer before this one may have left a commit on the primary alone (see _recover).
        await store.wait_durable(self.connection, self.config.commit_timeout_s)
        await self._load_position()
        self.moved_out = await store_moves.moved_out_slots(
            self.connection, self.config.load_timeout_s
        )

    async def _load_position(self) -> None:
        self.previous = await store.last_block(self.connection, self.config.load_timeout_s)
        self.position = JournalPosition(
            self.previous.next_posting_sequence, self.previous.last_timestamp_ns
        )

    async def submit(self, items: Sequence[Item], size_bytes: int | None = None) -> list[Result]:
        """The results of items, once their batch is committed. size_bytes: the request's
        size on the wire (None: ITEM_SIZE_BYTES_ESTIMATE per item), counted against
        queue_size_max_bytes until the writer answers, even if the caller stops waiting.

        A request of more than batch_item_count_max items (a Commit's records, two a reversal)
        queues as parts (split_request) one after the other: consecutive batches, in order,
        each applied on top of the one before (and failed with it if its commit fails)."""
        if self.state is not WriterState.RUNNING:
            raise WriterUnavailableError(f"writer is {self.state.value}")
        size = len(items) * ITEM_SIZE_BYTES_ESTIMATE if size_bytes is None else size_bytes
        pending = self.pending_size_bytes
        if pending and pending + size > self.config.queue_size_max_bytes:
            raise QueueFullError(
                f"writer queue is full ({pending} bytes of requests waiting, this one {size}; "
                f"at most {self.config.queue_size_max_bytes} bytes): retry after a delay"
            )
        parts = split_request(items, self.config.batch_item_count_max)
        if self.queue.qsize() + len(parts) > self.config.queue_request_count_max:
            raise QueueFullError(
                f"writer queue is full ({self.config.queue_request_count_max} requests): "
                "retry after a delay"
            )
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[list[Result]]] = []
        for part in parts:  # no await in between: the parts queue one after the other
            futures.append(loop.create_future())
            self.queue.put_nowait(_Request(part, futures[-1]))
        self.pending_size_bytes += size
        # Shielded: a caller that stops waiting (its deadline) leaves the request queued, and
        # its bytes counted, until the writer has answered it.
        if len(futures) == 1:
            futures[0].add_done_callback(lambda _: self._release(size))
            return await asyncio.shield(futures[0])
        answered = asyncio.gather(*futures)
        answered.add_done_callback(lambda _: self._release(size))
        return [result for part in await asyncio.shield(answered) for result in part]

    async def run_operation(self, operation: Operation) -> Any:
        """Run `operation` as a step of the writer of its own, in queue order: after every
        request queued before it has committed and before any queued after it is applied (a
        slot move's side: shards.node.moves). Its result, or the exception it raised."""
        if self.state is not WriterState.RUNNING:
            raise WriterUnavailableError(f"writer is {self.state.value}")
        if self.queue.full():
            raise QueueFullError("writer queue is full: retry after a delay")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(_OperationRequest(operation, future))
        return await asyncio.shield(future)

    async def commit_entries(
        self,
        writes: WriteSet,
        position: JournalPosition,
        accounts: dict[str, AccountState],
        extra: store.BlockExtra,
    ) -> int:
        """Commit writes made outside the state machine (a slot move's entries) as the next
        block, with `extra` statements in its transaction; only from an operation. The block's
        sequence; on a failure the writer recovers as after a batch and the error is raised."""
        block = store.build_block(
            writes,
            self.previous,
            self.epoch,
            position.next_posting_sequence,
            position.last_timestamp_ns,
            failpoints.wall_ns(),
            self.signer,
            self.shard_id,
        )
        check_balanced(writes, dict(accounts))
        try:
            await store.commit_block(self.connection, block, self.config.commit_timeout_s, extra)
        except store.FencedError:
            self.commit_fenced_count += 1
            self.state = WriterState.FENCED
            raise
        except Exception:
            self.commit_failed_count += 1
            await self._recover()
            raise
        self.previous = block.header
        self.position = position
        self.committed_batch_count += 1
        for account_id, account in accounts.items():
            self.accounts.put(account_id, account)
        for transaction_id, state in writes.changed_transactions.items():
            # A hold released by a move-out: the cache must not keep it open (its expiry and
            # its post or void are the target's now).
            self.transactions.put(transaction_id, state)
        # Not kept as a batch: streams read this block from the store.
        self._recent.clear()
        self._recent_posting_count = 0
        if self._publish is not None:
            self._publish(block.header)
        self._announce_head()
        return block.header.sequence

    @property
    def head_sequence(self) -> int:
        """The sequence of the last committed block."""
        return self.previous.sequence

    def head_advanced(self) -> asyncio.Event:
        """An event set once the head moves past head_sequence as it is now, or the writer
        stops. Take it before reading head_sequence (no await between), so no commit is
        missed."""
        return self._head_advanced

    def _remember(self, committed: CommittedBlock) -> None:
        recent = self._recent
        recent.append(committed)
        self._recent_posting_count += len(committed.batch.out.postings)
        if len(recent) > RECENT_BLOCK_COUNT_MAX:
            self._recent_posting_count -= len(recent.popleft().batch.out.postings)
        while len(recent) > 1 and self._recent_posting_count > RECENT_POSTING_COUNT_MAX:
            self._recent_posting_count -= len(recent.popleft().batch.out.postings)

    def recent_blocks(self, after: int) -> list[CommittedBlock] | None:
        """The blocks committed after block `after` up to the head, as committed (the batch
        each was made of), if this writer still holds every one of them; else None (read them
        from the store). Costs the writer nothing: one reference kept per commit."""
        recent = self._recent
        if not recent or after >= recent[-1].header.sequence:
            return [] if after == self.head_sequence else None
        first = recent[0].header.sequence
        if after + 1 < first:
            return None
        return list(recent)[after + 1 - first :]

    def _announce_head(self) -> None:
        """O(1) here: waking the streams (a fraction of a microsecond each) runs as a callback
        of its own on the event loop, not inside the writer's step."""
        announced, self._head_advanced = self._head_advanced, asyncio.Event()
        asyncio.get_running_loop().call_soon(announced.set)

    def _release(self, size_bytes: int) -> None:
        self.pending_size_bytes -= size_bytes

    def fence(self) -> None:
        """Another writer holds the lease: take no more work (commits would fail anyway)."""
        self.state = WriterState.FENCED

    def begin_drain(self) -> None:
        if self.state is WriterState.RUNNING:
            self.state = WriterState.DRAINING

    async def run(self) -> None:
        """Serve batches until drained (after begin_drain) or fenced.

        Two stages overlap: while batch k commits on the commit connection, batch k+1 is
        collected, loaded (load connection) and applied on top of batch k's uncommitted state.
        Batch k+1 is answered or committed only after batch k's outcome is known; if batch k
        fails, batch k+1 is failed too (retryable), since it was decided on top of it.
        """
        inflight: _InFlight | None = None
        try:
            while self.state is not WriterState.FENCED:
                if self.state is WriterState.DRAINING and self.queue.empty() and inflight is None:
                    break
                requests = await self._next_batch(inflight)
                if requests and isinstance(requests[0], _OperationRequest):
                    if inflight is not None:
                        await self._settle(inflight)
                        inflight = None
                    await self._run(requests[0])
                    continue
                prepared = await self._prepare(requests, inflight) if requests else None
                if inflight is not None and (prepared is not None or inflight.task.done()):
                    committed = await self._settle(inflight)
                    inflight = None
                    if not committed and prepared is not None:
                        _answer_unavailable(
                            prepared.requests, "an earlier batch failed to commit; retry"
                        )
                        prepared = None
                if prepared is not None:
                    inflight = self._launch(prepared)
        finally:
            if inflight is not None:
                await self._settle(inflight)
            if self.state is not WriterState.FENCED:
                self.state = WriterState.STOPPED
            self._announce_head()  # streams waiting for a commit learn there will be none
            self._fail_queued("writer stopped")
            for connection in (self.connection, self.load_connection):
                if connection is not None and not connection.is_closed():
                    await connection.close(timeout=5.0)

    async def _run(self, request: _OperationRequest) -> None:
        try:
            result = await request.operation(self)
        except asyncio.CancelledError:
            request.future.cancel()
            raise
        except Exception as error:  # the operation's own answer (a refusal, a failed commit)
            if not request.future.done():
                request.future.set_exception(error)
            return
        if not request.future.done():
            request.future.set_result(result)

    def _fail_queued(self, message: str) -> None:
        while not self.queue.empty():
            request = self.queue.get_nowait()
            if isinstance(request, _OperationRequest):
                if not request.future.done():
                    request.future.set_exception(WriterUnavailableError(message))
                continue
            _answer_unavailable([request], message)

    async def _next_batch(self, inflight: _InFlight | None) -> list[_Request]:
        first = await self._first_request(inflight)
        if first is None:
            return []
        if isinstance(first, _OperationRequest):
            return [first]
        requests = [first]
        item_count = len(first.items)
        deadline = time.monotonic() + self.config.batch_wait_ms / 1000.0
        while item_count < self.config.batch_item_count_max:
            if self.queue.empty():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                await asyncio.sleep(min(remaining, 0.0005))
                continue
            head = self.queue._queue[0]  # type: ignore[attr-defined]  # peek: never split a request
            if isinstance(head, _OperationRequest):  # an operation runs alone, after this batch
                break
            if item_count + len(head.items) > self.config.batch_item_count_max:
                break
            request = self.queue.get_nowait()
            requests.append(request)
            item_count += len(request.items)
        return requests

    async def _first_request(self, inflight: _InFlight | None) -> _Request | None:
        """The next request, or None when a commit finished first (or after 100 ms idle)."""
        if not self.queue.empty():
            return self.queue.get_nowait()
        get = asyncio.ensure_future(self.queue.get())
        waiting: set[asyncio.Future[Any]] = {get}
        if inflight is not None:
            waiting.add(inflight.task)
        try:
            await asyncio.wait(waiting, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not get.done():
                get.cancel()
        try:
            # A cancelled get leaves its item in the queue; one that won the race returns it.
            return await get
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if get.cancelled() and (current is None or not current.cancelling()):
                return None
            raise

    # ---- one batch ----

    async def _prepare(self, requests: list[_Request], base: _InFlight | None) -> _Prepared | None:
        """Load, apply and hash one batch; None when it failed to load (already answered)."""
        item_lists = [request.items for request in requests]
        if self.moved_out:
            item_lists = [refuse_moved(items, self.moved_out) for items in item_lists]
        started = time.perf_counter()
        try:
            accounts, transactions = await self._resolve(item_lists, base)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # storage failure while reading: retryable, keep serving
            log.warning("loading a batch failed: %r", error)
            _answer_unavailable(requests, "storage unavailable while loading; retry")
            await self._reconnect_loader()
            return None
        position = base.batch.position if base is not None else self.position
        previous = base.prepared.head if base is not None else self.previous
        batch = Batch(accounts, transactions, position, failpoints.wall_ns())
        results = batch.apply(item_lists)
        block = None
        if not batch.out.is_empty:
            check_balanced(batch.out, batch.accounts)
            end = batch.position
            block = store.build_block(
                batch.out,
                previous,
                self.epoch,
                end.next_posting_sequence,
                end.last_timestamp_ns,
                failpoints.wall_ns(),
                self.signer,
                self.shard_id,
            )
        item_count = sum(len(items) for items in item_lists)
        head = block.header if block is not None else previous
        load_seconds = time.perf_counter() - started
        return _Prepared(batch, block, head, requests, results, item_count, load_seconds)

    def _launch(self, prepared: _Prepared) -> _InFlight:
        return _InFlight(prepared, asyncio.ensure_future(self._commit(prepared)))

    async def _commit(self, prepared: _Prepared) -> BaseException | None:
        if prepared.block is None:
            return None
        started = time.perf_counter()
        try:
            await store.commit_block(self.connection, prepared.block, self.config.commit_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # fenced, lost connection, timeout, server error: classified
            return error  # by store.commit_block (CommitOutcomeUnknownError: COMMIT in flight)
        prepared.commit_seconds = time.perf_counter() - started
        return None

    async def _settle(self, inflight: _InFlight) -> bool:
        """Wait for a commit's outcome, then install and answer, or fail and recover."""
        error = await inflight.task
        prepared = inflight.prepared
        if isinstance(error, store.FencedError):
            log.error("fenced: %s; this writer stops", error)
            self.commit_fenced_count += 1
            self.state = WriterState.FENCED
            _answer_unavailable(prepared.requests, "this node lost its writer lease; retry")
            return False
        if isinstance(error, store.CommitOutcomeUnknownError):
            log.warning("commit outcome unknown: %s", error)
            self.commit_outcome_unknown_count += 1
            _answer(prepared.requests, _outcome_unknown(prepared.requests))
            await self._recover()
            return False
        if error is not None:  # before COMMIT was sent: nothing of the batch was written
            log.warning("commit failed: %r", error)
            self.commit_failed_count += 1
            _answer_unavailable(prepared.requests, "the batch could not be made durable; retry")
            await self._recover()
            return False
        if prepared.block is not None:
            self.previous = prepared.block.header
            self.position = prepared.batch.position
            self.committed_batch_count += 1
            self._install(prepared.batch)
            self._remember(
                CommittedBlock(prepared.block.header, prepared.batch, prepared.block.body)
            )
            if self._publish is not None:  # after the commit: never a head rolled back
                self._publish(prepared.block.header)
        _answer(prepared.requests, prepared.results)
        if prepared.block is not None:
            self._announce_head()  # after the clients' answers: they never wait for streams
        if self._observer is not None and prepared.block is not None:
            self._observer(prepared.item_count, prepared.load_seconds, prepared.commit_seconds)
        return True

    async def _recover(self) -> None:
        """After an ambiguous failure the commit may or may not have landed: forget the cache
        and re-read the journal tail, so retries see the truth (replayed or applied once)."""
        self.accounts.clear()
        self.transactions.clear()
        self._recent.clear()
        self._recent_posting_count = 0
        # The old commit's backend may still be committing (closing our end does not stop it):
        # the tail is read only once it has ended, or a commit landing later would be missed.
        old_pids = _server_pids(self.connection)
        while self.state is not WriterState.FENCED:
            try:
                for connection in (self.connection, self.load_connection):
                    if connection is not None and not connection.is_closed():
                        connection.terminate()
                self.connection = await self._connect()
                self.load_connection = await self._connect()
                await store.end_backends(self.connection, old_pids, self.config.load_timeout_s)
                # What the tail shows must be what a failover keeps: a commit whose wait for
                # the synchronous standby was cut short is on the primary alone until then.
                await store.wait_durable(self.connection, self.config.commit_timeout_s)
                await self._load_position()
                self._announce_head()  # a commit whose answer was lost may have landed
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("writer reconnect failed: %r; retrying", error)
                await asyncio.sleep(0.5)

    async def _reconnect_loader(self) -> None:
        try:
            if self.load_connection is not None and not self.load_connection.is_closed():
                self.load_connection.terminate()
            self.load_connection = await self._connect()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the next batch's load will try again
            log.warning("load connection reconnect failed: %r", error)
            self.load_connection = None

    async def _resolve(
        self, item_lists: Sequence[Sequence[Item]], base: _InFlight | None
    ) -> tuple[dict[str, AccountState | None], dict[str, TransactionState | None]]:
        """Everything the batch can touch: from the batch committing before it (its state is
        the newest), else the cache, else one query per table."""
        if self.load_connection is None:
            self.load_connection = await self._connect()
        account_ids, transaction_ids = needed_ids(item_lists)
        newer_transactions = base.batch.transactions if base is not None else {}
        newer_accounts = base.batch.accounts if base is not None else {}
        transactions = await self._lookup(
            self.transactions, newer_transactions, transaction_ids, self._load_transactions
        )
        also = {
            state.spec.target_id
            for target in reversal_targets(item_lists)
            if (state := transactions.get(target)) is not None
            and state.spec.kind is Kind.POST_PENDING
        }
        # A piece voided or posted here may have marked an original reversed (see
        # core.ids.REVERSES_KEY).
        also.update(
            reversed_id
            for state in transactions.values()
            if state is not None
            and state.spec.metadata
            and (reversed_id := reversed_by_piece(state.spec))
        )
        for state in list(transactions.values()):  # pieces deciding a hold here
            if state is not None and state.spec.metadata and decided_by_piece(state.spec):
                fate = fate_of_piece(state.spec)
                also.update((fate.id, fate.target_id))
        if also:  # the holds posts posted (is one cross-shard?), originals pieces reverse
            transactions.update(
                await self._lookup(
                    self.transactions,
                    newer_transactions,
                    also - transactions.keys(),
                    self._load_transactions,
                )
            )
        for state in transactions.values():
            if state is not None:
                account_ids.update(leg.account_id for leg in state.applied_legs)
                kind = state.spec.kind
                if kind is Kind.PREPARED or kind is Kind.HOLD:
                    # The post of a cross-shard hold's piece may post to a clearing leg it
                    # did not hold (see core.pieces.share_of_post).
                    account_ids.update(
                        ids.clearing_account(leg.currency) for leg in state.applied_legs
                    )
        accounts = await self._lookup(
            self.accounts, newer_accounts, account_ids, store.load_accounts
        )
        return accounts, transactions

    async def _lookup(
        self,
        cache: BoundedCache,
        newer: dict[str, Any],
        ids: set[str],
        load: Callable[..., Any],
    ) -> dict[str, Any]:
        found: dict[str, Any] = {}
        missing: list[str] = []
        get = cache.get
        for key in ids:
            if key in newer:
                found[key] = newer[key]
                continue
            value = get(key)
            if value is None:
                missing.append(key)
            else:
                found[key] = value
        cache.hits += len(ids) - len(missing)
        cache.misses += len(missing)
        if missing:
            loaded = await load(self.load_connection, missing, self.config.load_timeout_s)
            for key in missing:
                found[key] = loaded.get(key)
        return found

    def _install(self, batch: Batch) -> None:
        out: WriteSet = batch.out
        for account in out.new_accounts:
            self.accounts.put(account.spec.id, account)
        for account_id, account in out.changed_accounts.items():
            self.accounts.put(account_id, account)
        # Holds are cached: they are posted or voided soon. Other new transactions are not:
        # only a retry or a reversal reads them again, and one query per batch finds those.
        for state in out.new_transactions:
            if state.status is Status.PENDING:
                self.transactions.put(state.spec.id, state)
        for transaction_id, state in out.changed_transactions.items():
            self.transactions.put(transaction_id, state)

    def expiry_items(self, pending_ids: Sequence[str]) -> list[Item]:
        return [
            TransactionSpec(ids.expiry_id(pid), Kind.EXPIRY, (), 0, (), "", 0, pid)
            for pid in pending_ids
        ]


def _answer(requests: list[_Request], results: list[list[Result]]) -> None:
    for request, request_results in zip(requests, results, strict=True):
        if not request.future.done():
            request.future.set_result(request_results)


def _answer_unavailable(requests: Sequence[_Request], message: str) -> None:
    for request in requests:
        if not request.future.done():
            request.future.set_result(
                [Result(ResultCode.UNAVAILABLE, message)] * len(request.items)
            )


OUTCOME_UNKNOWN_MESSAGE = (
    "the storage's answer to this batch's COMMIT was lost (connection lost or commit timed "
    "out): it may have been applied; retry with the same id to learn the outcome"
)


def _server_pids(connection: Any) -> list[int]:
    """The server process of a connection that may still be running a statement of ours."""
    if connection is None:
        return []
    try:
        return [int(connection.get_server_pid())]
    except Exception:  # never connected: nothing of ours runs on the server
        return []


def _outcome_unknown(requests: Sequence[_Request]) -> list[list[Result]]:
    """Every item of a batch whose COMMIT may have landed: not a refusal, not a success."""
    unknown = Result(ResultCode.OUTCOME_UNKNOWN, OUTCOME_UNKNOWN_MESSAGE)
    return [[unknown] * len(request.items) for request in requests]
