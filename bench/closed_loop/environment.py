"""What the benchmark runs against: its own embedded PostgreSQL and node, or --target.

Its own node serves TLS with the credentials directory the bench makes next to PostgreSQL's
data (BASE/tls, kept with --data-dir), and the bench's client presents that directory's admin
identity; a --target is called with the client credentials of the command line
(bench/common/credentials.py). Everything started here is stopped here, also on error or
Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg
import psutil

from bench.closed_loop.options import Options
from bench.common import cpu
from bench.common.paths import REPO_ROOT
from bench.common.tally_client import TallyClient
from shards.local import supervisor
from shards.local.embedded_pg import EmbeddedPostgres, EmbeddedPostgresConfig, free_port
from shards.local.supervisor import LEDGER_SERVING_PREFIX, TallyProcess
from shards.security import directory

TALLY_DATABASE: Final = "tally"
CREDENTIALS_DIRECTORY: Final = "tls"
ROWLOCK_DATABASE: Final = "rowlock"
CEILING_DATABASE: Final = "ceiling"
SERVING_TIMEOUT_S: Final = 60.0
NODE_START_TIMEOUT_S: Final = 60.0
NODE_STOP_TIMEOUT_S: Final = 60.0


@dataclass(slots=True)
class Environment:
    tally: TallyClient
    tally_dsn: str | None
    rowlock_dsn: str | None
    roles: dict[str, cpu.Sampler]
    node: TallyProcess | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    ceiling_dsn: str | None = None

    @property
    def node_pid(self) -> int | None:
        """The node's pid when it runs on this machine (ours, or found listening on --target)."""
        if self.node is not None:
            return self.node.pid
        pid: int | None = self.notes.get("node_pid")
        return pid


@contextlib.asynccontextmanager
async def local_environment(options: Options) -> AsyncIterator[Environment]:
    """Embedded PostgreSQL with fresh `tally`, `rowlock` and `ceiling` databases, and a node on
    `tally`.
    Everything started here is stopped here, also on error or Ctrl-C."""
    with contextlib.ExitStack() as stack:
        if options.data_dir is None:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tally-bench-")))
        else:
            base = options.data_dir
        server = EmbeddedPostgres(EmbeddedPostgresConfig(data_dir=base / "pg", port=free_port()))
        await asyncio.to_thread(server.start)
        try:
            databases = (TALLY_DATABASE, ROWLOCK_DATABASE, CEILING_DATABASE)
            await recreate_databases(server.dsn(), databases)
            credentials = base / CREDENTIALS_DIRECTORY
            await asyncio.to_thread(directory.init, credentials)
            async with _local_node(options, server, credentials) as environment:
                yield environment
        finally:
            await asyncio.to_thread(server.stop)


async def start_node(
    dsn: str,
    log_dir: Path,
    extra_args: list[str],
    profile_path: Path | None,
    credentials: Path,
) -> TallyProcess:
    """The shard node under test, its own process exactly as an operator runs it (its own CPU
    apart from the load generator's, its own GIL; TLS with the server credentials of the
    directory `credentials`), optionally under cProfile (written when the node exits). It gets
    its own session, so a Ctrl-C in the terminal reaches only the bench, which then stops the
    node in order."""
    profiler = ["-m", "cProfile", "-o", str(profile_path)] if profile_path is not None else []
    tls_flags = directory.server_flags(credentials)  # paths only: the keys stay in their files
    return await supervisor.start(
        # The bench's embedded PostgreSQL is one server, said so.
        [
            "node",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--durability=single-server",
            *tls_flags,
            *extra_args,
        ],
        log_dir / "node.log",
        name="node",
        environment=supervisor.dsn_environment(dsn=dsn),  # never on the command line
        interpreter_arguments=profiler,
        append=False,
        stdout_copy=log_dir / "node.stdout",
        cwd=REPO_ROOT,
        new_session=True,
        serving_prefixes=(LEDGER_SERVING_PREFIX,),
        serving_timeout_s=NODE_START_TIMEOUT_S,
    )


