"""`tally slots move --slots S[,S...] --to SHARD` and `tally slots resume`: move slots with
their data from the shard owning them to another while the cluster serves (docs/design.md,
"Moving slots").

The mover is a cluster process: it reads and writes the move's row in the control database
(`--control-dsn`, TALLY_CONTROL_DSN) and calls the two nodes' internal listeners (their
endpoints in the control database) as a cluster identity (`--ca/--cert/--key`, by default
tally up's cluster certificate in DATA_DIR/tls). Each step is recorded before the next begins,
and every step is safe to ask again, so a mover killed anywhere is resumed by `tally slots
resume` (or the next `tally slots move`, which resumes an unfinished move first).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Final, TypeVar

import asyncpg
import grpc

from core import moves
from core.slots import SLOT_COUNT, SlotMap
from core.store import control as control_store
from shards import control, failpoints
from shards.security import directory
from shards.security import flags as security_flags
from shards.security.credentials import ClientSecurity, SecurityConfigError, aio_channel
from tally.v1 import shard_pb2 as spb
from tally.v1 import shard_pb2_grpc as spb_grpc

CONTROL_DSN_ENV: Final = "TALLY_CONTROL_DSN"
# A rebalance moves at most this many slots at once: each move pauses its slots' writes for the
# fence's read of what they hold (at most MOVE_ITEM_COUNT_MAX), the copy of what changed since
# its pre-copy, and the move-in.
REBALANCE_SLOTS_PER_MOVE: Final = 256
# A step asked of a node that is restarting or taking over its lease is asked again, for up
# to this long, each wait doubling from STEP_RETRY_FIRST_S.
STEP_RETRY_S: Final = 60.0
STEP_RETRY_FIRST_S: Final = 0.1
STEP_TIMEOUT_S: Final = 60.0
# A move-out refused because amounts are held in the slots for a moment (a cross-shard piece
# between its prepare and resolution, a hold being decided by one: milliseconds) is asked again
# for this long by default (--held-wait-s), then abandoned with the reason. Open holds move
# with their slots; those that cannot (they would span shards) are refused at once.
HELD_WAIT_S: Final = 10.0
HELD_RETRY_S: Final = 0.02
# The copy of a move goes in pages of at most this many accounts or records (--page-item-count),
# and at most MOVE_PAGE_COUNT_MAX pages (moves.MOVE_ITEM_COUNT_MAX items at one a page, and
# then some).
PAGE_ITEM_COUNT: Final = moves.MOVE_READ_ITEM_COUNT_MAX
MOVE_PAGE_COUNT_MAX: Final = 2 * moves.MOVE_ITEM_COUNT_MAX + 2
# Large enough for a page of MOVE_READ_ITEM_COUNT_MAX items, and a step's answer.
MESSAGE_BYTES_MAX: Final = 64 * 1024 * 1024
_CHANNEL_OPTIONS: Final = (
    ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
    ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
)

T = TypeVar("T")


class MoveError(RuntimeError):
    """A move refused or stopped; the message says why and what state it was left in."""


@dataclass(frozen=True, slots=True)
class MoveReport:
    move_id: str
    slots: tuple[int, ...]
    source_shard: int
    target_shard: int
    account_count: int
    record_count: int
    map_version: int
    # From the source's move-out to the map moved: how long writes to the slots waited.
    pause_ms: float
    resumed: bool
    # How long each step this mover ran took (move-out, copy, move-in, map), in order.
    steps_ms: tuple[tuple[str, float], ...] = ()


class MoveRefused(MoveError):
    """The source refused a planned move's move-out: nothing moved, the move abandoned."""


@dataclass(frozen=True)
class Rebalanced:
    """What a rebalance did: its moves, and the slots it kept where they are (slot -> why:
    an open record there that does not move with them, named by their shard)."""

    reports: list[MoveReport]
    stuck: dict[int, str]


# ---- the command ----


def add_command(commands: Any) -> None:
    slots = commands.add_parser("slots", help="move slots, with their data, between shards")
    actions = slots.add_subparsers(dest="slots_command", required=True)
    move = actions.add_parser("move", help="move slots to a shard while the cluster serves")
    move.add_argument(
        "--slots", required=True, help=f"the slots, comma-separated (0..{SLOT_COUNT - 1})"
    )
    move.add_argument("--to", type=int, required=True, dest="to", help="the target shard")
    resume = actions.add_parser("resume", help="finish a move a mover left unfinished")
    rebalance = actions.add_parser(
        "rebalance",
        help="spread the slots evenly over every shard, a newly added one included",
    )
    rebalance.add_argument(
        "--slots-per-move",
        type=int,
        default=REBALANCE_SLOTS_PER_MOVE,
        help=f"at most this many slots in one move (default {REBALANCE_SLOTS_PER_MOVE})",
    )
    for sub in (move, resume, rebalance):
        sub.add_argument(
            "--held-wait-s",
            type=float,
            default=HELD_WAIT_S,
            help="how long to keep asking when amounts are held in the slots for a moment (a "
            "cross-shard piece in flight, a hold being decided) before giving the move up "
            f"(default {HELD_WAIT_S:g})",
        )
        sub.add_argument(
            "--page-item-count",
            type=int,
            default=PAGE_ITEM_COUNT,
            help="copy a move's accounts and records in pages of at most this many "
            f"(default and most {PAGE_ITEM_COUNT})",
        )
        sub.add_argument(
            "--control-dsn",
            default=os.environ.get(CONTROL_DSN_ENV, ""),
            help=f"the control database (default: ${CONTROL_DSN_ENV}; keep secrets off the "
            "command line)",
        )
        security_flags.add_client_flags(sub)
        sub.description = (
            "Credentials: a cluster identity (the nodes' internal listeners take no other); "
            "by default tally up's cluster certificate in DATA_DIR/tls."
        )


