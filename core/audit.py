"""Checks that a shard database's books are whole, computed from its rows alone.

Each check returns a list of problems naming what is wrong (empty when clean). These are the
building blocks of `tally audit`; tests use them to check the money invariants.
"""

from __future__ import annotations

from typing import Any

from core import journal
from core.journal import decode_legs, decode_metadata
from core.model import AccountSpec, AccountState, Kind, Status, TransactionSpec, TransactionState
from core.store import posting_from_row

TIMEOUT_S = 300.0


async def trial_balance(connection: Any) -> dict[str, tuple[int, int, int, int]]:
    """Per currency: (debits_posted, credits_posted, debits_pending, credits_pending)."""
    rows = await connection.fetch(
        """
        SELECT currency, sum(debits_posted)::numeric AS dp, sum(credits_posted)::numeric AS cp,
               sum(debits_pending)::numeric AS dq, sum(credits_pending)::numeric AS cq
        FROM accounts GROUP BY currency ORDER BY currency
        """,
        timeout=TIMEOUT_S,
    )
    return {r["currency"]: (int(r["dp"]), int(r["cp"]), int(r["dq"]), int(r["cq"])) for r in rows}


async def check_trial_balance(connection: Any) -> list[str]:
    problems = []
    for currency, (dp, cp, dq, cq) in (await trial_balance(connection)).items():
        if dp != cp:
            problems.append(f"{currency}: posted debits {dp} != posted credits {cp}")
        if dq != cq:
            problems.append(f"{currency}: pending debits {dq} != pending credits {cq}")
    return problems


async def check_counters(connection: Any) -> list[str]:
    """Every account's four counters equal the sum of its postings."""
    rows = await connection.fetch(
        """
        SELECT a.id, a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending,
               coalesce(s.dp, 0) AS dp, coalesce(s.cp, 0) AS cp,
               coalesce(s.dq, 0) AS dq, coalesce(s.cq, 0) AS cq
        FROM accounts a LEFT JOIN (
            SELECT account_id,
                   sum(CASE WHEN is_debit THEN posted_amount ELSE 0 END) AS dp,
                   sum(CASE WHEN is_debit THEN 0 ELSE posted_amount END) AS cp,
                   sum(CASE WHEN is_debit THEN pending_delta ELSE 0 END) AS dq,
                   sum(CASE WHEN is_debit THEN 0 ELSE pending_delta END) AS cq
            FROM postings GROUP BY account_id
        ) s ON s.account_id = a.id
        WHERE a.debits_posted <> coalesce(s.dp, 0) OR a.credits_posted <> coalesce(s.cp, 0)
           OR a.debits_pending <> coalesce(s.dq, 0) OR a.credits_pending <> coalesce(s.cq, 0)
        ORDER BY a.id
        """,
        timeout=TIMEOUT_S,
    )
    return [
        f"account {r['id']}: counters "
        f"({r['debits_posted']}, {r['credits_posted']}, {r['debits_pending']}, "
        f"{r['credits_pending']}) != postings ({r['dp']}, {r['cp']}, {r['dq']}, {r['cq']})"
        for r in rows
    ]


async def check_balance_after_chains(connection: Any) -> list[str]:
    """Each posting's balance-after equals the previous one's plus its own change."""
    rows = await connection.fetch(
        """
        SELECT sequence, account_id FROM (
            SELECT sequence, account_id, is_debit, posted_amount, pending_delta,
                   debits_posted_after AS dp, credits_posted_after AS cp,
                   debits_pending_after AS dq, credits_pending_after AS cq,
                   coalesce(lag(debits_posted_after) OVER w, 0) AS pdp,
                   coalesce(lag(credits_posted_after) OVER w, 0) AS pcp,
                   coalesce(lag(debits_pending_after) OVER w, 0) AS pdq,
                   coalesce(lag(credits_pending_after) OVER w, 0) AS pcq
            FROM postings WINDOW w AS (PARTITION BY account_id ORDER BY sequence)
        ) p
        WHERE dp <> pdp + CASE WHEN is_debit THEN posted_amount ELSE 0 END
           OR cp <> pcp + CASE WHEN is_debit THEN 0 ELSE posted_amount END
           OR dq <> pdq + CASE WHEN is_debit THEN pending_delta ELSE 0 END
           OR cq <> pcq + CASE WHEN is_debit THEN 0 ELSE pending_delta END
        ORDER BY sequence
        """,
        timeout=TIMEOUT_S,
    )
    return [
        f"posting {r['sequence']} of {r['account_id']}: balance-after chain broken" for r in rows
    ]


