"""Cross-shard transactions survive kill -9 of any process at any step of two-phase commit.

Four `tally node` processes and a `tally gateway` process run on the session's embedded
PostgreSQL (a database per shard plus the control database). Failpoints (shards/failpoints.py,
armed per process through TALLY_FAILPOINTS) stop a process at an exact protocol step; the
participants' deadline is shortened to DEADLINE_S through TALLY_PREPARE_DEADLINE_S.

In every case, once the crashed process is back: the transaction is wholly applied or wholly
absent on every shard (read directly in PostgreSQL), nothing stays held past the deadline, the
clearing pieces net to zero, every shard audits clean, and a retry with the same id returns the
outcome that was decided, as often as it is asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from core.ids import abort_marker_id, piece_id, settlement_id
from core.model import Kind, Leg, Status
from shards.crossshard.coordinator import piece_message, split_pieces
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tally.v1 import shard_pb2 as spb
from tally.v1 import shard_pb2_grpc as spb_grpc
from tests.support import security
from tests.support.cluster_processes import (
    ProcessCluster,
    fetch_each_shard,
    pending_anywhere,
    process_cluster,
    wait_gateway_reaches_every_shard,
    wait_log,
    wait_nothing_pending,
)
from tests.support.crossshard_crash import (
    AMOUNT,
    CLEARING,
    DEADLINE_S,
    FUNDING,
    SETTLE_SLACK_S,
    Pair,
    check_clearing_nets_to_zero,
    connected_to,
    funded_pair,
    gateway_environment,
    held_on,
    open_accounts,
    retry_twice,
)
from tests.support.helpers import CREDIT, DEBIT, Client, audit_problems, leg, name, transfer
from tests.support.processes import fetch_rows

# ---- what each shard's database says about one transaction ----


def related_patterns(transaction_id: str) -> list[str]:
    """LIKE patterns of the transaction's records: the coordinator's commit (the id itself),
    each attempt's abort marker and participant piece, and the pieces' resolutions."""
    return [
        transaction_id,
        f"~abort/%/{transaction_id}",
        f"~piece/%/{transaction_id}",
        f"~commit/~piece/%/{transaction_id}",
        f"~void/~piece/%/{transaction_id}",
    ]


Row = dict[str, Any]


async def rows_by_shard(cluster: ProcessCluster, transaction_id: str) -> list[dict[str, Row]]:
    """Per shard: id -> its transactions row, for the transaction and its related records."""
    query = "SELECT * FROM transactions WHERE id LIKE ANY($1::text[])"
    found = await fetch_each_shard(cluster, query, related_patterns(transaction_id))
    return [{row["id"]: dict(row) for row in rows} for rows in found]


async def posted_by_shard(cluster: ProcessCluster, transaction_id: str) -> list[dict[str, int]]:
    """Per shard: account -> net posted amount (debit positive) written by the transaction's
    records, leaving out zero nets."""
    query = """
        SELECT account_id,
               sum(CASE WHEN is_debit THEN posted_amount ELSE -posted_amount END) AS net
        FROM postings WHERE transaction_id LIKE ANY($1::text[]) GROUP BY account_id
    """
    found = await fetch_each_shard(cluster, query, related_patterns(transaction_id))
    return [{r["account_id"]: int(r["net"]) for r in rows if r["net"]} for rows in found]


async def check_outcome(
    cluster: ProcessCluster, client: Client, pair: Pair, transaction_id: str, applied: bool
) -> list[dict[str, Row]]:
    """The transaction is wholly applied (by exactly one attempt) or wholly absent on every
    shard, nothing is held, clearing nets to zero, every shard audits clean. Returns the rows
    per shard."""
    context = cluster.describe
    await wait_gateway_reaches_every_shard(client, "@cash")
    rows = await rows_by_shard(cluster, transaction_id)
    coordinator, participant = rows[pair.coordinator], rows[pair.participant]
    committed_attempt = ""
    if applied:
        commit = coordinator.get(transaction_id)
        assert commit is not None, (coordinator, context())
        assert (commit["kind"], commit["status"]) == (Kind.COMMIT, Status.POSTED)
        committed_attempt = commit["target_id"].split("/")[1]
    else:
        assert transaction_id not in coordinator, (coordinator, context())
    markers = {i.split("/")[1] for i in coordinator if i.startswith("~abort/")}
    assert set(coordinator) - {transaction_id} == {
        abort_marker_id(transaction_id, a) for a in markers
    }
    assert committed_attempt not in markers
    pieces = {i.split("/")[1] for i in participant if i.startswith("~piece/")}
    assert pieces, (participant, context())
    assert (committed_attempt in pieces) == applied
    expected_rows = set()
    for attempt in pieces:
        piece = piece_id(transaction_id, attempt)
        resolution = settlement_id(piece, attempt == committed_attempt)
        expected_rows |= {piece, resolution}
        assert participant[piece]["kind"] == Kind.PREPARED
        assert participant[piece]["resolved_by_id"] == resolution, (participant, context())
        assert participant[piece]["status"] == (
            Status.PENDING_POSTED if attempt == committed_attempt else Status.PENDING_VOIDED
        )
    assert set(participant) == expected_rows, (participant, context())
    for shard_id, found in enumerate(rows):
        if shard_id not in (pair.coordinator, pair.participant):
            assert found == {}, (shard_id, found)

    expected: list[dict[str, int]] = [{} for _ in cluster.shard_dsns]
    if applied:
        expected[pair.coordinator] = {pair.payer: AMOUNT, CLEARING: -AMOUNT}
        expected[pair.participant] = {pair.payee: -AMOUNT, CLEARING: AMOUNT}
    assert await posted_by_shard(cluster, transaction_id) == expected

    assert await pending_anywhere(cluster) == []
    moved = AMOUNT if applied else 0
    payer, payee = await client.balance(pair.payer), await client.balance(pair.payee)
    assert (payer.available, payee.available) == (FUNDING - moved, FUNDING + moved)
    await check_clearing_nets_to_zero(client)
    for dsn in cluster.shard_dsns:
        assert await audit_problems(dsn) == []
    return rows


def piece_rows(rows: dict[str, Row], transaction_id: str) -> list[Row]:
    return [
        row
        for i, row in rows.items()
        if i.startswith("~piece/") and i.endswith(f"/{transaction_id}")
    ]


# ---- the scenarios ----


async def test_participant_killed_after_it_prepared(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    """The participant answers its prepare, then dies (kill -9). The gateway goes on: the
    coordinator records commit and the client is told CREATED; the resolve cannot reach the
    dead participant. Restarted, the participant finds its piece overdue, asks the coordinator
    and posts it within the deadline; a retry is REPLAYED with the commit's timestamp."""
    environment = gateway_environment("gateway.after_prepare=sleep:2")
    async with process_cluster(pg, tmp_path, gateway_environment=environment) as cluster:
        async with connected_to(cluster.target) as client:
            pair = await funded_pair(cluster, client)
            message = pair.transfer("t-participant")
            post = asyncio.create_task(client.post(message))
            try:
                assert cluster.gateway is not None
                await wait_log(cluster.gateway, "failpoint gateway.after_prepare reached")
                assert pair.id("t-participant") in await held_on(cluster, pair.participant)
                await cluster.kill_node(pair.participant)
                (result,) = await asyncio.wait_for(post, timeout=30)
            finally:
                if not post.done():
                    post.cancel()
                    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                        await post
            assert result.code == pb.RESULT_CODE_CREATED, (name(result.code), result.message)
            # Decided and answered; the dead participant still holds its piece.
            assert pair.id("t-participant") in await held_on(cluster, pair.participant)

        # Restart the participant; replace the gateway by one without the failpoint (retries
        # would stall in it).
        await cluster.kill_gateway()
        await asyncio.gather(
            cluster.start_node(pair.participant), cluster.start_gateway(gateway_environment())
        )
        settled_s = await wait_nothing_pending(cluster, timeout_s=DEADLINE_S + 10)
        assert settled_s <= DEADLINE_S + SETTLE_SLACK_S, settled_s

        async with connected_to(cluster.target) as client:
            rows = await check_outcome(
                cluster, client, pair, pair.id("t-participant"), applied=True
            )
            assert (
                rows[pair.coordinator][pair.id("t-participant")]["timestamp_ns"]
                == result.timestamp_ns
            )
            again = await retry_twice(client, message)
        assert (again.code, again.timestamp_ns) == (pb.RESULT_CODE_REPLAYED, result.timestamp_ns)


