"""The foreground life of a server process: announce it, run it until SIGINT/SIGTERM; and the
one way every listener's grpc.aio server is built (its concurrency limit)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
from collections.abc import Sequence
from typing import Any, Protocol

import grpc

from core import limits

RPC_CONCURRENCY_MAX_MESSAGE = "Concurrent RPC limit exceeded!"  # gRPC's own words


def tune_garbage_collector() -> None:
    """For a server process (a node, a gateway), after start-up: what exists now (modules, the
    server) is never garbage, so move it out of the collector's sight; and collect the young
    generation less often, since every RPC allocates many short-lived objects that reference
    counting frees (the young collections were 6-7% of a busy gateway's CPU)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def grpc_server(
    interceptors: Sequence[Any], options: Sequence[tuple[str, Any]], rpc_concurrency_max: int
) -> grpc.aio.Server:
    """A listener's server. At most rpc_concurrency_max RPCs run at once; one more is refused
    at once with RESOURCE_EXHAUSTED (retryable), before any handler or the guard runs, rather
    than queued without bound: each RPC in flight holds its request (up to 16 MiB) and a
    coroutine."""
    if rpc_concurrency_max < 1:
        raise ValueError(f"rpc_concurrency_max must be at least 1, got {rpc_concurrency_max}")
    return grpc.aio.server(
        interceptors=list(interceptors),
        options=list(options),
        maximum_concurrent_rpcs=rpc_concurrency_max,
    )


def add_rpc_concurrency_flag(parser: argparse.ArgumentParser) -> None:
    """--rpc-concurrency-max (TALLY_RPC_CONCURRENCY_MAX), for every server command."""

    def at_least_one(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
        return value

    parser.add_argument(
        "--rpc-concurrency-max",
        type=at_least_one,
        default=int(
            os.environ.get("TALLY_RPC_CONCURRENCY_MAX", str(limits.rpc_concurrency_max_default))
        ),
        help="RPCs each listener serves at once; one more is refused with RESOURCE_EXHAUSTED "
        "(default %(default)s)",
    )


class Server(Protocol):
    def request_stop(self) -> None: ...

    async def run(self) -> None: ...


def metrics_url(listen: str, port: int) -> str:
    return f"http://{listen.rsplit(':', 1)[0]}:{port}/metrics"


async def run_announced(
    server: Server, service: str, listen: str, port: int, metrics_listen: str, metrics_port: int
) -> int:
    """Print the metrics URL (if any) and then the serving line, which whoever started this
    process waits for; run until a signal asks to stop; say so. The signal handlers are in
    place before the serving line: a SIGTERM sent as soon as it is read stops the server
    gracefully instead of killing the process."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, server.request_stop)
    if metrics_port:
        print(f"tally: metrics on {metrics_url(metrics_listen, metrics_port)}", flush=True)
    host = listen.rsplit(":", 1)[0]
    print(f"tally: serving {service} on {host}:{port}", flush=True)
    await server.run()
    print("tally: stopped", flush=True)
    return 0
