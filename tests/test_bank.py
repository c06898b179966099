"""The bank test: money is neither created nor destroyed, whatever the clients and crashes do.

A 4-shard cluster of real processes (four `tally node`, one `tally gateway`). 500 customers
(250 in USD, 250 in EUR) each hold a deposit and a savings account, both with
debits_must_not_exceed_credits, funded from @cash: 1,000 customer accounts spread over the
shards by their partition key. 50 concurrent clients then move money at random for LOAD_S
seconds (and on until 1,000 transfers were sent): between two customers of the same currency
(mostly across shards) and between a customer's own two accounts (single-shard), amounts
sometimes above the balance (refused). In
the middle, one node and then the gateway are killed with SIGKILL and restarted. Every client
retries a transfer with the same id and the same content on any error until it has a
definitive answer. About one operation in seven is a hold instead (mostly across shards, some
expiring after a second), then settled: posted in full, posted in part, or voided, possibly
after it expired.

Afterwards, per currency: the customers' total is what was funded and @cash still owes exactly
that; every account's balance is what the definitive answers say; no account went negative;
the clearing pieces net to zero; no hold remains; every transfer is wholly applied or wholly
absent on every shard, and every hold's fate is the one its client was told; retries return
the recorded outcomes; every shard audits clean, and so does the cluster audit.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from core import audit
from core.audit import AuditConfig
from core.ids import (
    abort_marker_id,
    clearing_account,
    is_piece_id,
    is_reserved,
    parse_abort_marker,
    parse_piece_id,
    piece_id,
)
from core.journal import FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS
from core.model import Kind, Status
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc
from tests.support import security
from tests.support.cluster_processes import (
    ProcessCluster,
    fetch_each_shard,
    process_cluster,
    trial_balance,
    wait_gateway_reaches_every_shard,
    wait_nothing_pending,
)
from tests.support.helpers import Client, account, audit_problems, name, transfer

CUSTOMER_COUNT = 500
CURRENCIES = ("USD", "EUR")
FUNDING = 10_000
CLIENT_COUNT = 50
LOAD_S = 10.0
# The load goes on past LOAD_S until this many transfers were sent (so the checks below always
# have enough to judge, on a slow machine too), for at most LOAD_MAX_S.
TRANSFER_COUNT_MIN = 1_000
LOAD_MAX_S = 60.0
NODE_KILL_AT_S = 3.0
GATEWAY_KILL_AT_S = 6.5
KILLED_SHARD = 1
DEADLINE_S = 5
RPC_TIMEOUT_S = 10.0
# After the load stops, every client must have its definitive answers within this.
SETTLE_TIMEOUT_S = 40.0
READ_CHUNK = 1000
RETRY_SAMPLE_COUNT = 300
# The share of operations that are a hold then its post or void.
HOLD_SHARE = 0.15

CREATED = pb.RESULT_CODE_CREATED
REPLAYED = pb.RESULT_CODE_REPLAYED
APPLIED = (CREATED, REPLAYED)
REFUSED = pb.RESULT_CODE_INSUFFICIENT_FUNDS
UNAVAILABLE = pb.RESULT_CODE_UNAVAILABLE
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def currency_of(customer: int) -> str:
    return CURRENCIES[customer % len(CURRENCIES)]


def accounts_of(customer: int) -> tuple[str, str]:
    return f"bank-{customer}/dep", f"bank-{customer}/sav"


def customer_accounts() -> list[tuple[str, str]]:
    """(account id, currency) of every customer account."""
    return [(a, currency_of(c)) for c in range(CUSTOMER_COUNT) for a in accounts_of(c)]


def retryable(result: pb.ItemResult) -> bool:
    """UNAVAILABLE, or ABORTED (a cross-shard attempt whose participants' deadline passed):
    nothing was applied, retry with the same id."""
    return result.code in (UNAVAILABLE, pb.RESULT_CODE_ABORTED)


@dataclass
class Outcome:
    message: pb.Transaction
    cross_shard: bool
    result: pb.ItemResult | None = None  # the definitive answer
    attempt_count: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def applied(self) -> bool:
        return self.result is not None and self.result.code in APPLIED


@dataclass
class HoldFlow:
    """A hold and what its client did with it: a post (in full or in part) or a void."""

    hold: Outcome
    settle: Outcome | None = None

    def posted(self) -> int:
        """What moved: the post's amount if the post was applied."""
        if self.settle is None or not self.settle.applied:
            return 0
        message = self.settle.message
        if not message.post_pending_id:
            return 0
        return (message.legs[0] if message.legs else self.hold.message.legs[0]).amount


@dataclass
class Ledger:
    """Client-side truth: every transfer and hold sent and its definitive answer."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    holds: dict[str, HoldFlow] = field(default_factory=dict)

    def expected_balances(self) -> dict[str, int]:
        balances = dict.fromkeys((a for a, _ in customer_accounts()), FUNDING)
        for outcome in self.outcomes.values():
            if outcome.applied:
                debit, credit = outcome.message.legs
                balances[debit.account_id] -= debit.amount
                balances[credit.account_id] += credit.amount
        for flow in self.holds.values():
            debit, credit = flow.hold.message.legs
            balances[debit.account_id] -= flow.posted()
            balances[credit.account_id] += flow.posted()
        return balances


class BankClient:
    def __init__(
        self, number: int, stub: pb_grpc.LedgerStub, cluster: ProcessCluster, ledger: Ledger
    ) -> None:
        self.number = number
        self.stub = stub
        self.cluster = cluster
        self.ledger = ledger
        self.random = random.Random(number)
        self.sequence = 0

    def next_transfer(self) -> tuple[pb.Transaction, bool]:
        self.sequence += 1
        transaction_id = f"b{self.number}-{self.sequence}"
        amount = self.random.randint(1, 3_000)
        if self.random.random() < 0.1:
            amount = self.random.randint(FUNDING, 3 * FUNDING)  # likely above the balance
        payer = self.random.randrange(CUSTOMER_COUNT)
        if self.random.random() < 0.2:  # between the customer's own accounts: one shard
            debit, credit = accounts_of(payer)
            if self.random.random() < 0.5:
                debit, credit = credit, debit
        else:
            payee = self.random.randrange(len(CURRENCIES), CUSTOMER_COUNT, len(CURRENCIES))
            payee = (payee + payer) % CUSTOMER_COUNT  # another customer, same currency
            debit = self.random.choice(accounts_of(payer))
            credit = self.random.choice(accounts_of(payee))
        # Named under the payer's partition key, as a client library names them: recorded
        # with the debit leg (core.slots).
        key = debit.split("/", 1)[0]
        transaction_id = f"{key}/{transaction_id}"
        message = transfer(transaction_id, debit, credit, amount, currency=currency_of(payer))
        cross = self.cluster.shard_of(debit) != self.cluster.shard_of(credit)
        return message, cross

    async def run(self, stop: asyncio.Event, give_up_at: list[float]) -> None:
        while not stop.is_set():
            message, cross = self.next_transfer()
            if self.random.random() < HOLD_SHARE:
                await self.hold_and_settle(message, cross, give_up_at)
                continue
            outcome = Outcome(message, cross)
            self.ledger.outcomes[message.id] = outcome
            await self.until_definitive(outcome, give_up_at)

    async def hold_and_settle(
        self, message: pb.Transaction, cross: bool, give_up_at: list[float]
    ) -> None:
        """The transfer as a hold (some expiring in a second), then, after a moment, its
        post in full, in part, or its void, each retried until definitive."""
        hold = pb.Transaction()
        hold.CopyFrom(message)
        key, name_ = message.id.split("/", 1)
        hold.id = f"{key}/h{name_}"
        hold.pending = True
        short = self.random.random() < 0.25
        hold.timeout_seconds = 1 if short else 0
        flow = HoldFlow(Outcome(hold, cross))
        self.ledger.holds[hold.id] = flow
        await self.until_definitive(flow.hold, give_up_at)
        if not flow.hold.applied:
            return
        await asyncio.sleep(self.random.choice((0.0, 0.1, 1.2 if short else 0.3)))
        settle = pb.Transaction(id=f"{key}/s{name_}", code=1)
        choice = self.random.random()
        debit, credit = hold.legs
        if choice < 0.4:
            settle.post_pending_id = hold.id
        elif choice < 0.7:
            settle.post_pending_id = hold.id
            part = max(1, debit.amount // 2)
            settle.legs.extend(
                [
                    pb.Leg(
                        account_id=debit.account_id,
                        side=debit.side,
                        amount=part,
                        currency=debit.currency,
                    ),
                    pb.Leg(
                        account_id=credit.account_id,
                        side=credit.side,
                        amount=part,
                        currency=credit.currency,
                    ),
                ]
            )
        else:
            settle.void_pending_id = hold.id
        flow.settle = Outcome(settle, cross)
        await self.until_definitive(flow.settle, give_up_at)

    async def until_definitive(self, outcome: Outcome, give_up_at: list[float]) -> None:
        """The same id and content again, on any error, until a definitive answer."""
        request = pb.PostTransactionsRequest(transactions=[outcome.message])
        pause_s = 0.05
        while True:
            outcome.attempt_count += 1
            try:
                response = await self.stub.PostTransactions(request, timeout=RPC_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                outcome.errors.append(error.code().name)
            else:
                (result,) = response.results
                if not retryable(result):
                    outcome.result = result
                    return
                outcome.errors.append(name(result.code))
            if time.monotonic() > give_up_at[0]:
                return
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, 0.5)


# ---- set-up and chaos ----


async def open_bank(client: Client) -> None:
    """@cash/<CURRENCY> (spread accounts) and the customer accounts, each funded from it."""
    assert await client.create(*(account(cash_of(c), currency=c) for c in CURRENCIES)) == [
        CREATED
    ] * len(CURRENCIES)
    customers = [account(a, currency=c, no_overdraft=True) for a, c in customer_accounts()]
    assert set(await client.create(*customers)) == {CREATED}
    funding = [
        transfer(f"{a}/fund", cash_of(c), a, FUNDING, currency=c) for a, c in customer_accounts()
    ]
    assert set(await client.codes(*funding)) == {CREATED}


def cash_of(currency: str) -> str:
    return f"@cash/{currency}"


async def chaos(cluster: ProcessCluster, started: float, log: list[str]) -> None:
    """kill -9 a node (restarted at once), later the gateway (likewise)."""
    await asyncio.sleep(max(0.0, started + NODE_KILL_AT_S - time.monotonic()))
    await cluster.kill_node(KILLED_SHARD)
    log.append(f"node {KILLED_SHARD} killed at {time.monotonic() - started:.1f}s")
    await cluster.start_node(KILLED_SHARD)
    log.append(f"node {KILLED_SHARD} back at {time.monotonic() - started:.1f}s")
    await asyncio.sleep(max(0.0, started + GATEWAY_KILL_AT_S - time.monotonic()))
    await cluster.kill_gateway()
    log.append(f"gateway killed at {time.monotonic() - started:.1f}s")
    await cluster.start_gateway({"TALLY_PREPARE_DEADLINE_S": str(DEADLINE_S)})
    log.append(f"gateway back at {time.monotonic() - started:.1f}s")


# ---- checks ----


def chunks(items: Sequence[str], size: int = READ_CHUNK) -> list[Sequence[str]]:
    return [items[n : n + size] for n in range(0, len(items), size)]


async def balances_through_gateway(client: Client, ids: Sequence[str]) -> dict[str, pb.Balance]:
    found = {}
    for chunk in chunks(ids):
        response = await client.stub.GetAccounts(pb.GetAccountsRequest(ids=chunk), timeout=30)
        for account_id, lookup in zip(chunk, response.results, strict=True):
            assert lookup.code == pb.RESULT_CODE_OK, (account_id, lookup.message)
            found[account_id] = lookup.account.balance
    return found


async def check_each_transfer_whole_or_absent(cluster: ProcessCluster, ledger: Ledger) -> None:
    """In every shard's database: an applied single-shard transfer is one posted row; an
    applied cross-shard one is a commit on its coordinator (naming its attempt) and that
    attempt's piece posted on its participant. Every other attempt of a transfer (refused,
    aborted, or run again by a retry) has an abort marker on the coordinator and, if its
    participant prepared, a voided piece. A transfer not applied has no commit anywhere."""
    # '%' for the attempt and the transaction: core.ids' builders spell the LIKE patterns of
    # every piece and every abort marker.
    query = """
        SELECT id, kind, status, target_id FROM transactions
        WHERE id = ANY($1::text[]) OR id LIKE $2 OR id LIKE $3
    """
    patterns = (piece_id("%", "%"), abort_marker_id("%", "%"))
    rows_per_shard = await fetch_each_shard(cluster, query, list(ledger.outcomes), *patterns)
    found: dict[str, list[tuple[int, int, int]]] = {}
    commits: dict[str, str] = {}  # transaction -> its committed attempt
    pieces: dict[str, dict[str, tuple[int, int]]] = {}  # transaction -> attempt -> shard, status
    markers: dict[str, dict[str, int]] = {}  # transaction -> attempt -> shard
    for shard_id, rows in enumerate(rows_per_shard):
        for row in rows:
            identifier = row["id"]
            if is_piece_id(identifier):
                transaction_id, attempt = parse_piece_id(identifier)
                assert row["kind"] == Kind.PREPARED
                pieces.setdefault(transaction_id, {})[attempt] = (shard_id, row["status"])
                continue
            if is_reserved(identifier):  # the query reads no other reserved id
                transaction_id, attempt = parse_abort_marker(identifier)
                markers.setdefault(transaction_id, {})[attempt] = shard_id
                continue
            found.setdefault(identifier, []).append((shard_id, row["kind"], row["status"]))
            if row["kind"] == Kind.COMMIT:  # its target: the committed attempt's abort marker
                commits[identifier] = parse_abort_marker(row["target_id"])[1]
    problems = []
    for transaction_id, outcome in ledger.outcomes.items():
        debit, credit = (leg.account_id for leg in outcome.message.legs)
        here = sorted(found.get(transaction_id, []))
        attempts = pieces.get(transaction_id, {})
        aborted = markers.get(transaction_id, {})
        if not outcome.cross_shard:
            shard = cluster.shard_of(debit)
            expected = [(shard, Kind.ORDINARY, Status.POSTED)] if outcome.applied else []
            if here != expected or attempts or aborted:
                problems.append(f"{transaction_id}: {here} {attempts} {aborted}")
            continue
        coordinator, participant = cluster.shard_of(debit), cluster.shard_of(credit)
        committed = commits.get(transaction_id)
        if outcome.applied:
            if here != [(coordinator, Kind.COMMIT, Status.POSTED)] or committed is None:
                problems.append(f"{transaction_id} (applied): {here}")
                continue
            if attempts.get(committed) != (participant, Status.PENDING_POSTED):
                problems.append(f"{transaction_id} (applied): pieces {attempts}")
            if committed in aborted:
                problems.append(f"{transaction_id} (applied): its attempt also aborted")
        elif here:
            problems.append(f"{transaction_id} (not applied): {here}")
        for attempt, (shard_id, status) in attempts.items():
            if attempt == committed:
                continue
            if (shard_id, status) != (participant, Status.PENDING_VOIDED):
                problems.append(f"{transaction_id}: attempt {attempt} piece {shard_id} {status}")
            if aborted.get(attempt) != coordinator:
                problems.append(f"{transaction_id}: attempt {attempt} voided, no abort recorded")
    assert problems == [], problems[:20]


async def check_each_hold_fate(cluster: ProcessCluster, ledger: Ledger) -> None:
    """Every hold applied has the fate its client was told, at the shard that decides it (its
    only shard, or its coordinator); one refused is recorded nowhere; none is left open."""
    ids = list(ledger.holds)
    rows_per_shard = await fetch_each_shard(
        cluster, "SELECT id, kind, status FROM transactions WHERE id = ANY($1::text[])", ids
    )
    found: dict[str, list[tuple[int, int, int]]] = {}
    for shard_id, rows in enumerate(rows_per_shard):
        for row in rows:
            found.setdefault(row["id"], []).append((shard_id, row["kind"], row["status"]))
    problems = []
    fates: Counter[str] = Counter()
    for hold_id, flow in ledger.holds.items():
        here = found.get(hold_id, [])
        if not flow.hold.applied:
            if here:
                problems.append(f"{hold_id} (refused): {here}")
            continue
        debit = flow.hold.message.legs[0].account_id
        kind = Kind.HOLD if flow.hold.cross_shard else Kind.PENDING
        settle = flow.settle
        assert settle is not None and settle.result is not None
        if settle.applied:
            status = (
                Status.PENDING_POSTED if settle.message.post_pending_id else Status.PENDING_VOIDED
            )
        elif settle.result.code == pb.RESULT_CODE_PENDING_EXPIRED:
            status = Status.PENDING_EXPIRED
        else:
            problems.append(f"{hold_id}: settled {name(settle.result.code)}")
            continue
        fates[Status(status).name] += 1
        if here != [(cluster.shard_of(debit), kind, status)]:
            problems.append(f"{hold_id}: {here}, expected {kind.name} {Status(status).name}")
    assert problems == [], problems[:20]
    assert fates["PENDING_POSTED"] >= 1 and fates["PENDING_VOIDED"] >= 1, fates


async def check_retries_return_the_recorded_outcome(client: Client, ledger: Ledger) -> None:
    """Applied transfers (a sample, every one that saw an error among them) are REPLAYED with
    their timestamp. (A refused one is not recorded, cross-shard or not: its retry could now
    succeed, so it is not retried here.)"""
    rng = random.Random(7)
    settles = [f.settle for f in ledger.holds.values() if f.settle is not None]
    applied = [o for o in [*ledger.outcomes.values(), *settles] if o.applied]
    with_errors = [o for o in applied if o.errors]
    sample = with_errors + rng.sample(applied, min(RETRY_SAMPLE_COUNT, len(applied)))
    problems = []
    for outcome in sample:
        assert outcome.result is not None
        (again,) = await client.post(outcome.message)
        if (again.code, again.timestamp_ns) != (REPLAYED, outcome.result.timestamp_ns):
            problems.append(f"{outcome.message.id}: {name(again.code)} {again.message}")
    assert problems == [], problems[:20]


async def check_books(cluster: ProcessCluster, client: Client, ledger: Ledger) -> None:
    await wait_gateway_reaches_every_shard(client, cash_of("USD"))
    ids = [a for a, _ in customer_accounts()]
    balances = await balances_through_gateway(client, ids)
    expected = ledger.expected_balances()
    wrong = {
        a: (b.credits_posted - b.debits_posted, expected[a])
        for a, b in balances.items()
        if b.credits_posted - b.debits_posted != expected[a]
    }
    assert wrong == {}, list(wrong.items())[:20]
    negative = [a for a, b in balances.items() if b.credits_posted < b.debits_posted]
    assert negative == []
    # Per currency: the customers hold exactly what was funded, and @cash owes exactly that.
    funded = CUSTOMER_COUNT * 2 // len(CURRENCIES) * FUNDING
    for currency in CURRENCIES:
        total = sum(
            balances[a].credits_posted - balances[a].debits_posted
            for a, c in customer_accounts()
            if c == currency
        )
        assert total == funded, currency
        cash = await client.balance(cash_of(currency))
        assert (cash.debits_posted - cash.credits_posted, cash.debits_pending) == (funded, 0)
        clearing = await client.balance(clearing_account(currency))
        assert clearing.debits_posted == clearing.credits_posted, currency
        assert clearing.debits_pending == clearing.credits_pending == 0, currency
    # No account with the flag went below zero, on any shard (whatever its owner).
    query = """
        SELECT id, debits_posted, credits_posted FROM accounts
        WHERE flags & $1 <> 0 AND debits_posted + debits_pending > credits_posted
    """
    overdrawn = await fetch_each_shard(cluster, query, FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS)
    assert overdrawn == [[] for _ in cluster.shard_dsns]
    # Each shard's books balance on their own.
    for shard_id, dsn in enumerate(cluster.shard_dsns):
        for currency, (dp, cp, dq, cq) in (await trial_balance(dsn)).items():
            assert (dp, dq, cq) == (cp, 0, 0), (shard_id, currency)


# ---- the test ----


async def enough_transfers_sent(ledger: Ledger, started: float) -> None:
    """Until TRANSFER_COUNT_MIN transfers were sent, or LOAD_MAX_S since the start."""
    while len(ledger.outcomes) < TRANSFER_COUNT_MIN:
        if time.monotonic() - started >= LOAD_MAX_S:
            return
        await asyncio.sleep(0.2)


async def run_the_load_through_chaos(
    cluster: ProcessCluster, channel: grpc.aio.Channel, ledger: Ledger, events: list[str]
) -> None:
    """CLIENT_COUNT bank clients for LOAD_S seconds while chaos kills processes (and on until
    TRANSFER_COUNT_MIN transfers were sent, within LOAD_MAX_S), then until every client has its
    answers (or SETTLE_TIMEOUT_S passes)."""
    stop = asyncio.Event()
    give_up_at = [time.monotonic() + LOAD_MAX_S + SETTLE_TIMEOUT_S]
    clients = [
        BankClient(n, pb_grpc.LedgerStub(channel), cluster, ledger) for n in range(CLIENT_COUNT)
    ]
    started = time.monotonic()
    tasks = [asyncio.create_task(c.run(stop, give_up_at)) for c in clients]
    chaos_task = asyncio.create_task(chaos(cluster, started, events))
    try:
        await asyncio.sleep(LOAD_S)
        await enough_transfers_sent(ledger, started)
        stop.set()
        give_up_at[0] = time.monotonic() + SETTLE_TIMEOUT_S
        await asyncio.wait_for(chaos_task, timeout=30)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=SETTLE_TIMEOUT_S + 15)
    finally:
        stop.set()
        for task in [*tasks, chaos_task]:
            task.cancel()
        await asyncio.gather(*tasks, chaos_task, return_exceptions=True)


def check_every_outcome_decided_and_counted(
    cluster: ProcessCluster, ledger: Ledger, events: list[str]
) -> None:
    """Every transfer and hold has a result, of the expected codes, and the run did what it is
    for: enough transfers, across shards, refused, retried through crashes (printed summary)."""
    outcomes = list(ledger.outcomes.values())
    hold_outcomes = [o for f in ledger.holds.values() for o in (f.hold, f.settle) if o is not None]
    undecided = [o.message.id for o in [*outcomes, *hold_outcomes] if o.result is None]
    assert undecided == [], (undecided[:10], events, cluster.describe())
    codes = Counter(name(o.result.code) for o in outcomes if o.result is not None)
    unexpected = set(codes) - {
        "RESULT_CODE_CREATED",
        "RESULT_CODE_REPLAYED",
        "RESULT_CODE_INSUFFICIENT_FUNDS",
    }
    assert unexpected == set(), codes
    hold_codes = Counter(name(o.result.code) for o in hold_outcomes if o.result)
    assert set(hold_codes) <= {
        "RESULT_CODE_CREATED",
        "RESULT_CODE_REPLAYED",
        "RESULT_CODE_INSUFFICIENT_FUNDS",
        "RESULT_CODE_PENDING_EXPIRED",
    }, hold_codes
    cross_holds = sum(f.hold.cross_shard and f.hold.applied for f in ledger.holds.values())
    cross = sum(o.cross_shard for o in outcomes)
    retried = sum(o.attempt_count > 1 for o in outcomes)
    errors = Counter(e for o in outcomes for e in o.errors)
    summary = (
        f"{len(outcomes)} transfers ({cross} cross-shard), {dict(codes)}, "
        f"{retried} retried after {dict(errors)}; {len(ledger.holds)} holds "
        f"({cross_holds} across shards) {dict(hold_codes)}; {events}"
    )
    print(summary)
    assert len(outcomes) >= TRANSFER_COUNT_MIN, summary
    assert codes["RESULT_CODE_CREATED"] >= len(outcomes) // 2, summary
    assert codes["RESULT_CODE_INSUFFICIENT_FUNDS"] >= 1, summary
    assert cross >= len(outcomes) // 2, summary
    assert retried >= 1, f"no client saw the crashes: {summary}"
    assert cross_holds >= 50, summary


async def test_money_is_conserved_under_concurrent_transfers_and_crashes(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    gateway_environment = {"TALLY_PREPARE_DEADLINE_S": str(DEADLINE_S)}
    async with process_cluster(pg, tmp_path, gateway_environment=gateway_environment) as cluster:
        ledger = Ledger()
        events: list[str] = []
        async with security.channel(cluster.target, CHANNEL_OPTIONS) as channel:
            client = Client(channel)
            await open_bank(client)
            await run_the_load_through_chaos(cluster, channel, ledger, events)
            check_every_outcome_decided_and_counted(cluster, ledger, events)

            # Pieces whose resolve was lost are settled by their participant's deadline.
            await wait_nothing_pending(cluster, timeout_s=DEADLINE_S + 10)
            await wait_gateway_reaches_every_shard(client, cash_of("USD"))
            await check_each_transfer_whole_or_absent(cluster, ledger)
            await check_each_hold_fate(cluster, ledger)
            await check_retries_return_the_recorded_outcome(client, ledger)
            await check_books(cluster, client, ledger)
            await check_each_transfer_whole_or_absent(cluster, ledger)  # retries changed nothing
        for dsn in cluster.shard_dsns:
            assert await audit_problems(dsn) == []
        report = await audit.audit_cluster(cluster.shard_dsns, AuditConfig())
        found = [f.message for shard in report.shards for f in shard.findings]
        assert report.ok, found + [f.message for f in report.cluster_problems]
        assert (report.cross_shard.in_flight_count, report.cross_shard.open_hold_count) == (0, 0)
