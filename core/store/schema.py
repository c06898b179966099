"""Versioned schema migrations of a shard database, applied in order at start."""

from __future__ import annotations

from typing import Final


def _crc32_table() -> list[int]:
    """The 256 entries of the reflected CRC-32 (ISO-HDLC, zlib's) lookup table."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
        table.append(crc)
    return table


# core.slots.slot_of in SQL, for rows written before the slot column (migration 10): CRC-32 of
# the UTF-8 partition key (the text before the first '/'), modulo 4096. Table-driven, a byte a
# step; tests/core/test_schema_slots.py holds it equal to the Python one.
SLOT_BACKFILL_SQL: Final = (
    """
        CREATE OR REPLACE FUNCTION pg_temp.tally_slot(id text) RETURNS smallint
        LANGUAGE plpgsql IMMUTABLE STRICT AS $slot$
        DECLARE
            key bytea := convert_to(split_part(id, '/', 1), 'UTF8');
            crc bigint := 4294967295;
            t bigint[] := '{"""
    + ",".join(map(str, _crc32_table()))
    + """}'::bigint[];
        BEGIN
            FOR i IN 0 .. length(key) - 1 LOOP
                crc := (crc >> 8) # t[((crc # get_byte(key, i)) & 255) + 1];
            END LOOP;
            RETURN ((crc # 4294967295) % 4096)::smallint;
        END
        $slot$;
"""
)

