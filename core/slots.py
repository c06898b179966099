"""Partition keys, slots and the slot map: which shard owns an account.

The partition key of an account id is the text before its first '/' (the whole id without
one). It hashes to one of SLOT_COUNT slots; the versioned slot map assigns slots to shards.
Spread accounts ('@...') have a piece on every shard and route with the other legs.

A transaction id has a partition key too, by the same rule, and so a home: the shard owning
its slot. A transaction is recorded under its id at its home only, which makes the id one
idempotency key for the whole cluster (docs/design.md, "Transactions"): an id whose partition
key is that of its accounts ('cust-42/repayment-7') is recorded where its legs are, and costs
nothing more than a single-shard transaction.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from core.invariant import check

SLOT_COUNT: Final = 4096


def partition_key(account_id: str) -> str:
    """The text before the first '/': accounts sharing it always live on the same shard."""
    return account_id.split("/", 1)[0]


def is_spread(account_id: str) -> bool:
    return account_id.startswith("@")


def slot_of(key: str) -> int:
    """Stable across processes and versions: CRC-32 of the UTF-8 key, modulo SLOT_COUNT."""
    return zlib.crc32(key.encode()) % SLOT_COUNT


def account_slot(account_id: str) -> int:
    return slot_of(partition_key(account_id))


def transaction_slot(transaction_id: str) -> int:
    """The slot of a transaction id's partition key: its home's."""
    return slot_of(partition_key(transaction_id))


@dataclass(frozen=True, slots=True)
class SlotMap:
    """Version and owner shard of every slot."""

    version: int
    owners: tuple[int, ...]

    def __post_init__(self) -> None:
        check(len(self.owners) == SLOT_COUNT, f"a slot map has {SLOT_COUNT} slots")

    @staticmethod
    def even(shard_count: int, version: int = 1) -> SlotMap:
        """Contiguous equal ranges: slot s belongs to shard s * shard_count // SLOT_COUNT."""
        check(1 <= shard_count <= SLOT_COUNT, "shard count out of range")
        return SlotMap(version, tuple(s * shard_count // SLOT_COUNT for s in range(SLOT_COUNT)))

    @property
    def shard_ids(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.owners)))

    def shard_of_account(self, account_id: str) -> int:
        return self.owners[account_slot(account_id)]

    def home_of(self, transaction_id: str) -> int:
        """The shard that records this transaction id (see the module's docstring)."""
        return self.owners[transaction_slot(transaction_id)]

    def shard_of_key(self, key: str) -> int:
        return self.owners[slot_of(key)]

    def ranges(self) -> list[tuple[int, int, int]]:
        """The map compactly: (first slot, slot count, owner) of each run of slots with one
        owner, in slot order, covering every slot once (what GetRouting sends clients)."""
        runs: list[tuple[int, int, int]] = []
        first = 0
        for slot in range(1, SLOT_COUNT + 1):
            if slot == SLOT_COUNT or self.owners[slot] != self.owners[first]:
                runs.append((first, slot - first, self.owners[first]))
                first = slot
        return runs

    def owned_by(self, shard_id: int) -> frozenset[int]:
        return frozenset(s for s, owner in enumerate(self.owners) if owner == shard_id)

    def shrink_refusal(self, shard_count: int) -> str:
        """Why a cluster of shards 0..shard_count-1 cannot serve this map ("" when it can). A
        cluster grows (its new shards own no slots until `tally slots rebalance` moves some onto
        them) but never drops a shard that owns slots."""
        beyond = [shard for shard in self.shard_ids if shard >= shard_count]
        if not beyond:
            return ""
        return (
            f"the slot map gives slots to shards {list(self.shard_ids)}: a cluster of "
            f"{shard_count} shards would leave shards {beyond} unserved (move their slots away "
            "first: tally slots move)"
        )

    def slotless(self, shard_count: int) -> tuple[int, ...]:
        """The shards of 0..shard_count-1 that own no slot (shards being added)."""
        return tuple(s for s in range(shard_count) if s not in set(self.owners))

    def moved(self, slots: Iterable[int], shard_id: int) -> SlotMap:
        owners = list(self.owners)
        for slot in slots:
            owners[slot] = shard_id
        return SlotMap(self.version + 1, tuple(owners))


def shards_of_accounts(slot_map: SlotMap, account_ids: Sequence[str]) -> set[int]:
    """The shards a set of legs needs (spread accounts go wherever the others are)."""
    return {slot_map.shard_of_account(a) for a in account_ids if not is_spread(a)}
