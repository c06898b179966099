"""An account statement's SQL: every statement core.audit.statement runs against a shard.

Read-only, one account at a time, inside the caller's snapshot. Rows are read by column name,
except a balance's, read by position: debits posted, credits posted, debits pending, credits
pending (BALANCE_BEFORE_SQL's column order).
"""

from __future__ import annotations

from typing import Final

# $1: the account.
ACCOUNT_SQL: Final = """
SELECT id, currency, code, flags, metadata, created_at_ns, closed_at_ns
FROM accounts WHERE id = $1
"""
# A slot move's own entries (core.ids: ~moveout/M/X, ~movein/M/X): the cluster's, never the
# account holder's. $N::bool true leaves them out (a client's account; a spread account's
# pieces, the slot-move accounts', keep them).
_NOT_A_MOVE: Final = """({column} NOT LIKE '~moveout/%' AND {column} NOT LIKE '~movein/%')"""

# The balance as of a time: the balance-after of the last posting before it (with $3, the
# last but a move's entries). $1: the account, $2: the time (ns), $4: the first hot posting
# sequence (1 without cold history; the earlier postings are read from the cold segments).
BALANCE_BEFORE_SQL: Final = f"""
SELECT debits_posted_after, credits_posted_after, debits_pending_after, credits_pending_after
FROM postings WHERE account_id = $1 AND timestamp_ns < $2
  AND (NOT $3::bool OR {_NOT_A_MOVE.format(column="transaction_id")})
  AND sequence >= $4
ORDER BY sequence DESC LIMIT 1
"""
# The postings that moved the account's posted balance in [$2, $3) (ns), with what their
# transactions say of them, at most $4 of them (with $5, a move's entries left out), from
# posting sequence $6 on (the first hot one). $1: the account.
LINES_SQL: Final = f"""
SELECT p.sequence, p.timestamp_ns, p.transaction_id, p.is_debit, p.posted_amount,
       coalesce(t.value_date, '') AS value_date, coalesce(t.kind, 0) AS kind,
       coalesce(t.code, 0) AS code, coalesce(t.metadata, '{{}}') AS metadata,
       coalesce(t.target_id, '') AS target_id
FROM postings p LEFT JOIN transactions t ON t.id = p.transaction_id
WHERE p.account_id = $1 AND p.timestamp_ns >= $2 AND p.timestamp_ns < $3
  AND p.posted_amount <> 0
  AND (NOT $5::bool OR {_NOT_A_MOVE.format(column="p.transaction_id")})
  AND p.sequence >= $6
ORDER BY p.sequence
LIMIT $4
"""
# What the lines of cold postings say of their transactions, for those still hot (kept or
# revived); $1: the ids.
LINE_TRANSACTIONS_SQL: Final = """
SELECT id, value_date, kind, code, metadata, target_id FROM transactions WHERE id = ANY($1::text[])
"""
# Where slot $1 went from this shard: the targets of its move-outs here (shard migration 6).
MOVED_TO_SQL: Final = """
SELECT DISTINCT peer_shard FROM slot_moves WHERE slot = $1 AND direction = 'out'
"""
