"""`tally monitor`'s process: the consumer (shards/monitor/consumer.py), the tally.v1.Monitor
gRPC service over its books, behind the guard, and its Prometheus series.

Metrics (prefix tally_monitor_): the portfolio's coverage distribution over the 30-day window
(`coverage` histogram, one observation per borrower and currency with something due),
borrowers, alerts active by rule, alerts published, blocks and postings applied, how far
behind the broker's stream the monitor is (`lag_messages`), flows joined, pending joins, late
flows, checkpoints, restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from core import validation
from core.authority import Action, Denial, check_action, check_partition, is_unscoped
from core.flows import rules
from core.flows.engine import FlowEngine
from core.flows.features import PortfolioSummary
from core.flows.model import WINDOW_DAYS
from shards.monitor import convert
from shards.monitor.books import end_of_day_ns
from shards.monitor.consumer import Consumer, MonitorConfig
from shards.rpc.metrics import LoopMetricsServer, RpcMetrics
from shards.rpc.servicer import abort, parsing_handler
from shards.rpc.serving import grpc_server
from shards.security import guard
from shards.security.credentials import ServerSecurity
from tally.v1 import monitor_pb2 as mpb

log = logging.getLogger("tally.monitor")

SERVICE_NAME: Final = "tally.v1.Monitor"
PORTFOLIO_WINDOW_DAYS: Final = 30
Context = Any  # grpc.aio.ServicerContext


@dataclass(frozen=True)
class MonitorServerConfig:
    consumer: MonitorConfig
    rule_set: rules.RuleSet
    security: ServerSecurity
    listen: str = "127.0.0.1:0"
    metrics_listen: str = ""
    rpc_concurrency_max: int = 64
    shutdown_grace_s: float = 2.0


class MonitorService:
    """GetFlowProfile and GetPortfolio over the consumer's books (read on the event loop the
    consumer applies blocks on: a profile is of whole blocks)."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer

    async def GetFlowProfile(
        self, request: mpb.GetFlowProfileRequest, context: Context
    ) -> mpb.FlowProfile:
        key = request.partition_key
        problem = _key_problem(key)
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        await guard.refuse(context, check_partition(guard.caller(), Action.PROFILE, key))
        if request.as_of_ns < 0:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "as_of_ns must be >= 0")
        books = self._consumer.books
        engine = books.engine
        as_of_ns = request.as_of_ns or _engine_now(engine)
        profile = engine.profile(key, as_of_ns)
        if profile is None:
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"the monitor holds no flows or loans of partition key {key!r} "
                f"(read up to stream message {books.stream_sequence})",
            )
        return convert.profile_to_proto(profile, engine.active_alerts(key), books.stream_sequence)

    async def GetPortfolio(
        self, request: mpb.GetPortfolioRequest, context: Context
    ) -> mpb.Portfolio:
        identity = guard.caller()
        denial = check_action(identity, Action.PROFILE)
        if denial is None and not is_unscoped(identity, Action.PROFILE):
            denial = Denial(
                "scope",
                f"the portfolio covers every borrower: it needs an unscoped grant (monitor or "
                f"reader over **, or auditor); {identity.describe()} has "
                f"{', '.join(identity.accounts) or 'no accounts'}",
            )
        await guard.refuse(context, denial)
        window_days = request.window_days or PORTFOLIO_WINDOW_DAYS
        if window_days not in WINDOW_DAYS:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"window_days {request.window_days} is not one of "
                f"{', '.join(map(str, WINDOW_DAYS))}",
            )
        books = self._consumer.books
        summary = books.engine.portfolio(_engine_now(books.engine), window_days)
        return convert.portfolio_to_proto(summary, books.stream_sequence)


def _key_problem(key: str) -> str:
    if not key:
        return "partition_key is empty"
    if "/" in key:
        return f"partition_key {key[:80]!r} holds '/': give the part before the first '/'"
    return validation.id_problem(key, "partition_key")


def _engine_now(engine: FlowEngine) -> int:
    return end_of_day_ns(engine.day) if engine.day is not None else 0