def parse_slots(text: str) -> list[int]:
    """'1,2,7' as slots; ValueError naming the part that is not one."""
    slots = []
    for part in text.split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit()) or int(part) >= SLOT_COUNT:
            raise ValueError(f"{part[:20]!r} is not a slot (0..{SLOT_COUNT - 1})")
        slots.append(int(part))
    if len(set(slots)) != len(slots):
        raise ValueError("a slot is named twice")
    return slots


def mover_security(args: argparse.Namespace) -> ClientSecurity:
    """As given, or tally up's cluster identity: the internal Shard API takes no other role."""
    if args.ca or args.cert or args.key or args.token:
        return security_flags.client_security(args)
    root = security_flags.local_directory()
    if not directory.Paths(root).certificate(directory.CLUSTER).exists():
        raise SecurityConfigError(
            f"no credentials: give --ca with --cert/--key of a cluster identity (or TALLY_CA, "
            f"TALLY_CERT, TALLY_KEY), or run where tally up keeps them ({root} not found)"
        )
    return directory.client_security(root, directory.CLUSTER)


def run(args: argparse.Namespace) -> int:
    if not args.control_dsn:
        print(f"tally slots: give --control-dsn or set {CONTROL_DSN_ENV}", file=sys.stderr)
        return 2
    try:
        security = mover_security(args)
        slots = parse_slots(args.slots) if args.slots_command == "move" else []
    except (SecurityConfigError, ValueError) as error:
        print(f"tally slots: {error}", file=sys.stderr)
        return 2
    if not 0 <= args.held_wait_s <= 3600:
        print("tally slots: --held-wait-s must be 0..3600", file=sys.stderr)
        return 2
    pages = args.page_item_count
    if not 1 <= pages <= moves.MOVE_READ_ITEM_COUNT_MAX:
        print(
            f"tally slots: --page-item-count must be 1..{moves.MOVE_READ_ITEM_COUNT_MAX}",
            file=sys.stderr,
        )
        return 2
    if args.slots_command == "rebalance" and not 1 <= args.slots_per_move <= SLOT_COUNT:
        print(f"tally slots: --slots-per-move must be 1..{SLOT_COUNT}", file=sys.stderr)
        return 2
    try:
        done_work = asyncio.run(_command(args, security, slots, pages))
    except MoveError as error:
        print(f"tally slots: {error}", file=sys.stderr)
        return 2
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        print(f"tally slots: the control database: {error!r}", file=sys.stderr)
        return 2
    reports = done_work.reports if isinstance(done_work, Rebalanced) else done_work
    for report in reports:
        print_report(report)
    if isinstance(done_work, Rebalanced):
        for slot, why in done_work.stuck.items():
            print(f"tally slots: slot {slot} kept where it is: {why}")
    if not reports:
        done = "the slots are spread evenly" if args.slots_command == "rebalance" else ""
        print(f"tally slots: {done or 'no unfinished move'}")
    return 0


async def _command(
    args: argparse.Namespace, security: ClientSecurity, slots: list[int], pages: int
) -> list[MoveReport] | Rebalanced:
    if args.slots_command == "move":
        return await move_slots(args.control_dsn, security, slots, args.to, args.held_wait_s, pages)
    if args.slots_command == "rebalance":
        return await rebalance(
            args.control_dsn, security, args.slots_per_move, args.held_wait_s, pages
        )
    return await resume_move(args.control_dsn, security, args.held_wait_s, pages)


def print_report(report: MoveReport) -> None:
    how = "resumed and finished" if report.resumed else "done"
    print(
        f"tally slots: move {report.move_id} {how}: slots {list(report.slots)} from shard "
        f"{report.source_shard} to shard {report.target_shard}, {report.account_count} "
        f"accounts, {report.record_count} records, slot map version {report.map_version}"
    )
    if report.steps_ms:
        steps = " ".join(f"{name}={ms:.0f}" for name, ms in report.steps_ms)
        print(f"tally slots: move {report.move_id} steps_ms {steps}")
    for slot in report.slots:
        print(f"tally slots: slot {slot} pause_ms {report.pause_ms:.1f}")


