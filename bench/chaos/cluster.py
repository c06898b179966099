"""The campaign's cluster: real processes it owns and can hurt, all on loopback.

- PostgreSQL: an embedded server per shard (so one shard's PostgreSQL can be killed or
  restarted alone) and one for the control database;
- `tally node` per shard, its internal listener behind a fault proxy (`--advertise` names the
  proxy, so the endpoint in the control database, which gateways and peer nodes dial, is the
  proxy's), its wall clock read from a file of its own (TALLY_FAULT_CLOCK_FILE);
- `tally gateway` x gateway_count, each with a clock file too;
- a credentials directory (`shards.security.directory`): every process serves TLS and every
  client presents the admin identity.

Each process is a `Member`: started through the one supervisor (`shards.local.supervisor`),
restarted on the ports it had. The campaign's own watchdog (`Cluster.keep_running`) restarts any
member that exited while no fault holds it down (a fenced node exits on purpose, for instance).

Disk full: a shard database's `journal_blocks` gets a trigger (`chaos_disk_full`) that, while
its flag row is set, refuses every insert with SQLSTATE 53100 (`disk_full`), the error
PostgreSQL gives a client when a write finds the disk full. Why so: no root (a small tablespace
needs a mount, a quota needs root), nothing in the product changed, one shard hit exactly,
reads go on as on a full disk, and clearing the flag is the operator freeing space.
(RLIMIT_FSIZE on the backends was tried on paper: WAL segments are 16 MiB files written in
place, so a limit low enough to hit a small shard's tables makes WAL writes PANIC instead.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bench.chaos.proxy import FaultProxy
from core.slots import SlotMap
from core.store import control as control_store
from core.store import shard as shard_store
from shards import control
from shards.local import supervisor
from shards.local.embedded_pg import EmbeddedPostgres, EmbeddedPostgresConfig, free_port
from shards.local.supervisor import LEDGER_SERVING_PREFIX, TallyProcess
from shards.security import directory

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
WATCHDOG_PERIOD_S = 0.5
SQL_TIMEOUT_S = 10.0
PG_SETTINGS = {"max_connections": "120"}
DATABASE = "tally"
CONTROL_DATABASE = "tally_control"

DISK_FULL_SQL = """
CREATE TABLE IF NOT EXISTS chaos_disk_full (full_now boolean NOT NULL);
CREATE OR REPLACE FUNCTION chaos_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM chaos_disk_full WHERE full_now) THEN
        RAISE EXCEPTION 'could not extend file: No space left on device (chaos)'
            USING ERRCODE = 'disk_full';
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS chaos_disk_full ON journal_blocks;
CREATE TRIGGER chaos_disk_full BEFORE INSERT ON journal_blocks
    FOR EACH STATEMENT EXECUTE FUNCTION chaos_disk_full();
