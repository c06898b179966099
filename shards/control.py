"""A process's connection to the control database (its tables and queries: core.store.control).

Control plane only: read at start and polled; never on a posting's path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

import asyncpg

from core.history import DoneMove
from core.slots import SlotMap
from core.store import control as control_store

CLOSE_TIMEOUT_S = 5.0

T = TypeVar("T")


class ClusterView(NamedTuple):
    """What a process reads of the cluster from the control database."""

    slot_map: SlotMap | None
    endpoints: dict[int, str]  # internal (tally.v1.Shard, and the Ledger for gateways)
    client_endpoints: dict[int, str]  # the nodes' client listeners, of those registered
    moves: list[DoneMove]  # slot moves done since the version asked about


async def connect(dsn: str) -> Any:
    return await asyncpg.connect(dsn, timeout=30.0, command_timeout=60.0)


class ControlClient:
    """One connection to the control database for a process's periodic reads, kept open
    (a poll every second must not cost PostgreSQL a new backend each time) and opened again
    after any failure. One use at a time."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._connection: Any = None
        self._lock = asyncio.Lock()
        self._prepared = False

    async def use(self, work: Callable[[Any], Awaitable[T]]) -> T:
        async with self._lock:
            if self._connection is None or self._connection.is_closed():
                self._connection = await connect(self._dsn)
            try:
                return await work(self._connection)
            except BaseException:
                await self._drop()
                raise

    async def read_cluster_and_moves(self, moves_version: int) -> ClusterView:
        """The slot map (None before the cluster is initialised), the shards' internal and
        client endpoints, and the moves done since the map was at moves_version (-1: every
        one; none read while the map is still there), from one snapshot: the moves are never
        older than the map read with them. The tables are created first if this process is the
        first to look."""

        async def read(connection: Any) -> ClusterView:
            if not self._prepared:
                await control_store.prepare(connection)
                self._prepared = True
            async with connection.transaction(isolation="repeatable_read", readonly=True):
                slot_map = await control_store.load_slot_map(connection)
                endpoints = await control_store.shard_endpoints(connection)
                clients = await control_store.client_endpoints(connection)
                moves: list[DoneMove] = []
                if slot_map is not None and slot_map.version != moves_version:
                    moves = await control_store.done_moves(connection, max(moves_version, 0))
            return ClusterView(slot_map, endpoints, clients, moves)

        return await self.use(read)

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
