"""The `tally` command: run a node (`up`, `node`) and talk to one from a terminal."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from core.embedded_pg import EmbeddedPostgres
from shards import terminal
from shards.writer import WriterConfig

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


def _writer_config(args: argparse.Namespace) -> WriterConfig:
    return replace(
        WriterConfig(),
        batch_item_count_max=args.batch_item_count_max,
        batch_wait_ms=args.batch_wait_ms,
        cache_account_count_max=args.cache_account_count_max,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tally", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="embedded PostgreSQL + one node, in the foreground")
    up.add_argument("--data-dir", default=_env("data_dir", ".tally"), type=Path)
    up.add_argument("--listen", default=_env("listen", DEFAULT_TARGET))
    up.add_argument(
        "--pg-port",
        type=int,
        default=int(_env("pg_port", "0")),
        help="PostgreSQL port (default: a free one, kept in the data dir)",
    )
    _add_writer_flags(up)

    node = commands.add_parser("node", help="one shard node on an existing PostgreSQL")
    node.add_argument("--dsn", default=_env("dsn", ""), required=not _env("dsn", ""))
    node.add_argument("--listen", default=_env("listen", DEFAULT_TARGET))
    _add_writer_flags(node)

    terminal.add_commands(commands, _env("target", DEFAULT_TARGET))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=_env("log_level", "INFO"),
        format='{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s",'
        '"message":"%(message)s"}',
        stream=sys.stderr,
    )
    if args.command in ("up", "node"):
        import uvloop

        exit_code: int = uvloop.run(_serve(args))
        return exit_code
    return terminal.run(args)


async def _serve(args: argparse.Namespace) -> int:
    from shards.node import Node, NodeConfig, tune_garbage_collector

    embedded = None
    if args.command == "up":
        embedded, dsn = await asyncio.to_thread(_start_embedded, args)
    else:
        dsn = args.dsn
    node = Node(NodeConfig(dsn=dsn, listen=args.listen, writer=_writer_config(args)))
    try:
        port = await node.start()
        tune_garbage_collector()
        host = args.listen.rsplit(":", 1)[0]
        print(f"tally: serving tally.v1.Ledger on {host}:{port}", flush=True)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, node.request_stop)
        await node.run()
    finally:
        if embedded is not None:
            print("tally: stopping PostgreSQL", flush=True)
            await asyncio.to_thread(embedded.stop)
    print("tally: stopped", flush=True)
    return EXIT_FENCED if node.fenced else 0


def _start_embedded(args: argparse.Namespace) -> tuple[EmbeddedPostgres, str]:
    from core.embedded_pg import EmbeddedPostgresConfig, free_port

    data_dir: Path = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port_file = data_dir / "pg-port"
    port = args.pg_port
    if not port:
        port = int(port_file.read_text()) if port_file.exists() else free_port()
    port_file.write_text(str(port))
    server = EmbeddedPostgres(EmbeddedPostgresConfig(data_dir=data_dir / "pg", port=port))
    print(f"tally: starting PostgreSQL in {data_dir / 'pg'} on 127.0.0.1:{port}", flush=True)
    server.start()
    server.create_database("tally_shard_0")
    return server, server.dsn("tally_shard_0")


if __name__ == "__main__":
    sys.exit(main())
