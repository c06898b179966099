"""tally.v1.Shard on a node: the gRPC plumbing around a shard's side of cross-shard commits,
as participant and as coordinator (shards.crossshard.participant)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from core import ids, limits, validation
from core.model import Kind, Result, ResultCode, TransactionSpec, TransactionState
from core.pieces import DeadlineMode, resolution_spec
from shards import failpoints
from shards.crossshard import participant
from shards.node import move_service
from shards.node.ledger_service import route_check, submit_or_abort
from shards.rpc import convert
from tally.v1 import ledger_pb2 as pb
from tally.v1 import shard_pb2 as spb
from tally.v1 import shard_pb2_grpc as spb_grpc

READ_TIMEOUT_S = 10.0

Context = Any  # grpc.aio.ServicerContext


async def _check_attempt(context: Context, attempt: str) -> None:
    if not ids.is_attempt(attempt):
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"attempt {attempt[:40]!r} must be 1..{ids.ATTEMPT_LENGTH_MAX} characters 0-9 a-f",
        )


async def _check_id_and_attempt(
    context: Context, n: int, transaction_id: str, attempt: str
) -> None:
    problem = validation.id_problem(transaction_id, f"items[{n}].transaction_id")
    if problem:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
    await _check_attempt(context, attempt)


async def _refuse(context: Context, n: int, problem: str) -> None:
    """A field of item n is wrong (problem names it): the whole call is refused."""
    if problem:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"items[{n}].{problem}")


async def _check_count(context: Context, count: int, what: str = "items") -> None:
    """At most a batch of items (an empty call is answered empty)."""
    if count > limits.batch_item_count_max:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{what} has {count} items; at most {limits.batch_item_count_max} per request",
        )


def _results(results: Sequence[Result]) -> list[pb.ItemResult]:
    return convert.results_to_proto(results)


class ShardService(spb_grpc.ShardServicer):  # type: ignore[misc]
    def __init__(self, node: move_service.MoveNode) -> None:
        self._node = node

    async def _submit(self, context: Context, items: list[Any]) -> list[Result]:
        return await submit_or_abort(self._node, context, await route_check(self._node, items))

    async def Prepare(self, request: spb.PrepareRequest, context: Context) -> spb.PrepareResponse:
        await _check_count(context, len(request.items))
        shards = self._node.shard_ids
        if any(item.coordinator_shard not in shards for item in request.items):
            await self._node.refresh_slot_map_now()  # perhaps a shard this node has not seen
            shards = self._node.shard_ids
        for n, item in enumerate(request.items):
            await _check_attempt(context, item.attempt)
            if item.coordinator_shard not in shards:  # nobody to ask: held forever
                await _refuse(
                    context,
                    n,
                    f"coordinator_shard {item.coordinator_shard} is no shard of this cluster "
                    f"(shards {sorted(shards)})",
                )
            if item.deadline_seconds > limits.pending_timeout_seconds_max:
                await _refuse(
                    context,
                    n,
                    f"deadline_seconds must be at most {limits.pending_timeout_seconds_max}",
                )
        items: list[Any] = [participant.prepared_piece(item) for item in request.items]
        return spb.PrepareResponse(results=_results(await self._submit(context, items)))

    async def Commit(self, request: spb.CommitRequest, context: Context) -> spb.CommitResponse:
        now_ns = failpoints.wall_ns()
        await _check_count(context, len(request.items))
        for n, item in enumerate(request.items):
            await _check_attempt(context, item.attempt)
            if item.reverses_id:
                problem = validation.id_problem(item.reverses_id, "reverses_id")
                if problem:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
            if item.decide_before_ns and not item.as_sent:
                await _refuse(context, n, "decide_before_ns is only for an as_sent post or void")
            if item.as_sent:
                problem = participant.as_sent_problem(item.piece)
                await _refuse(context, n, f"piece: {problem}" if problem else "")
        records, fates = participant.commit_records(request.items, now_ns)
        # The hold fates are not slot-checked: back in their places after the check.
        checked = await route_check(self._node, records)
        for position, fate in fates:
            checked.insert(position, fate)
        results = await submit_or_abort(self._node, context, checked)
        if failpoints.ARMED:  # the decision is durable; nobody has heard it yet
            await failpoints.hit("shard.after_commit")
        answers = participant.commit_answers(request.items, results)
        return spb.CommitResponse(results=_results(answers))

    async def Abort(self, request: spb.AbortRequest, context: Context) -> spb.AbortResponse:
        """Record the attempt's abort unless it committed; answer the decision either way (read
        back after the write, so it is the durable truth)."""
        await _check_count(context, len(request.items))
        for n, item in enumerate(request.items):
            await _check_id_and_attempt(context, n, item.transaction_id, item.attempt)
            # A later Commit of the attempt answers this reason as its own: never a success.
            await _refuse(context, n, validation.abort_reason_problem(item.reason, "reason"))
        request_items = request.items
        items: list[Any] = [participant.abort_marker(item) for item in request_items]
        await self._submit(context, items)
        wanted = [i.transaction_id for i in request_items] + [i.id for i in items]
        found = await self._node.history.load_transactions(
            self._node.read_pool, wanted, READ_TIMEOUT_S
        )
        holds = await self._hold_states(context, request_items, found)
        decisions = []
        for item, marker_item in zip(request_items, items, strict=True):
            decision = participant.decision(
                item, found.get(item.transaction_id), found.get(marker_item.id)
            )
            if decision is None or (not decision.committed and marker_item.id not in found):
                # The marker's write failed (retryable). Even where the decision is already
                # known (another attempt committed the id), the attempt's pieces are voided
                # only once its marker records why: the books say what decided every attempt.
                await context.abort(grpc.StatusCode.UNAVAILABLE, "abort not recorded; retry")
            assert decision is not None
            hold = found.get(item.transaction_id)
            if decision.committed and hold is not None and _moved_out_hold(hold):
                # Its record (and state) went with its slot: ask the shard it went to.
                decision = spb.Decision(moved=True)
            elif decision.committed and item.transaction_id in holds:
                decision.hold.CopyFrom(holds[item.transaction_id])
            decisions.append(decision)
        return spb.AbortResponse(decisions=decisions)

    async def _hold_states(
        self,
        context: Context,
        items: Sequence[spb.AbortItem],
        found: dict[str, TransactionState],
    ) -> dict[str, spb.HoldState]:
        """The state of the holds among the asked transactions that these attempts committed;
        an open hold past its expiry is expired first (a participant asks at that deadline)."""
        asked = participant.committed_holds(items, found)
        if not asked:
            return {}
        overdue = participant.overdue_holds(asked, failpoints.wall_ns())
        if overdue:
            writer = self._node.writer
            await self._submit(context, writer.expiry_items(overdue) if writer else [])
            again = await self._node.history.load_transactions(
                self._node.read_pool, overdue, READ_TIMEOUT_S
            )
            asked.update(again)
        resolutions = [s.resolved_by_id for s in asked.values() if s.resolved_by_id]
        resolved = await self._node.history.load_transactions(
            self._node.read_pool, resolutions, READ_TIMEOUT_S
        )
        return {
            t: participant.hold_state(state, resolved.get(state.resolved_by_id))
            for t, state in asked.items()
        }

    async def DecideHolds(
        self, request: spb.DecideHoldsRequest, context: Context
    ) -> spb.DecideHoldsResponse:
        """The fate of cross-shard holds recorded here: the clients' posts and voids."""
        await _check_count(context, len(request.items))
        items: list[Any] = []
        for n, item in enumerate(request.items):
            spec = convert.transaction_from_proto(item.resolution)
            if isinstance(spec, TransactionSpec) and spec.kind not in (
                Kind.POST_PENDING,
                Kind.VOID_PENDING,
            ):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"items[{n}] is not a post or a void"
                )
            if isinstance(spec, TransactionSpec):
                problem = validation.clearing_leg_problem(spec.legs)
                await _refuse(context, n, f"resolution: {problem}" if problem else "")
            items.append(spec)
        if any(item.decide_before_ns <= failpoints.wall_ns() for item in request.items):
            late = Result(ResultCode.UNAVAILABLE, participant.TOO_LATE)
            return spb.DecideHoldsResponse(results=_results([late] * len(items)))
        # No slot check: the legs name accounts of every shard; the hold is recorded here.
        results = await submit_or_abort(self._node, context, items)
        if failpoints.ARMED:  # the fate is durable; no participant has heard it
            await failpoints.hit("shard.after_hold_decided")
        return spb.DecideHoldsResponse(results=_results(results))

    async def SettleHolds(
        self, request: spb.SettleHoldsRequest, context: Context
    ) -> spb.SettleHoldsResponse:
        """Pieces of cross-shard holds held here: another deadline, or settled as decided."""
        await _check_count(context, len(request.items))
        items: list[Any] = []
        for n, item in enumerate(request.items):
            await _check_id_and_attempt(context, n, item.transaction_id, item.attempt)
            await _refuse(context, n, participant.resolution_problem(item))
            mode = DeadlineMode.DECISION if item.before_decision else DeadlineMode.CONFIRM
            spec = participant.settlement_spec(
                ids.piece_id(item.transaction_id, item.attempt),
                item.fate,
                item.deadline_ns,
                item.resolution,
                mode,
            )
            if spec is None:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"settling {item.transaction_id!r}: fate {item.fate} needs "
                    "deadline_ns > 0 (OPEN) or the client's post or void (POSTED, VOIDED)",
                )
            items.append(spec)
        results = await submit_or_abort(self._node, context, items)
        return spb.SettleHoldsResponse(results=_results(results), clock_ns=failpoints.wall_ns())

    async def Resolve(self, request: spb.ResolveRequest, context: Context) -> spb.ResolveResponse:
        await _check_count(context, len(request.items))
        for n, item in enumerate(request.items):
            await _check_id_and_attempt(context, n, item.transaction_id, item.attempt)
        items: list[Any] = [
            resolution_spec(ids.piece_id(i.transaction_id, i.attempt), i.commit)
            for i in request.items
        ]
        return spb.ResolveResponse(results=_results(await self._submit(context, items)))

    async def CreateClearingAccounts(
        self, request: spb.CreateClearingAccountsRequest, context: Context
    ) -> spb.CreateClearingAccountsResponse:
        """Each currency's clearing account on this shard: the only way one is created."""
        await _check_count(context, len(request.currencies), "currencies")
        items = validation.mark_duplicate_accounts(
            [participant.clearing_account_item(n, c) for n, c in enumerate(request.currencies)]
        )
        results = await self._submit(context, items)
        return spb.CreateClearingAccountsResponse(results=_results(results))

    async def MoveSlotsOut(
        self, request: spb.MoveSlotsOutRequest, context: Context
    ) -> spb.MoveSlotsOutResponse:
        return await move_service.move_slots_out(self._node, request, context)

    async def MoveSlotsIn(
        self, request: spb.MoveSlotsInRequest, context: Context
    ) -> spb.MoveSlotsInResponse:
        return await move_service.move_slots_in(self._node, request, context)

    async def ReadMovedOut(
        self, request: spb.ReadMovedOutRequest, context: Context
    ) -> spb.ReadMovedOutResponse:
        return await move_service.read_moved_out(self._node, request, context)

    async def StageMoveIn(
        self, request: spb.StageMoveInRequest, context: Context
    ) -> spb.StageMoveInResponse:
        return await move_service.stage_move_in(self._node, request, context)


def _moved_out_hold(record: TransactionState) -> bool:
    """A cross-shard hold's record this shard's move-out released (its copy here is as it left;
    its state lives on at the move's target)."""
    return record.spec.kind is Kind.HOLD and bool(
        ids.moved_out_by(record.resolved_by_id, record.spec.id)
    )
