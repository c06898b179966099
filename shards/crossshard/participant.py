"""A shard's side of cross-shard transactions (the gateway's side is shards.crossshard.coordinator).

The records a shard applies when a gateway prepares, commits, aborts, decides or settles at it,
as a participant holding pieces or as the coordinator recording the decision, and how it
answers; and the participant's own sweep, which asks a coordinator about pieces held past
their deadline and settles them as decided. The node's tally.v1.Shard servicer
(shards.node.shard_service) is the gRPC plumbing around these; no I/O here but the sweep's
calls to coordinators and its writes, through a Submitter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import grpc

from core import ids, validation
from core.currencies import is_known_currency
from core.model import (
    SUCCESS_CODES,
    AccountSpec,
    Kind,
    Rejection,
    Result,
    ResultCode,
    Status,
    TransactionSpec,
    TransactionState,
)
from core.pieces import (
    DeadlineMode,
    clearing_account_spec,
    deadline_spec,
    fate_piece,
    hold_settlement_spec,
    resolution_spec,
    reversal_mark_spec,
    with_digest,
)
from core.slots import SLOT_COUNT
from core.state import Item, replay_result
from shards import failpoints
from shards.crossshard.clocks import open_hold_deadline
from shards.rpc import convert
from shards.security.credentials import ClientSecurity, aio_channel
from tally.v1 import ledger_pb2 as pb
from tally.v1 import shard_pb2 as spb
from tally.v1 import shard_pb2_grpc as spb_grpc

log = logging.getLogger("tally.crossshard")

# How long the sweep waits for a coordinator's decisions (as the gateway waits for a shard).
ASK_TIMEOUT_S = 30.0
# An abort marker keeps this much of the reason's message.
MESSAGE_LENGTH_MAX = 256
TOO_LATE = "the participants' deadline is too near; retry with the same id"


class Submitter(Protocol):
    """What the sweep needs of a shard's writer: apply records, each answered."""

    async def submit(self, items: Sequence[Item]) -> list[Result]: ...


# ---- Prepare: a participant's pieces ----


def prepared_piece(item: spb.PrepareItem) -> TransactionSpec | Rejection:
    """A participant's piece: held under the attempt's piece id until resolved."""
    if item.reverses_id and item.decides:
        return Rejection(
            ResultCode.INVALID_FLAGS, "reverses_id and decides are exclusive", item.piece.linked
        )
    if item.reverses_id and not item.piece.legs:
        return _legless_reversal_piece(item)
    spec = convert.transaction_from_proto(item.piece)
    if isinstance(spec, Rejection):
        return spec
    if not item.decides and spec.kind not in _PLAIN_KINDS:
        return Rejection(ResultCode.INVALID_FLAGS, _NOT_PLAIN, spec.linked)
    if item.decides:
        if spec.kind not in (Kind.POST_PENDING, Kind.VOID_PENDING):
            return Rejection(ResultCode.INVALID_FLAGS, "decides: not a post or void", spec.linked)
        problem = validation.clearing_leg_problem(spec.legs)  # the client's post, as sent
        if problem:
            return Rejection(ResultCode.INVALID_LEGS, problem, spec.linked)
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


def _legless_reversal_piece(item: spb.PrepareItem) -> TransactionSpec | Rejection:
    """The piece of a reversal at its original's shard, where the original had no legs (a
    transaction of a linked group with none there): it holds nothing, only the lock."""
    message = item.piece
    for value, field in ((message.id, "id"), (item.reverses_id, "reverses_id")):
        problem = validation.id_problem(value, field)
        if problem:
            return Rejection(ResultCode.INVALID_ID, problem, message.linked)
    rejection = _legless_problem(message)
    if rejection is not None:
        return rejection
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


# A piece of a unit's legs is a transfer or a hold; the reversals, posts and voids among a
# unit's transactions travel as the fields of the items (reverses_id, decides, as_sent).
_PLAIN_KINDS = frozenset({Kind.ORDINARY, Kind.PENDING})
_NOT_PLAIN = (
    "a piece's post_pending_id, void_pending_id and reverses_id must be empty (the item says "
    "what the piece reverses or decides)"
)


