"""The writer lease of a shard database: an advisory lock plus an epoch row.

The advisory lock (held by one dedicated session) keeps a second writer from starting while the
first lives; the epoch, bumped by every new holder and checked inside every commit, makes sure a
zombie writer (one whose session died, or that was paused and has been replaced) can never
commit again.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from core.store import lease as lease_store

log = logging.getLogger("tally.lease")


class LeaseState(enum.Enum):
    WAITING = "waiting"
    HELD = "held"
    LOST = "lost"
    RELEASED = "released"


class Lease:
    def __init__(self, connect: Callable[[], Awaitable[Any]], holder: str) -> None:
        self._connect = connect
        self.holder = holder
        self.state = LeaseState.WAITING
        self.epoch = 0
        self._connection: Any = None

    async def try_acquire(self) -> bool:
        """One attempt: take the lease if it is free now (True: held, the epoch bumped), else
        False and still waiting."""
        if self.state is not LeaseState.WAITING:
            raise RuntimeError(f"lease is {self.state.value}, cannot acquire")
        if self._connection is None or self._connection.is_closed():
            self._connection = await self._connect()
        if not await lease_store.try_lock(self._connection, 10.0):
            return False
        self.epoch = await lease_store.bump_epoch(self._connection, self.holder, 30.0)
        self.state = LeaseState.HELD
        log.info("writer lease acquired: epoch %d", self.epoch)
        return True

    async def acquire(self, poll_interval_s: float = 0.5) -> int:
        """Wait (as a standby) until the lease is free, take it, and return the new epoch."""
        announced = False
        while not await self.try_acquire():
            if not announced:
                log.info("standby: another writer holds the lease; waiting")
                announced = True
            await asyncio.sleep(poll_interval_s)
        return self.epoch

    async def reacquire(self) -> bool:
        """After the lease session died: take the lock again without bumping the epoch, which
        is only right if nobody bumped it meanwhile. False means another writer took over."""
        if self._connection is not None and not self._connection.is_closed():
            self._connection.terminate()
        self._connection = await self._connect()
        if not await lease_store.try_lock(self._connection, 10.0):
            self.state = LeaseState.LOST
            return False
        if await lease_store.current_epoch(self._connection, 10.0) != self.epoch:
            self.state = LeaseState.LOST
            return False
        self.state = LeaseState.HELD
        return True

    def is_alive(self) -> bool:
        return (
            self.state is LeaseState.HELD
            and self._connection is not None
            and not self._connection.is_closed()
        )

    async def release(self) -> None:
        if self._connection is None:
            self.state = LeaseState.RELEASED
            return
        try:
            if self.state is LeaseState.HELD and not self._connection.is_closed():
                await lease_store.unlock(self._connection, 5.0)
        finally:
            await self._connection.close(timeout=5.0)
            self._connection = None
            self.state = LeaseState.RELEASED
