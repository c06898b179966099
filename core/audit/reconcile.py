"""Reconciliation of an external statement (CSV) with an account's postings for a period.

The statement format is documented in docs/audit.md: a header row naming the columns
value_date, amount, reference, description (any order, other columns ignored), optionally
type (line / opening / closing) and balance. Amounts are signed decimals in major units on the
account's natural side (core.audit.statement): positive increases the balance.

Matching, deterministic and greedy in statement order:
1. by reference: a statement line whose reference is a ledger line's transaction id (or its
   metadata "reference") matches the unmatched ledger line with that reference, preferring
   the same amount, then the nearest value date;
2. by amount: a line still unmatched matches an unmatched ledger line with the same amount
   whose value date is within the date window, nearest date first, then the earlier posting.
A matched pair whose amounts differ, or whose value dates are further apart than the window,
is a difference (within the window, dates may differ: value dates often do); unmatched
statement lines are missing from the ledger, unmatched ledger lines are missing from the
statement. The opening and closing balances (when the statement gives them) are checked against
the ledger's, and so is the statement's own arithmetic (opening + lines = closing, and its
running balances when it has them).
"""

from __future__ import annotations

import csv
import datetime
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from core.audit.statement import Statement, StatementLine, utc_time_text
from core.money import format_minor_units, parse_minor_units

REQUIRED_COLUMNS: Final = ("value_date", "amount", "reference", "description")
LINE_TYPES: Final = ("line", "opening", "closing")
# The statement is read whole (it is matched against the ledger in memory): a limit.
STATEMENT_LINE_COUNT_MAX: Final = 1_000_000


class StatementFormatError(Exception):
    """The file is not a statement in the documented format; names the line."""


@dataclass(frozen=True, slots=True)
class ExternalLine:
    line_number: int
    value_date: datetime.date
    amount: int
    reference: str
    description: str
    # The running balance after this line, when the statement carries one.
    balance: int | None


@dataclass(slots=True)
class ExternalStatement:
    name: str
    lines: list[ExternalLine]
    opening_balance: int | None = None
    closing_balance: int | None = None


def parse_statement_csv(
    text: str, name: str, currency: str, line_count_max: int = STATEMENT_LINE_COUNT_MAX
) -> ExternalStatement:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise StatementFormatError(f"{name}: empty file")
    columns = {column.strip().lower(): index for index, column in enumerate(header)}
    missing = [column for column in REQUIRED_COLUMNS if column not in columns]
    if missing:
        raise StatementFormatError(f"{name} line 1: no column {', '.join(missing)}")
    statement = ExternalStatement(name, [])
    for cells in reader:
        line_number = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue
        if len(statement.lines) >= line_count_max:
            raise StatementFormatError(f"{name}: more than {line_count_max:,} lines")
        try:
            _add_row(statement, columns, cells, line_number, currency)
        except (ValueError, IndexError) as error:
            raise StatementFormatError(f"{name} line {line_number}: {error}") from None
    return statement


def read_statement_csv(path: Path, currency: str) -> ExternalStatement:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise StatementFormatError(f"{path.name}: not UTF-8 ({error.reason})") from None
    return parse_statement_csv(text, path.name, currency)


def _add_row(
    statement: ExternalStatement,
    columns: dict[str, int],
    cells: list[str],
    line_number: int,
    currency: str,
) -> None:
    def cell(name: str) -> str:
        index = columns.get(name)
        return cells[index].strip() if index is not None and index < len(cells) else ""

    kind = cell("type").lower() or "line"
    if kind not in LINE_TYPES:
        raise ValueError(f"type {kind!r} is not one of {', '.join(LINE_TYPES)}")
    balance = parse_minor_units(cell("balance"), currency) if cell("balance") else None
    if kind != "line":
        if balance is None:
            raise ValueError(f"an {kind} row needs its balance")
        if kind == "opening":
            statement.opening_balance = balance
        else:
            statement.closing_balance = balance
        return
    try:
        value_date = datetime.date.fromisoformat(cell("value_date"))
    except ValueError:
        raise ValueError(f"value_date {cell('value_date')!r} is not YYYY-MM-DD") from None
    amount = parse_minor_units(cell("amount"), currency)
    statement.lines.append(
        ExternalLine(
            line_number, value_date, amount, cell("reference"), cell("description"), balance
        )
    )