def _legless_problem(message: pb.Transaction) -> Rejection | None:
    """A piece without legs, built without check_transaction: its other fields checked."""
    if message.post_pending_id or message.void_pending_id or message.reverses_id:
        return Rejection(ResultCode.INVALID_FLAGS, _NOT_PLAIN, message.linked)
    kind = Kind.PENDING if message.pending else Kind.ORDINARY
    rejection = validation.check_scalars(
        message.code, message.metadata, message.value_date, kind, message.timeout_seconds
    )
    if rejection is None:
        return None
    return Rejection(rejection.code, rejection.message, message.linked)


def commit_piece(
    message: pb.Transaction,
    attempt: str,
    digest: str = "",
    shards: Sequence[int] = (),
    reversal_of: str = "",
) -> TransactionSpec | Rejection:
    """The coordinator's piece under the client's id: applying it records the attempt's
    commit. Without legs (a transaction of a linked group with none on this shard, or one
    whose id's home holds none of its legs) it records only the decision. It carries the
    digest of the client's legs on every shard (core.ids.DIGEST_KEY) and the shards of the
    attempt's other pieces (core.ids.SHARDS_KEY) and, for a reversal, what it reverses
    (core.ids.REVERSAL_OF_KEY) when given."""
    spec = _commit_piece(message, attempt)
    if isinstance(spec, Rejection):
        return spec
    if digest and not (len(digest) == 32 and all(c in "0123456789abcdef" for c in digest)):
        return Rejection(
            ResultCode.INVALID_METADATA, "legs_digest must be 32 hex digits", spec.linked
        )
    if len(shards) > SLOT_COUNT or any(s >= SLOT_COUNT for s in shards):
        return Rejection(
            ResultCode.INVALID_METADATA,
            f"participant_shards: at most {SLOT_COUNT} shard ids, each below {SLOT_COUNT}",
            spec.linked,
        )
    problem = validation.id_problem(reversal_of, "reversal_of") if reversal_of else ""
    if problem:
        return Rejection(ResultCode.INVALID_ID, problem, spec.linked)
    return with_digest(spec, digest, shards, reversal_of)


def _commit_piece(message: pb.Transaction, attempt: str) -> TransactionSpec | Rejection:
    marker_id = ids.abort_marker_id(message.id, attempt)
    # A hold's piece here is the hold record (its legs held, expiring as the client asked).
    kind = Kind.HOLD if message.pending else Kind.COMMIT
    timeout_seconds = message.timeout_seconds if message.pending else 0
    if message.legs:
        spec = convert.transaction_from_proto(message)
        if isinstance(spec, Rejection):
            return spec
        if spec.kind not in _PLAIN_KINDS:
            return Rejection(ResultCode.INVALID_FLAGS, _NOT_PLAIN, spec.linked)
        return spec._replace(kind=kind, target_id=marker_id, timeout_seconds=timeout_seconds)
    problem = validation.id_problem(message.id, "id")
    if problem:
        return Rejection(ResultCode.INVALID_ID, problem, message.linked)
    rejection = _legless_problem(message)
    if rejection is not None:
        return rejection
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


def as_sent_problem(message: pb.Transaction) -> str:
    """Why a Commit item's piece cannot be applied as the client sent it ("": it can): that is
    only for a client's reversal, post or void, and never with a leg on a clearing account."""
    if not (message.post_pending_id or message.void_pending_id or message.reverses_id):
        return "as_sent is only for a client's reversal, post or void"
    return validation.clearing_leg_problem(convert.leg_from_proto(leg) for leg in message.legs)


