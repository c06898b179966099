"""Benchmarks of Tally: `python -m bench.first` is the first one (see bench/first.py)."""

import os

# The bench forks helpers (pg_ctl, py-spy, git) while gRPC threads run; they exec at once and
# never use gRPC, so gRPC's fork handlers are not needed (and only print a warning).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
