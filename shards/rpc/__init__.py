"""shards.rpc: the gRPC plumbing every server shares (the node, the gateway, the audit server).

May import: core, core.store (docs/design.md, "Layout").

Public face, imported by other rooms: convert (protobuf <-> core.model; by shards.node,
shards.gateway and shards.crossshard), servicer (what every Ledger servicer shares: aborting an
RPC, the batch size check, the handler; by shards.node and shards.gateway), metrics (a process's
Prometheus registry and its HTTP server; by shards.node, shards.gateway and shards.audit) and
serving (the foreground life of a server process; by shards.audit and shards.cli) and broker
(one connection to the NATS broker; by shards.relay and shards.monitor).
"""
