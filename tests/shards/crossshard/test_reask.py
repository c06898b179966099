"""Every held piece of a cross-shard hold has a deadline and is asked about until its hold is
decided; a hold is decided only once every participant's piece has the short deadline.

Real `tally node` and `tally gateway` processes on two shards (tests/support/cluster_processes.py).
A participant's storage refusing writes is a trigger on its journal_blocks table: the writer's
commit fails at its last statement, as on a full disk, and every item of the batch is answered
UNAVAILABLE while the call itself succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from core.model import Status
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tests.support.cluster_processes import process_cluster
from tests.support.crossshard_clocks import (
    HELD,
    books_are_right,
    hold,
    piece_deadline_ns,
    roles_of,
    status_of,
    wait_piece_settled,
)
from tests.support.crossshard_crash import (
    DEADLINE_S,
    SETTLE_SLACK_S,
    connected_to,
    funded_pair,
    gateway_environment,
)
from tests.support.helpers import name, transfer

REASK_S = 3


@contextlib.asynccontextmanager
async def writes_refused(dsn: str) -> AsyncIterator[None]:
    """While inside: every commit of that shard's writer fails (its storage refuses writes)."""
    connection = await asyncpg.connect(dsn, timeout=30.0)
    try:
        await connection.execute(
            """
            CREATE FUNCTION test_refuse_writes() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'; END $$;
            CREATE TRIGGER test_refuse_writes BEFORE INSERT ON journal_blocks
            FOR EACH STATEMENT EXECUTE FUNCTION test_refuse_writes();
            """,
            timeout=30.0,
        )
        yield
    finally:
        await connection.execute(
            "DROP TRIGGER IF EXISTS test_refuse_writes ON journal_blocks;"
            "DROP FUNCTION IF EXISTS test_refuse_writes();",
            timeout=30.0,
        )
        await connection.close(timeout=5.0)