# ---- matching ----


@dataclass(frozen=True, slots=True)
class Match:
    statement: ExternalLine
    ledger: StatementLine
    by: str  # "reference" or "amount"

    @property
    def amount_difference(self) -> int:
        """Statement minus ledger."""
        return self.statement.amount - self.ledger.amount

    @property
    def date_difference_days(self) -> int:
        """Statement minus ledger, in days."""
        return (self.statement.value_date - self.ledger.value_date).days

    def agrees(self, date_window_days: int) -> bool:
        """Same amount, value dates no further apart than the window tolerates."""
        return self.amount_difference == 0 and abs(self.date_difference_days) <= date_window_days


@dataclass(frozen=True, slots=True)
class BalanceCheck:
    name: str
    statement: int | None
    ledger: int
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.statement is None or self.statement == self.ledger


@dataclass(slots=True)
class Reconciliation:
    account_id: str
    currency: str
    from_ns: int
    to_ns: int
    statement_name: str
    date_window_days: int
    matched: list[Match] = field(default_factory=list)
    differences: list[Match] = field(default_factory=list)
    missing_from_ledger: list[ExternalLine] = field(default_factory=list)
    missing_from_statement: list[StatementLine] = field(default_factory=list)
    balance_checks: list[BalanceCheck] = field(default_factory=list)
    # Statement lines whose running balance is not the one before plus the line.
    running_balance_breaks: list[tuple[ExternalLine, int]] = field(default_factory=list)
    statement_total: int = 0
    ledger_total: int = 0

    @property
    def ok(self) -> bool:
        return not (
            self.differences
            or self.missing_from_ledger
            or self.missing_from_statement
            or self.running_balance_breaks
            or not all(check.ok for check in self.balance_checks)
        )


def reconcile(
    ledger: Statement, external: ExternalStatement, date_window_days: int
) -> Reconciliation:
    result = Reconciliation(
        ledger.account.id,
        ledger.account.currency,
        ledger.from_ns,
        ledger.to_ns,
        external.name,
        date_window_days,
    )
    unmatched = dict.fromkeys(range(len(ledger.lines)), True)
    pairs: dict[int, Match] = {}
    _match_by_reference(ledger.lines, external.lines, unmatched, pairs)
    _match_by_amount(ledger.lines, external.lines, unmatched, pairs, date_window_days)
    for index, line in enumerate(external.lines):
        match = pairs.get(index)
        if match is None:
            result.missing_from_ledger.append(line)
        elif match.agrees(date_window_days):
            result.matched.append(match)
        else:
            result.differences.append(match)
    result.missing_from_statement = [ledger.lines[i] for i, free in unmatched.items() if free]
    result.statement_total = sum(line.amount for line in external.lines)
    result.ledger_total = sum(line.amount for line in ledger.lines)
    _check_balances(result, ledger, external)
    return result


def _match_by_reference(
    ledger: list[StatementLine],
    external: list[ExternalLine],
    unmatched: dict[int, bool],
    pairs: dict[int, Match],
) -> None:
    by_reference: dict[str, list[int]] = {}
    for index, posting in enumerate(ledger):
        for reference in posting.references:
            by_reference.setdefault(reference, []).append(index)
    for position, line in enumerate(external):
        if not line.reference:
            continue
        candidates = [i for i in by_reference.get(line.reference, ()) if unmatched[i]]
        if not candidates:
            continue
        best = min(
            candidates,
            key=lambda i: (ledger[i].amount != line.amount, _days_apart(line, ledger[i]), i),
        )
        unmatched[best] = False
        pairs[position] = Match(line, ledger[best], "reference")


