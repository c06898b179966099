"""The node's slot-move RPCs (tally.v1.Shard MoveSlotsOut and MoveSlotsIn, served on the
internal listener to cluster identities only, like the rest of Shard): every field checked,
every refusal a status naming what is wrong, the work done by the writer (shards.node.moves).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Final, Protocol

import grpc
from google.protobuf.message import DecodeError

from core import ids, journal, limits, moves
from core.model import AccountSpec, AccountState, Kind, Status, TransactionState
from core.slots import SLOT_COUNT
from core.store import moves as store_moves
from core.store import shard as store
from core.store.moves import ColdRecords
from shards.node.ledger_service import NodeView
from shards.node.moves import MovedOut, Staged, move_in, move_out, stage
from shards.node.writer import QueueFullError, WriterUnavailableError
from tally.v1 import shard_pb2 as spb

log = logging.getLogger("tally.moves")

Context = Any  # grpc.aio.ServicerContext

# A page of a move read from the source's read pool (ReadMovedOut).
MOVE_READ_TIMEOUT_S: Final = 30.0


class MoveNode(NodeView, Protocol):
    def note_moved_out(self) -> None: ...

    @property
    def cold_history(self) -> ColdRecords | None: ...


def cold_of(node: MoveNode) -> ColdRecords | None:
    """The node's cold history (None without a cold directory), whose records of the moving
    slots move too."""
    return node.cold_history


# ---- domain <-> wire ----


def moved_account(account: AccountState) -> spb.MovedAccount:
    return spb.MovedAccount(
        line=journal.account_line(account),
        debits_posted=account.debits_posted,
        credits_posted=account.credits_posted,
        version=account.version,
        closed_at_ns=account.closed_at_ns,
    )


def moved_record(record: TransactionState) -> spb.MovedRecord:
    return spb.MovedRecord(
        line=journal.transaction_line(record, *journal.legs_texts(record)),
        status=int(record.status),
        expires_at_ns=record.expires_at_ns,
        resolved_by_id=record.resolved_by_id,
        reversed_by_id=record.reversed_by_id,
    )


def _account_line(field: str, message: spb.MovedAccount) -> tuple[AccountSpec, int]:
    """The one account line a moved account carries: its spec and creation time; ValueError
    naming field when it is not exactly one canonical account line."""
    try:
        parsed = journal.parse_lines(message.line.encode())
    except journal.LineError as error:
        raise ValueError(f"{field}.line: {error}") from None
    if len(parsed.accounts) != 1 or parsed.transactions or parsed.postings or parsed.closures:
        raise ValueError(f"{field}.line must be one account line")
    return parsed.accounts[0]


def account_of(n: int, message: spb.MovedAccount) -> AccountState:
    """ValueError naming accounts[n] and its fault."""
    spec, created_at_ns = _account_line(f"accounts[{n}]", message)
    numbers = (message.debits_posted, message.credits_posted, message.version)
    if min(numbers) < 0 or message.closed_at_ns < 0:
        raise ValueError(f"accounts[{n}]: counters, version and closed_at_ns must not be negative")
    if spec.is_spread:
        raise ValueError(f"accounts[{n}]: spread account {spec.id!r} never moves")
    return AccountState(
        spec,
        created_at_ns,
        message.debits_posted,
        message.credits_posted,
        0,
        0,
        message.version,
        message.closed_at_ns,
    )


def spread_of(n: int, message: spb.MovedAccount) -> AccountState:
    """A spread account to create if missing, empty; ValueError naming spread_accounts[n]."""
    spec, created_at_ns = _account_line(f"spread_accounts[{n}]", message)
    if not spec.is_spread or ids.is_moves_account(spec.id):
        raise ValueError(f"spread_accounts[{n}]: {spec.id[:80]!r} is not a spread account")
    if message.debits_posted or message.credits_posted or message.closed_at_ns:
        raise ValueError(f"spread_accounts[{n}]: a spread account moves empty and open")
    return AccountState(spec, created_at_ns)


def record_of(n: int, message: spb.MovedRecord) -> TransactionState:
    """ValueError naming records[n] and its fault."""
    try:
        parsed = journal.parse_lines(message.line.encode())
    except journal.LineError as error:
        raise ValueError(f"records[{n}].line: {error}") from None
    if len(parsed.transactions) != 1 or parsed.accounts or parsed.postings or parsed.closures:
        raise ValueError(f"records[{n}].line must be one transaction line")
    spec, applied_legs, timestamp_ns = parsed.transactions[0]
    if message.status not in {int(s) for s in Status}:
        raise ValueError(f"records[{n}].status {message.status} is not a status")
    piece = spec.kind is Kind.PREPARED and ids.is_piece_id(spec.id)
    if piece and message.status != Status.PENDING:
        raise ValueError(f"records[{n}]: a cross-shard piece moves only held")
    open_kinds = (Kind.PENDING, Kind.HOLD)
    if message.status == Status.PENDING and spec.kind not in open_kinds and not piece:
        raise ValueError(
            f"records[{n}]: only a single-shard hold, a cross-shard hold's record or a held "
            "cross-shard piece moves open"
        )
    if message.expires_at_ns < 0:
        raise ValueError(f"records[{n}].expires_at_ns must not be negative")
    if ids.is_reserved(spec.id) and not piece:
        raise ValueError(f"records[{n}]: reserved record {spec.id[:80]!r} never moves")
    return TransactionState(
        spec,
        applied_legs,
        timestamp_ns,
        Status(message.status),
        message.expires_at_ns,
        message.resolved_by_id,
        message.reversed_by_id,
    )


# ---- the handlers ----


async def _checked_slots(context: Context, move_id: str, slots: Iterable[int]) -> frozenset[int]:
    if not ids.is_move_id(move_id):
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"move_id {move_id[:40]!r} must be 1..{ids.MOVE_ID_LENGTH_MAX} characters 0-9 a-f",
        )
    try:
        return moves.check_slots(slots)
    except moves.MoveRefusedError as error:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        raise  # not reached: abort raises


async def _run(node: NodeView, context: Context, operation: Any) -> Any:
    """The operation's result; every way it can fail as a status the mover can act on."""
    writer = node.writer
    if writer is None:
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, "standby: this node does not hold the lease"
        )
    assert writer is not None
    try:
        return await writer.run_operation(operation)
    except moves.MoveBusyError as error:  # may pass soon: the mover asks again for a while
        await context.abort(grpc.StatusCode.ABORTED, str(error))
    except moves.MoveRefusedError as error:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
    except (QueueFullError, WriterUnavailableError) as error:
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
    except store.FencedError:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "this node lost its writer lease; retry")
    except Exception as error:  # storage: the step committed or not; asking again is safe
        log.warning("a slot move's step failed: %r", error)
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, f"the step could not be completed ({error!r}); retry"
        )


