"""One transfer per call from many callers, raw gRPC against tally.client:
`python -m bench.closed_loop.client_singles`.

Issue 16's shape: a product posts one transfer per business event, from many concurrent
callers. This starts `tally up --shards N` (default 2: through the gateway), opens --customers
deposit accounts, then alternates, in one sitting, phases of --callers tasks each posting one
single-shard transfer per call until the phase ends:

- `raw`: a PostTransactions RPC of one item per call (what a product's own client does today);
- `library`: `tally.client.AsyncClient.post` per call, its batcher coalescing concurrent calls,
  every call through the gateway (`RoutingOptions(direct=False)`);
- `library-direct`: the same with direct routing on (the default): each single-shard transfer
  goes straight to its node's client listener, batched per node, and the gateway does nothing;
- `library-unbatched`: the library with its batching and its routing off (one item per RPC,
  as many RPCs in flight as callers, every call through the gateway): the library's own cost
  against `raw`, and what batching and routing bring against the two phases above.

Each phase's transfers/s, the servers' CPU per transfer (nodes, gateway, PostgreSQL) and the
bench process's, from psutil. Writes report.md and results.json to --out. The load generator
shares the machine's cores with the servers: compare the phases of one run with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from bench.common import cpu
from bench.common.local_cluster import (
    postgres_sampler,
    role_sampler,
    start_cluster,
    stop_cluster,
)
from shards.local.embedded_pg import free_port
from tally.client import (
    Account,
    AsyncClient,
    BatchOptions,
    Credentials,
    Outcome,
    RoutingOptions,
    new_id,
    transfer,
)
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc

PHASES = ("raw", "library", "library-direct", "library-unbatched")
SERVER_ROLES = ("node", "gateway", "postgres")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument(
        "--rounds", type=int, default=2, help="raw, library, library-direct, raw, ..."
    )
    parser.add_argument(
        "--in-flight-max", type=int, default=BatchOptions().in_flight_max,
        help="the library's RPCs out at once per kind (BatchOptions.in_flight_max)",
    )  # fmt: skip
    parser.add_argument(
        "--node-in-flight-max", type=int, default=RoutingOptions().node_in_flight_max,
        help="library-direct's RPCs out at once per kind and node (RoutingOptions)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("bench/reports/client-singles"))
    return parser


Post = Callable[[int], Awaitable[bool]]


def _raw_post(channel: Any) -> Post:
    stub = pb_grpc.LedgerStub(channel)

    async def post(customer: int) -> bool:
        t = transfer(new_id(f"cust-{customer}"), "@bank", f"cust-{customer}/dep", 1, "USD")
        request = pb.PostTransactionsRequest(transactions=[t.to_message()])
        response = await stub.PostTransactions(request, timeout=30)
        return bool(response.results[0].code == pb.RESULT_CODE_CREATED)

    return post


def _library_post(client: AsyncClient) -> Post:
    async def post(customer: int) -> bool:
        t = transfer(new_id(f"cust-{customer}"), "@bank", f"cust-{customer}/dep", 1, "USD")
        return (await client.post(t)).outcome is Outcome.APPLIED

    return post


async def _phase(post: Post, args: argparse.Namespace, meter: cpu.CpuMeter) -> dict[str, Any]:
    """--callers tasks posting one transfer per call for --duration-s: rate and CPU."""
    done = [0]
    failed = [0]
    end = time.monotonic() + args.duration_s

    async def caller(number: int) -> None:
        n = number
        while time.monotonic() < end:
            n = (n + 7919) % args.customers
            if await post(n):
                done[0] += 1
            else:
                failed[0] += 1

    meter.start()
    started = time.monotonic()
    await asyncio.gather(*(caller(k) for k in range(args.callers)))
    elapsed = time.monotonic() - started
    meter.stop()
    seconds = meter.seconds_by_role()
    server_s = sum(seconds.get(role, 0.0) for role in SERVER_ROLES)
    return {
        "transfers": done[0],
        "failed": failed[0],
        "transfers_per_s": round(done[0] / elapsed, 1),
        "cpu_s": seconds,
        "server_cpu_us_per_transfer": round(server_s / max(done[0], 1) * 1e6, 1),
        "bench_cpu_us_per_transfer": round(seconds.get("bench", 0.0) / max(done[0], 1) * 1e6, 1),
    }


async def _open_books(client: AsyncClient, customers: int) -> None:
    accounts = [Account("@bank", "USD")] + [
        Account(f"cust-{n}/dep", "USD") for n in range(customers)
    ]
    for start in range(0, len(accounts), 2000):
        results = await client.create_accounts(accounts[start : start + 2000])
        refused = [r for r in results if r.outcome is not Outcome.APPLIED]
        if refused:
            raise RuntimeError(f"accounts not opened: {refused[:3]}")


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tally-client-singles-") as scratch:
        data_dir = Path(scratch) / "data"
        port = free_port()
        up = await start_cluster(data_dir, args.shards, port)
        try:
            meter = cpu.CpuMeter(
                {
                    "node": role_sampler(up.pid, "shards.cli node"),
                    "gateway": role_sampler(up.pid, "shards.cli gateway"),
                    "postgres": postgres_sampler(data_dir),
                    "bench": cpu.bench_process(),
                }
            )
            credentials = Credentials.from_directory(data_dir / "tls")
            target = f"127.0.0.1:{port}"
            phases: list[dict[str, Any]] = []
            raw_channel = grpc.aio.secure_channel(target, credentials.channel_credentials())
            batching = BatchOptions(in_flight_max=args.in_flight_max)
            gateway_only = RoutingOptions(direct=False)
            routing = RoutingOptions(node_in_flight_max=args.node_in_flight_max)
            unbatched = BatchOptions(items_max=1, in_flight_max=args.callers)
            async with (
                AsyncClient(target, credentials, batch=batching, routing=gateway_only) as client,
                AsyncClient(target, credentials, batch=batching, routing=routing) as direct,
                AsyncClient(target, credentials, batch=unbatched, routing=gateway_only) as single,
                raw_channel,
            ):
                await _open_books(client, args.customers)
                posts = {
                    "raw": _raw_post(raw_channel),
                    "library": _library_post(client),
                    "library-direct": _library_post(direct),
                    "library-unbatched": _library_post(single),
                }
                for round_number in range(args.rounds):
                    for name, post in posts.items():
                        result = await _phase(post, args, meter)
                        phases.append({"phase": name, "round": round_number + 1, **result})
                        print(
                            f"client_singles: {name} round {round_number + 1}: {result}", flush=True
                        )
        finally:
            await stop_cluster(up)
    return {"arguments": {k: str(v) for k, v in vars(args).items()}, "phases": phases}


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    by_phase: dict[str, list[dict[str, Any]]] = {name: [] for name in PHASES}
    for phase in results["phases"]:
        by_phase[phase["phase"]].append(phase)
    mean = {
        name: {
            key: round(sum(p[key] for p in runs) / len(runs), 1)
            for key in (
                "transfers_per_s",
                "server_cpu_us_per_transfer",
                "bench_cpu_us_per_transfer",
            )
        }
        for name, runs in by_phase.items()
        if runs
    }
    raw, library, direct = mean["raw"], mean["library"], mean["library-direct"]
    mean.setdefault("library-unbatched", dict.fromkeys(raw, 0.0))
    return {
        "mean": mean,
        "library_over_raw_rate": _ratio(library, raw, "transfers_per_s"),
        "library_over_raw_server_cpu": _ratio(library, raw, "server_cpu_us_per_transfer"),
        "direct_over_library_rate": _ratio(direct, library, "transfers_per_s"),
        "direct_over_library_server_cpu": _ratio(direct, library, "server_cpu_us_per_transfer"),
        "direct_over_unbatched_rate": _ratio(direct, mean["library-unbatched"], "transfers_per_s"),
    }


def _ratio(over: dict[str, float], under: dict[str, float], key: str) -> float:
    return round(over[key] / under[key], 3) if under[key] else 0.0


def _report(results: dict[str, Any]) -> str:
    summary = results["summary"]
    lines = [
        "# One transfer per call: raw gRPC against tally.client",
        "",
        f"Arguments: {results['arguments']}",
        "",
        "| phase | round | transfers/s | server CPU µs/transfer | bench CPU µs/transfer | failed |",
        "|---|---|---|---|---|---|",
    ]
    for p in results["phases"]:
        lines.append(
            f"| {p['phase']} | {p['round']} | {p['transfers_per_s']:,} | "
            f"{p['server_cpu_us_per_transfer']:,} | {p['bench_cpu_us_per_transfer']:,} | "
            f"{p['failed']} |"
        )
    lines += [
        "",
        f"Library over raw, means of the rounds: **{summary['library_over_raw_rate']}x the rate**, "
        f"**{summary['library_over_raw_server_cpu']}x the servers' CPU per transfer**.",
        f"Library with direct routing over library through the gateway: "
        f"**{summary['direct_over_library_rate']}x the rate**, "
        f"**{summary['direct_over_library_server_cpu']}x the servers' CPU per transfer**.",
        f"Library with batching and routing (the defaults) over the library with both off: "
        f"**{summary['direct_over_unbatched_rate']}x the rate**.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    args = _parser().parse_args()
    results = asyncio.run(_run(args))
    results["summary"] = _summary(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "report.md").write_text(_report(results))
    print(_report(results))


if __name__ == "__main__":
    main()
