"""A node's sides of a slot move, each run by the writer as a step of its own
(Writer.run_operation): the move-out at the source and the move-in at the target
(docs/design.md, "Moving slots"). Each is idempotent by its move id: asked again once done, it
answers what it answered the first time and writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core import ids, moves
from core.model import AccountState, TransactionState
from core.slots import is_spread
from core.store import moves as store_moves
from core.store import shard as store
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


async def _moved_out_again(writer: Writer, move_id: str, slots: frozenset[int]) -> MovedOut:
    """A move-out asked again: the same accounts and records as the first time, read back
    (the open holds it released as they were, open)."""
    connection, timeout_s = writer.connection, writer.config.load_timeout_s
    records = [
        moves.record_before_out(record, move_id)
        for record in await store_moves.homed_records(connection, slots, timeout_s)
    ]
    holds = moves.open_holds_of(records)
    accounts = await store_moves.accounts_before_out(connection, move_id, slots, holds, timeout_s)
    spread = await store_moves.spread_accounts(connection, timeout_s)
    return MovedOut(accounts, records, 0, again=True, spread=spread)


def move_out(move_id: str, slots: frozenset[int], target: int) -> Any:
    """The operation: refuse the slots from now on and write the move-out block."""

    async def operation(writer: Writer) -> MovedOut:
        connection, timeout_s = writer.connection, writer.config.load_timeout_s
        if "out" in await store_moves.move_sides(connection, move_id, timeout_s):
            return await _moved_out_again(writer, move_id, slots)
        accounts = await store_moves.slot_accounts(connection, slots, timeout_s)
        records = await store_moves.homed_records(connection, slots, timeout_s)
        problem = moves.refusal_of(accounts, records)
        if problem:
            raise moves.MoveRefusedError(problem)
        open_records = await store_moves.open_records(connection, timeout_s)
        holds = moves.moving_holds(accounts, open_records, slots)
        writes, position, states = moves.move_out_entries(
            move_id, target, accounts, await _moves_accounts(writer, accounts),
            writer.position, failpoints.wall_ns(), holds, await _spread_of(writer, holds),
        )  # fmt: skip

        async def extra(connection: Any, sequence: int, timeout_s: float) -> None:
            await store_moves.record_side(
                connection, move_id, slots, "out", target, sequence, timeout_s
            )

        if failpoints.ARMED:
            await failpoints.hit("moves.before_out_commit")
        sequence = await writer.commit_entries(writes, position, states, extra)
        writer.moved_out.update(dict.fromkeys(slots, move_id))
        if failpoints.ARMED:  # committed; the mover has not heard it
            await failpoints.hit("moves.after_out_commit")
        log.info(
            "move %s: slots %s moved out to shard %d in block %d (%d accounts, %d records, "
            "%d open holds)",
            move_id, sorted(slots), target, sequence, len(accounts), len(records), len(holds),
        )  # fmt: skip
        spread = await store_moves.spread_accounts(connection, timeout_s)
        return MovedOut(accounts, records, sequence, again=False, spread=spread)

    return operation


def move_in(
    move_id: str,
    source: int,
    slots: frozenset[int],
    accounts: list[AccountState],
    records: list[TransactionState],
    spread: list[AccountState],
) -> Any:
    """The operation: write the move-in block and the records, and create the spread accounts
    this shard lacks (True: done now; False: it was done before)."""

    async def operation(writer: Writer) -> bool:
        connection, timeout_s = writer.connection, writer.config.load_timeout_s
        if "in" in await store_moves.move_sides(connection, move_id, timeout_s):
            return False
        await _check_free(connection, slots, accounts, records, timeout_s)
        moves.check_holds_in(records, accounts, slots)
        there = await store.load_accounts(connection, [a.spec.id for a in spread], timeout_s)
        missing = [a for a in spread if a.spec.id not in there]
        held_spread = await _spread_of(writer, moves.open_holds_of(records))
        _check_spread_here(held_spread, missing, moves.open_holds_of(records))
        writes, position, states = moves.move_in_entries(
            move_id, source, accounts, records, await _moves_accounts(writer, accounts),
            writer.position, failpoints.wall_ns(), missing, held_spread,
        )  # fmt: skip

        async def extra(connection: Any, sequence: int, timeout_s: float) -> None:
            await store_moves.record_side(
                connection, move_id, slots, "in", source, sequence, timeout_s
            )
            await store_moves.insert_moved_records(connection, move_id, source, records, timeout_s)

        if failpoints.ARMED:
            await failpoints.hit("moves.before_in_commit")
        sequence = await writer.commit_entries(writes, position, states, extra)
        if failpoints.ARMED:  # committed; the mover has not heard it
            await failpoints.hit("moves.after_in_commit")
        log.info(
            "move %s: slots %s moved in from shard %d in block %d (%d accounts, %d records)",
            move_id, sorted(slots), source, sequence, len(accounts), len(records),
        )  # fmt: skip
        return True

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
