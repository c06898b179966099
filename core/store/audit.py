"""The audit's SQL: every statement the audit's checks run against a shard database, read-only.

The auditor's other tools have theirs next door: core.store.export (the journal export) and
core.store.statement (an account's statement).

The journal's five streams are ordered as the journal pass merges them (block by block); rows
the audit reads by position have their column positions named here, next to their statement.
Cross-shard rows are keyed by attempt in SQL (cross_shard_rows_sql), so that each shard's
attempts stream in the one order every shard shares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from core import ids
from core.model import Kind

# ---- one shard's sizes, for progress ----

SIZES_SQL: Final = """
SELECT (SELECT count(*) FROM accounts) AS accounts,
       (SELECT coalesce(max(sequence), 0) FROM postings) AS postings
"""
POSTING_TOTAL_SQL: Final = "SELECT coalesce(max(sequence), 0) FROM postings"
# Whether a database has a Tally shard's schema at all (the service's start-up probe).
PROBE_SQL: Final = "SELECT 1 FROM journal_blocks LIMIT 1"

# ---- the journal pass: five streams in block order ----

BLOCKS_SQL: Final = """
SELECT sequence, previous_hash, hash, epoch, next_posting_sequence, account_count,
       transaction_count, posting_count, closure_count, key_id, signature
FROM journal_blocks ORDER BY sequence
"""
ACCOUNTS_SQL: Final = """
SELECT block_sequence, id, currency, code, flags, metadata, created_at_ns
FROM accounts ORDER BY block_sequence, created_at_ns, id
"""
_TRANSACTION_COLUMNS: Final = """
SELECT block_sequence, id, kind, code, metadata, value_date, timeout_seconds, target_id, legs,
       COALESCE(applied_legs, legs) AS applied_legs, timestamp_ns
FROM transactions"""
# Block 0 is no block: a revived row's (core.store.shard.REVIVED_BLOCK_SEQUENCE, a cold
# transaction written hot again when it changed), which REVIVED_SQL reads apart.
TRANSACTIONS_SQL: Final = f"""{_TRANSACTION_COLUMNS}
WHERE block_sequence <> 0 ORDER BY block_sequence, timestamp_ns, id
"""
REVIVED_SQL: Final = f"{_TRANSACTION_COLUMNS} WHERE block_sequence = 0 ORDER BY id"
POSTINGS_SQL: Final = """
SELECT sequence, transaction_id, account_id, CASE WHEN is_debit THEN 'D' ELSE 'C' END,
       posted_amount, pending_delta, timestamp_ns, debits_posted_after, credits_posted_after,
       debits_pending_after, credits_pending_after, block_sequence
FROM postings ORDER BY sequence
"""
CLOSURES_SQL: Final = """
SELECT block_sequence, account_id, closed_at_ns
FROM account_closures ORDER BY block_sequence, closed_at_ns, account_id
"""
# Column positions in the posting rows above (the hashed columns are those before P_BLOCK).
P_SEQUENCE, P_TRANSACTION, P_ACCOUNT, P_SIDE, P_POSTED, P_PENDING, P_TIME = range(7)
P_BLOCK: Final = 11
# Column positions in the transaction rows above.
T_ID, T_KIND, T_TARGET, T_APPLIED, T_TIME = 1, 2, 7, 9, 10
# The applied legs of holds a block's posts resolve but the pass no longer remembers: $1 the
# hold ids, $2 the kinds that hold.
HELD_LEGS_SQL: Final = (
    "SELECT id, COALESCE(applied_legs, legs) AS applied_legs FROM transactions "
    "WHERE id = ANY($1::text[]) AND kind = ANY($2::smallint[]) UNION ALL "
    # a hold moved in with slots, posted here
    "SELECT id, COALESCE(applied_legs, legs) AS applied_legs FROM moved_transactions "
    "WHERE id = ANY($1::text[]) "
    "AND kind = ANY($2::smallint[])"
)
LEASE_LAST_BLOCK_SQL: Final = "SELECT last_block_sequence FROM writer_lease WHERE id = 1"
# $1: the block.
BLOCK_HASH_HEX_SQL: Final = "SELECT encode(hash, 'hex') FROM journal_blocks WHERE sequence = $1"

# ---- accounts: counters against the sums of their postings ----


def _account_sums_sql(where: str) -> str:
    return f"""
