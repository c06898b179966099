"""`tally health [TARGET]`: ask a process's grpc.health.v1 service whether it serves, presenting
the caller's credentials, and exit 0 if it does.

    tally health 127.0.0.1:7400                 0: SERVING; 1: any other answer, or none in time
    tally health 127.0.0.1:7400 --answering     0: any answer (a standby node's NOT_SERVING too)

Every listener is TLS and asks for a credential (health answers any authenticated caller), so a
probe that cannot present one is refused by the handshake: Kubernetes' own `grpc:` probe and
Docker's have none. Containers probe with this command and the cluster certificate they already
mount (deploy/). A node serves NOT_SERVING while it waits for its shard's writer lease (a
standby): readiness asks for SERVING, liveness only for an answer (`--answering`), so a healthy
standby is not restarted.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shards.security import flags as security_flags
from shards.security.credentials import SecurityConfigError
from shards.security.credentials import channel as secure_channel

COMMAND: Final = "health"
TIMEOUT_S_DEFAULT: Final = 5.0
EXIT_SERVING: Final = 0
EXIT_NOT_SERVING: Final = 1
EXIT_USAGE: Final = 2


def add_command(commands: Any, default_target: str) -> None:
    sub: argparse.ArgumentParser = commands.add_parser(
        COMMAND, help="exit 0 if a process's gRPC health service says SERVING (a probe)"
    )
    sub.add_argument(
        "target", nargs="?", default=default_target, help="host:port (default %(default)s)"
    )
    sub.add_argument(
        "--service",
        default="",
        help="the service asked about (default '': the process as a whole; e.g. tally.v1.Ledger)",
    )
    sub.add_argument(
        "--answering",
        action="store_true",
        help="exit 0 on any answer, NOT_SERVING too (a liveness probe: a standby node waiting "
        "for its lease answers NOT_SERVING and is alive)",
    )
    sub.add_argument(
        "--timeout-s",
        type=float,
        default=TIMEOUT_S_DEFAULT,
        help="how long the call may take, handshake included (default %(default)s)",
    )
    security_flags.add_client_flags(sub)


def run(args: argparse.Namespace) -> int:
    try:
        security = security_flags.client_security(args)
    except (SecurityConfigError, OSError) as error:
        print(f"tally {COMMAND}: {error}", file=sys.stderr)
        return EXIT_USAGE
    status = _status(args.target, args.service, security, args.timeout_s)
    if status is None:
        return EXIT_NOT_SERVING
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(f"tally: {args.target} {args.service or '(server)'}: {name}", flush=True)
    if args.answering or status == health_pb2.HealthCheckResponse.SERVING:
        return EXIT_SERVING
    return EXIT_NOT_SERVING


def _status(target: str, service: str, security: Any, timeout_s: float) -> int | None:
    """The health status the target answers, or None (after saying why) if it answers none."""
    with secure_channel(target, security) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            print(f"tally {COMMAND}: {target}: {code}: {details}", file=sys.stderr, flush=True)
            return None
    status: int = response.status
    return status
