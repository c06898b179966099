"""The control database's tables: the shards' endpoints (each with the lease epoch of the writer
that registered it) and the versioned slot map.

Control plane only: read at a process's start and polled (shards.control); never on a posting's
path. Each function takes an open connection; every statement carries a timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.history import DoneMove
from core.slots import SLOT_COUNT, SlotMap
from core.store import schema
from core.store import shard as store

TIMEOUT_S = 10.0


async def prepare(connection: Any) -> None:
    await store.migrate(connection, schema.CONTROL_MIGRATIONS)


async def initialise(connection: Any, shard_count: int) -> SlotMap:
    """Create an even slot map for shard_count shards unless one exists; return the map."""
    await prepare(connection)
    even = SlotMap.even(shard_count)
    await connection.execute(
        """
        INSERT INTO slot_map (id, version, owners) VALUES (1, $1, $2)
        ON CONFLICT (id) DO NOTHING
        """,
        even.version,
        list(even.owners),
        timeout=TIMEOUT_S,
    )
    loaded = await load_slot_map(connection)
    if loaded is None:
        raise RuntimeError("slot map missing right after creating it")
    return loaded


async def load_slot_map(connection: Any) -> SlotMap | None:
    row = await connection.fetchrow(
        "SELECT version, owners FROM slot_map WHERE id = 1", timeout=TIMEOUT_S
    )
    if row is None:
        return None
    owners = tuple(row["owners"])
    if len(owners) != SLOT_COUNT:
        raise RuntimeError(f"slot map has {len(owners)} slots, expected {SLOT_COUNT}")
    return SlotMap(row["version"], owners)


async def move_slots(connection: Any, slots: list[int], shard_id: int) -> SlotMap:
    """Reassign slots (a new map version), moving no data: a move with its data is
    `tally slots move` (plan_move ... finish_move)."""
    async with connection.transaction():
        row = await connection.fetchrow(
            "SELECT version, owners FROM slot_map WHERE id = 1 FOR UPDATE", timeout=TIMEOUT_S
        )
        moved = SlotMap(row["version"], tuple(row["owners"])).moved(slots, shard_id)
        await connection.execute(
            "UPDATE slot_map SET version = $1, owners = $2, updated_at = now() WHERE id = 1",
            moved.version,
            list(moved.owners),
            timeout=TIMEOUT_S,
        )
    return moved


async def register_shard(
    connection: Any, shard_id: int, endpoint: str, epoch: int, client_endpoint: str = ""
) -> int | None:
    """Record endpoint (internal) and client_endpoint (the Ledger listener clients may reach
    directly; "": none) as shard_id's, registered by its writer of this lease epoch, unless a
    newer epoch is recorded: None when recorded, else the newer epoch that refused it. An equal
    epoch (the same writer again) replaces the endpoints; epochs only grow, so a refusal is
    final for this epoch."""
    recorded = await connection.fetchval(
        """
        INSERT INTO shards AS s (shard_id, endpoint, epoch, client_endpoint)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (shard_id) DO UPDATE
            SET endpoint = excluded.endpoint, epoch = excluded.epoch,
                client_endpoint = excluded.client_endpoint, updated_at = now()
            WHERE s.epoch <= excluded.epoch
        RETURNING epoch
        """,
        shard_id,
        endpoint,
        epoch,
        client_endpoint,
        timeout=TIMEOUT_S,
    )
    if recorded is not None:
        return None
    newer: int = await connection.fetchval(
        "SELECT epoch FROM shards WHERE shard_id = $1", shard_id, timeout=TIMEOUT_S
    )
    return newer


async def shard_endpoints(connection: Any) -> dict[int, str]:
    rows = await connection.fetch("SELECT shard_id, endpoint FROM shards", timeout=TIMEOUT_S)
    return {row["shard_id"]: row["endpoint"] for row in rows}


async def client_endpoints(connection: Any) -> dict[int, str]:
    """Each shard's client endpoint, of the shards whose writer registered one."""
    rows = await connection.fetch(
        "SELECT shard_id, client_endpoint FROM shards WHERE client_endpoint <> ''",
        timeout=TIMEOUT_S,
    )
    return {row["shard_id"]: row["client_endpoint"] for row in rows}