SELECT coalesce(a.id, s.account_id) AS id, a.id IS NOT NULL AS known, a.currency, a.flags,
       a.closed_at_ns, a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending,
       coalesce(s.dp, 0) AS sum_dp, coalesce(s.cp, 0) AS sum_cp,
       coalesce(s.dq, 0) AS sum_dq, coalesce(s.cq, 0) AS sum_cq,
       coalesce(s.posting_count, 0) AS posting_count
FROM accounts a FULL JOIN (
    SELECT account_id,
           sum(posted_amount) FILTER (WHERE is_debit) AS dp,
           sum(posted_amount) FILTER (WHERE NOT is_debit) AS cp,
           sum(pending_delta) FILTER (WHERE is_debit) AS dq,
           sum(pending_delta) FILTER (WHERE NOT is_debit) AS cq,
           count(*) AS posting_count
    FROM postings {where} GROUP BY account_id
) s ON s.account_id = a.id
"""


ACCOUNT_SUMS_SQL: Final = _account_sums_sql("")
# With cold history: the sums of the hot postings from sequence $1 (the first hot one) on; the
# cold ones' are added from the segments (core.audit.cold).
ACCOUNT_SUMS_FROM_SQL: Final = _account_sums_sql("WHERE sequence >= $1")
# Per currency, the sums of the accounts' counters (the service's TrialBalance).
TRIAL_BALANCE_SQL: Final = """
SELECT currency, sum(debits_posted)::numeric AS dp, sum(credits_posted)::numeric AS cp,
       sum(debits_pending)::numeric AS dq, sum(credits_pending)::numeric AS cq
FROM accounts GROUP BY currency ORDER BY currency
"""

# ---- balance-after chains: only the broken links come back ----


def _chains_sql(where: str, first_links: bool) -> str:
    keep = "previous_sequence IS NULL\n   OR " if first_links else ""
    return f"""
SELECT sequence, transaction_id, account_id, is_debit, posted_amount, pending_delta,
       dp, cp, dq, cq, pdp, pcp, pdq, pcq, previous_sequence
FROM (
    SELECT sequence, transaction_id, account_id, is_debit, posted_amount, pending_delta,
           debits_posted_after AS dp, credits_posted_after AS cp,
           debits_pending_after AS dq, credits_pending_after AS cq,
           coalesce(lag(debits_posted_after) OVER w, 0) AS pdp,
           coalesce(lag(credits_posted_after) OVER w, 0) AS pcp,
           coalesce(lag(debits_pending_after) OVER w, 0) AS pdq,
           coalesce(lag(credits_pending_after) OVER w, 0) AS pcq,
           lag(sequence) OVER w AS previous_sequence
    FROM postings {where} WINDOW w AS (PARTITION BY account_id ORDER BY sequence)
) p
-- numeric: a tampered row must not overflow bigint and abort the audit.
WHERE {keep}dp::numeric <> pdp::numeric + CASE WHEN is_debit THEN posted_amount ELSE 0 END
   OR cp::numeric <> pcp::numeric + CASE WHEN is_debit THEN 0 ELSE posted_amount END
   OR dq::numeric <> pdq::numeric + CASE WHEN is_debit THEN pending_delta ELSE 0 END
   OR cq::numeric <> pcq::numeric + CASE WHEN is_debit THEN 0 ELSE pending_delta END
ORDER BY sequence
"""


CHAINS_SQL: Final = _chains_sql("", first_links=False)
# With cold history: the hot postings from sequence $1 on, with every account's first one
# there (its link is to its last cold posting, which the caller knows, not to zero).
CHAINS_FROM_SQL: Final = _chains_sql("WHERE sequence >= $1", first_links=True)

# ---- holds ----

HOLDS_SQL: Final = """
SELECT h.transaction_id, h.expires_at_ns, t.kind, t.status, t.expires_at_ns AS recorded_ns
FROM holds h LEFT JOIN (
    SELECT id, kind, status, expires_at_ns FROM transactions
    UNION ALL  -- open holds moved in with slots
    SELECT id, kind, status, expires_at_ns FROM moved_transactions
) t ON t.id = h.transaction_id
ORDER BY h.transaction_id
"""
# $1: the pending status.
PENDING_WITHOUT_HOLD_SQL: Final = """
SELECT id, expires_at_ns FROM (
    SELECT id, expires_at_ns, status FROM transactions
    UNION ALL
    SELECT id, expires_at_ns, status FROM moved_transactions
) t
WHERE status = $1 AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.transaction_id = t.id)
ORDER BY id
"""

# ---- cross-shard attempts, keyed ----


def _prefix_before_attempt(build: Callable[[str, str], str]) -> str:
    """What a core.ids builder of an attempt's ids writes before "<attempt>/<T>"."""
    return build("T", "0").removesuffix("0/T")


