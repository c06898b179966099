"""The CPU floor of one unary gRPC call on this machine: `python -m bench.closed_loop.grpc_floor`.

What the gateway path cannot go below, whatever Tally does in its handlers (issue 16, "the
gateway path at least as fast as the row-locking ledger"). A server process that does nothing
but parse a one-transfer `PostTransactionsRequest` and answer one CREATED result, on the
gateway's stack (grpc.aio on uvloop, TLS with the cluster's certificates as `tally up` makes
them, a client certificate required), driven by --clients concurrent callers in this process
(grpc.aio on uvloop, one channel, as bench.common.tally_client). It measures calls/s and the
CPU microseconds per call of the server and of the callers. A Tally gateway pays this for each
client call and, amortised by coalescing, again for its call to the node, which pays it on its
side too.

Prints one JSON line per run and, with --out, writes results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from bench.common import cpu
from bench.common.measure import CallOutcome, latency_summary_ms, run_closed_loop
from shards.local.embedded_pg import free_port
from shards.security import directory
from tally.v1 import ledger_pb2 as pb

METHOD = "/tally.v1.Ledger/PostTransactions"


def _request() -> bytes:
    legs = [
        pb.Leg(account_id="cust-00001/dep", side=pb.SIDE_DEBIT, amount=100, currency="USD"),
        pb.Leg(account_id="cust-00002/dep", side=pb.SIDE_CREDIT, amount=100, currency="USD"),
    ]
    transaction = pb.Transaction(id="cust-00001/floor-1", code=1, legs=legs)
    return bytes(pb.PostTransactionsRequest(transactions=[transaction]).SerializeToString())


class _PassThrough(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """An interceptor that changes nothing (as the guard's, minus its check): what having one
    costs a call."""

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)


async def serve(port: int, tls_dir: Path, interceptor: bool) -> None:
    response = pb.PostTransactionsResponse(
        results=[pb.ItemResult(code=pb.RESULT_CODE_CREATED, timestamp_ns=1)]
    )

    async def post(request: pb.PostTransactionsRequest, context: object) -> object:
        return response

    handler = grpc.method_handlers_generic_handler(
        "tally.v1.Ledger",
        {
            "PostTransactions": grpc.unary_unary_rpc_method_handler(
                post,
                request_deserializer=pb.PostTransactionsRequest.FromString,
                response_serializer=pb.PostTransactionsResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server(interceptors=[_PassThrough()] if interceptor else None)
    server.add_generic_rpc_handlers((handler,))
    credentials = directory.server_security(tls_dir).server_credentials(require_certificate=True)
    server.add_secure_port(f"127.0.0.1:{port}", credentials)
    await server.start()
    print("serving", flush=True)
    await server.wait_for_termination()


async def measure(
    args: argparse.Namespace, tls_dir: Path, server_pid: int, port: int
) -> dict[str, object]:
    security = directory.client_security(tls_dir)
    channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", security.channel_credentials())
    call = channel.unary_unary(METHOD)
    body = _request()
    await call(body, timeout=10)
    meter = cpu.CpuMeter({"server": cpu.single_process(server_pid), "callers": cpu.bench_process()})

    async def one(number: int) -> CallOutcome:
        answer = pb.PostTransactionsResponse.FromString(await call(body, timeout=10))
        name = pb.ResultCode.Name(answer.results[0].code).removeprefix("RESULT_CODE_")
        return CallOutcome(codes=Counter({name: 1}))

    async def begin() -> None:
        meter.start()

    async def end() -> None:
        meter.stop()

    window, recorder = await run_closed_loop(
        one, args.clients, args.warmup_s, args.duration_s, begin, end
    )
    await channel.close()
    calls = recorder.created_in_window
    seconds = meter.seconds_by_role()
    return {
        "interceptor": args.interceptor,
        "clients": args.clients,
        "calls_per_s": round(calls / window.seconds, 1),
        "latency_ms": latency_summary_ms(recorder.latencies_ns),
        "cpu_us_per_call": {
            role: round(1e6 * s / calls, 1) if calls else 0.0
            for role, s in seconds.items()
            if role != "machine"
        },
        "cores": {role: round(s / window.seconds, 2) for role, s in seconds.items()},
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.closed_loop.grpc_floor")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--interceptor",
        action="store_true",
        help="the server has one interceptor that changes nothing (what one costs a call)",
    )
    parser.add_argument("--serve-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tls-dir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="tally-grpc-floor-") as work:
        tls_dir = Path(work) / "tls"
        directory.init(tls_dir)
        port = free_port()
        server = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.closed_loop.grpc_floor",
            "--serve-port",
            str(port),
            "--tls-dir",
            str(tls_dir),
            *(["--interceptor"] if args.interceptor else []),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert server.stdout is not None
            line = await asyncio.wait_for(server.stdout.readline(), timeout=30)
            if line.strip() != b"serving":
                raise RuntimeError("the floor server did not start")
            result = await measure(args, tls_dir, server.pid, port)
        finally:
            server.terminate()
            await asyncio.wait_for(server.wait(), timeout=10)
    print(json.dumps(result), flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    import uvloop

    args = parse(argv)
    if args.serve_port is not None:
        uvloop.run(serve(args.serve_port, args.tls_dir, args.interceptor))
        return 0
    started = time.monotonic()
    code = int(uvloop.run(run(args)))
    print(f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
