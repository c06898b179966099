"""The 4-shard in-process cluster that the gateway and cross-shard tests share (the `cluster`
fixture of tests/shards/conftest.py), and customers placed on distinct shards of it."""

from __future__ import annotations

from core.slots import SlotMap
from tests.support.helpers import InProcessCluster

SHARD_COUNT = 4

# What the `cluster` fixture yields.
Cluster = InProcessCluster


def customers_on_distinct_shards(count: int) -> list[str]:
    """Customer partition keys, one per shard, under the even map."""
    slot_map = SlotMap.even(SHARD_COUNT)
    chosen: dict[int, str] = {}
    for n in range(10_000):
        key = f"cust-{n}"
        chosen.setdefault(slot_map.shard_of_key(key), key)
        if len(chosen) == count:
            break
    return [chosen[s] for s in sorted(chosen)]