# An attempt's key is its piece id or abort marker without these prefixes (core.ids.piece_id,
# core.ids.abort_marker_id): "<attempt>/<T>" for both. Rows written before attempts existed
# (piece id T itself, abort marker MARKER_PREFIX + T) key as T.
PIECE_PREFIX: Final = _prefix_before_attempt(ids.piece_id)
MARKER_PREFIX: Final = _prefix_before_attempt(ids.abort_marker_id)
# What resolves a held piece or a cross-shard hold: its post, void or expiry.
RESOLUTION_KINDS: Final = (Kind.POST_PENDING, Kind.VOID_PENDING, Kind.EXPIRY)


def _key_sql(column: str, prefix: str) -> str:
    return (
        f"CASE WHEN {column} LIKE '{prefix}%' THEN substr({column}, {len(prefix) + 1}) "
        f"ELSE {column} END"
    )


# The id of a move-in's entry raising an open record again: HEAD <move> MIDDLE <record>.
_RAISE_HEAD, _RAISE_REST = ids.move_in_hold_id("M", "X").split("M", 1)
_RAISE_MIDDLE = _RAISE_REST.removesuffix("X")


def cross_shard_rows_sql(since: str) -> str:
    """Every row of a cross-shard attempt, with its key; `since` is appended to both parts'
    WHERE, "{table}" in it naming the part's table."""
    commit, abort, prepared = int(Kind.COMMIT), int(Kind.ABORT), int(Kind.PREPARED)
    hold, deadline = int(Kind.HOLD), int(Kind.DEADLINE)
    resolutions = ", ".join(str(int(kind)) for kind in RESOLUTION_KINDS)
    # A decision (COMMIT, HOLD: keyed by their abort marker; ABORT), a piece (PREPARED) or its
    # deadline record (DEADLINE: keyed by the piece); then the resolutions of pieces and of
    # holds (keyed by what they resolve), with what that held.
    return f"""
SELECT CASE WHEN t.kind IN ({commit}, {hold}) THEN {_key_sql("t.target_id", MARKER_PREFIX)}
            WHEN t.kind = {abort} THEN {_key_sql("t.id", MARKER_PREFIX)}
            WHEN t.kind = {deadline} THEN {_key_sql("t.target_id", PIECE_PREFIX)}
            ELSE {_key_sql("t.id", PIECE_PREFIX)} END AS key,
       t.id, t.kind, t.target_id, COALESCE(t.applied_legs, t.legs) AS applied_legs,
       t.expires_at_ns, NULL::text AS held_legs,
       NULL::smallint AS target_kind, t.timestamp_ns, t.timeout_seconds, t.block_sequence,
       CASE WHEN t.kind = {deadline} THEN t.metadata END AS metadata, FALSE AS moved_in
FROM transactions t
WHERE t.kind IN ({prepared}, {commit}, {abort}, {hold}, {deadline}){since.format(table="t")}
UNION ALL
SELECT CASE WHEN p.kind = {hold} THEN {_key_sql("p.target_id", MARKER_PREFIX)}
            ELSE {_key_sql("p.id", PIECE_PREFIX)} END,
       r.id, r.kind, r.target_id, COALESCE(r.applied_legs, r.legs), r.expires_at_ns,
       COALESCE(p.applied_legs, p.legs), p.kind,
       r.timestamp_ns, r.timeout_seconds, r.block_sequence, NULL::text, FALSE
FROM transactions r JOIN (
    SELECT id, kind, target_id, applied_legs, legs FROM transactions
    UNION ALL  -- held pieces moved in with their accounts' slots
    SELECT id, kind, target_id, applied_legs, legs FROM moved_transactions
) p ON p.id = r.target_id AND p.kind IN ({prepared}, {hold})
WHERE r.kind IN ({resolutions}){since.format(table="r")}
UNION ALL
SELECT CASE WHEN m.kind = {hold} THEN {_key_sql("m.target_id", MARKER_PREFIX)}
            ELSE {_key_sql("m.id", PIECE_PREFIX)} END,
       m.id, m.kind, m.target_id, COALESCE(m.applied_legs, m.legs), m.expires_at_ns,
       NULL::text, NULL::smallint,
       m.timestamp_ns, m.timeout_seconds, 0::bigint, NULL::text, TRUE
FROM moved_transactions m
WHERE m.kind IN ({prepared}, {hold}) AND EXISTS (
    SELECT 1 FROM transactions e
    WHERE e.id = '{_RAISE_HEAD}' || m.move_id || '{_RAISE_MIDDLE}' || m.id
)
"""