# ---- slot moves: one row per move, its step (docs/design.md, "Moving slots") ----

MOVE_STATES_UNFINISHED = ("planned", "out", "in")


class MoveConflictError(RuntimeError):
    """The control database refuses this step of a move (the message says why)."""


@dataclass(frozen=True, slots=True)
class SlotMove:
    move_id: str
    slots: tuple[int, ...]
    source_shard: int
    target_shard: int
    from_version: int
    state: str
    pause_ms: float
    # The copy's progress (control migration 5): the part being copied (COPY_ACCOUNTS,
    # COPY_RECORDS, COPY_DONE; 0 not begun), the last id staged of it, how many staged so far.
    copy_part: int = 0
    copy_after_id: str = ""
    copied_count: int = 0
    # The pre-copy's progress (control migration 6), the same way, before the move-out: the
    # source's last block in its first page's snapshot (-1: none), COPY_RECORDS or COPY_DONE.
    precopy_sequence: int = -1
    precopy_part: int = 0
    precopy_after_id: str = ""
    precopied_count: int = 0

    @property
    def precopied(self) -> bool:
        """The pre-copy is done: the copy after the fence need stage only what changed."""
        return self.precopy_part == COPY_DONE and self.precopy_sequence >= 0


COPY_ACCOUNTS, COPY_RECORDS, COPY_DONE = 1, 2, 3


def _move_of(row: Any) -> SlotMove:
    return SlotMove(
        row["move_id"],
        tuple(row["slots"]),
        row["source_shard"],
        row["target_shard"],
        row["from_version"],
        row["state"],
        float(row["pause_ms"]),
        row["copy_part"],
        row["copy_after_id"],
        row["copied_count"],
        row["precopy_sequence"],
        row["precopy_part"],
        row["precopy_after_id"],
        row["precopied_count"],
    )


async def unfinished_move(connection: Any) -> SlotMove | None:
    """The move not yet done or abandoned (there is at most one at a time)."""
    row = await connection.fetchrow(
        "SELECT * FROM slot_moves WHERE state = ANY($1::text[]) ORDER BY created_at LIMIT 1",
        list(MOVE_STATES_UNFINISHED),
        timeout=TIMEOUT_S,
    )
    return None if row is None else _move_of(row)


async def plan_move(
    connection: Any, move_id: str, slots: list[int], source: int, target: int, version: int
) -> SlotMove:
    """Record a new move, planned; MoveConflictError while another one is unfinished (one at a
    time: each starts from the map its predecessor left) or the map moved on since `version`."""
    async with connection.transaction():
        await connection.execute(
            "LOCK TABLE slot_moves IN SHARE ROW EXCLUSIVE MODE", timeout=TIMEOUT_S
        )
        unfinished = await unfinished_move(connection)
        if unfinished is not None:
            raise MoveConflictError(
                f"move {unfinished.move_id} is unfinished ({unfinished.state}): resume it first"
            )
        current = await connection.fetchval(
            "SELECT version FROM slot_map WHERE id = 1", timeout=TIMEOUT_S
        )
        if current != version:
            raise MoveConflictError(f"the slot map moved on to version {current}; plan again")
        row = await connection.fetchrow(
            """
            INSERT INTO slot_moves (move_id, slots, source_shard, target_shard, from_version, state)
            VALUES ($1, $2, $3, $4, $5, 'planned') RETURNING *
            """,
            move_id,
            sorted(slots),
            source,
            target,
            version,
            timeout=TIMEOUT_S,
        )
    return _move_of(row)


async def set_move_state(connection: Any, move_id: str, state: str) -> None:
    """The move reached `state` ('out' also notes when its pause began)."""
    await connection.execute(
        """
        UPDATE slot_moves SET state = $2, updated_at = now(),
            out_at = CASE WHEN $2 = 'out' THEN coalesce(out_at, now()) ELSE out_at END
        WHERE move_id = $1
        """,
        move_id,
        state,
        timeout=TIMEOUT_S,
    )