def hold_fate(item: spb.CommitItem, now_ns: int) -> TransactionSpec | Rejection:
    """The client's post or void of a cross-shard hold recorded here, in a linked chain."""
    spec = convert.transaction_from_proto(item.piece)
    if isinstance(spec, TransactionSpec) and spec.kind not in (
        Kind.POST_PENDING,
        Kind.VOID_PENDING,
    ):
        return Rejection(ResultCode.INVALID_FLAGS, "a hold's fate is a post or a void", True)
    if item.decide_before_ns <= now_ns:
        return Rejection(ResultCode.UNAVAILABLE, TOO_LATE, item.piece.linked)
    return spec


# ---- Commit and Abort: the coordinator's records ----


def commit_records(
    items: Sequence[spb.CommitItem], now_ns: int
) -> tuple[list[Item], list[tuple[int, Item]]]:
    """The records a coordinator applies for a Commit call, in the request's order (a
    reversal's mark first, linked to its piece), but its hold fates, which come apart with
    their positions in that order: their legs name accounts of every shard, so they are not
    checked against this shard's slots. Insert them back in order before submitting."""
    records: list[Item | None] = []
    fates: list[tuple[int, Item]] = []
    for item in items:
        if item.reverses_id:
            records.append(reversal_mark_spec(item.piece.id, item.reverses_id, item.piece.code))
        if item.decide_before_ns:
            fates.append((len(records), hold_fate(item, now_ns)))
            records.append(None)
            continue
        if item.as_sent:
            records.append(convert.transaction_from_proto(item.piece))
            continue
        records.append(
            commit_piece(
                item.piece,
                item.attempt,
                item.legs_digest,
                item.participant_shards,
                item.reversal_of,
            )
        )
    return [record for record in records if record is not None], fates


def commit_answers(items: Sequence[spb.CommitItem], results: Sequence[Result]) -> list[Result]:
    """One answer per Commit item from the results of its records (commit_records): a
    reversal's mark and piece answer as one."""
    answers = []
    position = 0
    for item in items:
        if item.reverses_id:  # the mark and the piece, linked: one answer
            mark, piece = results[position], results[position + 1]
            position += 2
            failed = (
                mark.code not in SUCCESS_CODES and mark.code is not ResultCode.LINKED_ITEM_FAILED
            )
            answers.append(mark if failed else piece)
        else:
            answers.append(results[position])
            position += 1
    return answers


def clearing_account_item(index: int, currency: str) -> AccountSpec | Rejection:
    """The clearing account of one currency of a CreateClearingAccounts call."""
    if not is_known_currency(currency):
        return Rejection(
            ResultCode.INVALID_CURRENCY, f"currencies[{index}] {currency[:8]!r} is not ISO 4217"
        )
    return clearing_account_spec(currency)


def abort_marker(item: spb.AbortItem) -> TransactionSpec:
    """The attempt's abort marker, recorded unless the attempt committed."""
    reason = item.reason or ResultCode.UNAVAILABLE
    return TransactionSpec(
        ids.abort_marker_id(item.transaction_id, item.attempt),
        Kind.ABORT,
        (),
        int(reason),
        (("message", item.message[:MESSAGE_LENGTH_MAX]),) if item.message else (),
        "",
        0,
        item.transaction_id,
    )


def committed_holds(
    items: Sequence[spb.AbortItem], found: dict[str, TransactionState]
) -> dict[str, TransactionState]:
    """The holds among the asked transactions that these attempts committed (by id)."""
    return {
        i.transaction_id: found[i.transaction_id]
        for i in items
        if (state := found.get(i.transaction_id)) is not None
        and state.spec.kind is Kind.HOLD
        and state.spec.target_id == ids.abort_marker_id(i.transaction_id, i.attempt)
    }


def overdue_holds(holds: dict[str, TransactionState], now_ns: int) -> list[str]:
    """Open holds past their expiry, to expire before answering (a participant asks at that
    deadline)."""
    return [
        t
        for t, state in holds.items()
        if state.status is Status.PENDING and 0 < state.expires_at_ns <= now_ns
    ]


