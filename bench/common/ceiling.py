"""PostgreSQL's own batched ceiling for ledger-shaped rows (issue 13): what the same server
commits when a batch of transfers is written the cheapest way a client can write it, so that
Tally's batched rate can be read as a share of it.

It lives in bench/ only and runs inside the bench process, on its own database of the same
PostgreSQL server as the node's. Its tables have the columns, types and indexes of the shard
schema's ledger tables (core/store/schema.py, migrations 1 and 2: accounts with their counters,
transactions, postings with the counters after each one, `postings_by_account`,
`transactions_by_block`, `accounts_by_block`; and 11: the applied legs NULL when they are the
legs), so both write the same bytes per transfer; what
it leaves out is Tally's own machinery (no journal block, hash chain, signature or lease fence,
no state machine, no gRPC hop).

A batch is ONE statement, sent on one connection outside any explicit transaction, so it is its
own transaction and one COMMIT (synchronous_commit on, said explicitly):

    one set-based INSERT of the batch's transactions (unnest over arrays),
    one set-based INSERT of their postings, 2 per transfer, with the counters after each,
    one UPDATE per touched account (the batch's deltas aggregated per account),

Correct under concurrency, a hot account included: the touched rows are locked in id order
(`SELECT ... ORDER BY id FOR UPDATE`) before any is updated, so two batches never deadlock; the
counters after each posting come from the locked rows (the UPDATE's RETURNING), and the batch
number that orders the postings is drawn only once every lock is held, so for each account the
postings' order is the commit order. A deadlock would still be retried and counted, as a
production client would. A batch that names an unknown account or overdraws a no-overdraft
account fails whole (Tally rejects such an item alone): the workloads never do either.

audit() checks afterwards that the books balance, every account's counters equal the sums of
its postings, every posting's counters-after equal the running sums of its account's postings in
posting order, and every transaction has exactly its two postings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final

import asyncpg

from bench.common.measure import CallOutcome
from bench.common.workload import (
    ACCOUNT_CODE,
    CURRENCY,
    FUNDING_AMOUNT_CENTS,
    HOT_ACCOUNT_ID,
    TRANSFER_CODE,
    Transfer,
    funding_transaction_id,
)
from core.journal import FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS
from core.model import Kind, Status

STATEMENT_TIMEOUT_S: Final = 60.0
SEED_TIMEOUT_S: Final = 600.0
AUDIT_TIMEOUT_S: Final = 300.0
RETRY_COUNT_MAX: Final = 10
# A posting's key is its batch number * POSTINGS_PER_BATCH_MAX + its place in the batch.
POSTINGS_PER_BATCH_MAX: Final = 2**21
TRANSFERS_PER_BATCH_MAX: Final = POSTINGS_PER_BATCH_MAX // 2

# Its own schema, dropped and rebuilt on every run (a shared database is never touched else).
SCHEMA: Final = "ceiling_bench"


def schema_sql(first_batch_number: int) -> str:
    """The tables (the shard schema's ledger tables, column for column), the batch counter and
    the function a statement raises its error with."""
    return f"""
DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
CREATE SCHEMA {SCHEMA};
SET LOCAL search_path = {SCHEMA};
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
    block_sequence bigint NOT NULL,
    -- the no-overdraft rule, checked by PostgreSQL at each row's update
    CHECK (flags & {FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS} = 0 OR debits_posted <= credits_posted)
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
    applied_legs text,  -- NULL: the legs as submitted (shard migration 11)
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
    block_sequence bigint NOT NULL
);
CREATE INDEX postings_by_account ON postings (account_id, sequence);
CREATE INDEX transactions_by_block ON transactions (block_sequence);
CREATE INDEX accounts_by_block ON accounts (block_sequence);
CREATE SEQUENCE batch_numbers START WITH {first_batch_number};
CREATE FUNCTION fail(message text) RETURNS bigint LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION '%', message; END $$;
"""


# $1 transaction ids, $2 debit account ids, $3 credit account ids, $4 amounts: one batch.
BATCH_SQL: Final = f"""
WITH batch AS (
    SELECT t.n, t.id, t.debit_id, t.credit_id, t.amount
    FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
        WITH ORDINALITY AS t(id, debit_id, credit_id, amount, n)
),
legs AS (
    SELECT n, 0 AS side, id AS transaction_id, debit_id AS account_id, true AS is_debit, amount
    FROM batch
    UNION ALL
    SELECT n, 1, id, credit_id, false, amount FROM batch
),
deltas AS (
    SELECT account_id,
        coalesce(sum(amount) FILTER (WHERE is_debit), 0) AS debits,
        coalesce(sum(amount) FILTER (WHERE NOT is_debit), 0) AS credits
    FROM legs GROUP BY account_id
),
-- every touched row locked in id order before any is updated: batches never deadlock
locked AS (
    SELECT a.id, d.debits, d.credits
    FROM accounts a JOIN deltas d ON d.account_id = a.id
    ORDER BY a.id FOR UPDATE OF a
),
updated AS (
    UPDATE accounts a SET
        debits_posted = a.debits_posted + l.debits,
        credits_posted = a.credits_posted + l.credits,
        version = a.version + 1
    FROM locked l WHERE a.id = l.id
    RETURNING a.id, a.debits_posted - l.debits AS debits_before,
        a.credits_posted - l.credits AS credits_before, a.debits_pending, a.credits_pending
),
-- drawn after the count has read every updated row, i.e. once every lock is held
block AS (
    SELECT
        CASE WHEN u.count = (SELECT count(*) FROM deltas) THEN nextval('batch_numbers')
            ELSE fail('a batch names an account that does not exist') END AS number,
        (extract(epoch FROM clock_timestamp()) * 1e9)::bigint AS timestamp_ns
    FROM (SELECT count(*) FROM updated) AS u(count)
),
new_transactions AS (
    INSERT INTO transactions
    SELECT b.id, {int(Kind.ORDINARY)}, {TRANSFER_CODE}, '{{}}', '', 0, '',
        legs_text, NULL, k.timestamp_ns + b.n, {int(Status.POSTED)}, 0, '', '', k.number
    FROM batch b CROSS JOIN block k,
        LATERAL (SELECT 'D ' || b.debit_id || ' ' || b.amount || ' {CURRENCY},C '
                        || b.credit_id || ' ' || b.amount || ' {CURRENCY}') AS t(legs_text)
)
INSERT INTO postings
SELECT
    k.number * {POSTINGS_PER_BATCH_MAX} + row_number() OVER (ORDER BY l.n, l.side),
    l.transaction_id, l.account_id, l.is_debit, l.amount, 0, k.timestamp_ns + l.n,
    u.debits_before + sum(CASE WHEN l.is_debit THEN l.amount ELSE 0 END) OVER running,
    u.credits_before + sum(CASE WHEN l.is_debit THEN 0 ELSE l.amount END) OVER running,
    u.debits_pending, u.credits_pending, k.number
