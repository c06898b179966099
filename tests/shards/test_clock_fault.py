"""The wall-clock fault (shards.failpoints.wall_ns): a process whose TALLY_FAULT_CLOCK_FILE
holds an offset reads the system clock skewed by it, and follows a change of it (a step)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import sys, time
from shards import failpoints
for line in sys.stdin:
    time.sleep(0.15)  # past the re-read interval
    print(failpoints.wall_ns() - time.time_ns(), flush=True)
"""


def _probe(environment: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PROBE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
    )


def _ask(process: subprocess.Popen[str]) -> int:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("\n")
    process.stdin.flush()
    return int(process.stdout.readline())


def test_a_skewed_process_reads_its_offset_and_follows_a_step(tmp_path: Path) -> None:
    offset = tmp_path / "clock"
    offset.write_text(str(-90 * 10**9))
    process = _probe({**os.environ, "TALLY_FAULT_CLOCK_FILE": str(offset)})
    try:
        assert abs(_ask(process) + 90 * 10**9) < 10**9  # 90 s behind
        offset.write_text(str(3600 * 10**9))  # a step forward of an hour and a half
        assert abs(_ask(process) - 3600 * 10**9) < 10**9
        offset.unlink()  # no file: no skew
        assert abs(_ask(process)) < 10**9
    finally:
        process.kill()
        process.wait()


def test_without_the_variable_the_clock_is_the_systems() -> None:
    environment = {k: v for k, v in os.environ.items() if k != "TALLY_FAULT_CLOCK_FILE"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import time; from shards import failpoints; print(failpoints.wall_ns is time.time_ns)",
        ],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "True"
