"""A shard that does not answer the gateway's first cross-shard call of a currency (readying
its clearing account) makes that transfer retryable, not an UNKNOWN error."""

from __future__ import annotations

from typing import Any

from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc
from tests.support import security
from tests.support.helpers import account, control_database, in_process_cluster, transfer


async def test_a_shard_down_before_the_first_cross_shard_transfer_is_retryable(pg: Any) -> None:
    async with in_process_cluster(pg, "outage_clearing", 2) as cluster:
        slot_map = cluster.gateway.cluster.map()
        ids = [f"cust-{n}/deposit" for n in range(40)]
        by_shard: dict[int, str] = {}
        for account_id in ids:
            by_shard.setdefault(slot_map.shard_of_account(account_id), account_id)
        payer, payee = by_shard[0], by_shard[1]
        async with security.channel(cluster.target) as channel:
            stub = pb_grpc.LedgerStub(channel)
            created = await stub.CreateAccounts(
                pb.CreateAccountsRequest(accounts=[account(payer), account(payee)])
            )
            assert {r.code for r in created.results} == {pb.RESULT_CODE_CREATED}
            await cluster.nodes[1].stop()
            response = await stub.PostTransactions(
                pb.PostTransactionsRequest(transactions=[transfer("x-1", payer, payee, 5)]),
                timeout=60,
            )
        (result,) = response.results
        assert result.code == pb.RESULT_CODE_UNAVAILABLE, result
        assert "retry with the same id" in result.message


async def test_a_shard_with_no_endpoint_yet_is_unavailable(pg: Any) -> None:
    """A shard whose node has not registered (none started, or only a standby) answers every
    request that needs it UNAVAILABLE, not UNKNOWN; a request that does not need it works."""
    import asyncio
    from dataclasses import replace

    import grpc

    from shards.gateway.cluster import GatewayConfig
    from shards.gateway.server import Gateway
    from tests.support.helpers import start_node

    control_dsn = await control_database(pg, "half_control", 2)
    await pg.create_database_async("half_s0")
    node = await start_node(pg.dsn("half_s0"), control_dsn=control_dsn, shard_id=0)
    config = GatewayConfig(control_dsn=control_dsn, listen="127.0.0.1:0")
    gateway = Gateway(replace(config, security=security.server_security()))
    await gateway.start()
    task = asyncio.create_task(gateway.run())
    try:
        slot_map = gateway.cluster.map()
        ids = [f"cust-{n}/deposit" for n in range(40)]
        on = {slot_map.shard_of_account(i): i for i in ids}
        async with security.channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = pb_grpc.LedgerStub(channel)
            with_node = await stub.CreateAccounts(
                pb.CreateAccountsRequest(accounts=[account(on[0])]), timeout=30
            )
            assert with_node.results[0].code == pb.RESULT_CODE_CREATED
            try:
                await stub.BalanceAt(pb.BalanceAtRequest(account_id=on[1], at_ns=1), timeout=30)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                assert "retry" in (error.details() or "")
            else:
                raise AssertionError("a read of a shard with no endpoint succeeded")
    finally:
        gateway.request_stop()
        await asyncio.wait_for(task, timeout=30)
        await node.stop()