FROM legs l JOIN updated u ON u.id = l.account_id CROSS JOIN block k
WINDOW running AS (PARTITION BY l.account_id ORDER BY l.n, l.side ROWS UNBOUNDED PRECEDING)
"""

_RETRYABLE: Final = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
# Operating errors a call reports as its outcome; anything else is a bug and stops the bench.
_CALL_ERRORS: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def batch_arguments(
    transfers: Sequence[Transfer],
) -> tuple[list[str], list[str], list[str], list[int]]:
    if not 0 < len(transfers) <= TRANSFERS_PER_BATCH_MAX:
        raise ValueError(f"a ceiling batch holds 1..{TRANSFERS_PER_BATCH_MAX:,} transfers")
    return (
        [t.transaction_id for t in transfers],
        [t.debit_account_id for t in transfers],
        [t.credit_account_id for t in transfers],
        [t.amount_cents for t in transfers],
    )


async def post_batch(connection: Any, transfers: Sequence[Transfer]) -> int:
    """One batch, one statement, one commit; returns the deadlocks it was retried after."""
    arguments = batch_arguments(transfers)
    for attempt in range(RETRY_COUNT_MAX + 1):
        try:
            status = await connection.execute(BATCH_SQL, *arguments, timeout=STATEMENT_TIMEOUT_S)
        except _RETRYABLE:
            if attempt == RETRY_COUNT_MAX:
                raise
            continue
        if status != f"INSERT 0 {2 * len(transfers)}":
            raise AssertionError(f"a ceiling batch of {len(transfers)} transfers gave {status}")
        return attempt
    raise AssertionError("unreachable")


class CeilingLedger:
    """A pool of connection_count connections; each call is one batch on one of them."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, connection_count: int) -> CeilingLedger:
        pool = await asyncio.wait_for(
            asyncpg.create_pool(
                dsn,
                min_size=connection_count,
                max_size=connection_count,
                timeout=30.0,
                command_timeout=STATEMENT_TIMEOUT_S,
                # Durable at COMMIT, said explicitly: a ceiling that skipped the flush would lie.
                server_settings={"synchronous_commit": "on", "search_path": SCHEMA},
            ),
            timeout=60.0,
        )
        return cls(pool)

    async def close(self) -> None:
        await asyncio.wait_for(self._pool.close(), timeout=30.0)

    async def post(self, transfers: Sequence[Transfer]) -> CallOutcome:
        outcome = CallOutcome()
        try:
            async with self._pool.acquire(timeout=STATEMENT_TIMEOUT_S) as connection:
                outcome.retries = await post_batch(connection, transfers)
        except _CALL_ERRORS as error:
            outcome.error = "postgres:" + type(error).__name__
            return outcome
        outcome.codes["CREATED"] = len(transfers)
        return outcome


