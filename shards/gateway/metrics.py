"""Prometheus metrics of a gateway: its calls to the shards, coalescing, WRONG_SHARD retries,
cross-shard transactions and slot map, besides its RPCs (shards.rpc.metrics). Series are
`tally_gateway_*`, so that summing a family over every process never counts an item twice."""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import Any, Protocol

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from core.slots import SlotMap
from shards.rpc.metrics import (
    BATCH_ITEMS_BUCKETS,
    RPC_SECONDS_BUCKETS,
    RpcMetrics,
    StreamMetrics,
    result_code_name,
    result_code_of,
)

# Client requests coalesced into one gateway call to a shard (up to its item limit).
SHARD_CALL_REQUESTS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 8190)
# Cross-shard units (transactions, linked groups) that go through the two phases together.
CROSS_SHARD_BATCH_BUCKETS = (1, 2, 4, 8, 16, 64, 256, 1024, 8190)


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

    # Why long: one declaration per exported series, in the order docs and the dashboard list
    # them; split into helpers, the table would be harder to check against them, not simpler.
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
        self.streams = StreamMetrics(registry, {}, prefix="tally_gateway_")
        self.stream_shard_retries = Counter(
            "tally_gateway_stream_shard_retries",
            "A StreamJournal's stream from one shard opened again after it failed",
            ["shard"],
            registry=registry,
        )
        self._holds_undecided = Counter(
            "tally_gateway_hold_decisions_refused",
            "Posts and voids of cross-shard holds not decided now (answered retryable), by "
            "why: unreachable, rearm_failed, clock_skew (a participant's clock ahead of its "
            "coordinator's beyond the bound)",
            ["reason"],
            registry=registry,
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
        codes = map(result_code_of, itertools.chain.from_iterable(unit_results))
        for code, count in collections.Counter(codes).items():
            child = children.get(code)
            if child is None:
                child = children[code] = self._cross_shard_outcomes.labels(result_code_name(code))
            child.inc(count)

    def hold_decision_refused(self, reason: str) -> None:
        self._holds_undecided.labels(reason=reason).inc()

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
