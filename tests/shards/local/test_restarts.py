"""Restarts with backoff (shards.local.supervisor): the delays double from the first to their
bound and start again after a good run; a policy out of bounds is refused; a failed restart is
said on one line and tried again after a longer delay; a stop during a delay ends the
supervision at once, without a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from shards.local.supervisor import Backoff, RestartPolicy, keep_running


def test_the_backoff_doubles_to_its_bound_and_starts_again_after_a_good_run() -> None:
    policy = RestartPolicy(first_delay_s=0.5, delay_max_s=10.0, reset_after_s=30.0)
    backoff = Backoff(policy)
    delays = [backoff.next_delay_s(served_s=1.0) for _ in range(7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.next_delay_s(served_s=30.0) == 0.5  # it had served a while: from the start
    assert backoff.next_delay_s(served_s=0.0) == 1.0


@pytest.mark.parametrize(
    "fields",
    [
        {"first_delay_s": 0.0},
        {"first_delay_s": 2.0, "delay_max_s": 1.0},
        {"reset_after_s": -1.0},
    ],
)
def test_a_restart_policy_out_of_bounds_is_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RestartPolicy(**fields)


class Flaky:
    """A restartable thing that exits when told and fails its first restart_failures starts."""

    name = "flaky"

    def __init__(self, restart_failures: int) -> None:
        self.restart_failures = restart_failures
        self.starts = 0
        self.exit = asyncio.Event()

    async def wait_exit(self) -> str:
        await self.exit.wait()
        self.exit.clear()
        return "code 1"

    async def restart(self) -> str:
        self.starts += 1
        if self.starts <= self.restart_failures:
            raise RuntimeError(f"start {self.starts} failed:\nport in use")
        return f"start {self.starts}"


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_a_failed_restart_is_said_and_tried_again_after_a_longer_delay() -> None:
    flaky, stopping, said = Flaky(restart_failures=2), asyncio.Event(), []
    policy = RestartPolicy(first_delay_s=0.01, delay_max_s=0.04, reset_after_s=60.0)
    keeping = asyncio.create_task(keep_running(flaky, stopping, policy, said.append))
    try:
        flaky.exit.set()
        await _until(lambda: len(said) == 4)
        assert said == [
            "tally: flaky exited (code 1); restarting in 0.01 s",
            "tally: flaky did not start (start 1 failed: port in use); retrying in 0.02 s",
            "tally: flaky did not start (start 2 failed: port in use); retrying in 0.04 s",
            "tally: flaky restarted (start 3)",
        ]
        flaky.exit.set()  # a second exit soon after: the delay goes on growing, to its bound
        await _until(lambda: len(said) == 6)
        assert said[4:] == [
            "tally: flaky exited (code 1); restarting in 0.04 s",
            "tally: flaky restarted (start 4)",
        ]
    finally:
        stopping.set()
        await asyncio.wait_for(keeping, timeout=10)


async def test_a_stop_during_the_delay_ends_the_supervision_without_a_restart() -> None:
    flaky, stopping, said = Flaky(restart_failures=0), asyncio.Event(), []
    policy = RestartPolicy(first_delay_s=30.0, delay_max_s=30.0)
    keeping = asyncio.create_task(keep_running(flaky, stopping, policy, said.append))
    flaky.exit.set()
    await _until(lambda: len(said) == 1)
    stopping.set()
    await asyncio.wait_for(keeping, timeout=5)  # not the 30 s delay
    assert flaky.starts == 0
    assert said == ["tally: flaky exited (code 1); restarting in 30 s"]
