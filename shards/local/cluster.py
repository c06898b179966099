"""`tally up --shards N`: one embedded PostgreSQL, a database per shard plus the control
database, N shard node processes, one gateway process and the audit server, in the foreground,
every one of them supervised; and the supervision of the embedded PostgreSQL that `tally up`
with one shard (its node in this process) uses too.

Each child prints its metrics URL (when metrics are on) and then its serving line; this process
prints, before its own serving line, `tally: metrics of NAME on URL` for every child (node-0,
node-1, ..., gateway). After start, a child's stdout is still read (into its log), so a full
pipe can never block it.

Supervision (shards.local.supervisor.keep_running): a child that exits, or is killed, is
started again with backoff (0.5 s doubling to 10 s, from 0.5 s again after 30 s of serving)
instead of stopping the cluster, on the ports it had (its client listener, its internal one and
its metrics: what this process printed stays true, and gateways find a node where the control
database says it is); the embedded PostgreSQL, which pg_ctl detaches from this process, is
watched through its postmaster.pid and started again the same way (the nodes retry their
connections meanwhile). Every exit and restart is a line on stdout. SIGINT or SIGTERM stops
everything: the audit server, the gateway, then the nodes (which drain), then PostgreSQL (the
caller's). The children die with this process (SIGTERM from the kernel), so a kill -9 of
`tally up` leaves no node holding a shard's writer lease for the next `tally up` to wait on.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Protocol

from core.store import control as control_store
from shards import control
from shards.local import supervisor
from shards.local.embedded_pg import EmbeddedPostgres
from shards.local.replicated_pg import LocalPostgres, ReplicatedPostgres
from shards.local.supervisor import LEDGER_SERVING_PREFIX as READY_PREFIX
from shards.local.supervisor import RestartPolicy, TallyProcess

log = logging.getLogger("tally.up")

METRICS_PREFIX = "tally: metrics on "
INTERNAL_PREFIX = "tally: internal tally.v1.Shard on "
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
RESTART_POLICY: Final = RestartPolicy(first_delay_s=0.5, delay_max_s=10.0, reset_after_s=30.0)
# How often the embedded PostgreSQL's postmaster is looked at (two small file reads).
POSTGRES_POLL_S: Final = 0.5


class Child:
    """One supervised child of `tally up`: what it runs, its process now, and how to start it
    again on the ports its first run bound (argparse takes the last of a repeated flag, so the
    pins follow the arguments). serving_prefixes: the line that says it is up (a server's
    serving line; the relay's, which listens on nothing, is its first); pin_ports: False for
    a child that binds no port (the relay), whose line names no endpoint; new_session: a
    terminal's Ctrl-C reaches only tally up, which stops the child in its turn."""

    def __init__(
        self,
        name: str,
        arguments: list[str],
        log_dir: Path,
        environment: dict[str, str],
        serving_prefixes: Sequence[str] = supervisor.SERVING_PREFIXES,
        pin_ports: bool = True,
        new_session: bool = False,
    ) -> None:
        self.name = name
        self._arguments = arguments
        self._pins: list[str] = []
        self._log_dir = log_dir
        self._environment = environment
        self._serving_prefixes = tuple(serving_prefixes)
        self._pin_ports = pin_ports
        self._new_session = new_session
        self._process: TallyProcess | None = None

    @property
    def arguments(self) -> list[str]:
        """What it is started with now: its arguments, then its pins once it has run."""
        return [*self._arguments, *self._pins]

    @property
    def process(self) -> TallyProcess:
        if self._process is None:
            raise RuntimeError(f"{self.name} has not been started")
        return self._process

    @property
    def started(self) -> bool:
        return self._process is not None

    async def start(self) -> TallyProcess:
        """Start it, returned once it serves (NotServing if it exits or hangs first)."""
        log_path = self._log_dir / f"{self.name}.log"
        self._process = await supervisor.start(
            self.arguments,
            log_path,
            name=self.name,
            environment=self._environment,
            stdout_copy=log_path,
            serving_prefixes=self._serving_prefixes,
            serving_timeout_s=START_TIMEOUT_S,
            new_session=self._new_session,
            die_with_parent=True,
        )
        if self._pin_ports and not self._pins:  # its later runs bind the same ports again
            self._pins = _pins(self._process)
        return self._process

    async def wait_exit(self) -> str:
        code = await self.process.process.wait()
        await self.process.close()  # its stdout read to the end
        return f"code {code}"

    async def restart(self) -> str:
        child = await self.start()
        return f"pid {child.pid}"


def _pins(child: TallyProcess) -> list[str]:
    """The flags that start child again on the ports it bound: its listener, its internal
    listener and its metrics (where it printed them)."""
    pins = [f"--listen={child.endpoint}"] if child.endpoint else []
    for line in child.stdout_lines:
        if line.startswith(INTERNAL_PREFIX):
            pins.append(f"--internal-listen={line.removeprefix(INTERNAL_PREFIX).strip()}")
    if metrics := _metrics_url(child):
        pins.append(f"--metrics-listen={urllib.parse.urlsplit(metrics).netloc}")
    return pins


class Companion(Protocol):
    """What runs beside the cluster on its gateway's endpoint (shards.local.stream)."""

    async def start(self, target: str) -> None:
        """Start it, reading the ledger at target; on failure what it started is stopped."""
        ...

    async def supervise(self, stopping: asyncio.Event) -> None:
        """Keep it running until stopping is set."""
        ...

    async def stop(self) -> None: ...


class SupervisedPostgres:
    """The embedded PostgreSQL as keep_running sees it. pg_ctl detaches the server from this
    process, so its exit is seen in its postmaster.pid (a live postmaster, or not)."""

    name = "PostgreSQL"

    def __init__(self, server: EmbeddedPostgres) -> None:
        self.server = server

    async def wait_exit(self) -> str:
        pid = self.server.running_pid()
        if pid is None:
            return "not running"
        while True:
            await asyncio.sleep(POSTGRES_POLL_S)
            if self.server.running_pid() != pid:
                return f"pid {pid}"

    async def restart(self) -> str:
        # start() clears what a kill -9 leaves (postmaster.pid, socket locks, shared memory
        # still held by dying backends) and waits until the server accepts connections.
        await asyncio.to_thread(self.server.start)
        return f"pid {self.server.running_pid()}"


async def keep_postgres_running(server: LocalPostgres, stopping: asyncio.Event) -> None:
    """Restart the embedded PostgreSQL whenever it exits, until stopping is set; a replicated
    one fails over to its standby instead (shards.local.replicated_pg)."""
    if isinstance(server, ReplicatedPostgres):
        await server.supervise(stopping)
        return
    await supervisor.keep_running(SupervisedPostgres(server), stopping, RESTART_POLICY)


def _metrics_url(child: TallyProcess) -> str:
    """The metrics URL the child printed before its serving line ("" when metrics are off)."""
    for line in child.stdout_lines:
        if line.startswith(METRICS_PREFIX):
            return line.removeprefix(METRICS_PREFIX).strip()
    return ""


async def _stop(children: list[Child]) -> None:
    for child in reversed(children):  # the audit server, the gateway, then the nodes (drain)
        if child.started:
            await child.process.stop(STOP_TIMEOUT_S, signal.SIGTERM)


def _print_started(child: TallyProcess, line: str) -> None:
    print(line, flush=True)
    if metrics_url := _metrics_url(child):
        print(f"tally: metrics of {child.name} on {metrics_url}", flush=True)


def _audit_child(
    server: LocalPostgres,
    shard_count: int,
    node_flags: list[str],
    gateway_flags: list[str],
    log_dir: Path,
) -> Child:
    """`tally audit-serve` over every shard's database, its metrics and TLS as the gateway's,
    checking signatures with the public half of the nodes' signing key."""
    arguments = ["audit-serve", "--listen", "127.0.0.1:0"]
    shared = ("--metrics-listen", "--tls-", "--token-key", "--revoked")
    arguments += [flag for flag in gateway_flags if flag.startswith(shared)]
    arguments += [
        f"--verify-key={flag.removeprefix('--signing-key=')}.pub"
        for flag in node_flags
        if flag.startswith("--signing-key=")
    ]
    shard_dsns = [server.dsn(f"tally_shard_{shard_id}") for shard_id in range(shard_count)]
    databases = supervisor.dsn_environment(audit_dsns=shard_dsns)
    return Child("audit", arguments, log_dir, databases)


async def _initialise_control(server: LocalPostgres, shard_count: int, data_dir: Path) -> str:
    """The control database with its slot map (made on first start); its DSN."""
    control_dsn = server.dsn("tally_control")
    await server.create_database_async("tally_control")
    connection = await control.connect(control_dsn)
    try:
        slot_map = await control_store.initialise(connection, shard_count)
    finally:
        await connection.close(timeout=5.0)
    refusal = slot_map.shrink_refusal(shard_count)
    if refusal:
        raise RuntimeError(f"{data_dir}: {refusal}")
    slotless = slot_map.slotless(shard_count)
    if slotless:  # shards added to a cluster made with fewer: they serve once slots move there
        print(
            f"tally: shards {list(slotless)} own no slots yet: `tally slots rebalance` spreads "
            "the slots onto them while the cluster serves",
            flush=True,
        )
    return control_dsn


async def _start_children(
    server: LocalPostgres,
    shard_count: int,
    listen: str,
    log_dir: Path,
    node_flags: list[str],
    gateway_flags: list[str],
    children: list[Child],
) -> str:
    """Every child started in order (the nodes, the gateway, the audit server), each appended
    to children as soon as it exists so that the caller stops what was started; the gateway's
    endpoint."""
    control_dsn = server.dsn("tally_control")
    for shard_id in range(shard_count):
        database = f"tally_shard_{shard_id}"
        await server.create_database_async(database)
        arguments = ["node", "--listen", "127.0.0.1:0", "--shard-id", str(shard_id)]
        databases = supervisor.dsn_environment(dsn=server.dsn(database), control_dsn=control_dsn)
        children.append(Child(f"node-{shard_id}", [*arguments, *node_flags], log_dir, databases))
        node = await children[-1].start()
        _print_started(node, f"tally: shard {shard_id} on {node.endpoint}")
    gateway_arguments = ["gateway", "--listen", listen, *gateway_flags]
    control_only = supervisor.dsn_environment(control_dsn=control_dsn)
    children.append(Child("gateway", gateway_arguments, log_dir, control_only))
    gateway = await children[-1].start()
    if metrics_url := _metrics_url(gateway):
        print(f"tally: metrics of gateway on {metrics_url}", flush=True)
    # The auditors' read-only service over every shard's database (stopped first).
    children.append(_audit_child(server, shard_count, node_flags, gateway_flags, log_dir))
    audit_server = await children[-1].start()
    if metrics_url := _metrics_url(audit_server):
        print(f"tally: metrics of audit on {metrics_url}", flush=True)
    print(f"tally: audit (tally.v1.Audit, read-only) on {audit_server.endpoint}", flush=True)
    return gateway.endpoint


async def run_cluster(
    server: LocalPostgres,
    shard_count: int,
    listen: str,
    data_dir: Path,
    node_flags: list[str],
    gateway_flags: list[str] | None = None,
    companion: Companion | None = None,
) -> int:
    """Start the cluster on server (started by the caller, who stops it after), then the
    companion (`tally up --stream`'s broker, relay and monitor) on the gateway's endpoint;
    supervise every child, the server and the companion until SIGINT or SIGTERM, then stop the
    companion and the children."""
    await _initialise_control(server, shard_count, data_dir)
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        # A child that does not start at first fails the whole start (a wrong flag, a port in
        # use): that is said at once rather than retried for ever.
        gateway_endpoint = await _start_children(
            server, shard_count, listen, log_dir, node_flags, gateway_flags or [], children
        )
        if companion is not None:
            await companion.start(gateway_endpoint)
        print(f"{READY_PREFIX}{gateway_endpoint} (gateway, {shard_count} shards)", flush=True)
        async with asyncio.TaskGroup() as group:
            group.create_task(keep_postgres_running(server, stop))
            for child in children:
                group.create_task(supervisor.keep_running(child, stop, RESTART_POLICY))
            if companion is not None:
                group.create_task(companion.supervise(stop))
    finally:
        stop.set()  # whatever ended the supervision ends all of it
        if companion is not None:
            await companion.stop()  # first: it reads the gateway's stream
        await _stop(children)
    return 0
