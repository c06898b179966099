"""`python -m bench.chaos` (`make chaos`): run one fault campaign and write its report.

Exit status 0 when the checker found no anomaly and every fault was injected and healed, 1
otherwise (the report says what, and the history is kept beside it), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# The campaign forks and execs processes while gRPC threads run here (see tests/conftest.py).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from bench.chaos import campaign, faults
from bench.chaos.outcome import CampaignConfig


def parse_arguments(argv: list[str] | None = None) -> CampaignConfig:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load and faults")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument(
        "--out", type=Path, default=None, help="default bench/reports/chaos-SEED-TIME"
    )
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument(
        "--kinds", default=",".join(faults.KINDS), help="fault kinds, comma-separated"
    )
    parser.add_argument("--keep-history", action="store_true", help="also for a clean run")
    parser.add_argument(
        "--keep-data", action="store_true", help="keep the PostgreSQL data directories"
    )
    args = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = set(kinds) - set(faults.KINDS)
    if unknown or not kinds:
        parser.error(f"--kinds: unknown {sorted(unknown)}; known: {', '.join(faults.KINDS)}")
    if args.shards < 2 or args.gateways < 1 or args.clients < 1 or args.customers < 4:
        parser.error("at least 2 shards, 1 gateway, 1 client and 4 customers")
    if args.duration <= 0:
        parser.error("--duration must be positive")
    out = args.out or Path("bench/reports") / f"chaos-{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    return CampaignConfig(
        out_dir=out.resolve(),
        duration_s=args.duration,
        seed=args.seed,
        shard_count=args.shards,
        gateway_count=args.gateways,
        client_count=args.clients,
        customer_count=args.customers,
        kinds=kinds,
        keep_history=args.keep_history,
        keep_data=args.keep_data,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_arguments(argv)
    print(f"chaos: seed {config.seed}, {config.duration_s:g} s, report in {config.out_dir}")
    import uvloop

    outcome = uvloop.run(campaign.run(config))
    print(f"chaos: {'clean' if outcome.ok else outcome.verdict.summary()}")
    print(f"chaos: report {outcome.report_path}")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
