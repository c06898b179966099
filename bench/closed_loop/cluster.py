"""The single-node closed-loop benchmark extended to the cluster:
`python -m bench.closed_loop.cluster`.

Starts `tally up --shards N` (one embedded PostgreSQL, N node processes, one gateway) in a
temporary directory (TLS with the credentials `tally up` makes in it; the bench presents its
admin identity), seeds funded customer accounts, and measures transfers/s and latency
through the gateway with 0%, 10% and 50% of transfers crossing shards, for one transfer per
call (many clients) and 1,000-transfer batches, with CPU seconds per transfer of each process
role (nodes, gateway, PostgreSQL, this load generator). Writes results.json and report.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import cpu
from bench.common.local_cluster import (
    admin_credentials,
    postgres_sampler,
    role_sampler,
    start_cluster,
    stop_cluster,
)
from bench.common.measure import CallOutcome, latency_summary_ms, run_closed_loop
from bench.common.paths import REPORTS_DIR
from bench.common.tally_client import TallyClient, chunks
from bench.common.workload import (
    HOT_ACCOUNT_ID,
    TRANSFER_AMOUNT_MAX_CENTS,
    Transfer,
    home_named,
)
from core.slots import SlotMap
from shards.local.embedded_pg import free_port

MODULE = "bench.closed_loop.cluster"


@dataclass(frozen=True, slots=True)
class Case:
    cross_share: float
    batch_size: int
    client_count: int
    # Each transfer as a hold, then that hold posted (two calls; both count as transactions).
    holds: bool = False

    @property
    def name(self) -> str:
        shape = "single" if self.batch_size == 1 else f"batch{self.batch_size}"
        kind = "-hold+post" if self.holds else ""
        return f"{shape}{kind}-cross{round(self.cross_share * 100)}"


def customer_id(number: int) -> str:
    return f"cust-{number:06d}/deposit"


class CrossShareSource:
    """Transfers between customers; a given share of them has the two accounts on different
    shards (by the cluster's even slot map), the rest on the same shard."""

    def __init__(
        self,
        by_shard: list[list[str]],
        share: float,
        prefix: str,
        seed: int,
        bare_ids: bool = False,
    ) -> None:
        self._bare_ids = bare_ids
        self._by_shard = by_shard
        self._share = share
        self._prefix = prefix
        self._random = random.Random(seed)
        self._sequence = 0

    def next(self) -> Transfer:
        pick = self._random.randrange
        shard = pick(len(self._by_shard))
        other = shard
        if self._random.random() < self._share:
            other = (shard + 1 + pick(len(self._by_shard) - 1)) % len(self._by_shard)
        debit = self._by_shard[shard][pick(len(self._by_shard[shard]))]
        credit = debit
        while credit == debit:
            credit = self._by_shard[other][pick(len(self._by_shard[other]))]
        self._sequence += 1
        amount = pick(1, TRANSFER_AMOUNT_MAX_CENTS + 1)
        name = f"{self._prefix}{self._sequence}"
        if self._bare_ids:  # the id's home is wherever its slot is
            return Transfer(name, debit, credit, amount)
        return Transfer(home_named(name, debit, credit), debit, credit, amount)


async def seed(client: TallyClient, accounts: list[str]) -> None:
    await client.create_accounts([HOT_ACCOUNT_ID])
    for part in chunks(accounts, 5000):
        codes = await client.create_accounts(part)
        if set(codes) - {"CREATED", "REPLAYED"}:
            raise RuntimeError(f"seeding accounts: {dict(codes)}")
        codes = await client.fund(part)
        if set(codes) - {"CREATED", "REPLAYED"}:
            raise RuntimeError(f"funding accounts: {dict(codes)}")


async def measure(
    client: TallyClient, case: Case, by_shard: list[list[str]], meter: cpu.CpuMeter, args: Any
) -> dict[str, object]:
    prefix = getattr(args, "id_prefix", "")  # a run measuring a case twice names them apart
    sources = [
        CrossShareSource(
            by_shard,
            case.cross_share,
            f"{prefix}{case.name}.{n}.",
            seed=n,
            bare_ids=args.bare_ids,
        )
        for n in range(case.client_count)
    ]

    async def call(number: int) -> CallOutcome:
        source = sources[number]
        transfers = [source.next() for _ in range(case.batch_size)]
        if case.holds:
            return await client.hold_and_post(transfers)
        return await client.post(transfers)

    async def begin() -> None:
        meter.start()

    async def end() -> None:
        meter.stop()

    window, recorder = await run_closed_loop(
        call, case.client_count, args.warmup_s, args.duration_s, begin, end
    )
    created = recorder.created_in_window
    seconds = meter.seconds_by_role()
    return {
        "case": case.name,
        "cross_share": case.cross_share,
        "batch_size": case.batch_size,
        "clients": case.client_count,
        "transfers_per_s": round(created / window.seconds, 1),
        "latency_ms": latency_summary_ms(recorder.latencies_ns),
        "codes": dict(recorder.codes),
        "errors": dict(recorder.errors),
        "cpu_us_per_transfer": {
            role: round(1e6 * s / created, 1) if created else 0.0
            for role, s in seconds.items()
            if role not in ("machine",)
        },
        "cores": {role: round(s / window.seconds, 2) for role, s in seconds.items()},
    }


def report(results: Sequence[dict[str, object]], args: argparse.Namespace) -> str:
    lines = [
        f"# Tally cluster benchmark ({args.shards} shards) — {time.strftime('%Y-%m-%dT%H:%M:%S')}",
        "",
        f"Command: `python -m {MODULE} {' '.join(sys.argv[1:])}`; {args.accounts:,} funded "
        f"customer accounts; {args.duration_s:g} s measured after {args.warmup_s:g} s warm-up.",
        "",
        "| case | clients | transactions/s | p50 ms | p99 ms | non-CREATED | errors "
        "| CPU µs/t nodes | gateway | postgres | bench | cores nodes/gw/pg/bench/other |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        codes = dict(r["codes"])  # type: ignore[call-overload]
        other = sum(v for k, v in codes.items() if k != "CREATED")
        us = r["cpu_us_per_transfer"]
        cores = r["cores"]
        lat = r["latency_ms"]
        lines.append(
            f"| {r['case']} | {r['clients']} | {r['transfers_per_s']:,} | {lat['p50']} "  # type: ignore[index]
            f"| {lat['p99']} | {other} | {sum(dict(r['errors']).values())} "  # type: ignore[index,call-overload]
            f"| {us['nodes']} | {us['gateway']} | {us['postgres']} | {us['bench']} "  # type: ignore[index]
            f"| {cores['nodes']}/{cores['gateway']}/{cores['postgres']}/{cores['bench']}"  # type: ignore[index]
            f"/{cores['other']} |"  # type: ignore[index]
        )
    lines += [
        "",
        "*non-CREATED*: item results other than CREATED over the whole run (none expected: every",
        "account is funded far beyond what the run can spend). *CPU µs/t*: CPU microseconds per",
        "created transaction by role, *nodes* summed over the shard node processes.",
        "*hold+post*: each transfer is a hold, then (another call) the hold posted in full;",
        "both count as transactions, so a hold's whole life costs twice the figure shown.",
    ]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=64, help="single-transfer clients")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--batch-clients", type=int, default=16)
    parser.add_argument("--cross", default="0,0.1,0.5", help="cross-shard shares")
    parser.add_argument(
        "--hold-cross",
        default="0,0.5",
        help="cross-shard shares of the hold-then-post cases (empty: none)",
    )
    parser.add_argument(
        "--bare-ids",
        action="store_true",
        help="transaction ids without their accounts' partition key (by default ids are named "
        "under the debit account's, as a client library names them)",
    )
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    out = args.out or REPORTS_DIR / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="tally-cluster-bench-"))
    port = free_port()
    up = await start_cluster(workdir / "data", args.shards, port)
    client: TallyClient | None = None
    try:
        client = TallyClient(f"127.0.0.1:{port}", admin_credentials(workdir / "data").security())
        accounts = [customer_id(n) for n in range(args.accounts)]
        await seed(client, accounts)
        slot_map = SlotMap.even(args.shards)
        by_shard: list[list[str]] = [[] for _ in range(args.shards)]
        for account in accounts:
            by_shard[slot_map.shard_of_account(account)].append(account)
        meter = cpu.CpuMeter(
            {
                "nodes": role_sampler(up.pid, "shards.cli node"),
                "gateway": role_sampler(up.pid, "shards.cli gateway"),
                "postgres": postgres_sampler(workdir / "data"),
                "bench": cpu.bench_process(),
            }
        )
        results = []
        for share in (float(s) for s in args.cross.split(",") if s):
            for batch_size, clients in ((1, args.clients), (args.batch_size, args.batch_clients)):
                case = Case(share, batch_size, clients)
                result = await measure(client, case, by_shard, meter, args)
                print(json.dumps(result), flush=True)
                results.append(result)
        for share in (float(s) for s in args.hold_cross.split(",") if s):
            for batch_size, clients in ((1, args.clients), (args.batch_size, args.batch_clients)):
                case = Case(share, batch_size, clients, holds=True)
                result = await measure(client, case, by_shard, meter, args)
                print(json.dumps(result), flush=True)
                results.append(result)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        text = report(results, args)
        (out / "report.md").write_text(text)
        print(text)
        errors = sum(sum(dict(r["errors"]).values()) for r in results)  # type: ignore[call-overload]
        return 1 if errors else 0
    finally:
        if client is not None:
            await client.close()
        await stop_cluster(up)
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    import uvloop

    return uvloop.run(run(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