async def move_slots_out(
    node: MoveNode, request: spb.MoveSlotsOutRequest, context: Context
) -> spb.MoveSlotsOutResponse:
    slots = await _checked_slots(context, request.move_id, request.slots)
    if request.target_shard not in node.shard_ids or request.target_shard == node.shard_id:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"target_shard {request.target_shard} is no other shard of this cluster",
        )
    owned = node.owned_slots
    writer = node.writer
    moved_here = writer.moved_out if writer is not None else {}
    foreign = sorted(s for s in slots if owned is not None and s not in owned)
    if any(moved_here.get(s) != request.move_id for s in foreign):
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"slots {foreign[:10]} are not this shard's (slot map version "
            f"{node.slot_map.version if node.slot_map else 0})",
        )
    if len(request.checked_piece_ids) > moves.MOVE_READ_ITEM_COUNT_MAX:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"at most {moves.MOVE_READ_ITEM_COUNT_MAX} checked_piece_ids",
        )
    checked = frozenset(request.checked_piece_ids) if request.pieces_checked else None
    moved: MovedOut = await _run(
        node,
        context,
        move_out(request.move_id, slots, request.target_shard, cold_of(node), checked),
    )
    node.note_moved_out()
    # What moves is read in pages (ReadMovedOut): the answer carries its totals only.
    return spb.MoveSlotsOutResponse(
        block_sequence=moved.block_sequence,
        again=moved.again,
        spread_accounts=[moved_account(a) for a in moved.spread],
        totals=totals_message(moved.totals),
    )


