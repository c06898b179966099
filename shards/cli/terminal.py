"""Terminal commands for people: accounts, postings, history, over gRPC to a node or gateway.

Amounts are typed and shown in major units ("1500.00 USD") and converted exactly (core.money,
integers only) to the currency's minor units on the wire. Tables are laid out by rich, in the
plain one-space-between-columns layout of the README's example (tests/shards/cli/test_readme.py
runs it): no box, no colour unless stdout is a terminal, never wrapped.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Iterable, Sequence
from typing import Any, Final, TextIO

import grpc
from rich.console import Console
from rich.padding import Padding
from rich.table import Column, Table

from core.money import AmountTextError, format_minor_units, parse_minor_units
from shards.security import flags as security_flags
from shards.security.credentials import SecurityConfigError
from shards.security.credentials import channel as secure_channel
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc

RPC_TIMEOUT_S = 30.0
# Wider than any row, so rich never wraps or crops one: a long row goes out whole and the
# terminal wraps it, as when rows were printed by hand.
_CONSOLE_WIDTH: Final = 10_000
# (top, right, bottom, left): one space after each column, none after the last.
_COLUMN_GAP: Final = (0, 1, 0, 0)
_INDENT: Final = (0, 0, 0, 2)
# The widest integers the API's fields carry (ledger.proto's uint32 and uint64): protobuf raises
# a bare ValueError on anything outside 0..max, so the terminal refuses such values first.
_UINT32_MAX: Final = 2**32 - 1
_UINT64_MAX: Final = 2**64 - 1


class UsageError(Exception):
    pass


def add_commands(commands: Any, default_target: str) -> None:
    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
        sub.add_argument("--target", default=default_target, help="node or gateway host:port")
        security_flags.add_client_flags(sub)
        return sub

    create = command("create-account", "create an account")
    create.add_argument("id")
    create.add_argument("--currency", required=True)
    create.add_argument("--code", type=int, required=True, help="account type, 1..65535")
    create.add_argument(
        "--no-overdraft",
        action="store_true",
        help="debits must not exceed credits (a deposit account)",
    )
    create.add_argument(
        "--credit-limit", action="store_true", help="credits must not exceed debits"
    )
    create.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")

    show = command("show", "show accounts with their balances")
    show.add_argument("ids", nargs="+")

    close = command("close", "close an account (zero balance, no holds)")
    close.add_argument("id")

    post = command("post", "post a transaction")
    post.add_argument("id", help="transaction id: the idempotency key")
    post.add_argument("--currency", required=True)
    post.add_argument("--code", type=int, required=True, help="transaction type, 1..65535")
    post.add_argument("--debit", action="append", default=[], metavar="ACCOUNT=AMOUNT")
    post.add_argument("--credit", action="append", default=[], metavar="ACCOUNT=AMOUNT")
    post.add_argument("--pending", action="store_true", help="place a hold")
    post.add_argument("--timeout", type=int, default=0, help="hold expiry, seconds")
    post.add_argument("--post-pending", default="", metavar="HOLD_ID")
    post.add_argument("--void-pending", default="", metavar="HOLD_ID")
    post.add_argument("--reverse", default="", metavar="TRANSACTION_ID")
    post.add_argument("--value-date", default="")
    post.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")

    tx = command("tx", "show transactions")
    tx.add_argument("ids", nargs="+")

    history = command("history", "an account's postings with the balance after each")
    history.add_argument("id")
    history.add_argument("--limit", type=int, default=100)


def _metadata(pairs: Sequence[str]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--meta {pair!r} must be KEY=VALUE")
        metadata[key] = value
    return metadata


def _uint32_flag(flag: str, value: int) -> int:
    """A flag's integer if its API field (a uint32) can carry it. Only that is checked here: a
    value the field carries but the ledger refuses (a code of 0) gets the ledger's own result."""
    if value < 0:
        raise UsageError(f"{flag} {value} is negative")
    if value > _UINT32_MAX:
        raise UsageError(f"{flag} {value} is larger than {_UINT32_MAX}")
    return value


def _leg_amount(text: str, currency: str) -> int:
    """A leg's amount in minor units: positive, as the side (--debit, --credit) says which way
    the money moves; zero and amounts above the ledger's maximum get the ledger's result."""
    amount_minor = parse_minor_units(text, currency)
    if amount_minor < 0:
        raise UsageError(
            f"amount {text.strip()} is negative: a leg's amount is positive, "
            "--debit or --credit says which way it moves"
        )
    if amount_minor > _UINT64_MAX:
        raise UsageError(f"amount {text.strip()} is larger than {_UINT64_MAX} minor units")
    return amount_minor


