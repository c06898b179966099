"""Shard nodes, the writer, the servicer and the `tally` command."""

import os

# The node forks short-lived helpers (pg_ctl); gRPC's fork handlers only add noise here.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