class _Channels:
    """The mover's channel to each node, opened at its first step there and kept for the next:
    a channel (a TCP connection and a TLS handshake) per step was most of a small move's
    pause. A step that found the node gone drops its channel, so the next ask opens a fresh
    one, as each ask did before."""

    def __init__(self, security: ClientSecurity) -> None:
        self._security = security
        self._open: dict[str, grpc.aio.Channel] = {}

    def get(self, endpoint: str) -> grpc.aio.Channel:
        channel = self._open.get(endpoint)
        if channel is None:
            channel = aio_channel(endpoint, self._security, _CHANNEL_OPTIONS)
            self._open[endpoint] = channel
        return channel

    async def drop(self, endpoint: str) -> None:
        channel = self._open.pop(endpoint, None)
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        for endpoint in list(self._open):
            await self.drop(endpoint)


# ---- the mover ----


async def move_slots(
    control_dsn: str,
    security: ClientSecurity,
    slots: list[int],
    target: int,
    held_wait_s: float = HELD_WAIT_S,
    page_item_count: int = PAGE_ITEM_COUNT,
) -> list[MoveReport]:
    """Resume an unfinished move if there is one, then move `slots` to shard `target`: the
    reports of both. MoveError when the move is refused (nothing moved) or stops."""
    try:
        checked = moves.check_slots(slots)
    except moves.MoveRefusedError as error:
        raise MoveError(str(error)) from None
    connection = await control.connect(control_dsn)
    channels = _Channels(security)
    try:
        await control_store.prepare(connection)
        reports = []
        unfinished = await control_store.unfinished_move(connection)
        if unfinished is not None:
            reports.append(
                await _drive(connection, channels, unfinished, True, held_wait_s, page_item_count)
            )
        move = await _plan(connection, sorted(checked), target)
        stuck: dict[int, str] = {}
        endpoints = await control_store.shard_endpoints(connection)
        if await _note_stuck(
            channels, endpoints, move.source_shard, list(move.slots), stuck, target
        ):
            # Refused before the pre-copy stages anything, every slot that stops it named.
            await control_store.set_move_state(connection, move.move_id, "abandoned")
            raise MoveRefused(
                f"move {move.move_id} refused by shard {move.source_shard}: "
                + "; ".join(f"slot {slot}: {why}" for slot, why in stuck.items())
            )
        reports.append(
            await _drive(connection, channels, move, False, held_wait_s, page_item_count)
        )
        return reports
    finally:
        await channels.close()
        await connection.close(timeout=5.0)


async def resume_move(
    control_dsn: str,
    security: ClientSecurity,
    held_wait_s: float = HELD_WAIT_S,
    page_item_count: int = PAGE_ITEM_COUNT,
) -> list[MoveReport]:
    connection = await control.connect(control_dsn)
    channels = _Channels(security)
    try:
        await control_store.prepare(connection)
        unfinished = await control_store.unfinished_move(connection)
        if unfinished is None:
            return []
        return [await _drive(connection, channels, unfinished, True, held_wait_s, page_item_count)]
    finally:
        await channels.close()
        await connection.close(timeout=5.0)


async def rebalance(
    control_dsn: str,
    security: ClientSecurity,
    slot_count_max: int,
    held_wait_s: float = HELD_WAIT_S,
    page_item_count: int = PAGE_ITEM_COUNT,
) -> Rebalanced:
    """Resume an unfinished move, then move slots until every shard, registered ones owning no
    slot included, holds its even share (core.moves.rebalance_step): one move at a time, each
    recorded and resumable as `tally slots move`'s."""
    connection = await control.connect(control_dsn)
    channels = _Channels(security)
    try:
        await control_store.prepare(connection)
        reports = []
        unfinished = await control_store.unfinished_move(connection)
        if unfinished is not None:
            reports.append(
                await _drive(connection, channels, unfinished, True, held_wait_s, page_item_count)
            )
        stuck: dict[int, str] = {}  # slots left where they are, and why
        # Each move gives a shard at least one slot of its share; each skip keeps a slot back.
        for _ in range(2 * SLOT_COUNT):
            step = await _rebalance_step(connection, slot_count_max, stuck)
            if step is None:
                break
            source, target, slots = step
            endpoints = await control_store.shard_endpoints(connection)
            if await _note_stuck(channels, endpoints, source, slots, stuck, target):
                continue  # planned again without them
            move = await _plan(connection, slots, target)
            try:
                report = await _drive(
                    connection, channels, move, False, held_wait_s, page_item_count
                )
            except MoveRefused:  # abandoned: something opened since the ask, or not named
                if not await _note_stuck(channels, endpoints, source, slots, stuck, target):
                    raise
                continue
            reports.append(report)
        return Rebalanced(reports, stuck)
    finally:
        await channels.close()
        await connection.close(timeout=5.0)


