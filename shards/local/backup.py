"""Backups of a shard's PostgreSQL and point-in-time restores, with PostgreSQL's own tools.

`take_backup`: a base backup with pg_basebackup (tar, gzip, a backup manifest, the WAL it needs
streamed along, so the backup is consistent on its own up to its end), made in a hidden staging
directory, checked with pg_verifybackup (every file against the manifest's checksums, and the
WAL from the backup's start to its end), described in tally-backup.json (start and end WAL
positions and times) and only then renamed to BACKUPS_DIR/<UTC start time>: a directory of that
name is a whole, verified backup. The password reaches pg_basebackup in a passfile (0600), never
on its command line.

`restore`: a backup unpacked into a new data directory, recovering with PostgreSQL's archive
recovery (recovery.signal, a restore_command copying segments from the WAL archive, which
basic_archive filled, recovery_target_time, promotion at the target), run as an EmbeddedPostgres
on a free port and waited for until it has been promoted. What it restored to is read from the
server: the commit time of the last transaction replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import re
import shlex
import shutil
import socket
import tarfile
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg

from core import dsn as dsn_text
from shards.local.embedded_pg import (
    PASSWORD_FILE,
    STANDBY_SIGNAL,
    EmbeddedPostgres,
    EmbeddedPostgresConfig,
    EmbeddedPostgresError,
    free_port,
    run_client_program,
    run_sync,
)
from shards.local.replicated_pg import MEMBER_DIRECTORIES, ReplicatedPostgres

__all__ = [
    "BACKUP_INFO",
    "BackupError",
    "BackupInfo",
    "RestoreRequest",
    "RestoreResult",
    "primary_of",
    "restore",
    "take_backup",
]

BACKUP_INFO: Final = "tally-backup.json"
RECOVERY_SIGNAL: Final = "recovery.signal"
BACKUP_TIMEOUT_S: Final = 6 * 3600.0
CONNECT_TIMEOUT_S: Final = 30.0
QUERY_TIMEOUT_S: Final = 30.0
POLL_S: Final = 0.2
# tally up's member i keeps its port in DATA_DIR/<PORT_FILES[i]> (shards/local/replicated_pg.py).
PORT_FILES: Final = ("pg-port", "pg-replica-1-port")
_NAME_FORMAT: Final = "%Y%m%dT%H%M%SZ"
# The base backup's own tar and its WAL's; any other tar is a tablespace's.
_BASE_TAR: Final = "base.tar.gz"
_WAL_TAR: Final = "pg_wal.tar.gz"
# Copied from the source's data directory but none of the restored server's business.
_NOT_RESTORED: Final = ("socket", "log", STANDBY_SIGNAL, "postmaster.pid", "postmaster.opts")


class BackupError(Exception):
    """A backup or restore that cannot be done as asked: the message says why and what to do."""


@dataclass(frozen=True)
class BackupInfo:
    """One verified base backup: where, from what, and the WAL positions and times it spans."""

    directory: Path
    source: str  # a redacted DSN or tally up's data directory
    start_time: datetime.datetime
    end_time: datetime.datetime  # the server's clock once the backup had ended
    start_lsn: str
    end_lsn: str
    timeline: int

    def to_json(self) -> str:
        fields = {
            "source": self.source,
            "start_time": self.start_time.isoformat(),
            "end_time": self.end_time.isoformat(),
            "start_lsn": self.start_lsn,
            "end_lsn": self.end_lsn,
            "timeline": self.timeline,
        }
        return json.dumps(fields, indent=2) + "\n"

    @classmethod
    def read(cls, directory: Path) -> BackupInfo:
        try:
            fields = json.loads((directory / BACKUP_INFO).read_text())
            return cls(
                directory=directory,
                source=str(fields["source"]),
                start_time=datetime.datetime.fromisoformat(fields["start_time"]),
                end_time=datetime.datetime.fromisoformat(fields["end_time"]),
                start_lsn=str(fields["start_lsn"]),
                end_lsn=str(fields["end_lsn"]),
                timeline=int(fields["timeline"]),
            )
        except FileNotFoundError:
            raise BackupError(
                f"{directory} is not a tally backup (no {BACKUP_INFO}): give a directory that "
                "tally backup made, or the directory of backups it made them in"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise BackupError(f"{directory / BACKUP_INFO} cannot be read: {error}") from None


# ------------------------------------------------------------------------------ the source


def primary_of(data_dir: Path) -> EmbeddedPostgres:
    """The primary PostgreSQL of the `tally up` in data_dir (member 0, or the member recorded
    in DATA_DIR/pg-primary after a failover), on its kept port, for its passfile."""
    data_dir = data_dir.resolve()
    try:
        index = ReplicatedPostgres.recorded_primary(data_dir)
        port = int((data_dir / PORT_FILES[index]).read_text())
    except (OSError, ValueError, EmbeddedPostgresError) as error:
        raise BackupError(
            f"{data_dir} is not the data directory of a tally up that has run: {error}"
        ) from None
    member = data_dir / MEMBER_DIRECTORIES[index]
    return EmbeddedPostgres(EmbeddedPostgresConfig(data_dir=member, port=port))


def _password_of(dsn: str) -> str:
    """The password a DSN holds ("" when none), as libpq would read it."""
    url = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://([^/]*)(.*)", dsn, re.DOTALL)
    if url is None:
        keyword = re.search(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S*)", dsn)
        if keyword is None:
            return ""
        value = keyword.group(1)
        return re.sub(r"\\(.)", r"\1", value[1:-1]) if value.startswith("'") else value
    authority, tail = url.groups()
    query = urllib.parse.parse_qs(tail.partition("?")[2])
    if query.get("password"):
        return str(query["password"][-1])
    credentials = authority.rpartition("@")[0]
    return urllib.parse.unquote(credentials.partition(":")[2])


def _with_passfile(dsn: str, passfile: Path) -> str:
    """The DSN without its secrets, reading its password from passfile instead."""
    redacted = dsn_text.redact(dsn)
    if "://" not in redacted:
        return f"{redacted} passfile='{passfile}'"
    joiner = "&" if "?" in redacted else "?"
    return f"{redacted}{joiner}passfile={urllib.parse.quote(str(passfile))}"


@contextlib.contextmanager
def _passfile_for(dsn: str) -> Iterator[Path]:
    """A private libpq password file holding the DSN's password, removed afterwards."""
    password = _password_of(dsn).replace("\\", "\\\\").replace(":", "\\:")
    with tempfile.TemporaryDirectory(prefix="tally-backup-") as directory:
        path = Path(directory) / "pgpass"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(f"*:*:*:*:{password}\n")
        yield path


