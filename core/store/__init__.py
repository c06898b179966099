"""core.store: all SQL against the shard and control databases.

May import: core, asyncpg, pyarrow (core.store.cold only) (docs/design.md, "Layout").

Public face, imported by other rooms: shard (a shard database: bulk loads, the one-transaction
batch commit, reads; used by shards.node), control (the slot map and shard endpoints; by
shards.control, shards.node and shards.local), lease (the writer lease's statements; by
shards.node), audit (the audit's read-only queries; by core.audit and shards.audit), export
(the journal export's queries; by core.audit.exporter) and statement (an account statement's
queries; by core.audit.statement). cold (cold segments of old journal history, on pyarrow: the
format, writing, verification and reads; nothing imports it yet).
schema (versioned migrations and the advisory lock keys) is theirs: shard and control apply
its migrations, lease uses its lock key; no other room imports it.
"""
