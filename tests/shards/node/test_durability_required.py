"""A node writes only on a database as durable as `--durability` requires: by default a primary
with a synchronous standby; one server's disk only when told so; never a standby, fsync off,
torn pages allowed, or a COMMIT that returns before the flush."""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg
import pytest

from core.store import shard as store
from shards.node import durability
from shards.node.server import Node, NodeConfig, NotDurableError
from tests.support import security
from tests.support.paths import REPO_ROOT

DURABLE_ONE_SERVER = {
    "fsync": "on",
    "full_page_writes": "on",
    "synchronous_commit": "on",
    "synchronous_standby_names": "",
    "in_recovery": "off",
}


def test_a_synchronous_standby_is_required_by_default() -> None:
    reason = durability.refusal(durability.SYNC_STANDBY, DURABLE_ONE_SERVER)
    assert reason is not None and "synchronous_standby_names" in reason
    assert "--durability single-server" in reason
    assert durability.refusal(durability.SINGLE_SERVER, DURABLE_ONE_SERVER) is None
    replicated = {**DURABLE_ONE_SERVER, "synchronous_standby_names": "tally_pg_1"}
    assert durability.refusal(durability.SYNC_STANDBY, replicated) is None


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("fsync", "off", "fsync is off"),
        ("full_page_writes", "off", "full_page_writes is off"),
        ("synchronous_commit", "local", "synchronous_commit is local"),
        ("synchronous_commit", "remote_write", "synchronous_commit is remote_write"),
        ("in_recovery", "on", "standby"),
    ],
)
def test_no_mode_accepts_a_database_that_can_lose_an_acknowledged_commit(
    name: str, value: str, said: str
) -> None:
    for mode in durability.MODES:
        settings = {**DURABLE_ONE_SERVER, "synchronous_standby_names": "s", name: value}
        reason = durability.refusal(mode, settings)
        assert reason is not None and said in reason, (mode, reason)
    assert durability.refusal(durability.SYNC_STANDBY, {}) is not None  # nothing known: refused


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown durability"):
        Node(NodeConfig(dsn="postgresql://unused", durability="best-effort"))


async def test_the_settings_are_read_as_the_server_applies_them(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        settings = await store.durability_settings(connection, 10.0)
        assert settings == DURABLE_ONE_SERVER  # the suite's server: durable, no standby
        await connection.execute("SET synchronous_commit = off")
        settings = await store.durability_settings(connection, 10.0)
        assert settings["synchronous_commit"] == "off"
        await store.wait_durable(connection, 10.0)  # no standby: returns after the flush
    finally:
        await connection.close()


async def test_a_node_refuses_to_start_on_a_server_without_a_standby(dsn: str) -> None:
    node = Node(NodeConfig(dsn=dsn, listen="127.0.0.1:0", security=security.server_security()))
    with pytest.raises(NotDurableError, match="synchronous_standby_names is empty"):
        await node.start()
    assert node.port == 0  # it never served


async def test_tally_node_exits_2_and_says_why(dsn: str) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "TALLY_DURABILITY"}
    environment["TALLY_DSN"] = dsn
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shards.cli",
        "node",
        "--listen",
        "127.0.0.1:0",
        *security.server_flags(),
        cwd=REPO_ROOT,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2, (stdout, stderr)
    said = stderr.decode()
    assert "refusing to write on this database (--durability sync-standby)" in said, said
    assert "serving" not in stdout.decode()
