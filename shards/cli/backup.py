"""`tally backup` and `tally restore`: a verified base backup of a shard's PostgreSQL, and a
point-in-time restore of one from a backup and the WAL archive (shards/local/backup.py).

Exit status: 0 done, 2 for anything that could not be done as asked (said in one message,
never a traceback). A DSN is taken from TALLY_DSN (or --dsn) and never printed with its secret.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path
from typing import Any, Final

from core import dsn as dsn_text
from shards.local.backup import (
    BackupError,
    RestoreRequest,
    RestoreResult,
    restore,
    take_backup,
)
from shards.local.embedded_pg import SUPERUSER, EmbeddedPostgresError, pg_bin_dir

COMMANDS: Final = ("backup", "restore")
EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
SHARD_PREFIX: Final = "tally_shard_"  # tally up's shard databases: tally_shard_0, ...


def _env(name: str) -> str:
    return os.environ.get("TALLY_" + name.upper(), "")


def add_commands(commands: Any) -> None:
    backup = commands.add_parser(
        "backup", help="a verified base backup of a shard's PostgreSQL (pg_basebackup)"
    )
    backup.add_argument(
        "--dsn",
        default=None,
        help="the server to back up, as a role with REPLICATION (default: $TALLY_DSN unless "
        "--data-dir is given); its password goes to pg_basebackup in a passfile",
    )
    backup.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="or the data directory of a running tally up: its primary PostgreSQL is backed up",
    )
    backup.add_argument(
        "--backups-dir",
        type=Path,
        default=Path(_env("backups_dir")) if _env("backups_dir") else None,
        metavar="DIR",
        help="where backups go, each in DIR/<UTC start time> (default: $TALLY_BACKUPS_DIR)",
    )
    restore_parser = commands.add_parser(
        "restore", help="restore a backup to a point in time into a new data directory"
    )
    restore_parser.add_argument(
        "--backup",
        type=Path,
        required=True,
        metavar="DIR",
        help="a backup tally backup made, or a directory of them (the latest that ended "
        "before --to is taken)",
    )
    restore_parser.add_argument(
        "--to", required=True, metavar="TIME", help="ISO-8601 with a zone: 2026-12-03T09:15:00Z"
    )
    restore_parser.add_argument(
        "--wal-archive",
        type=Path,
        default=Path(_env("wal_archive")) if _env("wal_archive") else None,
        metavar="DIR",
        help="the WAL archive (tally up --wal-archive, or the server's basic_archive "
        "directory; default: $TALLY_WAL_ARCHIVE)",
    )
    restore_parser.add_argument(
        "--target-dir", type=Path, required=True, metavar="NEWDATA",
        help="the restored data directory: new, or empty",
    )  # fmt: skip
    restore_parser.add_argument(
        "--port", type=int, default=0, help="its port on 127.0.0.1 (default: a free one)"
    )
    restore_parser.add_argument(
        "--inclusive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep a transaction committed exactly at TIME (default: yes)",
    )
    restore_parser.add_argument(
        "--timeout-s", type=float, default=600.0, help="for the recovery (default %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "backup":
            return _backup(args)
        return _restore(args)
    except (BackupError, EmbeddedPostgresError) as error:
        print(f"tally {args.command}: {dsn_text.scrub(str(error))}", file=sys.stderr)
        return EXIT_USAGE


def _backup(args: argparse.Namespace) -> int:
    if args.backups_dir is None:
        raise BackupError("--backups-dir (or TALLY_BACKUPS_DIR) is needed")
    if args.dsn is not None and args.data_dir is not None:
        raise BackupError("give --dsn or --data-dir, not both")
    dsn = args.dsn if args.dsn is not None else ("" if args.data_dir else _env("dsn"))
    info = take_backup(args.backups_dir, dsn=dsn, data_dir=args.data_dir)
    print(f"tally backup: {info.directory} (verified with pg_verifybackup)")
    print(f"  of {info.source}, timeline {info.timeline}")
    print(f"  start {info.start_lsn} at {info.start_time.isoformat()}")
    print(f"  end   {info.end_lsn} at {info.end_time.isoformat()}")
    print(
        "  restorable to any time after its end that the WAL archive covers: tally restore "
        f"--backup {info.directory} --to TIME --wal-archive DIR --target-dir NEWDATA"
    )
    return EXIT_OK


def parse_time(text: str) -> datetime.datetime:
    """ISO-8601 with a zone ("Z" or an offset)."""
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BackupError(
            f"--to {text!r} is not an ISO-8601 time (say 2026-12-03T09:15:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise BackupError(f"--to {text!r} has no zone: add Z (UTC) or an offset such as +01:00")
    return moment


def _restore(args: argparse.Namespace) -> int:
    to = parse_time(args.to)
    if args.wal_archive is None:
        raise BackupError("--wal-archive (or TALLY_WAL_ARCHIVE) is needed")
    if not 0 <= args.port < 65536:
        raise BackupError(f"--port {args.port} is not a port (0: a free one)")
    if args.timeout_s <= 0:
        raise BackupError("--timeout-s must be positive")
    request = RestoreRequest(
        backup=args.backup,
        to=to,
        wal_archive=args.wal_archive,
        target_dir=args.target_dir,
        port=args.port,
        inclusive=args.inclusive,
        timeout_s=args.timeout_s,
    )
    _report(restore(request), to)
    return EXIT_OK


def _report(result: RestoreResult, to: datetime.datetime) -> None:
    server = result.server
    last = result.last_transaction_time
    replayed = last.isoformat() if last else "none after the backup's end"
    print(f"tally restore: {server.data_dir} restored to {to.isoformat()} and promoted")
    print(f"  from backup {result.backup.directory}; now on timeline {result.timeline}")
    print(f"  last transaction replayed: committed at {replayed}")
    print(f"  PostgreSQL runs on {server.config.host}:{server.config.port} (its password is in")
    print(f"  {server.password_file}); databases: {', '.join(result.databases) or 'none'}")
    where = f"{server.config.host}:{server.config.port}"
    password = f"$(cat {server.password_file})"
    shards = sorted(
        (int(name.removeprefix(SHARD_PREFIX)), name)
        for name in result.databases
        if name.removeprefix(SHARD_PREFIX).isdigit() and name.startswith(SHARD_PREFIX)
    )
    if shards:  # every shard database in it, in shard order (tally up --shards N keeps them all)
        dsns = ",".join(f"postgresql://{SUPERUSER}:{password}@{where}/{name}" for _, name in shards)
        print(f'  audit it: TALLY_AUDIT_DSNS="{dsns}" tally audit')
    print(
        "  serve it (a copy: never beside the original shard, whose journal it forks): "
        'TALLY_DSN="..." tally node --durability single-server --shard-id N'
    )
    stop = f"{pg_bin_dir() / 'pg_ctl'} stop --pgdata {server.data_dir}"
    if os.geteuid() == 0:
        stop = f"runuser -u tally-pg -- {stop}"
    print(f"  stop it: {stop}")
