"""The embedded PostgreSQL with a synchronous streaming standby (`tally up --replicas 1`), real
servers: a commit returns only once the standby has it; a killed primary (kill -9) fails over to
the standby with every commit kept, the old primary is rebuilt as the new one's standby, and the
same again the other way; a failover cut short after it was recorded is completed by the next
start; a start never makes a fresh primary beside an existing standby."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from shards.local.embedded_pg import EmbeddedPostgresError, free_port
from shards.local.replicated_pg import PRIMARY_FILE, ReplicatedPostgres, local_server

FAILOVER_TIMEOUT_S = 120.0


@pytest.fixture
async def replicated() -> AsyncIterator[ReplicatedPostgres]:
    root = Path(tempfile.mkdtemp(prefix="tally-test-replicas-"))
    server = ReplicatedPostgres(root, [free_port(), free_port()])
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        for member in server.members:
            await asyncio.to_thread(member.stop, "immediate")
        shutil.rmtree(root, ignore_errors=True)


async def insert(server: ReplicatedPostgres, *values: int) -> None:
    connection = await asyncpg.connect(server.dsn(), timeout=10)
    try:
        await connection.execute("CREATE TABLE IF NOT EXISTS t (x int PRIMARY KEY)")
        await connection.executemany("INSERT INTO t VALUES ($1)", [(v,) for v in values])
    finally:
        await connection.close()


async def values(server: ReplicatedPostgres) -> list[int]:
    connection = await asyncpg.connect(server.dsn(), timeout=10)
    try:
        return [row["x"] for row in await connection.fetch("SELECT x FROM t ORDER BY x")]
    finally:
        await connection.close()


async def kill_primary(server: ReplicatedPostgres) -> int:
    pid = server.primary.running_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return pid


async def test_a_commit_returns_only_once_the_standby_has_it(
    replicated: ReplicatedPostgres,
) -> None:
    await insert(replicated, 1)
    standby = replicated.standby
    await asyncio.to_thread(standby.stop)
    connection = await asyncpg.connect(replicated.dsn(), timeout=10)
    try:
        with pytest.raises(TimeoutError):  # waits for the standby: never acknowledged on one
            await connection.execute("INSERT INTO t VALUES (2)", timeout=3)
    finally:
        connection.terminate()
    await asyncio.to_thread(standby.start)
    await asyncio.to_thread(replicated.wait_synchronous)
    await insert(replicated, 3)
    # The standby serves reads (hot standby) and has what was committed before it stopped.
    on_standby = await asyncpg.connect(standby.dsn(), timeout=10)
    try:
        assert await on_standby.fetchval("SELECT pg_is_in_recovery()")
        for _ in range(100):
            if await on_standby.fetchval("SELECT count(*) FROM t WHERE x IN (1, 3)") == 2:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the standby never showed the acknowledged rows")
    finally:
        await on_standby.close()


async def wait_failover(server: ReplicatedPostgres, to: int) -> None:
    deadline = time.monotonic() + FAILOVER_TIMEOUT_S
    while server.primary_index != to or server.standby.running_pid() is None:
        assert time.monotonic() < deadline, f"no failover to member {to}: {server}"
        await asyncio.sleep(0.2)
    await asyncio.to_thread(server.wait_synchronous)


@pytest.mark.timeout(300)
async def test_a_killed_primary_fails_over_with_every_commit_and_back_again(
    replicated: ReplicatedPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    await insert(replicated, 1, 2, 3)
    stopping = asyncio.Event()
    supervision = asyncio.create_task(replicated.supervise(stopping))
    try:
        await kill_primary(replicated)
        await wait_failover(replicated, to=1)
        assert replicated.members[0].is_standby() and not replicated.members[1].is_standby()
        assert await values(replicated) == [1, 2, 3]
        await insert(replicated, 4)  # on the promoted server, acknowledged by the rebuilt one
        await kill_primary(replicated)  # and again: the options are symmetric
        await wait_failover(replicated, to=0)
        assert await values(replicated) == [1, 2, 3, 4]
    finally:
        stopping.set()
        await supervision
    said = capsys.readouterr().out
    assert said.count("exited; promoting its standby") == 2, said
    assert "failover done" in said, said


async def test_a_failover_cut_short_after_it_was_recorded_is_completed_by_start(
    replicated: ReplicatedPostgres,
) -> None:
    await insert(replicated, 1)
    await kill_primary(replicated)
    # The failover recorded member 1 as the primary, then this process died before promoting.
    (replicated.data_dir / PRIMARY_FILE).write_text("1\n")
    await asyncio.to_thread(replicated.members[1].stop)
    assert replicated.members[1].is_standby()
    await asyncio.to_thread(replicated.start)
    assert not replicated.members[1].is_standby() and replicated.members[0].is_standby()
    assert await values(replicated) == [1]
    await insert(replicated, 2)


def test_no_fresh_primary_is_made_beside_an_existing_standby(tmp_path: Path) -> None:
    standby_data = tmp_path / "pg-replica-1"
    standby_data.mkdir()
    (standby_data / "PG_VERSION").write_text("18\n")
    server = ReplicatedPostgres(tmp_path, [free_port(), free_port()])
    with pytest.raises(EmbeddedPostgresError, match="is missing"):
        server.start()
    assert not (tmp_path / "pg").exists()


def test_one_server_is_refused_once_the_primary_has_moved(tmp_path: Path) -> None:
    (tmp_path / PRIMARY_FILE).write_text("1\n")
    with pytest.raises(EmbeddedPostgresError, match="--replicas 1"):
        local_server(tmp_path, 0, replicas=0)
    assert isinstance(local_server(tmp_path, 0, replicas=1), ReplicatedPostgres)
    (tmp_path / PRIMARY_FILE).write_text("0\n")
    ports = (tmp_path / "pg-port").read_text(), (tmp_path / "pg-replica-1-port").read_text()
    again = local_server(tmp_path, 0, replicas=1)
    assert isinstance(again, ReplicatedPostgres)
    assert tuple(str(m.config.port) for m in again.members) == ports  # kept across starts
