"""shards: the processes of Tally, a room per process or shared concern.

Rooms, lowest first (docs/design.md, "Layout", says what each may import): shards.failpoints,
shards.rpc (gRPC plumbing), shards.control (the control-plane client), shards.crossshard (the
cross-shard protocol), shards.node, shards.gateway, shards.audit, shards.local (Tally on one
machine) and shards.cli (the `tally` command). Each room's __init__ names its public face.

This package itself imports nothing of the product; it only turns gRPC's fork support off,
below: importing any room runs it first, before the room loads gRPC.
"""

import os

# The node forks short-lived helpers (pg_ctl); gRPC's fork handlers only add noise here.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
