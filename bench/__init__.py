"""Benchmarks of Tally, run from a checkout (not shipped): two suites and what they share.

- bench.closed_loop: closed-loop measurements (`python -m bench.closed_loop.single_node`, the
  first benchmark; `bench.closed_loop.cluster`; `bench.closed_loop.audit_scale`);
- bench.locust: the Locust suite (`make bench` = `python -m bench.locust.suite`);
- bench.common: CPU metering, the machine, the closed-loop harness, workloads, the bench's gRPC
  client, the row-locking ledger and a local `tally up` cluster, used by both.
"""

import os

# The bench forks helpers (pg_ctl, py-spy, git) while gRPC threads run; they exec at once and
# never use gRPC, so gRPC's fork handlers are not needed (and only print a warning).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
