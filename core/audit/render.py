"""An audit's report as the command line shows it: text, JSON, Markdown and HTML.

Each renderer only formats the one structured report (core.audit.report.StructuredReport);
the figures, verdicts and findings are the ones the gRPC service sends too.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Sequence
from typing import Any, Final

from core.audit.findings import CHECK_NAMES, COUNTER_NAMES, Finding
from core.audit.report import Balance, CrossShardSummary, ShardSummary, StructuredReport

# Findings printed in the terminal; the JSON and the report file carry every kept finding.
PROBLEM_PRINT_COUNT_MAX: Final = 50
WHOLE: Final = "the books are whole"
NOT_WHOLE: Final = "the books are NOT whole"


def utc_text(timestamp_ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp_ns / 1e9, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


# ---- JSON ----


def audit_json(report: StructuredReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "complete": report.complete,
        "started_at": utc_text(report.started_at_ns),
        "duration_s": round(report.duration_s, 3),
        "shards": [_shard_json(shard) for shard in report.shards],
        "trial_balance": balances_json(report.trial_balance),
        "cross_shard": _cross_shard_json(report.cross_shard),
        "problem_count": report.finding_count,
        "problems": [finding_json(finding) for finding in report.findings],
    }


def finding_json(finding: Finding) -> dict[str, Any]:
    return {
        "shard": finding.shard,
        "check": finding.check,
        "kind": finding.kind.name.lower(),
        "subject": finding.subject,
        "message": finding.message,
        "expected": finding.expected,
        "found": finding.found,
        "block": finding.block,
        "transaction_id": finding.transaction_id,
        "posting": finding.posting,
        "account_id": finding.account_id,
        "currency": finding.currency,
        "move_id": finding.move_id,
        "text": str(finding),
    }


def _shard_json(shard: ShardSummary) -> dict[str, Any]:
    return {
        "shard": shard.shard,
        "target": shard.target,
        "ok": shard.ok,
        "error": shard.error,
        "duration_s": round(shard.duration_s, 3),
        "blocks": shard.block_count,
        "transactions": shard.transaction_count,
        "postings": shard.posting_count,
        "accounts": shard.account_count,
        "holds": shard.hold_count,
        "head": {"block": shard.head_block, "hash": shard.head_hash},
        "checks": {check.name: check.finding_count for check in shard.checks},
        "trial_balance": balances_json(shard.trial_balance),
        "cross_shard_transactions": shard.cross_shard_count,
    }


def _cross_shard_json(cross: CrossShardSummary) -> dict[str, Any]:
    return {
        "checked": cross.checked,
        "reason": cross.reason,
        "settled": cross.settled_count,
        "in_flight": cross.in_flight_count,
        "open_holds": cross.open_hold_count,
        "rechecked": cross.rechecked_count,
        "in_flight_clearing": dict(cross.in_flight_clearing),
        "in_flight_transactions": [
            {
                "transaction_id": flight.transaction_id,
                "key": flight.key,
                "decision": flight.decision,
                "coordinator": flight.coordinator,
                "pieces": [{"shard": shard, "state": state} for shard, state in flight.pieces],
                "deadline": utc_text(flight.deadline_ns) if flight.deadline_ns else "",
            }
            for flight in cross.in_flight
        ],
    }


def balances_json(balances: Sequence[Balance]) -> dict[str, dict[str, int]]:
    return {b.currency: dict(zip(COUNTER_NAMES, b.counters, strict=True)) for b in balances}


# ---- text ----


def cross_shard_text(cross: CrossShardSummary) -> str:
    """One line on the cluster's cross-shard transactions (see core.audit.crossshard)."""
    if not cross.checked:
        return f"cross-shard transactions: not checked ({cross.reason})"
    text = (
        f"cross-shard transactions: {cross.settled_count:,} settled (clearing pieces net to "
        f"zero), {cross.open_hold_count:,} open holds, {cross.in_flight_count:,} in flight"
    )
    if cross.rechecked_count:
        text += f", {cross.rechecked_count:,} read again in later snapshots"
    if cross.in_flight:
        shown = ", ".join(flight.transaction_id for flight in cross.in_flight[:5])
        more = ", ..." if cross.in_flight_count > 5 else ""
        text += f" (in flight: {shown}{more})"
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def _shard_rows(report: StructuredReport) -> tuple[list[str], list[list[str]]]:
    header = ["shard", "blocks", "transactions", "postings", "accounts", "holds"]
    header += [*CHECK_NAMES, "result"]
    rows = []
    for shard in report.shards:
        if shard.error:
            rows.append([str(shard.shard), *["-"] * (len(header) - 2), "ERROR"])
            continue
        rows.append(
            [
                str(shard.shard),
                f"{shard.block_count:,}",
                f"{shard.transaction_count:,}",
                f"{shard.posting_count:,}",
                f"{shard.account_count:,}",
                f"{shard.hold_count:,}",
                *[_check_cell(check.finding_count) for check in shard.checks],
                "OK" if shard.ok else "FAIL",
            ]
        )
    return header, rows


