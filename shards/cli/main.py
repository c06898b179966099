"""The `tally` command: run a node (`up`, `node`) and talk to one from a terminal."""

# argparse, not click or typer: it is the stdlib (no dependency for the one entry point of every
# process), the subcommands are already argparse-shaped (shards.audit and the terminal add
# theirs to the same subparsers), and TALLY_* environment defaults fit its `default=`.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shards.audit import arguments as auditing
from shards.cli import backup as backup_commands
from shards.cli import credentials as credential_commands
from shards.cli import flow_profile, health, init_cluster, segment_arguments, slots, terminal
from shards.cli.logs import LOG_FORMATS, LOG_LEVELS, hide_secrets, start_logging
from shards.local.replicated_pg import LocalPostgres
from shards.local.stream import StreamSetupError
from shards.monitor import command as monitor_command
from shards.node import durability
from shards.node.writer import WriterConfig
from shards.relay import command as relay_command
from shards.rpc.serving import (
    add_rpc_concurrency_flag,
    metrics_url,
    run_announced,
    tune_garbage_collector,
)
from shards.security import flags as security_flags
from shards.security.credentials import SecurityConfigError

if TYPE_CHECKING:
    from shards.local.data_lock import DataDirectoryLock
    from shards.local.stream import LocalStream

DEFAULT_TARGET = "127.0.0.1:7400"
EXIT_FENCED = 3


def _env(name: str, default: str) -> str:
    return os.environ.get("TALLY_" + name.upper().replace("-", "_"), default)


def _add_writer_flags(parser: argparse.ArgumentParser) -> None:
    defaults = WriterConfig()
    parser.add_argument(
        "--batch-item-count-max",
        type=int,
        default=int(_env("batch_item_count_max", str(defaults.batch_item_count_max))),
        help="a batch closes at this many items (default %(default)s)",
    )
    parser.add_argument(
        "--move-page-item-count",
        type=_at_least(1, int),
        default=int(_env("move_page_item_count", str(defaults.move_page_item_count))),
        help="a slot move's side is written in blocks of at most this many entries "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=float(_env("batch_wait_ms", str(defaults.batch_wait_ms))),
        help="or this long after its first request (default %(default)s)",
    )
    parser.add_argument(
        "--cache-account-count-max",
        type=int,
        default=int(_env("cache_account_count_max", str(defaults.cache_account_count_max))),
    )
    parser.add_argument(
        "--queue-size-max-bytes",
        type=_at_least(1, int),
        default=int(_env("queue_size_max_bytes", str(defaults.queue_size_max_bytes))),
        help="bytes of requests waiting for the writer (as sent); past it one more is "
        "RESOURCE_EXHAUSTED (default %(default)s)",
    )


