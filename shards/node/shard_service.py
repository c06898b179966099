"""tally.v1.Shard on a node: the participant and coordinator sides of cross-shard commits."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import grpc

from core import ids, validation
from core.model import (
    SUCCESS_CODES,
    Kind,
    Rejection,
    Result,
    ResultCode,
    Status,
    TransactionSpec,
    TransactionState,
)
from core.pieces import DeadlineMode, fate_piece, resolution_spec, reversal_mark_spec
from core.state import replay_result
from core.store import shard as store
from shards import failpoints
from shards.crossshard.coordinator import hold_state, settlement_spec
from shards.node.ledger_service import NodeView, route_check, submit_or_abort
from shards.rpc import convert
from tally.v1 import ledger_pb2 as pb
from tally.v1 import shard_pb2 as spb
from tally.v1 import shard_pb2_grpc as spb_grpc

READ_TIMEOUT_S = 10.0
MESSAGE_LENGTH_MAX = 256

Context = Any  # grpc.aio.ServicerContext


async def _check_attempt(context: Context, attempt: str) -> None:
    if not ids.is_attempt(attempt):
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"attempt {attempt[:40]!r} must be 1..{ids.ATTEMPT_LENGTH_MAX} characters 0-9 a-f",
        )


async def _check_id_and_attempt(context: Context, transaction_id: str, attempt: str) -> None:
    problem = validation.id_problem(transaction_id, "transaction_id")
    if problem:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
    await _check_attempt(context, attempt)


def _prepared(item: spb.PrepareItem) -> Any:
    """A participant's piece: held under the attempt's piece id until resolved."""
    if item.reverses_id and not item.piece.legs:
        return _legless_reversal_piece(item)
    spec = convert.transaction_from_proto(item.piece)
    if isinstance(spec, Rejection):
        return spec
    if item.decides:
        if spec.kind not in (Kind.POST_PENDING, Kind.VOID_PENDING):
            return Rejection(ResultCode.INVALID_FLAGS, "decides: not a post or void", spec.linked)
        identifier = ids.piece_id(spec.id, item.attempt)
        deadline_s = max(1, item.deadline_seconds)
        return fate_piece(identifier, item.coordinator_shard, deadline_s, spec)
    metadata = spec.metadata
    if item.reverses_id:
        problem = validation.id_problem(item.reverses_id, "reverses_id")
        if problem:
            return Rejection(ResultCode.INVALID_ID, problem, spec.linked)
        metadata = tuple(sorted((*metadata, (ids.REVERSES_KEY, item.reverses_id))))
    return spec._replace(
        id=ids.piece_id(spec.id, item.attempt),
        kind=Kind.PREPARED,
        target_id=str(item.coordinator_shard),
        timeout_seconds=max(1, item.deadline_seconds),
        metadata=metadata,
    )


def _legless_reversal_piece(item: spb.PrepareItem) -> Any:
    """The piece of a reversal at its original's shard, where the original had no legs (a
    transaction of a linked group with none there): it holds nothing, only the lock."""
    message = item.piece
    for value, field in ((message.id, "id"), (item.reverses_id, "reverses_id")):
        problem = validation.id_problem(value, field)
        if problem:
            return Rejection(ResultCode.INVALID_ID, problem, message.linked)
    metadata = (
        *validation.canonical_metadata(message.metadata),
        (ids.REVERSES_KEY, item.reverses_id),
    )
    return TransactionSpec(
        ids.piece_id(message.id, item.attempt),
        Kind.PREPARED,
        (),
        message.code,
        tuple(sorted(metadata)),
        message.value_date,
        max(1, item.deadline_seconds),
        str(item.coordinator_shard),
        message.linked,
    )


def commit_piece(message: pb.Transaction, attempt: str) -> Any:
    """The coordinator's piece under the client's id: applying it records the attempt's
    commit. Without legs (a transaction of a linked group with none on this shard) it records
    only the decision."""
    marker_id = ids.abort_marker_id(message.id, attempt)
    # A hold's piece here is the hold record (its legs held, expiring as the client asked).
    kind = Kind.HOLD if message.pending else Kind.COMMIT
    timeout_seconds = message.timeout_seconds if message.pending else 0
    if message.legs:
        spec = convert.transaction_from_proto(message)
        if isinstance(spec, Rejection):
            return spec
        return spec._replace(kind=kind, target_id=marker_id, timeout_seconds=timeout_seconds)
    problem = validation.id_problem(message.id, "id")
    if problem:
        return Rejection(ResultCode.INVALID_ID, problem, message.linked)
    return TransactionSpec(
        message.id,
        kind,
        (),
        message.code,
        validation.canonical_metadata(message.metadata),
        message.value_date,
        timeout_seconds,
        marker_id,
        message.linked,
    )


def _hold_fate(item: spb.CommitItem, now_ns: int) -> Any:
    """The client's post or void of a cross-shard hold recorded here, in a linked chain."""
    spec = convert.transaction_from_proto(item.piece)
    if isinstance(spec, TransactionSpec) and spec.kind not in (
        Kind.POST_PENDING,
        Kind.VOID_PENDING,
    ):
        return Rejection(ResultCode.INVALID_FLAGS, "a hold's fate is a post or a void", True)
    if item.decide_before_ns <= now_ns:
        late = "the participants' deadline is too near; retry with the same id"
        return Rejection(ResultCode.UNAVAILABLE, late, item.piece.linked)
    return spec


