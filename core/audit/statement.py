"""An account's statement for a period: opening balance, the postings, closing balance.

Read straight from the shard databases, one REPEATABLE READ READ ONLY snapshot per shard. The
period is [from, to) in booking time (the postings' timestamps, UTC). A line is a posting that
moved the posted balance; holds and their releases change only the pending counters and are
not statement lines (the amount on hold at the close is shown apart).

Amounts and balances are signed on the account's natural side: for most accounts (deposits,
income, ...) a credit increases the balance (balance = credits - debits); for an account with
credits_must_not_exceed_debits (a loan, a limit) a debit does (balance = debits - credits).
The same convention is used for external statements (core.audit.reconcile).

A spread account (id starting with '@') has a piece on every shard; its statement merges the
pieces' postings in time order and sums their balances. A client's account whose slot moved is
read at each shard that held it, in the order it moved (each shard's slot_moves rows say where
its slot went), without the moves' own entries (docs/design.md, "Reads across the move").
"""

from __future__ import annotations

import csv
import datetime
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from core import history
from core.audit.cold import ColdHistoryRequired
from core.audit.cold_reads import ShardCold, line_row
from core.journal import FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS
from core.model import Kind
from core.money import format_minor_units
from core.slots import account_slot, is_spread
from core.store import statement as queries

# A statement is built in memory (it is read by a person): refuse rather than exhaust memory.
LINE_COUNT_MAX_DEFAULT: Final = 1_000_000
NS_PER_DAY: Final = 86_400 * 1_000_000_000
REFERENCE_METADATA_KEY: Final = "reference"
DESCRIPTION_METADATA_KEYS: Final = ("description", "memo", "narrative")


class StatementError(Exception):
    """The statement cannot be produced as asked (no such account, too many lines)."""


@dataclass(frozen=True, slots=True)
class AccountInfo:
    id: str
    currency: str
    code: int
    flags: int
    metadata: dict[str, str]
    created_at_ns: int
    closed_at_ns: int
    shard_count: int

    @property
    def debit_side(self) -> bool:
        """Whether a debit increases this account's balance."""
        return bool(self.flags & FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS)


@dataclass(frozen=True, slots=True)
class StatementLine:
    shard: int
    sequence: int
    timestamp_ns: int
    value_date: datetime.date
    transaction_id: str
    kind: int
    code: int
    description: str
    # The transaction id and, when present, the transaction's metadata "reference".
    references: tuple[str, ...]
    debit: int
    credit: int
    # Signed on the natural side: positive increases the balance.
    amount: int
    balance: int

    @property
    def booking_date(self) -> datetime.date:
        return utc_date(self.timestamp_ns)


@dataclass(frozen=True, slots=True)
class Statement:
    account: AccountInfo
    from_ns: int
    to_ns: int
    opening_balance: int
    closing_balance: int
    # Amounts on hold at the close (pending debits plus pending credits), for information.
    pending_at_close: int
    lines: list[StatementLine]

    @property
    def total_debits(self) -> int:
        return sum(line.debit for line in self.lines)

    @property
    def total_credits(self) -> int:
        return sum(line.credit for line in self.lines)

    @property
    def consistent(self) -> bool:
        """Opening plus the lines equals the closing the ledger records (else the account's
        history is broken: run `tally audit`)."""
        return self.opening_balance + sum(line.amount for line in self.lines) == (
            self.closing_balance
        )


