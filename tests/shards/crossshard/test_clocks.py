"""Cross-shard holds under clock skew and clock steps (docs/cross-shard.md, "Clocks").

Real `tally node` and `tally gateway` processes on two shards, each reading its own clock file
(shards.failpoints.wall_ns, tests/support/crossshard_clocks.py). The prepare deadline P is
DEADLINE_S, so the cluster's documented skew bound is P/4 = BOUND_S. Each case ends with the
hold's fate applied on both shards or on neither, nothing held, the balances exact and the
cluster audit clean.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from core.model import Status
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tests.support.cluster_processes import (
    ProcessCluster,
    process_cluster,
    wait_log,
    wait_nothing_pending,
)
from tests.support.crossshard_clocks import (
    HELD,
    Clocks,
    books_are_right,
    hold,
    node_role,
    piece_deadline_ns,
    roles_of,
    status_of,
    wait_piece_settled,
)
from tests.support.crossshard_crash import (
    SETTLE_SLACK_S,
    Pair,
    connected_to,
    funded_pair,
)
from tests.support.helpers import Client, name
from tests.support.metrics import metrics_text_on_port, parse_samples

DEADLINE_S = 8  # P: the participants' short deadline before a decision
BOUND_S = DEADLINE_S / 4  # the documented skew bound between any two processes
REASK_S = 4  # TALLY_HOLD_REASK_S: an open hold's pieces are asked about again this often


def _gateway_environment(clocks: Clocks, failpoints: str = "") -> dict[str, str]:
    return {
        "TALLY_PREPARE_DEADLINE_S": str(DEADLINE_S),
        "TALLY_HOLD_REASK_S": str(REASK_S),
        "TALLY_FAILPOINTS": failpoints,
        **clocks.environment("gateway"),
    }


@asynccontextmanager
async def skewable_cluster(
    pg: EmbeddedPostgres, tmp_path: Path, gateway_failpoints: str = ""
) -> AsyncIterator[tuple[ProcessCluster, Clocks]]:
    clocks = Clocks(tmp_path)
    nodes = {
        s: {"TALLY_HOLD_REASK_S": str(REASK_S), **clocks.environment(node_role(s))}
        for s in range(2)
    }
    environment = _gateway_environment(clocks, gateway_failpoints)
    async with process_cluster(
        pg, tmp_path, gateway_environment=environment, node_environments=nodes, shard_count=2
    ) as cluster:
        yield cluster, clocks


async def _open_hold(cluster: ProcessCluster, client: Client, hold_id: str) -> Pair:
    pair = await funded_pair(cluster, client, coordinator=0)
    created = await client.codes(hold(pair.payer, pair.payee, hold_id))  # no timeout
    assert created == [pb.RESULT_CODE_CREATED]
    return pair


async def _refused_for_skew(cluster: ProcessCluster) -> float:
    text = await asyncio.to_thread(metrics_text_on_port, cluster.gateway_metrics_port)
    key = ("tally_gateway_hold_decisions_refused_total", frozenset({("reason", "clock_skew")}))
    return parse_samples(text).get(key, 0.0)


async def _post_lost_with_the_gateway(client: Client, post: pb.Transaction) -> None:
    """The gateway dies (its failpoint) once the post is decided: the client hears nothing."""
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await client.post(post)
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("skewed", "offset_s"),
    [("participant", BOUND_S), ("coordinator", -BOUND_S)],
    ids=["participant-ahead", "coordinator-behind"],
)
async def test_skew_at_the_bound_a_participant_hears_the_decision_at_its_deadline(
    pg: EmbeddedPostgres, tmp_path: Path, skewed: str, offset_s: float
) -> None:
    """The participant's clock BOUND_S ahead of the others (or the coordinator's behind): the
    post is decided, and the gateway dies before telling the participant. At its short
    deadline (P after the re-arm, on the gateway's clock, read on its own) the participant
    asks, hears the post and posts its share: by P less the skew plus a sweep."""
    async with skewable_cluster(pg, tmp_path, "gateway.after_hold_decided=exit") as (
        cluster,
        clocks,
    ):
        async with connected_to(cluster.target) as client:
            pair = await _open_hold(cluster, client, "h-bound")
            roles = await roles_of(cluster, "h-bound")
            shard = roles.participant if skewed == "participant" else roles.coordinator
            clocks.set(node_role(shard), offset_s)
            await clocks.settle()
            decided_at = time.monotonic()
            await _post_lost_with_the_gateway(
                client, pb.Transaction(id="p-bound", code=1, post_pending_id="h-bound")
            )
        assert await status_of(cluster, roles.coordinator, "h-bound") == Status.PENDING_POSTED
        await wait_piece_settled(cluster, roles, timeout_s=DEADLINE_S + 10)
        settled_s = time.monotonic() - decided_at
        assert settled_s <= DEADLINE_S + abs(offset_s) + SETTLE_SLACK_S, settled_s
        await cluster.start_gateway(_gateway_environment(clocks))
        async with connected_to(cluster.target) as client:
            await books_are_right(cluster, client, pair.payer, pair.payee, posted=HELD)


@pytest.mark.parametrize(
    ("skewed", "offset_s"),
    [
        ("participant", BOUND_S + 1),
        ("participant", DEADLINE_S * 3 / 4),
        ("coordinator", -(BOUND_S + 1)),
    ],
    ids=["participant-3s-ahead", "participant-6s-ahead", "coordinator-3s-behind"],
)
async def test_a_participant_ahead_of_its_coordinator_beyond_the_bound_stops_the_decision(
    pg: EmbeddedPostgres, tmp_path: Path, skewed: str, offset_s: float
) -> None:
    """The participant's clock ahead of the coordinator's beyond the bound (6 s is past P/2:
    it would ask before the decision's limit on the coordinator's clock and could miss it).
    The gateway sees it in the re-arm round's answers and does not decide: UNAVAILABLE naming
    the clocks, the hold open, held on both shards. Once the clock is back, the retry with the
    same id posts it."""
    async with skewable_cluster(pg, tmp_path) as (cluster, clocks):
        async with connected_to(cluster.target) as client:
            pair = await _open_hold(cluster, client, "h-ahead")
            roles = await roles_of(cluster, "h-ahead")
            shard = roles.participant if skewed == "participant" else roles.coordinator
            clocks.set(node_role(shard), offset_s)
            await clocks.settle()
            post = pb.Transaction(id="p-ahead", code=1, post_pending_id="h-ahead")
            (refused,) = await client.post(post)
            assert refused.code == pb.RESULT_CODE_UNAVAILABLE, (name(refused.code), refused.message)
            assert "clock reads" in refused.message and "beyond" in refused.message, refused
            assert await _refused_for_skew(cluster) == 1  # an SRE sees why holds wait
            assert await status_of(cluster, roles.coordinator, "h-ahead") == Status.PENDING
            assert await piece_deadline_ns(cluster, roles) is not None
            assert (await client.balance(pair.payee)).credits_pending == HELD
            clocks.set(node_role(shard), 0)
            await clocks.settle()
            (posted,) = await client.post(post)
            assert posted.code == pb.RESULT_CODE_CREATED, (name(posted.code), posted.message)
            await wait_piece_settled(cluster, roles, timeout_s=SETTLE_SLACK_S + 10)
            await books_are_right(cluster, client, pair.payer, pair.payee, posted=HELD)


async def test_a_step_unseen_during_a_decision_is_heard_at_the_next_question(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """Beyond the bound where no gateway can see it: the participant's clock steps 7 s forward
    (more than P/2) after the re-arm round measured it, while the gateway is stalled before
    the decision. The participant asks at its short deadline, early, hears "open" and goes back
    to waiting; the coordinator then takes the decision; the gateway dies before telling
    anyone. The participant asks again within HOLD_REASK_S (before, a hold without a timeout
    went back to no deadline: held forever) and posts its share."""
    stall_s = DEADLINE_S * 3 / 8  # the coordinator still decides: before P/2 on its clock
    failpoints = f"gateway.after_rearm=sleep:{stall_s},gateway.after_hold_decided=exit"
    async with skewable_cluster(pg, tmp_path, failpoints) as (cluster, clocks):
        async with connected_to(cluster.target) as client:
            pair = await _open_hold(cluster, client, "h-late")
            roles = await roles_of(cluster, "h-late")
            posting = asyncio.create_task(
                _post_lost_with_the_gateway(
                    client, pb.Transaction(id="p-late", code=1, post_pending_id="h-late")
                )
            )
            assert cluster.gateway is not None
            await wait_log(cluster.gateway, "failpoint gateway.after_rearm reached")
            clocks.set(node_role(roles.participant), DEADLINE_S * 7 / 8)
            short = await piece_deadline_ns(cluster, roles)  # the decision's short deadline
            assert short is not None and short <= time.time_ns() + DEADLINE_S * 10**9, short
            await asyncio.wait_for(posting, timeout=stall_s + 20)
            decided_at = time.monotonic()
        assert await status_of(cluster, roles.coordinator, "h-late") == Status.PENDING_POSTED
        later = await piece_deadline_ns(cluster, roles)  # asked at the short one: "open"
        assert later is not None and later > short, (short, later)  # 0: never asked again
        await wait_piece_settled(cluster, roles, timeout_s=REASK_S + 10)
        assert time.monotonic() - decided_at <= REASK_S + SETTLE_SLACK_S
        await cluster.start_gateway(_gateway_environment(clocks))
        async with connected_to(cluster.target) as client:
            await books_are_right(cluster, client, pair.payer, pair.payee, posted=HELD)


STEP_S = 12  # a step beyond the bound and beyond P, short enough to wait out


@pytest.mark.parametrize("stepped", ["participant", "coordinator"])
async def test_a_clock_step_forward_and_back_on_one_node(
    pg: EmbeddedPostgres, tmp_path: Path, stepped: str
) -> None:
    """One node's clock steps STEP_S forward for a few seconds, then back, while transfers
    and holds (with and without a timeout) are created, posted and voided through the
    gateway, during the step and after it. Every answer is definitive once retried with the
    same id (decisions refused while the step lasts); each transaction is applied on both
    shards or on neither; nothing stays held longer than the step plus a prepare deadline and
    a re-ask past its deadline (a node's timestamps never go back, so its own deadlines come
    late by the step); the balances are exactly what the answers say."""
    async with skewable_cluster(pg, tmp_path) as (cluster, clocks):
        async with connected_to(cluster.target) as client:
            pair = await funded_pair(cluster, client, coordinator=0)
            shard = pair.participant if stepped == "participant" else pair.coordinator
            clocks.set(node_role(shard), STEP_S)
            await clocks.settle()
            step_back = asyncio.create_task(_step_back_after(clocks, node_role(shard), 3.0))
            moved = await _workload(client, pair, "during")
            await step_back
            moved += await _workload(client, pair, "after")
            await wait_nothing_pending(
                cluster, timeout_s=STEP_S + DEADLINE_S + REASK_S + SETTLE_SLACK_S + 10
            )
            await books_are_right(cluster, client, pair.payer, pair.payee, posted=moved)


async def _step_back_after(clocks: Clocks, role: str, seconds: float) -> None:
    await asyncio.sleep(seconds)
    clocks.set(role, 0)
    await clocks.settle()


async def _workload(client: Client, pair: Pair, tag: str) -> int:
    """A transfer, a hold posted, a hold voided and a hold left to expire; what moved."""
    moved = 0
    if await _definitive(client, pair.transfer(f"t-{tag}", amount=10)) in _OK:
        moved += 10
    for kind, timeout_s in (("post", 0), ("void", 0), ("expire", 2)):
        hold_id = f"h-{kind}-{tag}"
        message = hold(pair.payer, pair.payee, hold_id, timeout_s)
        message.legs[0].amount = message.legs[1].amount = 20
        created = await _definitive(client, message)
        if created not in _OK or kind == "expire":
            continue
        fate = pb.Transaction(id=f"{kind}-{tag}", code=1)
        if kind == "post":
            fate.post_pending_id = hold_id
        else:
            fate.void_pending_id = hold_id
        if await _definitive(client, fate) in _OK and kind == "post":
            moved += 20
    return moved


_OK = (pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED)


async def _definitive(client: Client, message: pb.Transaction) -> int:
    """The answer to `message`, retried with the same id while it is retryable (a decision is
    refused while a node's clock is stepped beyond the bound)."""
    for _ in range(80):
        (result,) = await client.post(message)
        if result.code != pb.RESULT_CODE_UNAVAILABLE:
            assert result.code in _OK, (message.id, name(result.code), result.message)
            return int(result.code)
        await asyncio.sleep(0.25)
    raise AssertionError(f"{message.id}: still {name(result.code)} {result.message}")
