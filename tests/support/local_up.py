"""`tally up` as its user runs it (real processes): no TALLY_* variable, stopped with Ctrl-C
(SIGINT, which stops its children and PostgreSQL in order), and clients that present the
identity it keeps for its user, the admin of DATA_DIR/tls (the tests' own credentials,
tests/support/security.py, are of another CA, which `tally up` does not trust).

Its data goes in a scratch directory outside pytest's temporary root: another pytest session
starting meanwhile resets that root's permissions, and PostgreSQL, run as `tally-pg` when we
are root, could then no longer reach its data directory to stop (as in tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shards.local import supervisor
from shards.local.supervisor import TallyProcess
from shards.security import directory
from shards.security.credentials import ClientSecurity, aio_channel
from shards.security.flags import DEFAULT_DATA_DIR, LOCAL_DIRECTORY
from tests.support.paths import REPO_ROOT
from tests.support.processes import child_pids, proc_file

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
SERVING_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 60.0
CREDENTIALS_LINE = "tally: TLS and credentials in "
LINE_TIMEOUT_S = 30.0


def user_environment() -> dict[str, str]:
    """This process's environment without a TALLY_* variable: as a user's shell has it. And
    the checkout under test first on PYTHONPATH: run from another directory, `python -m
    shards.cli` would otherwise import whatever checkout the venv was installed from."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    path = [str(REPO_ROOT), *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep))]
    environment["PYTHONPATH"] = os.pathsep.join(path)
    return environment


@contextlib.contextmanager
def scratch_directory(prefix: str = "tally-test-up-") -> Iterator[Path]:
    """A fresh directory outside pytest's temporary root, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class LocalUp:
    """A running `tally up` and where it keeps its data."""

    child: TallyProcess
    data_dir: Path

    @property
    def lines(self) -> list[str]:
        return self.child.stdout_lines

    @property
    def target(self) -> str:
        """Its Ledger endpoint (the node's, or with --shards the gateway's)."""
        return self.child.endpoint.split()[0]

    @property
    def port(self) -> int:
        return int(self.target.rsplit(":", 1)[1])

    @property
    def credentials(self) -> Path:
        """DATA_DIR/tls: its CA, cluster certificate, admin identity and token key."""
        return self.data_dir / LOCAL_DIRECTORY

    def admin(self) -> ClientSecurity:
        return directory.client_security(self.credentials, directory.ADMIN)

    def channel(self, target: str = "") -> grpc.aio.Channel:
        """An aio channel to target (default: its Ledger endpoint) as its admin identity."""
        return aio_channel(target or self.target, self.admin())


async def stop(child: TallyProcess) -> int | None:
    """SIGINT (tally up stops its children and PostgreSQL); if that hangs, kill its group.
    Returns its exit code (None when it had to be killed)."""
    child.send_signal(signal.SIGINT)
    code: int | None = None
    try:
        code = await child.wait(STOP_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    await child.close()
    return code


@contextlib.asynccontextmanager
async def running_up(
    log_path: Path,
    arguments: Sequence[str] = (),
    *,
    data_dir: Path | None = None,
    cwd: Path = REPO_ROOT,
) -> AsyncIterator[LocalUp]:
    """`tally up ARGUMENTS --listen 127.0.0.1:0` in cwd, with --data-dir when data_dir is
    given (else its default, .tally in cwd, as `make up` runs it), yielded once it prints its
    serving line and stopped on the way out whatever happens inside the block."""
    where = ["--data-dir", str(data_dir)] if data_dir is not None else []
    child = await supervisor.start(
        ["up", *arguments, *where, "--listen", "127.0.0.1:0"],
        log_path,
        name="tally up",
        environment=user_environment(),
        inherit_environment=False,
        cwd=cwd,
        new_session=True,  # its own process group, so a hung stop can kill it all
        serving_prefixes=(supervisor.LEDGER_SERVING_PREFIX,),
        serving_timeout_s=START_TIMEOUT_S,
    )
    try:
        yield LocalUp(child, (data_dir or cwd / DEFAULT_DATA_DIR).resolve())
    finally:
        await stop(child)


async def wait_serving(up: LocalUp, timeout_s: float = SERVING_TIMEOUT_S) -> None:
    """A node serves (as a standby) before it holds the writer lease: wait for SERVING."""
    deadline = time.monotonic() + timeout_s
    async with up.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"tally up did not become SERVING: {up.child.describe()}")
            await asyncio.sleep(0.05)


async def run_as_user(cwd: Path, words: Sequence[str]) -> tuple[int, str]:
    """`tally WORDS` as a user of a `tally up` started in cwd runs it: there, with no TALLY_*
    variable, so it finds tally up's credentials by itself. (Exit code, stdout and stderr.)"""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shards.cli",
        *words,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=user_environment(),
        cwd=cwd,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=COMMAND_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, output.decode()


def child_of(up: LocalUp, *words: str) -> int:
    """The pid of the one tally child whose command line holds every one of words in order."""
    found = []
    for pid in child_pids(up.child.pid):
        command = proc_file(pid, "cmdline").split(b"\0")
        if b"shards.cli" not in command:
            continue
        wanted = [word.encode() for word in words]
        start = command.index(b"shards.cli") + 1
        if all(word in command[start:] for word in wanted):
            found.append(pid)
    assert len(found) == 1, (words, found, up.child.describe())
    return found[0]


async def kill_9(pid: int) -> None:
    """SIGKILL, returned once pid is gone (or a zombie)."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + LINE_TIMEOUT_S
    while running(pid):
        assert time.monotonic() < deadline, f"pid {pid} survived SIGKILL"
        await asyncio.sleep(0.05)


def running(pid: int) -> bool:
    """pid exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def wait_line(up: LocalUp, wanted: str, after: int = 0) -> str:
    """The first stdout line from index after on that starts with wanted."""
    deadline = time.monotonic() + LINE_TIMEOUT_S
    while True:
        for line in up.lines[after:]:
            if line.startswith(wanted):
                return line
        assert time.monotonic() < deadline, f"no {wanted!r}: {up.child.describe()}"
        await asyncio.sleep(0.05)