async def _rebalance_step(
    connection: Any, slot_count_max: int, stuck: dict[int, str]
) -> tuple[int, int, list[int]] | None:
    slot_map = await control_store.load_slot_map(connection)
    if slot_map is None:
        raise MoveError("the control database has no slot map (tally init-cluster)")
    shards = {*slot_map.shard_ids, *await control_store.shard_endpoints(connection)}
    try:
        return moves.rebalance_step(
            slot_map.owners, shards, slot_count_max, await _slots_left(connection), set(stuck)
        )
    except moves.MoveRefusedError as error:
        kept = f" ({len(stuck)} slots kept back: {_stuck_summary(stuck)})" if stuck else ""
        raise MoveError(f"rebalance stopped: {error}{kept}") from None


async def _note_stuck(
    channels: _Channels,
    endpoints: dict[int, str],
    source: int,
    slots: list[int],
    stuck: dict[int, str],
    target: int,
) -> bool:
    """Ask which of the slots cannot move to target now (_ask_stuck) and note them in stuck:
    whether any were named."""
    asked = await _ask_stuck(channels, endpoints, source, target, slots)
    if asked is None:
        return False
    found, _ = asked
    stuck.update(found)
    return bool(found)


async def _ask_stuck(
    channels: _Channels,
    endpoints: dict[int, str],
    source: int,
    target: int,
    slots: list[int],
    move_id: str = "",
) -> tuple[dict[int, str], list[str]] | None:
    """Which of the slots cannot move to target now, and why (the source's answer to
    ReadMovedOut, MOVED_PART_STUCK_SLOTS, and the slots of the held cross-shard pieces that
    would move but whose hold has another piece at the target: MOVED_PART_HELD_PIECES), and the
    ids of the pieces that would move with the rest. None: the source cannot say (a node from
    before the ask; its move-out refuses what cannot move). move_id: the move planned, if it is
    (a source that moved the slots out by it answers too: nothing is left to move)."""
    for shard in (source, target):
        if shard not in endpoints:
            raise MoveError(f"shard {shard} has no endpoint in the control database")
    request = spb.ReadMovedOutRequest(
        move_id=move_id or secrets.token_hex(8), slots=slots, part=spb.MOVED_PART_STUCK_SLOTS,
        item_count_max=1, target_shard=target,
    )  # fmt: skip
    refusals: list[str] = []

    async def refused(details: str) -> None:
        refusals.append(details)

    answer = await _step(
        endpoints[source], channels, _calling("ReadMovedOut", request), refused=refused
    )
    if refusals:
        print(
            f"tally slots: shard {source} cannot say which slots are stuck: {refusals[0]}",
            file=sys.stderr,
        )
        return None
    stuck = {item.slot: item.reason for item in answer.stuck_slots if item.slot in slots}
    pieces = {piece.piece_id: list(piece.slots) for piece in answer.moving_pieces}
    for piece_id in await _held_at(channels, endpoints[target], slots, sorted(pieces)):
        for slot in pieces[piece_id]:
            stuck.setdefault(
                slot,
                f"held cross-shard piece {piece_id!r} would move to shard {target}, which holds "
                "another piece of its hold; move its slots elsewhere, or post or void that hold",
            )
    moving = [p for p, of in pieces.items() if not set(of) & set(stuck)]
    return dict(sorted(stuck.items())), moving


async def _held_at(
    channels: _Channels, target: str, slots: list[int], piece_ids: list[str]
) -> list[str]:
    """Those of piece_ids the target records (ReadMovedOut, MOVED_PART_HELD_PIECES)."""
    held: list[str] = []
    size = moves.MOVE_READ_ITEM_COUNT_MAX
    for start in range(0, len(piece_ids), size):
        request = spb.ReadMovedOutRequest(
            move_id=secrets.token_hex(8), slots=slots, part=spb.MOVED_PART_HELD_PIECES,
            item_count_max=1, piece_ids=piece_ids[start : start + size],
        )  # fmt: skip

        async def refused(details: str) -> None:
            raise MoveError(f"the target cannot say which pieces it holds: {details}")

        answer = await _step(target, channels, _calling("ReadMovedOut", request), refused=refused)
        held.extend(answer.held_piece_ids)
    return held


def _stuck_summary(stuck: dict[int, str]) -> str:
    first = next(iter(sorted(stuck)))
    return f"slot {first}: {stuck[first]}" + (
        f"; and {len(stuck) - 1} more" if len(stuck) > 1 else ""
    )


async def _slots_left(connection: Any) -> dict[int, set[int]]:
    """Shard -> the slots its done moves took out of it (a shard they can never go back to)."""
    left: dict[int, set[int]] = {}
    for done in await control_store.done_moves(connection, 0):
        left.setdefault(done.source_shard, set()).update(done.slots)
    return left


