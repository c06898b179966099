"""Failpoints: named places in the code where a test can make the process die or stall, to hit
an exact step of a protocol (say, the gateway between prepare and commit) deterministically.

Armed by the environment, read once at import:

    TALLY_FAILPOINTS="gateway.after_prepare=exit,shard.after_commit=sleep:5"

Actions: `exit` kills the process with SIGKILL at once (as `kill -9` would: no cleanup, no
answer, sockets closed by the kernel); `sleep:SECONDS` stalls the calling coroutine (the rest of
the process keeps running), so a test can kill this or another process at that moment. Each hit
of an armed failpoint is logged first ("failpoint NAME reached"), which a test can wait for.

Unset (production), call sites cost one attribute read: `if failpoints.ARMED: await hit(...)`.

The wall clock is a fault too. Every timestamp and deadline a node, gateway or participant takes
comes from `wall_ns()`. With TALLY_FAULT_CLOCK_FILE naming a file, `wall_ns()` is the system
clock plus the offset in that file (integer nanoseconds, may be negative, re-read at most every
0.1 s). A test or the fault campaign skews one process by writing a constant offset, and steps
its clock by changing the offset while it runs. A missing or unreadable file reads as 0. Unset
(production), `wall_ns` is `time.time_ns` itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable

log = logging.getLogger("tally.failpoints")

ENVIRONMENT_VARIABLE = "TALLY_FAILPOINTS"
CLOCK_VARIABLE = "TALLY_FAULT_CLOCK_FILE"
CLOCK_REREAD_S = 0.1
REACHED = "failpoint {name} reached"


def parse(text: str) -> dict[str, tuple[str, float]]:
    """Parse "a=exit,b=sleep:2.5" into {"a": ("exit", 0.0), "b": ("sleep", 2.5)}."""
    actions: dict[str, tuple[str, float]] = {}
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, _, action = entry.partition("=")
        verb, _, argument = action.strip().partition(":")
        if verb == "exit" and not argument:
            actions[name.strip()] = ("exit", 0.0)
        elif verb == "sleep" and argument:
            actions[name.strip()] = ("sleep", float(argument))
        else:
            raise ValueError(f"{ENVIRONMENT_VARIABLE}: cannot parse {entry!r}")
    return actions


_ACTIONS = parse(os.environ.get(ENVIRONMENT_VARIABLE, ""))
ARMED = bool(_ACTIONS)


async def hit(name: str) -> None:
    """Run the action armed for `name`, if any."""
    action = _ACTIONS.get(name)
    if action is None:
        return
    verb, seconds = action
    log.warning(REACHED.format(name=name) + " (%s)", verb)
    for handler in logging.getLogger().handlers:
        handler.flush()
    if verb == "exit":
        os.kill(os.getpid(), signal.SIGKILL)
        os._exit(137)  # not reached
    await asyncio.sleep(seconds)


class _SkewedClock:
    """The system clock plus the offset in a file, re-read at most every CLOCK_REREAD_S."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._offset_ns = 0
        self._read_at = -1.0

    def __call__(self) -> int:
        now = time.monotonic()
        if now - self._read_at >= CLOCK_REREAD_S:
            self._read_at = now
            try:
                with open(self._path, encoding="ascii") as file:
                    self._offset_ns = int(file.read().strip() or 0)
            except (OSError, ValueError):
                self._offset_ns = 0
        return time.time_ns() + self._offset_ns


def _wall_clock() -> Callable[[], int]:
    path = os.environ.get(CLOCK_VARIABLE, "")
    return _SkewedClock(path) if path else time.time_ns


wall_ns: Callable[[], int] = _wall_clock()
"""Nanoseconds since the epoch: the system clock, skewed in tests (TALLY_FAULT_CLOCK_FILE)."""
