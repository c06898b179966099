"""Property tests of the money invariants over random batches.

Random batches of transfers, multi-leg and multi-currency transactions, holds (posted in full
or in part, voided), reversals, linked groups, replays and amounts near the overflow edge are
applied (1) to the state machine alone, many times, and (2) through a real node and PostgreSQL.
After every batch: per currency total debits equal total credits; every account's counters
equal the sum of its postings; each account's balance-after chain is consistent; no
must-not-exceed account ever crossed its limit; the journal hash chain verifies.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from core import limits, validation
from core.model import AccountState, Posting, Rejection, TransactionSpec, TransactionState
from core.state import Batch, JournalPosition, check_balanced, needed_ids
from tally.v1 import ledger_pb2 as pb
from tests.support.helpers import Client, account, audit_problems

USD_ACCOUNTS = ["c0/dep", "c1/dep", "c2/limit", "c3/plain", "@pool"]
EUR_ACCOUNTS = ["e0/dep", "@pool-eur"]
NO_OVERDRAFT = {"c0/dep", "c1/dep", "e0/dep"}
CREDIT_LIMIT = {"c2/limit"}
ALL_ACCOUNTS = USD_ACCOUNTS + EUR_ACCOUNTS


@dataclass(frozen=True)
class Op:
    """A generated operation; `ref` picks an earlier transaction by position (modulo)."""

    kind: str
    legs: tuple[tuple[str, bool, int, str], ...] = ()
    ref: int = 0
    linked: bool = False
    partial: int = 0


amounts = st.one_of(
    st.integers(1, 1_000),
    st.integers(1, 1_000_000),
    st.sampled_from([2**62, limits.amount_max]),
)


@st.composite
def transfer_legs(draw: st.DrawFn) -> tuple[tuple[str, bool, int, str], ...]:
    if draw(st.booleans()):
        accounts, currency = USD_ACCOUNTS, "USD"
    else:
        accounts, currency = EUR_ACCOUNTS, "EUR"
    debit, credit = draw(st.permutations(accounts))[:2]
    amount = draw(amounts)
    if draw(st.integers(0, 4)) == 0 and currency == "USD":
        third = next(a for a in accounts if a not in (debit, credit))
        part = draw(st.integers(1, 1000))
        return (
            (debit, True, amount, currency),
            (third, True, part, currency),
            (credit, False, amount + part, currency),
        )
    return ((debit, True, amount, currency), (credit, False, amount, currency))


linked = st.sampled_from([False, False, False, True])
ops = st.one_of(
    st.builds(Op, st.just("transfer"), transfer_legs(), linked=linked),
    st.builds(Op, st.just("transfer"), transfer_legs(), linked=linked),
    st.builds(Op, st.just("hold"), transfer_legs(), linked=linked),
    st.builds(Op, st.just("post"), ref=st.integers(0, 50), partial=st.integers(0, 3)),
    st.builds(Op, st.just("void"), ref=st.integers(0, 50)),
    st.builds(Op, st.just("reverse"), ref=st.integers(0, 50)),
    st.builds(Op, st.just("replay"), ref=st.integers(0, 50)),
)
batches = st.lists(st.lists(ops, min_size=1, max_size=8), min_size=1, max_size=5)


class Generator:
    """Turns Ops into validated domain items with fresh ids, remembering earlier ones."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.numbers = itertools.count()
        self.issued: list[tuple[str, Op, tuple[tuple[str, int, int, str], ...]]] = []

    def item(self, op: Op) -> TransactionSpec | Rejection:
        tid = f"{self.prefix}-{next(self.numbers)}"
        wanted = {"post": ("hold",), "void": ("hold",), "reverse": ("transfer", "post")}
        candidates = [i for i in self.issued if i[1].kind in wanted.get(op.kind, (i[1].kind,))]
        earlier = candidates[op.ref % len(candidates)] if candidates else None
        raw: tuple[tuple[str, int, int, str], ...] = tuple(
            (a, 1 if debit else 2, amount, cur) for a, debit, amount, cur in op.legs
        )
        fields: dict[str, str] = {}
        if op.kind == "replay" and earlier is not None:
            tid, op, raw = earlier
            return self._check(tid, op, raw, {})
        if op.kind in ("post", "void", "reverse"):
            if earlier is None:
                return Rejection(validation.ResultCode.TRANSACTION_NOT_FOUND, "nothing yet")
            key = {"post": "post_pending_id", "void": "void_pending_id"}.get(op.kind, "reverses_id")
            fields[key] = earlier[0]
            if op.kind == "post" and op.partial and earlier[2]:
                raw = tuple(
                    (a, s, max(1, amount // (op.partial + 1)), c) for a, s, amount, c in earlier[2]
                )
        self.issued.append((tid, op, raw))
        return self._check(tid, op, raw, fields)

    def _check(
        self, tid: str, op: Op, raw: tuple[tuple[str, int, int, str], ...], fields: dict[str, str]
    ) -> TransactionSpec | Rejection:
        return validation.check_transaction(
            tid, raw, 1, {}, "", op.kind == "hold", 0, op.linked, **fields
        )

    def message(self, op: Op) -> pb.Transaction:
        item = self.item(op)
        if isinstance(item, Rejection):
            return pb.Transaction(id=f"{self.prefix}-bad-{next(self.numbers)}", code=1)
        tid, _, raw = self.issued[-1] if op.kind != "replay" else (item.id, op, ())
        message = pb.Transaction(id=item.id, code=1, linked=item.linked, pending=op.kind == "hold")
        for a, debit, amount, cur in (
            (x.account_id, x.is_debit, x.amount, x.currency) for x in item.legs
        ):
            message.legs.add(account_id=a, side=1 if debit else 2, amount=amount, currency=cur)
        target = item.target_id
        if target:
            setattr(
                message,
                {2: "post_pending_id", 3: "void_pending_id", 4: "reverses_id"}[item.kind],
                target,
            )
        del tid, raw
        return message


FUNDING = [
    Op("transfer", (("@pool", True, 10**6, "USD"), ("c0/dep", False, 10**6, "USD"))),
    Op("transfer", (("@pool", True, 10**6, "USD"), ("c1/dep", False, 10**6, "USD"))),
    Op("transfer", (("c2/limit", True, 10**6, "USD"), ("@pool", False, 10**6, "USD"))),
    Op("transfer", (("@pool-eur", True, 10**6, "EUR"), ("e0/dep", False, 10**6, "EUR"))),
]


def initial_accounts() -> dict[str, AccountState | None]:
    state: dict[str, AccountState | None] = {}
    for account_id in ALL_ACCOUNTS:
        spec = validation.check_account(
            account_id,
            "EUR" if account_id in EUR_ACCOUNTS else "USD",
            1,
            account_id in NO_OVERDRAFT,
            account_id in CREDIT_LIMIT,
            {},
        )
        assert not isinstance(spec, Rejection)
        state[account_id] = AccountState(spec, 1)
    return state


def check_postings_against_accounts(
    accounts: dict[str, AccountState | None], postings: list[Posting]
) -> None:
    sums = {a: [0, 0, 0, 0] for a in accounts}
    last: dict[str, tuple[int, int, int, int]] = {}
    for p in postings:
        counters = sums[p.account_id]
        counters[0 if p.is_debit else 1] += p.posted_amount
        counters[2 if p.is_debit else 3] += p.pending_delta
        after = (
            p.debits_posted_after,
            p.credits_posted_after,
            p.debits_pending_after,
            p.credits_pending_after,
        )
        assert after == tuple(counters), f"balance-after chain broken at posting {p.sequence}"
        assert min(after) >= 0 and max(after) <= limits.amount_max
        if p.account_id in NO_OVERDRAFT and p.is_debit:
            assert after[1] - after[0] - after[2] >= 0, f"{p.account_id} overdrawn"
        if p.account_id in CREDIT_LIMIT and not p.is_debit:
            assert after[0] - after[1] - after[3] >= 0, f"{p.account_id} over its limit"
        last[p.account_id] = after
    for account_id, state in accounts.items():
        assert state is not None
        assert state.counters() == tuple(sums[account_id]), f"{account_id} counters != postings"
    totals: dict[str, list[int]] = {}
    for state in accounts.values():
        assert state is not None
        t = totals.setdefault(state.spec.currency, [0, 0, 0, 0])
        for index, value in enumerate(state.counters()):
            t[index] += value
    for currency, (dp, cp, dq, cq) in totals.items():
        assert dp == cp and dq == cq, f"{currency} trial balance off"


@settings(max_examples=300, deadline=None)
@given(batches)
def test_state_machine_invariants(generated: list[list[Op]]) -> None:
    accounts = initial_accounts()
    transactions: dict[str, TransactionState | None] = {}
    position = JournalPosition(1, 0)
    postings: list[Posting] = []
    generator = Generator("t")
    for ops_in_batch in [FUNDING, *generated]:
        items = validation.mark_batch([generator.item(op) for op in ops_in_batch])
        _, transaction_ids = needed_ids([items])
        for tid in transaction_ids:
            transactions.setdefault(tid, None)
        batch = Batch(accounts, transactions, position, position.last_timestamp_ns + 1)
        results = batch.apply([items])[0]
        assert len(results) == len(items)
        for result in results:
            event(result.code.name)
        check_balanced(batch.out, batch.accounts)
        accounts, transactions, position = batch.accounts, batch.transactions, batch.position
        postings.extend(batch.out.postings)
        check_postings_against_accounts(accounts, postings)
    sequences = [p.sequence for p in postings]
    assert sequences == sorted(set(sequences))


@pytest.fixture
async def funded(channel: grpc.aio.Channel) -> Client:
    client = Client(channel)
    await client.create(
        *(
            account(
                a,
                currency="EUR" if a in EUR_ACCOUNTS else "USD",
                code=1,
                no_overdraft=a in NO_OVERDRAFT,
                credit_limit=a in CREDIT_LIMIT,
            )
            for a in ALL_ACCOUNTS
        )
    )
    return client


_examples = itertools.count()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batches)
async def test_node_invariants(funded: Client, node, generated: list[list[Op]]) -> None:
    generator = Generator(f"x{next(_examples)}")
    for ops_in_batch in [FUNDING, *generated]:
        messages = [generator.message(op) for op in ops_in_batch]
        results = await funded.post(*messages)
        assert len(results) == len(messages)
        known = set(pb.ResultCode.values())
        assert all(r.code in known and r.code != pb.RESULT_CODE_UNAVAILABLE for r in results)
    assert await audit_problems(node.dsn) == []
