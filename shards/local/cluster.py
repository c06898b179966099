"""`tally up --shards N`: one embedded PostgreSQL, a database per shard plus the control
database, N shard node processes and one gateway process, in the foreground.

Each child prints its metrics URL (when metrics are on) and then its serving line; this process
prints, before its own serving line, `tally: metrics of NAME on URL` for every child (node-0,
node-1, ..., gateway). After start, a child's stdout is still read (into its log), so a full
pipe can never block it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from core.store import control as control_store
from shards import control
from shards.local import supervisor
from shards.local.embedded_pg import EmbeddedPostgres
from shards.local.supervisor import LEDGER_SERVING_PREFIX as READY_PREFIX
from shards.local.supervisor import TallyProcess

log = logging.getLogger("tally.up")

METRICS_PREFIX = "tally: metrics on "
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


async def _spawn(
    name: str, arguments: list[str], log_dir: Path, environment: dict[str, str]
) -> TallyProcess:
    """A child whose stdout, once it serves, is appended to its log as well. Its DSNs are in
    environment (they carry the embedded server's password: never on a command line)."""
    log_path = log_dir / f"{name}.log"
    return await supervisor.start(
        arguments,
        log_path,
        name=name,
        environment=environment,
        stdout_copy=log_path,
        serving_timeout_s=START_TIMEOUT_S,
        die_with_parent=True,  # a kill -9 of tally up leaves no node holding its lease
    )


def _metrics_url(child: TallyProcess) -> str:
    """The metrics URL the child printed before its serving line ("" when metrics are off)."""
    for line in child.stdout_lines:
        if line.startswith(METRICS_PREFIX):
            return line.removeprefix(METRICS_PREFIX).strip()
    return ""


async def _stop(children: list[TallyProcess]) -> None:
    for child in reversed(children):  # the gateway first, then the nodes (they drain)
        await child.stop(STOP_TIMEOUT_S, signal.SIGTERM)


def _print_started(child: TallyProcess, line: str) -> None:
    print(line, flush=True)
    if metrics_url := _metrics_url(child):
        print(f"tally: metrics of {child.name} on {metrics_url}", flush=True)


async def _spawn_audit(
    server: EmbeddedPostgres,
    shard_count: int,
    node_flags: list[str],
    gateway_flags: list[str],
    log_dir: Path,
) -> TallyProcess:
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
    audit_server = await _spawn("audit", arguments, log_dir, databases)
    if metrics_url := _metrics_url(audit_server):
        print(f"tally: metrics of audit on {metrics_url}", flush=True)
    print(f"tally: audit (tally.v1.Audit, read-only) on {audit_server.endpoint}", flush=True)
    return audit_server


async def run_cluster(
    server: EmbeddedPostgres,
    shard_count: int,
    listen: str,
    data_dir: Path,
    node_flags: list[str],
    gateway_flags: list[str] | None = None,
) -> int:
    control_dsn = server.dsn("tally_control")
    await server.create_database_async("tally_control")
    connection = await control.connect(control_dsn)
    try:
        slot_map = await control_store.initialise(connection, shard_count)
    finally:
        await connection.close(timeout=5.0)
    if len(slot_map.shard_ids) != shard_count:
        raise RuntimeError(
            f"{data_dir} holds a cluster of {len(slot_map.shard_ids)} shards, not {shard_count}"
        )
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    children: list[TallyProcess] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        for shard_id in range(shard_count):
            database = f"tally_shard_{shard_id}"
            await server.create_database_async(database)
            arguments = ["node", "--listen", "127.0.0.1:0", "--shard-id", str(shard_id)]
            databases = supervisor.dsn_environment(
                dsn=server.dsn(database), control_dsn=control_dsn
            )
            children.append(
                await _spawn(f"node-{shard_id}", [*arguments, *node_flags], log_dir, databases)
            )
            _print_started(children[-1], f"tally: shard {shard_id} on {children[-1].endpoint}")
        gateway_arguments = ["gateway", "--listen", listen, *(gateway_flags or [])]
        control_only = supervisor.dsn_environment(control_dsn=control_dsn)
        children.append(await _spawn("gateway", gateway_arguments, log_dir, control_only))
        gateway = children[-1]
        if metrics_url := _metrics_url(gateway):
            print(f"tally: metrics of gateway on {metrics_url}", flush=True)
        # The auditors' read-only service over every shard's database (stopped first).
        children.append(
            await _spawn_audit(server, shard_count, node_flags, gateway_flags or [], log_dir)
        )
        print(f"{READY_PREFIX}{gateway.endpoint} (gateway, {shard_count} shards)", flush=True)
        waiters = [asyncio.ensure_future(c.process.wait()) for c in children]
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([stopping, *waiters], return_when=asyncio.FIRST_COMPLETED)
        for task in [stopping, *waiters]:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if stopping not in done:
            exited = [c.name for c in children if c.process.returncode is not None]
            print(f"tally: {', '.join(exited)} exited; stopping the cluster", flush=True)
    finally:
        await _stop(children)
    return 0