def _results(results: Sequence[Result]) -> list[pb.ItemResult]:
    return convert.results_to_proto(results)


class ShardService(spb_grpc.ShardServicer):  # type: ignore[misc]
    def __init__(self, node: NodeView) -> None:
        self._node = node

    async def _submit(self, context: Context, items: list[Any]) -> list[Result]:
        return await submit_or_abort(self._node, context, await route_check(self._node, items))

    async def Prepare(self, request: spb.PrepareRequest, context: Context) -> spb.PrepareResponse:
        for item in request.items:
            await _check_attempt(context, item.attempt)
        items = [_prepared(item) for item in request.items]
        return spb.PrepareResponse(results=_results(await self._submit(context, items)))

    async def Commit(self, request: spb.CommitRequest, context: Context) -> spb.CommitResponse:
        items: list[Any] = []
        fates: list[tuple[int, Any]] = []  # (position, item): hold fates, not slot-checked
        now_ns = time.time_ns()
        for item in request.items:
            await _check_attempt(context, item.attempt)
            if item.reverses_id:
                problem = validation.id_problem(item.reverses_id, "reverses_id")
                if problem:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
                items.append(reversal_mark_spec(item.piece.id, item.reverses_id, item.piece.code))
            if item.decide_before_ns:
                fates.append((len(items), _hold_fate(item, now_ns)))
                items.append(None)
                continue
            if item.as_sent:
                items.append(convert.transaction_from_proto(item.piece))
                continue
            items.append(commit_piece(item.piece, item.attempt))
        checked = await route_check(self._node, [i for i in items if i is not None])
        for position, fate in fates:
            checked.insert(position, fate)
        results = await submit_or_abort(self._node, context, checked)
        if failpoints.ARMED:  # the decision is durable; nobody has heard it yet
            await failpoints.hit("shard.after_commit")
        answers = []
        position = 0
        for item in request.items:
            if item.reverses_id:  # the mark and the piece, linked: one answer
                mark, piece = results[position], results[position + 1]
                position += 2
                failed = (
                    mark.code not in SUCCESS_CODES
                    and mark.code is not ResultCode.LINKED_ITEM_FAILED
                )
                answers.append(mark if failed else piece)
            else:
                answers.append(results[position])
                position += 1
        return spb.CommitResponse(results=_results(answers))

    async def Abort(self, request: spb.AbortRequest, context: Context) -> spb.AbortResponse:
        """Record the attempt's abort unless it committed; answer the decision either way (read
        back after the write, so it is the durable truth)."""
        items: list[Any] = []
        for item in request.items:
            await _check_id_and_attempt(context, item.transaction_id, item.attempt)
            reason = item.reason or ResultCode.UNAVAILABLE
            items.append(
                TransactionSpec(
                    ids.abort_marker_id(item.transaction_id, item.attempt),
                    Kind.ABORT,
                    (),
                    int(reason),
                    (("message", item.message[:MESSAGE_LENGTH_MAX]),) if item.message else (),
                    "",
                    0,
                    item.transaction_id,
                )
            )
        await self._submit(context, items)
        wanted = [i.transaction_id for i in request.items] + [i.id for i in items]
        found = await store.load_transactions(self._node.read_pool, wanted, READ_TIMEOUT_S)
        holds = await self._hold_states(context, request.items, found)
        decisions = []
        for item, marker_item in zip(request.items, items, strict=True):
            decision = _decision(item, found.get(item.transaction_id), found.get(marker_item.id))
            if decision is None:  # the write failed (retryable): no decision to report yet
                await context.abort(grpc.StatusCode.UNAVAILABLE, "abort not recorded; retry")
            assert decision is not None
            if decision.committed and item.transaction_id in holds:
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
        asked = {
            i.transaction_id: found[i.transaction_id]
            for i in items
            if (state := found.get(i.transaction_id)) is not None
            and state.spec.kind is Kind.HOLD
            and state.spec.target_id == ids.abort_marker_id(i.transaction_id, i.attempt)
        }
        if not asked:
            return {}
        now_ns = time.time_ns()
        overdue = [
            t
            for t, state in asked.items()
            if state.status is Status.PENDING and 0 < state.expires_at_ns <= now_ns
        ]
        if overdue:
            writer = self._node.writer
            await self._submit(context, writer.expiry_items(overdue) if writer else [])
            again = await store.load_transactions(self._node.read_pool, overdue, READ_TIMEOUT_S)
            asked.update(again)
        resolutions = [s.resolved_by_id for s in asked.values() if s.resolved_by_id]
        resolved = await store.load_transactions(self._node.read_pool, resolutions, READ_TIMEOUT_S)
        return {
            t: hold_state(state, resolved.get(state.resolved_by_id)) for t, state in asked.items()
        }

    async def DecideHolds(
        self, request: spb.DecideHoldsRequest, context: Context
    ) -> spb.DecideHoldsResponse:
        """The fate of cross-shard holds recorded here: the clients' posts and voids."""
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
            items.append(spec)
        if any(item.decide_before_ns <= time.time_ns() for item in request.items):
            late = "the participants' deadline is too near; retry with the same id"
            return spb.DecideHoldsResponse(
                results=_results([Result(ResultCode.UNAVAILABLE, late)] * len(items))
            )
        # No slot check: the legs name accounts of every shard; the hold is recorded here.
        results = await submit_or_abort(self._node, context, items)
        if failpoints.ARMED:  # the fate is durable; no participant has heard it
            await failpoints.hit("shard.after_hold_decided")
        return spb.DecideHoldsResponse(results=_results(results))

    async def SettleHolds(
        self, request: spb.SettleHoldsRequest, context: Context
    ) -> spb.SettleHoldsResponse:
        """Pieces of cross-shard holds held here: another deadline, or settled as decided."""
        items: list[Any] = []
        for item in request.items:
            await _check_id_and_attempt(context, item.transaction_id, item.attempt)
            mode = DeadlineMode.DECISION if item.before_decision else DeadlineMode.CONFIRM
            spec = settlement_spec(
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
                    "deadline_ns >= 0 (OPEN) or the client's post or void (POSTED, VOIDED)",
                )
            items.append(spec)
        results = await submit_or_abort(self._node, context, items)
        return spb.SettleHoldsResponse(results=_results(results))

    async def Resolve(self, request: spb.ResolveRequest, context: Context) -> spb.ResolveResponse:
        for item in request.items:
            await _check_attempt(context, item.attempt)
        items: list[Any] = [
            resolution_spec(ids.piece_id(i.transaction_id, i.attempt), i.commit)
            for i in request.items
        ]
        return spb.ResolveResponse(results=_results(await self._submit(context, items)))


