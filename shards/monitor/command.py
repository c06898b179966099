"""`tally monitor`: cash-flow profiles of every borrower, from the change stream on NATS.

    tally monitor --nats-url tls://HOST:PORT [--nats-ca PATH --nats-cert PATH --nats-key PATH]
                  --rules PATH --checkpoint PATH [--listen HOST:PORT] [--metrics-listen ...]
                  [--tls-cert PATH --tls-key PATH --tls-ca PATH]

It reads stream TALLY_JOURNAL (what `tally relay` publishes), publishes alerts to
TALLY_ALERTS, and serves tally.v1.Monitor (proto/tally/v1/monitor.proto). The broker is reached
with the monitor's certificate (default: DATA_DIR/tls/tally-monitor.pem and its key, of that
directory's CA), which the broker must let publish to tally.alerts.> and use JetStream. Exit
status: 0 when stopped, 2 for usage, rules and credential errors, 1 when the stream cannot be
followed (a gap, a broken checkpoint: the message says which).
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from pathlib import Path
from typing import Any, Final

from core.flows import rules
from shards.monitor.consumer import MonitorConfig, MonitorError
from shards.monitor.server import SERVICE_NAME, MonitorServer, MonitorServerConfig
from shards.rpc import broker
from shards.rpc.serving import add_rpc_concurrency_flag, run_announced
from shards.security import flags as security_flags
from shards.security.credentials import SecurityConfigError

COMMAND: Final = "monitor"
MONITOR_CERTIFICATE: Final = "tally-monitor"
DEFAULT_LISTEN: Final = f"127.0.0.1:{broker.DEFAULT_MONITOR_PORT}"


def _env(name: str, default: str = "") -> str:
    return os.environ.get("TALLY_MONITOR_" + name.upper(), default)


def add_command(commands: Any) -> None:
    sub: argparse.ArgumentParser = commands.add_parser(
        COMMAND, help="cash-flow profiles and alerts of every borrower, from the change stream"
    )
    sub.add_argument("--nats-url", default=_env("nats_url", broker.DEFAULT_NATS_URL))
    sub.add_argument("--nats-ca", default=_env("nats_ca"), help="CA the broker is checked against")
    sub.add_argument("--nats-cert", default=_env("nats_cert"), help="the monitor's certificate")
    sub.add_argument("--nats-key", default=_env("nats_key"), help="its key")
    sub.add_argument("--journal-stream", default=_env("journal_stream", broker.JOURNAL_STREAM))
    subjects = _env("journal_subjects", broker.JOURNAL_SUBJECTS)
    sub.add_argument("--journal-subjects", default=subjects)
    sub.add_argument("--alerts-stream", default=_env("alerts_stream", broker.ALERTS_STREAM))
    sub.add_argument("--alerts-prefix", default=_env("alerts_prefix", broker.ALERTS_SUBJECT_PREFIX))
    sub.add_argument("--rules", default=_env("rules"), required=not _env("rules"),
                     help="the alert rules (TOML; docs/design.md, In-loan monitoring)")  # fmt: skip
    sub.add_argument("--checkpoint", default=_env("checkpoint"), required=not _env("checkpoint"),
                     help="the checkpoint file (its directory must exist)")  # fmt: skip
    sub.add_argument("--checkpoint-interval-s", type=float, default=5.0)
    sub.add_argument("--listen", default=_env("listen", DEFAULT_LISTEN),
                     help="host:port of tally.v1.Monitor (port 0: a free one)")  # fmt: skip
    sub.add_argument("--metrics-listen", default=_env("metrics_listen"),
                     help="host:port for Prometheus /metrics (default: off)")  # fmt: skip
    add_rpc_concurrency_flag(sub)
    security_flags.add_server_flags(sub)


def broker_tls(args: argparse.Namespace) -> ssl.SSLContext:
    root = security_flags.local_directory()
    ca = Path(args.nats_ca or root / "ca.pem")
    certificate = Path(args.nats_cert or root / f"{MONITOR_CERTIFICATE}.pem")
    key = Path(args.nats_key or root / f"{MONITOR_CERTIFICATE}.key")
    for path, what in ((ca, "--nats-ca"), (certificate, "--nats-cert"), (key, "--nats-key")):
        if not path.is_file():
            raise SecurityConfigError(f"{what}: {path} not found")
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(certificate, key)
    return context


def config_of(args: argparse.Namespace) -> MonitorServerConfig:
    """The server's configuration; SecurityConfigError, RulesError, ValueError or OSError
    naming what is wrong."""
    rule_set = rules.parse_rules(Path(args.rules).read_text())
    checkpoint = Path(args.checkpoint)
    if not checkpoint.parent.is_dir():
        raise ValueError(f"--checkpoint: directory {checkpoint.parent} does not exist")
    if not args.checkpoint_interval_s > 0:
        raise ValueError("--checkpoint-interval-s must be > 0")
    consumer = MonitorConfig(
        nats_url=args.nats_url,
        nats_tls=broker_tls(args),
        checkpoint_path=checkpoint,
        journal_stream=args.journal_stream,
        journal_subjects=args.journal_subjects,
        alerts_stream=args.alerts_stream,
        alerts_prefix=args.alerts_prefix,
        checkpoint_interval_s=args.checkpoint_interval_s,
    )
    return MonitorServerConfig(
        consumer=consumer,
        rule_set=rule_set,
        security=security_flags.server_security(args),
        listen=args.listen,
        metrics_listen=args.metrics_listen,
        rpc_concurrency_max=args.rpc_concurrency_max,
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = config_of(args)
    except (SecurityConfigError, rules.RulesError, ValueError, OSError, ssl.SSLError) as error:
        print(f"tally {COMMAND}: {error}", file=sys.stderr, flush=True)
        return 2
    import uvloop

    try:
        code: int = uvloop.run(_serve(config))
    except MonitorError as error:
        print(f"tally {COMMAND}: {error}", file=sys.stderr, flush=True)
        return 1
    return code


async def _serve(config: MonitorServerConfig) -> int:
    try:
        server = MonitorServer(config)
    except MonitorError as error:  # a checkpoint that is not one
        print(f"tally {COMMAND}: {error}", file=sys.stderr, flush=True)
        return 1
    try:
        port = await server.start()
    except OSError as error:
        print(f"tally {COMMAND}: {error}", file=sys.stderr, flush=True)
        return 2
    await run_announced(
        server, SERVICE_NAME, config.listen, port, config.metrics_listen, server.metrics_port
    )
    return 0