async def set_copy_progress(
    connection: Any, move_id: str, part: int, after_id: str, copied_count: int
) -> None:
    """The copy of the move reached (part, after_id): staged at the target up to there."""
    await connection.execute(
        """
        UPDATE slot_moves SET copy_part = $2, copy_after_id = $3, copied_count = $4,
            updated_at = now()
        WHERE move_id = $1
        """,
        move_id,
        part,
        after_id,
        copied_count,
        timeout=TIMEOUT_S,
    )


async def set_precopy_progress(
    connection: Any, move_id: str, sequence: int, part: int, after_id: str, copied_count: int
) -> None:
    """The pre-copy of the move reached (part, after_id), read from the source's snapshots
    after block `sequence` (-1 with part 0: void, the next copy is a full one)."""
    await connection.execute(
        """
        UPDATE slot_moves SET precopy_sequence = $2, precopy_part = $3, precopy_after_id = $4,
            precopied_count = $5, updated_at = now()
        WHERE move_id = $1
        """,
        move_id,
        sequence,
        part,
        after_id,
        copied_count,
        timeout=TIMEOUT_S,
    )


async def restart_copy(connection: Any, move_id: str) -> None:
    """The move's copy begins again, in full (its pre-copy void), in one statement: a mover
    killed after it copies everything again."""
    await connection.execute(
        """
        UPDATE slot_moves SET copy_part = 0, copy_after_id = '', copied_count = 0,
            precopy_sequence = -1, precopy_part = 0, precopy_after_id = '', precopied_count = 0,
            updated_at = now()
        WHERE move_id = $1
        """,
        move_id,
        timeout=TIMEOUT_S,
    )


async def finish_move(connection: Any, move: SlotMove) -> tuple[SlotMap, float]:
    """Give the move's slots to its target in the slot map and mark it done, in one
    transaction: the map's new version and the pause (ms since the move-out). The map update
    is conditional: the map must still be at the move's starting version (nothing else moves
    meanwhile), or already show this move done (a mover resumed after the update)."""
    async with connection.transaction():
        row = await connection.fetchrow(
            "SELECT version, owners FROM slot_map WHERE id = 1 FOR UPDATE", timeout=TIMEOUT_S
        )
        current = SlotMap(row["version"], tuple(row["owners"]))
        if current.version == move.from_version:
            current = await _write_map(connection, current.moved(move.slots, move.target_shard))
        elif any(current.owners[slot] != move.target_shard for slot in move.slots):
            raise MoveConflictError(
                f"the slot map moved from version {move.from_version} to {current.version} "
                f"under move {move.move_id}, and not by it"
            )
        pause_ms = await connection.fetchval(
            """
            UPDATE slot_moves SET state = 'done', updated_at = now(),
                pause_ms = CASE WHEN state = 'done' THEN pause_ms
                    ELSE coalesce(extract(epoch FROM clock_timestamp() - out_at) * 1000, 0) END
            WHERE move_id = $1 RETURNING pause_ms
            """,
            move.move_id,
            timeout=TIMEOUT_S,
        )
    return current, float(pause_ms)


async def done_moves(connection: Any, from_version_min: int) -> list[DoneMove]:
    """The moves done that started from map version from_version_min or later, in the order
    they finished (one at a time, each from the map its predecessor left: by from_version).
    A reader that last read the map at version v asks from v on: a move done since started
    there or later (docs/design.md, "Reads across the move")."""
    rows = await connection.fetch(
        """
        SELECT move_id, slots, source_shard, target_shard FROM slot_moves
        WHERE state = 'done' AND from_version >= $1::bigint ORDER BY from_version, move_id
        """,
        from_version_min,
        timeout=TIMEOUT_S,
    )
    return [
        DoneMove(row["move_id"], tuple(row["slots"]), row["source_shard"], row["target_shard"])
        for row in rows
    ]


async def _write_map(connection: Any, slot_map: SlotMap) -> SlotMap:
    await connection.execute(
        "UPDATE slot_map SET version = $1, owners = $2, updated_at = now() WHERE id = 1",
        slot_map.version,
        list(slot_map.owners),
        timeout=TIMEOUT_S,
    )
    return slot_map
