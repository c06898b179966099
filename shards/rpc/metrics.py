"""Prometheus metrics of one process, in a registry of its own, served on their own HTTP port.

What every process shares: RpcMetrics instruments gRPC handlers of any process that serves
them; MetricsServer serves a registry at /metrics. Each process adds what it knows in its own
package: shards.node.metrics (writer, caches, cross-shard pieces, slot map) and
shards.gateway.metrics (calls to the shards, coalescing, WRONG_SHARD retries, cross-shard
transactions, slot map).

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
import logging
import operator
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

from core.model import ResultCode

log = logging.getLogger("tally.metrics")

Handler = Callable[[Any, Any], Awaitable[Any]]
StreamHandler = Callable[[Any, Any], AsyncIterator[Any]]

RPC_SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# Items per batch: a node's committed batches and a gateway's calls to a shard, up to
# WriterConfig.batch_item_count_max (8,190 by default).
BATCH_ITEMS_BUCKETS = (1, 8, 64, 256, 1024, 2048, 4096, 8190, 16384)
SERVER_STOP_TIMEOUT_S = 5.0

result_code_of = operator.attrgetter("code")


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
        count_call = self._call_counter(name)
        item_results: dict[int, Any] | None = {} if returns_item_results(method) else None

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

    def _call_counter(self, name: str) -> Callable[[grpc.StatusCode, float], None]:
        duration = self.duration.labels(*self._fixed, name)
        calls: dict[grpc.StatusCode, Any] = {}

        def count_call(status: grpc.StatusCode, started: float) -> None:
            duration.observe(time.perf_counter() - started)
            child = calls.get(status)
            if child is None:
                child = calls[status] = self.calls.labels(*self._fixed, name, status.name)
            child.inc()

        return count_call

    def wrap_stream(self, method: MethodDescriptor, handler: StreamHandler) -> StreamHandler:
        """A server-streaming handler (an async generator), timed from its request to its end
        and counted by how it ended (a client that goes away: CANCELLED)."""
        count_call = self._call_counter(method.name)

        async def handle(request: Any, context: Any) -> AsyncIterator[Any]:
            started = time.perf_counter()
            try:
                async for response in handler(request, context):
                    yield response
            except Exception:  # an abort (its status is on the context) or a bug (UNKNOWN)
                count_call(context.code() or grpc.StatusCode.UNKNOWN, started)
                raise
            except BaseException:  # cancelled, or closed by gRPC as its client went away
                count_call(grpc.StatusCode.CANCELLED, started)
                raise
            count_call(context.code() or grpc.StatusCode.OK, started)

        return handle

    def _count_items(self, children: dict[int, Any], method: str, results: Sequence[Any]) -> None:
        # One C-level pass over the items, then one increment per distinct code.
        for code, count in collections.Counter(map(result_code_of, results)).items():
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


class StreamMetrics:
    """The change streams one process serves: open now, and blocks sent (after the caller's
    scope filtered them)."""

    def __init__(
        self, registry: CollectorRegistry, fixed_labels: Mapping[str, str], prefix: str = "tally_"
    ) -> None:
        names = tuple(fixed_labels)
        values = tuple(fixed_labels.values())
        self.open = Gauge(
            f"{prefix}streams_open", "StreamJournal streams open", names, registry=registry
        )
        self.blocks_sent = Counter(
            f"{prefix}stream_blocks_sent",
            "Journal blocks sent by StreamJournal streams",
            names,
            registry=registry,
        )
        if values:
            self.open = self.open.labels(*values)
            self.blocks_sent = self.blocks_sent.labels(*values)


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


class LoopMetricsServer:
    """/metrics for one registry, served on the event loop (asyncio), for a process whose
    collectors read state the loop changes (the monitor's books): the text is made between two
    of the loop's steps, never beside them, and the server never waits for the GIL behind a
    busy loop, as a thread's server does (a scrape of a monitor applying blocks took seconds
    that way). Answers GET and HEAD of /metrics (and /), 404 for other paths, 405 for other
    methods; a request head larger than REQUEST_HEAD_MAX_BYTES or slower than
    REQUEST_TIMEOUT_S is dropped."""

    REQUEST_HEAD_MAX_BYTES = 16 * 1024
    REQUEST_TIMEOUT_S = 10.0

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        self._registry = registry
        self._listen = listen
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        host, port = parse_listen(self._listen)
        self._server = await asyncio.start_server(
            self._serve, host, port, limit=self.REQUEST_HEAD_MAX_BYTES
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.REQUEST_TIMEOUT_S)
            parts = head.split(b"\r\n", 1)[0].split()
            method = parts[0] if parts else b""
            path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
            if method not in (b"GET", b"HEAD"):
                status, body, content_type = b"405 Method Not Allowed", b"", b"text/plain"
            elif path not in (b"/metrics", b"/"):
                status, body, content_type = b"404 Not Found", b"", b"text/plain"
            else:
                status, body = b"200 OK", generate_latest(self._registry)
                content_type = CONTENT_TYPE_LATEST.encode()
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type
                + b"\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n" + (body if method == b"GET" else b"")
            )  # fmt: skip
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a client that went away, or sent too much or too slowly: dropped
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


def parse_listen(listen: str) -> tuple[str, int]:
    """Split host:port or [v6 host]:port (port 0: any free one); the host is required, so
    nothing binds to every interface by accident."""
    host, separator, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not separator or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"metrics listen address {listen!r} is not host:port")
    return host, int(port)
