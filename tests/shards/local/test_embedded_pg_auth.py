"""The embedded PostgreSQL lets nobody in without the superuser's password: over TCP and over its
Unix socket, after a restart, after its pg_hba.conf was loosened, and for a data directory made
before passwords (trust), which is given one at its next start."""

from __future__ import annotations

import asyncio
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from shards.local.embedded_pg import (
    HBA_CONF,
    PASSWORD_FILE,
    SUPERUSER,
    EmbeddedPostgres,
    EmbeddedPostgresConfig,
    free_port,
)

TRUST_HBA = "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n"
REFUSED = (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)


@pytest.fixture
def server() -> Iterator[EmbeddedPostgres]:
    # Not under pytest's temporary root, as in conftest.py: another pytest session resets its
    # permissions, and the server (tally-pg, under root) could no longer reach its data.
    root = Path(tempfile.mkdtemp(prefix="tally-test-pg-auth-"))
    pg = EmbeddedPostgres(EmbeddedPostgresConfig(data_dir=root / "pgdata", port=free_port()))
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


async def _select_one(pg: EmbeddedPostgres, password: str | None, *, unix: bool) -> int:
    host = str(pg.socket_dir) if unix else pg.config.host
    empty = pg.data_dir.parent / "empty.pgpass"
    empty.touch(mode=0o600)
    connection = await asyncpg.connect(
        host=host,
        port=pg.config.port,
        user=SUPERUSER,
        password=password,
        database="postgres",
        timeout=30,
        # Neither ~/.pgpass nor PGPASSWORD may stand in for the password under test.
        passfile=str(empty),
    )
    try:
        value: int = await connection.fetchval("SELECT 1")
        return value
    finally:
        await connection.close()


def _assert_only_the_password_opens(pg: EmbeddedPostgres) -> None:
    async def check() -> None:
        for unix in (False, True):
            for password in (None, "", "wrong-" + pg.password, pg.password[:-1]):
                with pytest.raises(REFUSED):
                    await _select_one(pg, password, unix=unix)
            assert await _select_one(pg, pg.password, unix=unix) == 1
        connection = await asyncpg.connect(pg.dsn(), timeout=30)  # the DSN carries it
        await connection.close()

    asyncio.run(check())


def test_a_connection_needs_the_password_over_tcp_and_socket(server: EmbeddedPostgres) -> None:
    _assert_only_the_password_opens(server)
    assert server.password_file == server.data_dir / PASSWORD_FILE
    kept = server.password_file.stat()
    assert stat.S_IMODE(kept.st_mode) == 0o600
    assert (kept.st_uid, kept.st_gid) == (
        server.data_dir.stat().st_uid,
        server.data_dir.stat().st_gid,
    )
    assert len(server.password) >= 32
    assert (server.data_dir / "pg_hba.conf").read_text() == HBA_CONF
    assert "trust" not in "".join(
        line for line in HBA_CONF.splitlines() if not line.startswith("#")
    )


def test_the_password_is_kept_across_restarts(server: EmbeddedPostgres) -> None:
    password, dsn = server.password, server.dsn("postgres")
    server.stop()
    server.start()
    again = EmbeddedPostgres(server.config)  # another manager, say the next `tally up`
    again.start()
    assert again.password == password and again.dsn("postgres") == dsn
    _assert_only_the_password_opens(again)


def test_a_loosened_pg_hba_conf_is_put_back_on_start(server: EmbeddedPostgres) -> None:
    (server.data_dir / "pg_hba.conf").write_text(TRUST_HBA)
    server.stop()
    server.start()
    _assert_only_the_password_opens(server)
    # On a running server too: start() rewrites it and makes the server reload it.
    (server.data_dir / "pg_hba.conf").write_text(TRUST_HBA)
    server.start()
    assert (server.data_dir / "pg_hba.conf").read_text() == HBA_CONF
    _assert_only_the_password_opens(server)


def test_a_data_directory_made_before_passwords_is_given_one(server: EmbeddedPostgres) -> None:
    # What a data directory of an earlier Tally looks like: trust, and no password file.
    old_password = server.password
    (server.data_dir / "pg_hba.conf").write_text(TRUST_HBA)
    server.password_file.unlink()
    server.start()  # running with trust: stopped, given a password, started again
    upgraded = EmbeddedPostgres(server.config)
    upgraded.start()
    assert upgraded.password != old_password
    assert stat.S_IMODE(upgraded.password_file.stat().st_mode) == 0o600
    _assert_only_the_password_opens(upgraded)

    async def old_one_refused() -> None:
        with pytest.raises(REFUSED):
            await _select_one(upgraded, old_password, unix=False)

    asyncio.run(old_one_refused())
