"""The process supervisor with real `python -m shards.cli` children: a child that exits before
serving is reported with its log and reaped, a serving node is stopped gracefully and its
stdout read to the end, a stuck stop ends in SIGKILL within its bound."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from shards.local import supervisor
from tests.support.paths import REPO_ROOT

STOPPED_LINE = "tally: stopped"


async def test_a_child_that_exits_before_serving_is_reported_with_its_log(tmp_path: Path) -> None:
    log_path = tmp_path / "node.log"
    arguments = [
        "node",
        "--dsn",
        "postgresql://postgres@127.0.0.1:1/none",
        "--listen",
        "127.0.0.1:0",
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
        ["node", "--dsn", dsn, "--listen", "127.0.0.1:0"],
        tmp_path / "node.log",
        name="node",
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
        ["node", "--dsn", dsn, "--listen", "127.0.0.1:0"], tmp_path / "node.log", cwd=REPO_ROOT
    )
    try:
        # SIGCONT does not stop anything: the bound passes and SIGKILL follows.
        assert await node.stop(0.5, signal.SIGCONT) == -signal.SIGKILL
        await node.close()  # and a second ending is harmless
    finally:
        await node.close()
