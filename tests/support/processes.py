"""Adversity helpers: real `tally node` processes (spawn, wait until serving, kill -9, stop)
and a way to hold a writer's commit open at its last statement.

Every wait is bounded; every process is killed by whoever spawned it (use `running_node` or call
`close()` in a `finally`). The node's stderr (its structured log) goes to a file so a failing
test can show it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shards.local import supervisor
from shards.local.embedded_pg import free_port
from shards.local.supervisor import TallyProcess
from tests.support import security
from tests.support.helpers import Client
from tests.support.paths import REPO_ROOT

SERVING_LINE = "tally: serving tally.v1.Ledger on"
INTERNAL_LINE = "tally: internal tally.v1.Shard on "
STOPPED_LINE = "tally: stopped"
START_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 20.0

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class NodeProcess:
    """One `python -m shards.cli node` (or gateway) child process on a known port."""

    child: TallyProcess
    port: int
    dsn: str

    @property
    def process(self) -> asyncio.subprocess.Process:
        return self.child.process

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def internal_target(self) -> str:
        """The internal listener it printed (a node of a cluster only)."""
        for line in self.stdout_lines:
            if line.startswith(INTERNAL_LINE):
                return line.removeprefix(INTERNAL_LINE).strip()
        raise AssertionError(f"no internal listener: {self.describe()}")

    @property
    def returncode(self) -> int | None:
        return self.child.returncode

    @property
    def log_path(self) -> Path:
        return self.child.log_path

    @property
    def stdout_lines(self) -> list[str]:
        return self.child.stdout_lines

    def log_tail(self) -> str:
        return self.child.log_tail()

    def describe(self) -> str:
        return (
            f"node pid {self.pid} on {self.target} (exit {self.returncode})\n"
            f"stdout: {self.stdout_lines}\nstderr tail:\n{self.log_tail()}"
        )

    async def kill(self) -> None:
        """SIGKILL: no drain, no lease release, sockets closed by the kernel."""
        await self.child.kill(EXIT_TIMEOUT_S)

    async def terminate(self, timeout_s: float = EXIT_TIMEOUT_S) -> int:
        """SIGTERM, then wait (bounded) for the graceful exit; returns the exit code."""
        self.child.send_signal(signal.SIGTERM)
        return await self.child.wait(timeout_s)

    async def wait_stdout_closed(self, timeout_s: float = EXIT_TIMEOUT_S) -> None:
        await self.child.wait_output_closed(timeout_s)

    async def close(self) -> None:
        """Kill if still running and reap the stdout reader. Safe to call twice."""
        await self.child.close()


async def spawn_node(
    dsn: str,
    log_dir: Path,
    name: str,
    port: int = 0,
    extra_args: tuple[str, ...] = (),
    timeout_s: float = START_TIMEOUT_S,
) -> NodeProcess:
    """Start a node and wait until it prints its serving line (it may still be a standby).
    Without a port, on a free one (another, should something take it before the node binds).
    Its DSN goes in its environment (TALLY_DSN), never on its command line."""
    log_path = log_dir / f"{name}.stderr.log"
    environment = supervisor.dsn_environment(dsn=dsn)

    def start(on: int) -> Awaitable[NodeProcess]:
        return spawn_cli(
            ["node", *extra_args], on, dsn, log_path, environment, timeout_s=timeout_s, append=False
        )

    if port:
        return await start(port)
    return await start_on_a_free_port(start, free_port())


async def spawn_cli(
    arguments: Sequence[str],
    port: int,
    dsn: str,
    log_path: Path,
    environment: Mapping[str, str] | None = None,
    timeout_s: float = START_TIMEOUT_S,
    append: bool = True,
) -> NodeProcess:
    """`python -m shards.cli ARGUMENTS --listen 127.0.0.1:PORT`, waited for until it prints its
    serving line. Its stderr (the structured log) goes to log_path (appended, or without append
    written afresh). DSNs belong in environment (supervisor.dsn_environment), never in
    ARGUMENTS (the supervisor refuses a secret there)."""
    try:
        child = await supervisor.start(
            [*arguments, "--listen", f"127.0.0.1:{port}", *security.server_flags()],
            log_path,
            name=log_path.stem,
            environment={"TALLY_LOG_LEVEL": "INFO", **(environment or {})},
            append=append,
            cwd=REPO_ROOT,
            serving_prefixes=(SERVING_LINE,),
            serving_timeout_s=timeout_s,
        )
    except supervisor.NotServing as error:
        failed = NodeProcess(error.child, port, dsn)
        raise AssertionError(f"node did not print {SERVING_LINE!r}: {failed.describe()}") from error
    node = NodeProcess(child, port, dsn)
    expected = f"{SERVING_LINE} 127.0.0.1:{port}"
    if expected not in node.stdout_lines:
        await node.close()
        raise AssertionError(f"expected {expected!r}: {node.describe()}")
    return node


async def start_on_a_free_port(
    start: Callable[[int], Awaitable[NodeProcess]], port: int
) -> NodeProcess:
    """start(port); should that port have been taken since it was picked free (by another
    process that picked the same one), start(another free one), up to three tries."""
    for attempt in range(3):
        try:
            return await start(port)
        except AssertionError as error:
            if "Address already in use" not in str(error) or attempt == 2:
                raise
            port = free_port()
    raise AssertionError("unreachable")


def proc_file(pid: int, name: str) -> bytes:
    """/proc/PID/NAME (cmdline, environ, ...): what the kernel shows of a process."""
    with open(f"/proc/{pid}/{name}", "rb") as file:
        return file.read()


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is pid (from /proc/*/stat), in pid order."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat_file:
                fields = stat_file.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if int(fields[1]) == pid:
            children.append(int(entry))
    return sorted(children)


async def health_status(target: str, timeout_s: float = 2.0) -> int | None:
    """The node's overall health status, or None when it does not answer."""
    async with security.channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = await stub.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return None
        status: int = response.status
        return status


