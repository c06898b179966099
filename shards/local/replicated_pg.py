"""`tally up --replicas 1`: the embedded PostgreSQL as a primary and a synchronous streaming
standby (PostgreSQL's own replication), with failover.

Two servers, each with its own data directory and port: member 0 in DATA_DIR/pg (where a
single server lives, so that a data directory grows a standby without moving), member 1 in
DATA_DIR/pg-replica-1. Each runs with fixed options naming the other: `cluster_name` (which a
standby also sends as its application name), `synchronous_standby_names` = the other member,
and `primary_conninfo` = the other member (read only while it is a standby). So a commit is
acknowledged only once it is flushed on both servers' disks: "acknowledged" means on two
machines, and when the standby is down commits wait for it (PostgreSQL's synchronous
replication, strictly: nothing is ever acknowledged on one copy).

Which member is the primary is recorded in DATA_DIR/pg-primary, the one authority: a failover
writes the standby's index there *before* promoting it, so a crash in between leaves a record
that a later start completes (it promotes the recorded primary if it is still a standby); the
other member, if it is not a standby, is rebuilt as one from the primary (a fresh base backup:
what it held beyond the primary was never acknowledged).

Failover (`supervise`): when the primary's postmaster is gone and its standby runs, the standby
is promoted; the old primary's data directory is then rebuilt as the new primary's standby and
started, and commits, which waited for a standby meanwhile, go on. Clients find the primary
through a DSN naming both servers with `target_session_attrs=primary` (libpq's and
asyncpg's own rule: the server that is not in hot standby; not `read-write`, which asyncpg
decides from default_transaction_read_only alone, so that it takes a standby, and refuses every
server to a session that asks for read-only transactions, as the audit's do), so a node
reconnects to whichever member is the primary now; its writer
lease (an advisory lock and an epoch row, which the standby has as well) is taken again and
fences any writer that lost it. A standby that exits is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import asyncpg

from shards.local.embedded_pg import (
    PASSFILE,
    SUPERUSER,
    EmbeddedPostgres,
    EmbeddedPostgresConfig,
    EmbeddedPostgresError,
    StopMode,
    free_port,
    run_sync,
)

log = logging.getLogger("tally.up")

__all__ = [
    "MEMBER_DIRECTORIES",
    "PRIMARY_FILE",
    "LocalPostgres",
    "ReplicatedPostgres",
    "local_server",
    "member_name",
]

# Member i's data directory under tally up's DATA_DIR; the file naming the primary's index.
MEMBER_DIRECTORIES: Final = ("pg", "pg-replica-1")
PRIMARY_FILE: Final = "pg-primary"
POLL_S: Final = 0.5
# How long a started standby may take to stream synchronously before it is made afresh.
SYNC_WAIT_S: Final = 60.0
RETRY_DELAY_MAX_S: Final = 10.0


def member_name(index: int) -> str:
    """The member's cluster_name, its application name as a standby."""
    return f"tally_pg_{index}"


