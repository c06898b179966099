"""No item can stop a batch but a broken invariant.

An item whose application raises (here: records that break the state machine's assumptions,
as a malformed internal record that once passed the RPC layer could) is answered ITEM_FAULT,
with nothing of it applied, and the batch's other items apply as if it were not there. A
broken invariant still stops the batch.
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import ids
from core.invariant import InvariantError
from core.model import (
    AccountSpec,
    AccountState,
    Kind,
    Leg,
    ResultCode,
    Status,
    TransactionSpec,
    TransactionState,
)
from core.pieces import resolution_spec
from core.state import Batch, JournalPosition, WriteSet, check_balanced

T0 = 1_800_000_000_000_000_000
CLEARING = ids.clearing_account("USD")
MARKER = ids.abort_marker_id("x", "a1")  # recorded with a reason that is no ResultCode
PIECE = ids.piece_id("f", "a1")  # a fate piece missing its fate: posting it raises


def _account(account_id: str, debits: int = 0, credits: int = 0, pending: int = 0) -> AccountState:
    spec = AccountSpec(account_id, "USD", 1, False, False, ())
    return AccountState(spec, T0, debits, credits, pending)


def _spec(
    transaction_id: str, kind: Kind, *legs: Leg, target: str = "", **fields: object
) -> TransactionSpec:
    spec = TransactionSpec(transaction_id, kind, tuple(legs), 1, (), "", 0, target)
    return spec._replace(**fields)  # type: ignore[arg-type]


def _transfer(
    transaction_id: str, debit: str, credit: str, amount: int, linked: bool = False
) -> TransactionSpec:
    legs = (Leg(debit, True, amount, "USD"), Leg(credit, False, amount, "USD"))
    return _spec(transaction_id, Kind.ORDINARY, *legs, linked=linked)


def _state() -> tuple[dict[str, AccountState | None], dict[str, TransactionState | None]]:
    held = (Leg("c/a", True, 40, "USD"), Leg(CLEARING, False, 40, "USD"))
    piece = _spec(PIECE, Kind.PREPARED, *held, target="1", metadata=((ids.DECIDES_KEY, "h"),))
    hold = _spec("h", Kind.PENDING, Leg("c/b", True, 5, "USD"), Leg("c/a", False, 5, "USD"))
    marker = _spec(MARKER, Kind.ABORT, target="x", code=12345)
    accounts: dict[str, AccountState | None] = {
        "c/a": _account("c/a", credits=1_000, pending=40),
        "c/b": _account("c/b", credits=1_000),
        CLEARING: _account(CLEARING),
    }
    accounts["c/b"].debits_pending = 5  # type: ignore[union-attr]
    accounts["c/a"].credits_pending = 5  # type: ignore[union-attr]
    accounts[CLEARING].credits_pending = 40  # type: ignore[union-attr]
    transactions: dict[str, TransactionState | None] = {
        PIECE: TransactionState(piece, held, T0, Status.PENDING, T0 + 10**12),
        "h": TransactionState(hold, hold.legs, T0, Status.PENDING, resolved_by_id="f"),
        MARKER: TransactionState(marker, (), T0, Status.POSTED),
        "x": None,
        "y": None,
    }
    return accounts, transactions


def _batch(requests: list[list[object]]) -> tuple[Batch, list[list[object]]]:
    accounts, transactions = _state()
    for items in requests:
        for item in items:
            if isinstance(item, TransactionSpec):
                transactions.setdefault(item.id, None)
                transactions.setdefault(ids.settlement_id(PIECE, True), None)
    batch = Batch(accounts, transactions, JournalPosition(1, T0), T0 + 1)
    return batch, batch.apply(requests)  # type: ignore[arg-type,return-value]


def _commit_of_marker() -> TransactionSpec:
    return _spec("x", Kind.COMMIT, *_transfer("x", "c/a", "c/b", 1).legs, target=MARKER)


def _counters(batch: Batch, account_id: str) -> tuple[int, int, int, int]:
    account = batch.accounts[account_id]
    assert account is not None
    return account.counters()


def test_a_faulting_item_is_its_own_error_and_the_batch_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    requests: list[list[object]] = [
        [_transfer("t1", "c/a", "c/b", 10), _commit_of_marker(), _transfer("t2", "c/b", "c/a", 3)],
        [resolution_spec(PIECE, True), _transfer("t3", "c/a", "c/b", 1)],
    ]
    with caplog.at_level(logging.ERROR, logger="tally.state"):
        batch, results = _batch(requests)
    codes = [[r.code for r in request] for request in results]  # type: ignore[attr-defined]
    assert codes == [
        [ResultCode.CREATED, ResultCode.ITEM_FAULT, ResultCode.CREATED],
        [ResultCode.ITEM_FAULT, ResultCode.CREATED],
    ]
    fault = results[0][1]
    assert "ValueError" in fault.message and "nothing of it was applied" in fault.message  # type: ignore[attr-defined]
    assert "KeyError" in results[1][0].message  # type: ignore[attr-defined]
    # Logged with the traceback, naming the item.
    faults = [r for r in caplog.records if "ITEM_FAULT" in r.getMessage()]
    assert len(faults) == 2 and all(r.exc_info for r in faults)
    assert "'x'" in faults[0].getMessage()
    # Nothing of the faulting items: the piece is still held, the hold still locked by it,
    # the clearing account and c/a's pending counters untouched; the transfers applied.
    assert batch.transactions[PIECE].status is Status.PENDING  # type: ignore[union-attr]
    assert batch.transactions["h"].resolved_by_id == "f"  # type: ignore[union-attr]
    assert batch.transactions[ids.settlement_id(PIECE, True)] is None
    assert batch.transactions["x"] is None
    assert _counters(batch, CLEARING) == (0, 0, 0, 40)
    assert _counters(batch, "c/a") == (11, 1_003, 40, 5)
    assert _counters(batch, "c/b") == (3, 1_011, 5, 0)
    out = batch.out
    assert [t.spec.id for t in out.new_transactions] == ["t1", "t2", "t3"]
    assert {p.transaction_id for p in out.postings} == {"t1", "t2", "t3"}
    assert out.holds_closed == [] and PIECE not in out.changed_transactions
    assert set(out.changed_accounts) == {"c/a", "c/b"}
    check_balanced(out, batch.accounts)


def test_a_faulting_item_fails_its_linked_group() -> None:
    requests: list[list[object]] = [
        [
            _transfer("g1", "c/a", "c/b", 7, linked=True),
            _commit_of_marker(),
            _transfer("g3", "c/b", "c/a", 2),
        ]
    ]
    batch, results = _batch(requests)
    assert [r.code for r in results[0]] == [  # type: ignore[attr-defined]
        ResultCode.LINKED_ITEM_FAILED,
        ResultCode.ITEM_FAULT,
        ResultCode.CREATED,
    ]
    assert batch.transactions["g1"] is None
    assert [t.spec.id for t in batch.out.new_transactions] == ["g3"]
    assert _counters(batch, "c/a") == (0, 1_002, 40, 5)


def test_a_broken_invariant_still_stops_the_batch() -> None:
    accounts, transactions = _state()
    batch = Batch(accounts, transactions, JournalPosition(1, T0), T0 + 1)
    # "z" was never loaded for this batch: the writer broke its promise.
    with pytest.raises(InvariantError):
        batch.apply([[_transfer("t1", "c/a", "c/b", 1), _transfer("z", "c/a", "ghost", 1)]])


def test_the_batch_inputs_are_not_mutated_by_a_fault() -> None:
    accounts, transactions = _state()
    before = {k: v.counters() for k, v in accounts.items() if v is not None}
    transactions.update({"t1": None, ids.settlement_id(PIECE, True): None})
    batch = Batch(accounts, transactions, JournalPosition(1, T0), T0 + 1)
    batch.apply([[resolution_spec(PIECE, True), _transfer("t1", "c/a", "c/b", 1)]])
    assert {k: v.counters() for k, v in accounts.items() if v is not None} == before
    assert transactions[PIECE].status is Status.PENDING  # type: ignore[union-attr]
    assert transactions["h"].resolved_by_id == "f"  # type: ignore[union-attr]


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ok", "fault", "piece", "linked-ok", "linked-fault"]),
            st.integers(1, 50),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_faults_change_nothing_but_their_own_results(plan: list[tuple[str, int]]) -> None:
    """Money invariant: the batch with faulting items writes exactly what the batch without
    them writes (their linked groups aside), and balances per currency."""
    with_faults: list[object] = []
    without: list[object] = []
    for n, (what, amount) in enumerate(plan):
        item = _transfer(f"t{n}", "c/a" if n % 2 else "c/b", "c/b" if n % 2 else "c/a", amount)
        if what == "ok":
            with_faults.append(item)
            without.append(item)
        elif what == "fault":
            with_faults.append(_commit_of_marker())
        elif what == "piece":
            with_faults.append(resolution_spec(PIECE, True))
        elif what == "linked-ok":
            with_faults.append(item._replace(linked=True))
            with_faults.append(_transfer(f"u{n}", "c/b", "c/a", 1))
            without.append(item._replace(linked=True))
            without.append(_transfer(f"u{n}", "c/b", "c/a", 1))
        else:
            with_faults.append(item._replace(linked=True))
            with_faults.append(_commit_of_marker())
    # A fault item may repeat: each faults the same way, whatever came before.
    faulty, faulty_results = _batch([with_faults])
    clean, _ = _batch([without])
    assert ResultCode.CREATED in {r.code for r in faulty_results[0]} or not without  # type: ignore[attr-defined]
    assert _writes(faulty.out) == _writes(clean.out)
    for account_id in ("c/a", "c/b", CLEARING):
        assert _counters(faulty, account_id) == _counters(clean, account_id)
    check_balanced(faulty.out, faulty.accounts)


def _writes(out: WriteSet) -> tuple[object, ...]:
    return (
        [t.spec.id for t in out.new_transactions],
        [(p.transaction_id, p.account_id, p.posted_amount, p.pending_delta) for p in out.postings],
        sorted(out.changed_accounts),
        sorted(out.changed_transactions),
        out.holds_closed,
    )
