"""200 concurrent clients debit one no-overdraft account: it never goes below zero available,
and every accepted debit is in the journal."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc

from tally.v1 import ledger_pb2 as pb
from tests.support.helpers import Client, account, audit_problems, transfer

CLIENT_COUNT = 200
ATTEMPTS_PER_CLIENT = 5
FUNDS = 3_000  # enough for 600 debits of 5; 1,000 are attempted


async def test_many_clients_one_account(node, channel: grpc.aio.Channel) -> None:
    client = Client(channel)
    await client.create(account("@funding"), account("hot/deposit", no_overdraft=True))
    await client.create(*(account(f"dest-{n}/deposit") for n in range(CLIENT_COUNT)))
    assert await client.codes(transfer("fund", "@funding", "hot/deposit", FUNDS)) == [
        pb.RESULT_CODE_CREATED
    ]

    async def spend(n: int) -> list[tuple[str, int]]:
        outcomes = []
        for attempt in range(ATTEMPTS_PER_CLIENT):
            tid = f"spend-{n}-{attempt}"
            result = (await client.post(transfer(tid, "hot/deposit", f"dest-{n}/deposit", 5)))[0]
            outcomes.append((tid, result.code))
        return outcomes

    outcomes = [
        o for batch in await asyncio.gather(*map(spend, range(CLIENT_COUNT))) for o in batch
    ]
    accepted = {tid for tid, code in outcomes if code == pb.RESULT_CODE_CREATED}
    refused = [code for tid, code in outcomes if code != pb.RESULT_CODE_CREATED]
    assert set(refused) <= {pb.RESULT_CODE_INSUFFICIENT_FUNDS}
    assert len(accepted) == FUNDS // 5

    balance = await client.balance("hot/deposit")
    assert balance.available == 0 and balance.debits_posted == FUNDS

    connection = await asyncpg.connect(node.dsn)
    try:
        journaled = {
            row["transaction_id"]
            for row in await connection.fetch(
                "SELECT transaction_id FROM postings WHERE account_id = 'hot/deposit' AND is_debit"
            )
        }
        lowest = await connection.fetchval(
            """
            SELECT min(credits_posted_after - debits_posted_after - debits_pending_after)
            FROM postings WHERE account_id = 'hot/deposit'
            """
        )
    finally:
        await connection.close()
    assert journaled == accepted
    # Not only at the end: after every single posting, available stayed >= 0.
    assert lowest >= 0
    assert await audit_problems(node.dsn) == []