async def test_a_hold_is_not_decided_while_a_participant_cannot_rearm_its_piece(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """The participant answers the re-arm before a post, but its storage refuses the write (its
    result: UNAVAILABLE). The post is not decided, alone or in a linked group: answered
    UNAVAILABLE, the hold open at its coordinator, held everywhere. (Deciding it anyway, the
    participant, which never heard, kept a hold without a timeout that it never asked about
    again.) With the storage back, the retry with the same id posts it on both shards."""
    async with process_cluster(
        pg, tmp_path, gateway_environment=gateway_environment(), shard_count=2
    ) as cluster:
        async with connected_to(cluster.target) as client:
            pair = await funded_pair(cluster, client, coordinator=0)
            created = await client.codes(hold(pair.payer, pair.payee, "h-rearm"))
            assert created == [pb.RESULT_CODE_CREATED]
            roles = await roles_of(cluster, "h-rearm")
            post = pb.Transaction(id="p-rearm", code=1, post_pending_id="h-rearm")
            async with writes_refused(cluster.shard_dsns[roles.participant]):
                (refused,) = await client.post(post)
                assert refused.code == pb.RESULT_CODE_UNAVAILABLE, (
                    name(refused.code),
                    refused.message,
                )
                assert "could not give its piece" in refused.message, refused.message
                # The same in a linked group deciding the hold (the driver's other path).
                # (a linked group's ids share one partition key: the payer's here)
                grouped = pb.Transaction(id=pair.id("p-grouped"), code=1, post_pending_id="h-rearm")
                grouped.linked = True
                fee = transfer(pair.id("fee-grouped"), pair.payer, "@cash", 5)
                answers = await client.post(grouped, fee)
                assert [a.code for a in answers] == [pb.RESULT_CODE_UNAVAILABLE] * 2, answers
                assert "could not give its piece" in answers[0].message, answers
                assert await status_of(cluster, roles.coordinator, "h-rearm") == Status.PENDING
                assert await piece_deadline_ns(cluster, roles) is not None
            (posted,) = await client.post(post)
            assert posted.code == pb.RESULT_CODE_CREATED, (name(posted.code), posted.message)
            await wait_piece_settled(cluster, roles, timeout_s=DEADLINE_S + 10)
            await books_are_right(cluster, client, pair.payer, pair.payee, posted=HELD)


async def test_every_piece_of_an_open_hold_has_a_deadline_and_is_asked_again(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """A hold without a timeout: its participant's piece still has a deadline, HOLD_REASK_S
    after the commit. At it the participant asks the coordinator, hears the hold is open and
    keeps holding, with the next deadline another HOLD_REASK_S on; the hold's post then
    settles it on both shards."""
    reask = {"TALLY_HOLD_REASK_S": str(REASK_S)}
    async with process_cluster(
        pg,
        tmp_path,
        gateway_environment={**gateway_environment(), **reask},
        node_environments={0: reask, 1: reask},
        shard_count=2,
    ) as cluster:
        async with connected_to(cluster.target) as client:
            pair = await funded_pair(cluster, client, coordinator=0)
            before_ns = time.time_ns()
            created = await client.codes(hold(pair.payer, pair.payee, "h-forever"))
            assert created == [pb.RESULT_CODE_CREATED]
            roles = await roles_of(cluster, "h-forever")
            first = await piece_deadline_ns(cluster, roles)
            assert first is not None and first > 0, first  # 0 would be: never asked about
            assert before_ns < first <= time.time_ns() + REASK_S * 10**9, first
            for _ in range(int((REASK_S + 10) / 0.1)):
                later = await piece_deadline_ns(cluster, roles)
                if later != first:
                    break
                await asyncio.sleep(0.1)
            assert later is not None and later >= first + REASK_S * 10**9 // 2, (first, later)
            assert await status_of(cluster, roles.coordinator, "h-forever") == Status.PENDING
            assert (await client.balance(pair.payee)).credits_pending == HELD
            post = pb.Transaction(id="p-forever", code=1, post_pending_id="h-forever")
            assert await client.codes(post) == [pb.RESULT_CODE_CREATED]
            await wait_piece_settled(cluster, roles, timeout_s=SETTLE_SLACK_S + 10)
            await books_are_right(cluster, client, pair.payer, pair.payee, posted=HELD)


async def test_a_piece_left_without_a_deadline_is_armed_when_its_node_starts(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """Older code could leave a held piece with no deadline (a re-arm to 0, now refused), which
    the sweep never takes: held until someone noticed. A writer now arms such pieces when it
    starts (a deadline of now), so the participant asks the coordinator, hears the hold is
    open and keeps it with a re-ask deadline; the hold's post then settles it."""
    reask = {"TALLY_HOLD_REASK_S": str(REASK_S)}
    async with process_cluster(
        pg,
        tmp_path,
        gateway_environment={**gateway_environment(), **reask},
        node_environments={0: reask, 1: reask},
        shard_count=2,
    ) as cluster:
        async with connected_to(cluster.target) as client:
            pair = await funded_pair(cluster, client, coordinator=0)
            assert await client.codes(hold(pair.payer, pair.payee, "h-legacy")) == [
                pb.RESULT_CODE_CREATED
            ]
            roles = await roles_of(cluster, "h-legacy")
            await cluster.kill_node(roles.participant)
            # The rows such a piece has: no deadline on the piece nor in holds.
            dsn = cluster.shard_dsns[roles.participant]
            connection = await asyncpg.connect(dsn, timeout=30.0)
            try:
                await connection.execute(
                    "UPDATE holds SET expires_at_ns = 0 WHERE transaction_id = $1;", roles.piece
                )
                await connection.execute(
                    "UPDATE transactions SET expires_at_ns = 0 WHERE id = $1", roles.piece
                )
            finally:
                await connection.close(timeout=5.0)
            assert await piece_deadline_ns(cluster, roles) == 0
            await cluster.start_node(roles.participant)
            deadline = time.monotonic() + 20
            armed = 0
            while time.monotonic() < deadline:
                armed = await piece_deadline_ns(cluster, roles) or 0
                if armed > time.time_ns():  # asked, heard "open", kept until its re-ask
                    break
                await asyncio.sleep(0.1)
            assert armed > time.time_ns(), (armed, cluster.describe())
            assert await status_of(cluster, roles.coordinator, "h-legacy") == Status.PENDING
            post = pb.Transaction(id="p-legacy", code=1, post_pending_id="h-legacy")
            assert await client.codes(post) == [pb.RESULT_CODE_CREATED]
            await wait_piece_settled(cluster, roles, timeout_s=SETTLE_SLACK_S + 10)
            await books_are_right(cluster, client, pair.payer, pair.payee, posted=HELD)
