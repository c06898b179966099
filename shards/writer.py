"""The single writer of a shard: queue, group commit, bounded cache.

One asyncio task owns the ledger state. Requests queue up (bounded); a batch closes at
batch_item_count_max items or batch_wait_ms after its first request; the batch loads what it
misses in one query per table, is applied in memory by core.state, committed in one PostgreSQL
transaction, and only then is the cache updated and are the clients answered.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core import store
from core.invariant import check
from core.journal import BlockHeader
from core.model import (
    AccountState,
    Kind,
    Result,
    ResultCode,
    TransactionSpec,
    TransactionState,
    expiry_transaction_id,
)
from core.state import Batch, Item, JournalPosition, WriteSet, check_balanced, needed_ids

log = logging.getLogger("tally.writer")


@dataclass(frozen=True, slots=True)
class WriterConfig:
    batch_item_count_max: int = 8190
    batch_wait_ms: float = 0.0
    queue_request_count_max: int = 10_000
    cache_account_count_max: int = 1_000_000
    cache_transaction_count_max: int = 1_000_000
    commit_timeout_s: float = 30.0
    load_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        check(self.batch_item_count_max >= 1, "batch_item_count_max must be positive")
        check(self.batch_wait_ms >= 0, "batch_wait_ms must not be negative")
        check(self.queue_request_count_max >= 1, "queue_request_count_max must be positive")
        check(self.cache_account_count_max >= 1, "cache_account_count_max must be positive")


class WriterState(enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"
    FENCED = "fenced"


class QueueFullError(RuntimeError):
    """Back-pressure: the writer's queue is at queue_request_count_max."""


class WriterUnavailableError(RuntimeError):
    """The writer is draining, stopped or fenced and takes no new work."""


class BoundedCache:
    """A dict evicting its oldest entries past count_max (FIFO order, refreshed on put)."""

    def __init__(self, count_max: int) -> None:
        self.count_max = count_max
        self.entries: dict[str, Any] = {}
        self.hits = 0
        self.misses = 0

    def put(self, key: str, value: Any) -> None:
        entries = self.entries
        entries.pop(key, None)
        entries[key] = value
        while len(entries) > self.count_max:
            del entries[next(iter(entries))]

    def clear(self) -> None:
        self.entries.clear()


class _Request:
    __slots__ = ("future", "items")

    def __init__(self, items: Sequence[Item], future: asyncio.Future[list[Result]]) -> None:
        self.items = items
        self.future = future


BatchObserver = Callable[[int, float, float], None]
"""Called after each committed batch with (item_count, load_seconds, commit_seconds)."""


