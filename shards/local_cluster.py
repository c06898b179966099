"""`tally up --shards N`: one embedded PostgreSQL, a database per shard plus the control
database, N shard node processes and one gateway process, in the foreground."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from core.embedded_pg import EmbeddedPostgres
from shards import control

log = logging.getLogger("tally.up")

READY_PREFIX = "tally: serving tally.v1.Ledger on "
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    endpoint: str = ""


async def _spawn(name: str, arguments: list[str], log_dir: Path) -> Child:
    log_file = (log_dir / f"{name}.log").open("ab")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shards.cli",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=log_file,
    )
    log_file.close()
    child = Child(name, process)
    child.endpoint = await asyncio.wait_for(_ready_line(child), timeout=START_TIMEOUT_S)
    return child


async def _ready_line(child: Child) -> str:
    assert child.process.stdout is not None
    while True:
        line = await child.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{child.name} exited before serving (see its log)")
        text = line.decode().strip()
        if text.startswith(READY_PREFIX):
            return text.removeprefix(READY_PREFIX)


async def _stop(children: list[Child]) -> None:
    for child in reversed(children):  # the gateway first, then the nodes (they drain)
        if child.process.returncode is None:
            child.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.process.wait(), timeout=STOP_TIMEOUT_S)
            except TimeoutError:
                child.process.kill()
                await child.process.wait()


async def run_cluster(
    server: EmbeddedPostgres, shard_count: int, listen: str, data_dir: Path, node_flags: list[str]
) -> int:
    control_dsn = server.dsn("tally_control")
    await server.create_database_async("tally_control")
    connection = await control.connect(control_dsn)
    try:
        slot_map = await control.initialise(connection, shard_count)
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
            print(f"tally: shard {shard_id} on {children[-1].endpoint}", flush=True)
        gateway_arguments = ["gateway", "--control-dsn", control_dsn, "--listen", listen]
        children.append(await _spawn("gateway", gateway_arguments, log_dir))
        print(f"{READY_PREFIX}{children[-1].endpoint} (gateway, {shard_count} shards)", flush=True)
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
