"""Prometheus metrics of a shard node: what its writer, caches, cross-shard pieces and slot map
say, besides its RPCs (shards.rpc.metrics). Series are `tally_*`, labelled {shard="N"}."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from core.model import Result, ResultCode
from core.slots import SlotMap
from core.store import shard as store
from shards import failpoints
from shards.node.writer import Writer
from shards.rpc.metrics import BATCH_ITEMS_BUCKETS, RpcMetrics, StreamMetrics

log = logging.getLogger("tally.metrics")

COMMIT_SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0,
)  # fmt: skip
PREPARED_QUERY_TIMEOUT_S = 10.0


class NodeView(Protocol):
    """What the node's collector reads at scrape time."""

    @property
    def writer(self) -> Writer | None: ...

    @property
    def slot_map(self) -> SlotMap | None: ...


class NodeMetrics:
    """Everything a shard node exports. Owns its registry, so nodes in one process (tests)
    do not collide."""

    def __init__(self, shard_id: int, node: NodeView) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        shard = str(shard_id)
        self.rpc = RpcMetrics(self.registry, {"shard": shard})
        self.streams = StreamMetrics(self.registry, {"shard": shard})
        self._batch_items = _histogram(
            self.registry, "tally_batch_items", "Items per committed batch", BATCH_ITEMS_BUCKETS
        ).labels(shard)
        self._batch_load_seconds = _histogram(
            self.registry,
            "tally_batch_load_seconds",
            "Time to load, apply and hash a batch before its commit",
            COMMIT_SECONDS_BUCKETS,
        ).labels(shard)
        self._commit_seconds = _histogram(
            self.registry,
            "tally_commit_duration_seconds",
            "PostgreSQL commit of one batch's journal block",
            COMMIT_SECONDS_BUCKETS,
        ).labels(shard)
        self._batches_committed = _counter(
            self.registry, "tally_batches_committed", "Batches committed (journal blocks)"
        ).labels(shard)
        self._holds_expired = _counter(
            self.registry, "tally_holds_expired", "Holds released by the shard on timeout"
        ).labels(shard)
        self.prepared = PreparedSample()
        self.history = HistorySample()
        self.registry.register(_NodeStateCollector(shard, node, self.prepared, self.history))

    def batch_committed(self, item_count: int, load_seconds: float, commit_seconds: float) -> None:
        """The writer's BatchObserver: once per committed batch."""
        self._batches_committed.inc()
        self._batch_items.observe(item_count)
        self._batch_load_seconds.observe(load_seconds)
        self._commit_seconds.observe(commit_seconds)

    def holds_expired(self, results: Sequence[Result]) -> None:
        """Results of an expiry sweep: CREATED means the hold was released now (others were
        resolved meanwhile)."""
        expired_count = sum(1 for result in results if result.code is ResultCode.CREATED)
        if expired_count:
            self._holds_expired.inc(expired_count)

    async def sample_prepared(
        self, read_pool: Any, stopping: asyncio.Event, interval_s: float
    ) -> None:
        """Count cross-shard pieces, and see how far history is cold, every interval_s until
        stopping (a scrape must not cost a query); ages are computed at scrape time from the
        creation times sampled."""
        while not stopping.is_set():
            try:
                piece_count, oldest_ns = await store.prepared_pieces(
                    read_pool, PREPARED_QUERY_TIMEOUT_S
                )
                self.prepared.update(piece_count, oldest_ns)
                self.history.value = await store.hot_history(read_pool, PREPARED_QUERY_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # storage away: keep the last sample, try next tick
                log.warning("sampling prepared pieces failed: %r", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=interval_s)


class PreparedSample:
    """The last count of held cross-shard pieces; written on the event loop, read by scrapes
    (one tuple assignment, so a scrape never sees half an update)."""

    def __init__(self) -> None:
        self.value = (0, 0)  # (piece_count, oldest_timestamp_ns)

    def update(self, piece_count: int, oldest_timestamp_ns: int) -> None:
        self.value = (piece_count, oldest_timestamp_ns)


class HistorySample:
    """The last cold block and the oldest hot block's creation time (ns; 0: none), as sampled
    (one tuple assignment, as PreparedSample)."""

    def __init__(self) -> None:
        self.value = (0, 0)


def _histogram(
    registry: CollectorRegistry, name: str, documentation: str, buckets: Sequence[float]
) -> Histogram:
    return Histogram(name, documentation, ["shard"], registry=registry, buckets=buckets)


def _counter(registry: CollectorRegistry, name: str, documentation: str) -> Counter:
    return Counter(name, documentation, ["shard"], registry=registry)


class _NodeStateCollector:
    """Node and writer state read at scrape time; the hot path keeps plain ints only."""

    def __init__(
        self, shard: str, node: NodeView, prepared: PreparedSample, history: HistorySample
    ) -> None:
        self._shard = shard
        self._node = node
        self._prepared = prepared
        self._history = history

    def collect(self) -> Iterator[Metric]:
        shard = self._shard
        writer = self._node.writer
        slot_map = self._node.slot_map
        piece_count, oldest_ns = self._prepared.value
        now_ns = failpoints.wall_ns()
        age_s = max(0.0, (now_ns - oldest_ns) / 1e9) if piece_count else 0.0
        last_cold, oldest_hot_ns = self._history.value
        hot_age_s = max(0.0, (now_ns - oldest_hot_ns) / 1e9) if oldest_hot_ns else 0.0
        epoch = writer.epoch if writer is not None else 0
        version = slot_map.version if slot_map is not None else 0
        depth = writer.queue.qsize() if writer is not None else 0
        gauges = (
            ("tally_writer_epoch", "Writer lease epoch (0: standby)", epoch),
            ("tally_slot_map_version", "Slot map version held (0: none)", version),
            ("tally_queue_depth", "Requests waiting for the writer", depth),
            ("tally_prepared_pieces", "Cross-shard pieces held (sampled)", piece_count),
            ("tally_prepared_oldest_age_seconds", "Age of the oldest held piece", age_s),
            ("tally_cold_last_block", "Last journal block in cold segments (sampled)", last_cold),
            (
                "tally_hot_history_age_seconds",
                "Age of the oldest journal block still in PostgreSQL (sampled): the archiver's "
                "lag past its --older-than",
                hot_age_s,
            ),
        )
        for name, documentation, value in gauges:
            family = GaugeMetricFamily(name, documentation, labels=["shard"])
            family.add_metric([shard], value)
            yield family
        yield from _writer_counters(shard, writer)


def _writer_counters(shard: str, writer: Writer | None) -> Iterator[Metric]:
    hits = CounterMetricFamily("tally_cache_hits", "Writer cache hits", labels=["shard", "cache"])
    misses = CounterMetricFamily(
        "tally_cache_misses", "Writer cache misses (then loaded)", labels=["shard", "cache"]
    )
    entries = GaugeMetricFamily("tally_cache_entries", "Records cached", labels=["shard", "cache"])
    failures = CounterMetricFamily(
        "tally_commit_failures",
        "Batches whose commit failed: fenced, error (before COMMIT was sent: nothing written) "
        "or outcome_unknown (COMMIT in flight)",
        labels=["shard", "kind"],
    )
    if writer is not None:  # a standby has no writer yet: no series
        for name, cache in (("accounts", writer.accounts), ("transactions", writer.transactions)):
            hits.add_metric([shard, name], cache.hits)
            misses.add_metric([shard, name], cache.misses)
            entries.add_metric([shard, name], len(cache.entries))
        failures.add_metric([shard, "fenced"], writer.commit_fenced_count)
        failures.add_metric([shard, "error"], writer.commit_failed_count)
        failures.add_metric([shard, "outcome_unknown"], writer.commit_outcome_unknown_count)
    yield from (hits, misses, entries, failures)
