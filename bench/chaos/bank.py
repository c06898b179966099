"""Bank-style clients and the history they keep: what the campaign (and tests/test_bank.py)
run against a cluster, and what the checker judges afterwards.

The bank: `customer_count` customers, each with a deposit and a savings account
(`cust-N/dep`, `cust-N/sav`, debits_must_not_exceed_credits), in USD or EUR by parity, each
funded from the spread account `@cash/<CURRENCY>`. Every id is named under a partition key,
`<partition>/<name>`: an account's partition is its customer, a transaction's is that of its
debit account (the payer), as a client library names them (one of its accounts' partitions:
what a home shard derived from the id needs, and harmless before that).

A client, seeded, does one operation at a time: a transfer (most across shards, some above the
balance: refused), a hold then its post in full or in part, its void, or its expiry (some
posted after the deadline: refused as expired), a linked group of transfers (all or nothing),
or a reversal of one of its applied transfers. Each request is retried with the same ids and
the same content, through the next gateway each time, on any gRPC error or retryable result,
until a definitive answer or its give-up time. Everything sent and every answer goes to the
History.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc

from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc

CURRENCIES = ("USD", "EUR")
FUNDING = 10_000
RPC_TIMEOUT_S = 10.0
PAUSE_FIRST_S = 0.05
PAUSE_MAX_S = 0.5
LINKED_SIZE_MAX = 3
OPENING_CHUNK = 1000
OPENING_TIMEOUT_S = 120.0
CROSS_SHARE = 0.7  # of transfers between two customers: the payee on another shard
CREATED = pb.RESULT_CODE_CREATED
REPLAYED = pb.RESULT_CODE_REPLAYED
APPLIED = frozenset({CREATED, REPLAYED})
# Nothing applied yet, or not known yet: either way a retry with the same id tells.
RETRYABLE = frozenset(
    {pb.RESULT_CODE_UNAVAILABLE, pb.RESULT_CODE_ABORTED, pb.RESULT_CODE_OUTCOME_UNKNOWN}
)
# Operation kinds and their weights (a read: one of the client's applied transactions by id).
OPERATIONS = (("transfer", 35), ("hold", 30), ("linked", 15), ("reversal", 10), ("read", 10))
# gRPC statuses no request may ever meet (docs/design.md: no client input produces them).
FORBIDDEN_STATUSES = frozenset({"UNKNOWN", "INTERNAL"})
SETTLES = (("post", 30), ("post_part", 25), ("void", 25), ("expire", 20))


def code_name(code: int) -> str:
    return str(pb.ResultCode.Name(code)).removeprefix("RESULT_CODE_")


@dataclass(frozen=True)
class Bank:
    customer_count: int = 200
    funding: int = FUNDING

    def currency_of(self, customer: int) -> str:
        return CURRENCIES[customer % len(CURRENCIES)]

    def accounts_of(self, customer: int) -> tuple[str, str]:
        return f"cust-{customer}/dep", f"cust-{customer}/sav"

    def customer_accounts(self) -> list[tuple[str, str]]:
        """(account id, currency) of every customer account."""
        return [
            (a, self.currency_of(c))
            for c in range(self.customer_count)
            for a in self.accounts_of(c)
        ]

    def funded_per_currency(self) -> int:
        return self.customer_count * 2 // len(CURRENCIES) * self.funding


def cash_of(currency: str) -> str:
    return f"@cash/{currency}"


def leg(account_id: str, side: int, amount: int, currency: str) -> pb.Leg:
    return pb.Leg(account_id=account_id, side=side, amount=amount, currency=currency)


def transfer(
    transaction_id: str, debit: str, credit: str, amount: int, currency: str, **fields: object
) -> pb.Transaction:
    return pb.Transaction(
        id=transaction_id,
        legs=[
            leg(debit, pb.SIDE_DEBIT, amount, currency),
            leg(credit, pb.SIDE_CREDIT, amount, currency),
        ],
        code=1,
        **fields,
    )


def partition_of(identifier: str) -> str:
    return identifier.split("/", 1)[0]


@dataclass
class Item:
    """One transaction sent, and what its client was told."""

    message: pb.Transaction
    kind: str  # transfer, linked, hold, post, post_part, void, expire_post, reversal, funding
    cross_shard: bool
    client: int
    group: str = ""  # a linked group: its first item's id
    target: str = ""  # a post, void or reversal: what it names
    result: pb.ItemResult | None = None
    attempt_count: int = 0
    errors: list[str] = field(default_factory=list)
    sent_at: float = 0.0  # time.monotonic() of the first attempt
    answered_at: float = 0.0

    @property
    def transaction_id(self) -> str:
        return str(self.message.id)

    @property
    def applied(self) -> bool:
        return self.result is not None and self.result.code in APPLIED

    @property
    def refused(self) -> bool:
        """A definitive answer that nothing was applied."""
        return self.result is not None and self.result.code not in APPLIED

    @property
    def unknown(self) -> bool:
        """No definitive answer (its client gave up): applied once or not at all."""
        return self.result is None


@dataclass(frozen=True)
class Sample:
    """One request's latency, for the report's plot."""

    started_at: float  # seconds since the campaign's start
    latency_s: float
    kind: str
    outcome: str  # the definitive code, or GAVE_UP


@dataclass(frozen=True)
class Read:
    """A read by id during the load, and what came back (a result code or a gRPC status)."""

    transaction_id: str
    answer: str
    started_at: float  # seconds since the campaign's start
    latency_s: float
    detail: str = ""  # a gRPC error's details (which shard failed, and how)


@dataclass
class History:
    """Every item sent and its answer, in the order sent; latency samples."""

    bank: Bank
    started_at: float = field(default_factory=time.monotonic)
    items: dict[str, Item] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)

    def add(self, item: Item) -> None:
        if item.transaction_id in self.items:
            raise ValueError(f"{item.transaction_id} sent twice as new")
        self.items[item.transaction_id] = item

    def of_kind(self, *kinds: str) -> list[Item]:
        return [i for i in self.items.values() if i.kind in kinds]


class Gateways:
    """Stubs over every gateway; each attempt goes to the next (so retries move between
    gateways, as a client behind a load balancer's would)."""

    def __init__(self, stubs: Sequence[pb_grpc.LedgerStub]) -> None:
        if not stubs:
            raise ValueError("at least one gateway")
        self.stubs = list(stubs)
        self._next = 0

    @classmethod
    def of(cls, channels: Sequence[grpc.aio.Channel]) -> Gateways:
        return cls([pb_grpc.LedgerStub(c) for c in channels])

    def next(self) -> pb_grpc.LedgerStub:
        self._next = (self._next + 1) % len(self.stubs)
        return self.stubs[self._next]


@dataclass(frozen=True)
class Workload:
    hold_timeout_s: int = 1
    operations: tuple[tuple[str, int], ...] = OPERATIONS
    settles: tuple[tuple[str, int], ...] = SETTLES
    overdraft_share: float = 0.1


async def send_until_definitive(
    gateways: Gateways, items: Sequence[Item], history: History, give_up_at: Callable[[], float]
) -> None:
    """One request with these items, sent again with the same ids and content on any error
    or retryable answer, until every item has a definitive answer or give_up_at() passes."""
    request = pb.PostTransactionsRequest(transactions=[i.message for i in items])
    started = time.monotonic()
    for item in items:
        item.sent_at = started
    pause_s = PAUSE_FIRST_S
    while True:
        for item in items:
            item.attempt_count += 1
        try:
            response = await gateways.next().PostTransactions(request, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            for item in items:
                item.errors.append(error.code().name)
        else:
            codes = [r.code for r in response.results]
            if not RETRYABLE.intersection(codes):
                now = time.monotonic()
                for item, result in zip(items, response.results, strict=True):
                    item.result, item.answered_at = result, now
                _sample(history, items[0], started, now, code_name(codes[0]))
                return
            for item, code in zip(items, codes, strict=True):
                item.errors.append(code_name(code))
        if time.monotonic() > give_up_at():
            _sample(history, items[0], started, time.monotonic(), "GAVE_UP")
            return
        await asyncio.sleep(pause_s)
        pause_s = min(pause_s * 2, PAUSE_MAX_S)


def _sample(history: History, item: Item, started: float, now: float, outcome: str) -> None:
    history.samples.append(Sample(started - history.started_at, now - started, item.kind, outcome))


def _choose(rng: random.Random, weighted: Sequence[tuple[str, int]]) -> str:
    names = [n for n, _ in weighted]
    return rng.choices(names, weights=[w for _, w in weighted])[0]


class BankClient:
    """One seeded client of the bank: one operation at a time until stopped."""

    def __init__(
        self,
        number: int,
        seed: int,
        gateways: Gateways,
        history: History,
        shard_of: Callable[[str], int],
        workload: Workload | None = None,
    ) -> None:
        self.number = number
        self.gateways = gateways
        self.history = history
        self.bank = history.bank
        self.shard_of = shard_of
        self.workload = workload or Workload()
        self.rng = random.Random(f"{seed}/{number}")
        self.sequence = 0
        self.reversible: list[Item] = []  # its applied transfers not yet reversed

    def _next_id(self, partition: str, tag: str) -> str:
        self.sequence += 1
        return f"{partition}/c{self.number}-{tag}{self.sequence}"

    def _pair(self, payer: int | None = None) -> tuple[str, str, str, bool]:
        """A payer's account, a payee's, their currency and whether they are on two shards:
        mostly two customers (CROSS_SHARE of them on two shards), else a customer's own two."""
        bank, rng = self.bank, self.rng
        if payer is None:
            payer = rng.randrange(bank.customer_count)
        currency = bank.currency_of(payer)
        if rng.random() < 0.15:
            debit, credit = bank.accounts_of(payer)
            if rng.random() < 0.5:
                debit, credit = credit, debit
            return debit, credit, currency, False
        debit = rng.choice(bank.accounts_of(payer))
        want_cross = rng.random() < CROSS_SHARE
        credit = debit
        for _ in range(32):  # a payee of the same currency, on another shard or on the same
            payee = rng.randrange(payer % 2, bank.customer_count, 2)
            credit = rng.choice(bank.accounts_of(payee))
            if payee != payer and (self.shard_of(debit) != self.shard_of(credit)) == want_cross:
                break
        return debit, credit, currency, self.shard_of(debit) != self.shard_of(credit)

    def _amount(self) -> int:
        if self.rng.random() < self.workload.overdraft_share:
            return self.rng.randint(self.bank.funding, 3 * self.bank.funding)  # likely refused
        return self.rng.randint(1, self.bank.funding // 5)

    async def run(self, stop: asyncio.Event, give_up_at: Callable[[], float]) -> None:
        while not stop.is_set():
            operation = _choose(self.rng, self.workload.operations)
            if operation == "reversal" and self.reversible:
                await self.reversal(give_up_at)
            elif operation == "read" and self.reversible:
                await self.read()
            elif operation == "hold":
                await self.hold_and_settle(give_up_at)
            elif operation == "linked":
                await self.linked(give_up_at)
            else:
                await self.transfer(give_up_at)

    async def _send(self, items: Sequence[Item], give_up_at: Callable[[], float]) -> None:
        for item in items:
            self.history.add(item)
        await send_until_definitive(self.gateways, items, self.history, give_up_at)

    async def transfer(self, give_up_at: Callable[[], float]) -> Item:
        debit, credit, currency, cross = self._pair()
        message = transfer(
            self._next_id(partition_of(debit), "t"), debit, credit, self._amount(), currency
        )
        item = Item(message, "transfer", cross, self.number)
        await self._send([item], give_up_at)
        if item.applied:
            self.reversible.append(item)
        return item

    async def linked(self, give_up_at: Callable[[], float]) -> None:
        """2 to LINKED_SIZE_MAX transfers of one payer, all or nothing (linked: each but the
        last). One payer: a group's ids share one partition key (the payer's), which the
        gateway requires (one shard records the group) and which is one of each item's."""
        count = self.rng.randint(2, LINKED_SIZE_MAX)
        payer = self.rng.randrange(self.bank.customer_count)
        items: list[Item] = []
        for index in range(count):
            debit, credit, currency, cross = self._pair(payer)  # debit: one of the payer's
            message = transfer(
                self._next_id(partition_of(debit), "l"),
                debit, credit, self._amount(), currency, linked=index < count - 1,
            )  # fmt: skip
            group = items[0].transaction_id if items else message.id
            items.append(Item(message, "linked", cross, self.number, group=group))
        await self._send(items, give_up_at)

    async def read(self) -> None:
        """One of its applied transfers by id, once, through the next gateway: any answer
        but a forbidden status will do (a read during a fault may well fail, retryably)."""
        target = self.rng.choice(self.reversible).transaction_id
        request = pb.GetTransactionsRequest(ids=[target])
        started = time.monotonic()
        detail = ""
        try:
            response = await self.gateways.next().GetTransactions(request, timeout=RPC_TIMEOUT_S)
            answer = code_name(response.results[0].code)
        except grpc.aio.AioRpcError as error:
            answer, detail = error.code().name, error.details() or ""
            await asyncio.sleep(PAUSE_FIRST_S)
        now = time.monotonic()
        self.history.reads.append(
            Read(target, answer, started - self.history.started_at, now - started, detail[:200])
        )

    async def reversal(self, give_up_at: Callable[[], float]) -> None:
        target = self.reversible.pop(self.rng.randrange(len(self.reversible)))
        partition = partition_of(target.transaction_id)
        message = pb.Transaction(
            id=self._next_id(partition, "r"), code=2, reverses_id=target.transaction_id
        )
        item = Item(message, "reversal", target.cross_shard, self.number, target=target.message.id)
        await self._send([item], give_up_at)

    async def hold_and_settle(self, give_up_at: Callable[[], float]) -> None:
        """A hold (with a deadline, or none), then after a moment its post in full or in part,
        its void, or nothing until its deadline has passed (then, sometimes, a post: refused
        as expired)."""
        debit, credit, currency, cross = self._pair()
        settle = _choose(self.rng, self.workload.settles)
        timeout_s = self.workload.hold_timeout_s if settle == "expire" else 0
        if settle != "expire" and self.rng.random() < 0.3:
            timeout_s = 60  # a deadline that does not pass before it is settled
        message = transfer(
            self._next_id(partition_of(debit), "h"), debit, credit, self._amount(), currency,
            pending=True, timeout_seconds=timeout_s,
        )  # fmt: skip
        hold = Item(message, "hold", cross, self.number)
        await self._send([hold], give_up_at)
        if not hold.applied:
            return
        if settle == "expire":
            await asyncio.sleep(timeout_s + 0.5)
            if self.rng.random() < 0.5:
                return  # left to expire
        else:
            await asyncio.sleep(self.rng.choice((0.0, 0.05, 0.3)))
        await self._send([self._settle(hold, settle)], give_up_at)

    def _settle(self, hold: Item, settle: str) -> Item:
        partition = partition_of(hold.transaction_id)
        message = pb.Transaction(id=self._next_id(partition, "s"), code=1)
        kind = settle
        if settle == "void":
            message.void_pending_id = hold.transaction_id
        else:
            message.post_pending_id = hold.transaction_id
        if settle == "expire":
            kind = "expire_post"
        if settle == "post_part":
            debit, credit = hold.message.legs
            part = max(1, debit.amount // 2)
            message.legs.extend(
                [
                    leg(debit.account_id, debit.side, part, debit.currency),
                    leg(credit.account_id, credit.side, part, credit.currency),
                ]
            )
        return Item(message, kind, hold.cross_shard, self.number, target=hold.transaction_id)


def funding_items(bank: Bank) -> list[Item]:
    """Each customer account's opening transfer from @cash."""
    return [
        Item(transfer(f"{a}/fund", cash_of(c), a, bank.funding, c), "funding", False, -1)
        for a, c in bank.customer_accounts()
    ]


async def open_bank(stub: pb_grpc.LedgerStub, history: History) -> None:
    """@cash/<CURRENCY> and the customer accounts, each funded from it (recorded in the
    history); raises if any of it is refused."""
    bank = history.bank
    cash = [pb.Account(id=cash_of(c), currency=c, code=100) for c in CURRENCIES]
    customers = [
        pb.Account(id=a, currency=c, code=100, debits_must_not_exceed_credits=True)
        for a, c in bank.customer_accounts()
    ]
    for accounts in (cash, customers):
        response = await stub.CreateAccounts(
            pb.CreateAccountsRequest(accounts=accounts), timeout=60
        )
        refused = [r.message for r in response.results if r.code != CREATED]
        if refused:
            raise RuntimeError(f"opening the bank: {refused[:5]}")
    items = funding_items(bank)
    for item in items:
        history.add(item)
    give_up_at = time.monotonic() + OPENING_TIMEOUT_S
    for start in range(0, len(items), OPENING_CHUNK):
        chunk = items[start : start + OPENING_CHUNK]
        await send_until_definitive(Gateways([stub]), chunk, history, lambda: give_up_at)
        refused = [i.transaction_id for i in chunk if not i.applied]
        if refused:
            raise RuntimeError(f"funding refused: {refused[:5]}")
