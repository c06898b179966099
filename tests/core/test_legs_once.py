"""The legs stored once (shard migration 11): a record whose applied legs are its legs as
submitted stores NULL for them, one whose applied legs differ (a hold posted in full, a
reversal) stores them; every read gives the same record as before. A database made before the
migration, with both texts in its rows, migrates and reads the same; the audit holds old and new
rows alike."""

from __future__ import annotations

import asyncpg

from core.model import transaction_to_record
from core.store import schema
from core.store import shard as shard_store
from core.store.audit import HELD_LEGS_SQL, TRANSACTIONS_SQL
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.helpers import Client, account, audit_problems, names, start_node, transfer

_LEGS = "D a 3 USD,C b 3 USD"
_OLD_TRANSACTION = (
    "INSERT INTO {table} (id, kind, code, metadata, value_date, timeout_seconds, target_id, "
    "legs, applied_legs, timestamp_ns, status, expires_at_ns, resolved_by_id, reversed_by_id, "
    "block_sequence, slot) VALUES ($1, $2, 1, '{{}}', '', 0, '', $3, $4, 1, 1, 0, '', '', 1, 0)"
)


async def test_a_database_made_before_migrates_and_reads_the_same(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await shard_store.migrate(connection, schema.MIGRATIONS[:10])
        # As today's code wrote them: both texts, the same or not.
        await connection.execute(
            _OLD_TRANSACTION.format(table="transactions"), "t1", 0, _LEGS, _LEGS
        )
        await connection.execute(
            _OLD_TRANSACTION.format(table="transactions"), "t2", 2, "", _LEGS
        )  # a post of a hold in full: no legs submitted, the hold's applied
        await connection.execute(
            _OLD_TRANSACTION.format(table="moved_transactions"), "m1", 1, _LEGS, _LEGS
        )
        before = await shard_store.load_transactions(connection, ["t1", "t2", "m1"], 5.0)
        await shard_store.migrate(connection, schema.MIGRATIONS)
        after = await shard_store.load_transactions(connection, ["t1", "t2", "m1"], 5.0)
        assert {i: transaction_to_record(t) for i, t in after.items()} == {
            i: transaction_to_record(t) for i, t in before.items()
        }
        assert [t.applied_legs for t in (after["t1"], after["t2"], after["m1"])] == [
            after["t1"].spec.legs,
            after["t1"].spec.legs,
            after["t1"].spec.legs,
        ]
        # A row written after, the new way, reads as the old one did.
        await connection.execute(
            _OLD_TRANSACTION.format(table="transactions"), "t3", 0, _LEGS, None
        )
        new = (await shard_store.load_transactions(connection, ["t3"], 5.0))["t3"]
        assert new.applied_legs == new.spec.legs == after["t1"].applied_legs
        rows = {r["id"]: r["applied_legs"] for r in await connection.fetch(TRANSACTIONS_SQL)}
        assert rows == {"t1": _LEGS, "t2": _LEGS, "t3": _LEGS}
        held = await connection.fetch(HELD_LEGS_SQL, ["t3", "m1"], [0, 1])
        assert sorted((r["id"], r["applied_legs"]) for r in held) == [("m1", _LEGS), ("t3", _LEGS)]
    finally:
        await connection.close()


async def test_the_writer_stores_applied_legs_only_where_they_differ(dsn: str) -> None:
    handle = await start_node(dsn)
    try:
        async with security.channel(handle.target) as channel:
            client = Client(channel)
            assert (
                names(await client.create(account("@cash"), account("c1/dep")))
                == ["RESULT_CODE_CREATED"] * 2
            )
            posted = await client.codes(
                transfer("c1/plain", "@cash", "c1/dep", 5),
                transfer("c1/hold", "@cash", "c1/dep", 7, pending=True),
                pb.Transaction(id="c1/post", code=1, post_pending_id="c1/hold"),
                pb.Transaction(id="c1/undo", code=1, reverses_id="c1/plain"),
            )
            assert names(posted) == ["RESULT_CODE_CREATED"] * 4
            post = await client.transaction("c1/post")
            assert list(post.transaction.legs) == []
            assert [(leg.account_id, leg.amount) for leg in post.applied_legs] == [
                ("@cash", 7),
                ("c1/dep", 7),
            ]
            plain = await client.transaction("c1/plain")
            assert list(plain.applied_legs) == list(plain.transaction.legs)
    finally:
        await handle.stop()
    connection = await asyncpg.connect(dsn)
    try:
        stored = {
            r["id"]: r["applied_legs"]
            for r in await connection.fetch(
                "SELECT id, applied_legs FROM transactions WHERE id LIKE 'c1/%'"
            )
        }
    finally:
        await connection.close()
    assert stored["c1/plain"] is None and stored["c1/hold"] is None
    assert stored["c1/post"] == "D @cash 7 USD,C c1/dep 7 USD"
    assert stored["c1/undo"] is not None  # the original's legs, reversed
    assert await audit_problems(dsn) == []