async def _plan(connection: Any, slots: list[int], target: int) -> control_store.SlotMove:
    slot_map = await control_store.load_slot_map(connection)
    if slot_map is None:
        raise MoveError("the control database has no slot map (tally init-cluster)")
    # A shard new to the cluster owns no slot yet: it is known by its registered endpoint.
    known = sorted({*slot_map.shard_ids, *await control_store.shard_endpoints(connection)})
    if target not in known:
        raise MoveError(f"shard {target} is no shard of this cluster (shards {known})")
    sources = {slot_map.owners[slot] for slot in slots}
    if len(sources) != 1:
        raise MoveError(f"slots {slots} belong to shards {sorted(sources)}: move one at a time")
    source = sources.pop()
    if source == target:
        raise MoveError(f"slots {slots} are shard {target}'s already")
    left = sorted(set((await _slots_left(connection)).get(target, ())) & set(slots))
    if left:  # the target would refuse them, and only once the source had fenced them
        raise MoveError(
            f"slots {left[:10]} were moved out of shard {target} before: moving a slot back to "
            "a shard it left is not built"
        )
    move_id = secrets.token_hex(8)
    try:
        return await control_store.plan_move(
            connection, move_id, slots, source, target, slot_map.version
        )
    except control_store.MoveConflictError as error:
        raise MoveError(str(error)) from None


async def _drive(
    connection: Any,
    channels: _Channels,
    move: control_store.SlotMove,
    resumed: bool,
    held_wait_s: float,
    page_item_count: int = PAGE_ITEM_COUNT,
) -> MoveReport:
    """Take the move from its recorded step to done, recording each step before the next."""
    endpoints = await control_store.shard_endpoints(connection)
    for shard in (move.source_shard, move.target_shard):
        if shard not in endpoints:
            raise MoveError(f"shard {shard} has no endpoint in the control database")
    out_request = spb.MoveSlotsOutRequest(
        move_id=move.move_id, slots=list(move.slots), target_shard=move.target_shard
    )
    steps = _Steps()
    if move.state == "planned" and not move.precopied:  # before the fence: the slots serve
        move = await _precopy(connection, channels, endpoints, move, page_item_count)
        steps.done("pre-copy")
    if move.state == "planned":  # which held pieces may move with the slots, asked last
        await _check_pieces(connection, channels, endpoints, move, out_request)
    if failpoints.ARMED:
        await failpoints.hit("slots.before_move_out")
    sent_at: list[float] = []  # when the answered move-out was asked: the pause's start
    out = await _step(
        endpoints[move.source_shard], channels, lambda stub: stub.MoveSlotsOut(
            out_request, timeout=STEP_TIMEOUT_S
        ),
        refused=lambda d: _refused_out(connection, channels, endpoints, move, d),
        held_wait_s=held_wait_s,
        sent_at=sent_at,
        # A held piece opened since the last check is refused for now (ABORTED): check again.
        before_held_retry=(
            partial(_check_pieces, connection, channels, endpoints, move, out_request)
            if move.state == "planned" else None
        ),
    )  # fmt: skip
    steps.done("move-out")
    if failpoints.ARMED:  # the source has moved out; the control database does not say so
        await failpoints.hit("slots.after_move_out")
    if move.state == "planned":
        await control_store.set_move_state(connection, move.move_id, "out")
    if move.state in ("planned", "out"):
        await _copy_and_move_in(connection, channels, endpoints, move, out, page_item_count, steps)
        if failpoints.ARMED:  # the target has moved in; the control database does not say so
            await failpoints.hit("slots.after_move_in")
        await control_store.set_move_state(connection, move.move_id, "in")
    if failpoints.ARMED:  # recorded 'in'; the map not moved yet
        await failpoints.hit("slots.before_map")
    try:
        slot_map, pause_ms = await control_store.finish_move(connection, move)
    except control_store.MoveConflictError as error:
        raise MoveError(str(error)) from None
    steps.done("map")
    if not resumed:
        pause_ms = (time.monotonic() - sent_at[-1]) * 1000
    return _report(move, out, slot_map, pause_ms, resumed, tuple(steps.taken))


async def _check_pieces(
    connection: Any,
    channels: _Channels,
    endpoints: dict[int, str],
    move: control_store.SlotMove,
    out_request: spb.MoveSlotsOutRequest,
) -> None:
    """Just before the move-out: the held cross-shard pieces that would move with the slots,
    checked against the target (it must hold no other piece of their holds), named in the
    move-out so that only those move (one opened since is refused there: asked again). Slots
    that cannot move now abandon the move (MoveRefused, each named)."""
    asked = await _ask_stuck(
        channels, endpoints, move.source_shard, move.target_shard, list(move.slots), move.move_id
    )
    if asked is None:  # the source cannot say: its move-out moves no piece
        return
    stuck, moving = asked
    if stuck:
        await _refused_out(
            connection, channels, endpoints, move,
            "; ".join(f"slot {slot}: {why}" for slot, why in stuck.items()),
        )  # fmt: skip
    out_request.pieces_checked = True
    out_request.checked_piece_ids[:] = moving


class _Steps:
    """The time each step of a move took, as this mover ran them (the operator's view of
    where a pause went)."""

    def __init__(self) -> None:
        self._since = time.monotonic()
        self.taken: list[tuple[str, float]] = []

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.taken.append((name, (now - self._since) * 1000))
        self._since = now


