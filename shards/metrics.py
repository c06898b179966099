"""Prometheus metrics of one process, in a registry of its own, served on their own HTTP port.

RpcMetrics instruments gRPC handlers of any process that serves them (nodes; gateways too);
NodeMetrics adds what a shard node knows: its writer, caches, cross-shard pieces, slot map.
MetricsServer serves a registry at /metrics.

Hot-path budget: per request a clock read, a histogram and a counter update, and for write
RPCs one collections.Counter pass over the item results. What the writer already counts
(cache hits, failed commits, the queue) is read at scrape time by a collector, on the HTTP
server's thread; reading plain ints and a deque's length there is safe under the GIL.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import operator
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import Any, Protocol

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from core.model import Kind, Result, ResultCode
from core.slots import SlotMap
from shards.writer import Writer

log = logging.getLogger("tally.metrics")

Handler = Callable[[Any, Any], Awaitable[Any]]

RPC_SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
COMMIT_SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0,
)  # fmt: skip
# Up to WriterConfig.batch_item_count_max (8,190 by default).
BATCH_ITEMS_BUCKETS = (1, 8, 64, 256, 1024, 2048, 4096, 8190, 16384)
PREPARED_QUERY_TIMEOUT_S = 10.0
SERVER_STOP_TIMEOUT_S = 5.0

# Cross-shard pieces still held, and the oldest one's creation time. One scan of holds (small:
# only open holds live there) joined on the transactions primary key.
PREPARED_PIECES_SQL = """
    SELECT count(*) AS piece_count, coalesce(min(t.timestamp_ns), 0) AS oldest_ns
    FROM holds h JOIN transactions t ON t.id = h.transaction_id
    WHERE t.kind = $1
"""

_result_code = operator.attrgetter("code")


def result_code_name(code: int) -> str:
    try:
        return ResultCode(code).name
    except ValueError:  # a code newer than this process: still bounded, so keep the number
        return str(code)


def returns_item_results(method: MethodDescriptor) -> bool:
    """Write RPCs answer `repeated ItemResult results`: those are counted by result code."""
    field = method.output_type.fields_by_name.get("results")
    return field is not None and field.message_type.name == "ItemResult"


class RpcMetrics:
    """Latency, status and item results of the RPCs one process serves.

    fixed_labels (say {"shard": "3"}) are added to every series, so that processes scraped
    into one Prometheus stay apart without relabelling.
    """

    def __init__(self, registry: CollectorRegistry, fixed_labels: Mapping[str, str]) -> None:
        names = tuple(fixed_labels)
        self._fixed = tuple(fixed_labels.values())
        self.duration = Histogram(
            "tally_rpc_duration_seconds",
            "Time to serve an RPC, from its request bytes to its response message",
            [*names, "method"],
            registry=registry,
            buckets=RPC_SECONDS_BUCKETS,
        )
        self.calls = Counter(
            "tally_rpc",
            "RPCs served, by gRPC status",
            [*names, "method", "status"],
            registry=registry,
        )
        self.item_results = Counter(
            "tally_item_results",
            "Items answered by write RPCs, by result code (REPLAYED: idempotent retries)",
            [*names, "method", "code"],
            registry=registry,
        )

    def wrap(self, method: MethodDescriptor, handler: Handler) -> Handler:
        """handler(request, context), timed and counted. Label children are bound here or on
        first use, so a call costs no label lookups."""
        name = method.name
        duration = self.duration.labels(*self._fixed, name)
        calls: dict[grpc.StatusCode, Any] = {}
        item_results: dict[int, Any] | None = {} if returns_item_results(method) else None

        def count_call(status: grpc.StatusCode, started: float) -> None:
            duration.observe(time.perf_counter() - started)
            child = calls.get(status)
            if child is None:
                child = calls[status] = self.calls.labels(*self._fixed, name, status.name)
            child.inc()

        async def handle(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            try:
                response = await handler(request, context)
            except asyncio.CancelledError:
                count_call(grpc.StatusCode.CANCELLED, started)
                raise
            except Exception:  # an abort (its status is on the context) or a bug (UNKNOWN)
                count_call(context.code() or grpc.StatusCode.UNKNOWN, started)
                raise
            count_call(context.code() or grpc.StatusCode.OK, started)
            if item_results is not None:
                self._count_items(item_results, name, response.results)
            return response

        return handle

    def _count_items(self, children: dict[int, Any], method: str, results: Sequence[Any]) -> None:
        # One C-level pass over the items, then one increment per distinct code.
        for code, count in collections.Counter(map(_result_code, results)).items():
            child = children.get(code)
            if child is None:
                child = children[code] = self.item_results.labels(
                    *self._fixed, method, result_code_name(code)
                )
            child.inc(count)

    def instrument(self, servicer: Any, service: ServiceDescriptor) -> Any:
        """A stand-in for a generated servicer whose methods are wrapped (for add_*_to_server)."""
        return SimpleNamespace(
            **{m.name: self.wrap(m, getattr(servicer, m.name)) for m in service.methods}
        )


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
        self.registry.register(_NodeStateCollector(shard, node, self.prepared))

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
        """Count cross-shard pieces every interval_s until stopping (a scrape must not cost a
        query); the oldest one's age is computed at scrape time from its creation time."""
        while not stopping.is_set():
            try:
                row = await read_pool.fetchrow(
                    PREPARED_PIECES_SQL, int(Kind.PREPARED), timeout=PREPARED_QUERY_TIMEOUT_S
                )
                self.prepared.update(int(row["piece_count"]), int(row["oldest_ns"]))
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


