"""Builders and handles shared by the tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from core import audit
from shards.node import Node, NodeConfig
from shards.writer import WriterConfig
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc

DEBIT = pb.SIDE_DEBIT
CREDIT = pb.SIDE_CREDIT


@dataclass
class NodeHandle:
    node: Node
    task: asyncio.Task[None]
    port: int
    dsn: str
    stopped: bool = field(default=False)

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.node.request_stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, timeout=30)


async def start_node(dsn: str, writer: WriterConfig | None = None, **options: object) -> NodeHandle:
    config = NodeConfig(dsn=dsn, listen="127.0.0.1:0", writer=writer or WriterConfig(), **options)  # type: ignore[arg-type]
    node = Node(config)
    port = await node.start()
    task = asyncio.create_task(node.run())
    await wait_serving(node)
    return NodeHandle(node, task, port, dsn)


async def wait_serving(node: Node, timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while node.writer is None:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("node did not become the writer")
        await asyncio.sleep(0.02)


def account(
    account_id: str,
    currency: str = "USD",
    code: int = 100,
    no_overdraft: bool = False,
    credit_limit: bool = False,
    metadata: dict[str, str] | None = None,
) -> pb.Account:
    return pb.Account(
        id=account_id,
        currency=currency,
        code=code,
        debits_must_not_exceed_credits=no_overdraft,
        credits_must_not_exceed_debits=credit_limit,
        metadata=metadata or {},
    )


def leg(account_id: str, side: int, amount: int, currency: str = "USD") -> pb.Leg:
    return pb.Leg(account_id=account_id, side=side, amount=amount, currency=currency)


def transfer(
    transaction_id: str,
    debit: str,
    credit: str,
    amount: int,
    currency: str = "USD",
    code: int = 1,
    **fields: object,
) -> pb.Transaction:
    return pb.Transaction(
        id=transaction_id,
        legs=[leg(debit, DEBIT, amount, currency), leg(credit, CREDIT, amount, currency)],
        code=code,
        **fields,  # type: ignore[arg-type]
    )


class Client:
    """A thin test client over the real gRPC stub."""

    def __init__(self, channel: object) -> None:
        self.stub = pb_grpc.LedgerStub(channel)

    async def create(self, *accounts: pb.Account) -> list[int]:
        response = await self.stub.CreateAccounts(
            pb.CreateAccountsRequest(accounts=accounts), timeout=30
        )
        return [r.code for r in response.results]

    async def post(self, *transactions: pb.Transaction) -> list[pb.ItemResult]:
        response = await self.stub.PostTransactions(
            pb.PostTransactionsRequest(transactions=transactions), timeout=30
        )
        return list(response.results)

    async def codes(self, *transactions: pb.Transaction) -> list[int]:
        return [r.code for r in await self.post(*transactions)]

    async def account(self, account_id: str) -> pb.AccountRecord:
        response = await self.stub.GetAccounts(pb.GetAccountsRequest(ids=[account_id]), timeout=30)
        assert response.results[0].code == pb.RESULT_CODE_OK, response.results[0].message
        return response.results[0].account

    async def balance(self, account_id: str) -> pb.Balance:
        return (await self.account(account_id)).balance

    async def transaction(self, transaction_id: str) -> pb.TransactionRecord:
        response = await self.stub.GetTransactions(
            pb.GetTransactionsRequest(ids=[transaction_id]), timeout=30
        )
        assert response.results[0].code == pb.RESULT_CODE_OK, response.results[0].message
        return response.results[0].transaction


def name(code: int) -> str:
    return pb.ResultCode.Name(code)


def names(codes: Sequence[int]) -> list[str]:
    return [name(code) for code in codes]


async def audit_problems(dsn: str) -> list[str]:
    connection = await asyncpg.connect(dsn)
    try:
        return await audit.check_all(connection)
    finally:
        await connection.close()