def _legs(args: argparse.Namespace) -> list[pb.Leg]:
    legs = []
    for side, entries in ((pb.SIDE_DEBIT, args.debit), (pb.SIDE_CREDIT, args.credit)):
        for entry in entries:
            account, sep, amount = entry.rpartition("=")
            if not sep:
                raise UsageError(f"{entry!r} must be ACCOUNT=AMOUNT")
            legs.append(
                pb.Leg(
                    account_id=account,
                    side=side,
                    amount=_leg_amount(amount, args.currency),
                    currency=args.currency,
                )
            )
    return legs


def run(args: argparse.Namespace) -> int:
    handlers = {
        "create-account": _create_account,
        "show": _show,
        "close": _close,
        "post": _post,
        "tx": _tx,
        "history": _history,
    }
    try:
        security = security_flags.client_security(args)
    except SecurityConfigError as error:
        print(f"tally: {error}", file=sys.stderr)
        return 2
    try:
        with secure_channel(args.target, security) as channel:
            stub = pb_grpc.LedgerStub(channel)
            ok: bool = handlers[args.command](stub, args)
            return 0 if ok else 1
    except (UsageError, AmountTextError) as error:
        print(f"tally: {error}", file=sys.stderr)
        return 2
    except grpc.RpcError as error:
        print(f"tally: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1


def _print_result(what: str, result: pb.ItemResult) -> bool:
    name = pb.ResultCode.Name(result.code).removeprefix("RESULT_CODE_").lower()
    when = _format_time(result.timestamp_ns) if result.timestamp_ns else ""
    detail = f": {result.message}" if result.message else ""
    print(f"{what}: {name}{detail}" + (f" at {when}" if when else ""))
    return result.code in (pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED)


def _shown(amount_minor: int, currency: str) -> str:
    """An amount as the terminal shows it: grouped, '1,500.00'."""
    return format_minor_units(amount_minor, currency, grouped=True)


def _format_time(timestamp_ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp_ns / 1e9, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def _create_account(stub: pb_grpc.LedgerStub, args: argparse.Namespace) -> bool:
    account = pb.Account(
        id=args.id,
        currency=args.currency,
        code=_uint32_flag("--code", args.code),
        debits_must_not_exceed_credits=args.no_overdraft,
        credits_must_not_exceed_debits=args.credit_limit,
        metadata=_metadata(args.meta),
    )
    response = stub.CreateAccounts(
        pb.CreateAccountsRequest(accounts=[account]), timeout=RPC_TIMEOUT_S
    )
    return _print_result(f"account {args.id}", response.results[0])


def _show(stub: pb_grpc.LedgerStub, args: argparse.Namespace) -> bool:
    response = stub.GetAccounts(pb.GetAccountsRequest(ids=args.ids), timeout=RPC_TIMEOUT_S)
    ok = True
    for account_id, lookup in zip(args.ids, response.results, strict=True):
        if lookup.code != pb.RESULT_CODE_OK:
            print(f"{account_id}: {lookup.message}")
            ok = False
            continue
        record = lookup.account
        cur = record.account.currency
        balance = record.balance
        state = "closed" if record.closed else "open"
        print(f"{account_id}  {cur}  code {record.account.code}  {state}  version {record.version}")
        print_table(balance_table(balance, cur), indented=True)
        print(f"  available {_shown(balance.available, cur)} {cur}")
    return ok


def _close(stub: pb_grpc.LedgerStub, args: argparse.Namespace) -> bool:
    response = stub.CloseAccounts(
        pb.CloseAccountsRequest(accounts=[pb.CloseAccount(account_id=args.id)]),
        timeout=RPC_TIMEOUT_S,
    )
    return _print_result(f"close {args.id}", response.results[0])


def _post(stub: pb_grpc.LedgerStub, args: argparse.Namespace) -> bool:
    transaction = pb.Transaction(
        id=args.id,
        legs=_legs(args),
        code=_uint32_flag("--code", args.code),
        metadata=_metadata(args.meta),
        value_date=args.value_date,
        pending=args.pending,
        timeout_seconds=_uint32_flag("--timeout", args.timeout),
        post_pending_id=args.post_pending,
        void_pending_id=args.void_pending,
        reverses_id=args.reverse,
    )
    response = stub.PostTransactions(
        pb.PostTransactionsRequest(transactions=[transaction]), timeout=RPC_TIMEOUT_S
    )
    return _print_result(f"transaction {args.id}", response.results[0])


def _tx(stub: pb_grpc.LedgerStub, args: argparse.Namespace) -> bool:
    response = stub.GetTransactions(pb.GetTransactionsRequest(ids=args.ids), timeout=RPC_TIMEOUT_S)
    ok = True
    for transaction_id, lookup in zip(args.ids, response.results, strict=True):
        if lookup.code != pb.RESULT_CODE_OK:
            print(f"{transaction_id}: {lookup.message}")
            ok = False
            continue
        record = lookup.transaction
        status = pb.TransactionStatus.Name(record.status).removeprefix("TRANSACTION_STATUS_")
        print(f"{transaction_id}  {status.lower()}  at {_format_time(record.timestamp_ns)}")
        print_table(legs_table(record.applied_legs), indented=True)
        for label, value in (
            ("resolved by", record.resolved_by_id),
            ("reversed by", record.reversed_by_id),
        ):
            if value:
                print(f"  {label} {value}")
    return ok


def _history(stub: pb_grpc.LedgerStub, args: argparse.Namespace) -> bool:
    limit = _uint32_flag("--limit", args.limit)
    account = stub.GetAccounts(pb.GetAccountsRequest(ids=[args.id]), timeout=RPC_TIMEOUT_S)
    if account.results[0].code != pb.RESULT_CODE_OK:
        print(f"{args.id}: {account.results[0].message}")
        return False
    currency = account.results[0].account.account.currency
    response = stub.ListPostings(
        pb.ListPostingsRequest(account_id=args.id, limit=limit), timeout=RPC_TIMEOUT_S
    )
    print_table(history_table(response.postings, currency))
    if response.next_cursor:
        print(f"(more: use a larger --limit; next cursor {response.next_cursor})")
    return True


# ---- tables ----
# The minimum column widths are the README example's layout; a longer cell widens its column
# for every row instead of pushing the rest of its own row out of line.


def console(stream: TextIO | None = None) -> Console:
    """Writes to stdout (at call time, so redirections apply). Cells are ids and amounts, never
    rich markup, emoji codes or anything to highlight; colour (bold headers) only on a
    terminal, whatever FORCE_COLOR says, so piped output is plain text."""
    out = sys.stdout if stream is None else stream
    return Console(
        file=out,
        width=_CONSOLE_WIDTH,
        color_system="auto" if out.isatty() else None,
        markup=False,
        emoji=False,
        highlight=False,
    )


def print_table(table: Table, *, indented: bool = False, stream: TextIO | None = None) -> None:
    console(stream).print(Padding(table, _INDENT, expand=False) if indented else table)


def _grid(*columns: Column) -> Table:
    return Table.grid(*columns, padding=_COLUMN_GAP, pad_edge=False)


def balance_table(balance: pb.Balance, currency: str) -> Table:
    """Posted and pending debits and credits of an account (`tally show`)."""
    table = _grid(
        Column(min_width=len("pending") + 1),
        Column(),
        Column(justify="right", min_width=16),
        # Right-justified one wider than its word: two spaces before "credits".
        Column(justify="right", min_width=len("credits") + 1),
        Column(justify="right", min_width=16),
    )
    for label, debits, credits in (
        ("posted", balance.debits_posted, balance.credits_posted),
        ("pending", balance.debits_pending, balance.credits_pending),
    ):
        table.add_row(
            label, "debits", _shown(debits, currency), "credits", _shown(credits, currency)
        )
    return table


def legs_table(legs: Iterable[pb.Leg]) -> Table:
    """A transaction's legs: side, account, amount, currency (`tally tx`)."""
    table = _grid(
        Column(min_width=len("credit")),
        Column(min_width=32),
        Column(justify="right", min_width=16),
        Column(),
    )
    for leg in legs:
        side = "debit" if leg.side == pb.SIDE_DEBIT else "credit"
        table.add_row(side, leg.account_id, _shown(leg.amount, leg.currency), leg.currency)
    return table


def history_table(postings: Iterable[pb.Posting], currency: str) -> Table:
    """An account's postings with the balance after each (`tally history`)."""
    table = Table(
        Column("time", min_width=len(_format_time(0))),
        Column("transaction", min_width=24),
        *(
            Column(name, justify="right", min_width=14)
            for name in ("debit", "credit", "pending", "balance")
        ),
        box=None,
        padding=_COLUMN_GAP,
        pad_edge=False,
        show_edge=False,
    )
    for posting in postings:
        debit = posting.posted_amount if posting.side == pb.SIDE_DEBIT else 0
        credit = posting.posted_amount if posting.side == pb.SIDE_CREDIT else 0
        after = posting.balance_after
        table.add_row(
            _format_time(posting.timestamp_ns),
            posting.transaction_id,
            _shown(debit, currency) if debit else "",
            _shown(credit, currency) if credit else "",
            _shown(after.debits_pending + after.credits_pending, currency),
            _shown(after.credits_posted - after.debits_posted, currency),
        )
    return table
