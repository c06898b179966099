"""Where the node's time goes: py-spy samples per workload, or cProfile for the whole run.

`--node-profile py-spy` samples the node (py-spy record --pid, non-blocking, so the node is not
paused) during each Tally workload's measured window. py-spy itself takes CPU from the same two
cores, so throughput in a profiled run reads a little lower; compare profiled runs only with each
other. `--node-profile cprofile` runs the node under `python -m cProfile`; its overhead is much
larger (every Python call is traced), so use it for call counts, not rates.
"""

from __future__ import annotations

import io
import pstats
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Final

from bench.common.paths import REPO_ROOT

PY_SPY_RATE_HZ: Final = 250
SUMMARY_ROW_COUNT: Final = 25
# Leaves that mean a thread is waiting, not working (seen with --native, which keeps idle stacks).
_IDLE_MARKERS: Final = ("epoll_wait", "epoll_pwait", "select (", "poll (")


def py_spy_path() -> str | None:
    """py-spy next to the interpreter (installed into the venv) or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


class PySpyRecording:
    """One py-spy record process over a window; start() at its start, finish() after it."""

    def __init__(self, executable: str, pid: int, duration_s: float, output: Path) -> None:
        self._command = [
            executable, "record",
            "--pid", str(pid),
            "--duration", str(max(1, round(duration_s))),
            "--rate", str(PY_SPY_RATE_HZ),
            "--format", "raw",
            "--nonblocking",
            "--output", str(output),
        ]  # fmt: skip
        self.output = output
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def finish(self, timeout_s: float = 30.0) -> str:
        if self._process is None:
            return "py-spy did not start"
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10.0)
            return "py-spy did not finish"
        if not self.output.exists():
            return f"py-spy wrote nothing (exit {self._process.returncode})"
        return summarize_collapsed(self.output.read_text(errors="replace"))


def _parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def _short(frame: str) -> str:
    # "apply (core/state.py:112)" -> "apply (core/state.py)"; line numbers split one function.
    name, _, location = frame.partition(" (")
    path = location.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", f"{REPO_ROOT}/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})" if path else name


def summarize_collapsed(text: str) -> str:
    """Top functions by self samples and by inclusive samples, in % of all samples."""
    stacks = _parse_collapsed(text)
    total = sum(count for _, count in stacks)
    if not total:
        return "no samples"
    self_counts: Counter[str] = Counter()
    inclusive_counts: Counter[str] = Counter()
    idle = 0
    for frames, count in stacks:
        leaf = frames[-1]
        if any(marker in leaf for marker in _IDLE_MARKERS):
            idle += count
        self_counts[_short(leaf)] += count
        for name in {_short(frame) for frame in frames}:
            inclusive_counts[name] += count
    lines = [f"{total} samples; waiting in epoll/select {100 * idle / total:.0f}%"]
    lines.append("self %  function")
    for name, count in self_counts.most_common(SUMMARY_ROW_COUNT):
        lines.append(f"{100 * count / total:6.1f}  {name}")
    lines.append("inclusive %  function")
    for name, count in inclusive_counts.most_common(SUMMARY_ROW_COUNT):
        lines.append(f"{100 * count / total:6.1f}  {name}")
    return "\n".join(lines)


def summarize_cprofile(path: Path) -> str:
    if not path.exists():
        return f"{path} was not written (did the node exit normally?)"
    buffer = io.StringIO()
    stats = pstats.Stats(str(path), stream=buffer)
    stats.sort_stats("tottime").print_stats(SUMMARY_ROW_COUNT)
    return buffer.getvalue().strip()