async def test_coordinator_killed_after_recording_the_decision(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """The coordinator commits its piece (the decision, durable) and dies before answering. The
    gateway asks it (an Abort of the attempt) and cannot reach it either: the client is told
    OUTCOME_UNKNOWN (never UNAVAILABLE, "nothing was applied": it was), and the participant
    keeps holding. With
    the coordinator back, the participant's deadline sweep asks it, learns "committed" and posts
    its piece, without any retry; a retry then is REPLAYED with the commit's timestamp."""
    coordinator = 2
    environments = {coordinator: {"TALLY_FAILPOINTS": "shard.after_commit=exit"}}
    async with process_cluster(
        pg, tmp_path, gateway_environment=gateway_environment(), node_environments=environments
    ) as cluster:
        async with connected_to(cluster.target) as client:
            pair = await funded_pair(cluster, client, coordinator=coordinator)
            message = pair.transfer("t-coordinator")
            (result,) = await client.post(message)
        assert result.code == pb.RESULT_CODE_OUTCOME_UNKNOWN, (name(result.code), result.message)
        assert "retry with the same id" in result.message
        dead = cluster.nodes[coordinator]
        assert await asyncio.wait_for(dead.process.wait(), timeout=10) == -9
        assert "failpoint shard.after_commit reached" in (dead.log_tail() or "")

        rows = await rows_by_shard(cluster, pair.id("t-coordinator"))
        assert rows[coordinator][pair.id("t-coordinator")]["kind"] == Kind.COMMIT  # decided
        assert await held_on(cluster, pair.participant) == {
            pair.id("t-coordinator")
        }  # not yet heard

        await cluster.start_node(coordinator)
        settled_s = await wait_nothing_pending(cluster, timeout_s=DEADLINE_S + 10)
        assert settled_s <= DEADLINE_S + SETTLE_SLACK_S, settled_s

        async with connected_to(cluster.target) as client:
            rows = await check_outcome(
                cluster, client, pair, pair.id("t-coordinator"), applied=True
            )
            committed_at = rows[coordinator][pair.id("t-coordinator")]["timestamp_ns"]
            again = await retry_twice(client, message)
        assert (again.code, again.timestamp_ns) == (pb.RESULT_CODE_REPLAYED, committed_at)


async def test_gateway_killed_between_prepare_and_commit(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """The gateway dies (kill -9) after the participant prepared, before any decision. The
    participant holds the funds until its deadline, then asks the coordinator, which records
    the attempt's abort (presumed abort); the piece is voided and nothing is applied. A retry
    through a new gateway is a new attempt: it applies the transfer once, and retries after
    it are replays."""
    environment = gateway_environment("gateway.after_prepare=exit")
    async with process_cluster(pg, tmp_path, gateway_environment=environment) as cluster:
        async with connected_to(cluster.target) as client:
            pair = await funded_pair(cluster, client, coordinator=1)
            message = pair.transfer("t-gateway")
            with pytest.raises(grpc.aio.AioRpcError) as lost:
                await client.post(message)
        assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
        assert cluster.gateway is not None
        assert await asyncio.wait_for(cluster.gateway.process.wait(), timeout=10) == -9

        rows = await rows_by_shard(cluster, pair.id("t-gateway"))
        assert rows[pair.coordinator] == {}  # no decision
        (prepared,) = piece_rows(rows[pair.participant], pair.id("t-gateway"))
        prepared_at_ns = prepared["timestamp_ns"]
        payee = await fetch_rows(
            cluster.shard_dsns[pair.participant],
            "SELECT credits_pending FROM accounts WHERE id = $1",
            pair.payee,
        )
        assert payee[0]["credits_pending"] == AMOUNT  # held

        await cluster.start_gateway(gateway_environment())
        await wait_nothing_pending(cluster, timeout_s=DEADLINE_S + 10)
        settled_after_s = (time.time_ns() - prepared_at_ns) / 1e9
        assert settled_after_s <= DEADLINE_S + SETTLE_SLACK_S, settled_after_s

        async with connected_to(cluster.target) as client:
            rows = await check_outcome(cluster, client, pair, pair.id("t-gateway"), applied=False)
            (marker,) = rows[pair.coordinator].values()
            assert marker["code"] == pb.RESULT_CODE_ABORTED
            assert "deadline passed" in marker["metadata"]
            again = await retry_twice(client, message)
            assert again.code == pb.RESULT_CODE_CREATED, (name(again.code), again.message)
            # Applied once, by the retry's attempt; the first attempt stays aborted.
            await check_outcome(cluster, client, pair, pair.id("t-gateway"), applied=True)


async def test_gateway_killed_after_the_decision_before_resolving(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """The gateway dies (kill -9) right after the coordinator recorded commit, before telling
    the participant or the client. The participant's deadline sweep learns "committed" from the
    coordinator and posts its piece; a retry through a new gateway is REPLAYED with the commit's
    timestamp."""
    environment = gateway_environment("gateway.after_commit=exit")
    async with process_cluster(pg, tmp_path, gateway_environment=environment) as cluster:
        async with connected_to(cluster.target) as client:
            pair = await funded_pair(cluster, client, coordinator=3)
            message = pair.transfer("t-decided")
            with pytest.raises(grpc.aio.AioRpcError) as lost:
                await client.post(message)
        assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
        assert cluster.gateway is not None
        assert await asyncio.wait_for(cluster.gateway.process.wait(), timeout=10) == -9

        rows = await rows_by_shard(cluster, pair.id("t-decided"))
        assert rows[pair.coordinator][pair.id("t-decided")]["kind"] == Kind.COMMIT
        (prepared,) = piece_rows(rows[pair.participant], pair.id("t-decided"))
        prepared_at_ns = prepared["timestamp_ns"]
        await cluster.start_gateway(gateway_environment())
        await wait_nothing_pending(cluster, timeout_s=DEADLINE_S + 10)
        settled_after_s = (time.time_ns() - prepared_at_ns) / 1e9
        assert settled_after_s <= DEADLINE_S + SETTLE_SLACK_S, settled_after_s

        async with connected_to(cluster.target) as client:
            rows = await check_outcome(cluster, client, pair, pair.id("t-decided"), applied=True)
            committed_at = rows[pair.coordinator][pair.id("t-decided")]["timestamp_ns"]
            again = await retry_twice(client, message)
        assert (again.code, again.timestamp_ns) == (pb.RESULT_CODE_REPLAYED, committed_at)


async def test_a_dead_coordinator_holds_back_only_its_own_pieces(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """A participant holds overdue pieces of two coordinators, the older one's coordinator dead
    (kill -9). The live coordinator's piece is settled within the deadline all the same; the
    dead one's is settled once its coordinator is back."""
    async with process_cluster(pg, tmp_path, gateway_environment=gateway_environment()) as cluster:
        participant, dead, alive = 0, 1, 2
        async with connected_to(cluster.target) as client:
            payee, payer_dead, payer_alive = await open_accounts(
                cluster, client, [participant, dead, alive], clearing=True
            )
        await cluster.kill_node(dead)
        # Each named under its payer's partition key: its home is its payer's shard.
        t_dead, t_alive = (
            f"{x.split('/')[0]}/{n}" for x, n in ((payer_dead, "t-dead"), (payer_alive, "t-alive"))
        )
        messages = {
            t_dead: transfer(t_dead, payer_dead, payee, 10),
            t_alive: transfer(t_alive, payer_alive, payee, 20),
        }
        async with security.cluster_channel(cluster.node_internal_target(participant)) as channel:
            stub = spb_grpc.ShardStub(channel)
            for transaction_id, message in messages.items():  # t-dead first: it is older
                legs = tuple(
                    Leg(x.account_id, x.side == pb.SIDE_DEBIT, x.amount, x.currency)
                    for x in message.legs
                )
                coordinator, pieces = split_pieces(legs, cluster.slot_map)
                item = spb.PrepareItem(
                    piece=piece_message(message, pieces[participant]),
                    coordinator_shard=coordinator,
                    deadline_seconds=1,
                    attempt="a1",
                )
                prepared = await stub.Prepare(spb.PrepareRequest(items=[item]), timeout=10)
                assert prepared.results[0].code == pb.RESULT_CODE_CREATED, transaction_id
        assert await held_on(cluster, participant) == {t_dead, t_alive}

        deadline = time.monotonic() + 1 + SETTLE_SLACK_S + 2
        while t_alive in await held_on(cluster, participant):
            assert time.monotonic() < deadline, (
                "the live coordinator's piece stayed held behind the dead one's\n"
                + cluster.describe()
            )
            await asyncio.sleep(0.1)
        assert await held_on(cluster, participant) == {t_dead}

        await cluster.start_node(dead)
        await wait_nothing_pending(cluster, timeout_s=10)
        rows = await rows_by_shard(cluster, t_dead)
        assert rows[dead].keys() == {f"~abort/a1/{t_dead}"}
        async with connected_to(cluster.target) as client:
            for transaction_id, message in messages.items():
                # The aborted attempts left the ids free: the retries apply them, once.
                again = await retry_twice(client, message)
                assert again.code == pb.RESULT_CODE_CREATED, transaction_id
            assert (await client.balance(payee)).credits_posted == FUNDING + 30
            await check_clearing_nets_to_zero(client)
        for dsn in cluster.shard_dsns:
            assert await audit_problems(dsn) == []


async def test_cross_shard_reuse_of_a_single_shard_id_is_refused_and_holds_nothing(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """An id already used by a single-shard transaction on the coordinator, sent again with
    legs across shards: the client is told IDEMPOTENCY_CONFLICT, and the participant's piece
    does not stay held."""
    async with process_cluster(pg, tmp_path, gateway_environment=gateway_environment()) as cluster:
        async with connected_to(cluster.target) as client:
            pair = await funded_pair(cluster, client)
            first = transfer(pair.id("reused"), "@cash", pair.payer, 5)  # on the coordinator only
            assert await client.codes(first) == [pb.RESULT_CODE_CREATED]
            (result,) = await client.post(pair.transfer("reused"))
            settled = True
            try:
                await wait_nothing_pending(cluster, timeout_s=DEADLINE_S + SETTLE_SLACK_S)
            except AssertionError:
                settled = False
        assert (name(result.code), settled) == ("RESULT_CODE_IDEMPOTENCY_CONFLICT", True), (
            result.message
        )


async def test_a_restarted_participant_asks_about_its_pieces_at_once(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """The gateway dies after the participant prepared (no decision), then the participant is
    killed too. With a prepare deadline of 10 minutes, the restarted participant does not keep
    the amount held until then: its new writer asks the coordinator about every piece an
    earlier writer held, the coordinator records the attempt's abort, and the piece is voided
    while its deadline is still far off. Nothing is applied; a retry applies it once."""
    long_deadline_s = 600
    environment = {
        "TALLY_PREPARE_DEADLINE_S": str(long_deadline_s),
        "TALLY_FAILPOINTS": "gateway.after_prepare=exit",
    }
    async with process_cluster(
        pg, tmp_path, gateway_environment=environment, shard_count=3
    ) as cluster:
        async with connected_to(cluster.target) as client:
            pair = await funded_pair(cluster, client, coordinator=1)
            message = pair.transfer("t-inherited")
            with pytest.raises(grpc.aio.AioRpcError):
                await client.post(message)
        assert cluster.gateway is not None
        assert await asyncio.wait_for(cluster.gateway.process.wait(), timeout=10) == -9
        (piece,) = piece_rows(
            (await rows_by_shard(cluster, pair.id("t-inherited")))[pair.participant],
            pair.id("t-inherited"),
        )
        await cluster.kill_node(pair.participant)
        await asyncio.gather(
            cluster.start_node(pair.participant), cluster.start_gateway(gateway_environment())
        )
        await wait_nothing_pending(cluster, timeout_s=60)
        assert time.time_ns() < piece["timestamp_ns"] + long_deadline_s * 10**9 // 2
        assert "earlier writer held" in (cluster.nodes[pair.participant].log_tail() or "")
        async with connected_to(cluster.target) as client:
            await check_outcome(cluster, client, pair, pair.id("t-inherited"), applied=False)
            again = await retry_twice(client, message)
            assert again.code == pb.RESULT_CODE_CREATED, (name(again.code), again.message)
            await check_outcome(cluster, client, pair, pair.id("t-inherited"), applied=True)


async def test_a_participant_down_at_prepare_leaves_nothing_held_at_the_others(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """A transfer over three shards while one participant is down: the prepare there fails, so
    the attempt is not committed and the client is told UNAVAILABLE (nothing applied). The
    attempt's abort is recorded at the coordinator and the participant that did prepare voids
    its piece at once, though its deadline is 10 minutes off: a retry meanwhile would otherwise
    hold the payee's amount a second time. With the participant back, a retry applies it once."""
    environment = {"TALLY_PREPARE_DEADLINE_S": "600"}
    async with process_cluster(
        pg, tmp_path, gateway_environment=environment, shard_count=3
    ) as cluster:
        async with connected_to(cluster.target) as client:
            payer, payee, absent = await open_accounts(cluster, client, [0, 1, 2])

            def three(name: str, amount: int) -> pb.Transaction:
                legs = [leg(payer, DEBIT, 2 * amount), leg(payee, CREDIT, amount)]
                legs.append(leg(absent, CREDIT, amount))
                return pb.Transaction(id=f"{payer.split('/')[0]}/{name}", code=1, legs=legs)

            # One across the three shards first: the gateway knows their clearing accounts.
            assert await client.codes(three("t-first", 1)) == [pb.RESULT_CODE_CREATED]
            message = three("t-three", AMOUNT)
            await cluster.kill_node(2)
            (result,) = await client.post(message)
            assert result.code == pb.RESULT_CODE_UNAVAILABLE, (name(result.code), result.message)
            assert await held_on(cluster, 1) == set()  # voided, not held until the deadline
            await cluster.start_node(2)
            await wait_gateway_reaches_every_shard(client, "@cash")
            again = await retry_twice(client, message)
            assert again.code in (pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED), name(again.code)
            assert (await client.balance(payee)).credits_posted == FUNDING + AMOUNT + 1
            assert (await client.balance(absent)).credits_posted == FUNDING + AMOUNT + 1
        assert await pending_anywhere(cluster) == []
        for dsn in cluster.shard_dsns:
            assert await audit_problems(dsn) == [], dsn


async def test_an_attempt_whose_commit_never_reached_its_coordinator_is_aborted_once_it_is_back(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """The coordinator dies (kill -9) after the participant prepared and before the gateway's
    Commit: the Commit cannot be delivered, so the attempt can never commit and the client is
    told UNAVAILABLE. While it stays down, the gateway prepares nothing more coordinated there
    (another transfer is UNAVAILABLE with nothing held). The gateway keeps the attempt and
    records its abort as soon as the coordinator is back, so the participant voids its piece
    then, not at its deadline 10 minutes off. A retry applies the transfer once."""
    environment = {
        "TALLY_PREPARE_DEADLINE_S": "600",
        "TALLY_FAILPOINTS": "gateway.after_prepare=sleep:2",
    }
    async with process_cluster(
        pg, tmp_path, gateway_environment=environment, shard_count=2
    ) as cluster:
        async with connected_to(cluster.target) as client:
            pair = await funded_pair(cluster, client)
            message = pair.transfer("t-undelivered")
            post = asyncio.create_task(client.post(message))
            assert cluster.gateway is not None
            await wait_log(cluster.gateway, "failpoint gateway.after_prepare reached")
            await cluster.kill_node(pair.coordinator)
            (result,) = await asyncio.wait_for(post, timeout=60)
            assert result.code == pb.RESULT_CODE_UNAVAILABLE, (name(result.code), result.message)
            assert pair.id("t-undelivered") in await held_on(cluster, pair.participant)
            # While the coordinator stays down, nothing more is prepared for it: a retry would
            # only hold the amount again.
            (refused,) = await client.post(pair.transfer("t-while-down"))
            assert refused.code == pb.RESULT_CODE_UNAVAILABLE, name(refused.code)
            assert "cannot be reached" in refused.message
            assert await held_on(cluster, pair.participant) == {pair.id("t-undelivered")}
            await cluster.start_node(pair.coordinator)
            await wait_nothing_pending(cluster, timeout_s=60)  # not 600 s
            await wait_log(cluster.gateway, "aborted 1 attempts whose commit had not reached")
            rows = await rows_by_shard(cluster, pair.id("t-undelivered"))
            (marker,) = rows[pair.coordinator].values()
            assert marker["code"] == pb.RESULT_CODE_UNAVAILABLE
        # A gateway without the failpoint for the retry.
        await cluster.kill_gateway()
        await cluster.start_gateway({"TALLY_PREPARE_DEADLINE_S": "600"})
        async with connected_to(cluster.target) as client:
            again = await retry_twice(client, message)
            assert again.code == pb.RESULT_CODE_CREATED, (name(again.code), again.message)
            await check_outcome(cluster, client, pair, pair.id("t-undelivered"), applied=True)
