"""A seeded ledger with every kind of transaction, written once through a real node, and fresh
copies of it (CREATE DATABASE ... TEMPLATE) for tests to audit, export or alter."""

from __future__ import annotations

import asyncio
import itertools
import random
from dataclasses import dataclass, field

import asyncpg

from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.helpers import CREDIT, DEBIT, Client, account, leg, start_node, transfer

CUSTOMERS = [f"c{i}/dep" for i in range(6)]
CREATED = pb.RESULT_CODE_CREATED
_copy_numbers = itertools.count(1)


@dataclass
class Ledger:
    """What the workload wrote, for tests to pick targets from."""

    posted: list[str] = field(default_factory=list)
    open_hold: str = "hold-open"
    expired_hold: str = "hold-exp"
    closed_account: str = "z/temp"


async def build_ledger(dsn: str, seed: int = 1) -> Ledger:
    """A seeded random workload through a real node: transfers, fees, holds posted in full and
    in part, voided and expired, reversals, linked groups, multi-currency, a closed account."""
    node = await start_node(dsn, expiry_interval_ms=50)
    try:
        async with security.channel(f"127.0.0.1:{node.port}") as channel:
            client = Client(channel)
            ledger = Ledger()
            await _open_accounts(client)
            await _fund(client, ledger)
            rng = random.Random(seed)
            for round_number in range(6):
                await _random_round(client, rng, round_number, ledger)
            await _close_and_expire(client, ledger)
            return ledger
    finally:
        await node.stop()


async def _open_accounts(client: Client) -> None:
    codes = await client.create(
        account("@bank"),
        account("@fees", code=800),
        account("@eur", currency="EUR"),
        *[account(c, no_overdraft=True, metadata={"name": f"Customer {c}"}) for c in CUSTOMERS],
        account("c0/loan", code=200, credit_limit=True),
        account("e0/dep", currency="EUR", no_overdraft=True),
        account("z/temp"),
    )
    assert set(codes) == {pb.RESULT_CODE_CREATED}


async def _fund(client: Client, ledger: Ledger) -> None:
    items = [transfer(f"fund-{c}", "@bank", c, 100_000, value_date="2026-01-02") for c in CUSTOMERS]
    items.append(transfer("fund-e0", "@eur", "e0/dep", 50_000, currency="EUR"))
    items.append(transfer("disb-0", "c0/loan", "c0/dep", 20_000, metadata={"reference": "LN-1"}))
    assert {r.code for r in await client.post(*items)} == {pb.RESULT_CODE_CREATED}
    ledger.posted += [item.id for item in items]


async def _random_round(
    client: Client, rng: random.Random, round_number: int, ledger: Ledger
) -> None:
    items: list[pb.Transaction] = []
    for index in range(20):
        name = f"r{round_number}-{index}"
        debit, credit = rng.sample(CUSTOMERS, 2)
        amount = rng.randint(1, 500)
        roll = rng.random()
        if roll < 0.4:
            items.append(transfer(name, debit, credit, amount, metadata={"reference": f"R-{name}"}))
        elif roll < 0.55:
            items.append(transfer(name, debit, "@fees", amount, metadata={"description": "fee"}))
        elif roll < 0.7:
            items.append(
                transfer(f"h-{name}", debit, credit, amount, pending=True, timeout_seconds=3600)
            )
        elif roll < 0.8:
            items += _linked_pair(name, debit, credit, amount)
        elif roll < 0.9:
            items.append(_multi_currency(name, debit, amount))
        elif ledger.posted:
            items.append(pb.Transaction(id=f"rev-{name}", code=9, reverses_id=ledger.posted.pop(0)))
    results = await client.post(*items)
    ledger.posted += [i.id for i, r in zip(items, results, strict=True) if _reversible(i, r)]
    holds = [i.id for i, r in zip(items, results, strict=True) if i.pending and r.code == CREATED]
    await _resolve_holds(client, holds)


def _reversible(item: pb.Transaction, result: pb.ItemResult) -> bool:
    return result.code == pb.RESULT_CODE_CREATED and not item.pending and not item.reverses_id


def _linked_pair(name: str, debit: str, credit: str, amount: int) -> list[pb.Transaction]:
    # An even index: a pair that succeeds; odd: its second item overdraws, so neither applies.
    second_amount = amount if name.endswith(("0", "2", "4", "6", "8")) else 10**9
    return [
        transfer(f"l1-{name}", debit, credit, amount, linked=True),
        transfer(f"l2-{name}", credit, debit, second_amount),
    ]


def _multi_currency(name: str, debit: str, amount: int) -> pb.Transaction:
    return pb.Transaction(
        id=f"fx-{name}",
        code=7,
        value_date="2026-03-15",
        legs=[
            leg(debit, DEBIT, amount),
            leg("@bank", CREDIT, amount),
            leg("@eur", DEBIT, amount, "EUR"),
            leg("e0/dep", CREDIT, amount, "EUR"),
        ],
    )


async def _resolve_holds(client: Client, holds: list[str]) -> None:
    """Post a third of the holds in full, a third in part, void the rest."""
    items = []
    for index, hold in enumerate(holds):
        record = await client.transaction(hold)
        legs = list(record.applied_legs)
        if index % 3 == 0:
            items.append(pb.Transaction(id=f"post-{hold}", code=3, post_pending_id=hold))
        elif index % 3 == 1:
            part = max(1, legs[0].amount // 2)
            partial = [leg(x.account_id, x.side, part) for x in legs]
            items.append(
                pb.Transaction(id=f"part-{hold}", code=3, post_pending_id=hold, legs=partial)
            )
        else:
            items.append(pb.Transaction(id=f"void-{hold}", code=4, void_pending_id=hold))
    if items:
        codes = {r.code for r in await client.post(*items)}
        assert codes == {pb.RESULT_CODE_CREATED}, codes


async def _close_and_expire(client: Client, ledger: Ledger) -> None:
    steps = [
        [transfer("z-in", "@bank", "z/temp", 100)],
        [transfer("z-out", "z/temp", "@bank", 100)],
        [transfer(ledger.open_hold, "c1/dep", "c2/dep", 70, pending=True, timeout_seconds=3600)],
        [transfer(ledger.expired_hold, "c3/dep", "c4/dep", 30, pending=True, timeout_seconds=1)],
    ]
    for items in steps:
        assert [r.code for r in await client.post(*items)] == [pb.RESULT_CODE_CREATED]
    response = await client.stub.CloseAccounts(
        pb.CloseAccountsRequest(accounts=[pb.CloseAccount(account_id=ledger.closed_account)]),
        timeout=30,
    )
    assert response.results[0].code == pb.RESULT_CODE_CREATED
    async with asyncio.timeout(10):
        # The node's sweep releases the hold on its own; nothing to wait on but its status.
        while (await client.transaction(ledger.expired_hold)).status != (  # noqa: ASYNC110
            pb.TRANSACTION_STATUS_PENDING_EXPIRED
        ):
            await asyncio.sleep(0.05)


async def clone_database(pg: EmbeddedPostgres, template: str) -> str:
    """A fresh copy of a database (no connection to the template may be open)."""
    name = f"{template}_copy{next(_copy_numbers)}"
    connection = await asyncpg.connect(pg.dsn(), timeout=30)
    try:
        await connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"', timeout=60)
    finally:
        await connection.close(timeout=10)
    return pg.dsn(name)


async def make_template(pg: EmbeddedPostgres, name: str, seed: int = 1) -> tuple[str, Ledger]:
    await pg.create_database_async(name)
    ledger = await build_ledger(pg.dsn(name), seed)
    return name, ledger