def _at_least(minimum: float, kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value

    return parse


def _add_gateway_flags(parser: argparse.ArgumentParser) -> None:
    from shards.gateway.cluster import GatewayConfig

    defaults = GatewayConfig(control_dsn="")
    parser.add_argument(
        "--coalesce-wait-ms",
        type=_at_least(0, float),
        default=float(_env("coalesce_wait_ms", str(defaults.coalesce_wait_ms))),
        help="how long a small write that could go to its shard at once may wait for as many "
        "requests as the shard's last call carried to join it (default %(default)s; 0: it goes "
        "at once; a lone caller never waits; calls in flight always gather what queues "
        "behind them)",
    )
    parser.add_argument(
        "--shard-calls-in-flight",
        type=_at_least(1, int),
        default=int(_env("shard_calls_in_flight", str(defaults.shard_calls_in_flight_max))),
        help="write calls in flight to each shard at once (default %(default)s)",
    )
    parser.add_argument(
        "--shard-call-timeout-s",
        type=_at_least(0.1, float),
        default=float(_env("shard_call_timeout_s", str(defaults.shard_call_timeout_s))),
        help="how long a call to a shard may take before the gateway gives up on it: a read "
        "answers UNAVAILABLE, a write is sent again once and then answered OUTCOME_UNKNOWN "
        "(default %(default)s)",
    )


def _add_metrics_flag(parser: argparse.ArgumentParser, default: str = "") -> None:
    parser.add_argument(
        "--metrics-listen",
        default=_env("metrics_listen", default),
        help="host:port for Prometheus /metrics (default: %(default)r; '': off; port 0: a free "
        "one; with --shards N every process picks a free port on that host); its URL is "
        "printed before the serving line",
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port < 65536:
        raise argparse.ArgumentTypeError(f"must be 0..65535 (0: a free one), got {port}")
    return port


def _add_stream_flags(up: argparse.ArgumentParser) -> None:
    from shards.rpc.broker import DEFAULT_MONITOR_PORT, DEFAULT_NATS_PORT

    group = up.add_argument_group("the change stream and in-loan monitoring (--stream)")
    group.add_argument(
        "--stream",
        action="store_true",
        default=_env("stream", "") not in ("", "0", "false"),
        help="also run the embedded NATS JetStream broker, a tally relay of the ledger's change "
        "stream into it and a tally monitor reading it, all supervised (README, 'The change "
        "stream and tally monitor')",
    )
    group.add_argument(
        "--nats-port",
        type=_port,
        default=_port(_env("nats_port", str(DEFAULT_NATS_PORT))),
        help="the broker's port on 127.0.0.1 (default %(default)s; 0: a free one)",
    )
    group.add_argument(
        "--monitor-port",
        type=_port,
        default=_port(_env("monitor_port", str(DEFAULT_MONITOR_PORT))),
        help="tally.v1.Monitor's port on 127.0.0.1 (default %(default)s; 0: a free one)",
    )
    group.add_argument(
        "--monitor-rules",
        default=_env("monitor_rules", ""),
        metavar="PATH",
        help="the monitor's alert rules (TOML; default DATA_DIR/monitor/rules.toml, copied "
        "from deploy/monitor/rules.toml on first start)",
    )


def _add_logging_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=_env("log_format", "json"),
        help="stderr log: json, one JSON object a line, or text for people (default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=_env("log_level", "INFO"),
        help="log records at this level and above (default %(default)s)",
    )


def _add_signing_flags(parser: argparse.ArgumentParser, up: bool) -> None:
    default_help = (
        "default: the key tally up keeps in DATA_DIR/keys, made on first start"
        if up
        else "default: none, and blocks are written unsigned"
    )
    parser.add_argument(
        "--signing-key",
        default=_env("signing_key", ""),
        metavar="PATH",
        help=f"Ed25519 private key (PEM, see tally keygen) the writer signs every journal "
        f"block's head with; never stored in the database ({default_help})",
    )
    parser.add_argument(
        "--publish-heads",
        default=_env("publish_heads", ""),
        metavar="DIR",
        help="append each signed head (a JSON line) to DIR/shard-N.heads.jsonl, after its "
        "commit, for an auditor to keep (tally audit --published-heads DIR)"
        + ("; default: DATA_DIR/heads" if up else ""),
    )


def _writer_config(args: argparse.Namespace) -> WriterConfig:
    return replace(
        WriterConfig(),
        batch_item_count_max=args.batch_item_count_max,
        batch_wait_ms=args.batch_wait_ms,
        cache_account_count_max=args.cache_account_count_max,
        queue_size_max_bytes=args.queue_size_max_bytes,
        move_page_item_count=args.move_page_item_count,
    )


def _add_node_command(commands: Any) -> None:
    node = commands.add_parser("node", help="one shard node on an existing PostgreSQL")
    node.add_argument("--dsn", default=_env("dsn", ""), required=not _env("dsn", ""))
    node.add_argument("--listen", default=_env("listen", DEFAULT_TARGET))
    node.add_argument(
        "--control-dsn",
        default=_env("control_dsn", ""),
        help="the cluster's control database (slot map); none: owns every slot",
    )
    node.add_argument("--shard-id", type=int, default=int(_env("shard_id", "0")))
    node.add_argument(
        "--advertise",
        default=_env("advertise", ""),
        help="host:port gateways and peers use to reach this node's internal listener "
        "(default: its bound address)",
    )
    node.add_argument(
        "--advertise-client",
        default=_env("advertise_client", ""),
        help="host:port clients use to reach this node's client listener directly "
        "(tally.client's direct routing; default: --listen's address, none if a wildcard)",
    )
    node.add_argument(
        "--internal-listen",
        default=_env("internal_listen", ""),
        help="host:port of the internal listener (tally.v1.Shard, cluster identities only; "
        "default with --control-dsn: --listen's host, a free port, registered in the control "
        "database; without: none)",
    )
    node.add_argument(
        "--durability",
        choices=durability.MODES,
        default=_env("durability", durability.SYNC_STANDBY),
        help="what the database must make of a commit before this node writes on it: "
        f"{durability.SYNC_STANDBY} (default) needs a synchronous standby "
        "(synchronous_standby_names), so an acknowledged transaction is on two servers; "
        f"{durability.SINGLE_SERVER} accepts one server's disk (development, or a managed "
        "database whose storage replication is trusted instead)",
    )
    node.add_argument(
        "--cold-dir",
        default=_env("cold_dir", ""),
        metavar="ROOT",
        help="the cluster's cold segments (tally segments archive --dir ROOT): history reads "
        "and idempotency reach the blocks archived there; required once the shard has any",
    )
    node.add_argument(
        "--cold-store",
        default=_env("cold_store", ""),
        metavar="URL",
        help="the cluster's cold segments in an object store (s3://BUCKET/PREFIX?endpoint="
        "http://HOST:PORT&region=R; credentials from AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY): --cold-dir is then the cache of the files fetched from it",
    )
    _add_writer_flags(node)
    add_rpc_concurrency_flag(node)
    _add_signing_flags(node, up=False)
    _add_metrics_flag(node)
    security_flags.add_server_flags(node)


def _add_up_command(commands: Any) -> None:
    up = commands.add_parser("up", help="embedded PostgreSQL + one node, in the foreground")
    up.add_argument("--data-dir", default=_env("data_dir", ".tally"), type=Path)
    up.add_argument("--listen", default=_env("listen", DEFAULT_TARGET))
    up.add_argument(
        "--pg-port",
        type=int,
        default=int(_env("pg_port", "0")),
        help="PostgreSQL port (default: a free one, kept in the data dir)",
    )
    up.add_argument(
        "--shards",
        type=int,
        default=int(_env("shards", "1")),
        help="1: one node serves directly; N > 1: N node processes behind a gateway",
    )
    up.add_argument(
        "--replicas",
        type=int,
        choices=(0, 1),
        default=int(_env("replicas", "0")),
        help="1: PostgreSQL with a synchronous streaming standby and failover (an acknowledged "
        "transaction is on both servers; the nodes require it); 0: one server",
    )
    up.add_argument(
        "--wal-archive",
        type=Path,
        default=Path(_env("wal_archive", "")) if _env("wal_archive", "") else None,
        metavar="DIR",
        help="archive every WAL segment of the embedded PostgreSQL into DIR (PostgreSQL's "
        "basic_archive; with --replicas 1 both servers archive there), for point-in-time "
        "restore with tally backup and tally restore (default: no archive)",
    )
    up.add_argument(
        "--cold-dir",
        default=_env("cold_dir", ""),
        type=lambda text: os.path.abspath(text) if text else "",  # the nodes' cwd may differ
        metavar="ROOT",
        help="the shards' cold segments, as tally segments archive --dir ROOT writes them "
        "(each node reads its ROOT/shard-N; default: none)",
    )
    _add_writer_flags(up)
    _add_gateway_flags(up)
    add_rpc_concurrency_flag(up)
    _add_signing_flags(up, up=True)
    _add_metrics_flag(up, default="127.0.0.1:0")
    _add_stream_flags(up)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tally", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    _add_up_command(commands)
    _add_node_command(commands)

    keygen = commands.add_parser(
        "keygen", help="make an Ed25519 key pair for signing journal heads (tally node)"
    )
    keygen.add_argument(
        "private_key",
        type=Path,
        metavar="PATH",
        help="where the private key goes (created 0600, never overwritten); the public key, "
        "for auditors, goes to PATH.pub",
    )
    keygen.add_argument(
        "--keep",
        action="store_true",
        help="a key pair already at PATH is kept and the command succeeds (a one-shot init "
        "run again: deploy/); without it an existing key is an error",
    )

    gateway = commands.add_parser("gateway", help="the gateway of a cluster")
    gateway.add_argument(
        "--control-dsn", default=_env("control_dsn", ""), required=not _env("control_dsn", "")
    )
    gateway.add_argument("--listen", default=_env("listen", DEFAULT_TARGET))
    _add_gateway_flags(gateway)
    add_rpc_concurrency_flag(gateway)
    _add_metrics_flag(gateway)
    security_flags.add_server_flags(gateway)

    terminal.add_commands(commands, _env("target", DEFAULT_TARGET))
    credential_commands.add_command(commands)
    auditing.add_commands(commands, _env("audit_dsns", ""))
    auditing.add_serve_command(commands)
    relay_command.add_command(commands, _env("target", DEFAULT_TARGET))
    monitor_command.add_command(commands)
    flow_profile.add_command(commands)
    health.add_command(commands, _env("target", DEFAULT_TARGET))
    init_cluster.add_command(commands)
    slots.add_command(commands)
    backup_commands.add_commands(commands)
    segment_arguments.add_command(commands)
    for command in commands.choices.values():  # every command logs
        _add_logging_flags(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start_logging(args.log_level, args.log_format, secret_dsns=_given_dsns(args))
    if args.command in ("up", "node", "gateway"):
        import uvloop

        serve = _serve_gateway if args.command == "gateway" else _serve
        if args.command == "up":
            serve = _serve_up
        exit_code: int = uvloop.run(serve(args))
        return exit_code
    # The audit's code (and pyarrow, for cold segments) is imported only by the commands
    # that run it: a node or a gateway starts without it (0.3 s less of each start).
    if args.command in auditing.COMMANDS:
        from shards.audit import commands as audit_commands

        return audit_commands.run(args)
    if args.command == auditing.SERVE_COMMAND:
        from shards.audit import server as audit_service

        return audit_service.run(args)
    if args.command == "keygen":
        return _keygen(args.private_key, args.keep)
    if args.command == credential_commands.COMMAND:
        return credential_commands.run(args)
    if args.command == relay_command.COMMAND:
        return relay_command.run(args)
    if args.command == monitor_command.COMMAND:
        return monitor_command.run(args)
    if args.command == flow_profile.COMMAND:
        return flow_profile.run(args)
    if args.command == health.COMMAND:
        return health.run(args)
    if args.command == init_cluster.COMMAND:
        return init_cluster.run(args)
    if args.command == "slots":
        return slots.run(args)
    if args.command in backup_commands.COMMANDS:
        return backup_commands.run(args)
    if args.command in segment_arguments.COMMANDS:
        from shards.cli import segments

        return segments.run(args)
    return terminal.run(args)


def _given_dsns(args: argparse.Namespace) -> list[str]:
    """Every DSN this process was given, by flag or TALLY_* variable: its log never shows their
    secrets."""
    given: list[str] = []
    for value in (getattr(args, name, None) for name in ("dsn", "control_dsn", "default_dsns")):
        if isinstance(value, str):
            given += value.split(",")
        elif isinstance(value, list):
            given += value
    for name in ("dsn", "control_dsn", "audit_dsns"):
        given += _env(name, "").split(",")
    return [dsn.strip() for dsn in given if dsn.strip()]


def _keygen(private_path: Path, keep: bool) -> int:
    from shards.local.signing_keys import public_path_of, write_key_pair

    if keep and private_path.exists() and public_path_of(private_path).exists():
        print(f"tally: signing key {private_path} kept (and {public_path_of(private_path)})")
        return 0
    try:
        public_path, key_id = write_key_pair(private_path)
    except FileExistsError:
        print(f"tally keygen: {private_path} exists; it is never overwritten", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"tally keygen: {error}", file=sys.stderr)
        return 2
    print(f"tally: signing key {key_id}: private key {private_path} (0600, give it to the node:")
    print(f"  tally node --signing-key {private_path}); public key {public_path} (give it to")
    print(f"  auditors: tally audit --verify-key {public_path})")
    return 0


def _local_signing(args: argparse.Namespace) -> bool:
    """tally up: sign with the data directory's own key (made on first start) unless given
    one, publish heads under the data directory unless told where, and say where they are;
    False (after saying why) when the data directory's key cannot be read or made."""
    from core.signing import SigningKeyError
    from shards.local.signing_keys import local_key, public_path_of

    data_dir: Path = args.data_dir.resolve()
    if args.signing_key:
        public_path = public_path_of(Path(args.signing_key))
        made = "given"
    else:
        try:
            private_path, public_path, key_id, created = local_key(data_dir)
        except (OSError, SigningKeyError) as error:
            print(f"tally up: signing key: {error}", file=sys.stderr)
            return False
        args.signing_key = str(private_path)
        made = f"{key_id}, {'made now' if created else 'kept'} in {private_path.parent}"
    if not args.publish_heads:
        args.publish_heads = str(data_dir / "heads")
    print(
        f"tally: journal heads signed (key {made}); public key {public_path}; heads published "
        f"to {args.publish_heads}",
        flush=True,
    )
    print(
        f"tally: check them with: tally audit --verify-key {public_path} "
        f"--published-heads {args.publish_heads}",
        flush=True,
    )
    return True


def _local_security(args: argparse.Namespace) -> Path | None:
    """tally up: the data directory's CA, cluster certificate, admin identity and token key
    (made on first start, kept after); say where they are. None (after saying why) when they
    cannot be read or made."""
    from shards.security import directory
    from shards.security.pki import CertificateError

    root = security_flags.local_directory(args.data_dir.resolve())
    try:
        made = directory.init(root)
    except (OSError, CertificateError, ValueError) as error:
        print(f"tally up: credentials: {error}", file=sys.stderr)
        return None
    paths = directory.Paths(root)
    state = f"made now: {', '.join(made)}" if made else "kept"
    print(
        f"tally: TLS and credentials in {root} ({state}); CA {paths.certificate('ca')}", flush=True
    )
    print(
        f"tally: admin identity {paths.certificate('admin')} (tally commands use it by "
        f"default); issue others with: tally credentials issue NAME --role ROLE",
        flush=True,
    )
    return root


def _server_security(args: argparse.Namespace) -> Any:
    """The TLS credentials of this server: tally up's own, or the flags'."""
    if args.command == "up":
        from shards.security import directory

        root = _local_security(args)
        if root is None:
            raise SecurityConfigError("tally up could not set up its credentials")
        return directory.server_security(root)
    return security_flags.server_security(args)


def _lock_data_dir(args: argparse.Namespace) -> DataDirectoryLock | None:
    """tally up: the lock on its data directory, taken before anything in it is touched and
    held until PostgreSQL has stopped; None (after saying why) when another tally up holds it."""
    from shards.local import data_lock

    try:
        return data_lock.acquire(args.data_dir)
    except data_lock.DataDirectoryInUse as error:
        print(f"tally up: {error}", file=sys.stderr, flush=True)
    except OSError as error:
        print(f"tally up: cannot lock {args.data_dir.resolve()}: {error}", file=sys.stderr)
    return None


def _stream_of(args: argparse.Namespace) -> LocalStream | None:
    """tally up --stream: its broker, relay and monitor, ready to start (their ports checked,
    their certificates issued, their rules read), after tally up's credentials exist; None
    without --stream. StreamSetupError says what to change."""
    if args.command != "up" or not args.stream:
        return None
    from shards.local.stream import LocalStream, StreamConfig

    return LocalStream(
        StreamConfig(
            data_dir=args.data_dir.resolve(),
            nats_port=args.nats_port,
            monitor_port=args.monitor_port,
            rules_path=args.monitor_rules,
            metrics_host=args.metrics_listen.rsplit(":", 1)[0] if args.metrics_listen else "",
            child_flags=(f"--log-format={args.log_format}", f"--log-level={args.log_level}"),
            monitor_flags=(f"--rpc-concurrency-max={args.rpc_concurrency_max}",),
        )
    )


@contextlib.asynccontextmanager
async def _stream_supervised(stream: LocalStream | None) -> AsyncIterator[None]:
    """tally up --stream with one shard: its broker, relay and monitor restarted whenever they
    exit for as long as the block runs (the node in this process), then stopped."""
    if stream is None:
        yield
        return
    stopping = asyncio.Event()
    watcher = asyncio.create_task(stream.supervise(stopping))
    try:
        yield
    finally:
        stopping.set()
        await watcher
        await stream.stop()


async def _start_stream(stream: LocalStream | None, node: Any, target: str) -> bool:
    """The stream started on the node at target; False (after saying why, and stopping the
    node) if it cannot be."""
    if stream is None:
        return True
    try:
        await stream.start(target)
    except StreamSetupError as error:
        print(f"tally up: --stream: {error}", file=sys.stderr, flush=True)
        node.request_stop()
        await node.run()
        return False
    return True


async def _serve_up(args: argparse.Namespace) -> int:
    """tally up: with one shard its node in this process, with more a supervised cluster; on
    the embedded PostgreSQL, in a data directory locked for as long as this process runs."""
    lock = _lock_data_dir(args)
    if lock is None:
        return 2
    try:
        return await (_serve_cluster(args) if args.shards > 1 else _serve(args))
    finally:
        lock.release()  # after PostgreSQL has stopped: the next tally up finds it stopped


@contextlib.asynccontextmanager
async def _postgres_supervised(embedded: LocalPostgres | None) -> AsyncIterator[None]:
    """tally up: its PostgreSQL started again whenever it exits, for as long as the block runs
    (the node retries its connections meanwhile). Nothing without an embedded server."""
    if embedded is None:
        yield
        return
    from shards.local.cluster import keep_postgres_running

    stopping = asyncio.Event()
    watcher = asyncio.create_task(keep_postgres_running(embedded, stopping))
    try:
        yield
    finally:
        stopping.set()
        await watcher


def _node_config(args: argparse.Namespace, dsn: str, security: Any) -> Any:
    """The NodeConfig of `tally node`, or of the node `tally up` runs in its own process."""
    from shards.node.server import NodeConfig

    return NodeConfig(
        dsn=dsn,
        listen=args.listen,
        writer=_writer_config(args),
        shard_id=getattr(args, "shard_id", 0),
        control_dsn=getattr(args, "control_dsn", ""),
        advertise=getattr(args, "advertise", ""),
        advertise_client=getattr(args, "advertise_client", ""),
        metrics_listen=args.metrics_listen,
        signing_key=args.signing_key,
        publish_heads=args.publish_heads,
        security=security,
        internal_listen=getattr(args, "internal_listen", ""),
        rpc_concurrency_max=args.rpc_concurrency_max,
        durability=_durability(args),
        cold_dir=getattr(args, "cold_dir", ""),
        cold_store=getattr(args, "cold_store", ""),
    )


async def _serve(args: argparse.Namespace) -> int:
    from core.signing import SigningKeyError
    from shards.node.server import Node, NodeRefusedError

    try:
        security = _server_security(args)
        stream = _stream_of(args)
    except (SecurityConfigError, ValueError, StreamSetupError) as error:
        print(f"tally {args.command}: {error}", file=sys.stderr)
        return 2
    embedded = None
    if args.command == "up":
        if not _local_signing(args):
            return 2
        embedded, dsn = await asyncio.to_thread(_start_embedded, args)
    else:
        dsn = args.dsn
    try:
        node = Node(_node_config(args, dsn, security))
    except (OSError, SigningKeyError, ValueError) as error:
        print(f"tally {args.command}: {error}", file=sys.stderr)
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        return 2
    try:
        async with _postgres_supervised(embedded):
            try:
                port = await node.start()
            except NodeRefusedError as error:  # its databases are not what its flags say
                print(f"tally {args.command}: {error}", file=sys.stderr)
                return 2
            tune_garbage_collector()
            # Handlers before the serving line: a SIGTERM sent as soon as it is read stops the
            # node gracefully instead of killing the process.
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, node.request_stop)
            if node.metrics_port:  # before the serving line, which whoever started us waits for
                whose = " of node-0" if args.command == "up" else ""
                url = metrics_url(args.metrics_listen, node.metrics_port)
                print(f"tally: metrics{whose} on {url}", flush=True)
            if node.internal_port:
                print(f"tally: internal tally.v1.Shard on {node.internal_target}", flush=True)
            host = args.listen.rsplit(":", 1)[0]
            if not await _start_stream(stream, node, f"{host}:{port}"):
                return 2
            print(f"tally: serving tally.v1.Ledger on {host}:{port}", flush=True)
            async with _stream_supervised(stream):
                await node.run()
    finally:
        if embedded is not None:
            print("tally: stopping PostgreSQL", flush=True)
            await asyncio.to_thread(embedded.stop)
    print("tally: stopped", flush=True)
    return EXIT_FENCED if node.fenced else 0


async def _serve_gateway(args: argparse.Namespace) -> int:
    from shards.gateway.cluster import GatewayConfig
    from shards.gateway.server import Gateway

    try:
        security = security_flags.server_security(args)
    except (SecurityConfigError, ValueError) as error:
        print(f"tally gateway: {error}", file=sys.stderr)
        return 2
    gateway = Gateway(
        GatewayConfig(
            control_dsn=args.control_dsn,
            listen=args.listen,
            metrics_listen=args.metrics_listen,
            shard_calls_in_flight_max=args.shard_calls_in_flight,
            coalesce_wait_ms=args.coalesce_wait_ms,
            shard_call_timeout_s=args.shard_call_timeout_s,
            rpc_concurrency_max=args.rpc_concurrency_max,
            security=security,
        )
    )
    port = await gateway.start()
    tune_garbage_collector()
    return await run_announced(
        gateway, "tally.v1.Ledger", args.listen, port, args.metrics_listen, gateway.metrics_port
    )


async def _serve_cluster(args: argparse.Namespace) -> int:
    from shards.local.cluster import run_cluster
    from shards.security import directory

    root = _local_security(args)
    if root is None or not _local_signing(args):
        return 2
    try:
        stream = _stream_of(args)
    except StreamSetupError as error:
        print(f"tally up: {error}", file=sys.stderr)
        return 2
    embedded, _ = await asyncio.to_thread(_start_embedded, args)
    node_flags = [
        f"--signing-key={args.signing_key}",
        f"--publish-heads={args.publish_heads}",
        f"--batch-item-count-max={args.batch_item_count_max}",
        f"--batch-wait-ms={args.batch_wait_ms}",
        f"--cache-account-count-max={args.cache_account_count_max}",
        f"--queue-size-max-bytes={args.queue_size_max_bytes}",
        f"--rpc-concurrency-max={args.rpc_concurrency_max}",
        f"--durability={_durability(args)}",
    ]
    if args.cold_dir:
        node_flags.append(f"--cold-dir={args.cold_dir}")
    # Always passed, so TALLY_METRICS_LISTEN does not make N + 1 processes race for one port.
    metrics_flags = [f"--metrics-listen={_any_port(args.metrics_listen)}"]
    # Paths only: the keys stay in their 0600 files.
    tls_flags = directory.server_flags(root)
    # The children log as this process was asked to (into their files under the data dir).
    log_flags = [f"--log-format={args.log_format}", f"--log-level={args.log_level}"]
    gateway_flags = [
        f"--coalesce-wait-ms={args.coalesce_wait_ms}",
        f"--shard-calls-in-flight={args.shard_calls_in_flight}",
        f"--shard-call-timeout-s={args.shard_call_timeout_s}",
        f"--rpc-concurrency-max={args.rpc_concurrency_max}",
    ]
    try:
        return await run_cluster(
            embedded,
            args.shards,
            args.listen,
            args.data_dir.resolve(),
            node_flags + metrics_flags + log_flags + tls_flags,
            gateway_flags + metrics_flags + log_flags + tls_flags,
            stream,
        )
    except StreamSetupError as error:
        print(f"tally up: --stream: {error}", file=sys.stderr, flush=True)
        return 2
    finally:
        print("tally: stopping PostgreSQL", flush=True)
        await asyncio.to_thread(embedded.stop)
        print("tally: stopped", flush=True)


def _any_port(listen: str) -> str:
    """The same host with port 0 ("" stays off)."""
    return f"{listen.rsplit(':', 1)[0]}:0" if listen else ""


def _durability(args: argparse.Namespace) -> str:
    """A node's --durability; under tally up what its PostgreSQL gives: a synchronous standby
    with --replicas 1, one server's disk without (said, not assumed)."""
    if args.command != "up":
        return str(args.durability)
    return durability.SYNC_STANDBY if args.replicas else durability.SINGLE_SERVER


def _start_embedded(args: argparse.Namespace) -> tuple[LocalPostgres, str]:
    from shards.local.replicated_pg import local_server

    data_dir: Path = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = args.wal_archive.resolve() if args.wal_archive else None
    server = local_server(data_dir, args.pg_port, args.replicas, archive)
    print(f"tally: starting PostgreSQL: {server}", flush=True)
    server.start()
    if archive is not None:
        print(f"tally: PostgreSQL archives its WAL into {archive}", flush=True)
    hide_secrets([server.dsn()])  # its password never reaches this process's log
    server.create_database("tally_shard_0")
    return server, server.dsn("tally_shard_0")


if __name__ == "__main__":
    sys.exit(main())
