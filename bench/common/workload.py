"""What the first benchmark posts: the accounts, the two distributions and the transfers.

Both systems (Tally and the row-locking comparison) draw transfers from the same generator, so
they see the same accounts, the same amounts and the same hot/uniform shape.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Final

from core.slots import is_spread, partition_key

CURRENCY: Final = "USD"
TRANSFER_CODE: Final = 1
ACCOUNT_CODE: Final = 100
# A spread account (leading '@'); on a single-shard node it is one ordinary row.
HOT_ACCOUNT_ID: Final = "@cash"
# Every customer account is a no-overdraft deposit account funded from HOT_ACCOUNT_ID before
# the workloads, so that both ledgers really check funds (which is why a row-locking ledger needs
# FOR UPDATE at all) while no transfer is ever short of them: 10,000 transfers of at most
# transfer_amount_max would still not drain one account.
FUNDING_AMOUNT_CENTS: Final = 100_000_000  # $1,000,000.00
TRANSFER_AMOUNT_MAX_CENTS: Final = 10_000  # $100.00


class Distribution(enum.StrEnum):
    # Debit and credit accounts drawn uniformly from all customer accounts.
    UNIFORM = "uniform"
    # Every transfer debits HOT_ACCOUNT_ID; the credit account is drawn uniformly.
    HOT = "hot"


class Shape(enum.StrEnum):
    # One transfer per call, many concurrent clients: workload (a).
    SINGLE = "single"
    # batch_size transfers per call, a few concurrent clients: workload (b).
    BATCH = "batch"


@dataclass(frozen=True, slots=True)
class Workload:
    shape: Shape
    distribution: Distribution

    @property
    def name(self) -> str:
        return f"{self.shape.value}-{self.distribution.value}"

    @property
    def tag(self) -> str:
        """Short prefix for transaction ids: keeps ids of different workloads apart."""
        return self.shape.value[0] + self.distribution.value[0]


ALL_WORKLOADS: Final = tuple(Workload(s, d) for s in Shape for d in Distribution)


def parse_workloads(text: str) -> tuple[Workload, ...]:
    """'single-uniform,batch-hot' -> workloads in the canonical order; 'all' -> every one."""
    if text.strip() == "all":
        return ALL_WORKLOADS
    by_name = {workload.name: workload for workload in ALL_WORKLOADS}
    wanted = {part.strip() for part in text.split(",") if part.strip()}
    unknown = wanted - by_name.keys()
    if unknown or not wanted:
        raise ValueError(f"unknown workloads {sorted(unknown)}; choose from {sorted(by_name)}")
    return tuple(w for w in ALL_WORKLOADS if w.name in wanted)


def customer_account_id(number: int) -> str:
    return f"cust-{number:06d}/deposit"


def customer_account_ids(account_count: int) -> list[str]:
    return [customer_account_id(n) for n in range(account_count)]


def home_named(name: str, *account_ids: str) -> str:
    """A transaction id under the partition key of the first non-spread account among
    account_ids, so that it is recorded on the shard of its legs (an id's home: docs/design.md,
    "Transactions"): what a client library does for its users."""
    key = next((partition_key(a) for a in account_ids if not is_spread(a)), "")
    return f"{key}/{name}" if key else name


def funding_transaction_id(account_id: str) -> str:
    # Deterministic, so seeding a node that already has the accounts replays instead of
    # funding twice.
    return home_named("fund." + account_id, account_id)


@dataclass(frozen=True, slots=True)
class Transfer:
    transaction_id: str
    debit_account_id: str
    credit_account_id: str
    amount_cents: int


class TransferSource:
    """An endless stream of transfers for one client; ids are unique per run and client."""

    __slots__ = ("_accounts", "_hot", "_prefix", "_random", "_sequence")

    def __init__(
        self,
        accounts: list[str],
        workload: Workload,
        run_id: str,
        client_number: int,
        seed: int,
    ) -> None:
        if len(accounts) < 2:
            raise ValueError("a uniform transfer needs at least two accounts")
        self._accounts = accounts
        self._hot = workload.distribution is Distribution.HOT
        self._prefix = f"{run_id}.{workload.tag}.{client_number}."
        self._random = random.Random(seed)
        self._sequence = 0

    def next(self) -> Transfer:
        randrange = self._random.randrange
        accounts = self._accounts
        count = len(accounts)
        if self._hot:
            debit = HOT_ACCOUNT_ID
            credit = accounts[randrange(count)]
        else:
            debit_number = randrange(count)
            credit_number = randrange(count - 1)
            if credit_number >= debit_number:  # never the same account on both sides
                credit_number += 1
            debit = accounts[debit_number]
            credit = accounts[credit_number]
        self._sequence += 1
        amount = randrange(1, TRANSFER_AMOUNT_MAX_CENTS + 1)
        name = self._prefix + str(self._sequence)
        return Transfer(home_named(name, debit, credit), debit, credit, amount)

    def take(self, count: int) -> list[Transfer]:
        return [self.next() for _ in range(count)]
