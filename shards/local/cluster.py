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
import sys
from dataclasses import dataclass
from pathlib import Path

from core.store import control as control_store
from shards import control
from shards.local.embedded_pg import EmbeddedPostgres

log = logging.getLogger("tally.up")

READY_PREFIX = "tally: serving tally.v1.Ledger on "
AUDIT_READY_PREFIX = "tally: serving tally.v1.Audit on "
METRICS_PREFIX = "tally: metrics on "
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 5.0
DRAIN_CHUNK_BYTES = 65536


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    endpoint: str = ""
    metrics_url: str = ""
    drain: asyncio.Task[None] | None = None


async def _spawn(name: str, arguments: list[str], log_dir: Path) -> Child:
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shards.cli",
            *arguments,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )
    child = Child(name, process, log_path)
    try:
        await asyncio.wait_for(_read_until_ready(child), timeout=START_TIMEOUT_S)
    except BaseException:
        await _kill(child)
        raise
    child.drain = asyncio.create_task(_drain(child))
    return child


async def _read_until_ready(child: Child) -> None:
    """The child's stdout up to its serving line, noting its metrics URL on the way."""
    assert child.process.stdout is not None
    while True:
        line = await child.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{child.name} exited before serving (see its log)")
        text = line.decode().strip()
        if text.startswith(METRICS_PREFIX):
            child.metrics_url = text.removeprefix(METRICS_PREFIX)
        elif text.startswith((READY_PREFIX, AUDIT_READY_PREFIX)):
            child.endpoint = text.split(" on ", 1)[1]
            return


async def _drain(child: Child) -> None:
    """The rest of the child's stdout, appended to its log, until it exits."""
    assert child.process.stdout is not None
    while chunk := await child.process.stdout.read(DRAIN_CHUNK_BYTES):
        with contextlib.suppress(OSError), child.log_path.open("ab") as log_file:
            log_file.write(chunk)


async def _kill(child: Child) -> None:
    if child.process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.process.kill()
        await child.process.wait()


async def _stop(children: list[Child]) -> None:
    for child in reversed(children):  # the gateway first, then the nodes (they drain)
        try:
            if child.process.returncode is None:
                child.process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(child.process.wait(), timeout=STOP_TIMEOUT_S)
                except TimeoutError:
                    await _kill(child)
        finally:
            if child.drain is not None:
                await _finish_drain(child.drain)


async def _finish_drain(drain: asyncio.Task[None]) -> None:
    """The drain ends at the exited child's end of file; it is cancelled if that never comes."""
    try:
        await asyncio.wait_for(asyncio.shield(drain), timeout=DRAIN_TIMEOUT_S)
    except TimeoutError:
        drain.cancel()
    except asyncio.CancelledError:
        drain.cancel()
        raise
    with contextlib.suppress(asyncio.CancelledError):
        await drain


def _print_started(child: Child, line: str) -> None:
    print(line, flush=True)
    if child.metrics_url:
        print(f"tally: metrics of {child.name} on {child.metrics_url}", flush=True)


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
    children: list[Child] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        for shard_id in range(shard_count):
            database = f"tally_shard_{shard_id}"
            await server.create_database_async(database)
            arguments = ["node", "--dsn", server.dsn(database), "--listen", "127.0.0.1:0"]
            arguments += ["--control-dsn", control_dsn, "--shard-id", str(shard_id), *node_flags]
            children.append(await _spawn(f"node-{shard_id}", arguments, log_dir))
            _print_started(children[-1], f"tally: shard {shard_id} on {children[-1].endpoint}")
        gateway_arguments = ["gateway", "--control-dsn", control_dsn, "--listen", listen]
        gateway_arguments += gateway_flags or []
        children.append(await _spawn("gateway", gateway_arguments, log_dir))
        gateway = children[-1]
        if gateway.metrics_url:
            print(f"tally: metrics of gateway on {gateway.metrics_url}", flush=True)
        # The auditors' read-only service over every shard's database (stopped first).
        audit_arguments = ["audit-serve", "--listen", "127.0.0.1:0"]
        for shard_id in range(shard_count):
            audit_arguments += ["--dsn", server.dsn(f"tally_shard_{shard_id}")]
        audit_arguments += [f for f in gateway_flags or [] if f.startswith("--metrics-listen")]
        children.append(await _spawn("audit", audit_arguments, log_dir))
        audit_server = children[-1]
        if audit_server.metrics_url:
            print(f"tally: metrics of audit on {audit_server.metrics_url}", flush=True)
        print(f"tally: audit (tally.v1.Audit, read-only) on {audit_server.endpoint}", flush=True)
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
