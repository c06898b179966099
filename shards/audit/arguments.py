"""The arguments of the auditor's commands (audit, export, verify-export, reconcile,
statement) and of `tally audit-serve`, apart from the code that runs them.

Every `tally` process builds the whole parser, a node or a gateway as much as an auditor: kept
here, it imports nothing of core.audit (which reads cold segments through pyarrow), and a node
starts without loading the audit's code (shards.audit.commands and shards.audit.server run the
commands, imported when one is asked for).
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path
from typing import Any, Final

from core import dsn as dsn_text
from shards.rpc.serving import add_rpc_concurrency_flag
from shards.security import flags as security_flags

DSN_ENV: Final = "TALLY_AUDIT_DSNS"
EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1
EXIT_USAGE: Final = 2
COMMANDS: Final = ("audit", "export", "verify-export", "reconcile", "statement")
# core.audit.export.FORMATS, named here so that building the parser imports no audit code
# (tests/shards/audit/test_arguments.py holds them equal).
EXPORT_FORMATS: Final = ("csv", "jsonl")
SERVE_COMMAND: Final = "audit-serve"
SERVE_DEFAULT_LISTEN: Final = "127.0.0.1:7700"
SERVE_LISTEN_ENV: Final = "TALLY_AUDIT_LISTEN"


class UsageError(Exception):
    pass


# ---- arguments ----


def add_commands(commands: Any, default_dsn_env: str) -> None:
    """Add the auditor's subcommands. default_dsn_env is the value of TALLY_AUDIT_DSNS
    (comma-separated DSNs), or the name of the variable to read it from."""
    default_dsns = _default_dsns(default_dsn_env)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
        return sub

    def with_dsns(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--dsn",
            action="append",
            default=None,
            help=f"a shard database, once per shard in shard order (default: ${DSN_ENV})",
        )
        sub.set_defaults(default_dsns=default_dsns)

    _audit_arguments(command("audit", "verify the books of every shard (read-only)"), with_dsns)
    _export_arguments(command("export", "export the journal of a period (CSV or JSON Lines)"))
    with_dsns(commands.choices["export"])
    verify = command("verify-export", "verify an export from its files alone")
    verify.add_argument("directory", type=Path)
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.add_argument(
        "--verify-key",
        action="append",
        default=[],
        metavar="PATH",
        help="an Ed25519 public key (PEM) every block's signature is checked with, "
        "repeatable (needs the cryptography package)",
    )
    reconcile = command("reconcile", "reconcile an external statement (CSV) with an account")
    _reconcile_arguments(reconcile)
    with_dsns(reconcile)
    statement = command("statement", "an account's statement for a period (CSV, HTML)")
    _statement_arguments(statement)
    with_dsns(statement)


def _default_dsns(value: str) -> str:
    if value and "://" not in value and "=" not in value:
        return os.environ.get(value, "")  # the name of the variable, not its value
    return value


def _audit_arguments(sub: argparse.ArgumentParser, with_dsns: Any) -> None:
    with_dsns(sub)
    sub.add_argument("--json", action="store_true", help="print the report as JSON")
    sub.add_argument("--report", type=Path, help="also write the report (.md or .html)")
    sub.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    sub.add_argument(
        "--hold-grace-seconds",
        type=float,
        default=60.0,
        help="a hold this long past its deadline is a problem (default %(default)s)",
    )
    sub.add_argument(
        "--anchor",
        action="append",
        default=[],
        metavar="SHARD:BLOCK:HASH",
        help="a block hash recorded elsewhere (an export's head) that must still be there",
    )
    sub.add_argument(
        "--verify-key",
        action="append",
        default=[],
        metavar="PATH",
        help="an Ed25519 public key (PEM) the journal heads' signatures are checked with, "
        "repeatable (old and new keys after a rotation: each head names its key id); with "
        "one, unsigned and wrongly signed blocks are findings",
    )
    sub.add_argument(
        "--published-heads",
        action="append",
        default=[],
        metavar="PATH",
        help="signed heads published outside the database (a directory of "
        "shard-N.heads.jsonl, or one such file), repeatable: every head must match the "
        "database's block",
    )
    sub.add_argument(
        "--segments",
        type=Path,
        default=None,
        metavar="ROOT",
        help="the cluster's cold segments (tally segments write --dir ROOT): each shard's are "
        "verified and every block they hold is checked against its database; the archived "
        "blocks' transactions and postings are read from them (needed once a shard has cold "
        "history)",
    )
    sub.add_argument("--problem-count-max", type=int, default=1000, help="kept per check")
    sub.add_argument(
        "--shard",
        action="append",
        type=int,
        default=None,
        help="audit only this shard (its position in the --dsn list), repeatable; the "
        "cross-shard check needs every shard",
    )
    sub.add_argument(
        "--currency",
        action="append",
        default=[],
        help="only this currency's trial balance, clearing and findings, repeatable",
    )


def _segments_argument(sub: argparse.ArgumentParser, reads: str) -> None:
    sub.add_argument(
        "--segments",
        type=Path,
        default=None,
        metavar="ROOT",
        help=f"the cluster's cold segments (as tally segments archive wrote them): {reads} "
        "of archived blocks are read from them (needed once a shard has cold history)",
    )


def _export_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--out", type=Path, required=True, help="directory (shard-N/ per shard)")
    _segments_argument(sub, "the transactions and postings")
    sub.add_argument("--format", choices=EXPORT_FORMATS, default="csv")
    sub.add_argument("--from", dest="from_time", default="", help="period start (UTC date/time)")
    sub.add_argument("--to", dest="to_time", default="", help="period end, exclusive")
    sub.add_argument("--first-block", type=int, default=0, help="or: blocks from this one")
    sub.add_argument("--last-block", type=int, default=0, help="to this one (inclusive)")


def _reconcile_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("account")
    sub.add_argument("statement", type=Path, help="CSV: value_date,amount,reference,description")
    _period_arguments(sub)
    sub.add_argument(
        "--date-window-days",
        type=int,
        default=3,
        help="lines without a matching reference match by amount within this many days",
    )
    sub.add_argument("--opening-balance", default=None, help="the statement's, major units")
    sub.add_argument("--closing-balance", default=None, help="the statement's, major units")
    sub.add_argument("--json", action="store_true", help="print the result as JSON")
    _segments_argument(sub, "the postings")


def _statement_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("account")
    _period_arguments(sub)
    sub.add_argument("--csv", type=Path, help="write the statement as CSV")
    sub.add_argument("--html", type=Path, help="write the statement as a printable HTML page")
    _segments_argument(sub, "the postings")


def _period_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--from", dest="from_time", required=True, help="UTC date/time, inclusive")
    sub.add_argument("--to", dest="to_time", required=True, help="UTC date/time, exclusive")


def dsns_of(args: argparse.Namespace) -> list[str]:
    dsns: list[str] = list(args.dsn or [])
    if not dsns:
        dsns = dsn_text.split_list(args.default_dsns or "")
    if not dsns:
        raise UsageError(f"no shard database: pass --dsn (once per shard) or set {DSN_ENV}")
    return dsns


def parse_time_ns(text: str) -> int:
    """'2026-03-01', '2026-03-01T12:00:00', with an offset or 'Z' (default UTC), or integer
    nanoseconds since the epoch; '' is 0 (unbounded)."""
    if not text:
        return 0
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{text!r} is not a date, a date and time, or nanoseconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    delta = moment - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def add_serve_command(commands: Any) -> None:
    """`tally audit-serve` (run by shards.audit.server), for shards/cli/main.py."""
    sub: argparse.ArgumentParser = commands.add_parser(
        SERVE_COMMAND,
        help="serve the read-only tally.v1.Audit gRPC service over the shard databases",
    )
    sub.add_argument(
        "--dsn",
        action="append",
        default=None,
        help=f"a shard database (read-only role), once per shard in shard order "
        f"(default: ${DSN_ENV}, comma-separated)",
    )
    sub.add_argument(
        "--listen",
        default=os.environ.get(SERVE_LISTEN_ENV, SERVE_DEFAULT_LISTEN),
        help=f"host:port (default: ${SERVE_LISTEN_ENV} or %(default)s; port 0: a free one)",
    )
    sub.add_argument(
        "--metrics-listen",
        default=os.environ.get("TALLY_METRICS_LISTEN", ""),
        help="host:port for Prometheus /metrics (default: off; port 0: a free one); its URL "
        "is printed before the serving line",
    )
    sub.add_argument(
        "--verify-key",
        action="append",
        default=[],
        metavar="PATH",
        help="an Ed25519 public key journal heads are checked against (repeat for rotated "
        "keys); without one, every audit reports the signed blocks it could not check",
    )
    sub.add_argument(
        "--segments",
        type=Path,
        default=None,
        metavar="ROOT",
        help="the cluster's cold segments (tally segments write --dir ROOT): every audit "
        "verifies each shard's and holds them against its database (check segments), and "
        "reads the archived blocks' transactions and postings from them (needed once a "
        "shard has cold history)",
    )
    add_rpc_concurrency_flag(sub)
    security_flags.add_server_flags(sub)
