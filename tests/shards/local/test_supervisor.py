"""The process supervisor with real `python -m shards.cli` children: a child that exits before
serving is reported with its log and reaped, a serving node is stopped gracefully and its
stdout read to the end, a stuck stop ends in SIGKILL within its bound. The nodes serve TLS with
the tests' credentials (tests/support/security.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import dsn as dsn_text
from shards.local import supervisor
from tests.support import security
from tests.support.paths import REPO_ROOT
from tests.support.processes import proc_file

STOPPED_LINE = "tally: stopped"


async def test_a_child_that_exits_before_serving_is_reported_with_its_log(tmp_path: Path) -> None:
    log_path = tmp_path / "node.log"
    arguments = [
        "node",
        "--dsn",
        "postgresql://postgres@127.0.0.1:1/none",
        "--listen",
        "127.0.0.1:0",
        *security.server_flags(),  # so it gets as far as its database
    ]
    with pytest.raises(supervisor.NotServing) as raised:
        await supervisor.start(arguments, log_path, name="node", cwd=REPO_ROOT)
    child = raised.value.child
    assert child.returncode not in (None, 0)
    assert child.serving_line is None
    assert "node exited" in str(raised.value)
    assert "Traceback" in str(raised.value)  # the log's tail, where the reason is
    assert log_path.read_bytes()


async def test_all_of_stdout_is_kept_when_it_ends_without_a_serving_line(tmp_path: Path) -> None:
    with pytest.raises(supervisor.NotServing) as raised:
        await supervisor.start(["--help"], tmp_path / "help.log", stdout_copy=tmp_path / "out")
    child = raised.value.child
    assert child.returncode == 0
    assert any("audit-serve" in line for line in child.stdout_lines)
    assert (tmp_path / "out").read_text().splitlines() == child.stdout_lines


async def test_a_serving_node_stops_gracefully_and_its_stdout_is_read_to_the_end(
    dsn: str, tmp_path: Path
) -> None:
    node = await supervisor.start(
        ["node", "--listen", "127.0.0.1:0", *security.server_flags()],
        tmp_path / "node.log",
        name="node",
        environment=supervisor.dsn_environment(dsn=dsn),
        append=False,
        cwd=REPO_ROOT,
    )
    try:
        assert node.serving_line is not None
        assert node.serving_line.startswith(supervisor.LEDGER_SERVING_PREFIX)
        assert node.endpoint.startswith("127.0.0.1:")
        assert await node.stop(30.0, signal.SIGTERM) == 0
        assert node.stdout_lines[-1] == STOPPED_LINE, node.describe()
    finally:
        await node.close()


async def test_a_child_that_ignores_the_stop_signal_is_killed_after_the_bound(
    dsn: str, tmp_path: Path
) -> None:
    node = await supervisor.start(
        ["node", "--listen", "127.0.0.1:0", *security.server_flags()],
        tmp_path / "node.log",
        environment=supervisor.dsn_environment(dsn=dsn),
        cwd=REPO_ROOT,
    )
    try:
        # SIGCONT does not stop anything: the bound passes and SIGKILL follows.
        assert await node.stop(0.5, signal.SIGCONT) == -signal.SIGKILL
        await node.close()  # and a second ending is harmless
    finally:
        await node.close()


@pytest.mark.parametrize(
    "argument",
    [
        "postgresql://postgres:s3cret@127.0.0.1:5432/db",
        "--dsn=postgresql://postgres:s3cret@127.0.0.1:5432/db",
        "host=127.0.0.1 password=s3cret",
        "postgresql://postgres@127.0.0.1/db?password=s3cret",
    ],
)
async def test_a_dsn_secret_on_a_command_line_is_refused(argument: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="environment") as raised:
        await supervisor.start(["node", "--dsn", argument], tmp_path / "node.log", cwd=REPO_ROOT)
    assert "s3cret" not in str(raised.value)
    assert not (tmp_path / "node.log").exists()  # refused before anything started


def test_dsn_environment_names_what_the_commands_read() -> None:
    assert supervisor.dsn_environment(dsn="a", control_dsn="b", audit_dsns=["c", "d"]) == {
        "TALLY_DSN": "a",
        "TALLY_CONTROL_DSN": "b",
        "TALLY_AUDIT_DSNS": "c,d",
    }
    assert supervisor.dsn_environment(control_dsn="b") == {"TALLY_CONTROL_DSN": "b"}
    # A DSN naming several hosts (a primary and its standby) holds commas: one DSN per line.
    several_hosts = ["postgresql://u@h1:1,h2:2/a", "postgresql://u@h1:1,h2:2/b"]
    environment = supervisor.dsn_environment(audit_dsns=several_hosts)
    assert environment == {"TALLY_AUDIT_DSNS": "\n".join(several_hosts)}
    assert dsn_text.split_list(environment["TALLY_AUDIT_DSNS"]) == several_hosts
    assert dsn_text.split_list("c, d,") == ["c", "d"]
    with pytest.raises(ValueError, match="line break"):
        supervisor.dsn_environment(audit_dsns=["a\nb"])


async def test_a_node_started_by_the_supervisor_shows_no_password_in_its_command_line(
    dsn: str, tmp_path: Path
) -> None:
    password = dsn_text.secrets_of(dsn)[0]
    node = await supervisor.start(
        ["node", "--listen", "127.0.0.1:0", *security.server_flags()],
        tmp_path / "node.log",
        environment=supervisor.dsn_environment(dsn=dsn),
        cwd=REPO_ROOT,
    )
    try:
        command_line = proc_file(node.pid, "cmdline")
        assert b"shards.cli\x00node" in command_line  # it is the node's
        assert password.encode() not in command_line
        assert dsn.encode() in proc_file(node.pid, "environ")
        assert stat.S_IMODE(os.stat(f"/proc/{node.pid}/environ").st_mode) == 0o400
    finally:
        await node.close()


_PARENT_SCRIPT = """
import subprocess, sys
from shards.local.supervisor import dying_with_parent
child = subprocess.Popen(dying_with_parent([sys.argv[1], "600"]))
print(child.pid, flush=True)
child.wait()
"""


def _argv(pid: int) -> list[str]:
    return proc_file(pid, "cmdline").decode().split("\0")


def _ended(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = proc_file(pid, "stat").decode().split(")")[-1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_a_child_started_dying_with_its_parent_ends_when_the_parent_is_killed_9() -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT_SCRIPT, sleep], cwd=REPO_ROOT, stdout=subprocess.PIPE
    )
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        # The child is the program itself once armed (the trampoline execs it).
        deadline = time.monotonic() + 10
        while _argv(child_pid)[:1] != [sleep] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _argv(child_pid)[:2] == [sleep, "600"]
        assert not _ended(child_pid, 0.3)
        parent.kill()
        parent.wait(10)
        assert _ended(child_pid, 10), "the child outlived its parent's kill -9"
    finally:
        parent.kill()
        with contextlib.suppress(ProcessLookupError, OSError):
            os.kill(child_pid, signal.SIGKILL)


def test_the_trampoline_never_runs_the_program_when_its_parent_is_already_gone(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ran"
    command = supervisor.dying_with_parent(["/bin/sh", "-c", f"touch {marker}"])
    command[4] = str(os.getpid() + 1_000_000)  # a parent pid that is not this test's
    completed = subprocess.run(command, timeout=30, check=False)
    assert completed.returncode == -signal.SIGTERM
    assert not marker.exists()