def _check_cell(finding_count: int) -> str:
    return "ok" if finding_count == 0 else f"{finding_count:,} FAIL"


def _balance_rows(report: StructuredReport) -> tuple[list[str], list[list[str]]]:
    header = ["currency", "scope", *COUNTER_NAMES, "balanced"]
    rows = []
    for total in report.trial_balance:
        scopes = [
            (f"shard {shard.shard}", balance)
            for shard in report.shards
            if (balance := shard.balance(total.currency)) is not None
        ]
        scopes.append(("cluster", total))
        for scope, balance in scopes:
            rows.append(
                [
                    total.currency,
                    scope,
                    *[f"{counter:,}" for counter in balance.counters],
                    "yes" if balance.balanced else "NO",
                ]
            )
    return header, rows


def _verdict(report: StructuredReport) -> str:
    return WHOLE if report.ok else NOT_WHOLE


def audit_text(report: StructuredReport) -> str:
    lines = [
        f"tally audit: {len(report.shards)} shard(s), {report.posting_count:,} postings, "
        f"{report.account_count:,} accounts, in {report.duration_s:.1f} s",
        "",
        *_table(*_shard_rows(report)),
        "",
        "trial balance (minor units):",
        *_table(*_balance_rows(report)),
    ]
    for shard in report.shards:
        if shard.error:
            lines.append(f"shard {shard.shard} ({shard.target}): {shard.error}")
        elif shard.head_block:
            lines.append(f"shard {shard.shard}: head block {shard.head_block} {shard.head_hash}")
    lines.append(cross_shard_text(report.cross_shard))
    total = report.finding_count
    if total:
        lines += ["", f"{total:,} problem(s):"]
        lines += [f"  {finding}" for finding in report.findings[:PROBLEM_PRINT_COUNT_MAX]]
        if total > PROBLEM_PRINT_COUNT_MAX:
            lines.append(f"  ... {total - PROBLEM_PRINT_COUNT_MAX:,} more (see --json or --report)")
    lines += ["", _verdict(report)]
    return "\n".join(lines)


# ---- Markdown and HTML (`tally audit --report`) ----


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def audit_markdown(report: StructuredReport) -> str:
    lines = [
        "# Tally audit",
        "",
        f"Started {utc_text(report.started_at_ns)}, {report.duration_s:.1f} s. "
        f"Result: **{_verdict(report)}**.",
        "",
        "## Shards",
        "",
        *_markdown_table(*_shard_rows(report)),
        "",
        "## Trial balance (minor units)",
        "",
        *_markdown_table(*_balance_rows(report)),
        "",
        cross_shard_text(report.cross_shard) + ".",
        "",
        "## Problems",
        "",
    ]
    lines += [f"- `{finding}`" for finding in report.findings] or ["None."]
    return "\n".join(lines) + "\n"


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def audit_html(report: StructuredReport) -> str:
    findings = "".join(f"<li><code>{html.escape(str(f))}</code></li>" for f in report.findings)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Tally audit</title>"
        f"<style>{_CSS}</style></head><body><h1>Tally audit</h1>"
        f"<p>Started {utc_text(report.started_at_ns)}, {report.duration_s:.1f} s. Result: "
        f"<strong>{_verdict(report)}</strong>.</p><h2>Shards</h2>{_html_table(*_shard_rows(report))}"
        f"<h2>Trial balance (minor units)</h2>{_html_table(*_balance_rows(report))}"
        f"<p>{html.escape(cross_shard_text(report.cross_shard))}.</p>"
        f"<h2>Problems</h2><ul>{findings or '<li>None.</li>'}</ul></body></html>\n"
    )


_CSS: Final = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#111}"
    "table{border-collapse:collapse;margin:1em 0}"
    "th,td{border:1px solid #999;padding:.25em .6em;text-align:right}"
    "th:first-child,td:first-child{text-align:left}"
    "@media print{body{margin:0}a{color:inherit}}"
)