def _histogram(
    registry: CollectorRegistry, name: str, documentation: str, buckets: Sequence[float]
) -> Histogram:
    return Histogram(name, documentation, ["shard"], registry=registry, buckets=buckets)


def _counter(registry: CollectorRegistry, name: str, documentation: str) -> Counter:
    return Counter(name, documentation, ["shard"], registry=registry)


class _NodeStateCollector:
    """Node and writer state read at scrape time; the hot path keeps plain ints only."""

    def __init__(self, shard: str, node: NodeView, prepared: PreparedSample) -> None:
        self._shard = shard
        self._node = node
        self._prepared = prepared

    def collect(self) -> Iterator[Metric]:
        shard = self._shard
        writer = self._node.writer
        slot_map = self._node.slot_map
        piece_count, oldest_ns = self._prepared.value
        age_s = max(0.0, (time.time_ns() - oldest_ns) / 1e9) if piece_count else 0.0
        epoch = writer.epoch if writer is not None else 0
        version = slot_map.version if slot_map is not None else 0
        depth = writer.queue.qsize() if writer is not None else 0
        gauges = (
            ("tally_writer_epoch", "Writer lease epoch (0: standby)", epoch),
            ("tally_slot_map_version", "Slot map version held (0: none)", version),
            ("tally_queue_depth", "Requests waiting for the writer", depth),
            ("tally_prepared_pieces", "Cross-shard pieces held (sampled)", piece_count),
            ("tally_prepared_oldest_age_seconds", "Age of the oldest held piece", age_s),
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
        "tally_commit_failures", "Batches whose commit failed", labels=["shard", "kind"]
    )
    if writer is not None:  # a standby has no writer yet: no series
        for name, cache in (("accounts", writer.accounts), ("transactions", writer.transactions)):
            hits.add_metric([shard, name], cache.hits)
            misses.add_metric([shard, name], cache.misses)
            entries.add_metric([shard, name], len(cache.entries))
        failures.add_metric([shard, "fenced"], writer.commit_fenced_count)
        failures.add_metric([shard, "error"], writer.commit_failed_count)
    yield from (hits, misses, entries, failures)


class MetricsServer:
    """/metrics for one registry: prometheus_client's HTTP server on a daemon thread, bound to
    the given address only."""

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        self._registry = registry
        self._listen = listen
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> int:
        host, port = parse_listen(self._listen)
        self._server, self._thread = start_http_server(port, host, registry=self._registry)
        self.port = int(self._server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            # shutdown() waits for the serving loop's next poll (up to 0.5 s): off the loop.
            await asyncio.to_thread(self._stop_blocking)

    def _stop_blocking(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(SERVER_STOP_TIMEOUT_S)
        self._server = None


def parse_listen(listen: str) -> tuple[str, int]:
    """Split host:port or [v6 host]:port (port 0: any free one); the host is required, so
    nothing binds to every interface by accident."""
    host, separator, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not separator or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"metrics listen address {listen!r} is not host:port")
    return host, int(port)
