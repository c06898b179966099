"""Fast bulk loader of the Locust scenarios' bank:
`python -m bench.locust.loader --target HOST:PORT`.

Creates the internal (spread) accounts, then every customer's deposit and loan account in large
CreateAccounts batches, then one opening transaction per customer (the deposit funded from
@funding/USD, a loan outstanding against @loans/USD), with a few calls in flight so the shards'
writers always have the next batch waiting. A progress bar (rich's) shows items per second.

Idempotent: account creates and the opening transactions (ids `open.<customer>`) replay on a
cluster that already holds the population, so loading twice never funds anyone twice.

Over TLS, presenting --ca with --cert/--key or --token (TALLY_CA, ...; default: tally up's admin
identity), as the `tally` commands do.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TextIO

import grpc
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from bench.common.credentials import add_client_flags, parse_client_credentials
from bench.common.tally_client import MESSAGE_SIZE_OPTIONS
from bench.locust import population
from shards.security.credentials import ClientSecurity, aio_channel
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc

ACCOUNT_BATCH_SIZE: Final = 8000  # accounts per CreateAccounts call (limit: 8,190 items)
OPENING_BATCH_SIZE: Final = 4000  # opening transactions per call (4 legs each)
IN_FLIGHT_MAX: Final = 4
CALL_TIMEOUT_S: Final = 120.0
RETRY_COUNT_MAX: Final = 10
RETRY_PAUSE_S: Final = 0.2
RETRYABLE: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
ACCEPTED: Final = frozenset({"CREATED", "REPLAYED"})
_NAMES: Final = {
    number: name.removeprefix("RESULT_CODE_") for name, number in pb.ResultCode.items()
}


class ItemRateColumn(ProgressColumn):
    """Items per second over rich's recent window (a byte-rate column would say B/s)."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0.0:,.0f} items/s", style="progress.data.speed")