class ReplicatedPostgres:
    """A primary and its synchronous standby on this machine, as `tally up` runs them."""

    def __init__(
        self,
        data_dir: Path,
        ports: Sequence[int],
        host: str = "127.0.0.1",
        wal_archive: Path | None = None,
    ) -> None:
        if len(ports) != len(MEMBER_DIRECTORIES):
            raise ValueError(f"a replicated server has {len(MEMBER_DIRECTORIES)} members")
        self.data_dir = data_dir.resolve()
        self.host = host
        directories = [self.data_dir / name for name in MEMBER_DIRECTORIES]
        self.members = [
            EmbeddedPostgres(
                EmbeddedPostgresConfig(
                    data_dir=directory,
                    port=port,
                    host=host,
                    settings=_member_settings(index, directory, host, ports, wal_archive),
                    wal_archive=wal_archive,
                )
            )
            for index, (directory, port) in enumerate(zip(directories, ports, strict=True))
        ]

    # ------------------------------------------------------------------ roles

    @staticmethod
    def recorded_primary(data_dir: Path) -> int:
        """The primary's index recorded in data_dir (0 when none is: never failed over)."""
        try:
            text = (data_dir / PRIMARY_FILE).read_text().strip()
        except FileNotFoundError:
            return 0
        if text not in ("0", "1"):
            raise EmbeddedPostgresError(f"{data_dir / PRIMARY_FILE} holds {text!r}")
        return int(text)

    @property
    def primary_index(self) -> int:
        return self.recorded_primary(self.data_dir)

    @property
    def primary(self) -> EmbeddedPostgres:
        return self.members[self.primary_index]

    @property
    def standby(self) -> EmbeddedPostgres:
        return self.members[1 - self.primary_index]

    def _record_primary(self, index: int) -> None:
        path = self.data_dir / PRIMARY_FILE
        temporary = path.with_name(f".{PRIMARY_FILE}.tmp")
        with open(temporary, "w") as file:
            file.write(f"{index}\n")
            file.flush()
            os.fsync(file.fileno())
        temporary.rename(path)
        directory = os.open(self.data_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    # ------------------------------------------------------- the server's face

    @property
    def password(self) -> str:
        return self.primary.password

    def dsn(self, database: str = "postgres") -> str:
        """A URL DSN naming both members, for the primary: a secret (core.dsn)."""
        hosts = ",".join(f"{self._host_text}:{member.config.port}" for member in self.members)
        db = urllib.parse.quote(database, safe="")
        password = urllib.parse.quote(self.password, safe="")
        return f"postgresql://{SUPERUSER}:{password}@{hosts}/{db}?target_session_attrs=primary"

    @property
    def _host_text(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    async def create_database_async(self, name: str) -> None:
        await self.primary.create_database_async(name)

    def create_database(self, name: str) -> None:
        self.primary.create_database(name)

    def running_pid(self) -> int | None:
        """The primary's postmaster (None when it is not running)."""
        return self.primary.running_pid()

    def __repr__(self) -> str:
        ports = ", ".join(str(member.config.port) for member in self.members)
        return f"ReplicatedPostgres({self.data_dir}, ports {ports}, primary {self.primary_index})"

    # ------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Start the recorded primary (initialised on a first start; promoted if a failover
        stopped after recording it), make the other member its standby if it is not one
        (a base backup), start it, and wait until it replicates synchronously."""
        primary, standby = self.primary, self.standby
        if not (primary.data_dir / "PG_VERSION").exists() and (
            (self.data_dir / PRIMARY_FILE).exists() or (standby.data_dir / "PG_VERSION").exists()
        ):
            # Never a fresh, empty primary whose standby would then be rebuilt from it.
            raise EmbeddedPostgresError(
                f"the primary's data directory {primary.data_dir} is missing while "
                f"{self.data_dir} holds a replicated server: restore it, or make the standby "
                f"the primary by writing {1 - self.primary_index} into "
                f"{self.data_dir / PRIMARY_FILE}"
            )
        primary.start()
        if primary.is_standby():
            log.warning("%s is the recorded primary but still a standby: promoting it", primary)
            primary.promote()
        if not standby.is_standby():
            standby.stop("immediate")
            standby.clone_from(primary)
        standby.start()
        try:
            self.wait_synchronous()
        except EmbeddedPostgresError as error:
            # A standby left behind (say, while tally up ran without --replicas) may need WAL
            # the primary no longer keeps: made afresh from the primary, once.
            log.warning("%s; making it again from %s", error, primary)
            standby.stop("immediate")
            standby.clone_from(primary)
            standby.start()
            self.wait_synchronous()

    def stop(self, mode: StopMode = "fast", *, timeout_s: float = 120.0) -> None:
        """The primary first (it hands its last WAL to the standby as it shuts down), then
        the standby."""
        self.primary.stop(mode, timeout_s=timeout_s)
        self.standby.stop(mode, timeout_s=timeout_s)

    def wait_synchronous(self, timeout_s: float = SYNC_WAIT_S) -> None:
        """Until the primary reports the standby as its synchronous one."""
        name = member_name(self.members.index(self.standby))
        deadline = time.monotonic() + timeout_s
        while _sync_state(self.primary.dsn(), name) != "sync":
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"{self.standby} did not become {self.primary}'s synchronous standby "
                    f"within {timeout_s:g}s (see {self.standby.log_file})"
                )
            time.sleep(0.2)

    def fail_over(self) -> None:
        """The primary is lost: promote its standby (recorded first), then rebuild the old
        primary as the new one's standby and start it."""
        old, new = self.primary, self.standby
        old.stop("immediate")  # whatever is left of it never serves again
        self._record_primary(self.members.index(new))
        new.promote()
        old.clone_from(new)
        old.start()
        self.wait_synchronous()

    async def supervise(self, stopping: asyncio.Event) -> None:
        """Until stopping is set: fail over when the primary is gone, start the standby again
        when it exits; every step said on stdout."""
        delay = POLL_S
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            if stopping.is_set():
                return
            try:
                acted = await self._heal()
            except (EmbeddedPostgresError, OSError) as error:
                print(f"tally: PostgreSQL: {error}".splitlines()[0], flush=True)
                log.error("PostgreSQL supervision: %s", error)
                delay = min(max(delay * 2, 1.0), RETRY_DELAY_MAX_S)
                continue
            delay = POLL_S
            if acted:
                print(f"tally: PostgreSQL {acted}", flush=True)

    async def _heal(self) -> str:
        primary, standby = self.primary, self.standby
        if primary.running_pid() is None:
            if standby.running_pid() is None or not standby.is_standby():
                await asyncio.to_thread(self.start)
                return f"primary {primary} started again"
            print(
                f"tally: PostgreSQL primary {primary} exited; promoting its standby {standby}",
                flush=True,
            )
            await asyncio.to_thread(self.fail_over)
            return f"failover done: {standby} is the primary, {primary} its standby again"
        if standby.running_pid() is None:
            await asyncio.to_thread(standby.start)
            return f"standby {standby} started again"
        return ""


def _member_settings(
    index: int, directory: Path, host: str, ports: Sequence[int], wal_archive: Path | None
) -> dict[str, str]:
    peer = 1 - index
    passfile = directory.resolve() / PASSFILE
    conninfo = (
        f"host={host} port={ports[peer]} user={SUPERUSER} passfile={passfile} "
        f"application_name={member_name(index)}"
    )
    if any(character in str(passfile) for character in " '\\"):
        raise EmbeddedPostgresError(f"a replicated data directory needs a plain path: {passfile}")
    # With an archive both members archive (archive_mode=always: the standby too, every segment
    # it has received), into the same directory, where basic_archive accepts a segment that is
    # already there with the same content. With archive_mode=on only the primary would, and a
    # segment it had finished but not yet archived when it died would be archived by nobody:
    # the standby marks what it receives as done. The new primary archives its new timeline's
    # history file and segments after a failover.
    archive = {"archive_mode": "always"} if wal_archive is not None else {}
    return {
        "cluster_name": member_name(index),
        "synchronous_standby_names": member_name(peer),
        "primary_conninfo": conninfo,
        **archive,
    }


def _sync_state(dsn: str, application_name: str) -> str | None:
    async def query() -> str | None:
        try:
            connection = await asyncpg.connect(dsn, timeout=10.0)
        except (OSError, asyncpg.PostgresError):
            return None
        try:
            state: str | None = await connection.fetchval(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1",
                application_name,
            )
            return state
        finally:
            await connection.close(timeout=5.0)

    return run_sync(query)


LocalPostgres = EmbeddedPostgres | ReplicatedPostgres


def local_server(
    data_dir: Path, pg_port: int, replicas: int, wal_archive: Path | None = None
) -> LocalPostgres:
    """tally up's PostgreSQL in data_dir: one server in DATA_DIR/pg, or (replicas=1) that one
    and a synchronous standby; their ports chosen free once and kept (pg-port, and
    pg-replica-1-port), member 0's pinned by pg_port when given; archiving its WAL into
    wal_archive when given (tally up --wal-archive)."""
    if replicas not in (0, 1):
        raise ValueError(f"--replicas is 0 or 1, not {replicas}")
    ports = [_kept_port(data_dir / "pg-port", pg_port)]
    if replicas == 0:
        recorded = ReplicatedPostgres.recorded_primary(data_dir)
        if recorded != 0:
            raise EmbeddedPostgresError(
                f"{data_dir}'s primary PostgreSQL is {MEMBER_DIRECTORIES[recorded]} since a "
                "failover: run tally up with --replicas 1"
            )
        return EmbeddedPostgres(
            EmbeddedPostgresConfig(data_dir=data_dir / "pg", port=ports[0], wal_archive=wal_archive)
        )
    ports.append(_kept_port(data_dir / "pg-replica-1-port", 0))
    return ReplicatedPostgres(data_dir, ports, wal_archive=wal_archive)


def _kept_port(path: Path, pinned: int) -> int:
    port = pinned or (int(path.read_text()) if path.exists() else free_port())
    path.write_text(str(port))
    return port
