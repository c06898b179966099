"""Builders and handles shared by the tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace

import asyncpg

from core import audit
from core.store import control as control_store
from shards import control
from shards.gateway.cluster import GatewayConfig
from shards.gateway.server import Gateway
from shards.local.embedded_pg import EmbeddedPostgres
from shards.node.durability import SINGLE_SERVER
from shards.node.server import Node, NodeConfig
from shards.node.writer import WriterConfig
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc
from tests.support import security

DEBIT = pb.SIDE_DEBIT
CREDIT = pb.SIDE_CREDIT


@dataclass
class NodeHandle:
    node: Node
    task: asyncio.Task[None]
    port: int
    dsn: str
    stopped: bool = field(default=False)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def internal_target(self) -> str:
        """The internal listener (tally.v1.Shard, cluster identities only): a node of a
        cluster has one; a node without a control DSN only if started with
        internal_listen="127.0.0.1:0"."""
        if self.node.internal_port == 0:
            raise AssertionError(
                "this node has no internal listener: pass internal_listen='127.0.0.1:0' "
                "to start_node (or a control_dsn)"
            )
        return self.node.internal_target

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.node.request_stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, timeout=30)


async def start_node(dsn: str, writer: WriterConfig | None = None, **options: object) -> NodeHandle:
    options.setdefault("security", security.server_security())
    options.setdefault("durability", SINGLE_SERVER)  # the suite's PostgreSQL has no standby
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


@dataclass
class InProcessCluster:
    """Shard nodes and one gateway in this process, on the session's embedded PostgreSQL."""

    control_dsn: str
    nodes: list[NodeHandle]
    gateway: Gateway
    gateway_task: asyncio.Task[None]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"

    @property
    def dsns(self) -> list[str]:
        return [node.dsn for node in self.nodes]


async def control_database(pg: EmbeddedPostgres, name: str, shard_count: int) -> str:
    """A fresh control database `name` with an even slot map over shard_count shards."""
    await pg.create_database_async(name)
    control_dsn = pg.dsn(name)
    connection = await control.connect(control_dsn)
    try:
        await control_store.initialise(connection, shard_count)
    finally:
        await connection.close(timeout=5.0)
    return control_dsn


@contextlib.asynccontextmanager
async def gateway_on(control_dsn: str, **options: object) -> AsyncIterator[Gateway]:
    """One more gateway of a cluster, in this process (GatewayConfig fields in options: a long
    slot_map_poll_interval_s makes one that lags behind the control database)."""
    config = GatewayConfig(
        control_dsn=control_dsn, listen="127.0.0.1:0", security=security.server_security()
    )
    gateway = Gateway(replace(config, **options))  # type: ignore[arg-type]
    await gateway.start()
    task = asyncio.create_task(gateway.run())
    try:
        yield gateway
    finally:
        gateway.request_stop()
        await asyncio.wait_for(task, timeout=30)


@contextlib.asynccontextmanager
async def in_process_cluster(
    pg: EmbeddedPostgres,
    prefix: str,
    shard_count: int,
    gateway_options: dict[str, object] | None = None,
    **node_options: object,
) -> AsyncIterator[InProcessCluster]:
    """A control database with an even slot map, a node per shard (each on its own database,
    named from prefix) and a gateway (GatewayConfig fields in gateway_options); all stopped on
    the way out."""
    names = [f"{prefix}_s{shard_id}" for shard_id in range(shard_count)]
    # The databases, then the nodes, made side by side (a cluster is the setup of some 150
    # tests, and each step waits on PostgreSQL).
    control_dsn, *_ = await asyncio.gather(
        control_database(pg, f"{prefix}_control", shard_count),
        *(pg.create_database_async(name) for name in names),
    )
    nodes: list[NodeHandle] = []
    gateway: Gateway | None = None
    task: asyncio.Task[None] | None = None
    try:
        started = await asyncio.gather(
            *(
                start_node(pg.dsn(name), control_dsn=control_dsn, shard_id=shard_id, **node_options)
                for shard_id, name in enumerate(names)
            ),
            return_exceptions=True,
        )
        nodes = [handle for handle in started if isinstance(handle, NodeHandle)]
        failed = [error for error in started if isinstance(error, BaseException)]
        if failed:
            raise failed[0]
        config = GatewayConfig(
            control_dsn=control_dsn, listen="127.0.0.1:0", security=security.server_security()
        )
        gateway = Gateway(replace(config, **(gateway_options or {})))  # type: ignore[arg-type]
        await gateway.start()
        task = asyncio.create_task(gateway.run())
        yield InProcessCluster(control_dsn, nodes, gateway, task)
    finally:
        if gateway is not None and task is not None:
            gateway.request_stop()
            await asyncio.wait_for(task, timeout=30)
        for node in nodes:
            await node.stop()
