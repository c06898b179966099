"""Property test of the money invariants across cold history: random transfers, holds (posted,
voided, left open), reversals and replays through a real node (--cold-dir) on PostgreSQL, with
the archiver moving everything committed so far out of the database at random points. After
the run: every account's history (hot and cold, read page by page through the API) is its
postings exactly once, in order, their balance-after chain continuous and ending at the
account's counters, which equal the sum of its postings; debits equal credits; every
transaction created is found by id and, sent again, is replayed, never applied twice."""

from __future__ import annotations

import itertools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.store.cold.archive import archive_and_remove
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.cold import history_pages
from tests.support.helpers import Client, account, start_node, transfer

ACCOUNTS = ("@pool", "c0/dep", "c1/dep", "c2/dep")
CREATED = pb.RESULT_CODE_CREATED
_databases = itertools.count(1)


@dataclass(frozen=True)
class Op:
    kind: str  # transfer, hold, post, void, reverse, archive
    debit: int = 0
    credit: int = 1
    amount: int = 1
    ref: int = 0  # an earlier hold or transfer, by position (modulo)


ops = st.lists(
    st.one_of(
        st.builds(
            Op,
            st.sampled_from(("transfer", "hold")),
            st.integers(0, 3),
            st.integers(0, 3),
            st.integers(1, 10_000),
        ),
        st.builds(Op, st.sampled_from(("post", "void", "reverse")), ref=st.integers(0, 50)),
        st.just(Op("archive")),
    ),
    min_size=4,
    max_size=24,
)


def _request(op: Op, n: int, holds: list[str], transfers: list[str]) -> pb.Transaction | None:
    tid = f"c0/t-{n}"
    if op.kind in ("transfer", "hold"):
        if op.debit == op.credit:
            return None
        debit, credit = ACCOUNTS[op.debit], ACCOUNTS[op.credit]
        return transfer(tid, debit, credit, op.amount, pending=op.kind == "hold")
    if op.kind in ("post", "void") and holds:
        target = holds[op.ref % len(holds)]
        field = "post_pending_id" if op.kind == "post" else "void_pending_id"
        return pb.Transaction(id=tid, code=1, **{field: target})  # type: ignore[arg-type]
    if op.kind == "reverse" and transfers:
        return pb.Transaction(id=tid, code=9, reverses_id=transfers[op.ref % len(transfers)])
    return None


async def _archive(dsn: str, root: Path) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await archive_and_remove(
            connection, root, created_before_ns=time.time_ns(), blocks_per_segment=2
        )
    finally:
        await connection.close()


def _counters(balance: pb.Balance) -> tuple[int, int, int, int]:
    return (
        balance.debits_posted,
        balance.credits_posted,
        balance.debits_pending,
        balance.credits_pending,
    )


async def _check_account(client: Client, account_id: str) -> tuple[int, int]:
    """The account's history against its counters; its posted debits and credits."""
    history = await history_pages(client, account_id, limit=3)
    sequences = [p.sequence for p in history]
    assert sequences == sorted(set(sequences))  # each once, in order
    sums = [0, 0, 0, 0]
    for posting in history:
        debit = posting.side == pb.SIDE_DEBIT
        sums[0 if debit else 1] += posting.posted_amount
        sums[2 if debit else 3] += posting.pending_delta
        assert _counters(posting.balance_after) == tuple(sums)  # the chain, continuous
    balance = await client.balance(account_id)
    assert _counters(balance) == tuple(sums)
    return sums[0], sums[1]


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=ops)
async def test_money_holds_across_archiving(pg: EmbeddedPostgres, ops: list[Op]) -> None:
    name = f"cold_prop_{next(_databases)}_{time.monotonic_ns()}"
    await pg.create_database_async(name)
    dsn = pg.dsn(name)
    with tempfile.TemporaryDirectory(prefix="tally-cold-prop-") as scratch:
        root = Path(scratch)
        handle = await start_node(dsn, cold_dir=str(root))
        try:
            async with security.channel(handle.target) as channel:
                client = Client(channel)
                assert await client.create(*(account(a) for a in ACCOUNTS)) == [CREATED] * 4
                created: list[pb.Transaction] = []
                holds: list[str] = []
                transfers: list[str] = []
                for n, op in enumerate([*ops, Op("archive")]):
                    if op.kind == "archive":
                        await _archive(dsn, root)
                        continue
                    request = _request(op, n, holds, transfers)
                    if request is None:
                        continue
                    if await client.codes(request) == [CREATED]:
                        created.append(request)
                        (holds if op.kind == "hold" else transfers).append(request.id)
                totals = [await _check_account(client, a) for a in ACCOUNTS]
                assert sum(d for d, _ in totals) == sum(c for _, c in totals)
                for request in created:  # every one found, and replayed when sent again
                    assert (await client.transaction(request.id)).transaction.id == request.id
                    assert await client.codes(request) == [pb.RESULT_CODE_REPLAYED]
                assert [await _check_account(client, a) for a in ACCOUNTS] == totals
        finally:
            await handle.stop()
