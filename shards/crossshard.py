"""Atomic cross-shard transactions: the gateway's driver and the participant's deadline sweep.

Two-phase commit with presumed abort (see proto/tally/v1/shard.proto). The coordinator is the
shard of the first debit leg on a non-spread account; it votes last, recording the decision in
the same database commit that applies its own piece, so a transaction costs two commit rounds
before the client is answered (prepare, then commit) and the participants' resolution follows.

A definitive refusal (say insufficient funds on one shard) is recorded as an abort at the
coordinator, so the id's outcome is final: a retry returns the same refusal. A retryable
failure (a shard unreachable) records nothing: the client's retry with the same id completes
the transaction, and if nobody retries, the participants ask the coordinator once their
deadline passes, which then records abort.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Any

import grpc

from core import failpoints
from core.model import Kind, Leg, ResultCode, TransactionSpec, resolution_id
from core.slots import SlotMap, is_spread
from tally.v1 import ledger_pb2 as pb
from tally.v1 import shard_pb2 as spb
from tally.v1 import shard_pb2_grpc as spb_grpc

log = logging.getLogger("tally.crossshard")

# Seconds a participant holds a prepared piece before asking the coordinator (the gateway sends
# it with each piece). Tests shorten it with TALLY_PREPARE_DEADLINE_S; all gateways of a cluster
# must agree, since it is part of the piece a retry replays.
PREPARE_DEADLINE_S = max(1, int(os.environ.get("TALLY_PREPARE_DEADLINE_S", "30")))
CALL_TIMEOUT_S = 30.0
OK_CODES = (pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED)


def clearing_account(currency: str) -> str:
    return f"@clearing/{currency}"


def coordinator_of(legs: Sequence[Leg], slot_map: SlotMap) -> int:
    firm = [leg for leg in legs if not is_spread(leg.account_id)]
    first = next((leg for leg in firm if leg.is_debit), firm[0])
    return slot_map.shard_of_account(first.account_id)


def split_pieces(legs: Sequence[Leg], slot_map: SlotMap) -> tuple[int, dict[int, list[Leg]]]:
    """Each shard's legs, balanced per currency by a leg on its clearing piece. Spread legs
    go to the coordinator."""
    coordinator = coordinator_of(legs, slot_map)
    pieces: dict[int, list[Leg]] = {}
    for leg in legs:
        shard = (
            coordinator if is_spread(leg.account_id) else slot_map.shard_of_account(leg.account_id)
        )
        pieces.setdefault(shard, []).append(leg)
    for piece in pieces.values():
        net: dict[str, int] = {}
        for leg in piece:
            net[leg.currency] = net.get(leg.currency, 0) + (
                leg.amount if leg.is_debit else -leg.amount
            )
        for currency, difference in sorted(net.items()):
            if difference:
                # More debits than credits here: the clearing piece is credited (due to others).
                piece.append(
                    Leg(clearing_account(currency), difference < 0, abs(difference), currency)
                )
    return coordinator, pieces


def piece_message(message: pb.Transaction, legs: Sequence[Leg]) -> pb.Transaction:
    return pb.Transaction(
        id=message.id,
        legs=[
            pb.Leg(
                account_id=leg.account_id,
                side=pb.SIDE_DEBIT if leg.is_debit else pb.SIDE_CREDIT,
                amount=leg.amount,
                currency=leg.currency,
            )
            for leg in legs
        ],
        code=message.code,
        metadata=message.metadata,
        value_date=message.value_date,
    )


def _unavailable(error: grpc.aio.AioRpcError) -> pb.ItemResult:
    return pb.ItemResult(
        code=pb.RESULT_CODE_UNAVAILABLE,
        message=f"a shard is unavailable ({error.code().name}); retry with the same id",
    )


class Driver:
    """The gateway side: one cross-shard transaction at a time (calls run in parallel)."""

    def __init__(self, stubs: dict[int, spb_grpc.ShardStub]) -> None:
        self._stubs = stubs

    async def _call(self, shard: int, method: str, request: Any) -> Any:
        return await getattr(self._stubs[shard], method)(request, timeout=CALL_TIMEOUT_S)

    async def _prepare(self, shard: int, piece: pb.Transaction, coordinator: int) -> pb.ItemResult:
        item = spb.PrepareItem(
            piece=piece, coordinator_shard=coordinator, deadline_seconds=PREPARE_DEADLINE_S
        )
        try:
            response = await self._call(shard, "Prepare", spb.PrepareRequest(items=[item]))
        except grpc.aio.AioRpcError as error:
            return _unavailable(error)
        return response.results[0]

    async def _commit(self, coordinator: int, piece: pb.Transaction) -> pb.ItemResult:
        try:
            response = await self._call(coordinator, "Commit", spb.CommitRequest(pieces=[piece]))
        except grpc.aio.AioRpcError as error:
            return _unavailable(error)
        return response.results[0]

    async def _abort(self, coordinator: int, transaction_id: str, why: pb.ItemResult) -> Any:
        item = spb.AbortItem(transaction_id=transaction_id, reason=why.code, message=why.message)
        response = await self._call(coordinator, "Abort", spb.AbortRequest(items=[item]))
        return response.decisions[0]

    async def _resolve(self, shards: Sequence[int], transaction_id: str, commit: bool) -> None:
        request = spb.ResolveRequest(
            items=[spb.ResolveItem(transaction_id=transaction_id, commit=commit)]
        )
        results = await asyncio.gather(
            *(self._call(shard, "Resolve", request) for shard in shards), return_exceptions=True
        )
        for shard, result in zip(shards, results, strict=True):
            if isinstance(result, BaseException):
                # The participant settles it itself at its deadline (it asks the coordinator).
                log.warning("resolving %s on shard %d failed: %r", transaction_id, shard, result)

    async def execute(
        self, spec: TransactionSpec, message: pb.Transaction, slot_map: SlotMap
    ) -> pb.ItemResult:
        coordinator, pieces = split_pieces(spec.legs, slot_map)
        participants = sorted(shard for shard in pieces if shard != coordinator)
        prepared = await asyncio.gather(
            *(
                self._prepare(shard, piece_message(message, pieces[shard]), coordinator)
                for shard in participants
            )
        )
        if failpoints.ARMED:
            await failpoints.hit("gateway.after_prepare")
        refused = [r for r in prepared if r.code not in OK_CODES]
        if any(r.code == pb.RESULT_CODE_UNAVAILABLE for r in refused):
            return next(r for r in refused if r.code == pb.RESULT_CODE_UNAVAILABLE)
        if refused:
            return await self._finish_abort(coordinator, participants, message.id, refused[0])
        result = await self._commit(coordinator, piece_message(message, pieces[coordinator]))
        if result.code == pb.RESULT_CODE_UNAVAILABLE:
            return result
        if result.code not in OK_CODES:
            return await self._finish_abort(coordinator, participants, message.id, result)
        if failpoints.ARMED:
            await failpoints.hit("gateway.after_commit")
        await self._resolve(participants, message.id, commit=True)
        return result

    async def _finish_abort(
        self, coordinator: int, participants: list[int], transaction_id: str, why: pb.ItemResult
    ) -> pb.ItemResult:
        try:
            decision = await self._abort(coordinator, transaction_id, why)
        except grpc.aio.AioRpcError as error:
            return _unavailable(error)
        await self._resolve(participants, transaction_id, commit=decision.committed)
        if decision.committed:  # an earlier attempt committed: this is its replay
            return pb.ItemResult(code=pb.RESULT_CODE_REPLAYED, timestamp_ns=decision.timestamp_ns)
        return pb.ItemResult(code=decision.reason, message=decision.message or why.message)


# ---- the participant side: pieces past their deadline ----


async def settle_prepared(
    writer: Any, overdue: Sequence[tuple[str, int]], endpoints: dict[int, str]
) -> None:
    """Ask each coordinator for its decisions (recording abort where there is none) and post
    or void the pieces here accordingly. Coordinators are asked concurrently, and one that
    cannot answer (down, or unable to decide one id) holds back only its own pieces."""
    by_coordinator: dict[int, list[str]] = {}
    for transaction_id, coordinator in overdue:
        by_coordinator.setdefault(coordinator, []).append(transaction_id)
    outcomes = await asyncio.gather(
        *(
            _settle_with(writer, coordinator, transaction_ids, endpoints.get(coordinator))
            for coordinator, transaction_ids in by_coordinator.items()
        ),
        return_exceptions=True,
    )
    for coordinator, outcome in zip(by_coordinator, outcomes, strict=True):
        if isinstance(outcome, BaseException):  # say the writer is draining: next sweep
            log.warning("settling pieces of coordinator %d failed: %r", coordinator, outcome)


async def _settle_with(
    writer: Any, coordinator: int, transaction_ids: list[str], endpoint: str | None
) -> None:
    if endpoint is None:
        log.warning("no endpoint for coordinator shard %d", coordinator)
        return
    decided: list[tuple[str, Any]] = []
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub = spb_grpc.ShardStub(channel)
        try:
            decided = list(zip(transaction_ids, await _ask(stub, transaction_ids), strict=True))
        except grpc.aio.AioRpcError as error:
            log.warning("asking shard %d for decisions failed: %r", coordinator, error)
            if len(transaction_ids) == 1 or error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return
            # One id it cannot decide must not hold back the others: ask for each alone.
            for transaction_id in transaction_ids:
                try:
                    (decision,) = await _ask(stub, [transaction_id])
                except grpc.aio.AioRpcError as error:
                    log.warning("asking for %s failed: %r", transaction_id, error)
                    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        break
                    continue
                decided.append((transaction_id, decision))
    if not decided:
        return
    resolutions = [
        TransactionSpec(
            resolution_id(t, d.committed),
            Kind.POST_PENDING if d.committed else Kind.VOID_PENDING,
            (),
            1,
            (),
            "",
            0,
            t,
        )
        for t, d in decided
    ]
    results = await writer.submit(resolutions)
    for (transaction_id, _), result in zip(decided, results, strict=True):
        if result.code not in (ResultCode.CREATED, ResultCode.REPLAYED):
            log.warning("settling %s: %s %s", transaction_id, result.code.name, result.message)


async def _ask(stub: spb_grpc.ShardStub, transaction_ids: list[str]) -> Any:
    items = [
        spb.AbortItem(
            transaction_id=t,
            reason=pb.RESULT_CODE_ABORTED,
            message="the participants' deadline passed before a decision",
        )
        for t in transaction_ids
    ]
    response = await stub.Abort(spb.AbortRequest(items=items), timeout=CALL_TIMEOUT_S)
    return response.decisions
