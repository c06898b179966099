"""The comparison: a conventional row-locking ledger, as most banks' ledgers are built.

It lives in bench/ only. One database transaction per transfer, durable at COMMIT
(synchronous_commit on):

    BEGIN
    SELECT ... FROM accounts WHERE id IN (debit, credit) ORDER BY id FOR UPDATE
    -- check both exist, currency, no-overdraft funds
    UPDATE accounts SET balance = ... (both rows) RETURNING balance
    INSERT the transfer row (its id is the idempotency key) and its two postings
    COMMIT

That is five round trips while holding the row locks, and a hot account serialises every
transaction that touches it for the whole of them, commit flush included. Locks are taken in id
order so two transfers never deadlock; a deadlock or serialization failure is still retried,
as a production ledger would, and counted.

It runs inside the bench process (no RPC in front of it), which flatters it: Tally pays a gRPC
hop per call that this ledger does not.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

import asyncpg

from bench.common.measure import CallOutcome
from bench.common.workload import (
    CURRENCY,
    FUNDING_AMOUNT_CENTS,
    HOT_ACCOUNT_ID,
    TRANSFER_CODE,
    Transfer,
    funding_transaction_id,
)

STATEMENT_TIMEOUT_S: Final = 30.0
RETRY_COUNT_MAX: Final = 10
SEED_TIMEOUT_S: Final = 600.0

# Its own schema, dropped and rebuilt on every run: --rowlock-dsn may name a shared database.
SCHEMA: Final = "rowlock_bench"
SCHEMA_SQL: Final = f"""
DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
CREATE SCHEMA {SCHEMA};
SET LOCAL search_path = {SCHEMA};
CREATE TABLE accounts (
    id text PRIMARY KEY,
    currency text NOT NULL,
    no_overdraft boolean NOT NULL,
    -- credits minus debits, in minor units
    balance bigint NOT NULL,
    version bigint NOT NULL DEFAULT 0
);
CREATE TABLE transfers (
    id text PRIMARY KEY,
    debit_account_id text NOT NULL,
    credit_account_id text NOT NULL,
    amount bigint NOT NULL CHECK (amount > 0),
    currency text NOT NULL,
    code integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE postings (
    id bigserial PRIMARY KEY,
    transfer_id text NOT NULL,
    account_id text NOT NULL,
    -- signed: a credit is positive
    amount bigint NOT NULL,
    balance_after bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX postings_by_account ON postings (account_id, id);
"""

_LOCK_SQL: Final = """
SELECT id, currency, no_overdraft, balance FROM accounts
WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE
"""
_UPDATE_SQL: Final = """
UPDATE accounts
SET balance = balance + CASE WHEN id = $1 THEN -$3::bigint ELSE $3::bigint END,
    version = version + 1
WHERE id = ANY(ARRAY[$1, $2]::text[])
RETURNING id, balance
"""
_INSERT_SQL: Final = """
WITH transfer AS (
    INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, currency, code)
    VALUES ($1, $2, $3, $4, $5, $6)
)
INSERT INTO postings (transfer_id, account_id, amount, balance_after)
VALUES ($1, $2, -$4::bigint, $7), ($1, $3, $4, $8)
"""
_RETRYABLE: Final = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
# Operating errors a call reports as its outcome; anything else is a bug and stops the bench.
_CALL_ERRORS: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class _Rejected(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _check(rows: list[Any], transfer: Transfer) -> None:
    """The business rules, decided while holding both row locks."""
    by_id = {row["id"]: row for row in rows}
    debit = by_id.get(transfer.debit_account_id)
    credit = by_id.get(transfer.credit_account_id)
    if debit is None or credit is None:
        raise _Rejected("ACCOUNT_NOT_FOUND")
    if debit["currency"] != CURRENCY or credit["currency"] != CURRENCY:
        raise _Rejected("CURRENCY_MISMATCH")
    if debit["no_overdraft"] and debit["balance"] < transfer.amount_cents:
        raise _Rejected("INSUFFICIENT_FUNDS")


async def post_transfer(connection: Any, transfer: Transfer) -> str:
    """One transfer in one database transaction; returns its result code."""
    timeout = STATEMENT_TIMEOUT_S
    await connection.execute("BEGIN", timeout=timeout)
    try:
        ids = [transfer.debit_account_id, transfer.credit_account_id]
        _check(await connection.fetch(_LOCK_SQL, ids, timeout=timeout), transfer)
        balances = dict(
            await connection.fetch(_UPDATE_SQL, *ids, transfer.amount_cents, timeout=timeout)
        )
        await connection.execute(
            _INSERT_SQL,
            transfer.transaction_id,
            *ids,
            transfer.amount_cents,
            CURRENCY,
            TRANSFER_CODE,
            balances[transfer.debit_account_id],
            balances[transfer.credit_account_id],
            timeout=timeout,
        )
        await connection.execute("COMMIT", timeout=timeout)
    except _Rejected as rejection:
        await connection.execute("ROLLBACK", timeout=timeout)
        return rejection.code
    except asyncpg.UniqueViolationError:
        # The transfer id exists: an idempotent retry of an earlier transfer.
        await connection.execute("ROLLBACK", timeout=timeout)
        return "REPLAYED"
    except BaseException:
        # Best effort: the pool also rolls back a connection returned inside a transaction.
        if not connection.is_closed() and connection.is_in_transaction():
            with contextlib.suppress(Exception):
                await connection.execute("ROLLBACK", timeout=timeout)
        raise
    return "CREATED"


async def post_with_retry(connection: Any, transfer: Transfer) -> tuple[str, int]:
    """(result code, retries): deadlocks and serialization failures are retried."""
    for attempt in range(RETRY_COUNT_MAX + 1):
        try:
            return await post_transfer(connection, transfer), attempt
        except _RETRYABLE:
            if attempt == RETRY_COUNT_MAX:
                raise
    raise AssertionError("unreachable")


class RowLockLedger:
    """A pool of connection_count connections; every call uses them as its concurrency."""

    def __init__(self, pool: Any, connection_count: int) -> None:
        self._pool = pool
        self._connection_count = connection_count

    @classmethod
    async def open(cls, dsn: str, connection_count: int) -> RowLockLedger:
        pool = await asyncio.wait_for(
            asyncpg.create_pool(
                dsn,
                min_size=connection_count,
                max_size=connection_count,
                timeout=30.0,
                command_timeout=STATEMENT_TIMEOUT_S,
                # Durable at COMMIT, said explicitly: the comparison must not win by skipping fsync.
                server_settings={"synchronous_commit": "on", "search_path": SCHEMA},
            ),
            timeout=60.0,
        )
        return cls(pool, connection_count)

    async def close(self) -> None:
        await asyncio.wait_for(self._pool.close(), timeout=30.0)

    async def post(self, transfers: Sequence[Transfer]) -> CallOutcome:
        """Post transfers, each its own database transaction, up to connection_count at once."""
        outcome = CallOutcome()
        pending = iter(transfers)

        async def worker() -> None:
            async with self._pool.acquire(timeout=STATEMENT_TIMEOUT_S) as connection:
                for transfer in pending:
                    code, retries = await post_with_retry(connection, transfer)
                    outcome.codes[code] += 1
                    outcome.retries += retries

        try:
            if len(transfers) == 1:
                await worker()  # the one-transfer path spawns no task
            else:
                async with asyncio.TaskGroup() as group:
                    for _ in range(min(self._connection_count, len(transfers))):
                        group.create_task(worker())
        except* _CALL_ERRORS as errors:
            outcome.error = "postgres:" + type(errors.exceptions[0]).__name__
        return outcome


async def create_and_seed(dsn: str, account_ids: list[str]) -> Counter[str]:
    """Schema, accounts and funding in bulk (setup, not measured): the same opening state as
    Tally's, i.e. every customer funded from HOT_ACCOUNT_ID by one transfer."""
    connection = await asyncpg.connect(dsn, timeout=30.0, server_settings={"search_path": SCHEMA})
    try:
        async with asyncio.timeout(SEED_TIMEOUT_S), connection.transaction():
            await connection.execute(SCHEMA_SQL, timeout=SEED_TIMEOUT_S)
            await _copy_seed(connection, account_ids)
        await connection.execute("ANALYZE", timeout=SEED_TIMEOUT_S)
    finally:
        await connection.close(timeout=10.0)
    return Counter({"CREATED": 2 * len(account_ids) + 1})


async def _copy_seed(connection: Any, account_ids: list[str]) -> None:
    hot_balance = -FUNDING_AMOUNT_CENTS * len(account_ids)
    accounts = [(HOT_ACCOUNT_ID, CURRENCY, False, hot_balance, len(account_ids))]
    accounts += [(a, CURRENCY, True, FUNDING_AMOUNT_CENTS, 1) for a in account_ids]
    await connection.copy_records_to_table(
        "accounts",
        records=accounts,
        columns=["id", "currency", "no_overdraft", "balance", "version"],
        timeout=SEED_TIMEOUT_S,
    )
    transfers = [
        (
            funding_transaction_id(a),
            HOT_ACCOUNT_ID,
            a,
            FUNDING_AMOUNT_CENTS,
            CURRENCY,
            TRANSFER_CODE,
        )
        for a in account_ids
    ]
    await connection.copy_records_to_table(
        "transfers",
        records=transfers,
        columns=["id", "debit_account_id", "credit_account_id", "amount", "currency", "code"],
        timeout=SEED_TIMEOUT_S,
    )
    postings = []
    for number, account_id in enumerate(account_ids, start=1):
        transfer_id = funding_transaction_id(account_id)
        postings.append(
            (transfer_id, HOT_ACCOUNT_ID, -FUNDING_AMOUNT_CENTS, -FUNDING_AMOUNT_CENTS * number)
        )
        postings.append((transfer_id, account_id, FUNDING_AMOUNT_CENTS, FUNDING_AMOUNT_CENTS))
    await connection.copy_records_to_table(
        "postings",
        records=postings,
        columns=["transfer_id", "account_id", "amount", "balance_after"],
        timeout=SEED_TIMEOUT_S,
    )


async def audit(dsn: str) -> list[str]:
    """The books balance (balances sum to zero) and every balance is the sum of its postings."""
    connection = await asyncpg.connect(dsn, timeout=30.0, server_settings={"search_path": SCHEMA})
    try:
        problems = []
        total = await connection.fetchval("SELECT sum(balance) FROM accounts", timeout=60.0)
        if total != 0:
            problems.append(f"balances sum to {total}, not 0")
        mismatched = await connection.fetch(
            """
            SELECT a.id FROM accounts a
            LEFT JOIN (SELECT account_id, sum(amount) AS total FROM postings GROUP BY account_id) p
                ON p.account_id = a.id
            WHERE a.balance <> coalesce(p.total, 0)
            LIMIT 10
            """,
            timeout=300.0,
        )
        problems += [f"{row['id']}: balance is not the sum of its postings" for row in mismatched]
        return problems
    finally:
        await connection.close(timeout=10.0)