"""


@dataclass(frozen=True)
class ClusterConfig:
    root: Path
    shard_count: int = 3
    gateway_count: int = 2
    prepare_deadline_s: int = 5


@dataclass
class Member:
    """One `tally` process of the cluster, startable again on the same ports."""

    name: str  # node-0, gateway-1: the proxy's source names
    arguments: list[str]
    environment: dict[str, str]
    log_path: Path
    process: TallyProcess | None = None
    held_down: bool = False  # a fault keeps it stopped or paused: the watchdog leaves it
    start_count: int = 0

    @property
    def role(self) -> str:
        return self.name.split("-")[0]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running and self.process else None

    async def start(self) -> None:
        if self.process is not None:
            await self.process.close()
        self.start_count += 1
        self.process = await supervisor.start(
            self.arguments,
            self.log_path,
            name=self.name,
            environment=self.environment,
            cwd=Path.cwd(),
            serving_prefixes=(LEDGER_SERVING_PREFIX,),
            serving_timeout_s=START_TIMEOUT_S,
            die_with_parent=True,
        )

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)  # a paused one dies too
            await self.process.kill()

    def signal(self, signum: int) -> None:
        if self.process is not None:
            self.process.send_signal(signum)

    async def close(self) -> None:
        if self.process is not None:
            self.signal(signal.SIGCONT)
            await self.process.close()


@dataclass
class Postgres:
    """One embedded PostgreSQL of the cluster (a shard's, or the control database's)."""

    name: str
    server: EmbeddedPostgres
    held_down: bool = False

    def dsn(self, database: str) -> str:
        return self.server.dsn(database)

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)

    async def stop(self) -> None:
        await asyncio.to_thread(self.server.stop, "fast", timeout_s=STOP_TIMEOUT_S)

    async def kill(self) -> None:
        """kill -9 of the postmaster: its backends exit as they notice, as after a crash."""
        pid = await asyncio.to_thread(self.server.running_pid)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while time.monotonic() < deadline:
                if not await asyncio.to_thread(self.server.is_running):
                    return
                await asyncio.sleep(0.05)

    async def running(self) -> bool:
        return await asyncio.to_thread(self.server.is_running)


@dataclass
class Cluster:
    config: ClusterConfig
    tls_root: Path
    postgres: list[Postgres]  # shard k's is postgres[k]; the control one is last
    slot_map: SlotMap
    nodes: list[Member] = field(default_factory=list)
    gateways: list[Member] = field(default_factory=list)
    proxies: list[FaultProxy] = field(default_factory=list)  # proxies[k]: node k's internal
    clock_files: dict[str, Path] = field(default_factory=dict)  # member name -> its clock
    events: list[str] = field(default_factory=list)  # the watchdog's restarts

    @property
    def shard_dsns(self) -> list[str]:
        return [self.postgres[k].dsn(DATABASE) for k in range(self.config.shard_count)]

    @property
    def control_postgres(self) -> Postgres:
        return self.postgres[-1]

    @property
    def control_dsn(self) -> str:
        return self.control_postgres.dsn(CONTROL_DATABASE)

    @property
    def gateway_targets(self) -> list[str]:
        return [_listen_of(g) for g in self.gateways]

    def members(self) -> list[Member]:
        return [*self.nodes, *self.gateways]

    def member(self, name: str) -> Member:
        (found,) = [m for m in self.members() if m.name == name]
        return found

    def shard_of(self, account_id: str) -> int:
        return self.slot_map.shard_of_account(account_id)

    def sources(self) -> dict[int, str]:
        """pid -> member name, of every running member: the proxies' sources."""
        return {m.pid: m.name for m in self.members() if m.pid is not None}

    def set_clock_offset(self, name: str, offset_ns: int) -> None:
        """The member's wall clock is the system's plus offset_ns from now (within 0.1 s)."""
        path = self.clock_files[name]
        temporary = path.with_suffix(".tmp")
        temporary.write_text(str(offset_ns), encoding="ascii")
        temporary.replace(path)

    async def set_disk_full(self, shard_id: int, full: bool) -> None:
        connection = await asyncpg.connect(self.shard_dsns[shard_id], timeout=SQL_TIMEOUT_S)
        try:
            await connection.execute("DELETE FROM chaos_disk_full", timeout=SQL_TIMEOUT_S)
            await connection.execute(
                "INSERT INTO chaos_disk_full VALUES ($1)", full, timeout=SQL_TIMEOUT_S
            )
        finally:
            await connection.close(timeout=SQL_TIMEOUT_S)

    async def keep_running(self, stopping: asyncio.Event) -> None:
        """Restart every member and PostgreSQL that is down while no fault holds it down."""
        while not stopping.is_set():
            for server in self.postgres:
                if not server.held_down and not await server.running():
                    self.events.append(f"{time.monotonic():.1f} watchdog: {server.name} started")
                    with contextlib.suppress(Exception):
                        await server.start()
            for member in self.members():
                if not member.held_down and not member.running:
                    self.events.append(f"{time.monotonic():.1f} watchdog: {member.name} started")
                    with contextlib.suppress(Exception):
                        await member.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=WATCHDOG_PERIOD_S)

    async def close(self) -> None:
        for member in self.members():
            with contextlib.suppress(Exception):
                await member.close()
        for proxy in self.proxies:
            await proxy.close()
        for server in self.postgres:
            with contextlib.suppress(Exception):
                await server.stop()


def _listen_of(member: Member) -> str:
    return member.arguments[member.arguments.index("--listen") + 1]


async def _start_postgres(root: Path, name: str, databases: Sequence[str]) -> Postgres:
    config = EmbeddedPostgresConfig(
        data_dir=root / f"pg-{name}", port=free_port(), settings=PG_SETTINGS
    )
    server = Postgres(name, EmbeddedPostgres(config))
    await server.start()
    for database in databases:
        await server.server.create_database_async(database)
    return server


