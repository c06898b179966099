"""The journal export's SQL: every statement core.audit.exporter runs against a shard, read-only.

Each file's query selects that file's columns in the order core.audit.export.SCHEMAS gives them
(the exporter writes each row as it comes), sorted as the journal orders them. The journal's
files and the blocks are selected by a block range ($1..$2, inclusive), the postings and the
balances by a posting range [$1, $2).
"""

from __future__ import annotations

from typing import Final

# ---- the block range of a selection ----

# The last block of the journal (0: none yet).
LAST_BLOCK_SQL: Final = "SELECT coalesce(max(sequence), 0) FROM journal_blocks"
# The first and last block created in [$1, $2) (ns; $2 = 0: unbounded), read by name.
PERIOD_BLOCKS_SQL: Final = """
SELECT min(sequence) AS first, max(sequence) AS last FROM journal_blocks
WHERE created_at_ns >= $1::bigint AND ($2::bigint = 0 OR created_at_ns < $2::bigint)
"""
# The last block created before $1 (ns; 0: none).
LAST_BLOCK_BEFORE_SQL: Final = (
    "SELECT coalesce(max(sequence), 0) FROM journal_blocks WHERE created_at_ns < $1::bigint"
)
# Block $1's hash (hex) and the posting sequence after its postings, read by name.
BLOCK_HEAD_SQL: Final = """
SELECT encode(hash, 'hex') AS hash, next_posting_sequence
FROM journal_blocks WHERE sequence = $1
"""

# ---- the files: blocks and the journal's rows by block range ----

BY_BLOCK_SQL: Final = {
    "blocks": """
        SELECT sequence, encode(previous_hash, 'hex'), encode(hash, 'hex'), epoch,
               created_at_ns, next_posting_sequence, last_timestamp_ns, account_count,
               transaction_count, posting_count, closure_count, key_id,
               encode(signature, 'hex')
        FROM journal_blocks WHERE sequence BETWEEN $1 AND $2 ORDER BY sequence""",
    "accounts": """
        SELECT block_sequence, id, currency, code, flags, metadata, created_at_ns
        FROM accounts WHERE block_sequence BETWEEN $1 AND $2
        ORDER BY block_sequence, created_at_ns, id""",
    "transactions": """
        SELECT block_sequence, id, kind, code, metadata, value_date, timeout_seconds,
               target_id, legs, COALESCE(applied_legs, legs), timestamp_ns
        FROM transactions WHERE block_sequence BETWEEN $1 AND $2
        ORDER BY block_sequence, timestamp_ns, id""",
    "closures": """
        SELECT block_sequence, account_id, closed_at_ns
        FROM account_closures WHERE block_sequence BETWEEN $1 AND $2
        ORDER BY block_sequence, closed_at_ns, account_id""",
}

# ---- the files: postings and balances by posting range ----

BY_POSTING_SQL: Final = {
    "postings": """
        SELECT block_sequence, sequence, transaction_id, account_id,
               CASE WHEN is_debit THEN 'D' ELSE 'C' END, posted_amount, pending_delta,
               timestamp_ns, debits_posted_after, credits_posted_after, debits_pending_after,
               credits_pending_after
        FROM postings WHERE sequence >= $1 AND sequence < $2 ORDER BY sequence""",
    # Opening: the balance-after of the account's last posting before the period (the ledger's
    # own record, so a break in the chain at the period's start shows in the verifier).
    "balances": """
        WITH touched AS (
            SELECT account_id, count(*) AS posting_count, max(sequence) AS last_sequence
            FROM postings WHERE sequence >= $1 AND sequence < $2 GROUP BY account_id
        )
        SELECT t.account_id, coalesce(a.currency, ''),
               coalesce(o.debits_posted_after, 0), coalesce(o.credits_posted_after, 0),
               coalesce(o.debits_pending_after, 0), coalesce(o.credits_pending_after, 0),
               l.debits_posted_after, l.credits_posted_after, l.debits_pending_after,
               l.credits_pending_after, t.posting_count
        FROM touched t
        LEFT JOIN accounts a ON a.id = t.account_id
        LEFT JOIN LATERAL (
            SELECT * FROM postings p WHERE p.account_id = t.account_id AND p.sequence < $1
            ORDER BY p.sequence DESC LIMIT 1
        ) o ON true
        JOIN postings l ON l.sequence = t.last_sequence
        ORDER BY t.account_id""",
}

# ---- with cold history (core.audit.cold_export): the balances file's parts ----

# The ids $1 in the order the balances file lists its accounts (the database's order of text).
ORDERED_IDS_SQL: Final = "SELECT i FROM unnest($1::text[]) AS i ORDER BY i"
# The currencies of accounts $1.
CURRENCIES_SQL: Final = "SELECT id, currency FROM accounts WHERE id = ANY($1::text[])"
# Each of accounts $1's last hot posting before sequence $3, from sequence $2 (the first hot
# one) on.
LAST_HOT_BEFORE_SQL: Final = """
SELECT DISTINCT ON (account_id) account_id, debits_posted_after, credits_posted_after,
       debits_pending_after, credits_pending_after
FROM postings WHERE account_id = ANY($1::text[]) AND sequence >= $2 AND sequence < $3
ORDER BY account_id, sequence DESC
"""
