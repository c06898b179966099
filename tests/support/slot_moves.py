"""Running `tally slots` as its own process, and what the slot-move tests check with it."""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg

from core.slots import SlotMap
from shards.security import directory
from tests.support import security
from tests.support.paths import REPO_ROOT

SLOTS_TIMEOUT_S = 120.0


def customer_on(shard_id: int, shard_count: int, skip: int = 0) -> str:
    """A customer key whose slot shard_id owns under the even map (the skip-th such key)."""
    even = SlotMap.even(shard_count)
    found = [k for n in range(100_000) if even.shard_of_key(k := f"mover-{n}") == shard_id]
    return found[skip]


def cluster_flags() -> list[str]:
    """The mover's credentials: the tests' cluster identity (the internal listeners take no
    other role)."""
    paths = directory.Paths(security.root())
    return [
        f"--ca={paths.certificate(directory.CA)}",
        f"--cert={paths.certificate(directory.CLUSTER)}",
        f"--key={paths.key(directory.CLUSTER)}",
    ]


async def run_slots(control_dsn: str, *arguments: str, failpoint: str = "") -> tuple[int, str, str]:
    """`python -m shards.cli slots ...` in a child process, the control DSN in its environment
    (as an operator keeps secrets off the command line); failpoint: one to arm (NAME=exit)."""
    environment = {**os.environ, "TALLY_CONTROL_DSN": control_dsn}
    environment.pop("TALLY_FAILPOINTS", None)
    if failpoint:
        environment["TALLY_FAILPOINTS"] = failpoint
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shards.cli", "slots", *arguments, *cluster_flags(),
        cwd=REPO_ROOT, env=environment,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=SLOTS_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def moves_net(dsns: list[str]) -> int:
    """Debits minus credits of the slot-move accounts over every shard: 0 once moves finish."""
    net = 0
    for dsn in dsns:
        connection = await asyncpg.connect(dsn)
        try:
            net += await connection.fetchval(
                "SELECT coalesce(sum(debits_posted - credits_posted), 0) FROM accounts "
                "WHERE id LIKE '@moves/%'"
            )
        finally:
            await connection.close()
    return net
