"""The slot column (shard migration 10): the SQL CRC-32 that gives rows written before it their
slot equals core.slots' for any id, and a database of the schema before it, with accounts,
transactions and moved records in it, migrates with every row's slot right and its indexes
there; what the writer writes after carries the slot too, and a move reads a slot's rows by it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.slots import account_slot, transaction_slot
from core.store import moves as store_moves
from core.store import schema
from core.store import shard as shard_store

# Ids as clients may write them: any text PostgreSQL stores (no NUL), often with a '/'.
_IDS = st.one_of(
    st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40),
    st.builds(
        lambda key, rest: f"{key}/{rest}",
        st.text(
            st.characters(blacklist_characters="\x00/", blacklist_categories=("Cs",)), max_size=20
        ),
        st.text(
            st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=20
        ),
    ),
)


@pytest.fixture
async def connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(dsn)
    try:
        yield connection
    finally:
        await connection.close(timeout=5.0)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ids=st.lists(_IDS, min_size=1, max_size=20))
async def test_the_sql_slot_is_the_python_slot(
    connection: asyncpg.Connection, ids: list[str]
) -> None:
    await connection.execute(schema.SLOT_BACKFILL_SQL)  # a function of this session only
    rows = await connection.fetch(
        "SELECT pg_temp.tally_slot(i) AS slot FROM unnest($1::text[]) WITH ORDINALITY u(i, n) "
        "ORDER BY n",
        ids,
    )
    assert [row["slot"] for row in rows] == [account_slot(i) for i in ids]


_OLD_ACCOUNT = "INSERT INTO accounts VALUES ($1, 'USD', 1, 0, '{}', 1, 0, 5, 7, 0, 0, 2, 1)"
_OLD_TRANSACTION = (
    "INSERT INTO {table} (id, kind, code, metadata, value_date, timeout_seconds, target_id, "
    "legs, applied_legs, timestamp_ns, status, expires_at_ns, resolved_by_id, reversed_by_id, "
    "block_sequence) VALUES ($1, 0, 1, '{{}}', '', 0, '', 'D a 1 USD,C b 1 USD', "
    "'D a 1 USD,C b 1 USD', 1, 1, 0, '', '', 1)"
)
_SAMPLE_IDS = [
    "cust-1/deposit", "cust-1", "ünïcødé/loan", "/leading", "", "a/b/c", "@cash", "~piece/x",
    "贷款/7", "x" * 200,
]  # fmt: skip


async def test_a_database_made_before_the_slot_column_migrates(
    connection: asyncpg.Connection,
) -> None:
    await shard_store.migrate(connection, schema.MIGRATIONS[:9])
    for number, row_id in enumerate(_SAMPLE_IDS):
        await connection.execute(_OLD_ACCOUNT, row_id)
        await connection.execute(_OLD_TRANSACTION.format(table="transactions"), row_id)
        await connection.execute(
            _OLD_TRANSACTION.format(table="moved_transactions"), f"moved-{number}/{row_id}"
        )
    assert await shard_store.migrate(connection, schema.MIGRATIONS[:10]) == [10]
    accounts = await connection.fetch("SELECT id, slot FROM accounts")
    assert {r["id"]: r["slot"] for r in accounts} == {i: account_slot(i) for i in _SAMPLE_IDS}
    for table in ("transactions", "moved_transactions"):
        rows = await connection.fetch(f"SELECT id, slot FROM {table}")
        assert len(rows) == len(_SAMPLE_IDS)
        assert all(r["slot"] == transaction_slot(r["id"]) for r in rows), table
    indexes = await connection.fetch(
        "SELECT indexname FROM pg_indexes WHERE indexname LIKE '%_by_slot'"
    )
    assert {r["indexname"] for r in indexes} == {
        "accounts_by_slot", "transactions_by_slot", "moved_transactions_by_slot",
    }  # fmt: skip
    # The column is required: a writer that forgot it would fail, not write a row no move finds.
    with pytest.raises(asyncpg.NotNullViolationError):
        await connection.execute(
            _OLD_TRANSACTION.format(table="transactions").replace("$1", "'late'")
        )
    # A move finds the migrated rows by their slot, spread accounts and reserved records left.
    slots = frozenset(account_slot(i) for i in _SAMPLE_IDS)
    found = await store_moves.slot_accounts(connection, slots, 5.0)
    assert sorted(a.spec.id for a in found) == sorted(i for i in _SAMPLE_IDS if i[:1] != "@")
    records = await store_moves.homed_records(connection, slots, 5.0)
    assert {r.spec.id for r in records} == {i for i in _SAMPLE_IDS if i[:1] != "~"} | {
        f"moved-{n}/{i}" for n, i in enumerate(_SAMPLE_IDS) if account_slot(f"moved-{n}") in slots
    }
