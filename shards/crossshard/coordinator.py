"""Atomic cross-shard transactions: the gateway's driver (the shards' side is participant.py).

Two-phase commit with presumed abort (see proto/tally/v1/shard.proto). The coordinator is the
shard of the first debit leg on a non-spread account; it votes last, recording the decision in
the same database commit that applies its own piece, so a transaction costs two commit rounds
before the client is answered (prepare, then commit) and the participants' resolution follows.

Each run of a transaction is an attempt of its own (core.ids). A definitive refusal (say
insufficient funds on one shard) is recorded as that attempt's abort marker at the coordinator,
so that attempt can never commit; the id stays free, as on a single shard: a retry with the
same id is a new attempt, which may succeed (once: at most one attempt of an id commits). A
retryable failure (a shard unreachable) records nothing: the client's retry with the same id
completes the transaction as a new attempt, and the participants ask the coordinator about the
old attempt's pieces once their deadline passes, which then records its abort.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from core import ids, limits
from core.model import Leg, TransactionSpec, expires_at
from core.pieces import legs_digest
from core.slots import SlotMap, is_spread
from shards import failpoints
from shards.crossshard.clocks import clock_skew_max_ns, open_hold_deadline
from shards.rpc import outcomes
from tally.v1 import ledger_pb2 as pb
from tally.v1 import shard_pb2 as spb
from tally.v1 import shard_pb2_grpc as spb_grpc

log = logging.getLogger("tally.crossshard")

# Seconds a participant holds a prepared piece before asking the coordinator (the gateway sends
# it with each piece). Tests shorten it with TALLY_PREPARE_DEADLINE_S; all gateways of a cluster
# must agree, since it is part of the piece a retry replays.
PREPARE_DEADLINE_S = max(1, int(os.environ.get("TALLY_PREPARE_DEADLINE_S", "30")))
# LaterAborts: how often the gateway retries, and at most how many units per round.
LATER_ABORT_INTERVAL_S = 0.5
LATER_ABORT_BATCH_MAX = 1000
CALL_TIMEOUT_S = 30.0
# An attempt's name: this process's random prefix (12 hex digits, drawn at start) and a
# counter, so that no two runs of a unit anywhere share one.
_ATTEMPT_PREFIX = secrets.token_hex(6)
_attempt_numbers = itertools.count(1)
OK_CODES = (pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED)


def coordinator_of(legs: Sequence[Leg], slot_map: SlotMap) -> int:
    """The shard of the first debit leg on a non-spread account (else of the first such leg)."""
    # Hot path (every cross-shard transaction): a plain loop, spread ids by their first "@".
    first_firm = ""
    for leg in legs:
        account_id = leg.account_id
        if account_id[0] != "@":
            if leg.is_debit:
                return slot_map.shard_of_account(account_id)
            first_firm = first_firm or account_id
    if not first_firm:
        raise ValueError("a cross-shard transaction has no leg on a non-spread account")
    return slot_map.shard_of_account(first_firm)


def split_pieces(
    legs: Sequence[Leg], slot_map: SlotMap, coordinator: int | None = None
) -> tuple[int, dict[int, list[Leg]]]:
    """Each shard's legs, balanced per currency by a leg on its clearing piece. Spread legs
    go to the coordinator (by default the transaction's own)."""
    if coordinator is None:
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
                    Leg(ids.clearing_account(currency), difference < 0, abs(difference), currency)
                )
    return coordinator, pieces


# A call's encoded request stays below the gRPC message limit, with room for the transport.
CALL_SIZE_MAX_BYTES = limits.message_size_max_bytes - 64 * 1024


def split_by_bytes(request: Any, size_max_bytes: int) -> list[Any]:
    """The request itself if it encodes within size_max_bytes, else requests of its `items`
    in order, each within the bound where it can be, cut only where a linked chain of pieces
    ends (a chain is applied whole or not at all, so it travels in one call; one larger than
    the bound goes alone). Requests without items are never cut."""
    if request.ByteSize() <= size_max_bytes or not hasattr(request, "items"):
        return [request]
    parts: list[Any] = []
    chunk: list[Any] = []
    chunk_bytes = 0
    chain: list[Any] = []
    chain_bytes = 0
    for item in request.items:
        chain.append(item)
        chain_bytes += item.ByteSize() + 8  # the field's tag and length
        if _continues_chain(item):
            continue
        if chunk and chunk_bytes + chain_bytes > size_max_bytes:
            parts.append(type(request)(items=chunk))
            chunk, chunk_bytes = [], 0
        chunk += chain
        chunk_bytes += chain_bytes
        chain, chain_bytes = [], 0
    chunk += chain  # (a chain left open: the shard refuses it as it would have whole)
    if chunk:
        parts.append(type(request)(items=chunk))
    return parts


def _continues_chain(item: Any) -> bool:
    piece = getattr(item, "piece", None)
    return piece is not None and item.HasField("piece") and piece.linked


