"""Prometheus metrics of one process, in a registry of its own, served on their own HTTP port.

RpcMetrics instruments gRPC handlers of any process that serves them; NodeMetrics adds what a
shard node knows (its writer, caches, cross-shard pieces, slot map), GatewayMetrics what a
gateway knows (its calls to the shards, coalescing, WRONG_SHARD retries, cross-shard
transactions, slot map). MetricsServer serves a registry at /metrics.

Naming: a node's series are `tally_*` labelled {shard="N"}; a gateway's are `tally_gateway_*`
(the same RPC metrics under their own names), so that summing any family over everything one
Prometheus scrapes never counts an item twice (once at the gateway, once at its shard).

Hot-path budget: per request a clock read, a histogram and a counter update, and for write
RPCs one collections.Counter pass over the item results; per gateway call to a shard, a few
histogram observations. What is already counted in plain ints (cache hits, failed commits,
queues, calls in flight) is read at scrape time by a collector, on the HTTP server's thread;
reading plain ints and a container's length there is safe under the GIL.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import operator
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import Any, Protocol

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from core.model import Result, ResultCode
from core.slots import SlotMap
from core.store import shard as store
from shards.node.writer import Writer

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
# Client requests coalesced into one gateway call to a shard (up to its item limit).
SHARD_CALL_REQUESTS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 8190)
# Cross-shard units (transactions, linked groups) that go through the two phases together.
CROSS_SHARD_BATCH_BUCKETS = (1, 2, 4, 8, 16, 64, 256, 1024, 8190)
PREPARED_QUERY_TIMEOUT_S = 10.0
SERVER_STOP_TIMEOUT_S = 5.0

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

    def __init__(
        self,
        registry: CollectorRegistry,
        fixed_labels: Mapping[str, str],
        prefix: str = "tally_",
    ) -> None:
        names = tuple(fixed_labels)
        self._fixed = tuple(fixed_labels.values())
        self.duration = Histogram(
            f"{prefix}rpc_duration_seconds",
            "Time to serve an RPC, from its request bytes to its response message",
            [*names, "method"],
            registry=registry,
            buckets=RPC_SECONDS_BUCKETS,
        )
        self.calls = Counter(
            f"{prefix}rpc",
            "RPCs served, by gRPC status",
            [*names, "method", "status"],
            registry=registry,
        )
        self.item_results = Counter(
            f"{prefix}item_results",
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
                piece_count, oldest_ns = await store.prepared_pieces(
                    read_pool, PREPARED_QUERY_TIMEOUT_S
                )
                self.prepared.update(piece_count, oldest_ns)
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


class CallQueueView(Protocol):
    """One coalescing queue of a gateway's link to a shard (plain ints, read at scrape time)."""

    @property
    def inflight_call_count(self) -> int: ...

    @property
    def queued_request_count(self) -> int: ...


class LinkView(Protocol):
    def call_queues(self) -> Iterable[tuple[str, CallQueueView]]: ...


class GatewayView(Protocol):
    """What the gateway's collector reads at scrape time."""

    @property
    def slot_map(self) -> SlotMap | None: ...

    @property
    def links(self) -> Mapping[int, LinkView]: ...


class ShardCallMetrics:
    """A gateway's coalesced calls of one write method to one shard; children bound once, so a
    call costs four observations and no label lookups."""

    __slots__ = ("_duration", "_failures", "_items", "_requests", "_wait")

    def __init__(self, metrics: GatewayMetrics, shard: str, method: str) -> None:
        self._duration = metrics.shard_call_duration.labels(shard, method)
        self._failures = metrics.shard_call_failures.labels(shard, method)
        self._items = metrics.shard_call_items.labels(shard, method)
        self._requests = metrics.shard_call_requests.labels(shard, method)
        self._wait = metrics.shard_call_wait.labels(shard, method)

    def observe(
        self, request_count: int, item_count: int, wait_s: float, seconds: float, failed: bool
    ) -> None:
        """One call: client requests and items it carried, how long its oldest request queued,
        how long the call took, and whether it failed (its items answered UNAVAILABLE)."""
        self._requests.observe(request_count)
        self._items.observe(item_count)
        self._wait.observe(wait_s)
        self._duration.observe(seconds)
        if failed:
            self._failures.inc()


