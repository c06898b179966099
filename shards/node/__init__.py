"""shards.node: one shard node, serving tally.v1.Ledger and tally.v1.Shard for one database.

May import: core, core.store, shards.rpc, shards.failpoints, shards.control, shards.crossshard;
never the gateway (docs/design.md, "Layout").

Public face, imported by other rooms: server (Node, NodeConfig; by shards.cli and bench) and
writer (WriterConfig; by shards.cli and bench). The rest is the node's own: ledger_service and
shard_service (the servicers), lease (the writer lease) and metrics.
"""