def piece_message(
    message: pb.Transaction, legs: Sequence[Leg], linked: bool = False
) -> pb.Transaction:
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
        linked=linked,
        pending=message.pending,
        timeout_seconds=message.timeout_seconds,
    )


# Prepare-phase verdicts: the unit is not committed, so nothing of it applies.
_NOT_DECIDED = (pb.RESULT_CODE_UNAVAILABLE, pb.RESULT_CODE_OUTCOME_UNKNOWN)


def _not_applied(result: pb.ItemResult) -> pb.ItemResult:
    """A piece's OUTCOME_UNKNOWN in a unit that is not committed: nothing of the unit applied."""
    if result.code != pb.RESULT_CODE_OUTCOME_UNKNOWN:
        return result
    return pb.ItemResult(
        code=pb.RESULT_CODE_UNAVAILABLE,
        message="a participant could not prepare its piece; nothing was applied: retry with "
        "the same id",
    )


def _abort_reason(code: int) -> int:
    """The reason an abort marker records: an unknown Commit outcome aborts as UNAVAILABLE."""
    return pb.RESULT_CODE_UNAVAILABLE if code == pb.RESULT_CODE_OUTCOME_UNKNOWN else code


def _unavailable(error: grpc.aio.AioRpcError) -> pb.ItemResult:
    return pb.ItemResult(
        code=pb.RESULT_CODE_UNAVAILABLE,
        message=f"a shard is unavailable ({error.code().name}); retry with the same id",
    )


