"""The shard node under test, run as its own process exactly as an operator runs it.

A separate process keeps its CPU apart from the load generator's and gives it its own GIL.
It gets its own session, so a Ctrl-C in the terminal reaches only the bench, which then stops
the node in order (SIGINT: refuse new calls, drain the writer queue, release the lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from shards.local.embedded_pg import free_port

SERVING_LINE: Final = "tally: serving tally.v1.Ledger on "
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 60.0
REPO_ROOT: Final = Path(__file__).resolve().parent.parent


@dataclass(slots=True)
class NodeProcess:
    process: subprocess.Popen[bytes]
    target: str
    stdout_path: Path
    stderr_path: Path
    command: list[str]

    @property
    def pid(self) -> int:
        return self.process.pid


def node_command(
    dsn: str, listen: str, extra_args: list[str], profile_path: Path | None
) -> list[str]:
    """`python -m shards.cli node ...`, optionally under cProfile (written when the node exits;
    SIGINT makes it exit normally, so the profile is complete)."""
    runner = [sys.executable]
    if profile_path is not None:
        runner += ["-m", "cProfile", "-o", str(profile_path)]
    return [*runner, "-m", "shards.cli", "node", "--dsn", dsn, "--listen", listen, *extra_args]


async def start_node(
    dsn: str, log_dir: Path, extra_args: list[str], profile_path: Path | None
) -> NodeProcess:
    listen = f"127.0.0.1:{free_port()}"
    command = node_command(dsn, listen, extra_args, profile_path)
    stdout_path, stderr_path = log_dir / "node.stdout", log_dir / "node.log"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = _spawn(command, stdout, stderr)
    node = NodeProcess(process, listen, stdout_path, stderr_path, command)
    try:
        node.target = await _wait_serving_line(node, START_TIMEOUT_S)
    except BaseException:
        await stop_node(node)
        raise
    return node


def _spawn(command: list[str], stdout: IO[bytes], stderr: IO[bytes]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        cwd=REPO_ROOT,
        env=env,
        start_new_session=True,
    )


async def _wait_serving_line(node: NodeProcess, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in node.stdout_path.read_text(errors="replace").splitlines():
            if line.startswith(SERVING_LINE):
                return line[len(SERVING_LINE) :].strip()
        if node.process.poll() is not None:
            raise RuntimeError(
                f"the node exited with {node.process.returncode} before listening; "
                f"see {node.stderr_path}:\n{_tail(node.stderr_path)}"
            )
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the node did not listen within {timeout_s:g}s; see {node.stderr_path}")


async def stop_node(node: NodeProcess, timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGINT (drain), then SIGKILL if it has not exited within timeout_s; returns the exit code."""
    process = node.process
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(process.wait, timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 10.0)
    return process.returncode


def _tail(path: Path, line_count: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-line_count:])
    except OSError:
        return ""
