"""`tally relay`: run the relay in the foreground until SIGINT or SIGTERM.

    tally relay [--target HOST:PORT] --nats-url tls://HOST:PORT
                [--nats-ca PATH --nats-cert PATH --nats-key PATH]
                [--stream TALLY_JOURNAL] [--subject-prefix tally.journal]
                [--ca PATH --cert PATH --key PATH | --token PATH]

The ledger is read with the client credentials (default: tally up's admin identity, whose
`auditor` role may read the whole stream; a `monitor` over `**` is the least a relay needs).
The broker is reached with the relay's own certificate (default: DATA_DIR/tls/tally-relay.pem
and its key, of that directory's CA), which the broker maps to the publishing user. Exit
status: 0 when stopped, 2 for usage and credential errors, 1 for a block it cannot relay.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import Any, Final

from shards.relay.relay import Relay, RelayConfig, RelayError
from shards.rpc import broker
from shards.security import flags as security_flags
from shards.security.credentials import SecurityConfigError

COMMAND: Final = "relay"
RELAY_CERTIFICATE: Final = "tally-relay"


def _env(name: str, default: str = "") -> str:
    return os.environ.get("TALLY_" + name.upper(), default)


def add_command(commands: Any, default_target: str) -> None:
    sub: argparse.ArgumentParser = commands.add_parser(
        COMMAND, help="publish the change stream of the books to NATS JetStream"
    )
    sub.add_argument("--target", default=_env("target", default_target), help="gateway or node")
    sub.add_argument("--nats-url", default=_env("nats_url", broker.DEFAULT_NATS_URL))
    sub.add_argument("--nats-ca", default=_env("nats_ca"), help="CA the broker is checked against")
    sub.add_argument("--nats-cert", default=_env("nats_cert"), help="the relay's certificate")
    sub.add_argument("--nats-key", default=_env("nats_key"), help="its key")
    sub.add_argument("--stream", default=_env("nats_stream", broker.JOURNAL_STREAM))
    prefix = _env("nats_subject_prefix", broker.JOURNAL_SUBJECT_PREFIX)
    sub.add_argument("--subject-prefix", default=prefix)
    security_flags.add_client_flags(sub)


def broker_tls(args: argparse.Namespace) -> ssl.SSLContext:
    """The relay's TLS context for the broker: as given, or tally up's (DATA_DIR/tls)."""
    root = security_flags.local_directory()
    ca = Path(args.nats_ca or root / "ca.pem")
    certificate = Path(args.nats_cert or root / f"{RELAY_CERTIFICATE}.pem")
    key = Path(args.nats_key or root / f"{RELAY_CERTIFICATE}.key")
    for path, what in ((ca, "--nats-ca"), (certificate, "--nats-cert"), (key, "--nats-key")):
        if not path.is_file():
            raise SecurityConfigError(f"{what}: {path} not found")
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(certificate, key)
    return context


def run(args: argparse.Namespace) -> int:
    try:
        config = RelayConfig(
            target=args.target,
            security=security_flags.client_security(args),
            nats_url=args.nats_url,
            nats_tls=broker_tls(args),
            stream_name=args.stream,
            subject_prefix=args.subject_prefix,
        )
    except (SecurityConfigError, ValueError, OSError, ssl.SSLError) as error:
        print(f"tally relay: {error}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(config))
    except RelayError as error:
        print(f"tally relay: {error}", file=sys.stderr)
        return 1
    return 0


async def _serve(config: RelayConfig) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    print(
        f"tally: relaying {config.target} to {config.nats_url} stream {config.stream_name} "
        f"({config.subject_prefix}.<shard>)",
        flush=True,
    )
    await Relay(config).run(stopping)