# ------------------------------------------------------------------------------ tally backup


def take_backup(backups_dir: Path, *, dsn: str = "", data_dir: Path | None = None) -> BackupInfo:
    """A verified base backup of the server dsn names (a role with REPLICATION) or of tally up's
    primary in data_dir, into BACKUPS_DIR/<UTC start time>."""
    if bool(dsn) == (data_dir is not None):
        raise BackupError("give either --dsn (or TALLY_DSN) or --data-dir of a tally up")
    backups_dir = backups_dir.resolve()
    try:
        backups_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BackupError(f"cannot make the backups directory {backups_dir}: {error}") from None
    with contextlib.ExitStack() as stack:
        if data_dir is not None:
            server = primary_of(data_dir)
            try:
                clock_dsn = server.dsn()  # reads its password file: says so when it cannot
            except EmbeddedPostgresError as error:
                raise BackupError(str(error)) from None
            source, conninfo = str(data_dir.resolve()), server.conninfo()
        else:
            passfile = stack.enter_context(_passfile_for(dsn))
            source, conninfo, clock_dsn = dsn_text.redact(dsn), _with_passfile(dsn, passfile), dsn
        return _backup(backups_dir, source, conninfo, clock_dsn)
    raise AssertionError("unreachable")


def _backup(backups_dir: Path, source: str, conninfo: str, clock_dsn: str) -> BackupInfo:
    start_time = _server_clock(clock_dsn, source)
    name = start_time.astimezone(datetime.UTC).strftime(_NAME_FORMAT)
    final = backups_dir / name
    if final.exists():
        raise BackupError(f"{final} exists already: one backup a second, at most")
    staging = backups_dir / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _base_backup(staging, conninfo, source)
        _verify(staging)
        end_time = _server_clock(clock_dsn, source)
        timeline, start_lsn, end_lsn = _wal_range(staging)
        info = BackupInfo(final, source, start_time, end_time, start_lsn, end_lsn, timeline)
        (staging / BACKUP_INFO).write_text(info.to_json())
        _fsync_tree(staging)
        staging.rename(final)
        _fsync(backups_dir)
        return info
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _base_backup(staging: Path, conninfo: str, source: str) -> None:
    arguments = [
        "--pgdata", str(staging),
        "--dbname", conninfo,
        "--format=tar",
        "--compress=gzip",
        "--wal-method=stream",
        "--checkpoint=fast",
        "--manifest-checksums=SHA256",
        "--label=tally backup",
        "--no-password",  # a missing password is an error, never a prompt
    ]  # fmt: skip
    code, output = run_client_program("pg_basebackup", arguments, timeout_s=BACKUP_TIMEOUT_S)
    if code != 0:
        raise BackupError(f"pg_basebackup of {source} failed (exit {code}):\n{_scrub(output)}")