class Unit:
    """One cross-shard unit: a transaction, or a linked group whose legs span shards, with one
    coordinator for all of it. Each shard receives its pieces of the unit as one linked chain
    (in the unit's order), so a shard applies all of them or none. At the coordinator every
    transaction of the unit has a piece, without legs if none of its legs live there: its
    commit records the decision for that transaction id, and the whole chain commits in one
    database commit, so one decision covers the unit."""

    __slots__ = (
        "as_sent",
        "attempt",
        "coordinator",
        "digests",
        "fates",
        "messages",
        "pieces",
        "remote_fates",
        "remote_reverses",
        "reverses",
    )

    def __init__(
        self,
        specs: Sequence[TransactionSpec],
        messages: Sequence[pb.Transaction],
        slot_map: SlotMap,
        coordinator: int | None = None,
        reverses: Sequence[str] = (),
        fates: dict[int, HoldResolution] | None = None,
        as_sent: set[int] | None = None,
        remote_reverses: dict[int, tuple[int, str]] | None = None,
        remote_fates: dict[int, int] | None = None,
    ) -> None:
        """coordinator: by default that of the unit's legs. reverses: for each transaction,
        the cross-shard transaction it reverses ("": none), which must have been committed at
        this unit's coordinator. fates: by position, the unit's posts and voids of cross-shard
        holds recorded at this unit's coordinator (decided in its commit, settled after).
        as_sent: positions of reversals, posts and voids of single-shard records there. Both
        go to the coordinator as the client sent them. remote_reverses: by position, the
        reversals of transactions recorded at a participant (its shard and the original's id):
        that shard's piece locks the original (see PrepareItem.reverses_id). remote_fates: by
        position, the posts and voids of holds recorded at a participant (its shard): that
        shard's piece decides it (see PrepareItem.decides)."""
        self.attempt = f"{_ATTEMPT_PREFIX}{next(_attempt_numbers):x}"
        self.messages = list(messages)
        self.reverses = list(reverses) or [""] * len(self.messages)
        self.fates = fates or {}
        self.remote_fates = remote_fates or {}
        self.as_sent = ((as_sent or set()) | set(self.fates)) - set(self.remote_fates)
        self.remote_reverses = remote_reverses or {}
        if coordinator is None:
            legs = specs[0].legs if len(specs) == 1 else [leg for s in specs for leg in s.legs]
            coordinator = coordinator_of(legs, slot_map)
        self.coordinator = coordinator
        # What the coordinator's piece of each transaction records of the client's legs.
        self.digests = [
            "" if k in self.as_sent else legs_digest(s.legs) for k, s in enumerate(specs)
        ]
        self.pieces: list[dict[int, list[Leg]]] = [
            {self.remote_fates[k]: []}
            if k in self.remote_fates
            else {}
            if k in self.as_sent
            else split_pieces(s.legs, slot_map, self.coordinator)[1]
            for k, s in enumerate(specs)
        ]

    def reversal_of(self, k: int) -> str:
        """The original transaction k reverses, wherever recorded ("" if not a reversal or
        applied as sent)."""
        if k in self.as_sent:
            return ""
        remote = self.remote_reverses.get(k)
        return self.reverses[k] or (remote[1] if remote is not None else "")

    def shards_of(self, k: int) -> list[int]:
        """The shards other than the coordinator holding a piece of transaction k (none for
        one applied as sent)."""
        if k in self.as_sent:
            return []
        return sorted(s for s in self.pieces[k] if s != self.coordinator)

    def participants(self) -> list[int]:
        shards = {shard for pieces in self.pieces for shard in pieces}
        shards.discard(self.coordinator)
        return sorted(shards)

    def chain(self, shard: int) -> list[tuple[int, pb.Transaction]]:
        """(position in the unit, piece) for this shard, linked but for the last."""
        if shard == self.coordinator:
            chosen = [(k, pieces.get(shard, [])) for k, pieces in enumerate(self.pieces)]
        else:
            chosen = [(k, pieces[shard]) for k, pieces in enumerate(self.pieces) if shard in pieces]
        last = len(chosen) - 1
        return [
            (k, self._as_sent(k, n < last))
            if k in self.as_sent or self.remote_fates.get(k, -1) == shard
            else (k, piece_message(self.messages[k], legs, linked=n < last))
            for n, (k, legs) in enumerate(chosen)
        ]

    def _as_sent(self, k: int, linked: bool) -> pb.Transaction:
        message = pb.Transaction()
        message.CopyFrom(self.messages[k])
        message.linked = linked
        return message

    def reversed_at(self, shard: int, k: int) -> str:
        """The original that transaction k reverses, if recorded at this participant."""
        remote = self.remote_reverses.get(k)
        return remote[1] if remote is not None and remote[0] == shard else ""

    def decide_before_ns(self, k: int) -> int:
        fate = self.fates.get(k)
        return fate.decide_before_ns if fate is not None and k in self.as_sent else 0

    def decides_at(self, shard: int, k: int) -> bool:
        """Whether this participant's piece of transaction k decides a hold recorded there."""
        return self.remote_fates.get(k, -1) == shard

    def judge(self, answers: Sequence[Sequence[pb.ItemResult]]) -> list[pb.ItemResult] | None:
        """From each transaction's answers: None if all succeeded; else each transaction's
        result: all UNAVAILABLE if any is (retryable, nothing recorded), else the refusal of
        the first transaction refused on its own merits, and LINKED_ITEM_FAILED for the others.
        """
        refused = [(k, r) for k, rs in enumerate(answers) for r in rs if r.code not in OK_CODES]
        if not refused:
            return None
        unknown = [r for _, r in refused if r.code == pb.RESULT_CODE_OUTCOME_UNKNOWN]
        if unknown:
            return [unknown[0]] * len(self.messages)
        unavailable = [r for _, r in refused if r.code == pb.RESULT_CODE_UNAVAILABLE]
        if unavailable:
            return [unavailable[0]] * len(self.messages)
        own = [(k, r) for k, r in refused if r.code != pb.RESULT_CODE_LINKED_ITEM_FAILED]
        culprit, why = min(own or refused, key=lambda entry: entry[0])
        linked = pb.ItemResult(
            code=pb.RESULT_CODE_LINKED_ITEM_FAILED,
            message=f"item {culprit} of this linked group failed",
        )
        return [why if k == culprit else linked for k in range(len(self.messages))]

    def coordinator_piece(self, k: int) -> pb.Transaction:
        if k in self.as_sent:
            return self._as_sent(k, False)
        return piece_message(self.messages[k], self.pieces[k].get(self.coordinator, []))

    def resolves(self, outcome: Outcome, k: int, commit: bool, timestamp_ns: int = 0) -> None:
        """What the participants of transaction k must hear: post or void their pieces; for a
        committed hold, keep them held until the hold's expiry (its coordinator timestamp)."""
        message = self.messages[k]
        fate = self.fates.get(k)
        if fate is not None and commit:  # the hold's participants settle as decided
            outcome.settle_fate(fate)
        if k in self.as_sent:  # (if not told, they ask at their short deadline)
            return
        for shard in self.pieces[k]:
            if shard == self.coordinator:
                continue
            if commit and message.pending:
                outcome.settles.setdefault(shard, []).append(
                    spb.SettleHoldItem(
                        transaction_id=message.id,
                        attempt=self.attempt,
                        fate=spb.HOLD_FATE_OPEN,
                        deadline_ns=open_hold_deadline(
                            timestamp_ns, expires_at(timestamp_ns, message.timeout_seconds)
                        ),
                    )
                )
                continue
            item = spb.ResolveItem(transaction_id=message.id, commit=commit, attempt=self.attempt)
            outcome.resolves.setdefault(shard, []).append(item)


class Outcome:
    """What participants must hear once units are decided, per shard."""

    __slots__ = ("resolves", "settles")

    def __init__(self) -> None:
        self.resolves: dict[int, list[spb.ResolveItem]] = {}
        self.settles: dict[int, list[spb.SettleHoldItem]] = {}

    def settle_fate(self, hold: HoldResolution) -> None:
        fate = spb.HOLD_FATE_POSTED if hold.post else spb.HOLD_FATE_VOIDED
        for participant in hold.participants:
            self.settles.setdefault(participant, []).append(hold.settle(fate))