def totals_message(totals: moves.MoveTotals) -> spb.MoveTotals:
    return spb.MoveTotals(
        account_count=totals.account_count,
        accounts_digest=totals.accounts_digest,
        record_count=totals.record_count,
        records_digest=totals.records_digest,
        records_states_digest=totals.records_states_digest,
    )


def totals_of(message: spb.MoveTotals) -> moves.MoveTotals:
    """ValueError naming totals' bad field."""
    if message.account_count < 0 or message.record_count < 0:
        raise ValueError("totals: counts must not be negative")
    for name in ("accounts_digest", "records_digest", "records_states_digest"):
        text = getattr(message, name)
        if name == "records_states_digest" and not text:  # a move-out made before it
            continue
        if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
            raise ValueError(f"totals.{name} must be 64 hex digits (a SHA-256)")
    return moves.MoveTotals(
        message.account_count, message.accounts_digest, message.record_count,
        message.records_digest, message.records_states_digest,
    )  # fmt: skip


def _decode_account(n: int, body: bytes) -> AccountState:
    try:
        return account_of(n, spb.MovedAccount.FromString(body))
    except DecodeError:
        raise ValueError(f"staged account {n} is no MovedAccount") from None


def _decode_record(n: int, body: bytes) -> TransactionState:
    try:
        return record_of(n, spb.MovedRecord.FromString(body))
    except DecodeError:
        raise ValueError(f"staged record {n} is no MovedRecord") from None


async def move_slots_in(
    node: NodeView, request: spb.MoveSlotsInRequest, context: Context
) -> spb.MoveSlotsInResponse:
    slots = await _checked_slots(context, request.move_id, request.slots)
    source = request.source_shard
    await _check_target(node, context, slots, request.source_shard)
    if len(request.accounts) + len(request.records) > moves.MOVE_RECORD_COUNT_MAX:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"at most {moves.MOVE_RECORD_COUNT_MAX} accounts and records in one move inline "
            "(stage them: StageMoveIn)",
        )
    if request.staged and (request.accounts or request.records):
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "staged: accounts and records come from StageMoveIn, none inline",
        )
    staged: Staged | None = None
    try:
        accounts, records = await _items(context, slots, request.accounts, request.records)
        spread = [spread_of(n, a) for n, a in enumerate(request.spread_accounts)]
        if request.staged:
            staged = Staged(totals_of(request.totals), _decode_account, _decode_record)
    except ValueError as error:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    operation = move_in(request.move_id, source, slots, accounts, records, spread, staged)
    done = await _run(node, context, operation)
    return spb.MoveSlotsInResponse(again=not done)


async def _check_target(
    node: NodeView, context: Context, slots: frozenset[int], source: int
) -> None:
    if source not in node.shard_ids or source == node.shard_id:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"source_shard {source} is no other shard of this cluster",
        )
    owned = node.owned_slots
    if owned is not None and slots & owned:
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"slots {sorted(slots & owned)[:10]} are this shard's already",
        )


async def _items(
    context: Context,
    slots: frozenset[int],
    accounts_in: Iterable[spb.MovedAccount],
    records_in: Iterable[spb.MovedRecord],
) -> tuple[list[AccountState], list[TransactionState]]:
    """The accounts and records given, each checked (ValueError naming the field) and of the
    slots (INVALID_ARGUMENT otherwise)."""
    accounts = [account_of(n, a) for n, a in enumerate(accounts_in)]
    records = [record_of(n, r) for n, r in enumerate(records_in)]
    strays = [a.spec.id for a in accounts if not moves.account_moves(a.spec.id, slots)]
    if strays:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"accounts {strays[:5]} are not of the slots"
        )
    strays = [r.spec.id for r in records if not moves.travels_with(r, slots)]
    if strays:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"records {strays[:5]} are not homed in the slots (nor held pieces on their accounts)",
        )
    return accounts, records


