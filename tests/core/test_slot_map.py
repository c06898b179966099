"""A slot map's growth rules: a cluster gains shards that own no slots until a rebalance, and
never drops a shard that owns slots (`tally up --shards N`, `tally init-cluster`)."""

from __future__ import annotations

from core.slots import SLOT_COUNT, SlotMap


def test_a_larger_cluster_serves_the_map_and_names_its_new_shards() -> None:
    two = SlotMap.even(2)
    assert two.shrink_refusal(2) == "" and two.slotless(2) == ()
    assert two.shrink_refusal(4) == "" and two.slotless(4) == (2, 3)


def test_a_smaller_cluster_is_refused_naming_the_shards_left_unserved() -> None:
    three = SlotMap.even(3)
    assert "would leave shards [1, 2] unserved" in three.shrink_refusal(1)
    # Once shard 1's slots have moved away, a cluster without it serves every slot... only if
    # no shard beyond the count owns slots: here shard 2 still does.
    moved = three.moved(sorted(three.owned_by(1)), 0)
    assert moved.slotless(3) == (1,)
    assert "would leave shards [2] unserved" in moved.shrink_refusal(2)
    assert sum(1 for owner in moved.owners if owner == 0) == 2 * SLOT_COUNT // 3 + 1
