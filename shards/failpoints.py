"""Failpoints: named places in the code where a test can make the process die or stall, to hit
an exact step of a protocol (say, the gateway between prepare and commit) deterministically.

Armed by the environment, read once at import:

    TALLY_FAILPOINTS="gateway.after_prepare=exit,shard.after_commit=sleep:5"

Actions: `exit` kills the process with SIGKILL at once (as `kill -9` would: no cleanup, no
answer, sockets closed by the kernel); `sleep:SECONDS` stalls the calling coroutine (the rest of
the process keeps running), so a test can kill this or another process at that moment. Each hit
of an armed failpoint is logged first ("failpoint NAME reached"), which a test can wait for.

Unset (production), call sites cost one attribute read: `if failpoints.ARMED: await hit(...)`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

log = logging.getLogger("tally.failpoints")

ENVIRONMENT_VARIABLE = "TALLY_FAILPOINTS"
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