async def create_and_seed(dsn: str, account_ids: list[str]) -> None:
    """Schema, accounts and funding in bulk (setup, not measured): the same opening state as
    Tally's, every customer funded from HOT_ACCOUNT_ID by one transfer with its two postings."""
    connection = await asyncpg.connect(dsn, timeout=30.0, server_settings={"search_path": SCHEMA})
    try:
        seed_postings = 2 * len(account_ids)
        first_batch_number = seed_postings // POSTINGS_PER_BATCH_MAX + 1
        async with asyncio.timeout(SEED_TIMEOUT_S), connection.transaction():
            await connection.execute(schema_sql(first_batch_number), timeout=SEED_TIMEOUT_S)
            await _copy_seed(connection, account_ids)
        await connection.execute("ANALYZE", timeout=SEED_TIMEOUT_S)
    finally:
        await connection.close(timeout=10.0)


def _account_row(account_id: str, debits: int, credits: int) -> tuple[Any, ...]:
    flags = 0 if account_id == HOT_ACCOUNT_ID else FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS
    return (account_id, CURRENCY, ACCOUNT_CODE, flags, "{}", 1, 0, debits, credits, 0, 0, 1, 0)


async def _copy_seed(connection: Any, account_ids: list[str]) -> None:
    funding = FUNDING_AMOUNT_CENTS
    accounts = [_account_row(HOT_ACCOUNT_ID, funding * len(account_ids), 0)]
    accounts += [_account_row(a, 0, funding) for a in account_ids]
    await connection.copy_records_to_table("accounts", records=accounts, timeout=SEED_TIMEOUT_S)
    transactions = []
    postings = []
    for number, account_id in enumerate(account_ids, start=1):
        transaction_id = funding_transaction_id(account_id)
        legs = f"D {HOT_ACCOUNT_ID} {funding} {CURRENCY},C {account_id} {funding} {CURRENCY}"
        head = (transaction_id, int(Kind.ORDINARY), TRANSFER_CODE, "{}", "", 0, "", legs, None)
        transactions.append((*head, number, int(Status.POSTED), 0, "", "", 0))
        debit = (2 * number - 1, transaction_id, HOT_ACCOUNT_ID, True, funding, 0, number)
        postings.append((*debit, funding * number, 0, 0, 0, 0))
        credit = (2 * number, transaction_id, account_id, False, funding, 0, number)
        postings.append((*credit, 0, funding, 0, 0, 0))
    await connection.copy_records_to_table(
        "transactions", records=transactions, timeout=SEED_TIMEOUT_S
    )
    await connection.copy_records_to_table("postings", records=postings, timeout=SEED_TIMEOUT_S)


