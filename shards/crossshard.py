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
from core.model import Leg, ResultCode, TransactionSpec, resolution_spec
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


Plan = tuple[int, dict[int, list[Leg]]]
"""A transaction's coordinator shard and each shard's balanced piece."""


class Driver:
    """The gateway side. Many cross-shard transactions go through each phase together: one
    Prepare call per participant shard, one Commit and one Abort call per coordinator, one
    Resolve call per participant, whatever the number of transactions."""

    def __init__(self, stubs: dict[int, spb_grpc.ShardStub]) -> None:
        self._stubs = stubs

    async def _per_shard(
        self, method: str, requests: dict[int, Any], read: str
    ) -> dict[int, list[Any] | grpc.aio.AioRpcError]:
        """One call per shard, in parallel; each shard's answers, or the error of its call."""

        async def one(shard: int) -> list[Any] | grpc.aio.AioRpcError:
            try:
                stub = self._stubs[shard]
                response = await getattr(stub, method)(requests[shard], timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                return error
            return list(getattr(response, read))

        shards = list(requests)
        return dict(zip(shards, await asyncio.gather(*map(one, shards)), strict=True))

    async def execute(
        self,
        specs: Sequence[TransactionSpec],
        messages: Sequence[pb.Transaction],
        slot_map: SlotMap,
    ) -> list[pb.ItemResult]:
        plans = [split_pieces(spec.legs, slot_map) for spec in specs]
        results: list[pb.ItemResult | None] = [None] * len(specs)
        prepared = await self._prepare(plans, messages)
        if failpoints.ARMED:
            await failpoints.hit("gateway.after_prepare")
        to_commit: list[int] = []
        to_abort: list[tuple[int, pb.ItemResult]] = []
        for n, answers in enumerate(prepared):
            refused = [r for r in answers if r.code not in OK_CODES]
            unavailable = [r for r in refused if r.code == pb.RESULT_CODE_UNAVAILABLE]
            if unavailable:  # retryable: nothing recorded, the holds wait for a retry
                results[n] = unavailable[0]
            elif refused:
                to_abort.append((n, refused[0]))
            else:
                to_commit.append(n)
        resolves: dict[int, list[spb.ResolveItem]] = {}
        committed = await self._commit(plans, messages, to_commit)
        for n, result in zip(to_commit, committed, strict=True):
            if result.code == pb.RESULT_CODE_UNAVAILABLE:
                results[n] = result
            elif result.code not in OK_CODES:
                to_abort.append((n, result))
            else:
                results[n] = result
                _add_resolves(resolves, plans[n], messages[n].id, commit=True)
        if failpoints.ARMED and any(r.code in OK_CODES for r in committed):
            await failpoints.hit("gateway.after_commit")
        await self._abort(plans, messages, to_abort, results, resolves)
        await self._resolve(resolves)
        return [r if r is not None else pb.ItemResult() for r in results]

    async def _prepare(
        self, plans: list[Plan], messages: Sequence[pb.Transaction]
    ) -> list[list[pb.ItemResult]]:
        """Each transaction's answers from its participants."""
        items: dict[int, list[tuple[int, spb.PrepareItem]]] = {}
        for n, (coordinator, pieces) in enumerate(plans):
            for shard in sorted(pieces):
                if shard != coordinator:
                    piece = piece_message(messages[n], pieces[shard])
                    item = spb.PrepareItem(
                        piece=piece,
                        coordinator_shard=coordinator,
                        deadline_seconds=PREPARE_DEADLINE_S,
                    )
                    items.setdefault(shard, []).append((n, item))
        requests = {s: spb.PrepareRequest(items=[i for _, i in v]) for s, v in items.items()}
        answers = await self._per_shard("Prepare", requests, "results")
        by_transaction: list[list[pb.ItemResult]] = [[] for _ in plans]
        for shard, entries in items.items():
            for position, (n, _) in enumerate(entries):
                by_transaction[n].append(_answer(answers[shard], position))
        return by_transaction

    async def _commit(
        self, plans: list[Plan], messages: Sequence[pb.Transaction], chosen: list[int]
    ) -> list[pb.ItemResult]:
        """Coordinators apply their pieces (recording the decisions): one answer each."""
        items: dict[int, list[int]] = {}
        for n in chosen:
            items.setdefault(plans[n][0], []).append(n)
        requests = {
            shard: spb.CommitRequest(
                pieces=[piece_message(messages[n], plans[n][1][shard]) for n in numbers]
            )
            for shard, numbers in items.items()
        }
        answers = await self._per_shard("Commit", requests, "results")
        found: dict[int, pb.ItemResult] = {}
        for shard, numbers in items.items():
            for position, n in enumerate(numbers):
                found[n] = _answer(answers[shard], position)
        return [found[n] for n in chosen]

    async def _abort(
        self,
        plans: list[Plan],
        messages: Sequence[pb.Transaction],
        chosen: list[tuple[int, pb.ItemResult]],
        results: list[pb.ItemResult | None],
        resolves: dict[int, list[spb.ResolveItem]],
    ) -> None:
        """Record abort at the coordinators (unless committed) and take their decisions."""
        items: dict[int, list[tuple[int, pb.ItemResult]]] = {}
        for n, why in chosen:
            items.setdefault(plans[n][0], []).append((n, why))
        requests = {
            shard: spb.AbortRequest(
                items=[
                    spb.AbortItem(
                        transaction_id=messages[n].id, reason=why.code, message=why.message
                    )
                    for n, why in entries
                ]
            )
            for shard, entries in items.items()
        }
        answers = await self._per_shard("Abort", requests, "decisions")
        for shard, entries in items.items():
            decisions = answers[shard]
            for position, (n, why) in enumerate(entries):
                if isinstance(decisions, grpc.aio.AioRpcError):
                    results[n] = _unavailable(decisions)
                    continue
                decision = decisions[position]
                _add_resolves(resolves, plans[n], messages[n].id, commit=decision.committed)
                if decision.committed:  # an earlier attempt committed: this is its replay
                    results[n] = pb.ItemResult(
                        code=pb.RESULT_CODE_REPLAYED, timestamp_ns=decision.timestamp_ns
                    )
                else:
                    message = decision.message or why.message
                    results[n] = pb.ItemResult(code=decision.reason, message=message)

    async def _resolve(self, resolves: dict[int, list[spb.ResolveItem]]) -> None:
        requests = {s: spb.ResolveRequest(items=items) for s, items in resolves.items()}
        for shard, answer in (await self._per_shard("Resolve", requests, "results")).items():
            if isinstance(answer, grpc.aio.AioRpcError):
                # The participant settles its pieces itself at their deadline.
                log.warning("resolving on shard %d failed: %s", shard, answer.code().name)


def _answer(answers: list[Any] | grpc.aio.AioRpcError, position: int) -> pb.ItemResult:
    if isinstance(answers, grpc.aio.AioRpcError):
        return _unavailable(answers)
    result: pb.ItemResult = answers[position]
    return result


def _add_resolves(
    resolves: dict[int, list[spb.ResolveItem]], plan: Plan, transaction_id: str, commit: bool
) -> None:
    coordinator, pieces = plan
    for shard in pieces:
        if shard != coordinator:
            item = spb.ResolveItem(transaction_id=transaction_id, commit=commit)
            resolves.setdefault(shard, []).append(item)


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
    resolutions = [resolution_spec(t, d.committed) for t, d in decided]
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