def _verify(staging: Path) -> None:
    """pg_verifybackup: every file against the manifest. It parses no WAL inside a tar, so the
    WAL is unpacked aside and parsed from the backup's start to its end with pg_waldump, as
    pg_verifybackup does for a plain backup."""
    arguments = ["--format=tar", "--no-parse-wal", "--quiet", str(staging)]
    code, output = run_client_program("pg_verifybackup", arguments, BACKUP_TIMEOUT_S)
    if code != 0:
        raise BackupError(f"pg_verifybackup found the backup broken (exit {code}):\n{output}")
    timeline, start_lsn, end_lsn = _wal_range(staging)
    with tempfile.TemporaryDirectory(prefix="tally-verify-") as wal:
        with tarfile.open(staging / _WAL_TAR) as archive:
            archive.extractall(wal, filter="data")
        arguments = [
            f"--path={wal}", f"--timeline={timeline}", f"--start={start_lsn}",
            f"--end={end_lsn}", "--quiet",
        ]  # fmt: skip
        code, output = run_client_program("pg_waldump", arguments, BACKUP_TIMEOUT_S)
    if code != 0:
        raise BackupError(f"the backup's WAL does not parse (pg_waldump exit {code}):\n{output}")


def _wal_range(backup: Path) -> tuple[int, str, str]:
    """(timeline, start LSN, end LSN) from the backup manifest."""
    manifest = json.loads((backup / "backup_manifest").read_text())
    ranges = manifest["WAL-Ranges"]
    return int(ranges[-1]["Timeline"]), str(ranges[0]["Start-LSN"]), str(ranges[-1]["End-LSN"])


def _server_clock(dsn: str, source: str) -> datetime.datetime:
    async def query() -> datetime.datetime:
        connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
        try:
            now: datetime.datetime = await connection.fetchval(
                "SELECT clock_timestamp()", timeout=QUERY_TIMEOUT_S
            )
            return now
        finally:
            await connection.close(timeout=5.0)

    try:
        return run_sync(query)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        raise BackupError(f"cannot connect to {source}: {_scrub(str(error))}") from None


def _scrub(text: str) -> str:
    return dsn_text.scrub(text)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.iterdir()):
        _fsync(path)
    _fsync(root)


# ----------------------------------------------------------------------------- tally restore


@dataclass(frozen=True)
class RestoreRequest:
    backup: Path  # one backup, or a directory of them (the latest that ends before `to`)
    to: datetime.datetime  # with a zone
    wal_archive: Path
    target_dir: Path
    port: int = 0  # 0: a free one
    inclusive: bool = True  # a transaction committed exactly at `to` is kept
    timeout_s: float = 600.0


