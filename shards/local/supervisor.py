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

Restarts: `keep_running` watches one restartable thing (a child here, or `tally up`'s
PostgreSQL) until told to stop, and restarts it each time it exits, after a delay that doubles
from RestartPolicy.first_delay_s to delay_max_s and starts again from the first once it has
served reset_after_s; it says every exit and restart on stdout. A child started with
die_with_parent gets SIGTERM from the kernel when this process dies, kill -9 included (Linux),
so a killed `tally up` leaves no node holding its shard's writer lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, TypeVar

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
# A failed restart's reason is said on one line of at most this many characters.
RESTART_REASON_CHARACTERS_MAX: Final = 300

_T = TypeVar("_T")


def dsn_environment(
    *, dsn: str = "", control_dsn: str = "", audit_dsns: Sequence[str] = ()
) -> dict[str, str]:
    """The environment that gives a `tally` child its databases: the node's --dsn, the
    node's and gateway's --control-dsn, audit-serve's --dsn list (in shard order:
    comma-separated, or one per line when a DSN names several hosts). Only what is given is
    set."""
    environment = {}
    if dsn:
        environment[DSN_ENV] = dsn
    if control_dsn:
        environment[CONTROL_DSN_ENV] = control_dsn
    if audit_dsns:
        environment[AUDIT_DSNS_ENV] = dsn_text.join_list(audit_dsns)
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
    die_with_parent: bool = False,
) -> TallyProcess:
    """`python [INTERPRETER_ARGUMENTS] -m shards.cli ARGUMENTS`, returned once it prints a line
    starting with one of serving_prefixes. Its stderr goes to log_path (appended, or without
    append written afresh, as is stdout_copy); environment is added to this process's (or,
    without inherit_environment, is all of the child's).
    new_session: its own session, so a Ctrl-C in the terminal reaches only this process,
    which then stops it in order. die_with_parent: SIGTERM from the kernel when this process
    dies, however it dies (Linux; the thread that starts it must live as long as this process:
    the event loop's). On any failure to start it is killed, and NotServing (or the error)
    raised. An argument holding a DSN secret is refused (ValueError): pass DSNs in environment
    (dsn_environment)."""
    _refuse_secrets_in([*interpreter_arguments, *arguments])
    if not append:
        for path in {log_path, *([stdout_copy] if stdout_copy else [])}:
            path.write_bytes(b"")
    command = [sys.executable, *interpreter_arguments, "-m", "shards.cli", *arguments]
    inherited = os.environ if inherit_environment else {}
    env = {**inherited, "PYTHONUNBUFFERED": "1", **(environment or {})}
    spawned = dying_with_parent(command) if die_with_parent else command
    with log_path.open("ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            *spawned,
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


def dying_with_parent(command: Sequence[str], signum: int = signal.SIGTERM) -> list[str]:
    """command, run so that the kernel sends it signum when this process dies, however it dies
    (Linux; elsewhere command as is: the child then outlives a killed parent). Through
    die_with_parent.py, which arms the signal in a fresh interpreter and execs command, never
    in a preexec_fn (that module says why). command[0] must be a path."""
    if not sys.platform.startswith("linux"):
        return list(command)
    trampoline = str(Path(__file__).with_name("die_with_parent.py"))
    return [sys.executable, "-I", "-S", trampoline, str(os.getpid()), str(int(signum)), *command]


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How soon a supervised thing that exited is started again: first_delay_s after its first
    exit, doubling at every exit that follows up to delay_max_s, and from first_delay_s again
    once it has run reset_after_s before exiting."""

    first_delay_s: float = 0.5
    delay_max_s: float = 10.0
    reset_after_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.first_delay_s > 0:
            raise ValueError(f"first_delay_s must be positive, got {self.first_delay_s}")
        if not self.delay_max_s >= self.first_delay_s:
            raise ValueError(
                f"delay_max_s ({self.delay_max_s}) must be at least first_delay_s "
                f"({self.first_delay_s})"
            )
        if not self.reset_after_s >= 0:
            raise ValueError(f"reset_after_s must not be negative, got {self.reset_after_s}")


class Backoff:
    """The delays of one supervised thing's restarts, by RestartPolicy."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._next_delay_s = policy.first_delay_s

    def next_delay_s(self, served_s: float) -> float:
        """The delay before the restart after a run of served_s seconds."""
        if served_s >= self.policy.reset_after_s:
            self._next_delay_s = self.policy.first_delay_s
        delay_s = self._next_delay_s
        self._next_delay_s = min(delay_s * 2, self.policy.delay_max_s)
        return delay_s


class Restartable(Protocol):
    """What keep_running supervises: something running now that can be started again."""

    @property
    def name(self) -> str: ...

    async def wait_exit(self) -> str:
        """Once it has exited: how (`code -9`, `pid 1234`), for the line that says so."""
        ...

    async def restart(self) -> str:
        """Start it again, returned once it serves: what it is now (`pid 1234`). Any exception
        is a failed start, said and tried again after the next delay."""
        ...


def say(line: str) -> None:
    print(line, flush=True)


async def keep_running(
    thing: Restartable,
    stopping: asyncio.Event,
    policy: RestartPolicy | None = None,
    announce: Callable[[str], None] = say,
) -> None:
    """Restart thing every time it exits, until stopping is set (then it is left as it is, for
    the caller to stop; a restart under way is cancelled, which kills what it started). Every
    exit, delay and restart is announced: `tally: node-1 exited (code -9); restarting in 0.5 s`,
    then `tally: node-1 restarted (pid 1234)`."""
    backoff = Backoff(policy or RestartPolicy())
    while True:
        started = time.monotonic()
        how = await _unless_stopping(thing.wait_exit(), stopping)
        if how is None:
            return
        delay_s = backoff.next_delay_s(time.monotonic() - started)
        announce(f"tally: {thing.name} exited ({how}); restarting in {delay_s:g} s")
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=delay_s)
            if stopping.is_set():
                return
            try:
                now = await _unless_stopping(thing.restart(), stopping)
            except Exception as error:  # a failed start: said, and tried again
                delay_s = backoff.next_delay_s(0.0)
                reason = " ".join(str(error).split())[:RESTART_REASON_CHARACTERS_MAX]
                announce(f"tally: {thing.name} did not start ({reason}); retrying in {delay_s:g} s")
                continue
            if now is None:
                return
            announce(f"tally: {thing.name} restarted ({now})")
            break


async def _unless_stopping(work: Awaitable[_T], stopping: asyncio.Event) -> _T | None:
    """work's result, or None (work cancelled) if stopping is set first or meanwhile."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in (task, stopped):
            if not future.done():
                future.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await future
    if stopping.is_set():
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: what it did no longer matters
        return None
    return task.result()
