"""The bank the Locust scenarios run against: customers, their accounts, the internal accounts.

Shared by the bulk loader (bench/locust/loader.py), the Locust users (bench/locust/users.py) and
the row-locking comparison, so that every side names the same accounts.

Customer n has two accounts with the same partition key, so they always live on one shard:
`cust-000042/deposit` (code 100, cannot be overdrawn) and `cust-000042/loan` (code 200, the loan
principal and accrued interest: a debit balance). The bank's own accounts are spread accounts
(a piece on every shard, applied on the shard of the other legs), so a hot internal account
never serialises the cluster.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

from core.slots import SlotMap

# Scenario (Locust tag) -> its User class in bench/locust/users.py. Named here, not imported:
# importing Locust monkey-patches the whole process with gevent, which only Locust's own
# processes may have.
SCENARIO_CLASSES: Final = {
    "loans": "LoanProductsUser",
    "transfers": "CustomerTransfersUser",
    "hot": "HotAccountUser",
    "eod": "EndOfDayInterestUser",
    "mixed": "RetailDayUser",
}

CURRENCY: Final = "USD"
DEPOSIT_CODE: Final = 100
LOAN_CODE: Final = 200
INTERNAL_CODE: Final = 900

# The bank's internal accounts (spread accounts).
FUNDING_ACCOUNT_ID: Final = f"@funding/{CURRENCY}"  # pays disbursements and opening deposits
LOAN_BOOK_ACCOUNT_ID: Final = f"@loans/{CURRENCY}"  # the other side of every loan principal
FEES_ACCOUNT_ID: Final = f"@fees/{CURRENCY}"
INTEREST_ACCOUNT_ID: Final = f"@interest/{CURRENCY}"  # interest income, credited at end of day
HOLDS_ACCOUNT_ID: Final = f"@holds/{CURRENCY}"  # card authorisations settle here
SETTLEMENT_ACCOUNT_ID: Final = f"@settlement/{CURRENCY}"  # card purchases of the retail day
# The hot account scenario: every transfer debits it. The same id as the first benchmark's
# (bench/common/workload.HOT_ACCOUNT_ID), so the row-locking comparison posts the very same shape.
HOT_ACCOUNT_ID: Final = "@cash"
INTERNAL_ACCOUNT_IDS: Final = (
    FUNDING_ACCOUNT_ID,
    LOAN_BOOK_ACCOUNT_ID,
    FEES_ACCOUNT_ID,
    INTEREST_ACCOUNT_ID,
    HOLDS_ACCOUNT_ID,
    SETTLEMENT_ACCOUNT_ID,
    HOT_ACCOUNT_ID,
)

# Opening balances, posted by the loader: every deposit holds far more than a run can spend
# (so only the overdraft attempts below are ever declined), every customer owes a loan.
OPENING_DEPOSIT_CENTS: Final = 100_000_000  # $1,000,000.00
OPENING_LOAN_CENTS: Final = 500_000  # $5,000.00
# A declined overdraft: more than any deposit can ever hold in a run.
OVERDRAFT_ATTEMPT_CENTS: Final = 1_000_000_000_000  # $10,000,000,000.00
TRANSFER_AMOUNT_MAX_CENTS: Final = 10_000  # $100.00


def customer_key(number: int) -> str:
    return f"cust-{number:06d}"


def deposit_id(number: int) -> str:
    return f"{customer_key(number)}/deposit"


def loan_id(number: int) -> str:
    return f"{customer_key(number)}/loan"


def opening_transaction_id(number: int) -> str:
    # Deterministic: loading a cluster that already holds the population replays, never posts
    # the opening balances twice.
    # Under the customer's partition key: recorded on the customer's shard.
    return f"{customer_key(number)}/open"


def accrual_amount_cents(number: int) -> int:
    """A day's interest on customer n's loan: fixed per customer, 1..500 cents."""
    return 1 + (number * 7919) % 500


@dataclass(frozen=True, slots=True)
class Placement:
    """Customers grouped by the shard their accounts live on (by the even slot map of
    shard_count shards, which is what `tally up --shards N` starts with)."""

    by_shard: tuple[tuple[int, ...], ...]

    @staticmethod
    def of(population: int, shard_count: int) -> Placement:
        slot_map = SlotMap.even(max(1, shard_count))
        groups: list[list[int]] = [[] for _ in range(max(1, shard_count))]
        for number in range(population):
            groups[slot_map.shard_of_key(customer_key(number))].append(number)
        return Placement(tuple(tuple(group) for group in groups if group))

    def pair(self, rng: random.Random, cross_share: float) -> tuple[int, int]:
        """Two different customers; with probability cross_share on different shards."""
        shards = self.by_shard
        first_shard = rng.randrange(len(shards))
        second_shard = first_shard
        if len(shards) > 1 and rng.random() < cross_share:
            second_shard = (first_shard + 1 + rng.randrange(len(shards) - 1)) % len(shards)
        first = shards[first_shard][rng.randrange(len(shards[first_shard]))]
        group = shards[second_shard]
        if len(group) == 1 and group[0] == first:
            raise ValueError("a transfer needs two customers on the chosen shard")
        second = first
        while second == first:
            second = group[rng.randrange(len(group))]
        return first, second