@contextlib.asynccontextmanager
async def _local_node(
    options: Options, server: EmbeddedPostgres, credentials: Path
) -> AsyncIterator[Environment]:
    profile_path = options.out_dir / "node.prof" if options.node_profile == "cprofile" else None
    node = await start_node(
        server.dsn(TALLY_DATABASE),
        options.out_dir,
        list(options.node_args),
        profile_path,
        credentials,
    )
    environment: Environment | None = None
    try:
        client = TallyClient(node.endpoint, directory.client_security(credentials))
        try:
            await client.wait_serving(SERVING_TIMEOUT_S)
            roles = {
                "node": cpu.single_process(node.pid),
                "postgres": cpu.process_tree(_postmaster_pid(server)),
                "bench": cpu.bench_process(),
            }
            environment = Environment(
                client,
                server.dsn(TALLY_DATABASE),
                server.dsn(ROWLOCK_DATABASE),
                roles,
                node,
                ceiling_dsn=server.dsn(CEILING_DATABASE),
            )
            environment.notes["command"] = " ".join(node.command)
            yield environment
        finally:
            await client.close()
    finally:
        # SIGINT: refuse new calls, drain the writer queue, release the lease; and under
        # cProfile exit normally, so the profile is complete.
        exit_code = await node.stop(NODE_STOP_TIMEOUT_S, signal.SIGINT)
        if environment is not None:
            environment.notes["exit_code"] = exit_code
        if exit_code != 0:
            print(f"bench: the node exited with {exit_code}; see {node.log_path}")


def _postmaster_pid(server: EmbeddedPostgres) -> int:
    return int((server.data_dir / "postmaster.pid").read_text().split()[0])


@contextlib.asynccontextmanager
async def target_environment(options: Options) -> AsyncIterator[Environment]:
    """A node someone else runs. Its CPU is measured if it listens on this machine; PostgreSQL's
    is the sum over every local process named `postgres` (approximate on a shared host)."""
    if options.target is None or options.credentials is None:
        raise ValueError("target_environment needs --target and its client credentials")
    client = TallyClient(options.target, options.credentials.security())
    try:
        await client.wait_serving(SERVING_TIMEOUT_S)
        node_pid = listening_pid(options.target)
        roles = {
            "node": cpu.single_process(node_pid),
            "postgres": cpu.processes_named("postgres"),
            "bench": cpu.bench_process(),
        }
        environment = Environment(
            client, options.tally_dsn, options.rowlock_dsn, roles, ceiling_dsn=options.ceiling_dsn
        )
        environment.notes["target"] = options.target
        environment.notes["node_pid"] = node_pid
        yield environment
    finally:
        await client.close()


def listening_pid(target: str) -> int | None:
    port = target.rpartition(":")[2]
    with contextlib.suppress(psutil.Error, OSError):
        for connection in psutil.net_connections(kind="tcp"):
            if connection.status == psutil.CONN_LISTEN and connection.laddr.port == int(port):
                pid: int | None = connection.pid
                return pid
    return None


async def recreate_databases(admin_dsn: str, names: tuple[str, ...]) -> None:
    """Fresh databases every run, so a reused --data-dir never carries an earlier run's rows."""
    connection = await asyncpg.connect(admin_dsn, timeout=30.0)
    try:
        for name in names:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', timeout=60.0)
            await connection.execute(f'CREATE DATABASE "{name}"', timeout=60.0)
    finally:
        await connection.close(timeout=10.0)


async def checkpoint(dsn: str) -> None:
    """Start every window right after a checkpoint (of the whole server), so no run pays for
    another's dirty pages, and every run pays the same full-page writes after it."""
    connection = await asyncpg.connect(dsn, timeout=30.0)
    try:
        await connection.execute("CHECKPOINT", timeout=120.0)
    finally:
        await connection.close(timeout=10.0)
