"""shards.local: running Tally on one machine (embedded PostgreSQL, `tally up`, the supervisor).

May import: core, core.store, shards.rpc, shards.control (docs/design.md, "Layout").

Public face, imported by other rooms: embedded_pg (EmbeddedPostgres, free_port; by shards.cli
and bench), cluster (run_cluster and keep_postgres_running, `tally up`; by shards.cli),
data_lock (the lock `tally up` holds on its data directory; by shards.cli) and supervisor (the
one supervisor of `tally` child processes, and its restarts; by bench and the tests).
"""