async def check_transactions_balanced(connection: Any) -> list[str]:
    """Per transaction and currency, debits equal credits in both posted and pending changes."""
    rows = await connection.fetch(
        """
        SELECT p.transaction_id, a.currency,
               sum(CASE WHEN p.is_debit THEN p.posted_amount ELSE -p.posted_amount END) AS posted,
               sum(CASE WHEN p.is_debit THEN p.pending_delta ELSE -p.pending_delta END) AS pending
        FROM postings p JOIN accounts a ON a.id = p.account_id
        GROUP BY p.transaction_id, a.currency
        HAVING sum(CASE WHEN p.is_debit THEN p.posted_amount ELSE -p.posted_amount END) <> 0
            OR sum(CASE WHEN p.is_debit THEN p.pending_delta ELSE -p.pending_delta END) <> 0
        ORDER BY 1, 2
        """,
        timeout=TIMEOUT_S,
    )
    return [
        f"transaction {r['transaction_id']} {r['currency']}: unbalanced by "
        f"{r['posted']} posted, {r['pending']} pending"
        for r in rows
    ]


def _account_state(row: Any) -> AccountState:
    flags = row["flags"]
    spec = AccountSpec(
        row["id"],
        row["currency"],
        row["code"],
        bool(flags & journal.FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS),
        bool(flags & journal.FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS),
        decode_metadata(row["metadata"]),
    )
    return AccountState(spec, row["created_at_ns"])


def _transaction_state(row: Any) -> TransactionState:
    spec = TransactionSpec(
        row["id"],
        Kind(row["kind"]),
        decode_legs(row["legs"]),
        row["code"],
        decode_metadata(row["metadata"]),
        row["value_date"],
        row["timeout_seconds"],
        row["target_id"],
    )
    return TransactionState(spec, decode_legs(row["applied_legs"]), row["timestamp_ns"], Status(1))


async def _block_lines(connection: Any, sequence: int) -> list[str]:
    lines = []
    for row in await connection.fetch(
        "SELECT * FROM accounts WHERE block_sequence = $1 ORDER BY created_at_ns", sequence
    ):
        lines.append(journal.account_line(_account_state(row)))
    for row in await connection.fetch(
        "SELECT * FROM transactions WHERE block_sequence = $1 ORDER BY timestamp_ns", sequence
    ):
        lines.append(
            journal.transaction_line(_transaction_state(row), row["legs"], row["applied_legs"])
        )
    for row in await connection.fetch(
        "SELECT * FROM postings WHERE block_sequence = $1 ORDER BY sequence", sequence
    ):
        lines.append(journal.posting_line(posting_from_row(row)))
    for row in await connection.fetch(
        "SELECT * FROM account_closures WHERE block_sequence = $1 ORDER BY closed_at_ns", sequence
    ):
        lines.append(journal.closure_line(row["account_id"], row["closed_at_ns"]))
    return lines


async def check_hash_chain(connection: Any) -> list[str]:
    """Recompute every journal block's hash from its rows and the previous block's hash."""
    problems: list[str] = []
    previous_hash = journal.GENESIS_HASH
    expected_sequence = 1
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        blocks = connection.cursor(
            "SELECT sequence, previous_hash, hash FROM journal_blocks ORDER BY sequence"
        )
        async for block in blocks:
            sequence = block["sequence"]
            if sequence != expected_sequence:
                problems.append(f"block {expected_sequence} is missing (next is {sequence})")
            if bytes(block["previous_hash"]) != previous_hash:
                problems.append(f"block {sequence}: previous_hash does not match block before")
            lines = await _block_lines(connection, sequence)
            recomputed = journal.block_hash(previous_hash, sequence, lines)
            if recomputed != bytes(block["hash"]):
                problems.append(f"block {sequence}: hash does not match its rows")
            previous_hash = bytes(block["hash"])
            expected_sequence = sequence + 1
    return problems


async def check_all(connection: Any) -> list[str]:
    problems: list[str] = []
    problems += await check_trial_balance(connection)
    problems += await check_counters(connection)
    problems += await check_balance_after_chains(connection)
    problems += await check_transactions_balanced(connection)
    problems += await check_hash_chain(connection)
    return problems