_AUDIT_QUERIES: Final = (
    (
        "the books do not balance (credits minus debits)",
        "SELECT total FROM (SELECT sum(credits_posted) - sum(debits_posted) AS total "
        "FROM accounts) s WHERE total <> 0",
    ),
    (
        "counters are not the sums of the account's postings",
        """
        SELECT a.id FROM accounts a LEFT JOIN (
            SELECT account_id,
                sum(posted_amount) FILTER (WHERE is_debit) AS debits,
                sum(posted_amount) FILTER (WHERE NOT is_debit) AS credits
            FROM postings GROUP BY account_id
        ) p ON p.account_id = a.id
        WHERE a.debits_posted <> coalesce(p.debits, 0) OR a.credits_posted <> coalesce(p.credits, 0)
        LIMIT 10
        """,
    ),
    (
        "counters after a posting are not the running sums in posting order",
        """
        SELECT sequence FROM (
            SELECT sequence, debits_posted_after, credits_posted_after,
                sum(CASE WHEN is_debit THEN posted_amount ELSE 0 END) OVER running AS debits,
                sum(CASE WHEN is_debit THEN 0 ELSE posted_amount END) OVER running AS credits
            FROM postings
            WINDOW running AS (PARTITION BY account_id ORDER BY sequence)
        ) s
        WHERE debits <> debits_posted_after OR credits <> credits_posted_after
        LIMIT 10
        """,
    ),
    (
        "a transaction does not have exactly one debit and one credit of the same amount",
        """
        SELECT t.id FROM transactions t LEFT JOIN (
            SELECT transaction_id, count(*) AS legs, count(*) FILTER (WHERE is_debit) AS debits,
                sum(CASE WHEN is_debit THEN -posted_amount ELSE posted_amount END) AS net
            FROM postings GROUP BY transaction_id
        ) p ON p.transaction_id = t.id
        WHERE p.legs IS DISTINCT FROM 2 OR p.debits <> 1 OR p.net <> 0
        LIMIT 10
        """,
    ),
    (
        "a posting belongs to no transaction",
        "SELECT p.sequence FROM postings p LEFT JOIN transactions t ON t.id = p.transaction_id "
        "WHERE t.id IS NULL LIMIT 10",
    ),
)


async def audit(dsn: str) -> list[str]:
    """Every check of the module's docstring; an empty list when all hold."""
    connection = await asyncpg.connect(dsn, timeout=30.0, server_settings={"search_path": SCHEMA})
    try:
        problems = []
        for what, sql in _AUDIT_QUERIES:
            rows = await connection.fetch(sql, timeout=AUDIT_TIMEOUT_S)
            problems += [f"{what}: {tuple(row.values())}" for row in rows]
        return problems
    finally:
        await connection.close(timeout=10.0)


async def totals(dsn: str) -> dict[str, int]:
    """Rows of each table (the test reads them; the bench reports them)."""
    connection = await asyncpg.connect(dsn, timeout=30.0, server_settings={"search_path": SCHEMA})
    try:
        found = {}
        for table in ("accounts", "transactions", "postings"):
            count = await connection.fetchval(f"SELECT count(*) FROM {table}", timeout=60.0)
            found[table] = int(count)
        return found
    finally:
        await connection.close(timeout=10.0)