async def _prepare_shard_database(dsn: str) -> None:
    """The shard's schema now (so the disk-full trigger has its table), then the trigger."""
    connection = await asyncpg.connect(dsn, timeout=SQL_TIMEOUT_S)
    try:
        await shard_store.migrate(connection)
        await connection.execute(DISK_FULL_SQL, timeout=SQL_TIMEOUT_S)
    finally:
        await connection.close(timeout=SQL_TIMEOUT_S)


def _node(cluster: Cluster, shard_id: int, proxy_port: int, log_dir: Path) -> Member:
    name = f"node-{shard_id}"
    arguments = [
        "node", "--shard-id", str(shard_id),
        "--listen", f"127.0.0.1:{free_port()}",
        "--durability=single-server",  # each shard's PostgreSQL is one server, without standby
        "--internal-listen", f"127.0.0.1:{cluster.proxies[shard_id].target_port}",
        "--advertise", f"127.0.0.1:{proxy_port}",
        *directory.server_flags(cluster.tls_root),
    ]  # fmt: skip
    environment = {
        **supervisor.dsn_environment(
            dsn=cluster.shard_dsns[shard_id], control_dsn=cluster.control_dsn
        ),
        **_common_environment(cluster, name),
    }
    return Member(name, arguments, environment, log_dir / f"{name}.log")


def _gateway(cluster: Cluster, number: int, log_dir: Path) -> Member:
    name = f"gateway-{number}"
    arguments = [
        "gateway", "--listen", f"127.0.0.1:{free_port()}",
        *directory.server_flags(cluster.tls_root),
    ]  # fmt: skip
    environment = {
        **supervisor.dsn_environment(control_dsn=cluster.control_dsn),
        **_common_environment(cluster, name),
    }
    return Member(name, arguments, environment, log_dir / f"{name}.log")


def _common_environment(cluster: Cluster, name: str) -> dict[str, str]:
    clock = cluster.config.root / "clocks" / name
    clock.write_text("0", encoding="ascii")
    cluster.clock_files[name] = clock
    return {
        "TALLY_FAULT_CLOCK_FILE": str(clock),
        "TALLY_PREPARE_DEADLINE_S": str(cluster.config.prepare_deadline_s),
        "TALLY_LOG_LEVEL": "INFO",
    }


async def start_cluster(config: ClusterConfig) -> Cluster:
    """Every PostgreSQL, database, proxy and process of the cluster, serving; on a failure
    everything started is stopped again."""
    root = config.root
    for folder in ("logs", "clocks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    tls_root = root / "tls"
    if not tls_root.exists():
        directory.init(tls_root)
    servers = await asyncio.gather(
        *(_start_postgres(root, f"shard{k}", [DATABASE]) for k in range(config.shard_count)),
        _start_postgres(root, "control", [CONTROL_DATABASE]),
    )
    connection = await control.connect(servers[-1].dsn(CONTROL_DATABASE))
    try:
        slot_map = await control_store.initialise(connection, config.shard_count)
    finally:
        await connection.close(timeout=SQL_TIMEOUT_S)
    cluster = Cluster(config, tls_root, list(servers), slot_map)
    try:
        await _start_processes(cluster)
    except BaseException:
        await cluster.close()
        raise
    return cluster


async def _start_processes(cluster: Cluster) -> None:
    config = cluster.config
    log_dir = config.root / "logs"
    for dsn in cluster.shard_dsns:
        await _prepare_shard_database(dsn)
    sources: Callable[[], dict[int, str]] = cluster.sources
    for shard_id in range(config.shard_count):
        proxy = FaultProxy(f"proxy-{shard_id}", free_port(), sources)
        cluster.proxies.append(proxy)
        await proxy.start()
    cluster.nodes = [
        _node(cluster, k, cluster.proxies[k].listen_port, log_dir)
        for k in range(config.shard_count)
    ]
    cluster.gateways = [_gateway(cluster, g, log_dir) for g in range(config.gateway_count)]
    await asyncio.gather(*(node.start() for node in cluster.nodes))
    await asyncio.gather(*(gateway.start() for gateway in cluster.gateways))
