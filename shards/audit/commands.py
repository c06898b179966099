"""The auditor's commands: audit, export, verify-export, reconcile, statement.

They read the shard databases directly (asyncpg, read-only, one REPEATABLE READ snapshot per
shard), never through a node, so they work on a stopped cluster, a restored backup or a replica.
Every command takes a list of shard DSNs: `--dsn` once per shard, in shard order, or the
comma-separated TALLY_AUDIT_DSNS. Exit status: 0 when all is well, 1 when the books (export,
statement) show problems, 2 for usage and connection errors.

Their arguments are shards.audit.arguments' (which `tally`'s parser reads without importing
this); wired into `tally` by shards/cli/main.py (run); standalone for tests and scripts:
`python -m shards.audit.commands audit --dsn postgresql://...`.
"""

from __future__ import annotations

import argparse
import contextlib
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
from core.audit import AuditConfig, AuditReport, export, exporter, reconcile, render, statement
from core.audit.cold import ColdHistoryRequired
from core.audit.report import StructuredReport, balances, structured
from core.currencies import minor_unit_scale
from core.money import parse_minor_units
from shards.audit.arguments import (
    DSN_ENV,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    UsageError,
    add_commands,
    dsns_of,
    parse_time_ns,
)

PROGRESS_INTERVAL_S: Final = 0.1


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