# A held piece moved in with its accounts, or a cross-shard hold's record with its slot, open
# (moved_in: its move-in raised it; a settled hold's record moves as any record does, and its
# attempt is judged where it was decided), is this shard's from its move-in on: it sorts first
# among its attempt's rows (block 0), and holds here the amounts its move-in's entry held again
# (that entry, kind PENDING, is no row of an attempt). It is read in every snapshot, the later
# ones too: folding it again changes nothing.


def marker_of_key(key: str) -> str:
    """The abort marker whose key is `key` (the inverse of the key SQL's marker case)."""
    return MARKER_PREFIX + key


# Within an attempt, its rows in the order they were written (a piece's deadline records).
_ROW_ORDER: Final = 'key COLLATE "C", block_sequence, timestamp_ns, id COLLATE "C"'
# Every attempt with rows on the shard, in key order (byte order, as Python compares strings).
CROSS_SHARD_SQL: Final = f"SELECT * FROM ({cross_shard_rows_sql('')}) x ORDER BY {_ROW_ORDER}"
# The rows of the given attempts ($2, keys) recorded after block $1.
CROSS_SHARD_AGAIN_SQL: Final = (
    f"SELECT * FROM ({cross_shard_rows_sql(' AND {table}.block_sequence > $1')}) x "
    f"WHERE key = ANY($2::text[]) ORDER BY {_ROW_ORDER}"
)

# ---- slot moves (core.audit.moves) ----

# Each move with a side here: its direction, the other side's shard, its slots' count.
MOVE_SIDES_SQL: Final = """
SELECT move_id, direction, min(peer_shard) AS peer_shard, count(*) AS slot_count
FROM slot_moves GROUP BY move_id, direction ORDER BY move_id, direction
"""
# The moves' own entries (core.ids: ~moveout/M/X, ~movein/M/X), streamed: each side of a move
# is one block or more, which its slot_moves rows and its move_pages rows (shard migration 7)
# name, so they are found through transactions_by_block rather than by a scan of the table
# (an entry outside those blocks shows in the slot-move accounts' counters, which then exceed
# the entries' sums).
MOVE_ENTRIES_SQL: Final = """
SELECT id, metadata, COALESCE(applied_legs, legs) AS applied_legs FROM transactions
WHERE block_sequence IN (
    SELECT block_sequence FROM slot_moves UNION SELECT block_sequence FROM move_pages
)
  AND (id LIKE '~moveout/%' OR id LIKE '~movein/%')
ORDER BY id
"""
# The slot-move accounts' posted counters, read by name.
MOVES_ACCOUNTS_SQL: Final = """
SELECT id, currency, debits_posted, credits_posted FROM accounts WHERE id LIKE '@moves/%'
ORDER BY id
"""
# The records move $1 brought here (the columns of core.store.shard.transaction_from_row).
MOVED_RECORDS_SQL: Final = """
SELECT id, kind, code, metadata, value_date, timeout_seconds, target_id, legs, applied_legs,
       timestamp_ns, status, expires_at_ns, resolved_by_id, reversed_by_id
FROM moved_transactions WHERE move_id = $1 ORDER BY id
"""
# Whether side $2 of move $1 is here now (a move caught between two shards' snapshots).
MOVE_SIDE_SQL: Final = "SELECT count(*) FROM slot_moves WHERE move_id = $1 AND direction = $2"

# ---- cross-shard rows of cold blocks (core.audit.cold_crossshard) ----

# The pieces and holds $1 resolutions of cold blocks resolve (always hot: `~` ids, or holds,
# which stay hot once resolved); $2: the kinds that are pieces or holds.
RESOLVED_TARGETS_SQL: Final = """
SELECT id, kind, target_id, COALESCE(applied_legs, legs) AS applied_legs FROM transactions
WHERE id = ANY($1::text[]) AND kind = ANY($2::smallint[])
"""
# Which of ids $1 have a row in the tables (kept hot or revived): CROSS_SHARD_SQL has those.
HOT_IDS_SQL: Final = "SELECT id FROM transactions WHERE id = ANY($1::text[])"
