"""Closed-loop load: N clients call one operation back to back during a measured window.

Each client waits for its answer before sending the next call (no open-loop queueing), like the
upstream products that call a ledger. A run has a warm-up and then the measured window; a call
counts in the window when it *finishes* inside it, so the rate is unbiased at both ends.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

# A call that fails at the transport level (not an item result) is followed by this pause, so a
# dead server turns into a count of errors rather than a busy loop.
ERROR_PAUSE_S: Final = 0.01
# Calls still in flight when the window closes get this long to finish before being cancelled.
DRAIN_TIMEOUT_S: Final = 60.0


@dataclass(slots=True)
class CallOutcome:
    """What one call returned: item result codes by name, or a transport error."""

    codes: Counter[str] = field(default_factory=Counter)
    error: str = ""
    retries: int = 0


Call = Callable[[int], Awaitable[CallOutcome]]
"""One operation of one client; the argument is the client's number."""


@dataclass(frozen=True, slots=True)
class Window:
    """Monotonic nanosecond bounds of the measured window."""

    start_ns: int
    end_ns: int

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    def share(self, started_ns: int, finished_ns: int) -> float:
        """The part of a call's duration that lies inside the window (0..1)."""
        overlap_ns = min(finished_ns, self.end_ns) - max(started_ns, self.start_ns)
        if overlap_ns <= 0:
            return 0.0
        return overlap_ns / max(1, finished_ns - started_ns)


@dataclass(slots=True)
class Recorder:
    """What one run measured.

    `codes`, `errors` and `retries` cover every call of the run (warm-up and drain included), so
    a rejection anywhere shows. Latencies are those of calls that finished inside the window.
    `created_in_window` credits each call's CREATED items to the window in proportion to the part
    of the call that lies inside it: a row-locking batch of 1,000 transfers can take seconds,
    and counting whole calls only would quantise its rate to a few calls per window.
    """

    window: Window
    latencies_ns: list[int] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    created_in_window: float = 0.0

    def add(self, outcome: CallOutcome, started_ns: int, finished_ns: int) -> None:
        self.codes.update(outcome.codes)
        self.retries += outcome.retries
        if outcome.error:
            self.errors[outcome.error] += 1
        if self.window.start_ns <= finished_ns < self.window.end_ns:
            self.latencies_ns.append(finished_ns - started_ns)
        created = outcome.codes.get("CREATED", 0)
        if created:
            self.created_in_window += created * self.window.share(started_ns, finished_ns)


async def _client(call: Call, number: int, window: Window, recorder: Recorder) -> None:
    while True:
        started_ns = time.perf_counter_ns()
        if started_ns >= window.end_ns:
            return
        outcome = await call(number)
        recorder.add(outcome, started_ns, time.perf_counter_ns())
        if outcome.error:
            await asyncio.sleep(ERROR_PAUSE_S)


async def run_closed_loop(
    call: Call,
    client_count: int,
    warmup_s: float,
    duration_s: float,
    on_window_start: Callable[[], Awaitable[None]],
    on_window_end: Callable[[], Awaitable[None]],
) -> tuple[Window, Recorder]:
    """Run client_count clients for warmup_s + duration_s; the hooks bracket the window (they
    take CPU snapshots, so they run at its exact edges)."""
    now_ns = time.perf_counter_ns()
    window = Window(now_ns + int(warmup_s * 1e9), now_ns + int((warmup_s + duration_s) * 1e9))
    recorder = Recorder(window)
    async with asyncio.timeout(warmup_s + duration_s + DRAIN_TIMEOUT_S):
        async with asyncio.TaskGroup() as group:
            for number in range(client_count):
                group.create_task(_client(call, number, window, recorder))
            await _sleep_until(window.start_ns)
            await on_window_start()
            await _sleep_until(window.end_ns)
            await on_window_end()
    return window, recorder


async def _sleep_until(deadline_ns: int) -> None:
    remaining_s = (deadline_ns - time.perf_counter_ns()) / 1e9
    if remaining_s > 0:
        await asyncio.sleep(remaining_s)


def percentile_ns(sorted_ns: list[int], fraction: float) -> int:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_ns:
        return 0
    rank = max(1, math.ceil(len(sorted_ns) * fraction))
    return sorted_ns[min(len(sorted_ns), rank) - 1]


def latency_summary_ms(latencies_ns: list[int]) -> dict[str, float]:
    ordered = sorted(latencies_ns)
    summary = {
        "p50": percentile_ns(ordered, 0.50),
        "p95": percentile_ns(ordered, 0.95),
        "p99": percentile_ns(ordered, 0.99),
        "max": ordered[-1] if ordered else 0,
    }
    return {name: round(value / 1e6, 3) for name, value in summary.items()}