def _report(
    move: control_store.SlotMove,
    out: spb.MoveSlotsOutResponse,
    slot_map: SlotMap,
    pause_ms: float,
    resumed: bool,
    steps_ms: tuple[tuple[str, float], ...] = (),
) -> MoveReport:
    return MoveReport(
        move.move_id,
        move.slots,
        move.source_shard,
        move.target_shard,
        out.totals.account_count,
        out.totals.record_count,
        slot_map.version,
        pause_ms,
        resumed,
        steps_ms,
    )


async def _refused_out(
    connection: Any,
    channels: _Channels,
    endpoints: dict[int, str],
    move: control_store.SlotMove,
    details: str,
) -> None:
    """The source refused the move-out: nothing was written, so the move is abandoned (and
    what its pre-copy staged at the target dropped)."""
    if move.state == "planned":
        await control_store.set_move_state(connection, move.move_id, "abandoned")
        await _drop_staged(channels, endpoints[move.target_shard], move)
        raise MoveRefused(f"move {move.move_id} refused by shard {move.source_shard}: {details}")
    raise MoveError(
        f"move {move.move_id} ({move.state}): shard {move.source_shard} refused to answer its "
        f"move-out again: {details}"
    )


async def _drop_staged(channels: _Channels, target: str, move: control_store.SlotMove) -> None:
    """An abandoned move's staging dropped at its target (a page restarting it, empty). Best
    effort: a target that does not answer keeps it, which nothing reads but the move's own
    move-in (an abandoned move has none)."""
    request = spb.StageMoveInRequest(
        move_id=move.move_id, slots=list(move.slots), source_shard=move.source_shard, restart=True
    )

    async def refused(details: str) -> None:
        return None

    try:
        await _step(target, channels, _calling("StageMoveIn", request), refused=refused)
    except MoveError as error:
        print(f"tally slots: move {move.move_id}: its staging is left: {error}", file=sys.stderr)


def _abandoning(
    connection: Any,
    channels: _Channels,
    target: str,
    move: control_store.SlotMove,
    otherwise: Callable[[str], Awaitable[None]],
) -> Callable[[str], Awaitable[None]]:
    """The pre-copy's answer to a target refusing a staged page. The target checks an item as
    its move-in would: such a refusal (FAILED_PRECONDITION, INVALID_ARGUMENT) would come again
    after the fence, with the slots refused at the source, so the move is given up while
    nothing is fenced. Anything else (a full queue, say) is `otherwise`'s: copied after."""

    async def refused(details: str) -> None:
        if not details.startswith(("FAILED_PRECONDITION", "INVALID_ARGUMENT")):
            return await otherwise(details)
        await control_store.set_move_state(connection, move.move_id, "abandoned")
        await _drop_staged(channels, target, move)
        raise MoveError(
            f"move {move.move_id} refused by shard {move.target_shard} while pre-copying: "
            f"{details}; nothing moved (abandoned before its move-out)"
        )

    return refused


async def _precopy(
    connection: Any,
    channels: _Channels,
    endpoints: dict[int, str],
    move: control_store.SlotMove,
    page_item_count: int,
) -> control_store.SlotMove:
    """Before the move-out, while the slots still serve: stage the records homed in them as
    they are now, page by page (ReadMovedOut's pre-copy, each page read at one snapshot of the
    source's read pool), recording each page and the last block of the first page's snapshot,
    so the copy in the pause need stage only what changed after that block. A mover killed
    here goes on from the last page recorded. A source that cannot pre-copy (a node before it)
    leaves the move to be copied in full after the fence, as before."""
    sequence, part = move.precopy_sequence, move.precopy_part
    after_id, count = move.precopy_after_id, move.precopied_count
    if part != control_store.COPY_RECORDS:  # not begun (or voided): from the start
        sequence, after_id, count = -1, "", 0
    source, target = endpoints[move.source_shard], endpoints[move.target_shard]
    refusals: list[str] = []

    async def refused(details: str) -> None:
        refusals.append(details)

    target_refused = _abandoning(connection, channels, target, move, refused)
    try:
        for _ in range(MOVE_PAGE_COUNT_MAX):
            read = spb.ReadMovedOutRequest(
                move_id=move.move_id, slots=list(move.slots),
                part=spb.MOVED_PART_PRECOPY_RECORDS, after_id=after_id,
                item_count_max=page_item_count,
            )  # fmt: skip
            page = await _step(source, channels, _calling("ReadMovedOut", read), refused=refused)
            sequence = page.snapshot_sequence if sequence < 0 else sequence
            staging = spb.StageMoveInRequest(
                move_id=move.move_id, slots=list(move.slots), source_shard=move.source_shard,
                records=page.records, restart=count == 0 and not after_id,
            )  # fmt: skip
            await _step(target, channels, _calling("StageMoveIn", staging), refused=target_refused)
            count += len(page.records)
            part = control_store.COPY_DONE if page.done else control_store.COPY_RECORDS
            after_id = page.next_after_id
            await control_store.set_precopy_progress(
                connection, move.move_id, sequence, part, after_id, count
            )
            if page.done:
                if failpoints.ARMED:  # pre-copied and recorded; the move-out not asked
                    await failpoints.hit("slots.after_precopy")
                return replace(
                    move, precopy_sequence=sequence, precopy_part=part, precopy_after_id=after_id,
                    precopied_count=count,
                )  # fmt: skip
            if failpoints.ARMED:  # a page pre-copied and recorded; more may follow
                await failpoints.hit("slots.between_precopy_pages")
    except MoveError:
        if not refusals:  # the target refused (the move abandoned), or a node did not answer
            raise
        print(
            f"tally slots: move {move.move_id}: no pre-copy ({refusals[-1]}); the records are "
            "copied after the move-out",
            file=sys.stderr,
        )
        await control_store.set_precopy_progress(connection, move.move_id, -1, 0, "", 0)
        return replace(move, precopy_sequence=-1, precopy_part=0)
    raise MoveError(f"move {move.move_id}: more than {MOVE_PAGE_COUNT_MAX} pages to pre-copy")


