"""Direct routing: which node, if any, a unit of work can go to straight from the client.

The gateway answers GetRouting with its slot map (as ranges) and each shard's client endpoint.
A partition key's slot is CRC-32 of its UTF-8 bytes modulo SLOT_COUNT, as the servers compute
it (core.slots; re-implemented here, tests hold the two equal). A unit goes to a node only if
everything it touches is on that node under the map: every leg's non-spread account, every
id's home, and, for a post or void of a hold, the hold's slots, known only for holds a node
applied for this client directly (so the hold was single-shard where it was recorded). The rest
goes to the gateway: cross-shard units, reversals, spread-account creates and closes, posts and
voids of holds it cannot place, linked groups whose ids do not share one partition key (the
gateway refuses them whatever the map, and so must the client's route). Reads by id go to
one node too: accounts' to their node, transaction records' to their ids' home (the shard that
records an id), unless an id is the cluster's own (`~...`) or names no home. Pure decisions:
the client (aio.py) sends, falls back and reloads.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from tally.v1 import ledger_pb2 as pb

from .ids import ID_LENGTH_MAX, partition_key

SLOT_COUNT: Final = 4096
GATEWAY: Final = ""  # a unit's target when it goes to the gateway
RESERVED_PREFIX: Final = "~"  # the cluster's own records (pieces, expiries, moves): not homed
# A slot move's release of a hold at the slot's old shard (core.ids.move_out_hold_id): the hold
# left with the move, and that shard's copy of it is no longer the hold's state.
MOVE_OUT_PREFIX: Final = "~moveout/"


@dataclass(frozen=True)
class RoutingOptions:
    """direct: send single-shard work straight to its node, when the gateway offers routing
    (GetRouting); off, or refused by the gateway, every call goes to the gateway."""

    direct: bool = True
    node_count_max: int = 64  # node channels the client opens at most; beyond, the gateway
    # RPCs per kind out at once to each node (BatchOptions.in_flight_max is the gateway's):
    # fewer than to a gateway, which spreads its calls over the shards, so that a busy node
    # gets fewer, larger commits, as the gateway's own one call per shard does.
    node_in_flight_max: int = 1
    reload_interval_min_s: float = 0.2  # at most one map reload per this
    hold_count_max: int = 100_000  # directly applied holds remembered, to route their posts
    # A node that failed a call (transport error, no answer) gets no routed work for this
    # long: its units go to the gateway rather than each paying a failed attempt first.
    node_down_s: float = 1.0
    # A routed read of transaction records waits for a fresh table when its own is older
    # (GetRouting, a few bytes when nothing moved): a slot's old shard keeps its copies of the
    # records that moved with it and answers them, unchanged since, where it refuses moved
    # accounts and writes (wrong_shard); as old as the gateway's own map may be (1 s polls).
    record_table_age_max_s: float = 1.0

    def __post_init__(self) -> None:
        if self.node_in_flight_max < 1:
            raise ValueError("node_in_flight_max is at least 1")
        if self.node_count_max < 1 or self.hold_count_max < 0:
            raise ValueError("node_count_max is at least 1 and hold_count_max not negative")
        if min(self.reload_interval_min_s, self.node_down_s, self.record_table_age_max_s) < 0:
            raise ValueError(
                "reload_interval_min_s, node_down_s and record_table_age_max_s are not negative"
            )


def slot_of(key: str) -> int:
    """The slot of a partition key, as the servers compute it."""
    return zlib.crc32(key.encode()) % SLOT_COUNT


def slot_of_id(account_or_transaction_id: str) -> int:
    return slot_of(partition_key(account_or_transaction_id))


def is_spread(account_id: str) -> bool:
    return account_id.startswith("@")


class RoutingError(ValueError):
    """A GetRouting answer this library cannot use (routing stays off)."""


@dataclass(frozen=True)
class SlotTable:
    """One version of the slot map: the owner of every slot, and each shard's client
    endpoint ("" or absent: none, its work goes to the gateway)."""

    version: int
    owners: tuple[int, ...]
    endpoints: dict[int, str]

    @classmethod
    def of_message(cls, answer: pb.GetRoutingResponse) -> SlotTable:
        if answer.slot_count != SLOT_COUNT:
            raise RoutingError(f"the gateway has {answer.slot_count} slots, this library 4096")
        owners: list[int] = []
        for span in answer.ranges:
            if span.first_slot != len(owners) or span.slot_count < 1:
                raise RoutingError(f"slot ranges out of order at slot {span.first_slot}")
            owners.extend([span.shard_id] * span.slot_count)
        if len(owners) != SLOT_COUNT:
            raise RoutingError(f"slot ranges cover {len(owners)} slots, not {SLOT_COUNT}")
        endpoints = {s.shard_id: s.client_endpoint for s in answer.shards if s.client_endpoint}
        return cls(answer.version, tuple(owners), endpoints)

    def endpoint_of_slots(self, slots: Iterable[int]) -> str:
        """The client endpoint of the one shard owning all of the slots; GATEWAY if they are
        on more than one shard, or on a shard without one."""
        shards = {self.owners[slot] for slot in slots}
        if len(shards) != 1:
            return GATEWAY
        return self.endpoints.get(shards.pop(), GATEWAY)


class Router:
    """The client's current table and the holds it can place; decides targets."""

    def __init__(self, options: RoutingOptions) -> None:
        self.options = options
        self.table: SlotTable | None = None
        self.off_reason = "" if options.direct else "off (RoutingOptions.direct)"
        self._holds: OrderedDict[str, frozenset[int]] = OrderedDict()

    @property
    def on(self) -> bool:
        return not self.off_reason

    def take(self, table: SlotTable) -> bool:
        """Use table if it is newer than the one held (a gateway may be behind another)."""
        if self.table is not None and table.version <= self.table.version:
            return False
        self.table = table
        return True

    def turn_off(self, reason: str) -> None:
        self.off_reason = reason
        self.table = None

    def transactions_target(self, unit: Sequence[pb.Transaction]) -> str:
        slots = self._transaction_slots(unit)
        if self.table is None or slots is None:
            return GATEWAY
        return self.table.endpoint_of_slots(slots)

    def accounts_target(self, account_ids: Sequence[str]) -> str:
        """Creates, closes and reads of accounts: one node when none is spread."""
        if self.table is None or not account_ids or any(map(is_spread, account_ids)):
            return GATEWAY
        return self.table.endpoint_of_slots(map(slot_of_id, account_ids))

    def records_target(self, transaction_ids: Sequence[str]) -> str:
        """Reads of transaction records by id: the node of their home when all of them have
        one home there; the gateway for a reserved id (`~...`: the cluster's own records,
        read where the gateway knows to look) or one that names no home (empty, too long: the
        gateway says what is wrong with it)."""
        if self.table is None or not transaction_ids:
            return GATEWAY
        if not all(map(_has_home, transaction_ids)):
            return GATEWAY
        return self.table.endpoint_of_slots(map(slot_of_id, transaction_ids))

    def note_applied_directly(self, unit: Sequence[pb.Transaction]) -> None:
        """A node applied these for us: its holds are single-shard, and their posts and voids
        can follow them to wherever their slots are."""
        if not self.options.hold_count_max:
            return
        for message in unit:
            if message.pending:
                self._holds[message.id] = _own_slots(message)
                self._holds.move_to_end(message.id)
        while len(self._holds) > self.options.hold_count_max:
            self._holds.popitem(last=False)

    def _transaction_slots(self, unit: Sequence[pb.Transaction]) -> set[int] | None:
        """Every slot the unit touches; None when it cannot be placed (it names a transaction
        this client did not see applied directly, or its ids do not share a partition key)."""
        if len({partition_key(m.id) for m in unit}) != 1:
            return None
        slots: set[int] = set()
        for message in unit:
            if message.reverses_id:
                return None
            held = message.post_pending_id or message.void_pending_id
            if held:
                hold_slots = self._holds.get(held)
                if hold_slots is None:
                    return None
                slots |= hold_slots
            slots |= _own_slots(message)
        return slots


def _has_home(transaction_id: str) -> bool:
    reserved = transaction_id.startswith(RESERVED_PREFIX)
    return 0 < len(transaction_id) <= ID_LENGTH_MAX and not reserved


def _own_slots(message: pb.Transaction) -> frozenset[int]:
    legs = (leg.account_id for leg in message.legs if not is_spread(leg.account_id))
    return frozenset({slot_of_id(message.id), *map(slot_of_id, legs)})