class HoldResolution:
    """A client's post or void of a committed cross-shard hold."""

    __slots__ = (
        "attempt",
        "coordinator",
        "decide_before_ns",
        "expires_at_ns",
        "message",
        "participants",
        "post",
    )

    def __init__(
        self,
        message: pb.Transaction,
        coordinator: int,
        attempt: str,
        participants: Sequence[int],
        expires_at_ns: int,
    ) -> None:
        self.message = message
        self.post = bool(message.post_pending_id)
        self.coordinator = coordinator
        self.attempt = attempt
        self.participants = list(participants)
        self.expires_at_ns = expires_at_ns
        self.decide_before_ns = 0

    def rearm(self, now_ns: int) -> list[tuple[int, spb.SettleHoldItem]]:
        """Before its fate is decided: each participant's piece gets the short deadline (the
        hold's expiry if sooner); the coordinator must decide before half of it."""
        deadline = now_ns + PREPARE_DEADLINE_S * 1_000_000_000
        if self.expires_at_ns:
            deadline = min(deadline, self.expires_at_ns)
        self.decide_before_ns = now_ns + PREPARE_DEADLINE_S * 500_000_000
        item = self.settle(spb.HOLD_FATE_OPEN, deadline)
        item.before_decision = True
        return [(shard, item) for shard in self.participants]

    @property
    def hold_id(self) -> str:
        return str(self.message.post_pending_id or self.message.void_pending_id)

    def settle(self, fate: int, deadline_ns: int = 0) -> spb.SettleHoldItem:
        item = spb.SettleHoldItem(
            transaction_id=self.hold_id, attempt=self.attempt, fate=fate, deadline_ns=deadline_ns
        )
        if fate != spb.HOLD_FATE_OPEN:
            item.resolution.CopyFrom(self.message)
        return item


class LaterAborts:
    """Attempts whose Commit could not reach their coordinator (never delivered, so never
    committed): their pieces are held at the participants, and nobody is left to record their
    abort until the participants ask at their deadline. The gateway keeps them, at most
    LATER_ABORT_COUNT_MAX (the oldest dropped first: the deadline covers those), and records
    their abort once the coordinator answers again, voiding the pieces then (Gateway.run's
    task, every LATER_ABORT_INTERVAL_S). Units past their pieces' deadline are dropped: the
    participants have asked by then."""

    def __init__(self, count_max: int = 10_000) -> None:
        self._units: collections.deque[tuple[Unit, float]] = collections.deque(maxlen=count_max)
        # The coordinators of the units kept: not answering since their Commit failed. New
        # units coordinated there are refused before Prepare until a round reaches them.
        self.down: set[int] = set()

    def __len__(self) -> int:
        return len(self._units)

    def add(self, unit: Unit) -> None:
        self._units.append((unit, time.monotonic() + PREPARE_DEADLINE_S))
        self.down.add(unit.coordinator)

    def _take(self, count_max: int) -> list[tuple[Unit, float]]:
        """The kept units still within their deadline, at most count_max, oldest first."""
        now = time.monotonic()
        taken: list[tuple[Unit, float]] = []
        while self._units and len(taken) < count_max:
            unit, deadline = self._units.popleft()
            if deadline > now:
                taken.append((unit, deadline))
        return taken

    async def retry(self, driver: Driver) -> int:
        """One round: record the abort of every kept unit whose coordinator answers and tell
        the participants; the others are kept, with their deadline. How many were settled."""
        taken = self._take(LATER_ABORT_BATCH_MAX)
        if not taken:
            self.down.clear()  # nothing kept: nothing known to be down
            return 0
        unreachable = set(await driver.abort_undelivered([unit for unit, _ in taken]))
        kept = [(unit, deadline) for unit, deadline in taken if unit.coordinator in unreachable]
        self._units.extendleft(reversed(kept))  # oldest first still
        self.down = {unit.coordinator for unit, _ in self._units}
        return len(taken) - len(kept)