class GatewayMetrics:
    """Everything a gateway exports, in a registry of its own (always built; served only with
    GatewayConfig.metrics_listen)."""

    def __init__(self, gateway: GatewayView) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.rpc = RpcMetrics(registry, {}, prefix="tally_gateway_")
        shard_method = ["shard", "method"]
        self.shard_call_duration = Histogram(
            "tally_gateway_shard_call_duration_seconds",
            "The gateway's calls to shard nodes (coalesced writes and two-phase-commit calls)",
            shard_method,
            registry=registry,
            buckets=RPC_SECONDS_BUCKETS,
        )
        self.shard_call_failures = Counter(
            "tally_gateway_shard_call_failures",
            "Calls to shard nodes that failed with a gRPC error",
            shard_method,
            registry=registry,
        )
        self.shard_call_items = Histogram(
            "tally_gateway_shard_call_items",
            "Items per coalesced write call to a shard",
            shard_method,
            registry=registry,
            buckets=BATCH_ITEMS_BUCKETS,
        )
        self.shard_call_requests = Histogram(
            "tally_gateway_shard_call_requests",
            "Client requests coalesced into one write call to a shard",
            shard_method,
            registry=registry,
            buckets=SHARD_CALL_REQUESTS_BUCKETS,
        )
        self.shard_call_wait = Histogram(
            "tally_gateway_shard_call_wait_seconds",
            "Time the oldest request of a coalesced call waited for a free call slot",
            shard_method,
            registry=registry,
            buckets=RPC_SECONDS_BUCKETS,
        )
        self._wrong_shard_retries = Counter(
            "tally_gateway_wrong_shard_retries",
            "Rounds of resending after a shard answered WRONG_SHARD (each reloads the slot map)",
            registry=registry,
        )
        self._slot_map_refresh_failures = Counter(
            "tally_gateway_slot_map_refresh_failures",
            "Slot map reloads from the control database that failed",
            registry=registry,
        )
        self._cross_shard_seconds = Histogram(
            "tally_gateway_cross_shard_duration_seconds",
            "Two-phase commit of a request's cross-shard units, until their outcome",
            registry=registry,
            buckets=RPC_SECONDS_BUCKETS,
        )
        self._cross_shard_batch = Histogram(
            "tally_gateway_cross_shard_batch_units",
            "Cross-shard units (transactions, linked groups) taken through the phases together",
            registry=registry,
            buckets=CROSS_SHARD_BATCH_BUCKETS,
        )
        self._cross_shard_outcomes = Counter(
            "tally_gateway_cross_shard_items",
            "Items of cross-shard units, by result code (ABORTED: no decision before the deadline)",
            ["code"],
            registry=registry,
        )
        self._cross_shard_phase = Histogram(
            "tally_gateway_cross_shard_phase_duration_seconds",
            "One two-phase-commit phase (Prepare, Commit, Abort, Resolve) across its shards",
            ["phase"],
            registry=registry,
            buckets=RPC_SECONDS_BUCKETS,
        )
        self._outcome_children: dict[int, Any] = {}
        self._phase_children: dict[str, Any] = {}
        registry.register(_GatewayStateCollector(gateway))

    def shard_calls(self, shard_id: int, method: str) -> ShardCallMetrics:
        return ShardCallMetrics(self, str(shard_id), method)

    def metered_stub(self, stub: Any, service: ServiceDescriptor, shard_id: int) -> Any:
        """A stand-in for a client stub of `service` whose calls are timed, and counted when
        they fail, as calls to shard shard_id."""
        shard = str(shard_id)
        return SimpleNamespace(
            **{m.name: self._timed(getattr(stub, m.name), shard, m.name) for m in service.methods}
        )

    def _timed(self, call: Callable[..., Any], shard: str, method: str) -> Callable[..., Any]:
        duration = self.shard_call_duration.labels(shard, method)
        failures = self.shard_call_failures.labels(shard, method)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await call(*args, **kwargs)
            except grpc.aio.AioRpcError:
                failures.inc()
                raise
            finally:
                duration.observe(time.perf_counter() - started)

        return timed

    def wrong_shard_retry(self) -> None:
        self._wrong_shard_retries.inc()

    def slot_map_refresh_failed(self) -> None:
        self._slot_map_refresh_failures.inc()

    def cross_shard_executed(self, unit_results: Sequence[Sequence[Any]], seconds: float) -> None:
        """Once per two-phase-commit run: its duration, its units, and their items' results
        (ItemResult-like: a `code`), counted in one Counter pass."""
        self._cross_shard_seconds.observe(seconds)
        self._cross_shard_batch.observe(len(unit_results))
        children = self._outcome_children
        codes = map(_result_code, itertools.chain.from_iterable(unit_results))
        for code, count in collections.Counter(codes).items():
            child = children.get(code)
            if child is None:
                child = children[code] = self._cross_shard_outcomes.labels(result_code_name(code))
            child.inc(count)

    def cross_shard_phase(self, phase: str, seconds: float) -> None:
        """One phase of a two-phase-commit run, across its shards (the Shard method: "Prepare",
        "Commit", "Abort", "Resolve")."""
        child = self._phase_children.get(phase)
        if child is None:
            child = self._phase_children[phase] = self._cross_shard_phase.labels(phase)
        child.observe(seconds)


class _GatewayStateCollector:
    """The gateway's slot map and its links' queues, read at scrape time."""

    def __init__(self, gateway: GatewayView) -> None:
        self._gateway = gateway

    def collect(self) -> Iterator[Metric]:
        slot_map = self._gateway.slot_map
        version = GaugeMetricFamily(
            "tally_gateway_slot_map_version", "Slot map version held (0: none)"
        )
        version.add_metric([], slot_map.version if slot_map is not None else 0)
        yield version
        inflight = GaugeMetricFamily(
            "tally_gateway_shard_calls_in_flight",
            "Coalesced write calls to a shard awaiting their answer",
            labels=["shard", "method"],
        )
        queued = GaugeMetricFamily(
            "tally_gateway_shard_queued_requests",
            "Client requests waiting for a free call slot to a shard",
            labels=["shard", "method"],
        )
        for shard_id, link in list(self._gateway.links.items()):
            for method, queue in link.call_queues():
                labels = [str(shard_id), method]
                inflight.add_metric(labels, queue.inflight_call_count)
                queued.add_metric(labels, queue.queued_request_count)
        yield inflight
        yield queued


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
