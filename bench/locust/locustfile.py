"""Locust load against a Tally gateway (or a single node) over gRPC.

    locust -f bench/locust/locustfile.py --headless -H 127.0.0.1:7400 -u 32 -r 32 -t 60s \\
        --tags transfers --tally-population 100000 --tally-shards 2 --tally-cross-share 0.1

Scenarios (bench/locust/users.py), each selectable by tag (`--tags loans`) or by class name
(`LoanProductsUser`): loans, transfers, hot, eod, mixed. The population must have been loaded
first (`python -m bench.locust.loader --target HOST:PORT --population N`, or `make bench` =
`python -m bench.locust.suite`, which does everything). Distributed: `--master` here,
`--worker --master-host HOST` on the load machines (see bench/README.md).

Options (also environment variables TALLY_BENCH_<NAME>):
  --tally-population N        customers loaded (ids cust-000000 .. N-1)
  --tally-shards N            shard count of the target (placement: the even slot map)
  --tally-cross-share F       share of customer-to-customer transfers that cross shards
  --tally-transfers-per-call N
  --tally-eod-batch-size N    accruals per end-of-day call
  --tally-eod-workers N       workers sharing the end-of-day run (each takes its slice)
  --tally-run-id ID           prefix of every transaction id (default: a new one per run)
  --tally-results-file PATH   item results by code, expected rejections, retries and the
                              end-of-day time to finish, as JSON (on the master)

Every call is TLS and presents client credentials, as the `tally` commands do (environment
variables TALLY_CA, TALLY_CERT, TALLY_KEY, TALLY_TOKEN; with none given, the admin identity of
`tally up`'s DATA_DIR/tls, DATA_DIR from TALLY_DATA_DIR, default .tally):
  --tally-ca PATH             the CA bundle the target is checked against
  --tally-cert PATH           a client certificate (mutual TLS), with --tally-key PATH
  --tally-token PATH          a file holding a bearer token (a --client-auth token target)
Workers are handed the master's paths: the files must be at the same paths on every machine.
"""

from __future__ import annotations

# gRPC must cooperate with gevent before any channel exists (Locust has already monkey-patched
# the standard library when it imports this file).
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from locust import events  # noqa: E402
from locust.runners import MasterRunner, WorkerRunner  # noqa: E402

from bench.locust.users import (  # noqa: E402
    CustomerTransfersUser,
    EndOfDayInterestUser,
    HotAccountUser,
    LoanProductsUser,
    Options,
    RetailDayUser,
    tallies_of,
)

__all__ = [
    "CustomerTransfersUser",
    "EndOfDayInterestUser",
    "HotAccountUser",
    "LoanProductsUser",
    "RetailDayUser",
]

log = logging.getLogger("tally.locust")
_DEFAULTS = Options()


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("Tally", "options of the Tally scenarios")

    def option(name: str, kind: type, default: Any, text: str) -> None:
        group.add_argument(
            f"--tally-{name}",
            type=kind,
            default=default,
            env_var=f"TALLY_BENCH_{name.upper().replace('-', '_')}",
            help=f"{text} (default: %(default)s)",
        )

    option("population", int, _DEFAULTS.population, "customers loaded")
    option("shards", int, _DEFAULTS.shards, "shard count of the target (even slot map)")
    option("cross-share", float, _DEFAULTS.cross_share, "share of transfers crossing shards")
    option("transfers-per-call", int, _DEFAULTS.transfers_per_call, "transfers per call")
    option("eod-batch-size", int, _DEFAULTS.eod_batch_size, "accruals per end-of-day call")
    option("eod-workers", int, _DEFAULTS.eod_workers, "workers sharing the end-of-day run")
    option("run-id", str, _DEFAULTS.run_id, "transaction id prefix (default: new per run)")
    option("results-file", str, _DEFAULTS.results_file, "JSON file for item result counts")
    for name, text in (
        ("ca", "CA bundle the target is checked against"),
        ("cert", "client certificate (mutual TLS)"),
        ("key", "its key"),
        ("token", "file holding a bearer token"),
    ):
        group.add_argument(
            f"--tally-{name}",
            default="",
            env_var=f"TALLY_{name.upper()}",  # as the `tally` commands read them
            help=f"{text} (default: tally up's admin identity in TALLY_DATA_DIR/tls)",
        )


