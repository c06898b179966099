"""The writer lease's statements on a shard database: the advisory lock and the epoch row.

shards.node.lease holds the lease (one dedicated session) and decides what to do with these
answers; the epoch row is checked inside every commit (core.store.shard.commit_block).
"""

from __future__ import annotations

from typing import Any

from core.store import schema

Connection = Any  # asyncpg.Connection; asyncpg ships no complete stubs


async def try_lock(connection: Connection, timeout_s: float) -> bool:
    """Take the lease's advisory lock for this session, unless another session holds it."""
    got: bool = await connection.fetchval(
        "SELECT pg_try_advisory_lock($1)", schema.WRITER_LEASE_LOCK_KEY, timeout=timeout_s
    )
    return got


async def unlock(connection: Connection, timeout_s: float) -> None:
    await connection.execute(
        "SELECT pg_advisory_unlock($1)", schema.WRITER_LEASE_LOCK_KEY, timeout=timeout_s
    )


async def bump_epoch(connection: Connection, holder: str, timeout_s: float) -> int:
    """Record a new holder: the epoch after this one, which fences every earlier writer."""
    epoch: int = await connection.fetchval(
        """
        UPDATE writer_lease SET epoch = epoch + 1, holder = $1, acquired_at = now()
        WHERE id = 1 RETURNING epoch
        """,
        holder,
        timeout=timeout_s,
    )
    return epoch


async def current_epoch(connection: Connection, timeout_s: float) -> int:
    epoch: int = await connection.fetchval(
        "SELECT epoch FROM writer_lease WHERE id = 1", timeout=timeout_s
    )
    return epoch