async def wait_health(node: NodeProcess, wanted: int, timeout_s: float = START_TIMEOUT_S) -> float:
    """Poll health until it reports `wanted`; returns the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout_s
    last: int | None = None
    while time.monotonic() < deadline:
        if node.returncode is not None:
            raise AssertionError(f"node exited while waiting for health: {node.describe()}")
        last = await health_status(node.target)
        if last == wanted:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"health stayed {last} instead of {wanted} for {timeout_s}s: {node.describe()}"
    )


@contextlib.asynccontextmanager
async def running_node(
    dsn: str, log_dir: Path, name: str, port: int = 0, wait_writer: bool = True
) -> AsyncIterator[NodeProcess]:
    """A node process that is killed on exit whatever happens inside the block."""
    node = await spawn_node(dsn, log_dir, name, port)
    try:
        if wait_writer:
            await wait_health(node, SERVING)
        yield node
    finally:
        await node.close()


@contextlib.asynccontextmanager
async def connected(node: NodeProcess) -> AsyncIterator[Client]:
    """A test client on a fresh channel to the node."""
    async with security.channel(node.target) as channel:
        yield Client(channel)


async def fetch_rows(dsn: str, query: str, *arguments: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn, timeout=30.0)
    try:
        rows: list[asyncpg.Record] = await connection.fetch(query, *arguments, timeout=30.0)
        return rows
    finally:
        await connection.close(timeout=5.0)


class JournalBlocker:
    """Holds the next journal block's key in an open transaction. The writer's next commit then
    runs every statement but its last (the journal_blocks insert) and waits, COMMIT unsent."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.next_block = 0
        self._connection: asyncpg.Connection | None = None
        self._transaction: object = None

    async def __aenter__(self) -> JournalBlocker:
        self._connection = await asyncpg.connect(self.dsn, timeout=30.0)
        self.next_block = await self._connection.fetchval(
            "SELECT coalesce(max(sequence), 0) + 1 FROM journal_blocks", timeout=30.0
        )
        self._transaction = self._connection.transaction()
        await self._transaction.start()  # type: ignore[attr-defined]
        await self._connection.execute(
            "INSERT INTO journal_blocks VALUES ($1, '', '', 0, 0, 0, 0, 0, 0, 0, 0)",
            self.next_block,
            timeout=30.0,
        )
        return self

    async def release(self) -> None:
        """Roll back the placeholder: the waiting commit proceeds (if its client still lives)."""
        if self._transaction is not None:
            transaction, self._transaction = self._transaction, None
            await transaction.rollback()  # type: ignore[attr-defined]

    async def wait_until_a_commit_waits(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = await fetch_rows(
                self.dsn,
                """
                SELECT pid FROM pg_stat_activity
                WHERE datname = current_database() AND wait_event_type = 'Lock'
                  AND query LIKE 'INSERT INTO journal_blocks%'
                """,
            )
            if rows:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("no commit reached the journal_blocks insert")

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.release()
        finally:
            assert self._connection is not None
            await self._connection.close(timeout=5.0)
