"""What both benchmark suites use: CPU metering, the machine, the closed-loop harness,
workloads, the bench gRPC client, the row-locking ledger, a local `tally up` cluster."""
