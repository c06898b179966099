"""A write to a paused node (SIGSTOP: a stalled VM, a long GC, a frozen disk) is never answered
"nothing was applied": the gateway's call times out after it may have arrived, so the gateway
sends the same items again once and, with no answer to that either, tells the client
OUTCOME_UNKNOWN. The client's retry with the same id, once the node runs again, is applied
once: REPLAYED if the first call landed, CREATED if it did not, never twice.

Real processes (a gateway and two nodes); the gateway's shard call timeout is set short
(`--shard-call-timeout-s`, here through its environment variable) so the test waits seconds.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tests.support.cluster_processes import process_cluster
from tests.support.crossshard_crash import FUNDING, connected_to, gateway_environment, open_accounts
from tests.support.helpers import audit_problems, transfer
from tests.support.processes import fetch_rows

CALL_TIMEOUT_S = 2.0


async def test_a_write_to_a_paused_node_is_outcome_unknown_and_its_retry_applies_once(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    environment = {**gateway_environment(), "TALLY_SHARD_CALL_TIMEOUT_S": str(CALL_TIMEOUT_S)}
    async with process_cluster(
        pg, tmp_path, gateway_environment=environment, shard_count=2
    ) as cluster:
        async with connected_to(cluster.target) as client:
            (payer,) = await open_accounts(cluster, client, [0])
            key = payer.split("/")[0]
            paid = transfer(f"{key}/paid-while-paused", payer, "@cash", 25)
            node = cluster.nodes[0].process
            node.send_signal(signal.SIGSTOP)
            try:
                (answer,) = await client.post(paid)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    node.send_signal(signal.SIGCONT)
            # Before: UNAVAILABLE, documented as "nothing was applied", though the call may
            # have reached the node; a client believing it would post again with a new id.
            assert answer.code == pb.RESULT_CODE_OUTCOME_UNKNOWN, (answer.code, answer.message)
            assert "retry with the same id" in answer.message, answer.message
            (retried,) = await client.post(paid)
            assert retried.code in (pb.RESULT_CODE_REPLAYED, pb.RESULT_CODE_CREATED), retried
            assert (await client.balance(payer)).debits_posted == 25
            assert (await client.balance(payer)).credits_posted == FUNDING
            rows = await fetch_rows(
                cluster.shard_dsns[0], "SELECT id FROM transactions WHERE id = $1", paid.id
            )
            assert len(rows) == 1
            for dsn in cluster.shard_dsns:
                assert await audit_problems(dsn) == []
