"""A worked loan book for a small-business lender, on tally.client.

Run it against `make up` (in another terminal):

    .venv/bin/python examples/loan_book.py                      # 127.0.0.1:7400, .tally/tls
    .venv/bin/python examples/loan_book.py --target HOST:PORT --credentials DIR

It opens a chart of accounts, lends to three small businesses, and walks a month:

- **Chart of accounts.** Per borrower (the borrower's id is the partition key, so all of a
  borrower's accounts live on one shard): a deposit account (`BIZ/deposit`, a liability that
  may not go below zero), and per loan the principal, interest and fee receivables
  (`BIZ/loan-1/principal`, `.../interest`, `.../fees`, assets that may not go below zero).
  Bank-wide (spread accounts, on every shard): `@settlement` (money in and out of the bank),
  `@income/interest`, `@income/fees` and `@provision` (the loss provision a write-off uses).
- **Disbursement**: principal receivable debited, the borrower's deposit credited.
- **Daily interest accrual** for the whole book as one end-of-day bulk run: one transaction per
  loan (`BIZ/accrual-LOAN-DATE`), all posted in one call. Its ids make the run idempotent: a
  rerun of the same day (a crashed batch job restarted) replays and accrues nothing twice.
- **Repayments** allocated fees -> interest -> principal, as a linked group (all or nothing),
  from the borrower's deposit.
- **A late fee and its waiver** (a reversal of the fee).
- **A write-off** of what one borrower still owes, against the provision.
- **The borrower's statement**: its accounts' postings with the balance after each.

Amounts are integers in minor units (cents); rates in basis points a year, interest rounded
down to the cent each day.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
from dataclasses import dataclass
from pathlib import Path

from tally.client import (
    Account,
    AsyncClient,
    Credentials,
    Outcome,
    Result,
    from_minor,
    reversal,
    to_minor,
    transfer,
)

CURRENCY = "USD"
SETTLEMENT, INTEREST_INCOME, FEE_INCOME, PROVISION = (
    "@settlement",
    "@income/interest",
    "@income/fees",
    "@provision",
)
# Transaction codes: the bank's own types.
DISBURSEMENT, ACCRUAL, REPAYMENT, LATE_FEE, WRITE_OFF, SALES = 1, 2, 3, 4, 5, 6
LATE_FEE_AMOUNT = to_minor("25.00", CURRENCY)


@dataclass(frozen=True)
class Loan:
    borrower: str
    number: int
    principal: int  # minor units
    rate_bp: int  # basis points a year

    def account(self, part: str) -> str:
        return f"{self.borrower}/loan-{self.number}/{part}"

    @property
    def deposit(self) -> str:
        return f"{self.borrower}/deposit"


BOOK = (
    Loan("biz-bakery", 1, to_minor("12000.00", CURRENCY), 1800),
    Loan("biz-farm", 1, to_minor("30000.00", CURRENCY), 1500),
    Loan("biz-tailor", 1, to_minor("5000.00", CURRENCY), 2400),
)


def chart_of_accounts(book: tuple[Loan, ...]) -> list[Account]:
    house = [Account(a, CURRENCY) for a in (SETTLEMENT, INTEREST_INCOME, FEE_INCOME, PROVISION)]
    borrowers = sorted({loan.borrower for loan in book})
    deposits = [
        Account(f"{b}/deposit", CURRENCY, debits_must_not_exceed_credits=True) for b in borrowers
    ]
    receivables = [
        Account(loan.account(part), CURRENCY, credits_must_not_exceed_debits=True)
        for loan in book
        for part in ("principal", "interest", "fees")
    ]
    return house + deposits + receivables


def _check(results: list[Result], what: str) -> None:
    """The example stops on anything but applied: a product would alert, queue or retry."""
    for result in results:
        if result.outcome is not Outcome.APPLIED:
            raise RuntimeError(
                f"{what}: {result.id} {result.outcome.value} ({result.code}) {result.message}"
            )


async def open_book(tally: AsyncClient, book: tuple[Loan, ...]) -> None:
    _check(await tally.create_accounts(chart_of_accounts(book)), "open accounts")
    disbursements = [
        transfer(
            f"{loan.borrower}/disburse-{loan.number}",
            loan.account("principal"),
            loan.deposit,
            loan.principal,
            CURRENCY,
            DISBURSEMENT,
            value_date="2026-01-01",
        )
        for loan in book
    ]
    _check(await tally.post_many(disbursements), "disburse")


async def _owed(tally: AsyncClient, loan: Loan, part: str) -> int:
    state = await tally.get_account(loan.account(part))
    if state is None:
        raise RuntimeError(f"no account {loan.account(part)}")
    return state.balance.debits_posted - state.balance.credits_posted


async def accrue_interest(tally: AsyncClient, book: tuple[Loan, ...], day: datetime.date) -> int:
    """The end-of-day run: a day's interest on each loan's outstanding principal, the whole book
    in one call. Returns how many accruals were applied now (replays count 0)."""
    accruals = []
    for loan in book:
        outstanding = await _owed(tally, loan, "principal")
        interest = outstanding * loan.rate_bp // (10_000 * 365)
        if interest > 0:
            accruals.append(
                transfer(
                    f"{loan.borrower}/accrual-{loan.number}-{day.isoformat()}",
                    loan.account("interest"),
                    INTEREST_INCOME,
                    interest,
                    CURRENCY,
                    ACCRUAL,
                    value_date=day.isoformat(),
                )
            )
    results = await tally.post_many(accruals)
    _check(results, f"accrual {day}")
    return sum(1 for r in results if not r.replayed)


async def repay(
    tally: AsyncClient, loan: Loan, name: str, amount: int, day: datetime.date
) -> dict[str, int]:
    """Take amount from the borrower's deposit, allocated fees -> interest -> principal, as one
    linked group. Returns the allocation."""
    allocation: dict[str, int] = {}
    left = amount
    for part in ("fees", "interest", "principal"):
        share = min(left, await _owed(tally, loan, part))
        if share > 0:
            allocation[part] = share
            left -= share
    group = [
        transfer(
            f"{loan.borrower}/{name}-{part}",
            loan.deposit,
            loan.account(part),
            share,
            CURRENCY,
            REPAYMENT,
            value_date=day.isoformat(),
        )
        for part, share in allocation.items()
    ]
    _check(await tally.post_linked(group), f"repayment {name}")
    return allocation


async def write_off(tally: AsyncClient, loan: Loan) -> int:
    """Everything still owed on the loan, against the provision, as one linked group."""
    group = []
    for part in ("fees", "interest", "principal"):
        owed = await _owed(tally, loan, part)
        if owed > 0:
            group.append(
                transfer(
                    f"{loan.borrower}/write-off-{part}",
                    PROVISION,
                    loan.account(part),
                    owed,
                    CURRENCY,
                    WRITE_OFF,
                )
            )
    _check(await tally.post_linked(group), "write-off")
    return sum(t.legs[0].amount for t in group)


async def statement(tally: AsyncClient, borrower: str, book: tuple[Loan, ...]) -> list[str]:
    """The borrower's accounts, each posting with the balance after it."""
    lines = [f"Statement of {borrower}"]
    accounts = [f"{borrower}/deposit"] + [
        loan.account(part)
        for loan in book
        if loan.borrower == borrower
        for part in ("principal", "interest", "fees")
    ]
    for account_id in accounts:
        # The deposit is the bank's liability (credit-normal), receivables its assets.
        sign = 1 if account_id.endswith("/deposit") else -1
        lines.append(f"  {account_id}")
        async for p in tally.postings(account_id):
            moved = p.posted_amount if p.side.name == "CREDIT" else -p.posted_amount
            after = p.balance_after.credits_posted - p.balance_after.debits_posted
            amount, balance = from_minor(sign * moved, CURRENCY), from_minor(sign * after, CURRENCY)
            lines.append(f"    {p.transaction_id:<42} {amount:>12}  balance {balance:>12}")
    return lines


