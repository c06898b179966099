"""The control database's tables: the shards' endpoints (each with the lease epoch of the writer
that registered it) and the versioned slot map.

Control plane only: read at a process's start and polled (shards.control); never on a posting's
path. Each function takes an open connection; every statement carries a timeout.
"""

from __future__ import annotations

from typing import Any

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
    """Reassign slots (a new map version). Moving data with them is a later capability."""
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


async def register_shard(connection: Any, shard_id: int, endpoint: str, epoch: int) -> int | None:
    """Record endpoint as shard_id's, registered by its writer of this lease epoch, unless a
    newer epoch is recorded: None when recorded, else the newer epoch that refused it. An equal
    epoch (the same writer again) replaces the endpoint; epochs only grow, so a refusal is
    final for this epoch."""
    recorded = await connection.fetchval(
        """
        INSERT INTO shards AS s (shard_id, endpoint, epoch) VALUES ($1, $2, $3)
        ON CONFLICT (shard_id) DO UPDATE
            SET endpoint = excluded.endpoint, epoch = excluded.epoch, updated_at = now()
            WHERE s.epoch <= excluded.epoch
        RETURNING epoch
        """,
        shard_id,
        endpoint,
        epoch,
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
