"""shards.audit: the auditor's processes: the read-only tally.v1.Audit server and the commands.

May import: core, core.store, core.audit, shards.rpc (docs/design.md, "Layout").

Public face, imported by other rooms: commands (`tally audit`, export, verify-export,
reconcile, statement; by shards.cli and bench) and server (`tally audit-serve`; by shards.cli).
"""
