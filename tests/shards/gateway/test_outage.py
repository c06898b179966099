"""A shard that does not answer the gateway's first cross-shard call of a currency (readying
its clearing account) makes that transfer retryable, not an UNKNOWN error."""

from __future__ import annotations

from typing import Any

from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc
from tests.support import security
from tests.support.helpers import account, in_process_cluster, transfer


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