class Driver:
    """The gateway side. Many cross-shard units go through each phase together: one Prepare
    call per participant shard, one Commit and one Abort call per coordinator, one Resolve call
    per participant, whatever the number of units."""

    def __init__(
        self,
        stubs: dict[int, spb_grpc.ShardStub],
        observe_phase: Callable[[str, float], None] | None = None,
        observe_undecided: Callable[[str], None] | None = None,
        later: LaterAborts | None = None,
    ) -> None:
        self._stubs = stubs
        self._later = later
        self._observe_phase = observe_phase
        # A hold whose fate was not decided now, by why: "unreachable", "rearm_failed" or
        # "clock_skew" (a participant's clock ahead of its coordinator's beyond the bound).
        self._observe_undecided = observe_undecided

    async def _per_shard(
        self, method: str, requests: dict[int, Any], read: str
    ) -> dict[int, list[Any] | grpc.aio.AioRpcError]:
        """One call per shard, in parallel; each shard's answers (the field `read` of its
        response; "": the response itself), or the error of its call."""

        async def one(shard: int) -> list[Any] | grpc.aio.AioRpcError:
            answers: list[Any] = []
            # A call over the message limit would fail on every retry: sent in parts.
            # (A call read whole, as SettleHolds' clock, is never cut: its items are ids.)
            parts = split_by_bytes(requests[shard], CALL_SIZE_MAX_BYTES) if read else []
            for part in parts or [requests[shard]]:
                try:
                    stub = self._stubs[shard]
                    response = await getattr(stub, method)(part, timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as error:
                    return error
                answers += list(getattr(response, read)) if read else [response]
            return answers

        shards = list(requests)
        started = time.perf_counter()
        answers = await asyncio.gather(*map(one, shards))
        if self._observe_phase is not None and shards:
            self._observe_phase(method, time.perf_counter() - started)
        return dict(zip(shards, answers, strict=True))

    async def execute_units(self, units: Sequence[Unit]) -> list[list[pb.ItemResult]]:
        """Each unit's results, in the unit's order."""
        results: list[list[pb.ItemResult] | None] = [None] * len(units)
        fated = [(u, hold) for u, unit in enumerate(units) for hold in unit.fates.values()]
        chosen = list(range(len(units)))
        if fated:  # units deciding the fate of cross-shard holds: their participants first
            failed = await self._rearm([hold for _, hold in fated])
            for n in failed:
                u = fated[n][0]
                results[u] = [failed[n]] * len(units[u].messages)
            chosen = [u for u in chosen if results[u] is None]
            if failpoints.ARMED:
                await failpoints.hit("gateway.after_rearm")
        if self._later is not None and self._later.down:
            chosen = [u for u in chosen if not self._coordinator_down(units[u], results, u)]
        prepared = await self._gather("Prepare", units, chosen, participants=True)
        if failpoints.ARMED:
            await failpoints.hit("gateway.after_prepare")
        to_commit: list[int] = []
        to_abort: list[tuple[int, list[pb.ItemResult]]] = []
        for u, answers in zip(chosen, prepared, strict=True):
            verdict = units[u].judge(answers)
            if verdict is None:
                to_commit.append(u)
            elif verdict[0].code in _NOT_DECIDED:
                # Retryable: this attempt is never committed (the gateway sends no Commit), so
                # nothing of it is applied, even where a piece's own outcome is not known. Its
                # abort is recorded all the same, so the pieces that were prepared are voided
                # now rather than held until their deadline (and a same-id retry meanwhile would
                # hold the amounts again); a coordinator that cannot be reached leaves that to
                # the deadline, and the answer stays retryable.
                to_abort.append((u, [_not_applied(r) for r in verdict]))
            else:
                to_abort.append((u, verdict))
        outcome = Outcome()
        committed = await self._gather("Commit", units, to_commit, participants=False)
        for u, answers in zip(to_commit, committed, strict=True):
            verdict = units[u].judge(answers)
            if verdict is None:
                results[u] = [a[0] for a in answers]
                for k in range(len(answers)):
                    units[u].resolves(outcome, k, True, answers[k][0].timestamp_ns)
            elif verdict[0].code == pb.RESULT_CODE_OUTCOME_UNKNOWN:
                # The Commit may have landed: ask the coordinator (an Abort of this attempt
                # answers its decision, and if none was recorded records the abort, so the
                # attempt can no longer commit).
                to_abort.append((u, verdict))
            elif verdict[0].code == pb.RESULT_CODE_UNAVAILABLE:
                # Never delivered: the attempt cannot commit, and its abort is recorded once the
                # coordinator answers again (LaterAborts), so its pieces are not held till then.
                results[u] = verdict
                if self._later is not None:
                    self._later.add(units[u])
            else:
                to_abort.append((u, verdict))
        if failpoints.ARMED and (outcome.resolves or outcome.settles):
            # Some unit committed; no participant knows yet.
            await failpoints.hit("gateway.after_commit")
        await self._abort(units, to_abort, results, outcome)
        await self._tell(outcome)
        return [
            r if r is not None else [pb.ItemResult()] * len(units[u].messages)
            for u, r in enumerate(results)
        ]

    async def _gather(
        self, method: str, units: Sequence[Unit], chosen: Sequence[int], participants: bool
    ) -> list[list[list[pb.ItemResult]]]:
        """Prepare at the participants, or Commit at the coordinators, the chosen units: one
        call per shard. For each chosen unit, each transaction's answers."""
        entries: dict[int, list[tuple[int, int, pb.Transaction]]] = {}
        for u in chosen:
            unit = units[u]
            for shard in unit.participants() if participants else [unit.coordinator]:
                for k, piece in unit.chain(shard):
                    entries.setdefault(shard, []).append((u, k, piece))
        if participants:
            requests = {
                shard: spb.PrepareRequest(
                    items=[
                        spb.PrepareItem(
                            piece=piece,
                            coordinator_shard=units[u].coordinator,
                            deadline_seconds=PREPARE_DEADLINE_S,
                            attempt=units[u].attempt,
                            reverses_id=units[u].reversed_at(shard, k),
                            decides=units[u].decides_at(shard, k),
                        )
                        for u, k, piece in items
                    ]
                )
                for shard, items in entries.items()
            }
        else:
            requests = {
                shard: spb.CommitRequest(
                    items=[
                        spb.CommitItem(
                            piece=piece,
                            attempt=units[u].attempt,
                            reverses_id=units[u].reverses[k],
                            decide_before_ns=units[u].decide_before_ns(k),
                            as_sent=k in units[u].as_sent,
                            legs_digest=units[u].digests[k],
                            participant_shards=units[u].shards_of(k),
                            reversal_of=units[u].reversal_of(k),
                        )
                        for u, k, piece in items
                    ]
                )
                for shard, items in entries.items()
            }
        answers = await self._per_shard(method, requests, "results")
        found: dict[int, list[list[pb.ItemResult]]] = {
            u: [[] for _ in units[u].messages] for u in chosen
        }
        for shard, items in entries.items():
            for position, (u, k, _) in enumerate(items):
                found[u][k].append(
                    _answer(answers[shard], position, outcome_if_lost=not participants)
                )
        return [found[u] for u in chosen]

    async def _abort(
        self,
        units: Sequence[Unit],
        chosen: list[tuple[int, list[pb.ItemResult]]],
        results: list[list[pb.ItemResult] | None],
        outcome: Outcome,
    ) -> set[int]:
        """Record abort at the coordinators (unless committed) for every transaction of the
        chosen units, and take the decisions recorded; the coordinators that answered."""
        entries: dict[int, list[tuple[int, int, pb.ItemResult]]] = {}
        for u, reasons in chosen:
            for k, why in enumerate(reasons):
                entries.setdefault(units[u].coordinator, []).append((u, k, why))
        requests = {
            shard: spb.AbortRequest(
                items=[
                    spb.AbortItem(
                        transaction_id=units[u].messages[k].id,
                        reason=_abort_reason(why.code),
                        message=why.message,
                        attempt=units[u].attempt,
                        piece=units[u].coordinator_piece(k),
                        legs_digest=units[u].digests[k],
                    )
                    for u, k, why in items
                ]
            )
            for shard, items in entries.items()
        }
        for u, reasons in chosen:
            results[u] = list(reasons)
        answers = await self._per_shard("Abort", requests, "decisions")
        reached = {s for s, a in answers.items() if not isinstance(a, grpc.aio.AioRpcError)}
        for shard, items in entries.items():
            decisions = answers[shard]
            for position, (u, k, why) in enumerate(items):
                unit_results = results[u]
                assert unit_results is not None
                if isinstance(decisions, grpc.aio.AioRpcError):
                    # Asked after a lost Commit answer: still not known. After a refusal (no
                    # Commit sent, or one the coordinator refused): nothing was applied.
                    unit_results[k] = (
                        outcomes.outcome_unknown(decisions, "the coordinator shard was not reached")
                        if why.code == pb.RESULT_CODE_OUTCOME_UNKNOWN
                        else outcomes.unavailable(decisions, "a shard")
                    )
                    continue
                unit_results[k] = _decided(units[u], outcome, k, decisions[position], why)
        return reached

    def _coordinator_down(
        self, unit: Unit, results: list[list[pb.ItemResult] | None], u: int
    ) -> bool:
        """Whether unit's coordinator could not be reached at its last Commit and has not
        answered since (LaterAborts): then nothing is prepared for it, since the attempt could
        not commit and its pieces would only be held (again, at every same-id retry)."""
        assert self._later is not None
        if unit.coordinator not in self._later.down:
            return False
        results[u] = [
            pb.ItemResult(
                code=pb.RESULT_CODE_UNAVAILABLE,
                message=f"shard {unit.coordinator}, this transaction's coordinator, cannot be "
                "reached; nothing was applied: retry with the same id",
            )
            for _ in unit.messages
        ]
        return True

    async def abort_undelivered(self, units: Sequence[Unit]) -> list[int]:
        """Record the abort of attempts whose Commit was never delivered and tell their
        participants; the coordinators that still do not answer."""
        reasons = [
            (
                u,
                [
                    pb.ItemResult(
                        code=pb.RESULT_CODE_UNAVAILABLE,
                        message="the coordinator shard could not be reached to commit",
                    )
                    for _ in unit.messages
                ],
            )
            for u, unit in enumerate(units)
        ]
        results: list[list[pb.ItemResult] | None] = [None] * len(units)
        outcome = Outcome()
        reached = await self._abort(units, reasons, results, outcome)
        await self._tell(outcome)
        return sorted({unit.coordinator for unit in units} - reached)

    async def _tell(self, outcome: Outcome) -> None:
        """Resolve and settle at the participants. A participant that does not hear settles
        its pieces itself at their deadline, asking the coordinator."""
        resolves = {s: spb.ResolveRequest(items=i) for s, i in outcome.resolves.items()}
        settles = {s: spb.SettleHoldsRequest(items=i) for s, i in outcome.settles.items()}
        told = await asyncio.gather(
            self._per_shard("Resolve", resolves, "results"),
            self._per_shard("SettleHolds", settles, "results"),
        )
        for method, answers in zip(("Resolve", "SettleHolds"), told, strict=True):
            for shard, answer in answers.items():
                if isinstance(answer, grpc.aio.AioRpcError):
                    log.warning("%s on shard %d failed: %s", method, shard, answer.code().name)

    async def decide_holds(self, resolutions: Sequence[HoldResolution]) -> list[pb.ItemResult]:
        """Posts and voids of cross-shard holds: the participants' pieces get a short deadline,
        the coordinators decide, the participants settle as decided. Each one's result."""
        failed = await self._rearm(resolutions)
        if failpoints.ARMED:  # the participants wait for a decision that is not made yet
            await failpoints.hit("gateway.after_rearm")
        results: list[pb.ItemResult | None] = [failed.get(n) for n in range(len(resolutions))]
        decide: dict[int, list[int]] = {}
        for n, hold in enumerate(resolutions):
            if results[n] is None:
                decide.setdefault(hold.coordinator, []).append(n)
        decided = await self._per_shard(
            "DecideHolds",
            {
                shard: spb.DecideHoldsRequest(
                    items=[
                        spb.DecideHoldItem(
                            resolution=resolutions[n].message,
                            decide_before_ns=resolutions[n].decide_before_ns,
                        )
                        for n in chosen
                    ]
                )
                for shard, chosen in decide.items()
            },
            "results",
        )
        if failpoints.ARMED and decided:  # the fates are durable; no participant knows yet
            await failpoints.hit("gateway.after_hold_decided")
        outcome = Outcome()
        for shard, chosen in decide.items():
            for position, n in enumerate(chosen):
                # A DecideHolds that failed in transport may have decided the hold: the retry
                # with the same id learns it (REPLAYED); never "nothing was applied".
                result = _answer(decided[shard], position, outcome_if_lost=True)
                results[n] = result
                if result.code in OK_CODES:
                    outcome.settle_fate(resolutions[n])
        await self._tell(outcome)
        return [r if r is not None else pb.ItemResult() for r in results]

    async def _rearm(self, holds: Sequence[HoldResolution]) -> dict[int, pb.ItemResult]:
        """Give the participants of these holds the short deadline before their fates are
        decided, and learn the clocks of their coordinators in the same round (an empty call).
        The holds (by position) not to be decided now (retryable): a participant or the
        coordinator could not be reached, a participant did not re-arm its piece (it would not
        ask in time), or a participant's clock is ahead of the coordinator's beyond the bound
        (it could ask before the decision's limit on the coordinator's clock)."""
        sent_ns = failpoints.wall_ns()
        rearm: dict[int, list[tuple[int, spb.SettleHoldItem]]] = {}
        for n, hold in enumerate(holds):
            rearm.setdefault(hold.coordinator, [])
            for shard, item in hold.rearm(sent_ns):
                rearm.setdefault(shard, []).append((n, item))
        requests = {
            shard: spb.SettleHoldsRequest(items=[item for _, item in items])
            for shard, items in rearm.items()
        }
        answered = await self._per_shard("SettleHolds", requests, "")
        answered_ns = failpoints.wall_ns()
        failed: dict[int, pb.ItemResult] = {}
        why: dict[int, str] = {}
        for n, hold in enumerate(holds):
            unreachable = answered[hold.coordinator]
            if isinstance(unreachable, grpc.aio.AioRpcError):
                failed[n], why[n] = _unavailable(unreachable), "unreachable"
        for shard, entries in rearm.items():
            answer = answered[shard]
            for position, (n, item) in enumerate(entries):
                if isinstance(answer, grpc.aio.AioRpcError):
                    failed.setdefault(n, _unavailable(answer))
                    why.setdefault(n, "unreachable")
                    continue
                problem = _rearm_problem(shard, item, answer[0].results[position])
                reason = "rearm_failed"
                if problem is None:
                    coordinator = holds[n].coordinator
                    ahead_ns = _ahead_at_least_ns(
                        answer, answered[coordinator], sent_ns, answered_ns
                    )
                    problem, reason = (
                        _skew_problem(shard, coordinator, item, ahead_ns),
                        "clock_skew",
                    )
                if problem is not None:
                    failed.setdefault(n, problem)
                    why.setdefault(n, reason)
        if self._observe_undecided is not None:
            for reason in why.values():
                self._observe_undecided(reason)
        return failed


def _decided(
    unit: Unit, outcome: Outcome, k: int, decision: spb.Decision, why: pb.ItemResult
) -> pb.ItemResult:
    """Transaction k's result from its coordinator's decision on an abort asked for `why`
    (and what its participants must hear, into outcome)."""
    if decision.moved:
        # A hold this attempt committed, whose record moved with its slot since: its pieces
        # stay held (its fate is its new shard's); the retry with the same id reads it there.
        return pb.ItemResult(
            code=pb.RESULT_CODE_OUTCOME_UNKNOWN,
            message="the hold's slot moved to another shard; retry with the same id",
        )
    unit.resolves(outcome, k, decision.committed, decision.timestamp_ns)
    if decision.committed or decision.reason == pb.RESULT_CODE_REPLAYED:
        # Committed all the same (the Commit answer was lost), or by an earlier attempt of
        # the same transaction: this is its replay.
        return pb.ItemResult(code=pb.RESULT_CODE_REPLAYED, timestamp_ns=decision.timestamp_ns)
    if why.code == pb.RESULT_CODE_OUTCOME_UNKNOWN:
        # The lost Commit had not landed, and now never will: nothing applied.
        return pb.ItemResult(
            code=pb.RESULT_CODE_UNAVAILABLE,
            message="the coordinator shard did not answer the commit; it was not applied, and "
            "this attempt is aborted: retry with the same id",
        )
    return pb.ItemResult(code=decision.reason, message=decision.message or why.message)


def _ahead_at_least_ns(
    participant: list[Any] | grpc.aio.AioRpcError,
    coordinator: list[Any] | grpc.aio.AioRpcError,
    sent_ns: int,
    answered_ns: int,
) -> int:
    """The least by which the participant's clock is ahead of the coordinator's, from their
    answers to one round of calls sent at sent_ns and all answered by answered_ns on this
    clock: each read its clock in between (0: not known, say a node that does not tell)."""
    if isinstance(participant, grpc.aio.AioRpcError) or isinstance(
        coordinator, grpc.aio.AioRpcError
    ):
        return 0
    participant_ns, coordinator_ns = participant[0].clock_ns, coordinator[0].clock_ns
    if not participant_ns or not coordinator_ns:
        return 0
    return int((participant_ns - answered_ns) - (coordinator_ns - sent_ns))


def _rearm_problem(
    shard: int, item: spb.SettleHoldItem, answer: pb.ItemResult
) -> pb.ItemResult | None:
    """Why a participant's answer to a re-arm forbids deciding its hold now (None: it allows).
    A piece already settled needs no deadline (its hold is decided: the coordinator says so)."""
    if answer.code in OK_CODES or answer.code == pb.RESULT_CODE_PENDING_ALREADY_RESOLVED:
        return None
    log.warning(
        "re-arming %s on shard %d failed: %s %s; not deciding it",
        item.transaction_id, shard, pb.ResultCode.Name(answer.code), answer.message,
    )  # fmt: skip
    return pb.ItemResult(
        code=pb.RESULT_CODE_UNAVAILABLE,
        message=f"shard {shard} could not give its piece of hold {item.transaction_id!r} "
        f"a deadline ({answer.message or pb.ResultCode.Name(answer.code)}); nothing was "
        "decided, retry with the same id",
    )


def _skew_problem(
    shard: int, coordinator: int, item: spb.SettleHoldItem, ahead_ns: int
) -> pb.ItemResult | None:
    """A participant's clock ahead of its coordinator's by more than the bound (measured so
    that a clock within it is never refused) forbids the decision: None if within it."""
    bound_ns = clock_skew_max_ns(PREPARE_DEADLINE_S)
    if ahead_ns <= bound_ns:
        return None
    log.error(
        "shard %d's clock reads at least %.3f s ahead of shard %d's, beyond the bound of "
        "%.3f s: not deciding hold %s",
        shard, ahead_ns / 1e9, coordinator, bound_ns / 1e9, item.transaction_id,
    )  # fmt: skip
    return pb.ItemResult(
        code=pb.RESULT_CODE_UNAVAILABLE,
        message=f"shard {shard}'s clock reads {ahead_ns / 1e9:.3f} s ahead of the coordinator "
        f"shard {coordinator}'s, beyond the cluster's bound of {bound_ns / 1e9:.3f} s "
        f"(docs/cross-shard.md, Clocks); hold {item.transaction_id!r} was not decided, retry "
        "with the same id",
    )


def _answer(
    answers: list[Any] | grpc.aio.AioRpcError, position: int, outcome_if_lost: bool = False
) -> pb.ItemResult:
    """The answer at position, or for a failed call: the Commit of a coordinator that may have
    landed is OUTCOME_UNKNOWN until asked (see execute_units); a Prepare's is UNAVAILABLE,
    since an attempt that is not committed applies nothing."""
    if isinstance(answers, grpc.aio.AioRpcError):
        if outcome_if_lost:
            return outcomes.failed_call_result(answers, "shard")
        return _unavailable(answers)
    result: pb.ItemResult = answers[position]
    return result
