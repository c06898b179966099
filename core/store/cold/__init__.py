"""core.store.cold: cold segments, the journal's old history out of PostgreSQL.

A segment is a directory of zstd-compressed Parquet files holding a contiguous run of one
shard's journal blocks with everything they created, and a manifest that names the run's first
and last hashes, each file's size and SHA-256, and the previous segment's manifest digest, so
the hash chain (and each block's signature) verifies end to end across segments and the
database (docs/design.md, "Cold segments (format)").

May import: core, core.store, pyarrow.

Public face: format (ColdBlock, ColdTransaction, Manifest, the files' schemas; a block from
what core.store.stream reads), write (write_segment), verify (verify_segment, verify_chain,
Finding) and read (Segment: blocks of a range, an account's postings, balance at a time, a
transaction by id; segment_paths: a directory's segments in journal order), catalog (the
cold_segments rows), archive (the archiver: archive, remove_archived, archive_and_remove) and
history (ColdHistory, HotHistory: a shard's reads wherever its records lie; docs/design.md,
"Cold history").
"""
