"""A seeded portfolio of small-business borrowers, day by day, with planted patterns and the
alert rules each pattern should trip (the ground truth the report scores the monitor against).

Every borrower is a partition key (`b-007`) with a deposit account (`b-007/dep`) and a loan
account (`b-007/loan`) whose metadata carries its schedule (core.flows.schedule: `loan.kind`,
`loan.installment`, `loan.first_due`, `loan.period_days`, `loan.installments`,
`loan.product`). Customers pay the deposit on most days from day 0; the borrower pays its
suppliers weekly. The loan account is opened on day LOAN_DAY (a bank lends to a business with
a history: opened on day 0, a borrower's first evaluation would read shares of a day or two of
payments, and largest_counterparty_share_above fires for most borrowers on that first day) and
disbursed at once (loan -> deposit, the borrower's own accounts: a disbursement, not inflow);
the borrower repays on each due date from LOAN_DAY + 30 (deposit -> loan: debt service).

Counterparties are client partition keys too: customers (`c-042`, a pool shared between
borrowers), suppliers (`s-07`, shared), a round-tripper's partner (`rt-007`) and a ring's
members (`g-007-2`). Their accounts may go negative: they stand for the outside world.

The patterns (PATTERN_RULES says which rules each should fire; rules.toml sets thresholds):

- healthy: steady inflow from 6 to 9 customers, covered 2 to 3.5 times: no alert;
- seasonal (product `seasonal`): inflow on a sine of 100 to 150 days, ±60%, covered on
  average 2.8 to 3.4 times; its product reads a 90-day window and a looser inflow drop: no alert;
- failing: healthy until about 55% of the horizon, then inflow decays to under a tenth:
  coverage_below and inflow_drop_below;
- concentrated: one anchor customer brings 80% of inflow: largest_counterparty_share_above;
- round_trip: every week money leaves to a partner that sends it back 2 to 5 days later
  (about 45% of inflow): round_trip_share_above;
- ring: four members pay each other every few days and bring 60% of the borrower's inflow:
  linked_inflow_share_above.

Everything is a function of ScenarioConfig (the seed included): the same config gives the same
accounts, the same payments and the same transaction ids, so a run is reproducible and a
retried call is idempotent.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Final

from core.flows import rules
from core.flows.model import date_of_day, day_of_date

CURRENCY: Final = "USD"
DEPOSIT_CODE: Final = 100
LOAN_CODE: Final = 200
TRANSFER_CODE: Final = 1
PERIOD_DAYS: Final = 30
LOAN_DAY: Final = 30
HEALTHY: Final = "healthy"
SEASONAL: Final = "seasonal"
FAILING: Final = "failing"
CONCENTRATED: Final = "concentrated"
ROUND_TRIP: Final = "round_trip"
RING: Final = "ring"
PATTERNS: Final = (HEALTHY, SEASONAL, FAILING, CONCENTRATED, ROUND_TRIP, RING)
PATTERN_RULES: Final[dict[str, frozenset[str]]] = {
    HEALTHY: frozenset(),
    SEASONAL: frozenset(),
    FAILING: frozenset({rules.COVERAGE_BELOW, rules.INFLOW_DROP_BELOW}),
    CONCENTRATED: frozenset({rules.LARGEST_COUNTERPARTY_SHARE_ABOVE}),
    ROUND_TRIP: frozenset({rules.ROUND_TRIP_SHARE_ABOVE}),
    RING: frozenset({rules.LINKED_INFLOW_SHARE_ABOVE}),
}
PRODUCT_OF: Final = {SEASONAL: "seasonal"}
PRODUCT_DEFAULT: Final = "sme"
CUSTOMER_POOL_PER_BORROWER: Final = 4
SUPPLIER_COUNT: Final = 25
RING_SIZE: Final = 4
DAYS_MIN: Final = 120  # the failing pattern decays after LOAN_DAY + 30 and 2 baseline windows
DAYS_MAX: Final = 366
BORROWER_COUNT_MAX: Final = 2_000


@dataclass(frozen=True, slots=True)
class ScenarioConfig:
    seed: int = 7
    start_date: str = "2026-02-01"
    days: int = 270
    counts: tuple[tuple[str, int], ...] = (
        (HEALTHY, 40), (SEASONAL, 10), (FAILING, 8), (CONCENTRATED, 8), (ROUND_TRIP, 8),
        (RING, 6),
    )  # fmt: skip

    def __post_init__(self) -> None:
        if not DAYS_MIN <= self.days <= DAYS_MAX:
            raise ValueError(f"days must be within {DAYS_MIN}..{DAYS_MAX}")
        day_of_date(self.start_date)  # ValueError if it is not a date
        names = [name for name, _ in self.counts]
        if sorted(names) != sorted(set(names)) or not set(names) <= set(PATTERNS):
            raise ValueError(f"counts must name each pattern of {PATTERNS} at most once")
        total = sum(count for _, count in self.counts)
        if any(count < 0 for _, count in self.counts) or not 0 < total <= BORROWER_COUNT_MAX:
            raise ValueError(f"between 1 and {BORROWER_COUNT_MAX} borrowers")


@dataclass(frozen=True, slots=True)
class Borrower:
    key: str
    pattern: str
    product: str
    installment: int  # minor units, due every PERIOD_DAYS from first_due_day
    first_due_day: int  # offset from the start
    installment_count: int
    monthly_inflow: int  # the undisturbed 30-day inflow, minor units
    expected_rules: frozenset[str]

    @property
    def deposit(self) -> str:
        return f"{self.key}/dep"

    @property
    def loan(self) -> str:
        return f"{self.key}/loan"


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    code: int
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Payment:
    """One transfer: debit one account, credit another, on a day (offset from the start)."""

    transaction_id: str
    day: int
    debit_account_id: str
    credit_account_id: str
    amount: int


@dataclass(frozen=True)
class Scenario:
    config: ScenarioConfig
    borrowers: tuple[Borrower, ...]
    accounts: tuple[Account, ...]  # opened before day 0
    loan_accounts: tuple[Account, ...]  # opened on LOAN_DAY, before its payments
    payments_by_day: tuple[tuple[Payment, ...], ...]
    first_day: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "first_day", day_of_date(self.config.start_date))

    def value_date(self, day: int) -> str:
        return date_of_day(self.first_day + day)

    @property
    def payment_count(self) -> int:
        return sum(len(payments) for payments in self.payments_by_day)

    def planted(self, rule: str) -> set[str]:
        """The borrowers the rule should fire for (the ground truth)."""
        return {b.key for b in self.borrowers if rule in b.expected_rules}

    def by_pattern(self, pattern: str) -> list[Borrower]:
        return [b for b in self.borrowers if b.pattern == pattern]


def build(config: ScenarioConfig) -> Scenario:
    """The scenario of a config: the same config, the same scenario."""
    rng = random.Random(config.seed)
    borrowers = []
    number = 0
    for pattern, count in config.counts:
        for _ in range(count):
            number += 1
            borrowers.append(_borrower(f"b-{number:03d}", pattern, config.days, rng))
    customer_count = max(8, CUSTOMER_POOL_PER_BORROWER * len(borrowers))
    customers = [f"c-{n:03d}" for n in range(customer_count)]
    suppliers = [f"s-{n:02d}" for n in range(SUPPLIER_COUNT)]
    days: list[list[Payment]] = [[] for _ in range(config.days)]
    extra_keys: list[str] = []
    for borrower in borrowers:
        # Each borrower's payments come from a generator of its own, so one borrower's
        # pattern does not shift the others' random draws.
        own = random.Random(f"{config.seed}/{borrower.key}")
        extra_keys += _payments(borrower, config.days, customers, suppliers, own, days)
    keys = customers + suppliers + extra_keys + [borrower.key for borrower in borrowers]
    accounts = tuple(Account(f"{key}/dep", DEPOSIT_CODE) for key in keys)
    loans = tuple(Account(b.loan, LOAN_CODE, _loan_metadata(b, config)) for b in borrowers)
    return Scenario(config, tuple(borrowers), accounts, loans, tuple(tuple(d) for d in days))


def _borrower(key: str, pattern: str, days: int, rng: random.Random) -> Borrower:
    monthly_inflow = rng.randrange(2_000_000, 8_000_000, 100)  # $20k to $80k a month
    coverage = rng.uniform(2.8, 3.4) if pattern == SEASONAL else rng.uniform(2.0, 3.5)
    installment = int(monthly_inflow / coverage) // 100 * 100
    return Borrower(
        key=key,
        pattern=pattern,
        product=PRODUCT_OF.get(pattern, PRODUCT_DEFAULT),
        installment=installment,
        first_due_day=LOAN_DAY + PERIOD_DAYS,
        installment_count=(days - LOAN_DAY) // PERIOD_DAYS + 1,
        monthly_inflow=monthly_inflow,
        expected_rules=PATTERN_RULES[pattern],
    )


def _loan_metadata(borrower: Borrower, config: ScenarioConfig) -> tuple[tuple[str, str], ...]:
    first_due = date_of_day(day_of_date(config.start_date) + borrower.first_due_day)
    return (
        ("loan.first_due", first_due),
        ("loan.installment", str(borrower.installment)),
        ("loan.installments", str(borrower.installment_count)),
        ("loan.kind", "loan"),
        ("loan.period_days", str(PERIOD_DAYS)),
        ("loan.product", borrower.product),
    )


def inflow_factor(pattern: str, day: int, days: int, shape: tuple[float, float]) -> float:
    """How the borrower's customer inflow on a day compares with its undisturbed level.
    shape: (phase, period) of a seasonal borrower, (decay start, time constant) of a failing
    one."""
    if pattern == SEASONAL:
        phase, period = shape
        return 1.0 + 0.6 * math.sin(2 * math.pi * (day + phase) / period)
    if pattern == FAILING:
        start, tau = shape
        return 1.0 if day < start else max(0.06, math.exp(-(day - start) / tau))
    return 1.0


def _shape(pattern: str, days: int, rng: random.Random) -> tuple[float, float]:
    if pattern == SEASONAL:
        return rng.uniform(0, 150), rng.uniform(100, 150)
    if pattern == FAILING:
        return days * rng.uniform(0.5, 0.6), rng.uniform(8, 14)
    return 0.0, 1.0


# Why long: one borrower's whole history, pattern by pattern; split, the shares each pattern
# plants (anchor, partner, ring) would be spread over functions that must agree on them.
def _payments(
    borrower: Borrower,
    days: int,
    customers: list[str],
    suppliers: list[str],
    rng: random.Random,
    out: list[list[Payment]],
) -> list[str]:
    """Appends the borrower's payments to out (per day); the extra keys it made."""
    key, pattern = borrower.key, borrower.pattern
    serial = iter(range(1, 10**9))

    def pay(day: int, debit: str, credit: str, amount: int, name: str) -> None:
        if amount > 0:
            tid = f"{debit.split('/')[0]}/{name}-{key}-{day}-{next(serial)}"
            out[day].append(Payment(tid, day, debit, credit, amount))

    mine = rng.sample(customers, rng.randint(6, 9))
    weights = [rng.uniform(1.0, 2.0) for _ in mine]
    my_suppliers = rng.sample(suppliers, rng.randint(2, 3))
    shape = _shape(pattern, days, rng)
    daily = borrower.monthly_inflow / PERIOD_DAYS
    extra: list[str] = []
    customer_share = {CONCENTRATED: 0.2, RING: 0.4}.get(pattern, 1.0)
    anchor = mine[0]
    partner = f"rt-{key.removeprefix('b-')}"
    ring = [f"g-{key.removeprefix('b-')}-{n}" for n in range(RING_SIZE)]
    if pattern == ROUND_TRIP:
        extra.append(partner)
    if pattern == RING:
        extra += ring
    pay(LOAN_DAY, borrower.loan, borrower.deposit, borrower.installment * 8, "disb")
    week_inflow = 0.0
    for day in range(days):
        factor = inflow_factor(pattern, day, days, shape)
        weekday = (day % 7) < 5
        target = daily * factor * (1.2 if weekday else 0.5)
        count = rng.randint(2, 4) if weekday else rng.randint(0, 2)
        day_inflow = 0.0
        if pattern == CONCENTRATED and weekday:
            amount = int(daily * 7 / 5 * 0.8 * rng.uniform(0.9, 1.1))
            pay(day, f"{anchor}/dep", borrower.deposit, amount, "in")
            day_inflow += amount
        if pattern == RING and day % 7 in (1, 4):
            member = ring[(day // 7 + (day % 7 == 4)) % RING_SIZE]
            amount = int(daily * 3.5 * 0.6 * rng.uniform(0.9, 1.1))
            pay(day, f"{member}/dep", borrower.deposit, amount, "in")
            day_inflow += amount
        if pattern == RING and day % 3 == 0:
            a = rng.randrange(RING_SIZE)
            pay(day, f"{ring[a]}/dep", f"{ring[(a + 1) % RING_SIZE]}/dep",
                int(daily * rng.uniform(0.5, 1.5)), "ring")  # fmt: skip
        for _ in range(count):
            who = rng.choices(mine, weights)[0]
            amount = int(target * customer_share / count * rng.uniform(0.6, 1.4))
            pay(day, f"{who}/dep", borrower.deposit, amount, "in")
            day_inflow += amount
        week_inflow += day_inflow
        if pattern == ROUND_TRIP and day % 7 == 2:
            sent = int(daily * 7 * 0.8 * rng.uniform(0.9, 1.1))
            back = rng.randint(2, 5)
            pay(day, borrower.deposit, f"{partner}/dep", sent, "out")
            if day + back < days:
                pay(day + back, f"{partner}/dep", borrower.deposit,
                    int(sent * rng.uniform(0.95, 1.0)), "back")  # fmt: skip
        if day % 7 == 6:
            for supplier in my_suppliers:
                share = 0.6 / len(my_suppliers) * rng.uniform(0.8, 1.2)
                pay(day, borrower.deposit, f"{supplier}/dep", int(week_inflow * share), "out")
            week_inflow = 0.0
        due = day - borrower.first_due_day
        if due >= 0 and due % PERIOD_DAYS == 0 and due // PERIOD_DAYS < borrower.installment_count:
            missed = pattern == FAILING and day > shape[0] + PERIOD_DAYS
            if not missed:
                pay(day, borrower.deposit, borrower.loan, borrower.installment, "repay")
    return extra