async def stage_move_in(
    node: NodeView, request: spb.StageMoveInRequest, context: Context
) -> spb.StageMoveInResponse:
    slots = await _checked_slots(context, request.move_id, request.slots)
    await _check_target(node, context, slots, request.source_shard)
    if len(request.accounts) + len(request.records) > moves.MOVE_READ_ITEM_COUNT_MAX:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"at most {moves.MOVE_READ_ITEM_COUNT_MAX} accounts and records in one page",
        )
    try:
        accounts, records = await _items(context, slots, request.accounts, request.records)
    except ValueError as error:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    operation = stage(
        request.move_id,
        slots,
        [
            (a.spec.id, m.SerializeToString())
            for a, m in zip(accounts, request.accounts, strict=True)
        ],
        [(r.spec.id, m.SerializeToString()) for r, m in zip(records, request.records, strict=True)],
        request.restart,
    )
    return spb.StageMoveInResponse(staged_count=await _run(node, context, operation))


_PARTS: Final = (
    spb.MOVED_PART_ACCOUNTS,
    spb.MOVED_PART_RECORDS,
    spb.MOVED_PART_PRECOPY_RECORDS,
    spb.MOVED_PART_CHANGED_RECORDS,
    spb.MOVED_PART_STUCK_SLOTS,
    spb.MOVED_PART_PIECES,
    spb.MOVED_PART_HELD_PIECES,
)


async def read_moved_out(
    node: MoveNode, request: spb.ReadMovedOutRequest, context: Context
) -> spb.ReadMovedOutResponse:
    """A page of what a move-out here takes (or, before it, a page of the pre-copy), read from
    the read pool (not the writer)."""
    slots = await _checked_slots(context, request.move_id, request.slots)
    if request.part not in _PARTS:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"part {request.part} is not MOVED_PART_ACCOUNTS, MOVED_PART_RECORDS, "
            "MOVED_PART_PRECOPY_RECORDS, MOVED_PART_CHANGED_RECORDS, MOVED_PART_STUCK_SLOTS, "
            "MOVED_PART_PIECES or MOVED_PART_HELD_PIECES",
        )
    if not 1 <= request.item_count_max <= moves.MOVE_READ_ITEM_COUNT_MAX:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"item_count_max {request.item_count_max} is not 1..{moves.MOVE_READ_ITEM_COUNT_MAX}",
        )
    if len(request.after_id) > limits.id_length_max:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"after_id is longer than {limits.id_length_max} characters",
        )
    if request.since_sequence < 0:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "since_sequence must not be negative")
    await _check_pieces_asked(context, request)
    async with node.read_pool.acquire(timeout=MOVE_READ_TIMEOUT_S) as connection:
        if request.part == spb.MOVED_PART_HELD_PIECES:
            found = await store.load_transactions(
                connection, list(request.piece_ids), MOVE_READ_TIMEOUT_S
            )
            return spb.ReadMovedOutResponse(held_piece_ids=sorted(found), done=True)
        moved = await store_moves.moved_out_slots_of(
            connection, request.move_id, MOVE_READ_TIMEOUT_S
        )
        if request.part == spb.MOVED_PART_STUCK_SLOTS:
            await _check_precopy(node, context, request.move_id, slots, moved)
            open_records = await store_moves.open_records(connection, MOVE_READ_TIMEOUT_S)
            return _stuck_answer(open_records, slots, request)
        if request.part == spb.MOVED_PART_PRECOPY_RECORDS:
            await _check_precopy(node, context, request.move_id, slots, moved)
        elif moved != slots:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this shard has no move-out of slots {sorted(slots)[:10]} by move "
                f"{request.move_id} (its move-out must commit first: MoveSlotsOut)",
            )
        try:
            return await _page(connection, request, slots, cold_of(node))
        except store_moves.PrecopyStaleError as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
            raise  # not reached: abort raises


