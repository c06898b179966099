"""Running `tally slots` as its own process, and what the slot-move tests check with it."""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg
import grpc

from core.slots import SlotMap
from shards.security import directory
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.helpers import Client, transfer
from tests.support.paths import REPO_ROOT

SLOTS_TIMEOUT_S = 120.0
CREATED, REPLAYED = pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED


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


async def slot_owners(control_dsn: str) -> list[int]:
    """The slot map's owner of each slot, as the control database holds it now."""
    connection = await asyncpg.connect(control_dsn)
    try:
        return list(await connection.fetchval("SELECT owners FROM slot_map WHERE id = 1"))
    finally:
        await connection.close()


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


# Answers a bank client retries with the same id (a shard restarting, a slot moving).
RETRYABLE = {
    pb.RESULT_CODE_ABORTED,  # a cross-shard attempt that lost to a fault or to another attempt
    pb.RESULT_CODE_UNAVAILABLE,
    pb.RESULT_CODE_OUTCOME_UNKNOWN,
    pb.RESULT_CODE_WRONG_SHARD,
}


async def post_until_done(client: Client, item: pb.Transaction, seen: dict[str, int]) -> int:
    """Post with the same id until it is applied or replayed (a bank client's retry); the
    retryable answers met on the way are counted in `seen` by name."""
    while True:
        try:
            result = (await client.post(item))[0]
        except grpc.aio.AioRpcError as error:
            seen[error.code().name] = seen.get(error.code().name, 0) + 1
            await asyncio.sleep(0.05)
            continue
        if result.code in (CREATED, REPLAYED):
            return result.timestamp_ns
        assert result.code in RETRYABLE, (pb.ResultCode.Name(result.code), result.message)
        name = pb.ResultCode.Name(result.code)
        seen[name] = seen.get(name, 0) + 1
        await asyncio.sleep(0.05)


async def retrying_load(client: Client, key: str, stop: asyncio.Event, seen: dict[str, int]) -> int:
    """Transfers of 1 from key/dep to key/sav, each posted until done, until stopped: how many
    were applied (each exactly once)."""
    count = 0
    while not stop.is_set():
        item = transfer(f"{key}/load-{count}", f"{key}/dep", f"{key}/sav", 1)
        await post_until_done(client, item, seen)
        count += 1
        await asyncio.sleep(0.01)
    return count
