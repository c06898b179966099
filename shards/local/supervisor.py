"""The one supervisor of `tally` child processes: start `python -m shards.cli ARGUMENTS`, wait
for its serving line, read its stdout for as long as it lives, stop it (a signal, then SIGKILL
after a bound) or kill it.

`tally up --shards N` (shards/local/cluster.py), the benchmarks and the tests start their
processes through `start`. Every wait is bounded. The child's stderr (its structured log) goes to
a file; its stdout is a pipe read to its end (kept line by line, and copied to a file when
asked), so a full pipe can never block the child.

DSNs reach a child through its environment (`dsn_environment`: TALLY_DSN, TALLY_CONTROL_DSN,
TALLY_AUDIT_DSNS, which `tally node`, `gateway` and `audit-serve` read), never its command line:
any user can read every process's argv (`ps`, /proc/PID/cmdline), while /proc/PID/environ is
readable only by the process's own user. `start` refuses an argument holding a DSN secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from core import dsn as dsn_text

LEDGER_SERVING_PREFIX: Final = "tally: serving tally.v1.Ledger on "
AUDIT_SERVING_PREFIX: Final = "tally: serving tally.v1.Audit on "
SERVING_PREFIXES: Final = (LEDGER_SERVING_PREFIX, AUDIT_SERVING_PREFIX)
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 30.0
KILL_TIMEOUT_S: Final = 10.0
# After the child exits its stdout ends at once, unless a process it started (PostgreSQL under
# `tally up`) inherited the pipe: the reader is then given up after this long.
OUTPUT_END_TIMEOUT_S: Final = 5.0
READ_CHUNK_BYTES: Final = 65536
LOG_TAIL_BYTES: Final = 4000
DSN_ENV: Final = "TALLY_DSN"
CONTROL_DSN_ENV: Final = "TALLY_CONTROL_DSN"
AUDIT_DSNS_ENV: Final = "TALLY_AUDIT_DSNS"


def dsn_environment(
    *, dsn: str = "", control_dsn: str = "", audit_dsns: Sequence[str] = ()
) -> dict[str, str]:
    """The environment that gives a `tally` child its databases: the node's --dsn, the
    node's and gateway's --control-dsn, audit-serve's --dsn list (comma-separated, in shard
    order). Only what is given is set."""
    environment = {}
    if dsn:
        environment[DSN_ENV] = dsn
    if control_dsn:
        environment[CONTROL_DSN_ENV] = control_dsn
    if audit_dsns:
        if any("," in one for one in audit_dsns):
            raise ValueError(f"{AUDIT_DSNS_ENV} is comma-separated: a DSN may not hold a comma")
        environment[AUDIT_DSNS_ENV] = ",".join(audit_dsns)
    return environment


def _refuse_secrets_in(command: Sequence[str]) -> None:
    for argument in command:
        if dsn_text.scrub(argument) != argument:
            raise ValueError(
                f"a DSN secret in a child's command line ({dsn_text.scrub(argument)!r}) would "
                "show in every process list: pass it in the environment (dsn_environment)"
            )


class NotServing(RuntimeError):
    """The child exited, or did not print its serving line in time (it has been killed)."""

    def __init__(self, message: str, child: TallyProcess) -> None:
        super().__init__(message)
        self.child = child


class TallyProcess:
    """One running `python -m shards.cli ...` child and what it printed on stdout."""

    def __init__(
        self,
        name: str,
        command: list[str],
        process: asyncio.subprocess.Process,
        log_path: Path,
        stdout_copy: Path | None,
        serving_prefixes: Sequence[str],
    ) -> None:
        self.name = name
        self.command = command
        self.process = process
        self.log_path = log_path
        self.stdout_lines: list[str] = []
        self.serving_line: str | None = None
        self._stdout_copy = stdout_copy
        self._serving_prefixes = tuple(serving_prefixes)
        self._serving = asyncio.Event()
        self._reader = asyncio.create_task(self._read_stdout())

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def endpoint(self) -> str:
        """What the serving line names after its prefix (HOST:PORT), or "" before it."""
        if self.serving_line is None:
            return ""
        for prefix in self._serving_prefixes:
            if self.serving_line.startswith(prefix):
                return self.serving_line.removeprefix(prefix).strip()
        return ""

    def log_tail(self, byte_count: int = LOG_TAIL_BYTES) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_bytes()[-byte_count:].decode(errors="replace")
        return ""

    def describe(self) -> str:
        return (
            f"{self.name} (pid {self.pid}, exit {self.returncode}); stdout: {self.stdout_lines}\n"
            f"log {self.log_path} ends:\n{self.log_tail()}"
        )

    async def _read_stdout(self) -> None:
        """Every line of stdout until its end, in chunks (a line may be longer than a
        StreamReader's line limit)."""
        stream = self.process.stdout
        assert stream is not None
        pending = b""
        while chunk := await stream.read(READ_CHUNK_BYTES):
            self._copy(chunk)
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._note(line.decode(errors="replace"))
        if pending:
            self._note(pending.decode(errors="replace"))

    def _copy(self, chunk: bytes) -> None:
        if self._stdout_copy is not None:
            with contextlib.suppress(OSError), self._stdout_copy.open("ab") as copy:
                copy.write(chunk)

    def _note(self, line: str) -> None:
        self.stdout_lines.append(line)
        if self.serving_line is None and line.startswith(self._serving_prefixes):
            self.serving_line = line
            self._serving.set()

    async def wait_serving(self, timeout_s: float) -> str:
        """Its serving line, once printed; NotServing if it exits or times out first (the
        child is then left as it is: the caller closes it)."""
        serving = asyncio.ensure_future(self._serving.wait())
        exited = asyncio.ensure_future(self.process.wait())
        try:
            await asyncio.wait(
                {serving, exited}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if exited.done() and not serving.done():
                # It may have printed the line just before exiting: read stdout to its end.
                await self.wait_output_closed(OUTPUT_END_TIMEOUT_S, give_up=True)
        finally:
            for future in (serving, exited):
                if not future.done():
                    future.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await future
        if self.serving_line is None:
            state = "exited" if self.returncode is not None else f"not serving after {timeout_s}s"
            raise NotServing(f"{self.name} {state}: {self.describe()}", self)
        return self.serving_line

    def send_signal(self, signum: int) -> None:
        """The signal, unless the child has exited already."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    async def wait(self, timeout_s: float) -> int:
        """Its exit code, once it exits; TimeoutError after timeout_s."""
        return await asyncio.wait_for(self.process.wait(), timeout=timeout_s)

    async def kill(self, timeout_s: float = KILL_TIMEOUT_S) -> int:
        """SIGKILL: no drain, no lease release, sockets closed by the kernel."""
        self.send_signal(signal.SIGKILL)
        return await self.wait(timeout_s)

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S, signum: int = signal.SIGTERM) -> int:
        """Graceful stop: signum (SIGTERM, or SIGINT), then SIGKILL if the child has not exited
        within timeout_s; its stdout is read to the end. Returns the exit code."""
        try:
            self.send_signal(signum)
            try:
                return await self.wait(timeout_s)
            except TimeoutError:
                return await self.kill()
        finally:
            await self.wait_output_closed(OUTPUT_END_TIMEOUT_S, give_up=True)

    async def wait_output_closed(self, timeout_s: float, give_up: bool = False) -> None:
        """Until stdout has been read to its end; after timeout_s TimeoutError, or with give_up
        the reader is cancelled instead (a process the child started may hold the pipe)."""
        if self._reader.done():
            if not self._reader.cancelled():
                self._reader.result()  # a failure of the reader itself surfaces here
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout=timeout_s)
        except TimeoutError:
            if not give_up:
                raise
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def close(self) -> None:
        """Kill if still running and end the stdout reader. Safe to call twice."""
        try:
            await self.kill()
        finally:
            await self.wait_output_closed(OUTPUT_END_TIMEOUT_S, give_up=True)


async def start(
    arguments: Sequence[str],
    log_path: Path,
    *,
    name: str = "tally",
    environment: Mapping[str, str] | None = None,
    inherit_environment: bool = True,
    interpreter_arguments: Sequence[str] = (),
    append: bool = True,
    stdout_copy: Path | None = None,
    cwd: Path | None = None,
    new_session: bool = False,
    serving_prefixes: Sequence[str] = SERVING_PREFIXES,
    serving_timeout_s: float = START_TIMEOUT_S,
) -> TallyProcess:
    """`python [INTERPRETER_ARGUMENTS] -m shards.cli ARGUMENTS`, returned once it prints a line
    starting with one of serving_prefixes. Its stderr goes to log_path (appended, or without
    append written afresh, as is stdout_copy); environment is added to this process's (or,
    without inherit_environment, is all of the child's).
    new_session: its own session, so a Ctrl-C in the terminal reaches only this process,
    which then stops it in order. On any failure to start it is killed, and NotServing (or the
    error) raised. An argument holding a DSN secret is refused (ValueError): pass DSNs in
    environment (dsn_environment)."""
    _refuse_secrets_in([*interpreter_arguments, *arguments])
    if not append:
        for path in {log_path, *([stdout_copy] if stdout_copy else [])}:
            path.write_bytes(b"")
    command = [sys.executable, *interpreter_arguments, "-m", "shards.cli", *arguments]
    inherited = os.environ if inherit_environment else {}
    env = {**inherited, "PYTHONUNBUFFERED": "1", **(environment or {})}
    with log_path.open("ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            cwd=cwd,
            env=env,
            start_new_session=new_session,
        )
    child = TallyProcess(name, command, process, log_path, stdout_copy, serving_prefixes)
    try:
        await child.wait_serving(serving_timeout_s)
    except BaseException:
        await child.close()
        raise
    return child
