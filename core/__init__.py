"""core: the ledger as a library, pure (no database driver, gRPC, subprocess or OS process API).

May import: nothing outside the standard library (docs/design.md, "Layout"; tests/test_layout.py
holds it). core.store, core.audit and core.flows are rooms of their own, above this one.

Public face: every module, each imported by the rooms above by its full path: model (the
domain types), ids (reserved ids: builders and parsers), pieces (the cross-shard protocol's
records), money (amounts as text), currencies, limits, invariant, validation, state (the state
machine), journal (canonical encodings, the block hash chain), slots (partition keys, slots,
the slot map) and dsn (DSN secrets: redacted from a DSN, scrubbed from any text).
"""