async def run_book(tally: AsyncClient, days: int = 30) -> dict[str, int]:
    """The whole month; returns the figures a test checks."""
    await open_book(tally, BOOK)
    bakery, farm, tailor = BOOK
    # The businesses' sales come into their deposits.
    sales = [
        transfer(
            f"{loan.borrower}/sales-1",
            SETTLEMENT,
            loan.deposit,
            to_minor("2000.00", CURRENCY),
            CURRENCY,
            SALES,
        )
        for loan in BOOK
    ]
    _check(await tally.post_many(sales), "sales")
    start = datetime.date(2026, 1, 1)
    accrued_now = 0
    for offset in range(days):
        accrued_now += await accrue_interest(tally, BOOK, start + datetime.timedelta(days=offset))
    # The batch job is restarted for the last day: nothing accrues twice.
    replay_applied = await accrue_interest(tally, BOOK, start + datetime.timedelta(days=days - 1))
    month_end = start + datetime.timedelta(days=days)
    # Both the bakery and the farm pay late: a fee each. The bakery's is waived after a call
    # (a reversal of the fee); the farm's stays and its repayment pays it first.
    fees = [
        transfer(
            f"{loan.borrower}/late-fee-1",
            loan.account("fees"),
            FEE_INCOME,
            LATE_FEE_AMOUNT,
            CURRENCY,
            LATE_FEE,
        )
        for loan in (bakery, farm)
    ]
    _check(await tally.post_many(fees), "late fees")
    waiver = reversal(f"{bakery.borrower}/late-fee-1-waived", fees[0].id)
    _check([await tally.post(waiver)], "waiver")
    bakery_paid = await repay(tally, bakery, "repay-1", to_minor("1000.00", CURRENCY), month_end)
    farm_paid = await repay(tally, farm, "repay-1", to_minor("1500.00", CURRENCY), month_end)
    # The tailor's business failed: what it owes is written off.
    written_off = await write_off(tally, tailor)
    for line in await statement(tally, bakery.borrower, BOOK):
        print(line)
    return {
        "accruals_applied": accrued_now,
        "accruals_applied_on_rerun": replay_applied,
        **{f"bakery_{part}_paid": amount for part, amount in bakery_paid.items()},
        **{f"farm_{part}_paid": amount for part, amount in farm_paid.items()},
        "tailor_written_off": written_off,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="A worked loan book on tally.client.")
    parser.add_argument("--target", default="127.0.0.1:7400")
    parser.add_argument(
        "--credentials", type=Path, default=Path(".tally/tls"), help="tally up's DATA_DIR/tls"
    )
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()

    async def run() -> None:
        async with AsyncClient(args.target, Credentials.from_directory(args.credentials)) as tally:
            print(await run_book(tally, args.days))

    asyncio.run(run())


if __name__ == "__main__":
    main()
