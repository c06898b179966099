"""Terminal commands for people: accounts, postings, history, over gRPC to a node or gateway.

Amounts are typed and shown in major units ("1500.00 USD") and converted exactly (core.money,
integers only) to the currency's minor units on the wire.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence
from typing import Any

import grpc

from core.money import AmountTextError, format_minor_units, parse_minor_units
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc

RPC_TIMEOUT_S = 30.0


class UsageError(Exception):
    pass


def add_commands(commands: Any, default_target: str) -> None:
    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
        sub.add_argument("--target", default=default_target, help="node or gateway host:port")
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
                    amount=parse_minor_units(amount, args.currency),
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
        with grpc.insecure_channel(args.target) as channel:
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
        code=args.code,
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
        print(
            f"  posted   debits {_shown(balance.debits_posted, cur):>16}"
            f"  credits {_shown(balance.credits_posted, cur):>16}"
        )
        print(
            f"  pending  debits {_shown(balance.debits_pending, cur):>16}"
            f"  credits {_shown(balance.credits_pending, cur):>16}"
        )
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
        code=args.code,
        metadata=_metadata(args.meta),
        value_date=args.value_date,
        pending=args.pending,
        timeout_seconds=args.timeout,
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
        for leg in record.applied_legs:
            side = "debit " if leg.side == pb.SIDE_DEBIT else "credit"
            amount = _shown(leg.amount, leg.currency)
            print(f"  {side} {leg.account_id:<32} {amount:>16} {leg.currency}")
        for label, value in (
            ("resolved by", record.resolved_by_id),
            ("reversed by", record.reversed_by_id),
        ):
            if value:
                print(f"  {label} {value}")
    return ok


def _history(stub: pb_grpc.LedgerStub, args: argparse.Namespace) -> bool:
    account = stub.GetAccounts(pb.GetAccountsRequest(ids=[args.id]), timeout=RPC_TIMEOUT_S)
    if account.results[0].code != pb.RESULT_CODE_OK:
        print(f"{args.id}: {account.results[0].message}")
        return False
    currency = account.results[0].account.account.currency
    response = stub.ListPostings(
        pb.ListPostingsRequest(account_id=args.id, limit=args.limit), timeout=RPC_TIMEOUT_S
    )
    print(
        f"{'time':<30} {'transaction':<24} {'debit':>14} {'credit':>14} "
        f"{'pending':>14} {'balance':>14}"
    )
    for posting in response.postings:
        debit = posting.posted_amount if posting.side == pb.SIDE_DEBIT else 0
        credit = posting.posted_amount if posting.side == pb.SIDE_CREDIT else 0
        after = posting.balance_after
        pending = after.debits_pending + after.credits_pending
        balance = after.credits_posted - after.debits_posted
        print(
            f"{_format_time(posting.timestamp_ns):<30} {posting.transaction_id:<24} "
            f"{_shown(debit, currency) if debit else '':>14} "
            f"{_shown(credit, currency) if credit else '':>14} "
            f"{_shown(pending, currency):>14} "
            f"{_shown(balance, currency):>14}"
        )
    if response.next_cursor:
        print(f"(more: use a larger --limit; next cursor {response.next_cursor})")
    return True