async def _copy_and_move_in(
    connection: Any,
    channels: _Channels,
    endpoints: dict[int, str],
    move: control_store.SlotMove,
    out: spb.MoveSlotsOutResponse,
    page_item_count: int,
    steps: _Steps,
) -> None:
    """The copy (after a pre-copy, only what may have changed since it: the accounts and the
    records a later block made or named), then the move-in. A move-in refusing what was staged
    (its counts or digests are not the move-out's: a change the copy missed) after such a copy
    is answered with a copy in full, and asked again: a miss costs a full copy, never a wrong
    move."""
    since = move.precopy_sequence if move.precopied else None
    mismatches: list[str] = []

    async def refused(details: str) -> None:
        if since is not None and "stage it again" in details:
            mismatches.append(details)  # a delta copy missed a change: copied in full below
            return
        await _refused_in(connection, move, details)

    async def stale(details: str) -> None:
        if "copy it in full" in details:  # too much written since the pre-copy to sort out
            mismatches.append(details)

    in_request = spb.MoveSlotsInRequest(
        move_id=move.move_id, slots=list(move.slots), source_shard=move.source_shard,
        spread_accounts=out.spread_accounts, staged=True, totals=out.totals,
    )  # fmt: skip
    target = endpoints[move.target_shard]
    call = _calling("MoveSlotsIn", in_request)
    try:
        await _copy(connection, channels, endpoints, move, page_item_count, since, stale)
        steps.done("copy")
        await _step(target, channels, call, refused=refused)
    except MoveError:
        if not mismatches:
            raise
        print(
            f"tally slots: move {move.move_id}: what changed since the pre-copy was not staged "
            f"({mismatches[-1]}); copying it in full again",
            file=sys.stderr,
        )
        await control_store.restart_copy(connection, move.move_id)
        full = replace(move, copy_part=0, copy_after_id="", copied_count=0, precopy_part=0)
        await _copy(connection, channels, endpoints, full, page_item_count, None)
        steps.done("copy-again")
        await _step(target, channels, call, refused=lambda d: _refused_in(connection, full, d))
    steps.done("move-in")


# The copy's after_id once the records are done and the held pieces are copied (each piece's
# id is after it).
PIECES_AFTER_ID: Final = "~"

_PARTS: Final = {
    control_store.COPY_ACCOUNTS: spb.MOVED_PART_ACCOUNTS,
    control_store.COPY_RECORDS: spb.MOVED_PART_RECORDS,
}


