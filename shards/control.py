"""The control database: the shards' endpoints and the versioned slot map.

Control plane only: read at start and polled; never on a posting's path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from core.slots import SLOT_COUNT, SlotMap
from core.store import schema
from core.store import shard as store

TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0

T = TypeVar("T")


async def connect(dsn: str) -> Any:
    return await asyncpg.connect(dsn, timeout=30.0, command_timeout=60.0)


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


async def register_shard(connection: Any, shard_id: int, endpoint: str) -> None:
    await connection.execute(
        """
        INSERT INTO shards (shard_id, endpoint) VALUES ($1, $2)
        ON CONFLICT (shard_id) DO UPDATE SET endpoint = excluded.endpoint, updated_at = now()
        """,
        shard_id,
        endpoint,
        timeout=TIMEOUT_S,
    )


async def shard_endpoints(connection: Any) -> dict[int, str]:
    rows = await connection.fetch("SELECT shard_id, endpoint FROM shards", timeout=TIMEOUT_S)
    return {row["shard_id"]: row["endpoint"] for row in rows}


class ControlClient:
    """One connection to the control database for a process's periodic reads, kept open
    (a poll every second must not cost PostgreSQL a new backend each time) and opened again
    after any failure. One use at a time."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._connection: Any = None
        self._lock = asyncio.Lock()

    async def use(self, work: Callable[[Any], Awaitable[T]]) -> T:
        async with self._lock:
            if self._connection is None or self._connection.is_closed():
                self._connection = await connect(self._dsn)
            try:
                return await work(self._connection)
            except BaseException:
                await self._drop()
                raise

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await connection.close(timeout=CLOSE_TIMEOUT_S)
            except Exception:  # already broken: nothing left to release but the socket
                connection.terminate()
