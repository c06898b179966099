"""A node's sides of a slot move, each run by the writer as a step of its own
(Writer.run_operation): the move-out at the source and the move-in at the target
(docs/design.md, "Moving slots"). Each is idempotent by its move id: asked again once done, it
answers what it answered the first time and writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core import ids, moves
from core.model import AccountState, TransactionState
from core.slots import is_spread
from core.store import moves as store_moves
from core.store import shard as store
from core.store.moves import ColdRecords
from shards import failpoints
from shards.node.writer import Writer

log = logging.getLogger("tally.moves")


@dataclass(frozen=True, slots=True)
class MovedOut:
    """What a move-out hands over: the slots' accounts as they were before it, the records
    homed in them, and the block that recorded it."""

    accounts: list[AccountState]
    records: list[TransactionState]
    block_sequence: int
    again: bool
    # The source's spread accounts, counters zeroed (the target creates those it lacks).
    spread: list[AccountState]
    # What the move takes, as its first block committed to it (the mover reads it in pages).
    totals: moves.MoveTotals


async def _moves_accounts(
    writer: Writer, accounts: Sequence[AccountState]
) -> dict[str, AccountState | None]:
    wanted = {ids.moves_account(a.spec.currency) for a in accounts}
    found = await store.load_accounts(writer.connection, wanted, writer.config.load_timeout_s)
    return {account_id: found.get(account_id) for account_id in wanted}


async def _spread_of(writer: Writer, holds: Sequence[TransactionState]) -> dict[str, AccountState]:
    """This shard's pieces of the spread accounts the holds' legs name."""
    wanted = {leg.account_id for h in holds for leg in h.applied_legs if is_spread(leg.account_id)}
    if not wanted:
        return {}
    found = await store.load_accounts(writer.connection, wanted, writer.config.load_timeout_s)
    return {account_id: account for account_id, account in found.items() if account is not None}


async def _moved_out_again(
    writer: Writer, move_id: str, slots: frozenset[int], cold: ColdRecords | None
) -> MovedOut:
    """A move-out asked again: the same accounts and records as the first time, read back
    (the open holds it released as they were, open)."""
    connection, timeout_s = writer.connection, writer.config.load_timeout_s
    records = [
        moves.record_before_out(record, move_id)
        for record in await store_moves.homed_records(connection, slots, timeout_s, cold)
    ]
    records += await store_moves.moved_pieces(connection, move_id, timeout_s)
    records.sort(key=lambda record: record.spec.id)
    holds = moves.open_holds_of(records)
    accounts = await store_moves.accounts_before_out(connection, move_id, slots, holds, timeout_s)
    spread = await store_moves.spread_accounts(connection, timeout_s)
    totals = moves.totals_of(accounts, records)
    return MovedOut(accounts, records, 0, again=True, spread=spread, totals=totals)


async def _committed_already(writer: Writer, move_id: str) -> MovedOut | None:
    """A move-out asked again whose pages are all committed: its totals read back from its
    summary entry, nothing else read (None: pages remain, or a move-out made before pages)."""
    connection, timeout_s = writer.connection, writer.config.load_timeout_s
    summary = await store_moves.move_out_summary(connection, move_id, timeout_s)
    if summary is None:
        return None
    metadata = summary.spec.metadata
    totals = moves.totals_from_metadata(metadata)
    page_count = moves.page_count_from_metadata(metadata)
    done, _ = await store_moves.pages_done(connection, move_id, "out", timeout_s)
    if totals is None or done != set(range(page_count)):
        return None
    spread = await store_moves.spread_accounts(connection, timeout_s)
    return MovedOut([], [], 0, again=True, spread=spread, totals=totals)


async def _commit_page(
    writer: Writer,
    move_id: str,
    direction: str,
    block: moves.MoveBlock,
    page_item_count: int,
    extra_rows: Any = None,
) -> int:
    """Commit a page's block with its move_pages row (and extra_rows' statements, if any)."""

    async def extra(connection: Any, sequence: int, timeout_s: float) -> None:
        await store_moves.record_page(
            connection, move_id, direction, block.page, page_item_count, sequence, timeout_s
        )
        if extra_rows is not None:
            await extra_rows(connection, sequence, timeout_s)

    return await writer.commit_entries(block.writes, block.position, block.accounts, extra)


async def _fenced_reads(
    writer: Writer,
    move_id: str,
    slots: frozenset[int],
    again: bool,
    cold: ColdRecords | None,
    target: int,
    checked: frozenset[str] | None,
) -> tuple[list[AccountState], list[TransactionState], list[TransactionState]]:
    """(the slots' accounts as they were before the move-out, the records that move: homed in
    them, and the held cross-shard pieces moving with their accounts, the moving open holds and
    pieces): read and checked the first time, read back once page 0 committed. checked: the
    pieces the mover found the target holds no other piece of the hold of (None: no piece
    moves)."""
    connection, timeout_s = writer.connection, writer.config.load_timeout_s
    if again:
        moved = await _moved_out_again(writer, move_id, slots, cold)
        return moved.accounts, moved.records, moves.open_holds_of(moved.records)
    accounts = await store_moves.slot_accounts(connection, slots, timeout_s)
    records = await store_moves.homed_records(connection, slots, timeout_s, cold)
    open_records = await store_moves.open_records(connection, timeout_s)
    holds = moves.moving_holds(
        accounts, open_records, slots, target if checked is not None else None
    )
    pieces = moves.moving_pieces(holds)
    unchecked = [p.spec.id for p in pieces if checked is None or p.spec.id not in checked]
    if unchecked:  # opened since the mover asked the target: it asks again (ABORTED)
        raise moves.MoveBusyError(
            f"held cross-shard piece {unchecked[0]!r} would move with the slots, but the target "
            "was not asked whether it holds another piece of its hold: ask again"
        )
    records = sorted([*records, *pieces], key=lambda record: record.spec.id)
    problem = moves.refusal_of(accounts, records)
    if problem:
        raise moves.MoveRefusedError(problem)
    return accounts, records, holds


def move_out(
    move_id: str,
    slots: frozenset[int],
    target: int,
    cold: ColdRecords | None = None,
    checked: frozenset[str] | None = None,
) -> Any:
    """The operation: refuse the slots from now on and write the move-out's blocks (page 0
    with the slots' rows; the pages a restarted source had not committed, when asked again).
    cold: the shard's cold history, whose records of the slots move too. checked: the held
    cross-shard pieces that may move with the slots (None: none may)."""

    async def operation(writer: Writer) -> MovedOut:
        connection, timeout_s = writer.connection, writer.config.load_timeout_s
        again = "out" in await store_moves.move_sides(connection, move_id, timeout_s)
        if again and (answered := await _committed_already(writer, move_id)) is not None:
            return answered
        accounts, records, holds = await _fenced_reads(
            writer, move_id, slots, again, cold, target, checked
        )
        done, size = await store_moves.pages_done(connection, move_id, "out", timeout_s)
        size = size or writer.config.move_page_item_count  # resumed: paged as it began
        pages = moves.move_out_pages(accounts, holds, size)
        totals = moves.totals_of(accounts, records)
        if again and not done:  # a move-out made in one block, before pages: all done
            done = set(range(len(pages)))
        todo = [(number, page) for number, page in enumerate(pages) if number not in done]
        now = await store_moves.slot_accounts(connection, slots, timeout_s) if again else accounts
        blocks = moves.move_out_blocks(
            move_id, target, todo, {a.spec.id: a for a in now},
            await _moves_accounts(writer, accounts), writer.position, failpoints.wall_ns(),
            await _spread_of(writer, holds), moves.totals_metadata(totals, target, len(pages)),
        )  # fmt: skip

        async def fence_rows(connection: Any, sequence: int, timeout_s: float) -> None:
            await store_moves.record_side(
                connection, move_id, slots, "out", target, sequence, timeout_s
            )

        sequence = 0
        for block in blocks:
            if failpoints.ARMED and block is blocks[0]:
                await failpoints.hit("moves.before_out_commit")
            if failpoints.ARMED and block is not blocks[0]:  # a page or more committed
                await failpoints.hit("moves.between_out_pages")
            first = block.page == 0
            committed = await _commit_page(
                writer, move_id, "out", block, size, fence_rows if first else None
            )
            if first:  # refused from now on, even if a later page fails
                writer.moved_out.update(dict.fromkeys(slots, move_id))
                sequence = committed
        if failpoints.ARMED and blocks:  # committed; the mover has not heard it
            await failpoints.hit("moves.after_out_commit")
        log.info(
            "move %s: slots %s moved out to shard %d in %d blocks of %d (%d accounts, %d records, "
            "%d open holds)",
            move_id, sorted(slots), target, len(blocks), len(pages), len(accounts), len(records),
            len(holds),
        )  # fmt: skip
        spread = await store_moves.spread_accounts(connection, timeout_s)
        return MovedOut(accounts, records, sequence, again=again, spread=spread, totals=totals)

    return operation


def move_in(
    move_id: str,
    source: int,
    slots: frozenset[int],
    accounts: list[AccountState],
    records: list[TransactionState],
    spread: list[AccountState],
    staged: Staged | None = None,
) -> Any:
    """The operation: write the move-in's blocks (the pages not committed yet; the last with the
    slots' rows and the records), and create the spread accounts this shard lacks (True: done
    now; False: it was done before). staged: the accounts and records are those staged here
    (StageMoveIn), which must be exactly its totals (MoveRefusedError otherwise)."""

    async def operation(writer: Writer) -> bool:
        nonlocal accounts, records
        connection, timeout_s = writer.connection, writer.config.load_timeout_s
        if "in" in await store_moves.move_sides(connection, move_id, timeout_s):
            return False
        if staged is not None:
            accounts, records = await _staged_checked(writer, move_id, staged)
        done, size = await store_moves.pages_done(connection, move_id, "in", timeout_s)
        size = size or writer.config.move_page_item_count  # resumed: paged as it began
        if not done:  # pages committed before were checked then; their accounts are here now
            await _check_free(connection, slots, accounts, records, timeout_s)
        moves.check_holds_in(records, accounts, slots)
        holds = moves.open_holds_of(records)
        there = await store.load_accounts(connection, [a.spec.id for a in spread], timeout_s)
        missing = [a for a in spread if a.spec.id not in there]
        held_spread = await _spread_of(writer, holds)
        _check_spread_here(held_spread, missing, holds)
        pages = moves.move_in_pages(accounts, records, size)
        todo = [(number, page) for number, page in enumerate(pages) if number not in done]
        named = {leg.account_id for hold in holds for leg in hold.applied_legs}
        arrived = await store.load_accounts(connection, sorted(named), timeout_s) if done else {}
        blocks = moves.move_in_blocks(
            move_id, source, todo, records, await _moves_accounts(writer, accounts),
            writer.position, failpoints.wall_ns(), missing, held_spread,
            {k: a for k, a in arrived.items() if not is_spread(k)},
        )  # fmt: skip

        async def last_rows(connection: Any, sequence: int, timeout_s: float) -> None:
            await store_moves.record_side(
                connection, move_id, slots, "in", source, sequence, timeout_s
            )
            await store_moves.insert_moved_records(connection, move_id, source, records, timeout_s)
            await store_moves.clear_staged(connection, move_id, timeout_s)

        sequence = 0
        for block in blocks:
            if failpoints.ARMED and block is blocks[-1]:
                await failpoints.hit("moves.before_in_commit")
            if failpoints.ARMED and block is not blocks[0]:  # a page or more committed
                await failpoints.hit("moves.between_in_pages")
            last = block.page == len(pages) - 1
            rows = last_rows if last else None
            sequence = await _commit_page(writer, move_id, "in", block, size, rows)
        if failpoints.ARMED:  # committed; the mover has not heard it
            await failpoints.hit("moves.after_in_commit")
        log.info(
            "move %s: slots %s moved in from shard %d in %d blocks of %d, the last %d (%d "
            "accounts, %d records)",
            move_id, sorted(slots), source, len(blocks), len(pages), sequence, len(accounts),
            len(records),
        )  # fmt: skip
        return True

    return operation


@dataclass(frozen=True, slots=True)
class Staged:
    """How a move-in takes what was staged for it: the source's totals, and how a staged
    body is decoded (ValueError when it does not decode: the wire's checks, again)."""

    totals: moves.MoveTotals
    decode_account: Callable[[int, bytes], AccountState]
    decode_record: Callable[[int, bytes], TransactionState]


async def _staged_checked(
    writer: Writer, move_id: str, staged: Staged
) -> tuple[list[AccountState], list[TransactionState]]:
    """What was staged for the move, checked against the source's totals."""
    connection, timeout_s = writer.connection, writer.config.load_timeout_s
    try:
        accounts = [
            staged.decode_account(n, body)
            for n, body in enumerate(
                await store_moves.staged(connection, move_id, "account", timeout_s)
            )
        ]
        records = [
            staged.decode_record(n, body)
            for n, body in enumerate(
                await store_moves.staged(connection, move_id, "record", timeout_s)
            )
        ]
    except ValueError as error:
        raise moves.MoveRefusedError(
            f"what was staged does not decode: {error}: stage it again"
        ) from None
    found = moves.totals_of(accounts, records)
    if not staged.totals.matched_by(found):
        raise moves.MoveRefusedError(
            f"what was staged for move {move_id} ({found.account_count} accounts, "
            f"{found.record_count} records) is not what the source moved out "
            f"({staged.totals.account_count} accounts, {staged.totals.record_count} records, "
            "or their digests differ): stage it again"
        )
    return accounts, records


def stage(
    move_id: str,
    slots: frozenset[int],
    accounts: Sequence[tuple[str, bytes]],
    records: Sequence[tuple[str, bytes]],
    restart: bool = False,
) -> Any:
    """The operation: keep a page of what moves in (items checked by the caller), each
    replacing what was staged under its id; how many of its items are new or changed here.
    restart: drop what was staged for the move first (a copy begun again). MoveRefusedError
    once the move-in committed."""

    async def operation(writer: Writer) -> int:
        connection, timeout_s = writer.connection, writer.config.load_timeout_s
        if "in" in await store_moves.move_sides(connection, move_id, timeout_s):
            raise moves.MoveRefusedError(f"move {move_id} has moved in here already")
        held = await store_moves.slots_held_before(connection, slots, timeout_s)
        if held:
            raise moves.MoveRefusedError(
                f"slots {held} were moved out of this shard before: moving a slot back is not built"
            )
        if restart:
            await store_moves.clear_staged(connection, move_id, timeout_s)
        new = await store_moves.stage(connection, move_id, "account", accounts, timeout_s)
        if failpoints.ARMED:  # part of a page staged (a page is staged again whole: by id)
            await failpoints.hit("moves.mid_stage")
        return new + await store_moves.stage(connection, move_id, "record", records, timeout_s)

    return operation


def _check_spread_here(
    here: dict[str, AccountState],
    missing: Sequence[AccountState],
    holds: Sequence[TransactionState],
) -> None:
    """MoveRefusedError unless every spread account the open holds moving in name is here or
    created by the move-in."""
    created = {account.spec.id for account in missing}
    for hold in holds:
        for leg in hold.applied_legs:
            account_id = leg.account_id
            if is_spread(account_id) and account_id not in here and account_id not in created:
                raise moves.MoveRefusedError(
                    f"open hold {hold.spec.id!r} names spread account {account_id!r}, which "
                    "neither shard has"
                )


async def _check_free(
    connection: Any,
    slots: frozenset[int],
    accounts: list[AccountState],
    records: list[TransactionState],
    timeout_s: float,
) -> None:
    """MoveRefusedError unless nothing of what moves in is here already."""
    held = await store_moves.slots_held_before(connection, slots, timeout_s)
    if held:
        raise moves.MoveRefusedError(
            f"slots {held} were moved out of this shard before: moving a slot back is not built"
        )
    for account in accounts:
        if not moves.account_moves(account.spec.id, slots):
            raise moves.MoveRefusedError(f"account {account.spec.id!r} is not of the slots moved")
    there = await store_moves.existing_accounts(
        connection, [a.spec.id for a in accounts], timeout_s
    )
    if there:
        raise moves.MoveRefusedError(f"accounts {there[:5]} are on this shard already")
    found = await store.load_transactions(connection, [r.spec.id for r in records], timeout_s)
    if found:
        raise moves.MoveRefusedError(f"transactions {sorted(found)[:5]} are recorded here already")
