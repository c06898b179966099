"""The participant's sweep of pieces past their deadline is fair across coordinators: pieces
of a coordinator that never answers (stopped) cannot hold back another coordinator's pieces,
however many of them come first by deadline (issue 12: the sweep's LIMIT ordered by expiry
starved them)."""

from __future__ import annotations

import asyncio
import os
import time

import asyncpg

from core import ids
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import shard_pb2 as spb
from tally.v1 import shard_pb2_grpc as spb_grpc
from tests.support import security
from tests.support.cluster import SHARD_COUNT, customers_on_distinct_shards
from tests.support.helpers import Client, account, in_process_cluster, names, transfer

CLEARING = ids.clearing_account("USD")
SWEEP_BATCH_MAX = 3
DEAD_PIECE_COUNT = 2 * SWEEP_BATCH_MAX


async def _open_pieces(dsn: str, piece_ids: list[str]) -> set[str]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT transaction_id FROM holds WHERE transaction_id = ANY($1::text[])", piece_ids
        )
    finally:
        await connection.close()
    return {row["transaction_id"] for row in rows}


async def test_a_dead_coordinator_does_not_starve_another_coordinators_pieces(
    pg: EmbeddedPostgres,
) -> None:
    prefix = f"sweep{os.getpid()}_{time.time_ns()}"
    async with in_process_cluster(
        pg, prefix, SHARD_COUNT, expiry_batch_max=SWEEP_BATCH_MAX, expiry_interval_ms=100
    ) as cluster:
        customer = customers_on_distinct_shards(SHARD_COUNT)[0]  # on shard 0
        participant = cluster.nodes[0]
        async with (
            security.channel(cluster.target) as gateway,
            security.cluster_channel(participant.internal_target) as internal,
        ):
            client = Client(gateway)
            assert names(await client.create(account(f"{customer}/dep"))) == ["RESULT_CODE_CREATED"]
            stub = spb_grpc.ShardStub(internal)
            await stub.CreateClearingAccounts(
                spb.CreateClearingAccountsRequest(currencies=["USD"]), timeout=30
            )
            # Shard 1's pieces fall due first, and outnumber what one sweep takes.
            items = [
                spb.PrepareItem(
                    piece=transfer(f"dead-{n}", f"{customer}/dep", CLEARING, 1),
                    coordinator_shard=1,
                    deadline_seconds=1,
                    attempt="a1",
                )
                for n in range(DEAD_PIECE_COUNT)
            ]
            items.append(
                spb.PrepareItem(
                    piece=transfer("alive-0", f"{customer}/dep", CLEARING, 1),
                    coordinator_shard=2,
                    deadline_seconds=2,
                    attempt="a1",
                )
            )
            prepared = await stub.Prepare(spb.PrepareRequest(items=items), timeout=30)
            assert set(names([r.code for r in prepared.results])) == {"RESULT_CODE_CREATED"}
        await cluster.nodes[1].stop()  # the coordinator of the first pieces never answers
        dead = [ids.piece_id(f"dead-{n}", "a1") for n in range(DEAD_PIECE_COUNT)]
        alive = ids.piece_id("alive-0", "a1")
        open_pieces = await _open_pieces(participant.dsn, [*dead, alive])
        assert open_pieces == {*dead, alive}
        deadline = time.monotonic() + 20.0
        while alive in open_pieces and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            open_pieces = await _open_pieces(participant.dsn, [*dead, alive])
        # Shard 2 had no decision: it recorded the abort, and the piece here was voided.
        assert alive not in open_pieces
        assert open_pieces == set(dead)  # nobody to ask: still held, asked again next sweep