MIGRATIONS: Final[tuple[tuple[int, str, str], ...]] = (
    (
        1,
        "ledger tables",
        """
        CREATE TABLE writer_lease (
            id integer PRIMARY KEY CHECK (id = 1),
            epoch bigint NOT NULL,
            holder text NOT NULL,
            acquired_at timestamptz NOT NULL DEFAULT now(),
            last_block_sequence bigint NOT NULL DEFAULT 0
        );
        INSERT INTO writer_lease (id, epoch, holder) VALUES (1, 0, '');

        CREATE TABLE accounts (
            id text PRIMARY KEY,
            currency text NOT NULL,
            code integer NOT NULL,
            flags integer NOT NULL,
            metadata text NOT NULL,
            created_at_ns bigint NOT NULL,
            closed_at_ns bigint NOT NULL,
            debits_posted bigint NOT NULL CHECK (debits_posted >= 0),
            credits_posted bigint NOT NULL CHECK (credits_posted >= 0),
            debits_pending bigint NOT NULL CHECK (debits_pending >= 0),
            credits_pending bigint NOT NULL CHECK (credits_pending >= 0),
            version bigint NOT NULL,
            block_sequence bigint NOT NULL
        ) WITH (fillfactor = 70);

        CREATE TABLE transactions (
            id text PRIMARY KEY,
            kind smallint NOT NULL,
            code integer NOT NULL,
            metadata text NOT NULL,
            value_date text NOT NULL,
            timeout_seconds integer NOT NULL,
            target_id text NOT NULL,
            legs text NOT NULL,
            applied_legs text NOT NULL,
            timestamp_ns bigint NOT NULL,
            status smallint NOT NULL,
            expires_at_ns bigint NOT NULL,
            resolved_by_id text NOT NULL,
            reversed_by_id text NOT NULL,
            block_sequence bigint NOT NULL
        );

        CREATE TABLE postings (
            sequence bigint PRIMARY KEY,
            transaction_id text NOT NULL,
            account_id text NOT NULL,
            is_debit boolean NOT NULL,
            posted_amount bigint NOT NULL,
            pending_delta bigint NOT NULL,
            timestamp_ns bigint NOT NULL,
            debits_posted_after bigint NOT NULL,
            credits_posted_after bigint NOT NULL,
            debits_pending_after bigint NOT NULL,
            credits_pending_after bigint NOT NULL,
            -- Set once per commit (SET LOCAL), so the writer can COPY its posting tuples as is.
            block_sequence bigint NOT NULL
                DEFAULT current_setting('tally.block_sequence')::bigint
        );
        CREATE INDEX postings_by_account ON postings (account_id, sequence);

        CREATE TABLE holds (
            transaction_id text PRIMARY KEY,
            expires_at_ns bigint NOT NULL
        );
        CREATE INDEX holds_by_expiry ON holds (expires_at_ns) WHERE expires_at_ns > 0;

        CREATE TABLE account_closures (
            account_id text PRIMARY KEY,
            closed_at_ns bigint NOT NULL,
            block_sequence bigint NOT NULL
        );

        CREATE TABLE journal_blocks (
            sequence bigint PRIMARY KEY,
            previous_hash bytea NOT NULL,
            hash bytea NOT NULL,
            epoch bigint NOT NULL,
            created_at_ns bigint NOT NULL,
            next_posting_sequence bigint NOT NULL,
            last_timestamp_ns bigint NOT NULL,
            account_count integer NOT NULL,
            transaction_count integer NOT NULL,
            posting_count integer NOT NULL,
            closure_count integer NOT NULL
        );
        """,
    ),
    (
        2,
        "journal order indexes for the audit and exports",
        # The audit streams transactions in block order (an index scan plus a per-block sort,
        # instead of sorting the whole table on disk) and reads again the rows written after a
        # block; exports select a period's blocks. block_sequence only grows, so inserts land
        # at the right edge, and B-tree deduplication stores each block number once with a list
        # of row pointers: about 7 bytes per transaction. Built once, at the next node start.
        """
        CREATE INDEX transactions_by_block ON transactions (block_sequence);
        CREATE INDEX accounts_by_block ON accounts (block_sequence);
        """,
    ),
    (
        3,
        "signed journal heads",
        # The writer's Ed25519 signature over each block's head (core/signing.py) and the id of
        # the key that made it; '' and an empty signature: an unsigned block (a node without a
        # key, or a block written before this migration). The key itself is never stored here.
        # Adding columns with constant defaults rewrites nothing (PostgreSQL 11+).
        """
        ALTER TABLE journal_blocks
            ADD COLUMN key_id text NOT NULL DEFAULT '',
            ADD COLUMN signature bytea NOT NULL DEFAULT ''::bytea;
        """,
    ),
    (
        4,
        "the shard this database belongs to",
        # Empty until a node first starts on the database, which records its --shard-id (0 for
        # a node without a control database); every later start compares and a node of another
        # shard refuses to start (shards/node/server.py), so it never serves this shard's rows
        # as another shard's slots. One row, never updated.
        """
        CREATE TABLE shard_identity (
            id integer PRIMARY KEY CHECK (id = 1),
            shard_id integer NOT NULL CHECK (shard_id >= 0),
            recorded_at timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    (
        5,
        "closures in journal order, for the change stream",
        # The change stream (core/store/stream.py) reads each page's closures by block; without
        # an index that is a scan of every closure ever recorded, for each page with one.
        # Closures are rare, so the index is small. (Its postings need none: a block's postings
        # are a range of the postings' key.)
        """
        CREATE INDEX account_closures_by_block ON account_closures (block_sequence);
        """,
    ),
    (
        6,
        "slot moves: the slots moved out and in, and the records moved in",
        # docs/design.md, "Moving slots". slot_moves: one row per slot and side of a move,
        # written in the same commit as its move-out or move-in block; a slot whose latest row
        # here is 'out' is refused by the writer, across restarts. moved_transactions: the
        # transaction records homed in slots moved in (the columns of transactions, plus the
        # move and its source), read by id with transactions and updated where they lie.
        """
        CREATE TABLE slot_moves (
            move_id text NOT NULL,
            slot integer NOT NULL CHECK (slot >= 0),
            direction text NOT NULL CHECK (direction IN ('out', 'in')),
            peer_shard integer NOT NULL CHECK (peer_shard >= 0),
            block_sequence bigint NOT NULL,
            PRIMARY KEY (move_id, slot, direction)
        );
        CREATE TABLE moved_transactions (LIKE transactions INCLUDING DEFAULTS);
        ALTER TABLE moved_transactions
            ADD PRIMARY KEY (id),
            ADD COLUMN move_id text NOT NULL DEFAULT '',
            ADD COLUMN source_shard integer NOT NULL DEFAULT 0;
        """,
    ),
    (
        7,
        "slot moves in pages",
        # docs/design.md, "Moving slots". A move's side is written in bounded blocks
        # (core.moves.MOVE_PAGE_ITEM_COUNT entries each); move_pages: one row per page
        # committed, in the same commit as its block, so a side interrupted between pages is
        # resumed from the next (the same move paged by the page size its first page was,
        # page_item_count, pages the same whatever the node's setting is now) and the audit
        # finds every block of a move's entries. Moves made before: one block, no rows here
        # (slot_moves names it).
        """
        CREATE TABLE move_pages (
            move_id text NOT NULL,
            direction text NOT NULL CHECK (direction IN ('out', 'in')),
            page integer NOT NULL CHECK (page >= 0),
            page_item_count integer NOT NULL CHECK (page_item_count >= 1),
            block_sequence bigint NOT NULL,
            PRIMARY KEY (move_id, direction, page)
        );
        """,
    ),
    (
        8,
        "slot moves staged at the target",
        # docs/design.md, "Moving slots". What a target is given of a move before its move-in,
        # page by page (StageMoveIn): each account or record as it came on the wire, keyed by
        # its id, so a page given again stages nothing new. Read whole by the move-in, which
        # checks it against the source's totals, and deleted in the move-in's last commit.
        """
        CREATE TABLE move_staging (
            move_id text NOT NULL,
            part text NOT NULL CHECK (part IN ('account', 'record')),
            item_id text NOT NULL,
            body bytea NOT NULL,
            PRIMARY KEY (move_id, part, item_id)
        );
        """,
    ),
    (
        9,
        "cold segments: the journal blocks whose records left PostgreSQL",
        # docs/design.md, "Cold history". One row per segment the archiver has moved out
        # (core/store/cold/archive.py remove_archived), committed in the same transaction that
        # deletes the segment's postings and transactions rows: a block is cold exactly when a
        # row here covers it, and then its records are read from the segment (its
        # journal_blocks row stays: the database's witness of the chain). Rows are contiguous
        # from block 1. next_posting_sequence: the first posting sequence not in the segment,
        # so the hot postings begin at the last row's. id_hashes: the 64-bit hashes of every
        # transaction id the segment holds (core.store.cold.history.id_hash), under a GIN
        # index, so a transaction id no hot row has is looked for in one probe (a new id is a
        # miss that reads no heap) before a segment is opened.
        """
        CREATE TABLE cold_segments (
            last_block bigint PRIMARY KEY,
            first_block bigint NOT NULL CHECK (first_block >= 1 AND first_block <= last_block),
            name text NOT NULL UNIQUE,
            manifest_digest text NOT NULL,
            first_posting_sequence bigint NOT NULL,
            next_posting_sequence bigint NOT NULL
                CHECK (next_posting_sequence >= first_posting_sequence),
            id_hashes bigint[] NOT NULL,
            archived_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX cold_segments_by_id_hash ON cold_segments USING gin (id_hashes)
            WITH (fastupdate = off);
        """,
    ),
    (
        10,
        "a slot column for slot moves",
        # docs/design.md, "Moving slots". Every account and transaction row (moved ones too)
        # carries its id's slot (core.slots.account_slot / transaction_slot: CRC-32 of the
        # partition key, modulo 4096), written by the writer with the row, under an index, so a
        # move reads just its slots' rows (one index read) instead of scanning both tables in
        # the source's writer step. Few distinct keys, so B-tree deduplication keeps each slot
        # once with a list of row pointers: some 7 bytes a row. Rows written before are given
        # theirs here, by the same CRC-32 in SQL (a function of this session only, pg_temp).
        SLOT_BACKFILL_SQL
        + """
        ALTER TABLE accounts ADD COLUMN slot smallint;
        UPDATE accounts SET slot = pg_temp.tally_slot(id);
        ALTER TABLE accounts ALTER COLUMN slot SET NOT NULL;
        CREATE INDEX accounts_by_slot ON accounts (slot);
        ALTER TABLE transactions ADD COLUMN slot smallint;
        UPDATE transactions SET slot = pg_temp.tally_slot(id);
        ALTER TABLE transactions ALTER COLUMN slot SET NOT NULL;
        CREATE INDEX transactions_by_slot ON transactions (slot);
        ALTER TABLE moved_transactions ADD COLUMN slot smallint;
        UPDATE moved_transactions SET slot = pg_temp.tally_slot(id);
        ALTER TABLE moved_transactions ALTER COLUMN slot SET NOT NULL;
        CREATE INDEX moved_transactions_by_slot ON moved_transactions (slot);
        DROP FUNCTION pg_temp.tally_slot(text);
        """,
    ),
    (
        11,
        "the legs stored once",
        # Issue 13 (docs/design.md, "The compact journal"). A record's applied legs are its
        # legs as submitted for all but those whose applied legs come from another record (a
        # hold's post or void, a piece's settlement, a reversal); written twice they were
        # some 50 bytes of a two-leg transfer's row (a live tuple of 233 B, now 184). Now
        # applied_legs is NULL when it is the legs (core.journal.stored_applied_legs), and
        # every read takes the legs then (COALESCE(applied_legs, legs) in SQL). Rows written
        # before keep both texts, which read the same: rewriting every row here would cost a
        # full copy of the table and free no space until a VACUUM FULL (dropping NOT NULL
        # rewrites nothing).
        """
        ALTER TABLE transactions ALTER COLUMN applied_legs DROP NOT NULL;
        ALTER TABLE moved_transactions ALTER COLUMN applied_legs DROP NOT NULL;
        """,
    ),
)

CONTROL_MIGRATIONS: Final[tuple[tuple[int, str, str], ...]] = (
    (
        1,
        "shards and the slot map",
        """
        CREATE TABLE shards (
            shard_id integer PRIMARY KEY CHECK (shard_id >= 0),
            endpoint text NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE slot_map (
            id integer PRIMARY KEY CHECK (id = 1),
            version bigint NOT NULL,
            owners integer[] NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    (
        2,
        "the writer epoch of each shard's endpoint",
        # A shard's endpoint is registered by its writer once it holds the lease, with the
        # lease's epoch; a registration of an older epoch never overwrites a newer one
        # (core/store/control.py). Endpoints registered before: epoch 0, which any writer's
        # registration replaces.
        """
        ALTER TABLE shards ADD COLUMN epoch bigint NOT NULL DEFAULT 0 CHECK (epoch >= 0);
        """,
    ),
    (
        3,
        "slot moves and their steps",
        # One row per slot move (docs/design.md, "Moving slots"): its slots, source, target,
        # the map version it started from and the step it reached (planned, out, in, done, or
        # abandoned before its move-out). The mover resumes an unfinished move from here.
        """
        CREATE TABLE slot_moves (
            move_id text PRIMARY KEY,
            slots integer[] NOT NULL,
            source_shard integer NOT NULL CHECK (source_shard >= 0),
            target_shard integer NOT NULL CHECK (target_shard >= 0),
            from_version bigint NOT NULL,
            state text NOT NULL
                CHECK (state IN ('planned', 'out', 'in', 'done', 'abandoned')),
            -- When the source committed its move-out: writes to the slots wait from then on.
            out_at timestamptz,
            pause_ms double precision NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    (
        4,
        "each shard's client endpoint",
        # Where clients reach the shard's node directly (its Ledger listener), registered by
        # the writer with its internal endpoint and epoch, in the same statement; the gateway
        # serves it in GetRouting (docs/design.md, "The client library"). Rows registered
        # before: '', no direct route until the writer registers again.
        """
        ALTER TABLE shards ADD COLUMN client_endpoint text NOT NULL DEFAULT '';
        """,
    ),
    (
        5,
        "the copy of a slot move, page by page",
        # The mover's progress copying a move's accounts and records from its source to its
        # target (shards/cli/slots.py): the part being copied (1 accounts, 2 records, 3 both
        # done), the last id staged and how many, so `tally slots resume` goes on from there.
        """
        ALTER TABLE slot_moves
            ADD COLUMN copy_part integer NOT NULL DEFAULT 0 CHECK (copy_part BETWEEN 0 AND 3),
            ADD COLUMN copy_after_id text NOT NULL DEFAULT '',
            ADD COLUMN copied_count bigint NOT NULL DEFAULT 0 CHECK (copied_count >= 0);
        """,
    ),
    (
        6,
        "the pre-copy of a slot move, before its fence",
        # The mover's progress pre-copying a planned move's records (shards/cli/slots.py): the
        # source's last block in the snapshot of the first page (-1: none read yet), the part
        # (2 records, 3 done; 0 not begun), the last id staged and how many; after the fence
        # only what changed since that block is copied. Moves recorded before: not pre-copied,
        # copied in full as before.
        """
        ALTER TABLE slot_moves
            ADD COLUMN precopy_sequence bigint NOT NULL DEFAULT -1 CHECK (precopy_sequence >= -1),
            ADD COLUMN precopy_part integer NOT NULL DEFAULT 0
                CHECK (precopy_part IN (0, 2, 3)),
            ADD COLUMN precopy_after_id text NOT NULL DEFAULT '',
            ADD COLUMN precopied_count bigint NOT NULL DEFAULT 0 CHECK (precopied_count >= 0);
        """,
    ),
)

BOOTSTRAP_SQL: Final = """
CREATE TABLE IF NOT EXISTS tally_schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

# Serialises migrations when several processes start on one database at once.
MIGRATION_LOCK_KEY: Final = 7_471_001
# Held by the one writer of a shard database for as long as it writes.
WRITER_LEASE_LOCK_KEY: Final = 7_471_002