def progress_bar(stream: TextIO) -> Progress:
    """rich's progress bar on stream: redrawn in place on a terminal; written once, in its final
    state, when the stream is a file (a log stays readable)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TextColumn("items"),
        ItemRateColumn(),
        TimeElapsedColumn(),
        console=Console(file=stream),
    )


def internal_accounts() -> list[pb.Account]:
    return [
        pb.Account(id=account_id, currency=population.CURRENCY, code=population.INTERNAL_CODE)
        for account_id in population.INTERNAL_ACCOUNT_IDS
    ]


def customer_accounts(numbers: Sequence[int]) -> list[pb.Account]:
    accounts = []
    for number in numbers:
        accounts.append(
            pb.Account(
                id=population.deposit_id(number),
                currency=population.CURRENCY,
                code=population.DEPOSIT_CODE,
                debits_must_not_exceed_credits=True,
            )
        )
        accounts.append(
            pb.Account(
                id=population.loan_id(number),
                currency=population.CURRENCY,
                code=population.LOAN_CODE,
            )
        )
    return accounts


def _leg(account_id: str, side: int, amount_cents: int) -> pb.Leg:
    return pb.Leg(
        account_id=account_id, side=side, amount=amount_cents, currency=population.CURRENCY
    )


def opening_transaction(number: int) -> pb.Transaction:
    deposit, loan = population.OPENING_DEPOSIT_CENTS, population.OPENING_LOAN_CENTS
    legs = [
        _leg(population.FUNDING_ACCOUNT_ID, pb.SIDE_DEBIT, deposit),
        _leg(population.deposit_id(number), pb.SIDE_CREDIT, deposit),
        _leg(population.loan_id(number), pb.SIDE_DEBIT, loan),
        _leg(population.LOAN_BOOK_ACCOUNT_ID, pb.SIDE_CREDIT, loan),
    ]
    return pb.Transaction(id=population.opening_transaction_id(number), code=1, legs=legs)


class Loader:
    def __init__(self, target: str, security: ClientSecurity) -> None:
        self._channel = aio_channel(target, security, MESSAGE_SIZE_OPTIONS)
        self._stub = pb_grpc.LedgerStub(self._channel)
        self.codes: Counter[str] = Counter()

    async def close(self) -> None:
        await self._channel.close(grace=5.0)

    async def create_accounts(self, accounts: list[pb.Account]) -> None:
        await self._call("CreateAccounts", pb.CreateAccountsRequest(accounts=accounts))

    async def post(self, transactions: list[pb.Transaction]) -> None:
        await self._call("PostTransactions", pb.PostTransactionsRequest(transactions=transactions))

    async def _call(self, method: str, request: Any) -> None:
        """One batch, retried whole on a retryable status (creates and the opening
        transactions replay) until every item is CREATED or REPLAYED."""
        for attempt in range(RETRY_COUNT_MAX + 1):
            try:
                response = await getattr(self._stub, method)(request, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE or attempt == RETRY_COUNT_MAX:
                    raise
                await asyncio.sleep(RETRY_PAUSE_S * (attempt + 1))
                continue
            codes = Counter(_NAMES.get(r.code, str(r.code)) for r in response.results)
            retry = codes.get("UNAVAILABLE") or codes.get("OUTCOME_UNKNOWN")
            if retry and attempt < RETRY_COUNT_MAX:
                await asyncio.sleep(RETRY_PAUSE_S * (attempt + 1))
                continue
            self.codes.update(codes)
            refused = set(codes) - ACCEPTED
            if refused:
                raise RuntimeError(f"loading: {method} answered {dict(codes)}")
            return
        raise AssertionError("unreachable")


async def _batches(
    step: Callable[[Sequence[int]], Awaitable[int]], numbers: Sequence[int], size: int
) -> None:
    semaphore = asyncio.Semaphore(IN_FLIGHT_MAX)

    async def one(part: Sequence[int]) -> None:
        async with semaphore:
            await step(part)

    async with asyncio.TaskGroup() as group:
        for start in range(0, len(numbers), size):
            group.create_task(one(numbers[start : start + size]))


async def load(
    target: str, population_size: int, security: ClientSecurity, stream: TextIO = sys.stderr
) -> dict[str, Any]:
    """Load the population; returns what was done (items, seconds, result codes)."""
    loader = Loader(target, security)
    numbers = range(population_size)
    internal_count = len(population.INTERNAL_ACCOUNT_IDS)
    items_done = 0
    started = time.monotonic()
    with progress_bar(stream) as progress:
        bar = progress.add_task("load", total=3 * population_size + internal_count)

        def advance(item_count: int) -> int:
            nonlocal items_done
            items_done += item_count
            progress.advance(bar, item_count)
            return item_count

        async def accounts(part: Sequence[int]) -> int:
            await loader.create_accounts(customer_accounts(part))
            return advance(2 * len(part))

        async def openings(part: Sequence[int]) -> int:
            await loader.post([opening_transaction(n) for n in part])
            return advance(len(part))

        try:
            await loader.create_accounts(internal_accounts())
            advance(internal_count)
            await _batches(accounts, numbers, ACCOUNT_BATCH_SIZE // 2)
            await _batches(openings, numbers, OPENING_BATCH_SIZE)
        finally:
            await loader.close()
    seconds = time.monotonic() - started
    return {
        "customers": population_size,
        "accounts": 2 * population_size + internal_count,
        "opening_transactions": population_size,
        "seconds": round(seconds, 2),
        "items_per_s": round(items_done / max(1e-6, seconds)),
        "results": dict(loader.codes),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.locust.loader", description=__doc__)
    parser.add_argument("--target", default="127.0.0.1:7400", help="gateway or node HOST:PORT")
    parser.add_argument("--population", type=int, default=100_000, help="customers")
    add_client_flags(parser)
    args = parser.parse_args(argv)
    security = parse_client_credentials(parser, args).security()
    import uvloop

    summary = uvloop.run(load(args.target, args.population, security))
    print(f"loaded {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