async def _copy(
    connection: Any,
    channels: _Channels,
    endpoints: dict[int, str],
    move: control_store.SlotMove,
    page_item_count: int,
    since: int | None = None,
    refused_changed: Callable[[str], Awaitable[None]] | None = None,
) -> None:
    """Copy what the move takes from its source to its target, page by page (ReadMovedOut,
    then StageMoveIn), recording each page staged before the next is read, so a mover killed
    anywhere goes on from the last page recorded (a page staged again stages nothing new).
    since: the pre-copy's block; the records then are those that may have changed after it
    (each replacing its pre-copied self; a refused page of them is given to refused_changed
    first). Without it, the first page drops what was staged."""
    part = move.copy_part or control_store.COPY_ACCOUNTS
    after_id, count = move.copy_after_id, move.copied_count
    source, target = endpoints[move.source_shard], endpoints[move.target_shard]
    for _ in range(MOVE_PAGE_COUNT_MAX):
        if part == control_store.COPY_DONE:
            return
        # The held pieces that move follow the records, in the same part: after_id "~" and on
        # (no client record's id starts with "~"), so a resumed copy knows where it was.
        pieces = part == control_store.COPY_RECORDS and after_id.startswith(PIECES_AFTER_ID)
        changed = since is not None and part == control_store.COPY_RECORDS and not pieces
        on_changed = refused_changed if changed else None
        kind = spb.MOVED_PART_CHANGED_RECORDS if changed else _PARTS[part]
        read = spb.ReadMovedOutRequest(
            move_id=move.move_id, slots=list(move.slots), after_id=after_id,
            part=spb.MOVED_PART_PIECES if pieces else kind,
            item_count_max=page_item_count, since_sequence=0 if pieces else since or 0,
        )  # fmt: skip
        page = await _step(
            source, channels, _calling("ReadMovedOut", read),
            refused=partial(_refused_read, move, refused_changed=on_changed),
        )  # fmt: skip
        staging = spb.StageMoveInRequest(
            move_id=move.move_id, slots=list(move.slots), source_shard=move.source_shard,
            accounts=page.accounts, records=page.records,
            restart=since is None and part == control_store.COPY_ACCOUNTS and not after_id,
        )  # fmt: skip
        await _step(
            target, channels, _calling("StageMoveIn", staging),
            refused=lambda d: _refused_copy(move, move.target_shard, d),
        )  # fmt: skip
        count += len(page.accounts) + len(page.records)
        if not page.done:
            after_id = page.next_after_id
        elif part == control_store.COPY_RECORDS and not pieces:
            after_id = PIECES_AFTER_ID  # the records done: the pieces next
        else:
            part, after_id = part + 1, ""
        await control_store.set_copy_progress(connection, move.move_id, part, after_id, count)
        if failpoints.ARMED:  # a page staged and recorded; more may follow
            await failpoints.hit("slots.between_pages")
    raise MoveError(f"move {move.move_id}: more than {MOVE_PAGE_COUNT_MAX} pages to copy")


def _calling(method: str, request: Any) -> Callable[[Any], Awaitable[Any]]:
    """A step calling `method` of a Shard stub with `request`."""

    def call(stub: Any) -> Awaitable[Any]:
        answer: Awaitable[Any] = getattr(stub, method)(request, timeout=STEP_TIMEOUT_S)
        return answer

    return call


async def _refused_read(
    move: control_store.SlotMove,
    details: str,
    refused_changed: Callable[[str], Awaitable[None]] | None,
) -> None:
    if refused_changed is not None:
        await refused_changed(details)
    await _refused_copy(move, move.source_shard, details)


async def _refused_copy(move: control_store.SlotMove, shard: int, details: str) -> None:
    raise MoveError(
        f"move {move.move_id}: shard {shard} refused a page of the copy ({details}); the slots "
        f"stay refused at shard {move.source_shard} until it is fixed and the move resumed "
        "(tally slots resume)"
    )


async def _refused_in(connection: Any, move: control_store.SlotMove, details: str) -> None:
    if "stage it again" in details:  # the staging is not the source's: copy it all again
        await control_store.restart_copy(connection, move.move_id)
    raise MoveError(
        f"move {move.move_id}: shard {move.target_shard} refused the move-in ({details}); the "
        f"slots stay refused at shard {move.source_shard} until it is fixed and the move resumed "
        "(tally slots resume)"
    )


async def _step(
    endpoint: str,
    channels: _Channels,
    call: Callable[[Any], Awaitable[T]],
    refused: Callable[[str], Awaitable[None]],
    held_wait_s: float = 0.0,
    sent_at: list[float] | None = None,
    before_held_retry: Callable[[], Awaitable[None]] | None = None,
) -> T:
    """Ask a node for a step until it answers (UNAVAILABLE and timeouts: it is restarting or
    between writers; ABORTED, for up to held_wait_s: amounts held in the slots; the step is
    safe to ask again), or refuses (refused is called). sent_at: each ask's time, appended.
    before_held_retry: run before asking again after ABORTED (the request may change)."""
    started = time.monotonic()
    deadline = started + STEP_RETRY_S
    wait_s = STEP_RETRY_FIRST_S
    while True:
        try:
            channel = channels.get(endpoint)
            if sent_at is not None:
                sent_at.append(time.monotonic())
            return await call(spb_grpc.ShardStub(channel))
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                await channels.drop(endpoint)  # the node is restarting: a fresh channel next
            details = f"{code.name}: {error.details()}"
            held = code == grpc.StatusCode.ABORTED
            if held and time.monotonic() - started < held_wait_s:
                await asyncio.sleep(HELD_RETRY_S)  # a piece in flight settles in milliseconds
                if before_held_retry is not None:
                    await before_held_retry()
                continue
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                await refused(details)  # an answer: nothing was written by this call
                raise MoveError(details) from None
            if time.monotonic() + wait_s > deadline:  # the step may have been done: not undone
                raise MoveError(
                    f"{endpoint} did not answer for {STEP_RETRY_S:g} s ({details}); the move is "
                    "left where it was: tally slots resume"
                ) from None
        await asyncio.sleep(wait_s)
        wait_s = min(wait_s * 2, 2.0)
