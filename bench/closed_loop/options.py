"""The command line of the first benchmark, as one frozen Options value."""

from __future__ import annotations

import argparse
import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench.common.credentials import ClientCredentials, add_client_flags, parse_client_credentials
from bench.common.paths import REPORTS_DIR
from bench.common.workload import ALL_WORKLOADS, Workload, parse_workloads

SYSTEMS: Final = ("tally", "rowlock", "ceiling")
# PostgreSQL's own batched ceiling (bench/common/ceiling.py) runs the batch workloads only.
BATCH_ONLY_SYSTEMS: Final = frozenset({"ceiling"})


@dataclass(frozen=True, slots=True)
class Options:
    account_count: int
    duration_s: float
    warmup_s: float
    client_count: int
    batch_size: int
    batch_client_count: int
    seed_batch_size: int
    workloads: tuple[Workload, ...]
    systems: tuple[str, ...]
    out_dir: Path
    data_dir: Path | None
    target: str | None
    rowlock_dsn: str | None
    tally_dsn: str | None
    ceiling_dsn: str | None
    # With --target: what the bench's clients present (else it makes a credentials directory).
    credentials: ClientCredentials | None
    node_args: tuple[str, ...]
    node_profile: str
    quiet_wait_s: float
    quiet_cores: float


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.closed_loop.single_node",
        description=description,
        formatter_class=_Formatter,
    )
    add = parser.add_argument
    add("--accounts", type=int, default=100_000, help="customer accounts")
    add("--duration-s", type=float, default=15.0, help="measured seconds per workload")
    add("--warmup-s", type=float, default=2.0, help="unmeasured seconds before each window")
    add("--clients", type=int, default=64, help="concurrent clients for (a) and row-lock pool")
    add("--batch-size", type=int, default=1000, help="transfers per call in (b)")
    add(
        "--batch-clients",
        type=int,
        default=16,
        help="concurrent batch senders in (b): group commit needs work in flight; 16 x 1,000 "
        "transfers keeps the writer's next batch full while one commits",
    )
    add("--seed-batch-size", type=int, default=5000, help="accounts per CreateAccounts call")
    add(
        "--workloads",
        default="all",
        help="comma-separated subset of " + ", ".join(w.name for w in ALL_WORKLOADS),
    )
    add(
        "--systems",
        default="tally,rowlock,ceiling",
        help="comma-separated subset of tally, rowlock, ceiling (PostgreSQL's own batched "
        "ceiling for the same rows: batch workloads only)",
    )
    add("--out", type=Path, help="report directory; None: bench/reports/<timestamp>")
    add("--data-dir", type=Path, help="PostgreSQL data lives here; None: a temp dir, removed after")
    add("--target", help="HOST:PORT of a running node: start neither PostgreSQL nor a node")
    add("--rowlock-dsn", help="with --target: PostgreSQL for the row-locking comparison")
    add("--ceiling-dsn", help="with --target: PostgreSQL for the batched ceiling (schema rebuilt)")
    add(
        "--tally-dsn",
        help="with --target: the node's database, read for WAL/commit counters and the audit",
    )
    add(
        "--node-arg",
        action="append",
        default=[],
        help="extra argument for `tally node`, repeatable (e.g. --node-arg=--batch-wait-ms=1)",
    )
    add(
        "--node-profile",
        choices=("none", "py-spy", "cprofile"),
        default="none",
        help="profile the node: py-spy per Tally workload window, or cProfile for the whole run",
    )
    add(
        "--quiet-wait-s",
        type=float,
        default=20.0,
        help="before each window wait up to this long for the machine to be quiet (shared hosts)",
    )
    add("--quiet-cores", type=float, default=0.3, help="'quiet' means at most this many busy cores")
    add_client_flags(parser)  # with --target; else the bench makes its own credentials
    return parser


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's layout and shows every default."""


def parse_options(argv: list[str] | None, description: str) -> Options:
    parser = build_parser(description)
    args = parser.parse_args(argv)
    try:
        workloads = parse_workloads(args.workloads)
    except ValueError as error:
        parser.error(str(error))
    systems = tuple(s for s in SYSTEMS if s in {p.strip() for p in args.systems.split(",")})
    if not systems:
        parser.error(f"--systems must name some of {SYSTEMS}")
    if (args.rowlock_dsn or args.tally_dsn or args.ceiling_dsn) and not args.target:
        parser.error(
            "--rowlock-dsn, --tally-dsn and --ceiling-dsn go with --target (else the bench "
            "makes them)"
        )
    credentials = parse_client_credentials(parser, args) if args.target else None
    if args.accounts < 2 or args.clients < 1 or args.batch_size < 1 or args.batch_clients < 1:
        parser.error("--accounts >= 2, --clients, --batch-size and --batch-clients >= 1")
    if args.target and "rowlock" in systems and not args.rowlock_dsn:
        systems = tuple(s for s in systems if s != "rowlock")  # nothing to run it on
    if args.target and "ceiling" in systems and not args.ceiling_dsn:
        systems = tuple(s for s in systems if s != "ceiling")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Options(
        account_count=args.accounts,
        duration_s=args.duration_s,
        warmup_s=args.warmup_s,
        client_count=args.clients,
        batch_size=args.batch_size,
        batch_client_count=args.batch_clients,
        seed_batch_size=args.seed_batch_size,
        workloads=workloads,
        systems=systems,
        out_dir=(args.out or REPORTS_DIR / stamp).resolve(),
        data_dir=args.data_dir.resolve() if args.data_dir else None,
        target=args.target,
        rowlock_dsn=args.rowlock_dsn,
        tally_dsn=args.tally_dsn,
        ceiling_dsn=args.ceiling_dsn,
        credentials=credentials,
        node_args=tuple(args.node_arg),
        node_profile=args.node_profile,
        quiet_wait_s=args.quiet_wait_s,
        quiet_cores=args.quiet_cores,
    )
