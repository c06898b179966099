"""shards.gateway: the stateless gateway serving the whole tally.v1.Ledger API of a cluster.

May import: core, shards.rpc, shards.failpoints, shards.control, shards.crossshard; never the
node (docs/design.md, "Layout").

Public face, imported by other rooms: server (Gateway; by shards.cli) and cluster
(GatewayConfig; by shards.cli). The rest is the gateway's own: ledger_service (the servicer),
routing (which shards a unit needs), history (an account's history across slot moves), links
(a link per shard, coalescing) and metrics.
"""