_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def utc_date(timestamp_ns: int) -> datetime.date:
    return (_EPOCH + datetime.timedelta(days=timestamp_ns // NS_PER_DAY)).date()


def utc_time_text(timestamp_ns: int) -> str:
    """Exact to the microsecond (integer arithmetic, no float rounding)."""
    moment = _EPOCH + datetime.timedelta(microseconds=timestamp_ns // 1000)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def date_start_ns(day: datetime.date) -> int:
    return (day - _EPOCH.date()).days * NS_PER_DAY


# ---- reading ----


@dataclass(slots=True)
class _ShardPart:
    shard: int
    account: Any
    # The balance before the period's start and before its end (None: no posting before it
    # here; for a client's account, a move's own entries do not count).
    opening: tuple[int, int, int, int] | None
    closing: tuple[int, int, int, int] | None
    rows: list[Any]
    # The shards this one moved the account's slot to.
    moved_to: list[int]


async def load_statement(
    connections: Sequence[Any],
    account_id: str,
    from_ns: int,
    to_ns: int,
    timeout_s: float,
    line_count_max: int = LINE_COUNT_MAX_DEFAULT,
    segments_root: Path | None = None,
) -> Statement:
    """The statement of account_id over [from_ns, to_ns), from every shard that holds it
    (connections in shard order): a client's account at each shard that held it in turn
    (moved with its slot: docs/design.md, "Reads across the move"), a spread account at every
    shard, summed. A shard with cold history reads its archived postings from the cluster's
    segments_root (core.audit.cold_reads); without it, that is a StatementError."""
    if to_ns <= from_ns:
        raise StatementError("the period's end must be after its start")
    parts = []
    for shard, connection in enumerate(connections):
        part = await _read_shard(
            connection,
            shard,
            account_id,
            (from_ns, to_ns),
            timeout_s,
            line_count_max,
            segments_root,
        )
        if part is not None:
            parts.append(part)
    if not parts:
        raise StatementError(f"account {account_id} not found on any shard")
    if sum(len(part.rows) for part in parts) > line_count_max:
        raise StatementError(f"more than {line_count_max:,} lines: ask for a shorter period")
    if is_spread(account_id):
        return _assemble_pieces(parts, from_ns, to_ns)
    return _assemble_holders(parts, from_ns, to_ns)


async def _read_shard(
    connection: Any,
    shard: int,
    account_id: str,
    period: tuple[int, int],
    timeout_s: float,
    line_count_max: int,
    segments_root: Path | None,
) -> _ShardPart | None:
    from_ns, to_ns = period
    own = not is_spread(account_id)  # a client's account: a move's entries are not its own
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        try:
            cold = await ShardCold.open(connection, segments_root, timeout_s)
        except ColdHistoryRequired as error:
            raise StatementError(str(error)) from None
        account = await connection.fetchrow(queries.ACCOUNT_SQL, account_id, timeout=timeout_s)
        if account is None:
            return None
        opening = await _balance_before(connection, cold, account_id, from_ns, own, timeout_s)
        closing = await _balance_before(connection, cold, account_id, to_ns, own, timeout_s)
        rows = await _cold_lines(connection, cold, account_id, period, own, timeout_s)
        rows += await connection.fetch(
            queries.LINES_SQL,
            account_id,
            from_ns,
            to_ns,
            max(line_count_max + 1 - len(rows), 0),
            own,
            cold.hot_from if cold is not None else 1,
            timeout=timeout_s,
        )
        moved_to = []
        if own:
            found = await connection.fetch(
                queries.MOVED_TO_SQL, account_slot(account_id), timeout=timeout_s
            )
            moved_to = [row["peer_shard"] for row in found]
    return _ShardPart(shard, account, opening, closing, list(rows), moved_to)


async def _balance_before(
    connection: Any,
    cold: ShardCold | None,
    account_id: str,
    at_ns: int,
    own: bool,
    timeout_s: float,
) -> tuple[int, int, int, int] | None:
    hot_from = cold.hot_from if cold is not None else 1
    row = await connection.fetchrow(
        queries.BALANCE_BEFORE_SQL, account_id, at_ns, own, hot_from, timeout=timeout_s
    )
    if row is not None:
        return (row[0], row[1], row[2], row[3])
    if cold is None:
        return None
    return await cold.balance_before(account_id, at_ns, _MOVE_PREFIXES if own else ())


# A slot move's own entries (core.ids), which a client's statement leaves out.
_MOVE_PREFIXES: Final = ("~moveout/", "~movein/")


async def _cold_lines(
    connection: Any,
    cold: ShardCold | None,
    account_id: str,
    period: tuple[int, int],
    own: bool,
    timeout_s: float,
) -> list[Any]:
    """LINES_SQL's rows of the account's cold postings, in sequence order."""
    if cold is None:
        return []
    postings = [
        posting
        for posting, _ in await cold.postings_between(account_id, *period)
        if posting.posted_amount and not (own and posting.transaction_id.startswith(_MOVE_PREFIXES))
    ]
    ids = sorted({p.transaction_id for p in postings})
    found: dict[str, Any] = {
        row["id"]: row
        for row in await connection.fetch(queries.LINE_TRANSACTIONS_SQL, ids, timeout=timeout_s)
    }
    missing = [i for i in ids if i not in found]
    if missing:
        found.update(await cold.transaction_rows(connection, missing, timeout_s))
    return [line_row(p, found.get(p.transaction_id)) for p in postings]


_ZERO: Final = (0, 0, 0, 0)


def _account_info(parts: list[_ShardPart]) -> AccountInfo:
    first = parts[0].account
    return AccountInfo(
        first["id"],
        first["currency"],
        first["code"],
        first["flags"],
        json.loads(first["metadata"]),
        first["created_at_ns"],
        first["closed_at_ns"],
        len(parts),
    )


def _assemble_pieces(parts: list[_ShardPart], from_ns: int, to_ns: int) -> Statement:
    """A spread account: its pieces' balances summed, their lines merged in time order."""
    account = _account_info(parts)
    opening = sum(_natural(account, part.opening or _ZERO) for part in parts)
    closing = sum(_natural(account, part.closing or _ZERO) for part in parts)
    pending = sum(sum((part.closing or _ZERO)[2:]) for part in parts)
    tagged = [(row["timestamp_ns"], part.shard, row) for part in parts for row in part.rows]
    tagged.sort(key=lambda item: (item[0], item[1], item[2]["sequence"]))
    lines = _lines(account, opening, [(shard, row) for _, shard, row in tagged])
    return Statement(account, from_ns, to_ns, opening, closing, pending, lines)


def _assemble_holders(parts: list[_ShardPart], from_ns: int, to_ns: int) -> Statement:
    """A client's account: at each shard that held it, in the order its slot moved; the
    balance at a time is the last holder's with a posting before it (a move's entries left
    out: the move-in brings a target's counters to exactly its source's before its move-out,
    so the chain runs on unbroken)."""
    order = history.holder_order({part.shard: part.moved_to for part in parts})
    parts = sorted(parts, key=lambda part: order.index(part.shard))
    account = _account_info(parts)
    opening_counters = next((p.opening for p in reversed(parts) if p.opening), _ZERO)
    closing_counters = next((p.closing for p in reversed(parts) if p.closing), _ZERO)
    opening = _natural(account, opening_counters)
    closing = _natural(account, closing_counters)
    rows = [(part.shard, row) for part in parts for row in part.rows]
    lines = _lines(account, opening, rows)
    pending = closing_counters[2] + closing_counters[3]
    return Statement(account, from_ns, to_ns, opening, closing, pending, lines)


def _lines(account: AccountInfo, opening: int, rows: list[tuple[int, Any]]) -> list[StatementLine]:
    lines = []
    balance = opening
    for shard, row in rows:
        line = _line(account, shard, row, balance)
        balance = line.balance
        lines.append(line)
    return lines


def _natural(account: AccountInfo, counters: tuple[int, int, int, int]) -> int:
    debits, credits = counters[0], counters[1]
    return debits - credits if account.debit_side else credits - debits


def _line(account: AccountInfo, shard: int, row: Any, balance_before: int) -> StatementLine:
    is_debit = row["is_debit"]
    posted = row["posted_amount"]
    amount = posted if is_debit == account.debit_side else -posted
    metadata: dict[str, str] = json.loads(row["metadata"])
    references = [row["transaction_id"]]
    if metadata.get(REFERENCE_METADATA_KEY):
        references.append(metadata[REFERENCE_METADATA_KEY])
    timestamp_ns = row["timestamp_ns"]
    value_date = (
        datetime.date.fromisoformat(row["value_date"])
        if row["value_date"]
        else utc_date(timestamp_ns)
    )
    return StatementLine(
        shard,
        row["sequence"],
        timestamp_ns,
        value_date,
        row["transaction_id"],
        row["kind"],
        row["code"],
        _description(metadata, row["kind"], row["code"], row["target_id"]),
        tuple(references),
        posted if is_debit else 0,
        0 if is_debit else posted,
        amount,
        balance_before + amount,
    )


def _description(metadata: dict[str, str], kind: int, code: int, target_id: str) -> str:
    for key in DESCRIPTION_METADATA_KEYS:
        if metadata.get(key):
            return metadata[key]
    if kind == Kind.REVERSAL:
        return f"reversal of {target_id}"
    if kind == Kind.POST_PENDING:
        return f"capture of hold {target_id}"
    return f"transaction code {code}"


# ---- rendering ----

CSV_COLUMNS: Final = (
    "type",
    "booking_time",
    "value_date",
    "amount",
    "reference",
    "description",
    "debit",
    "credit",
    "balance",
)


def statement_csv(statement: Statement) -> str:
    """One row per line, between an opening and a closing row (type column); `tally reconcile`
    reads this format back (docs/audit.md)."""
    currency = statement.account.currency
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    opening_date = utc_date(statement.from_ns).isoformat()
    writer.writerow(
        [
            "opening",
            utc_time_text(statement.from_ns),
            opening_date,
            "",
            "",
            "opening balance",
            "",
            "",
            format_minor_units(statement.opening_balance, currency),
        ]
    )
    for line in statement.lines:
        writer.writerow(
            [
                "line",
                utc_time_text(line.timestamp_ns),
                line.value_date.isoformat(),
                format_minor_units(line.amount, currency),
                line.transaction_id,
                line.description,
                format_minor_units(line.debit, currency) if line.debit else "",
                format_minor_units(line.credit, currency) if line.credit else "",
                format_minor_units(line.balance, currency),
            ]
        )
    writer.writerow(
        [
            "closing",
            utc_time_text(statement.to_ns),
            utc_date(statement.to_ns - 1).isoformat(),
            "",
            "",
            "closing balance",
            "",
            "",
            format_minor_units(statement.closing_balance, currency),
        ]
    )
    return buffer.getvalue()


def _grouped(amount: int, currency: str) -> str:
    """For people (the page, the terminal); the CSV, read back by programs, is not grouped."""
    return format_minor_units(amount, currency, grouped=True)


_STATEMENT_CSS: Final = """
body { font-family: Georgia, 'Times New Roman', serif; margin: 2.5em; color: #111; }
h1 { font-size: 1.4em; margin-bottom: .2em; }
.meta { margin: 0 0 1.5em 0; }
.meta td { padding: .1em 1.2em .1em 0; border: none; }
table.lines { border-collapse: collapse; width: 100%; font-size: .92em; }
table.lines th { border-bottom: 2px solid #333; text-align: left; padding: .3em .5em; }
table.lines td { border-bottom: 1px solid #ccc; padding: .25em .5em; vertical-align: top; }
table.lines .money { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.balance td { font-weight: bold; background: #f2f2f2; }
tfoot td { border-top: 2px solid #333; font-weight: bold; }
.warning { color: #a00; font-weight: bold; }
.footer { margin-top: 2em; font-size: .8em; color: #555; }
@media print {
  body { margin: 1.2cm; }
  thead { display: table-header-group; }
  tr { page-break-inside: avoid; }
}
"""


def statement_html(statement: Statement, generated_at_ns: int) -> str:
    """A printable page (A4 or letter), self-contained: no scripts, no external resources."""
    account = statement.account
    currency = account.currency
    holder = account.metadata.get("name", "")
    escape = html.escape
    meta_rows = [
        ("Account", account.id),
        ("Holder", holder),
        ("Currency", currency),
        (
            "Period",
            f"{utc_time_text(statement.from_ns)} to {utc_time_text(statement.to_ns)} UTC "
            "(end excluded)",
        ),
        ("Closed", utc_time_text(account.closed_at_ns) if account.closed_at_ns else ""),
    ]
    meta = "".join(
        f"<tr><td>{escape(name)}</td><td>{escape(value)}</td></tr>"
        for name, value in meta_rows
        if value
    )
    body = "".join(_html_line(line, currency) for line in statement.lines)
    opening = _html_balance_row("Opening balance", statement.opening_balance, currency)
    closing = _html_balance_row("Closing balance", statement.closing_balance, currency)
    warning = (
        ""
        if statement.consistent
        else "<p class='warning'>The postings do not add up to the closing balance: the "
        "account's history needs an audit.</p>"
    )
    pending = (
        f"<p>On hold at the close: {_grouped(statement.pending_at_close, currency)} "
        f"{escape(currency)} (not included in the balance).</p>"
        if statement.pending_at_close
        else ""
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Statement {escape(account.id)}</title><style>{_STATEMENT_CSS}</style></head>"
        f"<body><h1>Account statement</h1><table class='meta'>{meta}</table>"
        "<table class='lines'><thead><tr><th>Booked</th><th>Value date</th><th>Reference</th>"
        "<th>Description</th><th class='money'>Debit</th><th class='money'>Credit</th>"
        f"<th class='money'>Balance</th></tr></thead><tbody>{opening}{body}{closing}</tbody>"
        f"<tfoot><tr><td colspan='4'>Totals ({len(statement.lines)} lines)</td>"
        f"<td class='money'>{_grouped(statement.total_debits, currency)}</td>"
        f"<td class='money'>{_grouped(statement.total_credits, currency)}</td>"
        f"<td></td></tr></tfoot></table>{warning}{pending}"
        f"<p class='footer'>Generated {utc_time_text(generated_at_ns)} UTC by Tally from the "
        "ledger's journal. Amounts in "
        f"{escape(currency)}.</p></body></html>\n"
    )


def _html_line(line: StatementLine, currency: str) -> str:
    escape = html.escape
    debit = _grouped(line.debit, currency) if line.debit else ""
    credit = _grouped(line.credit, currency) if line.credit else ""
    return (
        f"<tr class='line'><td>{escape(utc_time_text(line.timestamp_ns)[:19])}</td>"
        f"<td>{line.value_date.isoformat()}</td><td>{escape(line.transaction_id)}</td>"
        f"<td>{escape(line.description)}</td><td class='money'>{debit}</td>"
        f"<td class='money'>{credit}</td>"
        f"<td class='money'>{_grouped(line.balance, currency)}</td></tr>"
    )


def _html_balance_row(label: str, balance: int, currency: str) -> str:
    return (
        f"<tr class='balance'><td colspan='6'>{label}</td>"
        f"<td class='money'>{_grouped(balance, currency)}</td></tr>"
    )


def statement_text(statement: Statement) -> str:
    """For the terminal."""
    currency = statement.account.currency
    lines = [
        f"statement {statement.account.id} ({currency}) {utc_time_text(statement.from_ns)} .. "
        f"{utc_time_text(statement.to_ns)} UTC",
        f"{'booked':<20} {'value date':<10} {'reference':<24} {'debit':>14} {'credit':>14} "
        f"{'balance':>14}",
        f"{'':<20} {'':<10} {'opening balance':<24} {'':>14} {'':>14} "
        f"{_grouped(statement.opening_balance, currency):>14}",
    ]
    for line in statement.lines:
        debit = _grouped(line.debit, currency) if line.debit else ""
        credit = _grouped(line.credit, currency) if line.credit else ""
        lines.append(
            f"{utc_time_text(line.timestamp_ns)[:19]:<20} {line.value_date.isoformat():<10} "
            f"{line.transaction_id:<24} {debit:>14} {credit:>14} "
            f"{_grouped(line.balance, currency):>14}"
        )
    lines.append(
        f"{'':<20} {'':<10} {'closing balance':<24} "
        f"{_grouped(statement.total_debits, currency):>14} "
        f"{_grouped(statement.total_credits, currency):>14} "
        f"{_grouped(statement.closing_balance, currency):>14}"
    )
    if not statement.consistent:
        lines.append("WARNING: the lines do not add up to the closing balance; run tally audit")
    return "\n".join(lines)
