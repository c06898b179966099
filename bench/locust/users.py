"""The Locust scenarios: one User class and one tag each.

- LoanProductsUser (tag loans): disbursement from @funding/USD, scheduled repayment, fee, card
  hold placed and later posted (in full or in part) or voided, a declined overdraft.
- CustomerTransfersUser (transfers): customer-to-customer transfers; --tally-cross-share of
  them between customers on different shards.
- HotAccountUser (hot): every transfer debits one internal account (@cash, a spread account).
- EndOfDayInterestUser (eod): interest accrual over every loan account in bulk batches; the run
  ends when the last batch is answered (time to finish).
- RetailDayUser (mixed): a retail bank's day: mostly reads, single-shard postings, a few
  transfers and declined purchases.

Every transaction id is unique per run (idempotency is permanent): run id, scenario, a token of
this process, the user's number and a sequence. Options are Locust command line arguments
(`--tally-...`, also as TALLY_BENCH_... environment variables), added by bench/locust/locustfile.py.
Every call goes over TLS and presents the client credentials of `--tally-ca`, `--tally-cert`,
`--tally-key`, `--tally-token` (by default tally up's admin identity).
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import gevent
from locust import User, constant, tag, task
from locust.exception import StopUser
from locust.runners import LocalRunner

from bench.common.credentials import ClientCredentials
from bench.common.workload import home_named
from bench.locust import population
from bench.locust.grpc_client import LedgerClient, Tallies, leg, open_channel
from tally.v1 import ledger_pb2 as pb

CUR: Final = population.CURRENCY
HOLD_TIMEOUT_S: Final = 3600
OPEN_HOLDS_MAX: Final = 8  # per user; the oldest is resolved when more are open
DECLINED: Final = frozenset({"INSUFFICIENT_FUNDS"})
DEFAULT_TARGET: Final = "127.0.0.1:7400"


@dataclass(frozen=True, slots=True)
class Options:
    """The `--tally-...` arguments (defaults when run without Locust's parser, e.g. in tests)."""

    population: int = 100_000
    shards: int = 2
    cross_share: float = 0.1
    transfers_per_call: int = 1
    eod_batch_size: int = 2000
    eod_workers: int = 1
    run_id: str = ""
    results_file: str = ""
    # Client credentials (paths; bench/common/credentials.py): --tally-ca with --tally-cert
    # and --tally-key, or --tally-token; none: tally up's admin identity (TALLY_DATA_DIR/tls).
    ca: str = ""
    cert: str = ""
    key: str = ""
    token: str = ""

    def credentials(self) -> ClientCredentials:
        return ClientCredentials.of(self.ca, self.cert, self.key, self.token)

    @staticmethod
    def of(parsed: Any) -> Options:
        defaults = Options()
        values = {
            name: getattr(parsed, "tally_" + name, getattr(defaults, name))
            for name in Options.__dataclass_fields__
        }
        return Options(**values)


class Bank:
    """What the users of one Locust process share: options, channel, tallies, placement."""

    _instance: Bank | None = None
    _lock = threading.Lock()

    def __init__(self, environment: Any) -> None:
        self.environment = environment
        self.options = Options.of(environment.parsed_options)
        self.target = environment.host or os.environ.get("TALLY_TARGET", DEFAULT_TARGET)
        self.tallies = tallies_of(environment)
        self.placement = population.Placement.of(self.options.population, self.options.shards)
        self.run_id = self.options.run_id or format(time.time_ns() // 1_000_000, "x")
        self.token = secrets.token_hex(3)  # this process: workers never share an id
        self.user_numbers = itertools.count()
        self.channel = open_channel(self.target, self.options.credentials().security())
        self.eod = EodWork.of(self.options, environment)

    @classmethod
    def of(cls, environment: Any) -> Bank:
        with cls._lock:
            if cls._instance is None or cls._instance.environment is not environment:
                cls._instance = Bank(environment)
            return cls._instance

    def client(self) -> LedgerClient:
        return LedgerClient(self.channel, self.environment.events.request.fire, self.tallies)


def tallies_of(environment: Any) -> Tallies:
    tallies = getattr(environment, "tally_tallies", None)
    if tallies is None:
        tallies = Tallies()
        environment.tally_tallies = tallies
    return tallies


class TallyUser(User):
    abstract = True
    wait_time = constant(0)  # closed loop: the next call right after the answer
    scenario = ""

    def on_start(self) -> None:
        self.bank = Bank.of(self.environment)
        self.ledger = self.bank.client()
        number = next(self.bank.user_numbers)
        self.random = random.Random()
        self._prefix = f"{self.bank.run_id}.{self.scenario}.{self.bank.token}.{number}."
        self._sequence = itertools.count(1)
        self.population = self.bank.options.population

    def new_id(self, *named: str) -> str:
        """A fresh id under the partition key of the first non-spread account (or hold id)
        it names: recorded on the shard of its legs."""
        return home_named(self._prefix + str(next(self._sequence)), *named)

    def customer(self) -> int:
        return self.random.randrange(self.population)

    def amount(self, maximum: int = population.TRANSFER_AMOUNT_MAX_CENTS) -> int:
        return self.random.randint(1, maximum)

    def transfer(self, debit_id: str, credit_id: str, amount: int, **fields: Any) -> Any:
        legs = [leg(debit_id, True, amount, CUR), leg(credit_id, False, amount, CUR)]
        return pb.Transaction(id=self.new_id(debit_id, credit_id), code=1, legs=legs, **fields)


class LoanProductsUser(TallyUser):
    """A loan product's back office: disbursements, repayments, fees and card holds."""

    scenario = "loans"

    def on_start(self) -> None:
        super().on_start()
        self.open_holds: collections.deque[tuple[str, int, int]] = collections.deque()

    @tag("loans")
    @task(2)
    def disburse(self) -> None:
        number, amount = self.customer(), self.amount(100_000)
        legs = [
            leg(population.FUNDING_ACCOUNT_ID, True, amount, CUR),
            leg(population.deposit_id(number), False, amount, CUR),
            leg(population.loan_id(number), True, amount, CUR),
            leg(population.LOAN_BOOK_ACCOUNT_ID, False, amount, CUR),
        ]
        meta = {"product": "seasonal-loan"}
        tid = self.new_id(population.deposit_id(number))
        self.ledger.post([pb.Transaction(id=tid, code=10, legs=legs, metadata=meta)])

    @tag("loans")
    @task(4)
    def repay(self) -> None:
        number, amount = self.customer(), self.amount(20_000)
        legs = [
            leg(population.deposit_id(number), True, amount, CUR),
            leg(population.FUNDING_ACCOUNT_ID, False, amount, CUR),
            leg(population.LOAN_BOOK_ACCOUNT_ID, True, amount, CUR),
            leg(population.loan_id(number), False, amount, CUR),
        ]
        tid = self.new_id(population.deposit_id(number))
        self.ledger.post([pb.Transaction(id=tid, code=11, legs=legs)])

    @tag("loans")
    @task(2)
    def charge_fee(self) -> None:
        number = self.customer()
        fee = self.transfer(population.deposit_id(number), population.FEES_ACCOUNT_ID, 500)
        self.ledger.post([fee])

    @tag("loans")
    @task(3)
    def place_hold(self) -> None:
        number, amount = self.customer(), self.amount()
        hold = self.transfer(
            population.deposit_id(number),
            population.HOLDS_ACCOUNT_ID,
            amount,
            pending=True,
            timeout_seconds=HOLD_TIMEOUT_S,
        )
        if self.ledger.post([hold]) == ["CREATED"]:
            self.open_holds.append((hold.id, number, amount))
        if len(self.open_holds) > OPEN_HOLDS_MAX:
            self.resolve_hold()

    @tag("loans")
    @task(3)
    def resolve_hold(self) -> None:
        """Post the oldest open hold in full, in part, or void it."""
        if not self.open_holds:
            self.place_hold()
            return
        hold_id, number, amount = self.open_holds.popleft()
        choice = self.random.random()
        if choice < 0.5:
            item = pb.Transaction(id=self.new_id(hold_id), code=3, post_pending_id=hold_id)
        elif choice < 0.75:
            part = max(1, amount // 2)
            legs = [
                leg(population.deposit_id(number), True, part, CUR),
                leg(population.HOLDS_ACCOUNT_ID, False, part, CUR),
            ]
            item = pb.Transaction(
                id=self.new_id(hold_id), code=3, post_pending_id=hold_id, legs=legs
            )
        else:
            item = pb.Transaction(id=self.new_id(hold_id), code=4, void_pending_id=hold_id)
        self.ledger.post([item])

    @tag("loans")
    @task(1)
    def declined_overdraft(self) -> None:
        """A repayment far above what the deposit holds: declined, by design."""
        number = self.customer()
        attempt = self.transfer(
            population.deposit_id(number),
            population.loan_id(number),
            population.OVERDRAFT_ATTEMPT_CENTS,
        )
        self.ledger.post([attempt], expected=DECLINED)


class CustomerTransfersUser(TallyUser):
    """Customer-to-customer payments; --tally-cross-share of them cross shards (atomic 2PC)."""

    scenario = "transfers"

    @tag("transfers")
    @task
    def pay(self) -> None:
        options = self.bank.options
        items = []
        for _ in range(options.transfers_per_call):
            payer, payee = self.bank.placement.pair(self.random, options.cross_share)
            items.append(
                self.transfer(
                    population.deposit_id(payer), population.deposit_id(payee), self.amount()
                )
            )
        self.ledger.post(items)


class HotAccountUser(TallyUser):
    """Every transfer debits one internal account (@cash, a spread account): the shape that
    collapses a row-locking ledger."""

    scenario = "hot"

    @tag("hot")
    @task
    def pay_out(self) -> None:
        items = [
            self.transfer(
                population.HOT_ACCOUNT_ID, population.deposit_id(self.customer()), self.amount()
            )
            for _ in range(self.bank.options.transfers_per_call)
        ]
        self.ledger.post(items)


class EodWork:
    """The end-of-day accrual of one process: its slice of the loan accounts, handed out in
    batches to its users; the last batch answered ends the run (time to finish)."""

    def __init__(self, numbers: Iterator[int], batch_size: int, environment: Any) -> None:
        self._numbers = numbers
        self._batch_size = batch_size
        self._environment = environment
        self._lock = threading.Lock()
        self.in_flight = 0
        self.started_s = 0.0
        self.finished = False

    @staticmethod
    def of(options: Options, environment: Any) -> EodWork:
        runner = getattr(environment, "runner", None)
        index = getattr(runner, "worker_index", 0) % max(1, options.eod_workers)
        numbers = iter(range(index, options.population, max(1, options.eod_workers)))
        return EodWork(numbers, options.eod_batch_size, environment)

    def take(self) -> list[int]:
        with self._lock:
            batch = list(itertools.islice(self._numbers, self._batch_size))
            if batch:
                self.in_flight += 1
                if not self.started_s:
                    self.started_s = time.time()
            return batch

    def done(self, tallies: Tallies, items: int) -> bool:
        """One batch answered; True when it was the last one."""
        with self._lock:
            self.in_flight -= 1
            tallies.eod_progress(items, self.started_s, time.time())
            last = self.in_flight == 0 and _exhausted(self._numbers)
            if last and not self.finished:
                self.finished = True
                return True
            return False


def _exhausted(numbers: Iterator[int]) -> bool:
    # A range iterator knows its length; no item is consumed.
    return numbers.__length_hint__() == 0  # type: ignore[attr-defined]


class EndOfDayInterestUser(TallyUser):
    """Interest accrual on every loan account (debit the loan, credit @interest/USD) in bulk
    batches; the run ends when the last batch is answered. Ids are `eod.<run>.<customer>`:
    unique per run, and a retried batch replays instead of accruing twice."""

    scenario = "eod"

    @tag("eod")
    @task
    def accrue(self) -> None:
        work = self.bank.eod
        batch = work.take()
        if not batch:
            raise StopUser()
        items = [
            self.transfer(
                population.loan_id(number),
                population.INTEREST_ACCOUNT_ID,
                population.accrual_amount_cents(number),
            )
            for number in batch
        ]
        for number, item in zip(batch, items, strict=True):
            item.id = f"{population.customer_key(number)}/eod.{self.bank.run_id}"
            item.code = 20
        self.ledger.post(items)
        if work.done(self.bank.tallies, len(items)):
            runner = self.environment.runner
            if isinstance(runner, LocalRunner):
                gevent.spawn_later(0.1, runner.quit)  # this process's accrual is complete
            raise StopUser()


class RetailDayUser(TallyUser):
    """A retail bank's day: customers check balances and history far more often than they
    pay; card purchases and loan repayments are single-shard, a few payments go to other
    customers (--tally-cross-share of those cross shards), a few purchases are declined."""

    scenario = "mixed"

    @tag("mixed")
    @task(40)
    def check_balance(self) -> None:
        number = self.customer()
        self.ledger.get_accounts([population.deposit_id(number), population.loan_id(number)])

    @tag("mixed")
    @task(15)
    def history(self) -> None:
        self.ledger.list_postings(population.deposit_id(self.customer()), 20)

    @tag("mixed")
    @task(5)
    def balance_yesterday(self) -> None:
        at_ns = time.time_ns() - 86_400 * 10**9
        self.ledger.balance_at(population.deposit_id(self.customer()), at_ns)

    @tag("mixed")
    @task(5)
    def look_up_transaction(self) -> None:
        self.ledger.get_transactions([population.opening_transaction_id(self.customer())])

    @tag("mixed")
    @task(18)
    def card_purchase(self) -> None:
        deposit = population.deposit_id(self.customer())
        self.ledger.post([self.transfer(deposit, population.SETTLEMENT_ACCOUNT_ID, self.amount())])

    @tag("mixed")
    @task(5)
    def loan_repayment(self) -> None:
        number = self.customer()
        repayment = self.transfer(
            population.deposit_id(number), population.loan_id(number), self.amount(20_000)
        )
        self.ledger.post([repayment])

    @tag("mixed")
    @task(9)
    def pay_someone(self) -> None:
        payer, payee = self.bank.placement.pair(self.random, self.bank.options.cross_share)
        payment = self.transfer(
            population.deposit_id(payer), population.deposit_id(payee), self.amount()
        )
        self.ledger.post([payment])

    @tag("mixed")
    @task(3)
    def declined_purchase(self) -> None:
        deposit = population.deposit_id(self.customer())
        attempt = self.transfer(
            deposit, population.SETTLEMENT_ACCOUNT_ID, population.OVERDRAFT_ATTEMPT_CENTS
        )
        self.ledger.post([attempt], expected=DECLINED)


SCENARIOS: Final[dict[str, type[TallyUser]]] = {
    user_class.scenario: user_class
    for user_class in (
        LoanProductsUser,
        CustomerTransfersUser,
        HotAccountUser,
        EndOfDayInterestUser,
        RetailDayUser,
    )
}
if {k: v.__name__ for k, v in SCENARIOS.items()} != population.SCENARIO_CLASSES:
    raise AssertionError("locust_population.SCENARIO_CLASSES does not name these classes")