def _days_apart(line: ExternalLine, posting: StatementLine) -> int:
    return abs((line.value_date - posting.value_date).days)


def _match_by_amount(
    ledger: list[StatementLine],
    external: list[ExternalLine],
    unmatched: dict[int, bool],
    pairs: dict[int, Match],
    date_window_days: int,
) -> None:
    by_amount: dict[int, list[int]] = {}
    for index, posting in enumerate(ledger):
        if unmatched[index]:
            by_amount.setdefault(posting.amount, []).append(index)
    for position, line in enumerate(external):
        if position in pairs:
            continue
        candidates = [
            i
            for i in by_amount.get(line.amount, ())
            if unmatched[i] and _days_apart(line, ledger[i]) <= date_window_days
        ]
        if not candidates:
            continue
        best = min(candidates, key=lambda i: (_days_apart(line, ledger[i]), i))
        unmatched[best] = False
        pairs[position] = Match(line, ledger[best], "amount")


def _check_balances(result: Reconciliation, ledger: Statement, external: ExternalStatement) -> None:
    result.balance_checks = [
        BalanceCheck("opening balance", external.opening_balance, ledger.opening_balance),
        BalanceCheck("closing balance", external.closing_balance, ledger.closing_balance),
    ]
    if external.opening_balance is not None and external.closing_balance is not None:
        arithmetic = external.opening_balance + result.statement_total
        result.balance_checks.append(
            BalanceCheck(
                "statement arithmetic",
                external.closing_balance,
                arithmetic,
                "the statement's closing against its opening plus its lines",
            )
        )
    running = external.opening_balance
    for line in external.lines:
        if line.balance is None:
            continue
        if running is not None and running + line.amount != line.balance:
            result.running_balance_breaks.append((line, running + line.amount))
        running = line.balance


# ---- output ----


def _money(amount: int | None, currency: str, signed: bool = False) -> str:
    if amount is None:
        return "-"
    return format_minor_units(amount, currency, grouped=True, plus_sign=signed)


def reconciliation_text(result: Reconciliation) -> str:
    currency = result.currency

    def money(amount: int | None) -> str:
        return _money(amount, currency, signed=True)

    lines = [
        f"reconcile {result.account_id} ({currency}) {_moment(result.from_ns)} .. "
        f"{_moment(result.to_ns)} (end excluded) against {result.statement_name}, "
        f"date window {result.date_window_days} days",
        "",
        f"matched                     {len(result.matched):>6} lines "
        f"{money(sum(m.statement.amount for m in result.matched)):>16}",
        f"differences                 {len(result.differences):>6} lines",
    ]
    for match in result.differences:
        lines.append("  " + _difference_text(match, currency, result.date_window_days))
    lines.append(
        f"missing from the ledger     {len(result.missing_from_ledger):>6} lines "
        f"{money(sum(x.amount for x in result.missing_from_ledger)):>16}"
    )
    for line in result.missing_from_ledger:
        lines.append(
            f"  statement line {line.line_number}: {line.value_date} {money(line.amount)} "
            f"reference {line.reference or '-'} {line.description!r}"
        )
    lines.append(
        f"missing from the statement  {len(result.missing_from_statement):>6} lines "
        f"{money(sum(x.amount for x in result.missing_from_statement)):>16}"
    )
    for posting in result.missing_from_statement:
        lines.append(
            f"  posting {posting.sequence}: {posting.value_date} {money(posting.amount)} "
            f"transaction {posting.transaction_id} {posting.description!r}"
        )
    lines += ["", *_balance_lines(result)]
    lines += [
        "",
        f"totals: statement lines {money(result.statement_total)}, ledger postings "
        f"{money(result.ledger_total)}, difference "
        f"{money(result.statement_total - result.ledger_total)}",
        "reconciled" if result.ok else "NOT reconciled",
    ]
    return "\n".join(lines)


