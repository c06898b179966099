"""Shared fixtures: one embedded PostgreSQL per test session, a fresh database per test, and
in-process shard nodes serving real gRPC on loopback."""

from __future__ import annotations

import itertools
import os
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

# Tests fork+exec processes (tally nodes, gateways, pg_ctl) while gRPC threads run in this
# process; gRPC's fork handlers are for forks that do not exec, and in the child they can
# crash it before it execs (a SIGSEGV seen in the bank test). Set before gRPC starts.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
# The suite's PostgreSQL servers have no standby: the `tally node` processes it starts are told
# that one server's disk will do (tests/shards/node/test_durability.py unsets it, and `tally up
# --replicas 1` passes its nodes the default).
os.environ.setdefault("TALLY_DURABILITY", "single-server")

import grpc
import pytest
import uvloop

from shards.local.embedded_pg import EmbeddedPostgres, EmbeddedPostgresConfig
from tests.support import security
from tests.support.helpers import NodeHandle, start_node
from tests.support.object_store import ObjectStoreServer, object_store_server
from tests.support.postgres import started_on_a_free_port

_database_numbers = itertools.count(1)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """Tests run on uvloop, as the node does in production."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def pg() -> Iterator[EmbeddedPostgres]:
    # Not under pytest's own temporary root: another pytest session starting meanwhile resets
    # that root's permissions, and the server (run as an unprivileged user when we are root)
    # then cannot reach its data directory to stop.
    root = Path(tempfile.mkdtemp(prefix="tally-test-pg-"))
    server = started_on_a_free_port(
        lambda port: EmbeddedPostgresConfig(
            data_dir=root / "data", port=port, settings={"max_connections": "400"}
        )
    )
    try:
        yield server
    finally:
        # The data is thrown away: no shutdown checkpoint (immediate), and the data directory,
        # every test's database by now (some 150,000 files), removed by a detached process, not
        # awaited (the end of each worker waited 20-40 s for a removal in this process).
        server.stop("immediate")
        subprocess.Popen(
            ["rm", "-rf", "--", str(root)],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


@pytest.fixture
async def dsn(pg: EmbeddedPostgres) -> str:
    name = f"t{os.getpid()}_{next(_database_numbers)}"
    await pg.create_database_async(name)
    return pg.dsn(name)


@pytest.fixture
async def node(dsn: str) -> AsyncIterator[NodeHandle]:
    handle = await start_node(dsn)
    try:
        yield handle
    finally:
        await handle.stop()


@pytest.fixture
async def channel(node: NodeHandle) -> AsyncIterator[grpc.aio.Channel]:
    async with security.channel(node.target) as channel:
        yield channel


@pytest.fixture(scope="session")
def object_store() -> Iterator[ObjectStoreServer]:
    """A real S3-compatible object store on loopback (SeaweedFS), its one identity's keys in
    the standard environment, as a deployment gives them to the archiver and the nodes."""
    saved = {name: os.environ.get(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    with object_store_server() as server:
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = server.keys()
        try:
            yield server
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
