"""`tally flow-profile KEY`: a borrower's cash-flow profile from `tally monitor`
(tally.v1.Monitor/GetFlowProfile, proto/tally/v1/monitor.proto), printed as JSON.

    tally flow-profile cust-42 [--monitor HOST:PORT] [--as-of-ns NS]
                      [--ca PATH --cert PATH --key PATH | --token PATH]

The monitor is `tally up --stream`'s by default (127.0.0.1:50071, or TALLY_MONITOR_TARGET),
called with tally up's admin identity (an auditor) unless given credentials: a monitor or
reader over `KEY/**` (or wider) may ask too. JSON as protobuf maps it (int64 fields as
strings, every field printed, zeros included). Exit status: 0 with the profile, 1 for the
monitor's refusal (NOT_FOUND: it holds nothing of KEY yet), 2 for usage and credential errors.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Final

import grpc
from google.protobuf import json_format

from shards.monitor.command import DEFAULT_LISTEN
from shards.security import flags as security_flags
from shards.security.credentials import SecurityConfigError
from shards.security.credentials import channel as secure_channel
from tally.v1 import monitor_pb2 as mpb
from tally.v1 import monitor_pb2_grpc as mpb_grpc

COMMAND: Final = "flow-profile"
RPC_TIMEOUT_S: Final = 30.0


def add_command(commands: Any) -> None:
    sub: argparse.ArgumentParser = commands.add_parser(
        COMMAND, help="a borrower's cash-flow profile from tally monitor, as JSON"
    )
    sub.add_argument("partition_key", metavar="KEY", help="the borrower: its accounts' key")
    sub.add_argument(
        "--monitor",
        default=os.environ.get("TALLY_MONITOR_TARGET", DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help="tally monitor's tally.v1.Monitor (default %(default)s: tally up --stream's)",
    )
    sub.add_argument(
        "--as-of-ns",
        type=int,
        default=0,
        help="the profile's day is this instant's (default 0: the monitor's latest day)",
    )
    security_flags.add_client_flags(sub)


def run(args: argparse.Namespace) -> int:
    if args.as_of_ns < 0:
        print(f"tally {COMMAND}: --as-of-ns must not be negative", file=sys.stderr)
        return 2
    try:
        security = security_flags.client_security(args)
    except SecurityConfigError as error:
        print(f"tally {COMMAND}: {error}", file=sys.stderr)
        return 2
    request = mpb.GetFlowProfileRequest(partition_key=args.partition_key, as_of_ns=args.as_of_ns)
    try:
        with secure_channel(args.monitor, security) as channel:
            profile = mpb_grpc.MonitorStub(channel).GetFlowProfile(request, timeout=RPC_TIMEOUT_S)
    except grpc.RpcError as error:
        print(f"tally {COMMAND}: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    print(
        json_format.MessageToJson(
            profile, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    )
    return 0