@events.test_start.add_listener
def on_test_start(environment: Any, **_: Any) -> None:
    environment.tally_started_s = time.time()


# The environment of this process, for the events that are not handed it.
_ENVIRONMENT: list[Any] = []


@events.init.add_listener
def on_init(environment: Any, **_: Any) -> None:
    _ENVIRONMENT[:] = [environment]
    keep_tagged_classes(environment)
    # gevent's loop caches its clock at each iteration, and nothing has run it since
    # init_gevent() above: the imports since (this file's, seconds on a busy machine) make that
    # clock stale, and Locust's run-time limit (spawn_later, right after this event) would
    # fire that much early. Time it from now.
    gevent.get_hub().loop.update_now()


def keep_tagged_classes(environment: Any) -> None:
    """With --tags, run only the classes that have a task so tagged: Locust would otherwise
    still spawn the others, which fail for want of a task."""
    tags = set(getattr(environment.parsed_options, "tags", None) or [])
    if not tags:
        return
    environment.user_classes[:] = [
        user_class
        for user_class in environment.user_classes
        if any(getattr(t, "locust_tag_set", set()) & tags for t in user_class.tasks)
    ]


@events.report_to_master.add_listener
def on_report_to_master(client_id: str, data: dict[str, Any], **_: Any) -> None:
    """A worker sends what it counted since its last report."""
    if _ENVIRONMENT:
        data["tally"] = tallies_of(_ENVIRONMENT[0]).take()


@events.worker_report.add_listener
def on_worker_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    """The master adds up what its workers counted."""
    if _ENVIRONMENT and data.get("tally"):
        tallies_of(_ENVIRONMENT[0]).merge(data["tally"])


@events.test_stop.add_listener
def on_test_stop(environment: Any, **_: Any) -> None:
    environment.tally_stopped_s = time.time()
    write_results(environment)


@events.quitting.add_listener
def on_quitting(environment: Any, **_: Any) -> None:
    write_results(environment)


def write_results(environment: Any) -> None:
    """On the master (or a standalone run): what every item came back with."""
    if isinstance(environment.runner, WorkerRunner):
        return
    tallies = tallies_of(environment).as_dict()
    expected = sum(tallies["expected"].values())
    path = getattr(environment.parsed_options, "tally_results_file", "")
    summary = {
        **tallies,
        "locust_stats": final_stats(environment),
        "started_s": getattr(environment, "tally_started_s", 0.0),
        "stopped_s": getattr(environment, "tally_stopped_s", time.time()),
        "distributed": isinstance(environment.runner, MasterRunner),
    }
    if path:
        Path(path).write_text(json.dumps(summary, indent=2, sort_keys=True))
    log.info("tally: item results %s; expected rejections %d", tallies["results"], expected)


def final_stats(environment: Any) -> dict[str, dict[str, float]]:
    """Locust's statistics as they stand at the end (its CSV files are rewritten once a second,
    so their last version can miss the last second), with the CSV's column names."""
    stats = environment.stats
    entries = [(entry.name, entry) for entry in stats.entries.values()]
    out = {}
    for name, entry in [*entries, ("Aggregated", stats.total)]:
        out[name] = {
            "Request Count": entry.num_requests,
            "Failure Count": entry.num_failures,
            "Requests/s": entry.total_rps,
            "Average Response Time": entry.avg_response_time,
            "Max Response Time": entry.max_response_time or 0,
            **{
                label: entry.get_response_time_percentile(fraction) if entry.num_requests else 0
                for label, fraction in (("50%", 0.5), ("95%", 0.95), ("99%", 0.99))
            },
        }
    return out
