"""LaterAborts, the gateway's list of attempts whose Commit never reached their coordinator:
bounded (the oldest dropped first), each kept only until its pieces' deadline, the units of a
coordinator that still does not answer kept in order for the next round."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from shards.crossshard import coordinator
from shards.crossshard.coordinator import LaterAborts


class _Unit:
    def __init__(self, name: str, coordinator_shard: int) -> None:
        self.name = name
        self.coordinator = coordinator_shard


class _Driver:
    """Answers for the coordinators in `up`; records what it was asked."""

    def __init__(self, up: set[int]) -> None:
        self.up = up
        self.asked: list[list[str]] = []

    async def abort_undelivered(self, units: Sequence[Any]) -> list[int]:
        self.asked.append([u.name for u in units])
        return sorted({u.coordinator for u in units} - self.up)


async def test_kept_until_their_coordinator_answers_in_order() -> None:
    later = LaterAborts()
    for name, shard in (("a", 0), ("b", 1), ("c", 0)):
        later.add(_Unit(name, shard))  # type: ignore[arg-type]
    driver = _Driver(up={1})
    assert await later.retry(driver) == 1  # b's coordinator answered
    assert len(later) == 2
    driver.up = {0}
    assert await later.retry(driver) == 2
    assert driver.asked == [["a", "b", "c"], ["a", "c"]]
    assert len(later) == 0 and await later.retry(driver) == 0


async def test_bounded_and_dropped_past_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    later = LaterAborts(count_max=2)
    for name in "abc":
        later.add(_Unit(name, 0))  # type: ignore[arg-type]
    assert len(later) == 2  # the oldest, a, dropped
    driver = _Driver(up={0})
    assert await later.retry(driver) == 2
    assert driver.asked == [["b", "c"]]
    monkeypatch.setattr(coordinator, "PREPARE_DEADLINE_S", -1)
    later.add(_Unit("late", 0))  # type: ignore[arg-type]  # its deadline already passed
    assert await later.retry(driver) == 0 and len(later) == 0
    assert driver.asked == [["b", "c"]]  # the participants have asked for it themselves
