"""shards.crossshard: the cross-shard protocol, both sides (docs/cross-shard.md).

May import: core, core.store, shards.rpc, shards.failpoints (docs/design.md, "Layout").

Public face, imported by other rooms: coordinator (the side the gateway drives: Driver, Unit,
HoldResolution, piece_message; by shards.gateway) and participant (a shard's side: the records
it applies as a participant or as the coordinator, and its sweep of pieces past their deadline;
by shards.node).
"""
