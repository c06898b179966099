"""The closed-loop benchmarks: a fixed number of clients, each sending its next call when the
last is answered (single node against the row-locking ledger, the cluster, the audit at scale)."""