class _Collector:
    """The monitor's families, made from its books. Its /metrics is served on the event loop
    (shards.rpc.metrics.LoopMetricsServer), so they are made there, between two blocks, as
    GetFlowProfile reads its profiles: never beside the consumer changing the books (read from
    a thread, the engine's dicts changed under the reading, an HTTP 500, found by the lending
    bench)."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        return iter(list(self._made()))

    def _made(self) -> Iterator[Metric]:
        books = self._consumer.books
        engine = books.engine
        summary = engine.portfolio(_engine_now(engine), PORTFOLIO_WINDOW_DAYS)
        yield from _portfolio_families(summary)
        yield from self._counter_families()
        yield from self._position_families()

    def _counter_families(self) -> Iterator[Metric]:
        consumer = self._consumer
        books = consumer.books
        joined = books.joiner.counters
        counters = (
            ("alerts_published", "Alerts published to the alert stream",
             consumer.published_alert_count),
            ("blocks_applied", "Journal blocks applied", books.block_count),
            ("postings_applied", "Postings of the blocks applied", books.posting_count),
            ("flows_joined", "Client transactions made whole and profiled", joined.flow_count),
            ("late_flows", "Flows of a day no longer retained (not profiled)",
             books.engine.late_flow_count),
            ("split_flows", "Parts of a cross-shard flow that came after it was made whole",
             joined.split_count),
            ("checkpoints", "Checkpoints written", consumer.checkpoint_count),
            ("restarts", "Times the consumer reloaded its checkpoint after a failure",
             consumer.restarts),
        )  # fmt: skip
        for name, help_text, value in counters:
            family = CounterMetricFamily(f"tally_monitor_{name}", help_text)
            family.add_metric([], value)
            yield family

    def _position_families(self) -> Iterator[Metric]:
        consumer = self._consumer
        books = consumer.books
        lag = GaugeMetricFamily(
            "tally_monitor_lag_messages",
            "Journal messages the broker holds that the monitor has not applied yet",
        )
        lag.add_metric([], max(0, consumer.journal_last_sequence - books.stream_sequence))
        yield lag
        pending = GaugeMetricFamily(
            "tally_monitor_pending_joins", "Cross-shard transactions waiting for their pieces"
        )
        pending.add_metric([], books.joiner.pending_count)
        yield pending
        position = GaugeMetricFamily(
            "tally_monitor_stream_sequence", "Stream sequence of the last journal block applied"
        )
        position.add_metric([], books.stream_sequence)
        yield position


def _portfolio_families(summary: PortfolioSummary) -> Iterator[Metric]:
    buckets = []
    cumulative = 0
    for bound, count in summary.coverage_counts:
        cumulative += count
        buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
    coverage = HistogramMetricFamily(
        "tally_monitor_coverage",
        "Debt-service coverage (inflow over principal and interest due) over the last 30 "
        "days, per borrower and currency with something due",
        labels=["window_days"],
    )
    coverage.add_metric([str(PORTFOLIO_WINDOW_DAYS)], buckets, float("nan"))
    yield coverage
    gauges = GaugeMetricFamily(
        "tally_monitor_borrowers", "Borrowers (partition keys with a loan account)"
    )
    gauges.add_metric([], summary.borrower_count)
    yield gauges
    undefined = GaugeMetricFamily(
        "tally_monitor_coverage_undefined",
        "Borrower-currency pairs with nothing due in the window (no coverage)",
    )
    undefined.add_metric([], summary.coverage_undefined_count)
    yield undefined
    active = GaugeMetricFamily(
        "tally_monitor_alerts_active", "Alerts firing now, by rule", labels=["rule"]
    )
    counts = dict(summary.active_alert_counts)
    for rule in sorted(set(counts) | set(rules.RULE_NAMES)):
        active.add_metric([rule], counts.get(rule, 0))
    yield active


class MonitorServer:
    def __init__(self, config: MonitorServerConfig) -> None:
        self.config = config
        self.consumer = Consumer(config.consumer, config.rule_set)
        self.registry = CollectorRegistry(auto_describe=False)
        self.metrics = RpcMetrics(self.registry, {}, prefix="tally_monitor_")
        self._collector = _Collector(self.consumer)
        self.registry.register(self._collector)
        denials = guard.denials_counter(self.registry, "tally_monitor_")
        self._guard = guard.Guard(config.security, guard.CLIENT, denials)
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._stopping = asyncio.Event()
        self._metrics_server: LoopMetricsServer | None = None
        self.port = 0
        self.metrics_port = 0
        self.started_s = time.monotonic()

    async def start(self) -> int:
        self._server = grpc_server(
            [self._guard.interceptor()],
            [("grpc.max_receive_message_length", 1 << 20)],
            self.config.rpc_concurrency_max,
        )
        handler = parsing_handler(MonitorService(self.consumer), mpb, "Monitor", self.metrics)
        self._server.add_generic_rpc_handlers((handler,))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port = self._server.add_secure_port(
            self.config.listen, self._guard.server_credentials()
        )
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        await self._server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        await self._health.set("", serving)
        await self._health.set(SERVICE_NAME, serving)
        if self.config.metrics_listen:
            self._metrics_server = LoopMetricsServer(self.registry, self.config.metrics_listen)
            self.metrics_port = await self._metrics_server.start()
        return self.port

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        consuming = asyncio.ensure_future(self.consumer.run(self._stopping))
        stopped = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({consuming, stopped}, return_when=asyncio.FIRST_COMPLETED)
            self._stopping.set()
            await consuming  # raises MonitorError if the consumer cannot go on
        finally:
            stopped.cancel()
            if not consuming.done():
                consuming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consuming
            await self._health.enter_graceful_shutdown()
            if self._server is not None:
                await self._server.stop(self.config.shutdown_grace_s)
            if self._metrics_server is not None:
                await self._metrics_server.stop()