@dataclass(frozen=True)
class RestoreResult:
    backup: BackupInfo
    server: EmbeddedPostgres
    last_transaction_time: datetime.datetime | None  # None: none was replayed after the backup
    timeline: int
    databases: list[str]


def restore(request: RestoreRequest) -> RestoreResult:
    """Recover a backup to request.to into a new data directory and leave it running, promoted."""
    if request.to.tzinfo is None:
        raise BackupError("the time needs a zone, e.g. 2026-12-03T09:15:00Z or +01:00")
    now = datetime.datetime.now(datetime.UTC)
    if request.to > now:
        raise BackupError(f"{request.to.isoformat()} is in the future (it is {now.isoformat()})")
    backup = _backup_for(request.backup.resolve(), request.to)
    target = request.target_dir.resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"{target} exists and is not empty: restore into a new directory")
    archive = request.wal_archive.resolve()
    if not archive.is_dir():
        raise BackupError(f"the WAL archive {archive} is not a directory")
    if request.port and not _port_free(request.port):
        raise BackupError(f"port {request.port} is in use on 127.0.0.1: give another --port")
    _unpack(backup.directory, target)
    config = EmbeddedPostgresConfig(
        data_dir=target,
        port=request.port or free_port(),
        start_timeout_s=request.timeout_s,
        settings=_recovery_settings(archive, request.to, request.inclusive),
    )
    server = EmbeddedPostgres(config)
    try:
        server.start()
        last, timeline, databases = _wait_promoted(server, request.timeout_s)
    except (EmbeddedPostgresError, BackupError) as error:
        with contextlib.suppress(EmbeddedPostgresError):
            server.stop("immediate")
        raise BackupError(_recovery_failure(server, error)) from None
    return RestoreResult(backup, server, last, timeline, databases)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _backup_for(path: Path, to: datetime.datetime) -> BackupInfo:
    """The backup at path, or the latest in the directory of backups at path that ended
    before `to`; refused when it ends after `to` (recovery only goes forward from a backup's
    end: PostgreSQL refuses a stop point before it)."""
    if not path.is_dir():
        raise BackupError(f"no backup at {path}")
    if (path / BACKUP_INFO).exists():
        chosen = BackupInfo.read(path)
    else:
        candidates = [BackupInfo.read(child) for child in _backup_children(path)]
        if not candidates:
            raise BackupError(f"{path} holds no tally backup (no {BACKUP_INFO})")
        before = [info for info in candidates if info.end_time < to]
        chosen = max(before or candidates, key=lambda info: info.end_time)
    if chosen.end_time >= to:
        raise BackupError(
            f"{to.isoformat()} is before the end of backup {chosen.directory} "
            f"({chosen.end_time.isoformat()}): a backup can only be recovered forward from its "
            "end (PostgreSQL refuses an earlier target); restore an older backup"
        )
    return chosen


def _backup_children(path: Path) -> list[Path]:
    return sorted(
        child
        for child in path.iterdir()
        if child.is_dir() and not child.name.startswith(".") and (child / BACKUP_INFO).exists()
    )