def decision(
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
            asked = commit_piece(item.piece, item.attempt, item.legs_digest)
            if isinstance(asked, TransactionSpec):  # the attempt's own marker is no difference
                replay = replay_result(recorded, asked, ("target_id",))
                if replay.code is ResultCode.IDEMPOTENCY_CONFLICT:
                    reason, message = replay.code, replay.message
        return spb.Decision(reason=reason, message=message, timestamp_ns=recorded.timestamp_ns)
    if (
        recorded is not None
        and recorded.spec.kind in (Kind.ORDINARY, Kind.PENDING)
        and item.HasField("piece")
        and item.legs_digest
    ):
        # The id's home holds a single-shard transaction under it: this attempt never commits;
        # it is that transaction again (REPLAYED: say, after the slot map moved its accounts)
        # or another one (IDEMPOTENCY_CONFLICT, naming what differs).
        asked = commit_piece(item.piece, item.attempt, item.legs_digest)
        if isinstance(asked, TransactionSpec):
            return _replayed_or_conflict(
                recorded, asked, "recorded earlier as a single-shard transaction"
            )
    if (
        recorded is not None
        and recorded.spec.kind in (Kind.POST_PENDING, Kind.VOID_PENDING, Kind.REVERSAL)
        and (item.piece.post_pending_id or item.piece.void_pending_id or item.piece.reverses_id)
    ):
        # A reversal, post or void applied here as the client sent it (in a linked group) by
        # an earlier attempt of the group, or alone: this attempt's commit was refused.
        asked = convert.transaction_from_proto(item.piece)
        if isinstance(asked, TransactionSpec):
            return _replayed_or_conflict(recorded, asked, "decided by an earlier attempt")
    if marker is not None:
        return spb.Decision(
            reason=marker.spec.code, message=dict(marker.spec.metadata).get("message", "")
        )
    return None


# ---- the participant's sweep: pieces past their deadline ----


async def settle_prepared(
    writer: Submitter,
    overdue: Sequence[tuple[str, int, int, int]],
    endpoints: dict[int, str],
    security: ClientSecurity,
    home_of: Callable[[str], int] | None = None,
) -> None:
    """Ask each coordinator for its decisions (recording abort where there is none) and post
    or void the pieces here accordingly. Coordinators are asked concurrently, and one that
    cannot answer (down, or unable to decide one id) holds back only its own pieces. A
    coordinator that moved a transaction's slot out (Decision.moved: its record went with it)
    is asked no more about it: the shard its id is homed at now is (home_of, this node's slot
    map), in a second round; moved on again, the next sweep asks."""
    seen = {piece: (deadline_ns, timeout_s) for piece, _, deadline_ns, timeout_s in overdue}
    by_coordinator: dict[int, list[str]] = {}
    for piece, coordinator, _, _ in overdue:
        by_coordinator.setdefault(coordinator, []).append(piece)
    moved = await _ask_round(writer, by_coordinator, endpoints, seen, security)
    if not moved or home_of is None:
        return
    again: dict[int, list[str]] = {}
    for coordinator, piece in moved:
        home = home_of(ids.parse_piece_id(piece)[0])
        if home >= 0 and home != coordinator:
            again.setdefault(home, []).append(piece)
    await _ask_round(writer, again, endpoints, seen, security)


async def _ask_round(
    writer: Submitter,
    by_coordinator: dict[int, list[str]],
    endpoints: dict[int, str],
    seen: dict[str, tuple[int, int]],
    security: ClientSecurity,
) -> list[tuple[int, str]]:
    """One round of settle_prepared: the (coordinator, piece) answered moved."""
    outcomes = await asyncio.gather(
        *(
            _settle_with(
                writer, coordinator, transaction_ids, endpoints.get(coordinator), seen, security
            )
            for coordinator, transaction_ids in by_coordinator.items()
        ),
        return_exceptions=True,
    )
    moved: list[tuple[int, str]] = []
    for coordinator, outcome in zip(by_coordinator, outcomes, strict=True):
        if isinstance(outcome, BaseException):  # say the writer is draining: next sweep
            log.warning("settling pieces of coordinator %d failed: %r", coordinator, outcome)
        else:
            moved += [(coordinator, piece) for piece in outcome]
    return moved


async def _settle_with(
    writer: Submitter,
    coordinator: int,
    pieces: list[str],
    endpoint: str | None,
    seen: dict[str, tuple[int, int]],
    security: ClientSecurity,
) -> list[str]:
    """Ask one coordinator about pieces and settle them as it answers: those it answered
    moved (nothing decided there)."""
    if endpoint is None:
        log.warning("no endpoint for coordinator shard %d", coordinator)
        return []
    decided: list[tuple[str, Any]] = []
    # The coordinator's internal listener, as a cluster identity (this node's certificate).
    async with aio_channel(endpoint, security) as channel:
        stub = spb_grpc.ShardStub(channel)
        try:
            decided = list(zip(pieces, await _ask(stub, pieces), strict=True))
        except grpc.aio.AioRpcError as error:
            log.warning("asking shard %d for decisions failed: %r", coordinator, error)
            if len(pieces) == 1 or error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return []
            # One id it cannot decide must not hold back the others: ask for each alone.
            for piece in pieces:
                try:
                    (decision,) = await _ask(stub, [piece])
                except grpc.aio.AioRpcError as error:
                    log.warning("asking for %s failed: %r", piece, error)
                    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        break
                    continue
                decided.append((piece, decision))
    moved = [piece for piece, d in decided if d.moved]
    decided = [(piece, d) for piece, d in decided if not d.moved]
    if not decided:
        return moved
    resolutions = [
        _hold_settlement(piece, d.hold, *seen[piece])
        if d.committed and d.HasField("hold")
        else resolution_spec(piece, d.committed)
        for piece, d in decided
    ]
    results = await writer.submit(resolutions)
    for (piece, _), result in zip(decided, results, strict=True):
        if result.code not in (ResultCode.CREATED, ResultCode.REPLAYED):
            log.warning("settling %s: %s %s", piece, result.code.name, result.message)
    return moved


def _hold_settlement(
    piece: str, hold: spb.HoldState, seen_ns: int, timeout_s: int
) -> TransactionSpec:
    """A committed hold's piece, asked about at its deadline seen_ns: kept until the hold's
    expiry while it is open (unless a decision re-armed it meanwhile), else settled as its
    coordinator decided. timeout_s: the piece's prepare deadline. An open hold's piece is
    asked about again by its expiry or within HOLD_REASK_S (clocks.open_hold_deadline): a
    decision whose news is lost is heard then."""
    now_ns = failpoints.wall_ns()
    deadline_ns = open_hold_deadline(now_ns, hold.expires_at_ns)
    if hold.deciding or deadline_ns <= now_ns:
        # A linked group's piece at the coordinator decides it, or the hold is past its expiry
        # here but not on the coordinator's clock (behind this one's): ask again after a
        # prepare deadline, not at every sweep.
        deadline_ns = now_ns + max(1, timeout_s) * 1_000_000_000
    spec = settlement_spec(
        piece, hold.fate, deadline_ns, hold.resolution, DeadlineMode.ASKED, seen_ns
    )
    if spec is None:
        raise ValueError(f"coordinator answered {piece} with an unusable hold state {hold}")
    return spec


async def _ask(stub: spb_grpc.ShardStub, pieces: list[str]) -> Any:
    items = []
    for piece in pieces:
        transaction_id, attempt = ids.parse_piece_id(piece)
        items.append(
            spb.AbortItem(
                transaction_id=transaction_id,
                attempt=attempt,
                reason=pb.RESULT_CODE_ABORTED,
                message="the participants' deadline passed before a decision; retry with the "
                "same id",
            )
        )
    response = await stub.Abort(spb.AbortRequest(items=items), timeout=ASK_TIMEOUT_S)
    return response.decisions


# ---- holds whose legs span shards: their state at the coordinator, settled at participants ----

_RESOLVED_FATES = {
    Status.PENDING_POSTED: spb.HOLD_FATE_POSTED,
    Status.PENDING_VOIDED: spb.HOLD_FATE_VOIDED,
    Status.PENDING_EXPIRED: spb.HOLD_FATE_EXPIRED,
}


def hold_state(hold: TransactionState, resolution: TransactionState | None) -> spb.HoldState:
    """A cross-shard hold's state at its coordinator, with the post or void that resolved it."""
    if hold.status is Status.PENDING:
        return spb.HoldState(
            fate=spb.HOLD_FATE_OPEN,
            expires_at_ns=hold.expires_at_ns,
            deciding=bool(hold.resolved_by_id),
        )
    state = spb.HoldState(fate=_RESOLVED_FATES[hold.status])
    if resolution is not None and resolution.spec.kind is not Kind.EXPIRY:
        state.resolution.CopyFrom(convert.transaction_spec_to_proto(resolution.spec))
    return state


def resolution_problem(item: spb.SettleHoldItem) -> str:
    """Why a SettleHolds item's resolution is not the client's post or void of its hold, as
    the gateway checked it ("": it is; OPEN and EXPIRED carry none)."""
    if item.fate not in (spb.HOLD_FATE_POSTED, spb.HOLD_FATE_VOIDED):
        return ""
    spec = convert.transaction_from_proto(item.resolution)
    if isinstance(spec, Rejection):
        return f"resolution: {spec.message}"
    posted = item.fate == spb.HOLD_FATE_POSTED
    wanted = Kind.POST_PENDING if posted else Kind.VOID_PENDING
    field = "post_pending_id" if posted else "void_pending_id"
    if spec.kind is not wanted:
        fate, what = ("POSTED", "post") if posted else ("VOIDED", "void")
        return f"resolution of a {fate} hold must be its {what} ({field})"
    if spec.target_id != item.transaction_id:
        return f"resolution.{field} {spec.target_id!r} is not the hold {item.transaction_id!r}"
    problem = validation.clearing_leg_problem(spec.legs)
    return f"resolution: {problem}" if problem else ""


def settlement_spec(
    piece: str,
    fate: int,
    deadline_ns: int,
    resolution: pb.Transaction,
    mode: DeadlineMode = DeadlineMode.CONFIRM,
    seen_ns: int = 0,
) -> TransactionSpec | None:
    """The record that settles a participant's piece of a cross-shard hold as decided (for
    OPEN: gives it another deadline, as `mode` allows)."""
    if fate == spb.HOLD_FATE_OPEN:
        # Never 0 ("none"): a held piece without a deadline would never be asked about again.
        return deadline_spec(piece, deadline_ns, mode, seen_ns) if deadline_ns > 0 else None
    if fate == spb.HOLD_FATE_EXPIRED:
        return hold_settlement_spec(piece, Kind.EXPIRY, "")
    if not resolution.id:
        return None
    if fate == spb.HOLD_FATE_VOIDED:
        return hold_settlement_spec(piece, Kind.VOID_PENDING, resolution.id)
    if fate == spb.HOLD_FATE_POSTED:
        legs = tuple(convert.leg_from_proto(leg) for leg in resolution.legs)
        return hold_settlement_spec(piece, Kind.POST_PENDING, resolution.id, legs)
    return None


def _replayed_or_conflict(
    recorded: TransactionState, asked: TransactionSpec, replayed_because: str
) -> spb.Decision:
    """The decision for an attempt whose id is recorded here by something else: the same
    transaction (REPLAYED, with its timestamp) or another one (IDEMPOTENCY_CONFLICT, naming
    what differs)."""
    replay = replay_result(recorded, asked, ())
    if replay.code is ResultCode.IDEMPOTENCY_CONFLICT:
        return spb.Decision(reason=replay.code, message=replay.message)
    return spb.Decision(
        reason=ResultCode.REPLAYED, message=replayed_because, timestamp_ns=recorded.timestamp_ns
    )