class Writer:
    def __init__(
        self,
        config: WriterConfig,
        connect: Callable[[], Any],
        epoch: int,
        observer: BatchObserver | None = None,
    ) -> None:
        self.config = config
        self._connect = connect
        self.epoch = epoch
        self.state = WriterState.RUNNING
        self.queue: asyncio.Queue[_Request] = asyncio.Queue(config.queue_request_count_max)
        self.accounts = BoundedCache(config.cache_account_count_max)
        self.transactions = BoundedCache(config.cache_transaction_count_max)
        self.connection: Any = None
        self.previous = BlockHeader(0, b"", b"", 0, 0, 1, 0)
        self.position = JournalPosition(1, 0)
        self._observer = observer
        self.committed_batch_count = 0

    # ---- lifecycle ----

    async def start(self) -> None:
        self.connection = await self._connect()
        await self._load_position()

    async def _load_position(self) -> None:
        self.previous = await store.last_block(self.connection, self.config.load_timeout_s)
        self.position = JournalPosition(
            self.previous.next_posting_sequence, self.previous.last_timestamp_ns
        )

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        if self.state is not WriterState.RUNNING:
            raise WriterUnavailableError(f"writer is {self.state.value}")
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Request(items, future))
        except asyncio.QueueFull:
            raise QueueFullError(
                f"writer queue is full ({self.config.queue_request_count_max} requests)"
            ) from None
        return await future

    def begin_drain(self) -> None:
        if self.state is WriterState.RUNNING:
            self.state = WriterState.DRAINING

    async def run(self) -> None:
        """Serve batches until drained (after begin_drain) or fenced."""
        try:
            while True:
                if self.state is WriterState.FENCED:
                    break
                if self.state is WriterState.DRAINING and self.queue.empty():
                    break
                requests = await self._next_batch()
                if requests:
                    await self._process(requests)
        finally:
            if self.state is not WriterState.FENCED:
                self.state = WriterState.STOPPED
            self._fail_queued("writer stopped")
            if self.connection is not None:
                await self.connection.close(timeout=5.0)

    def _fail_queued(self, message: str) -> None:
        while not self.queue.empty():
            request = self.queue.get_nowait()
            _answer_unavailable([request], message)

    async def _next_batch(self) -> list[_Request]:
        try:
            first = await asyncio.wait_for(self.queue.get(), timeout=0.1)
        except TimeoutError:
            return []
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
            if item_count + len(head.items) > self.config.batch_item_count_max:
                break
            request = self.queue.get_nowait()
            requests.append(request)
            item_count += len(request.items)
        return requests

    # ---- one batch ----

    async def _process(self, requests: list[_Request]) -> None:
        item_lists = [request.items for request in requests]
        load_started = time.perf_counter()
        try:
            accounts, transactions = await self._resolve(item_lists)
        except Exception as error:  # any storage failure: answer retryable, keep serving
            log.warning("loading a batch failed: %r", error)
            _answer_unavailable(requests, "storage unavailable while loading; retry")
            await self._recover()
            return
        batch = Batch(accounts, transactions, self.position, time.time_ns())
        results = batch.apply(item_lists)
        writes = batch.out
        load_seconds = time.perf_counter() - load_started
        if writes.is_empty:
            _answer(requests, results)
            return
        check_balanced(writes, batch.accounts)
        commit_started = time.perf_counter()
        if not await self._commit(batch, requests):
            return
        self._install(batch)
        _answer(requests, results)
        if self._observer is not None:
            item_count = sum(len(items) for items in item_lists)
            self._observer(item_count, load_seconds, time.perf_counter() - commit_started)

    async def _commit(self, batch: Batch, requests: list[_Request]) -> bool:
        position = batch.position
        block = store.build_block(
            batch.out,
            self.previous,
            self.epoch,
            position.next_posting_sequence,
            position.last_timestamp_ns,
            time.time_ns(),
        )
        try:
            await store.commit_block(self.connection, block, self.config.commit_timeout_s)
        except store.FencedError as error:
            log.error("fenced: %s; this writer stops", error)
            self.state = WriterState.FENCED
            _answer_unavailable(requests, "this node lost its writer lease; retry")
            return False
        except Exception as error:  # lost connection, timeout, server error
            log.warning("commit failed: %r", error)
            _answer_unavailable(requests, "the batch could not be made durable; retry")
            await self._recover()
            return False
        self.previous = block.header
        self.position = position
        self.committed_batch_count += 1
        return True

    async def _recover(self) -> None:
        """After an ambiguous failure the commit may or may not have landed: forget the cache
        and re-read the journal tail, so retries see the truth (replayed or applied once)."""
        self.accounts.clear()
        self.transactions.clear()
        while self.state is not WriterState.FENCED:
            try:
                if self.connection is not None and not self.connection.is_closed():
                    self.connection.terminate()
                self.connection = await self._connect()
                await self._load_position()
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("writer reconnect failed: %r; retrying", error)
                await asyncio.sleep(0.5)

    async def _resolve(
        self, item_lists: Sequence[Sequence[Item]]
    ) -> tuple[dict[str, AccountState | None], dict[str, TransactionState | None]]:
        account_ids, transaction_ids = needed_ids(item_lists)
        transactions = await self._lookup(self.transactions, transaction_ids, _load_txns, self)
        for state in transactions.values():
            if state is not None:
                account_ids.update(leg.account_id for leg in state.applied_legs)
        accounts = await self._lookup(self.accounts, account_ids, _load_accounts, self)
        return accounts, transactions

    @staticmethod
    async def _lookup(
        cache: BoundedCache, ids: set[str], load: Callable[..., Any], writer: Writer
    ) -> dict[str, Any]:
        found: dict[str, Any] = {}
        missing: list[str] = []
        entries = cache.entries
        for key in ids:
            value = entries.get(key)
            if value is None:
                missing.append(key)
            else:
                found[key] = value
        cache.hits += len(found)
        cache.misses += len(missing)
        if missing:
            loaded = await load(writer, missing)
            for key in missing:
                found[key] = loaded.get(key)
        return found

    def _install(self, batch: Batch) -> None:
        out: WriteSet = batch.out
        for account in out.new_accounts:
            self.accounts.put(account.spec.id, account)
        for account_id, account in out.changed_accounts.items():
            self.accounts.put(account_id, account)
        for state in out.new_transactions:
            self.transactions.put(state.spec.id, state)
        for transaction_id, state in out.changed_transactions.items():
            self.transactions.put(transaction_id, state)

    def expiry_items(self, pending_ids: Sequence[str]) -> list[Item]:
        return [
            TransactionSpec(expiry_transaction_id(pid), Kind.EXPIRY, (), 0, (), "", 0, pid)
            for pid in pending_ids
        ]


async def _load_txns(writer: Writer, ids: list[str]) -> dict[str, TransactionState]:
    return await store.load_transactions(writer.connection, ids, writer.config.load_timeout_s)


async def _load_accounts(writer: Writer, ids: list[str]) -> dict[str, AccountState]:
    return await store.load_accounts(writer.connection, ids, writer.config.load_timeout_s)


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