def _unpack(backup: Path, target: Path) -> None:
    """The base backup and its WAL into a staging directory beside target, marked for
    recovery, then renamed into place: target is either absent or whole."""
    tars = sorted(path.name for path in backup.glob("*.tar*"))
    if tars != sorted([_BASE_TAR, _WAL_TAR]):
        raise BackupError(
            f"{backup} holds {tars}, not {_BASE_TAR} and {_WAL_TAR} alone (tablespaces, or "
            "another format): restore it with PostgreSQL's own steps (deploy/README.md)"
        )
    staging = target.with_name(f".{target.name}.restore")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir(mode=0o700)
        with tarfile.open(backup / _BASE_TAR) as base:
            base.extractall(staging, filter="data")
        with tarfile.open(backup / _WAL_TAR) as wal:
            wal.extractall(staging / "pg_wal", filter="data")
        if not (staging / PASSWORD_FILE).exists():
            raise BackupError(
                f"the backup holds no {PASSWORD_FILE}, so it is not of a tally up's server: "
                "restore it with PostgreSQL's own steps (deploy/README.md)"
            )
        for name in _NOT_RESTORED:
            path = staging / name
            if path.is_dir():
                shutil.rmtree(path)
            path.unlink(missing_ok=True)
        (staging / RECOVERY_SIGNAL).touch(mode=0o600)
        staging.chmod(0o700)
        if target.exists():
            target.rmdir()  # empty (checked before)
        staging.rename(target)
    except (OSError, tarfile.TarError) as error:
        raise BackupError(f"cannot unpack {backup} into {target}: {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _recovery_settings(archive: Path, to: datetime.datetime, inclusive: bool) -> dict[str, str]:
    # basic_archive's counterpart is a plain copy (its documentation's restore_command); %f is a
    # segment or history file name and %p a path in pg_wal, neither needing quotes.
    return {
        "restore_command": f"cp {shlex.quote(str(archive))}/%f %p",
        "recovery_target_time": to.isoformat(sep=" "),
        "recovery_target_inclusive": "on" if inclusive else "off",
        "recovery_target_action": "promote",
        "recovery_target_timeline": "latest",
        # A restored copy must never add its new timeline to the archive it was restored from.
        "archive_mode": "off",
    }


def _wait_promoted(
    server: EmbeddedPostgres, timeout_s: float
) -> tuple[datetime.datetime | None, int, list[str]]:
    async def poll() -> tuple[datetime.datetime | None, int, list[str]]:
        deadline = time.monotonic() + timeout_s
        while True:
            connection = await asyncpg.connect(server.dsn(), timeout=CONNECT_TIMEOUT_S)
            try:
                if not await connection.fetchval(
                    "SELECT pg_is_in_recovery()", timeout=QUERY_TIMEOUT_S
                ):
                    return await _restored_state(connection)
            finally:
                await connection.close(timeout=5.0)
            if time.monotonic() > deadline:
                raise BackupError(f"recovery did not reach its target within {timeout_s:g}s")
            if server.running_pid() is None:
                raise BackupError("PostgreSQL stopped during recovery")
            await asyncio.sleep(POLL_S)

    try:
        return run_sync(poll)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        raise BackupError(f"the restored server did not answer: {error}") from None


async def _restored_state(
    connection: Any,
) -> tuple[datetime.datetime | None, int, list[str]]:
    last = await connection.fetchval(
        "SELECT pg_last_xact_replay_timestamp()", timeout=QUERY_TIMEOUT_S
    )
    timeline = await connection.fetchval(
        "SELECT timeline_id FROM pg_control_checkpoint()", timeout=QUERY_TIMEOUT_S
    )
    rows = await connection.fetch(
        "SELECT datname FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres' "
        "ORDER BY datname",
        timeout=QUERY_TIMEOUT_S,
    )
    return last, int(timeline), [row["datname"] for row in rows]


def _recovery_failure(server: EmbeddedPostgres, error: Exception) -> str:
    """Why the recovery failed, from the server's log in PostgreSQL's words."""
    try:
        log = server.log_file.read_text(errors="replace")
    except OSError:
        log = ""
    reasons = [line for line in log.splitlines() if "FATAL" in line or "PANIC" in line]
    if any("Permission denied" in line for line in log.splitlines()):
        return (
            "the restored server's user cannot read the WAL archive (cp: Permission denied): "
            "make it readable by the user PostgreSQL runs as (tally-pg as root), remove "
            f"{server.data_dir} and restore again (log: {server.log_file})"
        )
    if any("before configured recovery target was reached" in line for line in reasons):
        return (
            "the WAL archive ends before the time asked for: PostgreSQL replayed every "
            "archived segment without reaching it (is the WAL holding it archived yet? "
            f"SELECT pg_switch_wal() on the source archives the current segment). Log: "
            f"{server.log_file} (the data directory {server.data_dir} is left for a look)"
        )
    said = "\n".join(reasons[-5:]) or str(error).splitlines()[0]
    return f"recovery failed:\n{said}\n(log: {server.log_file}; data: {server.data_dir})"
