"""tally.v1.Shard on a node: the participant and coordinator sides of cross-shard commits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from core import failpoints, store, validation
from core.model import (
    Kind,
    Rejection,
    Result,
    ResultCode,
    TransactionSpec,
    abort_marker_id,
    resolution_spec,
)
from shards import convert
from shards.service import NodeView, route_check, submit_or_abort
from tally.v1 import ledger_pb2 as pb
from tally.v1 import shard_pb2 as spb
from tally.v1 import shard_pb2_grpc as spb_grpc

READ_TIMEOUT_S = 10.0
MESSAGE_LENGTH_MAX = 256

Context = Any  # grpc.aio.ServicerContext


def _piece(message: pb.Transaction, kind: Kind, target_id: str, timeout_s: int) -> Any:
    item = convert.transaction_from_proto(message)
    if isinstance(item, Rejection):
        return item
    return item._replace(kind=kind, target_id=target_id, timeout_seconds=timeout_s)


def _decision_piece(message: pb.Transaction) -> Any:
    """A coordinator piece without legs: a transaction of a cross-shard linked group with no
    legs on the coordinator's shard. Its commit records the decision for its id."""
    problem = validation.id_problem(message.id, "id")
    if problem:
        return Rejection(ResultCode.INVALID_ID, problem, message.linked)
    return TransactionSpec(
        message.id,
        Kind.COMMIT,
        (),
        message.code,
        validation.canonical_metadata(message.metadata),
        message.value_date,
        0,
        abort_marker_id(message.id),
        message.linked,
    )


def _results(results: Sequence[Result]) -> list[pb.ItemResult]:
    return convert.results_to_proto(results)


class ShardService(spb_grpc.ShardServicer):  # type: ignore[misc]
    def __init__(self, node: NodeView) -> None:
        self._node = node

    async def _submit(self, context: Context, items: list[Any]) -> list[Result]:
        return await submit_or_abort(self._node, context, await route_check(self._node, items))

    async def Prepare(self, request: spb.PrepareRequest, context: Context) -> spb.PrepareResponse:
        items = [
            _piece(i.piece, Kind.PREPARED, str(i.coordinator_shard), max(1, i.deadline_seconds))
            for i in request.items
        ]
        return spb.PrepareResponse(results=_results(await self._submit(context, items)))

    async def Commit(self, request: spb.CommitRequest, context: Context) -> spb.CommitResponse:
        items = [
            _piece(piece, Kind.COMMIT, abort_marker_id(piece.id), 0)
            if piece.legs
            else _decision_piece(piece)
            for piece in request.pieces
        ]
        results = await self._submit(context, items)
        if failpoints.ARMED:  # the decision is durable; nobody has heard it yet
            await failpoints.hit("shard.after_commit")
        return spb.CommitResponse(results=_results(results))

    async def Abort(self, request: spb.AbortRequest, context: Context) -> spb.AbortResponse:
        """Record abort unless committed; answer the decision either way (read back after the
        write, so it is the durable truth)."""
        items: list[Any] = []
        for item in request.items:
            problem = validation.id_problem(item.transaction_id, "transaction_id")
            if problem:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
            reason = item.reason or ResultCode.UNAVAILABLE
            items.append(
                TransactionSpec(
                    abort_marker_id(item.transaction_id),
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
        ids = [i.transaction_id for i in request.items]
        wanted = ids + [abort_marker_id(t) for t in ids]
        found = await store.load_transactions(self._node.read_pool, wanted, READ_TIMEOUT_S)
        decisions = []
        for transaction_id in ids:
            committed = found.get(transaction_id)
            marker = found.get(abort_marker_id(transaction_id))
            if committed is not None and committed.spec.kind is Kind.COMMIT:
                decisions.append(spb.Decision(committed=True, timestamp_ns=committed.timestamp_ns))
            elif marker is not None:
                message = dict(marker.spec.metadata).get("message", "")
                decisions.append(spb.Decision(reason=marker.spec.code, message=message))
            else:  # the write failed (retryable): no decision can be reported yet
                await context.abort(grpc.StatusCode.UNAVAILABLE, "abort not recorded; retry")
        return spb.AbortResponse(decisions=decisions)

    async def Resolve(self, request: spb.ResolveRequest, context: Context) -> spb.ResolveResponse:
        items: list[Any] = [resolution_spec(i.transaction_id, i.commit) for i in request.items]
        return spb.ResolveResponse(results=_results(await self._submit(context, items)))