def _decision(
    item: spb.AbortItem, recorded: TransactionState | None, marker: TransactionState | None
) -> spb.Decision | None:
    """The attempt's outcome at its coordinator: committed; or not, because another attempt
    of the transaction committed (REPLAYED, or IDEMPOTENCY_CONFLICT if the asker's piece is
    another transaction); or aborted, with the recorded reason."""
    marker_id = ids.abort_marker_id(item.transaction_id, item.attempt)
    if recorded is not None and recorded.spec.kind in (Kind.COMMIT, Kind.HOLD):
        if recorded.spec.target_id == marker_id:
            return spb.Decision(committed=True, timestamp_ns=recorded.timestamp_ns)
        reason, message = ResultCode.REPLAYED, "committed by an earlier attempt"
        if item.HasField("piece"):
            asked = commit_piece(item.piece, item.attempt)
            if isinstance(asked, TransactionSpec):  # the attempt's own marker is no difference
                replay = replay_result(recorded, asked, ("target_id",))
                if replay.code is ResultCode.IDEMPOTENCY_CONFLICT:
                    reason, message = replay.code, replay.message
        return spb.Decision(reason=reason, message=message, timestamp_ns=recorded.timestamp_ns)
    if (
        recorded is not None
        and recorded.spec.kind in (Kind.POST_PENDING, Kind.VOID_PENDING, Kind.REVERSAL)
        and (item.piece.post_pending_id or item.piece.void_pending_id or item.piece.reverses_id)
    ):
        # A reversal, post or void applied here as the client sent it (in a linked group) by
        # an earlier attempt of the group, or alone: this attempt's commit was refused.
        asked = convert.transaction_from_proto(item.piece)
        if isinstance(asked, TransactionSpec):
            replay = replay_result(recorded, asked, ())
            if replay.code is ResultCode.IDEMPOTENCY_CONFLICT:
                return spb.Decision(reason=replay.code, message=replay.message)
            return spb.Decision(
                reason=ResultCode.REPLAYED,
                message="decided by an earlier attempt",
                timestamp_ns=recorded.timestamp_ns,
            )
    if marker is not None:
        return spb.Decision(
            reason=marker.spec.code, message=dict(marker.spec.metadata).get("message", "")
        )
    return None
