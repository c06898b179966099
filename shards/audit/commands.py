"""The auditor's commands: audit, export, verify-export, reconcile, statement.

They read the shard databases directly (asyncpg, read-only, one REPEATABLE READ snapshot per
shard), never through a node, so they work on a stopped cluster, a restored backup or a replica.
Every command takes a list of shard DSNs: `--dsn` once per shard, in shard order, or the
comma-separated TALLY_AUDIT_DSNS. Exit status: 0 when all is well, 1 when the books (export,
statement) show problems, 2 for usage and connection errors.

Wired into `tally` by shards/cli.py (add_commands, run); standalone for tests and scripts:
`python -m shards.audit.commands audit --dsn postgresql://...`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, TextIO

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from core import audit, signing
from core import dsn as dsn_text
from core.audit import AuditConfig, AuditReport, export, exporter, reconcile, render, statement
from core.audit.cold import ColdHistoryRequired
from core.audit.report import StructuredReport, balances, structured
from core.currencies import minor_unit_scale
from core.money import parse_minor_units

DSN_ENV: Final = "TALLY_AUDIT_DSNS"
EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1
EXIT_USAGE: Final = 2
PROGRESS_INTERVAL_S: Final = 0.1
COMMANDS: Final = ("audit", "export", "verify-export", "reconcile", "statement")


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
    sub.add_argument("--format", choices=export.FORMATS, default="csv")
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


# ---- dispatch ----


def run(args: argparse.Namespace) -> int:
    handlers = {
        "audit": _audit_command,
        "export": _export_command,
        "verify-export": _verify_command,
        "reconcile": _reconcile_command,
        "statement": _statement_command,
    }
    try:
        return handlers[args.command](args)
    except UsageError as error:
        print(f"tally {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        # Unreachable or not a Tally shard database (no such table): nothing was audited.
        print(f"tally {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE


def _run_async(coroutine: Any) -> Any:
    import uvloop  # a dependency of the project; asyncpg decodes rows faster on it

    return uvloop.run(coroutine)


# ---- audit ----


def _audit_command(args: argparse.Namespace) -> int:
    for currency in args.currency:
        if currency not in minor_unit_scale:
            raise UsageError(f"--currency {currency!r} is not an ISO 4217 currency Tally knows")
    config = AuditConfig(
        problem_count_max=args.problem_count_max,
        hold_grace_s=args.hold_grace_seconds,
        anchors=tuple(_anchor(text) for text in args.anchor),
        currencies=frozenset(args.currency),
        verify_keys=verify_keys(args.verify_key),
        published_heads=published_heads(args.published_heads),
        segments_root=args.segments,
    )
    dsns = dsns_of(args)
    shards = sorted(set(args.shard)) if args.shard else None
    for shard in shards or ():
        if not 0 <= shard < len(dsns):
            raise UsageError(f"--shard {shard}: there are {len(dsns)} shard(s), 0..{len(dsns) - 1}")
    show_progress = sys.stderr.isatty() if args.progress is None else args.progress
    progress = AuditProgress(sys.stderr, len(shards or dsns)) if show_progress else None
    with progress or contextlib.nullcontext():
        report: AuditReport = _run_async(
            audit.audit_cluster(dsns, config, progress.update if progress else None, shards)
        )
    structured_report = structured(report)
    if args.json:
        print(json.dumps(render.audit_json(structured_report), indent=2))
    else:
        print(render.audit_text(structured_report))
    if args.report is not None:
        _write_report(args.report, structured_report)
    failed = [shard for shard in report.shards if shard.error]
    for shard in failed:
        print(f"tally audit: shard {shard.shard}: {shard.error}", file=sys.stderr)
    if failed:
        return EXIT_USAGE
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _write_report(path: Path, report: StructuredReport) -> None:
    if path.suffix.lower() in (".html", ".htm"):
        path.write_text(render.audit_html(report), encoding="utf-8")
    else:
        path.write_text(render.audit_markdown(report), encoding="utf-8")


def _anchor(text: str) -> audit.Anchor:
    parts = text.split(":")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        raise UsageError(f"--anchor {text!r} must be SHARD:BLOCK:HASH")
    try:
        bytes.fromhex(parts[2])
    except ValueError:
        raise UsageError(f"--anchor {text!r}: the hash is not hexadecimal") from None
    return audit.Anchor(int(parts[0]), int(parts[1]), parts[2])


def verify_keys(paths: Sequence[str]) -> tuple[signing.VerifyKey, ...]:
    keys = []
    for path in paths:
        try:
            keys.append(signing.load_public(Path(path).read_bytes(), path))
        except OSError as error:
            raise UsageError(f"--verify-key {path}: {error.strerror or error}") from None
        except signing.SigningKeyError as error:
            raise UsageError(f"--verify-key {error}") from None
    return tuple(keys)


def published_heads(paths: Sequence[str]) -> tuple[signing.Head, ...]:
    """Every head of the files named (a directory: its shard-N.heads.jsonl files)."""
    heads = []
    for text in paths:
        path = Path(text)
        files = sorted(path.glob("shard-*.heads.jsonl")) if path.is_dir() else [path]
        if path.is_dir() and not files:
            raise UsageError(f"--published-heads {text}: no shard-N.heads.jsonl in it")
        for file in files:
            try:
                lines = file.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as error:
                raise UsageError(f"--published-heads {file}: {error}") from None
            for number, line in enumerate(lines, 1):
                try:
                    heads.append(signing.parse_head_line(line))
                except ValueError as error:
                    raise UsageError(f"--published-heads {file} line {number}: {error}") from None
    return tuple(heads)


class AuditProgress:
    """A progress bar on stderr (rich): the share of postings and accounts streamed, over all
    shards; erased when the audit ends. Only made when it is to be drawn (a terminal, or
    --progress), so it writes as to a terminal."""

    def __init__(self, stream: TextIO, shard_count: int) -> None:
        self.shard_count = shard_count
        self.phases: dict[tuple[int, str], tuple[int, int]] = {}
        self.bar = Progress(
            TextColumn("audit [", markup=False),
            BarColumn(bar_width=30),
            TextColumn("]", markup=False),
            TextColumn("{task.percentage:5.1f}%", markup=False),
            TextColumn("{task.fields[detail]}", markup=False),
            console=Console(file=stream, force_terminal=True),
            transient=True,
            refresh_per_second=1 / PROGRESS_INTERVAL_S,
        )
        self.task = self.bar.add_task("audit", total=shard_count, detail="")

    def __enter__(self) -> AuditProgress:
        self.bar.start()
        return self

    def __exit__(self, *exception: object) -> None:
        self.bar.stop()

    def update(self, shard: int, phase: str, done: int, total: int) -> None:
        """audit.Progress: (shard, phase, done, total) of the phase last heard from."""
        self.phases[(shard, phase)] = (done, total)
        done_sum = sum(d for d, _ in self.phases.values())
        # Shards not heard from yet count as one unit each, so the bar never runs backwards far.
        total_sum = sum(t for _, t in self.phases.values()) + (
            self.shard_count - len({s for s, _ in self.phases})
        )
        self.bar.update(
            self.task,
            completed=done_sum,
            total=total_sum,
            detail=f" shard {shard} {phase} {done:,}/{total:,}",
        )


# ---- export and verify ----


def _export_command(args: argparse.Namespace) -> int:
    selection = exporter.Selection(
        parse_time_ns(args.from_time),
        parse_time_ns(args.to_time),
        args.first_block,
        args.last_block,
    )
    dsns = dsns_of(args)
    summaries = _run_async(_export_all(dsns, args.out, selection, args.format, args.segments))
    for summary in summaries:
        counts = ", ".join(f"{count:,} {name}" for name, count in summary.row_counts.items())
        print(
            f"{summary.directory}: blocks {summary.first_block}..{summary.last_block}, {counts}; "
            f"head hash {summary.head_hash}"
        )
    print(f"verify with: tally verify-export {args.out}")
    return EXIT_OK


async def _export_all(
    dsns: Sequence[str],
    out: Path,
    selection: exporter.Selection,
    export_format: str,
    segments: Path | None,
) -> list[exporter.ExportSummary]:
    config = AuditConfig()
    summaries = []
    for shard, dsn in enumerate(dsns):
        directory = out / f"shard-{shard}"
        directory.mkdir(parents=True, exist_ok=True)
        connection = await _connect(dsn, config)
        try:
            summaries.append(
                await exporter.export_shard(
                    connection,
                    directory,
                    str(shard),
                    selection,
                    export_format,
                    config.statement_timeout_s,
                    segments_root=segments,
                )
            )
        except ColdHistoryRequired as error:
            raise UsageError(f"shard {shard}: {error}") from None
        finally:
            await connection.close(timeout=config.connect_timeout_s)
    return summaries


async def _connect(dsn: str, config: AuditConfig) -> Any:
    try:
        return await audit.connect(dsn, config)
    except (OSError, TimeoutError):
        raise
    except Exception as error:  # asyncpg: no such database, authentication failed, ...
        raise UsageError(f"cannot connect to {audit.redact(dsn)}: {error}") from None


def _verify_command(args: argparse.Namespace) -> int:
    try:
        keys = export.load_verify_keys(args.verify_key)
    except export.SignatureSupportMissing as error:
        raise UsageError(str(error)) from None
    except OSError as error:
        raise UsageError(f"--verify-key {error.filename}: {error.strerror or error}") from None
    except ValueError as error:
        raise UsageError(f"--verify-key {error}") from None
    verification = export.verify_export(args.directory, keys=keys)
    if args.json:
        print(
            json.dumps(
                {
                    "ok": verification.ok,
                    "shards": [_verified_shard_json(shard) for shard in verification.shards],
                    "error_count": verification.error_count,
                    "errors": [
                        {"file": e.file, "line": e.line, "message": e.message, "text": str(e)}
                        for e in verification.errors
                    ],
                },
                indent=2,
            )
        )
    else:
        print(export.format_verification(verification))
    return EXIT_OK if verification.ok else EXIT_PROBLEMS


def _verified_shard_json(shard: export.ShardVerification) -> dict[str, Any]:
    return {
        "directory": shard.directory,
        "format": shard.export_format,
        "first_block": shard.first_block,
        "last_block": shard.last_block,
        "blocks": shard.block_count,
        "transactions": shard.transaction_count,
        "postings": shard.posting_count,
        "head_hash": shard.head_hash,
        "signatures_verified": shard.signed_count,
        "movements": render.balances_json(balances(shard.movements)),
    }


# ---- reconcile and statement ----


def _reconcile_command(args: argparse.Namespace) -> int:
    ledger = _load_statement(args)
    currency = ledger.account.currency
    try:
        external = reconcile.read_statement_csv(args.statement, currency)
        if args.opening_balance is not None:
            external.opening_balance = parse_minor_units(args.opening_balance, currency)
        if args.closing_balance is not None:
            external.closing_balance = parse_minor_units(args.closing_balance, currency)
    except (reconcile.StatementFormatError, ValueError) as error:
        raise UsageError(str(error)) from None
    result = reconcile.reconcile(ledger, external, args.date_window_days)
    if args.json:
        print(json.dumps(reconcile.reconciliation_json(result), indent=2))
    else:
        print(reconcile.reconciliation_text(result))
    return EXIT_OK if result.ok else EXIT_PROBLEMS


def _statement_command(args: argparse.Namespace) -> int:
    ledger = _load_statement(args)
    if args.csv is not None:
        args.csv.write_text(statement.statement_csv(ledger), encoding="utf-8")
    if args.html is not None:
        args.html.write_text(statement.statement_html(ledger, time.time_ns()), encoding="utf-8")
    print(statement.statement_text(ledger))
    return EXIT_OK if ledger.consistent else EXIT_PROBLEMS


def _load_statement(args: argparse.Namespace) -> statement.Statement:
    from_ns, to_ns = parse_time_ns(args.from_time), parse_time_ns(args.to_time)
    try:
        loaded: statement.Statement = _run_async(
            _read_statement(dsns_of(args), args.account, from_ns, to_ns, args.segments)
        )
    except statement.StatementError as error:
        raise UsageError(str(error)) from None
    return loaded


async def _read_statement(
    dsns: Sequence[str], account_id: str, from_ns: int, to_ns: int, segments: Path | None
) -> statement.Statement:
    config = AuditConfig()
    connections = []
    try:
        for dsn in dsns:
            connections.append(await _connect(dsn, config))
        return await statement.load_statement(
            connections,
            account_id,
            from_ns,
            to_ns,
            config.statement_timeout_s,
            segments_root=segments,
        )
    finally:
        for connection in connections:
            await connection.close(timeout=config.connect_timeout_s)


# ---- standalone ----


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tally", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_commands(commands, os.environ.get(DSN_ENV, ""))
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