def _moment(timestamp_ns: int) -> str:
    """A date when the time is midnight UTC, else the time."""
    text = utc_time_text(timestamp_ns)
    return text[:10] if text.endswith("00:00:00.000000") else text + " UTC"


def _difference_text(match: Match, currency: str, window_days: int) -> str:
    parts = []
    if match.amount_difference:
        parts.append(
            f"amount: statement {_money(match.statement.amount, currency, True)}, ledger "
            f"{_money(match.ledger.amount, currency, True)} (difference "
            f"{_money(match.amount_difference, currency, True)})"
        )
    if abs(match.date_difference_days) > window_days:
        parts.append(
            f"value date: statement {match.statement.value_date}, ledger "
            f"{match.ledger.value_date} ({match.date_difference_days:+d} days)"
        )
    return (
        f"statement line {match.statement.line_number} / posting {match.ledger.sequence} "
        f"(transaction {match.ledger.transaction_id}, matched by {match.by}): " + "; ".join(parts)
    )


def _balance_lines(result: Reconciliation) -> list[str]:
    currency = result.currency
    lines = [f"{'balance':<22} {'statement':>16} {'ledger':>16}"]
    for check in result.balance_checks:
        verdict = (
            "not given"
            if check.statement is None
            else "ok"
            if check.ok
            else f"DIFFERS by {_money(check.statement - check.ledger, currency, True)}"
        )
        lines.append(
            f"{check.name:<22} {_money(check.statement, currency):>16} "
            f"{_money(check.ledger, currency):>16}  {verdict}"
        )
    for line, expected in result.running_balance_breaks:
        lines.append(
            f"statement line {line.line_number}: running balance "
            f"{_money(line.balance, currency)}, expected {_money(expected, currency)}"
        )
    return lines


def reconciliation_json(result: Reconciliation) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "account": result.account_id,
        "currency": result.currency,
        "from_ns": result.from_ns,
        "to_ns": result.to_ns,
        "statement": result.statement_name,
        "date_window_days": result.date_window_days,
        "matched": [_match_json(m) for m in result.matched],
        "differences": [_match_json(m) for m in result.differences],
        "missing_from_ledger": [_external_json(x) for x in result.missing_from_ledger],
        "missing_from_statement": [_ledger_json(x) for x in result.missing_from_statement],
        "balance_checks": [
            {"name": c.name, "statement": c.statement, "ledger": c.ledger, "ok": c.ok}
            for c in result.balance_checks
        ],
        "running_balance_breaks": [
            {"line": line.line_number, "balance": line.balance, "expected": expected}
            for line, expected in result.running_balance_breaks
        ],
        "totals": {
            "statement": result.statement_total,
            "ledger": result.ledger_total,
            "difference": result.statement_total - result.ledger_total,
            "counts": {
                "matched": len(result.matched),
                "differences": len(result.differences),
                "missing_from_ledger": len(result.missing_from_ledger),
                "missing_from_statement": len(result.missing_from_statement),
            },
        },
    }


def _match_json(match: Match) -> dict[str, Any]:
    return {
        "by": match.by,
        "statement": _external_json(match.statement),
        "ledger": _ledger_json(match.ledger),
        "amount_difference": match.amount_difference,
        "date_difference_days": match.date_difference_days,
    }


def _external_json(line: ExternalLine) -> dict[str, Any]:
    return {
        "line": line.line_number,
        "value_date": line.value_date.isoformat(),
        "amount": line.amount,
        "reference": line.reference,
        "description": line.description,
    }


def _ledger_json(line: StatementLine) -> dict[str, Any]:
    return {
        "shard": line.shard,
        "sequence": line.sequence,
        "transaction_id": line.transaction_id,
        "value_date": line.value_date.isoformat(),
        "amount": line.amount,
        "description": line.description,
    }


def references_of(lines: Iterable[StatementLine]) -> set[str]:
    return {reference for line in lines for reference in line.references}
