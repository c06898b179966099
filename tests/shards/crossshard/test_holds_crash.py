"""Cross-shard holds survive kill -9 of any process while their fate is decided.

Real `tally node` and `tally gateway` processes (tests/support/cluster_processes.py), failpoints at
exact protocol steps, the participants' deadline shortened to DEADLINE_S. In each case, once
the crashed process is back: the hold's fate is applied on every shard or on none, nothing is
held that should not be, within the deadline; a retry with the same id is answered with the
decided outcome; the clearing pieces net to zero and the cluster audit is clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import grpc
import pytest

from core import audit
from core.audit import AuditConfig
from core.model import Kind, Status
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tests.support.cluster_processes import (
    ProcessCluster,
    process_cluster,
    wait_log,
    wait_nothing_pending,
)
from tests.support.crossshard_crash import (
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
from tests.support.helpers import CREDIT, DEBIT, Client, account, leg, name, transfer
from tests.support.processes import fetch_rows

HELD = 400


def hold(pair: Pair, transaction_id: str, timeout_seconds: int = 0) -> pb.Transaction:
    return transfer(
        pair.id(transaction_id),
        pair.payer,
        pair.payee,
        HELD,
        pending=True,
        timeout_seconds=timeout_seconds,
    )


async def record(cluster: ProcessCluster, shard_id: int, transaction_id: str) -> dict[str, object]:
    rows = await fetch_rows(
        cluster.shard_dsns[shard_id], "SELECT * FROM transactions WHERE id = $1", transaction_id
    )
    assert len(rows) == 1, (shard_id, transaction_id, rows)
    return dict(rows[0])


async def books_are_right(cluster: ProcessCluster, client: Client, pair: Pair, posted: int) -> None:
    """Nothing held anywhere; `posted` moved from payer to payee; the cluster audit clean."""
    assert await held_on(cluster, pair.coordinator) == set()
    assert await held_on(cluster, pair.participant) == set()
    payer, payee = await client.balance(pair.payer), await client.balance(pair.payee)
    assert (payer.available, payer.debits_pending) == (FUNDING - posted, 0)
    assert (payee.available, payee.credits_pending) == (FUNDING + posted, 0)
    await check_clearing_nets_to_zero(client)
    report = await audit.audit_cluster(cluster.shard_dsns, AuditConfig())
    problems = [f.message for shard in report.shards for f in shard.findings]
    assert report.ok, problems + [f.message for f in report.cluster_problems]
    assert (report.cross_shard.in_flight_count, report.cross_shard.open_hold_count) == (0, 0)


async def test_gateway_killed_after_the_post_was_decided(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """The coordinator records the post (the hold's fate) and the gateway dies (kill -9)
    before any participant hears it. The participant's piece had been given the short
    deadline first: at it, the participant asks the coordinator and posts its share. A retry
    through a new gateway is REPLAYED with the post's timestamp."""
    environment = gateway_environment("gateway.after_hold_decided=exit")
    async with process_cluster(pg, tmp_path, gateway_environment=environment) as cluster:
        async with connected_to(cluster.target) as client:
            pair = await funded_pair(cluster, client, coordinator=1)
            assert await client.codes(hold(pair, "h-gw", timeout_seconds=600)) == [
                pb.RESULT_CODE_CREATED
            ]
            post = pb.Transaction(
                id=pair.id("p-gw"),
                code=1,
                post_pending_id=pair.id("h-gw"),
                legs=[leg(pair.payer, DEBIT, 250), leg(pair.payee, CREDIT, 250)],
            )
            with pytest.raises(grpc.aio.AioRpcError) as lost:
                await client.post(post)
        assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
        assert cluster.gateway is not None
        assert await asyncio.wait_for(cluster.gateway.process.wait(), timeout=10) == -9

        decided = await record(cluster, pair.coordinator, pair.id("h-gw"))
        assert (decided["kind"], decided["status"]) == (Kind.HOLD, Status.PENDING_POSTED)
        assert await held_on(cluster, pair.participant) == {pair.id("h-gw")}  # not told
        posted_at = (await record(cluster, pair.coordinator, pair.id("p-gw")))["timestamp_ns"]

        await cluster.start_gateway(gateway_environment())
        await wait_nothing_pending(cluster, timeout_s=DEADLINE_S + 10)
        settled_s = (time.time_ns() - int(str(posted_at))) / 1e9
        assert settled_s <= DEADLINE_S + SETTLE_SLACK_S, settled_s
        async with connected_to(cluster.target) as client:
            await books_are_right(cluster, client, pair, posted=250)
            again = await retry_twice(client, post)
            assert (again.code, again.timestamp_ns) == (pb.RESULT_CODE_REPLAYED, posted_at)
            late_void = await client.post(
                pb.Transaction(id=pair.id("v"), code=1, void_pending_id=pair.id("h-gw"))
            )
            assert late_void[0].code == pb.RESULT_CODE_PENDING_ALREADY_RESOLVED


async def test_coordinator_killed_after_recording_a_void(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """The coordinator records the void and dies before answering: the client is told
    UNAVAILABLE and the participant keeps holding. With the coordinator back, the
    participant's short deadline passes, it asks, and releases its piece; a retry is
    REPLAYED."""
    coordinator = 2
    environments = {coordinator: {"TALLY_FAILPOINTS": "shard.after_hold_decided=exit"}}
    async with process_cluster(
        pg, tmp_path, gateway_environment=gateway_environment(), node_environments=environments
    ) as cluster:
        async with connected_to(cluster.target) as client:
            pair = await funded_pair(cluster, client, coordinator=coordinator)
            assert await client.codes(hold(pair, "h-co")) == [pb.RESULT_CODE_CREATED]
            void = pb.Transaction(id=pair.id("v-co"), code=1, void_pending_id=pair.id("h-co"))
            (result,) = await client.post(void)
        assert result.code == pb.RESULT_CODE_UNAVAILABLE, (name(result.code), result.message)
        dead = cluster.nodes[coordinator]
        assert await asyncio.wait_for(dead.process.wait(), timeout=10) == -9
        assert "failpoint shard.after_hold_decided reached" in (dead.log_tail() or "")
        decided = await record(cluster, coordinator, pair.id("h-co"))
        assert decided["status"] == Status.PENDING_VOIDED
        assert await held_on(cluster, pair.participant) == {pair.id("h-co")}

        await cluster.start_node(coordinator)
        await wait_nothing_pending(cluster, timeout_s=DEADLINE_S + 10)
        async with connected_to(cluster.target) as client:
            await books_are_right(cluster, client, pair, posted=0)
            again = await retry_twice(client, void)
            assert again.code == pb.RESULT_CODE_REPLAYED, (name(again.code), again.message)


async def test_participant_killed_before_it_heard_the_hold_commit(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """The hold commits at the coordinator; the participant dies (kill -9) before being told
    to keep its piece until the hold's expiry. Restarted, at its prepare deadline it asks the
    coordinator, learns the hold is open and keeps holding (its deadline becomes the hold's
    expiry, not the short one); the client's later post settles it on both shards."""
    environment = gateway_environment("gateway.after_commit=sleep:2")
    async with process_cluster(pg, tmp_path, gateway_environment=environment) as cluster:
        async with connected_to(cluster.target) as client:
            pair = await funded_pair(cluster, client, coordinator=0)
            creation = asyncio.create_task(client.post(hold(pair, "h-pa", timeout_seconds=600)))
            try:
                assert cluster.gateway is not None
                await wait_log(cluster.gateway, "failpoint gateway.after_commit reached")
                await cluster.kill_node(pair.participant)
                (result,) = await asyncio.wait_for(creation, timeout=30)
            finally:
                if not creation.done():
                    creation.cancel()
                    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                        await creation
            assert result.code == pb.RESULT_CODE_CREATED, (name(result.code), result.message)

        await cluster.kill_gateway()
        await asyncio.gather(
            cluster.start_node(pair.participant), cluster.start_gateway(gateway_environment())
        )
        expires_at = (await record(cluster, pair.coordinator, pair.id("h-pa")))["expires_at_ns"]
        assert int(str(expires_at)) > 0
        for _ in range(int((DEADLINE_S + 10) / 0.1)):
            rows = await fetch_rows(
                cluster.shard_dsns[pair.participant], "SELECT expires_at_ns FROM holds"
            )
            if [row["expires_at_ns"] for row in rows] == [expires_at]:
                break
            await asyncio.sleep(0.1)
        assert [row["expires_at_ns"] for row in rows] == [expires_at]  # re-armed, still held
        async with connected_to(cluster.target) as client:
            assert (await client.balance(pair.payee)).credits_pending == HELD
            post = pb.Transaction(id=pair.id("p-pa"), code=1, post_pending_id=pair.id("h-pa"))
            assert await client.codes(post) == [pb.RESULT_CODE_CREATED]
            await books_are_right(cluster, client, pair, posted=HELD)


async def test_gateway_killed_in_a_group_deciding_records_at_three_shards(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """One linked group posts a hold recorded at one shard and voids a cross-shard hold and
    reverses a cross-shard transfer recorded at two others (decided there by pieces that lock
    them). The gateway dies (kill -9) after the coordinator committed, before anyone was told.
    Each locking shard asks the coordinator at its deadline and applies its part; the
    cross-shard hold's own participant follows; a retry through a new gateway replays all."""
    async with process_cluster(pg, tmp_path, gateway_environment=gateway_environment()) as cluster:
        async with connected_to(cluster.target) as client:
            a, b, c = await open_accounts(cluster, client, [0, 1, 2])
            # Each record named under the partition key of the shard that records it; the
            # group under a's (shard 0 coordinates it).
            ka, kb, kc = (x.split("/")[0] for x in (a, b, c))
            sav = a.split("/")[0] + "/sav"
            assert await client.create(account(sav)) == [pb.RESULT_CODE_CREATED]
            setup = [
                transfer(f"{ka}/h-a", a, sav, 100, pending=True),  # recorded at shard 0 alone
                transfer(f"{kb}/h-b", b, c, 200, pending=True),  # across shards, at shard 1
                transfer(f"{kc}/t-c", c, a, 300),  # across shards, committed at shard 2
            ]
            assert await client.codes(*setup) == [pb.RESULT_CODE_CREATED] * 3
        await cluster.kill_gateway()
        await cluster.start_gateway(gateway_environment("gateway.after_commit=exit"))
        async with connected_to(cluster.target) as client:
            group = [
                pb.Transaction(id=f"{ka}/p-a", code=1, post_pending_id=f"{ka}/h-a", linked=True),
                pb.Transaction(id=f"{ka}/v-b", code=1, void_pending_id=f"{kb}/h-b", linked=True),
                pb.Transaction(id=f"{ka}/u-c", code=1, reverses_id=f"{kc}/t-c"),
            ]
            with pytest.raises(grpc.aio.AioRpcError) as lost:
                await client.post(*group)
        assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
        assert cluster.gateway is not None
        assert await asyncio.wait_for(cluster.gateway.process.wait(), timeout=10) == -9
        locked = await record(cluster, 1, f"{kb}/h-b")
        assert (locked["status"], locked["resolved_by_id"]) == (Status.PENDING, f"{ka}/v-b")
        assert (await record(cluster, 2, f"{kc}/t-c"))["reversed_by_id"] == f"{ka}/u-c"

        await cluster.start_gateway(gateway_environment())
        await wait_nothing_pending(cluster, timeout_s=2 * DEADLINE_S + 10)
        async with connected_to(cluster.target) as client:
            results = await client.post(*group)
            assert [r.code for r in results] == [pb.RESULT_CODE_REPLAYED] * 3, [
                (name(r.code), r.message) for r in results
            ]
            assert (
                await client.transaction(f"{ka}/h-a")
            ).status == pb.TRANSACTION_STATUS_PENDING_POSTED
            assert (
                await client.transaction(f"{kb}/h-b")
            ).status == pb.TRANSACTION_STATUS_PENDING_VOIDED
            assert (await client.transaction(f"{kc}/t-c")).reversed_by_id == f"{ka}/u-c"
            balances = [await client.balance(x) for x in (a, b, c, sav)]
            assert [x.credits_posted - x.debits_posted for x in balances] == [
                FUNDING - 100,
                FUNDING,
                FUNDING,
                100,
            ]
            await check_clearing_nets_to_zero(client)
        report = await audit.audit_cluster(cluster.shard_dsns, AuditConfig())
        assert report.ok, [f.message for shard in report.shards for f in shard.findings]


async def test_gateway_killed_before_a_group_locking_records_was_decided(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """The same kind of group, the gateway dying (kill -9) after the pieces were prepared and
    the records locked, before any decision. At their deadline the locking shards ask the
    coordinator, which records abort: the locks are freed and nothing is applied; a retry
    through a new gateway applies the group once."""
    async with process_cluster(pg, tmp_path, gateway_environment=gateway_environment()) as cluster:
        async with connected_to(cluster.target) as client:
            a, b, c = await open_accounts(cluster, client, [0, 1, 2])
            # Each record named under the partition key of the shard that records it; the
            # group under b's (shard 1 coordinates it, where h-b is decided).
            ka, kb, kc = (x.split("/")[0] for x in (a, b, c))
            setup = [
                transfer(f"{ka}/t-a", a, "@cash", 10),  # shard 0 alone
                transfer(f"{kb}/h-b", b, c, 200, pending=True),  # across shards, at shard 1
                transfer(f"{kc}/t-c", c, a, 300),  # across shards, committed at shard 2
            ]
            assert await client.codes(*setup) == [pb.RESULT_CODE_CREATED] * 3
        await cluster.kill_gateway()
        await cluster.start_gateway(gateway_environment("gateway.after_prepare=exit"))
        async with connected_to(cluster.target) as client:
            group = [
                pb.Transaction(id=f"{kb}/u-a", code=1, reverses_id=f"{ka}/t-a", linked=True),
                pb.Transaction(id=f"{kb}/p-b", code=1, post_pending_id=f"{kb}/h-b", linked=True),
                pb.Transaction(id=f"{kb}/u-c", code=1, reverses_id=f"{kc}/t-c"),
            ]
            with pytest.raises(grpc.aio.AioRpcError) as lost:
                await client.post(*group)
        assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
        assert cluster.gateway is not None
        assert await asyncio.wait_for(cluster.gateway.process.wait(), timeout=10) == -9
        assert (await record(cluster, 2, f"{kc}/t-c"))["reversed_by_id"] == f"{kb}/u-c"  # locked

        # Both locking shards (0 for t-a, 2 for t-c) ask the coordinator at their own pieces'
        # deadlines, independently: each lock is freed in its own time.
        await cluster.start_gateway(gateway_environment())
        locks = [(0, f"{ka}/t-a"), (2, f"{kc}/t-c")]
        for _ in range(int((2 * DEADLINE_S + 10) / 0.1)):
            if all([(await record(cluster, s, t))["reversed_by_id"] == "" for s, t in locks]):
                break
            await asyncio.sleep(0.1)
        for shard, original in locks:
            assert (await record(cluster, shard, original))["reversed_by_id"] == "", original
        hold = await record(cluster, 1, f"{kb}/h-b")
        assert (hold["status"], hold["resolved_by_id"]) == (Status.PENDING, "")
        async with connected_to(cluster.target) as client:
            results = await client.post(*group)
            assert [r.code for r in results] == [pb.RESULT_CODE_CREATED] * 3, [
                (name(r.code), r.message) for r in results
            ]
            assert await client.codes(*group) == [pb.RESULT_CODE_REPLAYED] * 3
            await wait_nothing_pending(cluster, timeout_s=DEADLINE_S + 10)
            balances = [await client.balance(x) for x in (a, b, c)]
            assert [x.credits_posted - x.debits_posted for x in balances] == [
                FUNDING,
                FUNDING - 200,
                FUNDING + 200,
            ]
            await check_clearing_nets_to_zero(client)
        report = await audit.audit_cluster(cluster.shard_dsns, AuditConfig())
        assert report.ok, [f.message for shard in report.shards for f in shard.findings]