async def _check_pieces_asked(context: Context, request: spb.ReadMovedOutRequest) -> None:
    """INVALID_ARGUMENT for a bad target_shard or piece_ids."""
    if request.HasField("target_shard") and not 0 <= request.target_shard < SLOT_COUNT:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"target_shard {request.target_shard} is not 0..{SLOT_COUNT - 1}",
        )
    if request.part != spb.MOVED_PART_HELD_PIECES:
        if request.piece_ids:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "piece_ids are for MOVED_PART_HELD_PIECES only"
            )
        return
    if len(request.piece_ids) > moves.MOVE_READ_ITEM_COUNT_MAX:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"at most {moves.MOVE_READ_ITEM_COUNT_MAX} piece_ids",
        )
    bad = [
        p for p in request.piece_ids if len(p) > 2 * limits.id_length_max or not ids.is_piece_id(p)
    ]
    if bad:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"piece_ids: {bad[0][:80]!r} is not a cross-shard piece's id",
        )


def _stuck_answer(
    open_records: list[TransactionState], slots: frozenset[int], request: spb.ReadMovedOutRequest
) -> spb.ReadMovedOutResponse:
    """The slots that cannot move now and why; with the target, the held pieces that would
    move with the others (the target must hold no other piece of their holds: a hold's pieces
    share their id)."""
    target = request.target_shard if request.HasField("target_shard") else None
    stuck = moves.stuck_slots(open_records, slots, target)
    answer = spb.ReadMovedOutResponse(
        stuck_slots=[spb.StuckSlot(slot=s, reason=why) for s, why in stuck.items()], done=True
    )
    for record in open_records if target is not None else ():
        if moves.is_moving_piece(record, slots) and not moves.moving_refusal(record, slots, target):
            touched = moves.touched_slots(record, slots)
            answer.moving_pieces.append(spb.MovingPiece(piece_id=record.spec.id, slots=touched))
    return answer


async def _check_precopy(
    node: MoveNode, context: Context, move_id: str, slots: frozenset[int], moved: frozenset[int]
) -> None:
    """A pre-copy reads slots this shard owns (or moved out by this very move: a mover killed
    after the move-out, before it recorded it, pre-copies what the move-out hands over)."""
    owned = node.owned_slots
    if moved == slots or (not moved and (owned is None or slots <= owned)):
        return
    foreign = sorted(slots - owned) if owned is not None and not moved else sorted(slots)
    await context.abort(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"slots {foreign[:10]} are not this shard's to pre-copy for move {move_id}",
    )


async def _page(
    connection: Any,
    request: spb.ReadMovedOutRequest,
    slots: frozenset[int],
    cold: ColdRecords | None,
) -> spb.ReadMovedOutResponse:
    args = (request.move_id, slots, request.after_id, request.item_count_max, MOVE_READ_TIMEOUT_S)
    sequence = 0
    if request.part == spb.MOVED_PART_PIECES:
        records, done = await store_moves.pieces_page(
            connection, request.move_id, request.after_id, request.item_count_max,
            MOVE_READ_TIMEOUT_S,
        )  # fmt: skip
        last = records[-1].spec.id if records else request.after_id
        return spb.ReadMovedOutResponse(
            records=[moved_record(r) for r in records], next_after_id=last, done=done
        )
    if request.part == spb.MOVED_PART_ACCOUNTS:
        accounts, done = await store_moves.accounts_page(connection, *args)
        last = accounts[-1].spec.id if accounts else request.after_id
        return spb.ReadMovedOutResponse(
            accounts=[moved_account(a) for a in accounts], next_after_id=last, done=done
        )
    if request.part == spb.MOVED_PART_CHANGED_RECORDS:
        # (PrecopyStaleError: FAILED_PRECONDITION in read_moved_out; the move copied in full.)
        records, done, last = await store_moves.changed_records_page(
            connection, request.move_id, slots, request.since_sequence, request.after_id,
            request.item_count_max, MOVE_READ_TIMEOUT_S,
        )  # fmt: skip
    else:
        if request.part == spb.MOVED_PART_RECORDS:
            records, done = await store_moves.records_page(connection, *args, cold)
        else:
            records, done, sequence = await store_moves.precopy_records_page(
                connection, *args, cold
            )
        last = records[-1].spec.id if records else request.after_id
    return spb.ReadMovedOutResponse(
        records=[moved_record(r) for r in records], next_after_id=last, done=done,
        snapshot_sequence=sequence,
    )  # fmt: skip
