"""The command line of the Locust suite (bench.locust.suite), and the cost model's inputs it
names (also read back from a run's results.json by bench.locust.report)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Final

from bench.common.credentials import add_client_flags, parse_client_credentials
from bench.locust import cost, population

SUITE_MODULE: Final = "bench.locust.suite"
ALL_SCENARIOS: Final = tuple(population.SCENARIO_CLASSES)


def parse(argv: list[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {SUITE_MODULE}",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run = parser.add_argument_group("what to run")
    run.add_argument("--target", default="", help="gateway HOST:PORT (none: start a cluster)")
    run.add_argument("--shards", type=int, default=2, help="shards to start / the target has")
    run.add_argument("--population", type=int, default=100_000, help="customers")
    run.add_argument("--scenarios", default=",".join(ALL_SCENARIOS), help="comma-separated")
    run.add_argument("--users", type=int, default=0, help="Locust users (0: per scenario)")
    run.add_argument("--duration-s", type=float, default=60.0, help="per scenario")
    run.add_argument("--eod-max-s", type=float, default=300.0, help="end-of-day time limit")
    run.add_argument("--cross-share", type=float, default=0.1, help="of transfers")
    run.add_argument("--transfers-per-call", type=int, default=1)
    run.add_argument("--eod-batch-size", type=int, default=2000)
    run.add_argument("--skip-load", action="store_true", help="population already loaded")
    run.add_argument("--out", type=Path, default=None, help="report folder")
    run.add_argument("--keep-data", action="store_true", help="keep the local cluster's data")
    remote = parser.add_argument_group("a remote target")
    remote.add_argument("--metrics", action="append", default=[], help="a /metrics URL")
    remote.add_argument("--shard-dsn", action="append", default=[], help="a shard's database")
    remote.add_argument("--rowlock-dsn", default=None, help="database for the comparison")
    run.add_argument(
        "--quiet-wait-s", type=float, default=20.0, help="wait at most this for a quiet machine"
    )
    run.add_argument("--quiet-cores", type=float, default=0.3, help="busy cores that are quiet")
    rowlock_group = parser.add_argument_group("the row-locking comparison")
    rowlock_group.add_argument("--no-rowlock", dest="rowlock", action="store_false")
    rowlock_group.add_argument("--rowlock-duration-s", type=float, default=20.0)
    add_cost_arguments(parser)
    add_client_flags(parser)  # with --target; a local cluster's are tally up's own
    args = parser.parse_args(argv)
    if args.target:
        parse_client_credentials(parser, args)  # checked before anything starts
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if args.scenarios == ["all"]:
        args.scenarios = list(ALL_SCENARIOS)
    unknown = set(args.scenarios) - set(ALL_SCENARIOS)
    if unknown or not args.scenarios:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {ALL_SCENARIOS}")
    inputs = cost_inputs(args)
    try:  # refused now, not after the run
        cost.check_inputs(inputs.prices, inputs.activity, inputs.deployment)
        cost.check_cold_bytes(inputs.cold_bytes_per_posting)
    except ValueError as error:
        parser.error(str(error))
    return args


def add_cost_arguments(parser: argparse.ArgumentParser) -> None:
    prices, activity, deployment = cost.Prices(), cost.Activity(), cost.Deployment()
    group = parser.add_argument_group("the cost model (bench/locust/cost.py)")
    group.add_argument("--instance-name", default=prices.instance_name)
    group.add_argument("--price-per-hour", type=float, default=prices.price_per_hour_usd)
    group.add_argument("--price-date", default=prices.price_date)
    group.add_argument("--price-source", default=prices.price_source)
    group.add_argument("--vcpus", type=int, default=prices.vcpu_count)
    group.add_argument(
        "--storage-price-gb-month",
        type=float,
        default=prices.storage_price_per_gib_month_usd,
        help="block storage (the PostgreSQL volume: hot history), USD per GiB-month",
    )
    group.add_argument(
        "--object-storage-price-gb-month",
        type=float,
        default=prices.object_storage_price_per_gib_month_usd,
        help="object storage (cold history), USD per GiB-month",
    )
    group.add_argument(
        "--postings-per-account-month", type=float, default=activity.postings_per_account_month
    )
    group.add_argument("--peak-to-average", type=float, default=activity.peak_to_average)
    group.add_argument("--cpu-utilisation-max", type=float, default=activity.cpu_utilisation_max)
    group.add_argument(
        "--retention-months",
        type=float,
        default=activity.retention_months,
        help="months of postings kept online, hot and cold",
    )
    group.add_argument(
        "--hot-days",
        type=float,
        default=deployment.hot_days,
        help="days of that history kept hot in PostgreSQL (a quarter of a year); the rest is "
        "priced as cold segments in object storage; the retention in days keeps all of it hot",
    )
    group.add_argument(
        "--cold-bytes-per-posting",
        type=float,
        default=None,
        help="a cold segment's measured bytes per posting (none: priced at the hot bytes per "
        "posting)",
    )
    group.add_argument(
        "--standby-copies",
        type=int,
        default=deployment.standby_copies,
        help="synchronous standbys per shard (each a machine and a copy of the hot bytes); "
        "the headline figure includes them, the report shows one copy too",
    )
    group.add_argument("--cost-scenario", default="transfers", help="CPU per transaction from")


def cost_inputs(args: argparse.Namespace) -> cost.Inputs:
    """The model's inputs from the command line, or from a run's stored options (a run
    recorded before an option existed gets its default)."""
    prices, activity, deployment = cost.Prices(), cost.Activity(), cost.Deployment()

    def given(name: str, default: Any) -> Any:
        return getattr(args, name, default)

    prices = cost.Prices(
        instance_name=args.instance_name,
        price_per_hour_usd=args.price_per_hour,
        vcpu_count=args.vcpus,
        price_source=args.price_source,
        price_date=args.price_date,
        storage_price_per_gib_month_usd=args.storage_price_gb_month,
        object_storage_price_per_gib_month_usd=float(
            given("object_storage_price_gb_month", prices.object_storage_price_per_gib_month_usd)
        ),
    )
    activity = cost.Activity(
        postings_per_account_month=args.postings_per_account_month,
        peak_to_average=args.peak_to_average,
        cpu_utilisation_max=args.cpu_utilisation_max,
        retention_months=args.retention_months,
    )
    deployment = cost.Deployment(
        hot_days=float(given("hot_days", deployment.hot_days)),
        standby_copies=int(given("standby_copies", deployment.standby_copies)),
    )
    cold = given("cold_bytes_per_posting", None)
    return cost.Inputs(
        prices=prices,
        activity=activity,
        deployment=deployment,
        cold_bytes_per_posting=None if cold is None else float(cold),
    )
