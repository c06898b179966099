"""Pure routing decisions of the gateway: which shard(s) a unit of items needs.

A unit is one item, or one linked group (which must succeed or fail as a whole, so it is never
split between shard calls unless it crosses shards).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from core.model import Rejection, Result, ResultCode, TransactionSpec
from core.slots import SlotMap, is_spread, partition_key


def units(items: Sequence[Any]) -> list[tuple[int, int]]:
    """[start, end) ranges: a linked group (linked items and the one closing it) or one item."""
    ranges = []
    start = 0
    while start < len(items):
        end = start
        while end < len(items) - 1 and getattr(items[end], "linked", False):
            end += 1
        ranges.append((start, end + 1))
        start = end + 1
    return ranges


def local_failure(unit_items: Sequence[Any]) -> list[Result] | None:
    """Results for a unit refused by stateless validation (nothing is sent), or None."""
    if not any(isinstance(item, Rejection) for item in unit_items):
        return None
    if len(unit_items) == 1:
        item = unit_items[0]
        return [Result(item.code, item.message)]
    failed_at = next(n for n, item in enumerate(unit_items) if isinstance(item, Rejection))
    message = f"item {failed_at} of this linked group failed"
    return [
        Result(item.code, item.message)
        if isinstance(item, Rejection)
        else Result(ResultCode.LINKED_ITEM_FAILED, message)
        for item in unit_items
    ]


def mixed_homes(unit_items: Sequence[Any]) -> list[Result] | None:
    """Results for a linked group whose transaction ids do not share one partition key, or
    None. A transaction is recorded at its id's home (core.slots), and a group commits as
    one decision at one shard: so its ids share one home, whatever the slot map."""
    if len(unit_items) < 2:
        return None
    key = partition_key(unit_items[0].id)
    for n, item in enumerate(unit_items):
        if partition_key(item.id) != key:
            why = Result(
                ResultCode.INVALID_ID,
                f"id {item.id[:64]!r}: the transactions of a linked group share one partition "
                f"key (the text of their ids before the first '/'; {key[:64]!r} here), so that "
                "one shard records them all",
            )
            linked = Result(ResultCode.LINKED_ITEM_FAILED, f"item {n} of this linked group failed")
            return [why if k == n else linked for k in range(len(unit_items))]
    return None


def targets(unit_items: Sequence[TransactionSpec]) -> list[str]:
    """Transaction ids whose shard must be known: those of post/void/reversal items (a
    partial post names its legs, but goes where its hold is)."""
    return [item.target_id for item in unit_items if item.target_id]


def unit_shards(
    unit_items: Sequence[TransactionSpec], slot_map: SlotMap, located: Mapping[str, int]
) -> set[int]:
    """Shards a unit must touch. Spread legs go where the other legs are; a unit of spread
    legs only goes to the shard of its first transaction id's partition key."""
    shards: set[int] = set()
    for item in unit_items:
        if item.target_id in located:
            shards.add(located[item.target_id])
        elif item.legs:
            for leg in item.legs:
                if not is_spread(leg.account_id):
                    shards.add(slot_map.shard_of_account(leg.account_id))
        else:
            shards.add(slot_map.shard_of_key(partition_key(item.target_id)))
    if not shards:
        shards.add(slot_map.shard_of_key(partition_key(unit_items[0].id)))
    return shards
