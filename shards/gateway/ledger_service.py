"""tally.v1.Ledger served by the gateway over the shards of a cluster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc

from core import limits, validation
from core.authority import Action
from core.ids import DECIDES_KEY, is_clearing, piece_id
from core.model import (
    AccountSpec,
    CloseSpec,
    Kind,
    Leg,
    Rejection,
    Result,
    ResultCode,
    TransactionSpec,
    expires_at,
)
from core.slots import SLOT_COUNT, SlotMap, is_spread
from shards.crossshard.coordinator import HoldResolution, Unit, piece_message
from shards.gateway import routing
from shards.gateway.cluster import Cluster, KnownHold, merge_piece_results, spread_or_owner
from shards.gateway.history import History
from shards.gateway.stream import GatewayStreams
from shards.rpc import convert, outcomes
from shards.rpc.servicer import Unavailable, abort, check_batch_size
from shards.security.guard import check_accounts_of_caller, check_posting_of_caller
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc

Context = Any  # grpc.aio.ServicerContext; grpc ships no usable generic stubs


class GatewayService(pb_grpc.LedgerServicer):  # type: ignore[misc]
    def __init__(self, cluster: Cluster, streams: GatewayStreams | None = None) -> None:
        self._cluster = cluster
        self._streams = streams or GatewayStreams(cluster, limits.stream_count_max)
        self._history = History(cluster)

    # ---- direct routing ----

    async def GetRouting(
        self, request: pb.GetRoutingRequest, context: Context
    ) -> pb.GetRoutingResponse:
        """The slot map this gateway routes by and the nodes' client endpoints (ledger.proto).
        Whatever known_version says, the answer is this gateway's map: a client keeps the
        newer of the two."""
        slot_map = self._cluster.map()
        if request.known_version == slot_map.version:
            return pb.GetRoutingResponse(
                version=slot_map.version, slot_count=SLOT_COUNT, unchanged=True
            )
        endpoints = self._cluster.client_endpoints
        return pb.GetRoutingResponse(
            version=slot_map.version,
            slot_count=SLOT_COUNT,
            ranges=[
                pb.SlotRange(first_slot=first, slot_count=count, shard_id=owner)
                for first, count, owner in slot_map.ranges()
            ],
            shards=[
                pb.ShardRoute(shard_id=shard_id, client_endpoint=endpoints.get(shard_id, ""))
                for shard_id in slot_map.shard_ids
            ],
        )

    # ---- the change stream ----

    async def StreamJournal(
        self, request: pb.StreamJournalRequest, context: Context
    ) -> AsyncIterator[pb.JournalBlock]:
        async for block in self._streams.serve(request, context):
            yield block

    # ---- transactions ----

    async def PostTransactions(
        self, request: pb.PostTransactionsRequest, context: Context
    ) -> pb.PostTransactionsResponse:
        messages = list(request.transactions)
        await check_batch_size(context, len(messages), "transactions")
        items = validation.refuse_clearing_legs(convert.transactions_from_proto(messages))

        async def target_accounts(target_ids: list[str]) -> Mapping[str, Iterable[str]]:
            return await self._target_accounts(context, target_ids)

        await check_posting_of_caller(context, items, target_accounts)
        results: list[pb.ItemResult | None] = [None] * len(items)
        todo = []
        for start, end in routing.units(items):
            failure = routing.local_failure(items[start:end]) or routing.mixed_homes(
                items[start:end]
            )
            if failure is None:
                todo.append((start, end))
            else:
                results[start:end] = [convert.result_to_proto(r) for r in failure]
        try:
            await self._route_transactions(context, messages, items, todo, results)
        except (grpc.aio.AioRpcError, Unavailable) as error:
            # A shard failed under a call whose items' fates are not all known (a send in
            # flight beside the failed read): what is unanswered may have been applied.
            failure = error if isinstance(error, grpc.aio.AioRpcError) else None
            unknown = outcomes.outcome_unknown(failure, "a shard failed during the request")
            results = [unknown if r is None else r for r in results]
        return pb.PostTransactionsResponse(results=results)

    async def _route_transactions(
        self,
        context: Context,
        messages: list[pb.Transaction],
        items: list[TransactionSpec | Rejection],
        todo: list[tuple[int, int]],
        results: list[pb.ItemResult | None],
    ) -> None:
        """Each unit to its shard (or shards), in waves: a unit naming a transaction that an
        earlier unit of the request creates elsewhere than in the same shard call waits for
        the wave after that unit's, so a request's items apply in their order."""
        while todo:
            todo = await self._route_wave(messages, items, todo, results)

    async def _route_wave(
        self,
        messages: list[pb.Transaction],
        items: list[TransactionSpec | Rejection],
        todo: list[tuple[int, int]],
        results: list[pb.ItemResult | None],
    ) -> list[tuple[int, int]]:
        """Route the units of one wave (resent while a shard answers WRONG_SHARD); return
        the units deferred to the next wave."""
        deferred: list[tuple[int, int]] = []
        for attempt in range(self._cluster.config.wrong_shard_retry_max + 1):
            if not todo:
                break
            if attempt:
                await self._cluster.backoff_and_refresh(attempt)
            slot_map = self._cluster.map()
            specs: list[TransactionSpec] = [i for i in items if isinstance(i, TransactionSpec)]
            try:
                located = await self._cluster.locate(routing.targets(specs))
                plan = self._plan(items, todo, slot_map, located)
                built = await self._anchored_units(
                    messages, items, plan.anchored, located, slot_map
                )
            except (grpc.aio.AioRpcError, Unavailable) as error:
                # Reading what the items name failed before this wave sent anything.
                _answer_unavailable(todo + deferred, results, error)
                return []
            deferred += plan.deferred
            if not (plan.crossing or plan.anchored or plan.hold_fates):
                # Single-shard units only (the common request): no tasks to gather.
                todo = sorted(
                    await self._send_units(messages, plan.direct, results, self._post_shard)
                )
                continue
            # On a later round, a unit the new map spreads over shards keeps its WRONG_SHARD.
            sent, crossed, _ = await asyncio.gather(
                self._send_units(messages, plan.direct, results, self._post_shard),
                self._cross_shard(
                    messages,
                    items,
                    plan.crossing,
                    list(zip(plan.anchored, built, strict=True)),
                    results,
                    slot_map,
                ),
                self._decide_holds(messages, items, plan.hold_fates, results),
            )
            todo = sorted(sent + crossed)
        return sorted(deferred)

    def _plan(
        self,
        items: list[TransactionSpec | Rejection],
        todo: list[tuple[int, int]],
        slot_map: SlotMap,
        located: dict[str, int],
    ) -> _Plan:
        """Where each unit goes. A unit is recorded at its ids' home (core.slots): sent there
        alone if its legs and targets live there too, else run across shards."""
        plan = _Plan()
        specs = [i for i in items if isinstance(i, TransactionSpec)]
        reversing = any(s.kind is Kind.REVERSAL for s in specs)
        resolving = any(s.kind in _RESOLUTIONS for s in specs)
        # Ids this wave's units create or name, and their units' shard call (-1: none): a unit
        # naming one of them goes in the same call or waits for the next wave.
        earlier: dict[str, int] = {}
        for start, end in todo:
            unit = [i for i in items[start:end] if isinstance(i, TransactionSpec)]
            home = slot_map.home_of(unit[0].id)
            shards = routing.unit_shards(unit, slot_map, located)
            decides_cross = (reversing and any(self._reverses_cross_shard(i) for i in unit)) or (
                resolving and any(self._resolves_cross_shard(i) for i in unit)
            )
            direct = shards == {home} and not decides_cross
            waits = [i.target_id for i in unit if i.target_id in earlier]
            if waits and not (direct and all(earlier[t] == home for t in waits)):
                plan.deferred.append((start, end))
                earlier.update(_named(unit, -1))
                continue
            if direct:
                plan.direct.setdefault(home, []).append((start, end))
                # A later item of this request may post, void or reverse one of these.
                for item in unit:
                    located[item.id] = home
            elif all(item.kind is Kind.ORDINARY or item.kind is Kind.PENDING for item in unit):
                plan.crossing.append((start, end))
            elif (
                end - start == 1
                and self._resolves_cross_shard(unit[0])
                and located.get(unit[0].target_id) == home
            ):
                plan.hold_fates.append(start)  # a lone post or void, recorded with its hold
            else:
                # Items that must be decided where a record lives (reversals, posts and
                # voids), with others whose legs span shards, or recorded at another home.
                plan.anchored.append((start, end))
            earlier.update(_named(unit, home if direct else -1))
        return plan

    def _reverses_cross_shard(self, item: TransactionSpec) -> bool:
        return item.kind is Kind.REVERSAL and self._cluster.is_cross_shard(item.target_id)

    def _resolves_cross_shard(self, item: TransactionSpec) -> bool:
        return item.kind in _RESOLUTIONS and self._cluster.is_cross_shard(item.target_id)

    async def _decide_holds(
        self,
        messages: list[pb.Transaction],
        items: list[TransactionSpec | Rejection],
        starts: list[int],
        results: list[pb.ItemResult | None],
    ) -> None:
        """Posts and voids of cross-shard holds: checked against the whole hold (its legs
        never change), decided at its coordinator, then settled by its participants. One that
        a coordinator refused WRONG_SHARD (the hold's slot moved out of it: nothing decided) is
        read and decided again under a reloaded map, with the writes' backoff."""
        for attempt in range(self._cluster.config.wrong_shard_retry_max + 1):
            if attempt:
                await self._cluster.backoff_and_refresh(attempt)
            await self._decide_holds_once(messages, items, starts, results)
            moved = [n for n in starts if (r := results[n]) is not None and _wrong_shard(r)]
            for n in moved:
                item = items[n]
                assert isinstance(item, TransactionSpec)
                self._cluster.forget_hold(item.target_id)
            if not moved:
                return
            starts = moved
        for n in starts:  # still in a move's pause: nothing was decided
            results[n] = pb.ItemResult(
                code=pb.RESULT_CODE_UNAVAILABLE,
                message="the hold's slot is being moved; nothing was decided, retry with the "
                "same id",
            )

    async def _decide_holds_once(
        self,
        messages: list[pb.Transaction],
        items: list[TransactionSpec | Rejection],
        starts: list[int],
        results: list[pb.ItemResult | None],
    ) -> None:
        targets = [item.target_id for n in starts if isinstance(item := items[n], TransactionSpec)]
        try:
            holds = await self._read_holds(list(dict.fromkeys(targets)))
        except (grpc.aio.AioRpcError, Unavailable) as error:
            _answer_unavailable([(n, n + 1) for n in starts], results, error)  # none decided
            return
        chosen: list[tuple[int, HoldResolution]] = []
        for n in starts:
            item = items[n]
            assert isinstance(item, TransactionSpec)
            found = holds.get(item.target_id)
            refusal = _hold_refusal(item, found)
            if refusal is not None:
                results[n] = convert.result_to_proto(refusal)
                continue
            assert found is not None
            coordinator, record, pieces = found
            resolution = HoldResolution(
                messages[n],
                coordinator,
                record.cross_shard_piece.attempt,
                sorted({shard for shard, _ in pieces}),
                record.expires_at_ns,
            )
            chosen.append((n, resolution))
        if not chosen:
            return
        started = time.perf_counter()
        answers = await self._cluster.driver().decide_holds([r for _, r in chosen])
        self._cluster.metrics.cross_shard_executed(
            [[a] for a in answers], time.perf_counter() - started
        )
        for (n, _), answer in zip(chosen, answers, strict=True):
            results[n] = answer

    async def _anchored_units(
        self,
        messages: list[pb.Transaction],
        items: list[TransactionSpec | Rejection],
        ranges: list[tuple[int, int]],
        located: dict[str, int],
        slot_map: SlotMap,
    ) -> list[Unit | list[pb.ItemResult]]:
        """Cross-shard units holding items that must be decided where a record lives: the
        reversal of a cross-shard transaction (its legs inverted, decided where the original
        was committed, which records that it is reversed, once), the post or void of a
        cross-shard hold (decided where the hold is recorded), and the reversal, post or void
        of a single-shard record (applied on its shard), with transfers and holds. Such a unit
        is coordinated by that shard, whose commit applies them with the rest. A reversal
        whose original is recorded at another shard is decided there instead, by its piece,
        which marks the original reversed while held (PrepareItem.reverses_id). Per range: its
        unit, or its results if a target is not found (or cannot be reversed, or is
        over-posted). Posts and voids of holds recorded at other shards than the coordinator
        are decided there, by their pieces (PrepareItem.decides)."""
        if not ranges:
            return []
        in_ranges = [
            item
            for start, end in ranges
            for item in items[start:end]
            if isinstance(item, TransactionSpec)
        ]
        reversed_ids = [i.target_id for i in in_ranges if i.kind is Kind.REVERSAL]
        hold_ids = [i.target_id for i in in_ranges if self._resolves_cross_shard(i)]
        single: dict[str, tuple[int, pb.TransactionRecord]] = {}
        committed, holds = await asyncio.gather(
            self._read_committed(list(dict.fromkeys(reversed_ids)), single),
            self._read_holds(list(dict.fromkeys(hold_ids))),
        )
        built: list[Unit | list[pb.ItemResult]] = []
        for start, end in ranges:
            draft = self._draft_unit(
                items, messages, (start, end), committed, holds, single, located
            )
            if isinstance(draft, list):
                built.append(draft)
                continue
            built.append(_unit_of_draft(draft, messages, start, single, slot_map))
        return built

    def _draft_unit(
        self,
        items: list[TransactionSpec | Rejection],
        messages: list[pb.Transaction],
        span: tuple[int, int],
        committed: dict[str, tuple[int, pb.TransactionRecord]],
        holds: dict[str, tuple[int, pb.TransactionRecord, list[tuple[int, pb.TransactionRecord]]]],
        single: dict[str, tuple[int, pb.TransactionRecord]],
        located: dict[str, int],
    ) -> _UnitDraft | list[pb.ItemResult]:
        """Where each item of one anchored range is decided (see _anchored_units), or the
        range's results if one of its items is refused."""
        start, end = span
        draft = _UnitDraft()
        for n in range(start, end):
            item, message, k = items[n], messages[n], n - start
            assert isinstance(item, TransactionSpec)
            spec, unit_message, reverses_id = item, message, ""
            refusal: Result | None = None
            if item.kind is Kind.ORDINARY or item.kind is Kind.PENDING:
                pass
            elif item.kind is Kind.REVERSAL and item.target_id in committed:
                coordinator, record = committed[item.target_id]
                if record.transaction.pending:
                    refusal = Result(
                        ResultCode.NOT_REVERSIBLE,
                        f"{item.target_id!r} is a pending record; void a hold instead of "
                        "reversing it",
                    )
                draft.anchors.add(coordinator)
                spec, unit_message = _inverted(message, record)
                reverses_id = item.target_id
                draft.reversals.append((k, coordinator, item.target_id))
            elif self._resolves_cross_shard(item):
                found = holds.get(item.target_id)
                refusal = _hold_refusal(item, found)
                if found is not None:
                    coordinator, record, pieces = found
                    draft.anchors.add(coordinator)
                    draft.decided_at[k] = coordinator
                    draft.fates[k] = HoldResolution(
                        message,
                        coordinator,
                        record.cross_shard_piece.attempt,
                        sorted({shard for shard, _ in pieces}),
                        record.expires_at_ns,
                    )
            elif item.target_id in located:
                draft.anchors.add(located[item.target_id])
                draft.as_sent.add(k)
                if item.kind is Kind.REVERSAL and item.target_id in single:
                    draft.reversals.append((k, located[item.target_id], item.target_id))
                else:
                    draft.decided_at[k] = located[item.target_id]
            elif item.kind is Kind.REVERSAL:
                refusal = Result(
                    ResultCode.TRANSACTION_NOT_FOUND,
                    f"reverses_id {item.target_id!r} not found",
                )
            else:
                refusal = _hold_refusal(item, None)
            if refusal is not None:
                return _failed_in_unit(end - start, k, refusal)
            draft.specs.append(spec)
            draft.unit_messages.append(unit_message)
            draft.reverses.append(reverses_id)
        return draft

    async def _read_holds(
        self, ids: list[str]
    ) -> dict[str, tuple[int, pb.TransactionRecord, list[tuple[int, pb.TransactionRecord]]]]:
        """Committed cross-shard holds among ids: their coordinator, its record, and their
        participants' pieces (shard, record). Holds this gateway committed are known without
        reading: their record then holds what never changes (status unknown: PENDING)."""
        holds = {}
        unknown = []
        for hold_id in ids:
            known = self._cluster.known_hold(hold_id)
            if known is None:
                unknown.append(hold_id)
                continue
            pieces = [(shard, pb.TransactionRecord()) for shard in known.participants]
            holds[hold_id] = (known.coordinator, known.record, pieces)
        if not unknown:
            return holds
        ids = unknown
        lookups, participants = await self._lookup_with_pieces(ids, raise_moving=True)
        for transaction_id, found in zip(ids, lookups, strict=True):
            for shard_id, lookup in found:
                if (
                    lookup.code == pb.RESULT_CODE_OK
                    and lookup.transaction.cross_shard_piece.coordinator
                    and lookup.transaction.transaction.pending
                ):
                    pieces = [
                        (shard, piece.transaction)
                        for shard, piece in participants.get(transaction_id, [])
                        if piece.code == pb.RESULT_CODE_OK
                    ]
                    holds[transaction_id] = (shard_id, lookup.transaction, pieces)
        return holds

    async def _cross_shard(
        self,
        messages: list[pb.Transaction],
        items: list[TransactionSpec | Rejection],
        ranges: list[tuple[int, int]],
        reversals: list[tuple[tuple[int, int], Unit | list[pb.ItemResult]]],
        results: list[pb.ItemResult | None],
        slot_map: SlotMap,
    ) -> list[tuple[int, int]]:
        """Atomic cross-shard units (transactions, linked groups, reversals of cross-shard
        transactions), by two-phase commit, each phase in one call per shard for all of them.
        The units a shard answered WRONG_SHARD (a slot moved or moving: that attempt did not
        commit), to run again, as a new attempt, under a reloaded map."""
        if not ranges and not reversals:
            return []
        units = []
        placed = []
        currencies: set[str] = set()
        for start, end in ranges:
            specs = [i for i in items[start:end] if isinstance(i, TransactionSpec)]
            home = slot_map.home_of(specs[0].id)
            units.append(Unit(specs, messages[start:end], slot_map, home))
            placed.append((start, end))
            for spec in specs:
                for leg in spec.legs:
                    currencies.add(leg.currency)
        for (start, end), built in reversals:
            if isinstance(built, Unit):
                units.append(built)
                placed.append((start, end))
            else:
                results[start:end] = built
        if not units:
            return []
        for unit in units[len(ranges) :]:  # reversals: few
            currencies.update(leg.currency for m in unit.messages for leg in m.legs)
        try:
            await self._cluster.ensure_clearing_accounts(currencies)
        except (grpc.aio.AioRpcError, Unavailable, RuntimeError) as error:
            # Before any piece is prepared: nothing of these units was applied.
            why = error.code().name if isinstance(error, grpc.aio.AioRpcError) else str(error)
            for start, end in placed:
                results[start:end] = [
                    pb.ItemResult(
                        code=pb.RESULT_CODE_UNAVAILABLE,
                        message=f"a shard could not ready its clearing account ({why}); nothing "
                        "was applied: retry with the same id",
                    )
                    for _ in range(start, end)
                ]
            return []
        started = time.perf_counter()
        answers = await self._cluster.driver().execute_units(units)
        self._cluster.metrics.cross_shard_executed(answers, time.perf_counter() - started)
        for unit, unit_results in zip(units, answers, strict=True):
            for k, message in enumerate(unit.messages):
                # Created by this attempt (a replay's committed attempt is another one).
                if message.pending and unit_results[k].code == pb.RESULT_CODE_CREATED:
                    self._cluster.remember(message.id, unit.coordinator, cross_shard=True)
                    self._cluster.remember_hold(
                        message.id, _known_hold(unit, k, unit_results[k].timestamp_ns)
                    )
        # (Not remembered for a later reversal: locate() finds them then, in one fan-out.)
        again = []
        for (start, end), unit_results in zip(placed, answers, strict=True):
            results[start:end] = unit_results
            if any(r.code == pb.RESULT_CODE_WRONG_SHARD for r in unit_results):
                again.append((start, end))
        return again

    async def _post_shard(self, shard_id: int, batch: list[Any]) -> list[pb.ItemResult]:
        results = await self._cluster.link(shard_id).post(batch)
        for message, result in zip(batch, results, strict=True):
            if result.code in (pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED):
                self._cluster.remember(message.id, shard_id)
        return results

    async def _send_units(
        self,
        messages: Sequence[Any],
        plan: dict[int, list[tuple[int, int]]],
        results: list[pb.ItemResult | None],
        send: Any,
    ) -> list[tuple[int, int]]:
        """Send each shard its units in one call; return the units answered WRONG_SHARD."""

        async def one(shard_id: int, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
            batch = [messages[n] for start, end in ranges for n in range(start, end)]
            answers = await send(shard_id, batch)
            retry = []
            offset = 0
            for start, end in ranges:
                unit_answers = answers[offset : offset + end - start]
                offset += end - start
                if any(a.code == pb.RESULT_CODE_WRONG_SHARD for a in unit_answers):
                    retry.append((start, end))
                results[start:end] = unit_answers
            return retry

        if len(plan) == 1:  # one shard: its call, without a task around it
            [(shard_id, ranges)] = plan.items()
            return await one(shard_id, ranges)
        retries = await asyncio.gather(*(one(s, r) for s, r in plan.items()))
        return [unit for shard_retries in retries for unit in shard_retries]

    async def _target_accounts(
        self, context: Context, target_ids: list[str]
    ) -> Mapping[str, Iterable[str]]:
        """The accounts of the holds and originals a scoped poster's batch names, over every
        shard they live on."""
        try:
            lookups, participants = await self._lookup_with_pieces(target_ids)
        except grpc.aio.AioRpcError as error:
            await _shard_failed(context, error)
        except Unavailable as error:  # a piece held in a slot being moved
            await abort(context, grpc.StatusCode.UNAVAILABLE, str(error))
        found: dict[str, list[str]] = {}
        for target_id, looked in zip(target_ids, lookups, strict=True):
            pieces = [p for _, p in participants.get(target_id, [])]
            lookup = _one_transaction(target_id, [one for _, one in looked], pieces)
            if lookup.code == pb.RESULT_CODE_OK:
                record = lookup.transaction
                legs = (*record.transaction.legs, *record.applied_legs)
                found[target_id] = [leg.account_id for leg in legs]
        return found

    # ---- accounts ----

    async def CreateAccounts(
        self, request: pb.CreateAccountsRequest, context: Context
    ) -> pb.CreateAccountsResponse:
        messages = list(request.accounts)
        await check_batch_size(context, len(messages), "accounts")
        await check_accounts_of_caller(context, Action.MANAGE, (m.id for m in messages))
        items = validation.refuse_clearing_accounts(
            convert.accounts_from_proto(messages), lambda i: i.id
        )
        results = await self._per_account(items, messages, lambda i: i.id, "create")
        return pb.CreateAccountsResponse(results=results)

    async def CloseAccounts(
        self, request: pb.CloseAccountsRequest, context: Context
    ) -> pb.CloseAccountsResponse:
        messages = list(request.accounts)
        await check_batch_size(context, len(messages), "accounts")
        await check_accounts_of_caller(context, Action.MANAGE, (m.account_id for m in messages))
        items = validation.refuse_clearing_accounts(
            convert.closes_from_proto(messages), lambda i: i.account_id
        )
        results = await self._per_account(items, messages, lambda i: i.account_id, "close")
        return pb.CloseAccountsResponse(results=results)

    async def _per_account(
        self,
        items: Sequence[AccountSpec | CloseSpec | Rejection],
        messages: Sequence[Any],
        account_of: Any,
        kind: str,
    ) -> list[pb.ItemResult]:
        """Each item to its account's shard, a spread account's to every shard (merged)."""
        results: list[pb.ItemResult | None] = [None] * len(items)
        todo = []
        for n, item in enumerate(items):
            if isinstance(item, Rejection):
                results[n] = convert.result_to_proto(Result(item.code, item.message))
            else:
                todo.append(n)
        for attempt in range(self._cluster.config.wrong_shard_retry_max + 1):
            if not todo:
                break
            if attempt:
                await self._cluster.backoff_and_refresh(attempt)
            todo = await self._account_round(items, messages, account_of, kind, todo, results)
        return [r if r is not None else pb.ItemResult() for r in results]

    async def _account_round(
        self,
        items: Sequence[Any],
        messages: Sequence[Any],
        account_of: Any,
        kind: str,
        todo: list[int],
        results: list[pb.ItemResult | None],
    ) -> list[int]:
        slot_map = self._cluster.map()
        plan: dict[int, list[int]] = {}
        for n in todo:
            for shard_id in spread_or_owner(account_of(items[n]), slot_map):
                plan.setdefault(shard_id, []).append(n)

        async def one(shard_id: int, indexes: list[int]) -> tuple[int, list[Any]]:
            link = self._cluster.link(shard_id)
            batch = [messages[n] for n in indexes]
            call = link.create if kind == "create" else link.close_accounts
            return shard_id, await call(batch)

        pieces: dict[int, list[Any]] = {n: [] for n in todo}
        for shard_id, answers in await asyncio.gather(*(one(s, i) for s, i in plan.items())):
            for n, answer in zip(plan[shard_id], answers, strict=True):
                pieces[n].append(answer)
        retry = []
        for n, answers in pieces.items():
            if any(a.code == pb.RESULT_CODE_WRONG_SHARD for a in answers):
                retry.append(n)
            results[n] = convert.result_to_proto(merge_piece_results(answers))
        return retry

    # ---- reads ----

    async def GetAccounts(
        self, request: pb.GetAccountsRequest, context: Context
    ) -> pb.GetAccountsResponse:
        ids = list(request.ids)
        await check_batch_size(context, len(ids), "ids")
        await check_accounts_of_caller(context, Action.READ, ids)
        valid = [account_id for account_id in ids if not validation.id_problem(account_id, "id")]
        try:
            found, moving = await self._accounts_following_moves(valid)
        except grpc.aio.AioRpcError as error:
            await _shard_failed(context, error)
        results = []
        for n, account_id in enumerate(ids):
            problem = validation.id_problem(account_id, f"ids[{n}]")
            if problem:
                results.append(pb.AccountLookup(code=pb.RESULT_CODE_INVALID_ID, message=problem))
                continue
            records = found.get(account_id, [])
            if account_id in moving:
                results.append(
                    pb.AccountLookup(
                        code=pb.RESULT_CODE_UNAVAILABLE,
                        message=f"account {account_id!r} is in a slot being moved; retry",
                    )
                )
                continue
            if not records:
                results.append(
                    pb.AccountLookup(
                        code=pb.RESULT_CODE_ACCOUNT_NOT_FOUND,
                        message=f"account {account_id!r} not found",
                    )
                )
                continue
            results.append(pb.AccountLookup(code=pb.RESULT_CODE_OK, account=_sum_pieces(records)))
        return pb.GetAccountsResponse(results=results)

    async def _accounts_following_moves(
        self, ids: list[str]
    ) -> tuple[dict[str, list[pb.AccountRecord]], set[str]]:
        """The accounts' records from their shards, and the ids still in a slot being moved
        after every round: a shard that moved an account's slot out answers WRONG_SHARD, and
        the account is asked again of its owner under a reloaded map, as writes are."""
        found: dict[str, list[pb.AccountRecord]] = {}
        wanted, moving = ids, set[str]()
        for attempt in range(self._cluster.config.wrong_shard_retry_max + 1):
            if attempt:
                await self._cluster.backoff_and_refresh(attempt)
            slot_map = self._cluster.map()
            plan: dict[int, list[str]] = {}
            for account_id in wanted:
                for shard_id in spread_or_owner(account_id, slot_map):
                    plan.setdefault(shard_id, []).append(account_id)
            more, moving = await self._gather_accounts(plan)
            found.update(more)
            if not moving:
                break
            wanted = sorted(moving)
        return found, moving

    async def _gather_accounts(
        self, plan: dict[int, list[str]]
    ) -> tuple[dict[str, list[pb.AccountRecord]], set[str]]:
        async def one(shard_id: int, ids: list[str]) -> tuple[list[str], Any]:
            link = self._cluster.link(shard_id)
            response = await link.stub.GetAccounts(
                pb.GetAccountsRequest(ids=ids), timeout=link.call_timeout_s
            )
            return ids, response

        found: dict[str, list[pb.AccountRecord]] = {}
        moving: set[str] = set()
        for ids, response in await asyncio.gather(*(one(s, i) for s, i in plan.items())):
            for account_id, lookup in zip(ids, response.results, strict=True):
                if lookup.code == pb.RESULT_CODE_OK:
                    found.setdefault(account_id, []).append(lookup.account)
                elif lookup.code == pb.RESULT_CODE_WRONG_SHARD:
                    moving.add(account_id)
        return found, moving

    async def GetTransactions(
        self, request: pb.GetTransactionsRequest, context: Context
    ) -> pb.GetTransactionsResponse:
        ids = list(request.ids)
        await check_batch_size(context, len(ids), "ids")
        try:
            lookups, participants = await self._lookup_with_pieces(ids)
        except grpc.aio.AioRpcError as error:
            await _shard_failed(context, error)
        except Unavailable as error:  # a piece held in a slot being moved
            await abort(context, grpc.StatusCode.UNAVAILABLE, str(error))
        results = [
            _one_transaction(
                t, [lookup for _, lookup in found], [p for _, p in participants.get(t, [])]
            )
            for t, found in zip(ids, lookups, strict=True)
        ]
        await check_accounts_of_caller(
            context,
            Action.READ,
            (
                leg.account_id
                for lookup in results
                if lookup.code == pb.RESULT_CODE_OK
                for leg in (*lookup.transaction.transaction.legs, *lookup.transaction.applied_legs)
            ),
        )
        await self._complete_hold_posts(results)
        return pb.GetTransactionsResponse(results=results)

    async def _complete_hold_posts(self, results: list[pb.TransactionLookup]) -> None:
        """A post of a cross-shard hold is recorded at the hold's coordinator, whose record
        holds what that shard posted; the client reads what the post posted in all: its
        legs, or for a post of the whole hold, the hold's legs."""
        whole_posts = []
        for lookup in results:
            record = lookup.transaction
            if lookup.code == pb.RESULT_CODE_OK and is_hold_post(record):
                record.ClearField("cross_shard_piece")
                del record.applied_legs[:]
                record.applied_legs.extend(record.transaction.legs)
                if not record.transaction.legs:
                    whole_posts.append(record)
        if whole_posts:
            holds = await self._read_holds(
                list({r.transaction.post_pending_id for r in whole_posts})
            )
            for record in whole_posts:
                found = holds.get(record.transaction.post_pending_id)
                if found is not None:
                    _, hold, pieces = found
                    merged = _merge_pieces(hold, [piece for _, piece in pieces])
                    record.applied_legs.extend(merged.applied_legs)

    async def _read_committed(
        self, ids: list[str], single: dict[str, tuple[int, pb.TransactionRecord]] | None = None
    ) -> dict[str, tuple[int, pb.TransactionRecord]]:
        """Committed cross-shard transactions among ids: their coordinator shard and their
        record as a client reads it (and into `single`, if given, the others found, with
        their shard)."""
        lookups, participants = await self._lookup_with_pieces(ids, raise_moving=True)
        committed = {}
        hold_posts = []
        for transaction_id, found in zip(ids, lookups, strict=True):
            for shard_id, lookup in found:
                if lookup.code != pb.RESULT_CODE_OK:
                    continue
                if not lookup.transaction.HasField("cross_shard_piece"):
                    if single is not None:
                        single[transaction_id] = (shard_id, lookup.transaction)
                elif is_hold_post(lookup.transaction):
                    hold_posts.append(lookup)
                    committed[transaction_id] = (shard_id, lookup.transaction)
                elif lookup.transaction.cross_shard_piece.coordinator:
                    merged = _one_transaction(
                        transaction_id,
                        [lookup],
                        [p for _, p in participants.get(transaction_id, [])],
                    )
                    committed[transaction_id] = (shard_id, merged.transaction)
        await self._complete_hold_posts(hold_posts)
        return committed

    async def _lookup_with_pieces(
        self, ids: list[str], *, raise_moving: bool = False
    ) -> tuple[
        list[list[tuple[int, pb.TransactionLookup]]],
        dict[str, list[tuple[int, pb.TransactionLookup]]],
    ]:
        """Each id's (shard, lookup) at its home (the one shard recording it), and for a
        committed cross-shard transaction, the (shard, lookup) of its committed attempt's
        participant pieces."""
        at_home = await self._cluster.lookup_following_moves(ids, raise_moving=raise_moving)
        lookups = [[found] for found in at_home]
        wanted: dict[str, tuple[str, list[int]]] = {}
        for transaction_id, found in zip(ids, lookups, strict=True):
            for _, lookup in found:
                piece = lookup.transaction.cross_shard_piece
                if (
                    lookup.code == pb.RESULT_CODE_OK
                    and piece.coordinator
                    and not is_hold_post(lookup.transaction)  # whole where it is recorded
                ):
                    # Only the shards its record names hold its pieces (every shard for a
                    # record that names none, from before records did).
                    shards = list(piece.participant_shards) or list(self._cluster.links)
                    wanted[transaction_id] = (piece_id(transaction_id, piece.attempt), shards)
        participants = await self._lookup_pieces(wanted)
        # A post or void recorded at its home but decided at its hold's shard: that shard
        # applied it under the client's id, and its record there is what the client reads.
        settled: dict[int, list[int]] = {}
        for n, transaction_id in enumerate(ids):
            for shard_id, piece in participants.get(transaction_id, []):
                if piece.code == pb.RESULT_CODE_OK and (
                    piece.transaction.transaction.metadata.get(DECIDES_KEY)
                ):
                    settled.setdefault(shard_id, []).append(n)
        records = await self._cluster.lookup_on(
            {shard_id: [ids[n] for n in positions] for shard_id, positions in settled.items()}
        )
        for shard_id, positions in settled.items():
            for n, lookup in zip(positions, records[shard_id], strict=True):
                if lookup.code == pb.RESULT_CODE_OK:
                    lookups[n].append((shard_id, lookup))
        return lookups, participants

    async def _lookup_pieces(
        self, wanted: dict[str, tuple[str, list[int]]]
    ) -> dict[str, list[tuple[int, pb.TransactionLookup]]]:
        """For each transaction id, the (shard, lookup) of its piece id at each of its shards:
        one call per shard for all of them. A held piece that moved with its accounts' slots is
        answered WRONG_SHARD with its record as it left: it is asked again where its accounts
        are now (following moves as lookup_following_moves does; Unavailable while they are
        in a move's pause)."""
        asked: list[tuple[str, int]] = [
            (transaction_id, shard_id)
            for transaction_id, (_, shards) in wanted.items()
            for shard_id in shards
            if shard_id in self._cluster.links
        ]
        found: dict[str, list[tuple[int, pb.TransactionLookup]]] = {t: [] for t in wanted}
        for attempt in range(self._cluster.config.wrong_shard_retry_max + 1):
            if attempt:
                await self._cluster.backoff_and_refresh(attempt)
            answers = await self._ask_pieces(wanted, asked)
            moved: list[tuple[str, int]] = []
            slot_map = self._cluster.map()
            for (transaction_id, shard_id), lookup in zip(asked, answers, strict=True):
                if lookup.code != pb.RESULT_CODE_WRONG_SHARD or not lookup.HasField("transaction"):
                    found[transaction_id].append((shard_id, lookup))
                    continue
                legs = [
                    leg for leg in lookup.transaction.applied_legs if not is_spread(leg.account_id)
                ]
                now = slot_map.shard_of_account(legs[0].account_id) if legs else shard_id
                moved.append((transaction_id, now))
            if not moved:
                return found
            asked = moved
        raise Unavailable(
            f"a piece of {asked[0][0]!r} is held in a slot being moved; retry with the same id"
        )

    async def _ask_pieces(
        self, wanted: dict[str, tuple[str, list[int]]], asked: list[tuple[str, int]]
    ) -> list[pb.TransactionLookup]:
        """The lookup of each (transaction id, shard)'s piece id there, in order: one call per
        shard."""
        by_shard: dict[int, list[str]] = {}
        for transaction_id, shard_id in asked:
            by_shard.setdefault(shard_id, []).append(wanted[transaction_id][0])
        answers = await self._cluster.lookup_on(by_shard)
        taken = {shard_id: iter(lookups) for shard_id, lookups in answers.items()}
        return [next(taken[shard_id]) for _, shard_id in asked]

    async def ListPostings(
        self, request: pb.ListPostingsRequest, context: Context
    ) -> pb.ListPostingsResponse:
        await check_accounts_of_caller(context, Action.READ, (request.account_id,))
        if is_spread(request.account_id):
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "a spread account's postings are listed per piece: ask each shard node",
            )
        return await self._history.list_postings(context, request)

    async def BalanceAt(
        self, request: pb.BalanceAtRequest, context: Context
    ) -> pb.BalanceAtResponse:
        await check_accounts_of_caller(context, Action.READ, (request.account_id,))
        if not is_spread(request.account_id):
            return await self._history.balance_at(context, request)
        return await self._spread_balance_at(context, request)

    async def _spread_balance_at(
        self, context: Context, request: pb.BalanceAtRequest
    ) -> pb.BalanceAtResponse:
        async def one(shard_id: int) -> Any:
            link = self._cluster.link(shard_id)
            try:
                return await link.stub.BalanceAt(request, timeout=link.call_timeout_s)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                raise

        try:
            pieces = [p for p in await asyncio.gather(*map(one, self._cluster.links)) if p]
        except grpc.aio.AioRpcError as error:
            await abort(context, error.code(), error.details() or "")
        if not pieces:
            await abort(
                context, grpc.StatusCode.NOT_FOUND, f"account {request.account_id!r} not found"
            )
        total = _sum_balances([p.balance for p in pieces])
        return pb.BalanceAtResponse(balance=total, as_of_sequence=0)


_RESOLUTIONS = (Kind.POST_PENDING, Kind.VOID_PENDING)


def _answer_unavailable(
    ranges: Sequence[tuple[int, int]],
    results: list[pb.ItemResult | None],
    error: grpc.aio.AioRpcError | Unavailable,
) -> None:
    """Nothing of these units was sent: each item is unavailable (retry with the same id)."""
    why = error.code().name if isinstance(error, grpc.aio.AioRpcError) else str(error)
    answer = pb.ItemResult(
        code=pb.RESULT_CODE_UNAVAILABLE,
        message=f"a shard holding what this item names is unavailable ({why}); nothing was "
        "applied: retry with the same id",
    )
    for start, end in ranges:
        for n in range(start, end):
            if results[n] is None:
                results[n] = answer


def _named(unit: Sequence[TransactionSpec], call: int) -> list[tuple[str, int]]:
    """The ids a unit creates and names, each with the unit's shard call."""
    return [(i.id, call) for i in unit] + [(i.target_id, call) for i in unit if i.target_id]


@dataclass
class _Plan:
    """Where the units of one wave go (see GatewayService._plan)."""

    direct: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    crossing: list[tuple[int, int]] = field(default_factory=list)
    anchored: list[tuple[int, int]] = field(default_factory=list)
    hold_fates: list[int] = field(default_factory=list)
    deferred: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class _UnitDraft:
    """What _draft_unit found of one anchored range, for _unit_of_draft to build its unit."""

    specs: list[TransactionSpec] = field(default_factory=list)
    unit_messages: list[pb.Transaction] = field(default_factory=list)
    # Per item: the original it reverses where the coordinator decides it ("": none).
    reverses: list[str] = field(default_factory=list)
    fates: dict[int, HoldResolution] = field(default_factory=dict)
    as_sent: set[int] = field(default_factory=set)
    anchors: set[int] = field(default_factory=set)
    # Where each reversal is decided: its position, shard and original (one that cannot be
    # decided elsewhere: the others).
    reversals: list[tuple[int, int, str]] = field(default_factory=list)
    # Where each post or void is decided: the shard of its hold.
    decided_at: dict[int, int] = field(default_factory=dict)


def _inverted(
    message: pb.Transaction, record: pb.TransactionRecord
) -> tuple[TransactionSpec, pb.Transaction]:
    """A reversal as a transfer: the legs the original applied (for the post of a hold, what it
    posted), inverted, as a spec and as the piece message carrying them."""
    legs = tuple(
        Leg(leg.account_id, leg.side != pb.SIDE_DEBIT, leg.amount, leg.currency)
        for leg in record.applied_legs
    )
    spec = TransactionSpec(message.id, Kind.ORDINARY, legs, message.code, (), "", 0, "")
    return spec, piece_message(message, legs)


def _unit_of_draft(
    draft: _UnitDraft,
    messages: list[pb.Transaction],
    start: int,
    single: dict[str, tuple[int, pb.TransactionRecord]],
    slot_map: SlotMap,
) -> Unit:
    """The unit of a drafted range. It is coordinated at its ids' home (core.slots), which
    records them; posts and voids of holds recorded elsewhere are decided at their holds'
    shards, and reversals of originals recorded elsewhere at theirs, by those shards'
    pieces."""
    coordinator = slot_map.home_of(messages[start].id)
    remote_fates = {k: s for k, s in draft.decided_at.items() if s != coordinator}
    draft.as_sent -= set(remote_fates)
    remote: dict[int, tuple[int, str]] = {}
    for k, shard, original in draft.reversals:
        if shard == coordinator:
            continue
        # Decided at its original's shard, a participant: its piece there locks it.
        remote[k] = (shard, original)
        draft.reverses[k] = ""
        if k in draft.as_sent:  # a single-shard original: reversed as its legs inverted
            draft.as_sent.discard(k)
            draft.specs[k], draft.unit_messages[k] = _inverted(
                messages[start + k], single[original][1]
            )
    unit = Unit(
        draft.specs,
        draft.unit_messages,
        slot_map,
        coordinator,
        draft.reverses,
        fates=draft.fates,
        as_sent=draft.as_sent,
        remote_reverses=remote,
        remote_fates=remote_fates,
    )
    for k, (shard, _) in remote.items():
        # The original's shard holds a piece of its reversal (without legs if the
        # original had none there): the piece is what locks the original.
        unit.pieces[k].setdefault(shard, [])
    return unit


def _one_transaction(
    transaction_id: str,
    lookups: Sequence[pb.TransactionLookup],
    participants: Sequence[pb.TransactionLookup],
) -> pb.TransactionLookup:
    """A transaction as the client sees it, from every shard's lookup of its id and, for a
    committed cross-shard one, of its participants' pieces."""
    found = [lookup for lookup in lookups if lookup.code == pb.RESULT_CODE_OK]
    whole = [
        f
        for f in found
        if not f.transaction.HasField("cross_shard_piece") or is_hold_post(f.transaction)
    ]
    if whole:
        return whole[0]
    decided = [f.transaction for f in found if f.transaction.cross_shard_piece.coordinator]
    if not decided:
        return lookups[0]
    pieces = [p.transaction for p in participants if p.code == pb.RESULT_CODE_OK]
    return pb.TransactionLookup(
        code=pb.RESULT_CODE_OK, transaction=_merge_pieces(decided[0], pieces)
    )


def _merge_pieces(
    coordinator: pb.TransactionRecord, participants: Sequence[pb.TransactionRecord]
) -> pb.TransactionRecord:
    """One record from a committed cross-shard transaction's pieces: the coordinator's first,
    then the participants' (as the shards answered), without the clearing legs."""
    legs = [
        leg
        for piece in (coordinator, *participants)
        for leg in piece.transaction.legs
        if not is_clearing(leg.account_id)
    ]
    client = coordinator.transaction
    return pb.TransactionRecord(
        transaction=pb.Transaction(
            id=client.id,
            # A reversal's client sent no legs (they are the original's, inverted).
            legs=[] if client.reverses_id else legs,
            reverses_id=client.reverses_id,
            code=client.code,
            metadata=client.metadata,
            value_date=client.value_date,
            pending=client.pending,
            timeout_seconds=client.timeout_seconds,
        ),
        timestamp_ns=coordinator.timestamp_ns,
        # A hold's fate is its coordinator's record's.
        status=coordinator.status,
        expires_at_ns=coordinator.expires_at_ns,
        resolved_by_id=coordinator.resolved_by_id,
        applied_legs=legs,
        reversed_by_id=coordinator.reversed_by_id,
    )


async def _shard_failed(context: Context, error: grpc.aio.AioRpcError) -> NoReturn:
    """A shard could not answer a read: retryable for the client, never UNKNOWN."""
    await abort(
        context,
        grpc.StatusCode.UNAVAILABLE,
        f"a shard is unavailable ({error.code().name}: {error.details()}); retry",
    )


def _wrong_shard(result: pb.ItemResult) -> bool:
    return bool(result.code == pb.RESULT_CODE_WRONG_SHARD)


def _known_hold(unit: Unit, k: int, timestamp_ns: int) -> KnownHold:
    """What never changes of a cross-shard hold the unit just committed."""
    message = unit.messages[k]
    record = pb.TransactionRecord(
        transaction=message,
        timestamp_ns=timestamp_ns,
        status=pb.TRANSACTION_STATUS_PENDING,
        expires_at_ns=expires_at(timestamp_ns, message.timeout_seconds),
        applied_legs=message.legs,
    )
    record.cross_shard_piece.coordinator = True
    record.cross_shard_piece.attempt = unit.attempt
    participants = tuple(s for s in sorted(unit.pieces[k]) if s != unit.coordinator)
    return KnownHold(unit.coordinator, participants, record)


def _hold_refusal(
    item: TransactionSpec,
    found: tuple[int, pb.TransactionRecord, list[tuple[int, pb.TransactionRecord]]] | None,
) -> Result | None:
    """The gateway's own refusal of a post or void of a cross-shard hold: not found, or a post
    naming more than the whole hold holds (the rest is decided by its coordinator)."""
    if found is None:
        field = "post_pending_id" if item.kind is Kind.POST_PENDING else "void_pending_id"
        return Result(
            ResultCode.PENDING_NOT_FOUND, f"{field} {item.target_id!r} is not a pending transaction"
        )
    _, record, pieces = found
    if record.status == pb.TRANSACTION_STATUS_PENDING and item.legs:
        return _post_excess(item.legs, record, [piece for _, piece in pieces])
    return None


def _post_excess(
    legs: Sequence[Leg], hold: pb.TransactionRecord, pieces: Sequence[pb.TransactionRecord]
) -> Result | None:
    """A post naming more than the whole hold holds on some account and side (as one shard
    answers: POST_EXCEEDS_PENDING)."""
    held: dict[tuple[str, bool, str], int] = {}
    for record in (hold, *pieces):
        for leg in record.applied_legs:
            key = (leg.account_id, leg.side == pb.SIDE_DEBIT, leg.currency)
            held[key] = held.get(key, 0) + leg.amount
    posted: dict[tuple[str, bool, str], int] = {}
    for leg in legs:
        key = (leg.account_id, leg.is_debit, leg.currency)
        posted[key] = posted.get(key, 0) + leg.amount
    for key, amount in posted.items():
        if amount > held.get(key, 0):
            return Result(
                ResultCode.POST_EXCEEDS_PENDING,
                f"posting {amount} to {key[0]!r} but {held.get(key, 0)} is held there",
            )
    return None


def _failed_in_unit(size: int, failed: int, why: Result) -> list[pb.ItemResult]:
    """A unit (one item, or a linked group) whose item `failed` is refused."""
    linked = pb.ItemResult(
        code=pb.RESULT_CODE_LINKED_ITEM_FAILED,
        message=f"item {failed} of this linked group failed",
    )
    return [convert.result_to_proto(why) if k == failed else linked for k in range(size)]


def is_hold_post(record: pb.TransactionRecord) -> bool:
    """The post of a cross-shard hold as its coordinator records it (what that shard posted,
    clearing legs included), marked a cross-shard piece by the shard."""
    return bool(record.transaction.post_pending_id) and record.cross_shard_piece.coordinator


def _sum_balances(balances: Sequence[pb.Balance]) -> pb.Balance:
    return pb.Balance(
        debits_posted=sum(b.debits_posted for b in balances),
        credits_posted=sum(b.credits_posted for b in balances),
        debits_pending=sum(b.debits_pending for b in balances),
        credits_pending=sum(b.credits_pending for b in balances),
        available=sum(b.available for b in balances),
    )


def _sum_pieces(records: Sequence[pb.AccountRecord]) -> pb.AccountRecord:
    """A spread account's pieces, one per shard, as one account."""
    first = records[0]
    return pb.AccountRecord(
        account=first.account,
        balance=_sum_balances([r.balance for r in records]),
        version=sum(r.version for r in records),
        closed=all(r.closed for r in records),
        created_at_ns=min(r.created_at_ns for r in records),
        closed_at_ns=max(r.closed_at_ns for r in records) if all(r.closed for r in records) else 0,
    )
