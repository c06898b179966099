"""core.moves: a slot move's journal entries balance on each side and bring the target's
counters to the source's exactly; the fence refuses what writes to a moved-out slot; a
rebalance reaches even shares and stops."""

from __future__ import annotations

import collections

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import ids, moves, validation
from core.model import (
    AccountSpec,
    AccountState,
    Kind,
    Leg,
    Rejection,
    ResultCode,
    Status,
    TransactionSpec,
    TransactionState,
)
from core.slots import SLOT_COUNT, SlotMap, account_slot, slot_of
from core.state import JournalPosition, check_balanced


def _account(account_id: str, debits: int, credits: int, closed_at_ns: int = 0) -> AccountState:
    spec = AccountSpec(account_id, "USD", 1, False, False, ())
    return AccountState(spec, 1_000 + len(account_id), debits, credits, 0, 0, 7, closed_at_ns)


def _record(transaction_id: str, status: Status = Status.POSTED) -> TransactionState:
    legs = (Leg("a/x", True, 5, "USD"), Leg("a/y", False, 5, "USD"))
    spec = TransactionSpec(transaction_id, Kind.ORDINARY, legs, 1, (), "", 0, "")
    return TransactionState(spec, legs, 99, status)


ACCOUNTS = [_account("k/dep", 300, 1_000), _account("k/sav", 0, 250), _account("k/empty", 0, 0)]


def test_the_move_out_leaves_each_account_at_net_zero_and_balances() -> None:
    writes, position, states = moves.move_out_entries(
        "ab12", 3, ACCOUNTS, {}, JournalPosition(10, 500), 400
    )
    check_balanced(writes, dict(states))
    assert [t.spec.id for t in writes.new_transactions] == [
        ids.move_out_id("ab12", "k/dep"),
        ids.move_out_id("ab12", "k/sav"),
    ]  # the empty account needs no entry
    dep, sav = states["k/dep"], states["k/sav"]
    assert (dep.debits_posted, dep.credits_posted) == (1_300, 1_300)
    assert (sav.debits_posted, sav.credits_posted) == (250, 250)
    assert [a.spec.id for a in writes.new_accounts] == [ids.moves_account("USD")]
    assert position.next_posting_sequence == 10 + len(writes.postings)
    assert all(p.timestamp_ns > 500 for p in writes.postings)
    # Read back from its legs when the move-out is asked again.
    out = writes.new_transactions[0]
    assert moves.counters_before_out(out.applied_legs, "k/dep") == (300, 1_000)


def test_the_move_in_brings_the_target_to_the_source_counters_and_commits_to_the_records() -> None:
    closed = _account("k/old", 40, 40, closed_at_ns=2_000)
    records = [_record("k/t2"), _record("k/t1")]
    writes, _, states = moves.move_in_entries(
        "ab12", 1, [*ACCOUNTS, closed], records, {}, JournalPosition(1, 0), 400
    )
    check_balanced(writes, dict(states))
    for source in [*ACCOUNTS, closed]:
        moved = states[source.spec.id]
        assert (moved.debits_posted, moved.credits_posted) == (
            source.debits_posted,
            source.credits_posted,
        )
        assert (moved.version, moved.closed_at_ns) == (source.version, source.closed_at_ns)
    assert writes.closures == [("k/old", 2_000)]
    created = [a.created_at_ns for a in writes.new_accounts]
    assert created == sorted(created)  # the order the audit reads a block's rows back in
    summary = dict(writes.new_transactions[0].spec.metadata)
    assert summary[moves.COUNT_KEY] == "2"
    assert summary[moves.DIGEST_KEY] == moves.records_digest(list(reversed(records)))


def test_a_move_in_of_empty_accounts_carries_its_summary_alone() -> None:
    writes, _, states = moves.move_in_entries(
        "ab12", 1, [_account("k/empty", 0, 0)], [_record("k/t1")], {}, JournalPosition(1, 0), 0
    )
    check_balanced(writes, dict(states))
    (summary,) = writes.new_transactions
    assert summary.spec.legs == () and dict(summary.spec.metadata)[moves.COUNT_KEY] == "1"


def test_what_cannot_move_is_said() -> None:
    held = _account("k/dep", 0, 10)
    held.debits_pending = 5
    assert "amounts held" in moves.held_refusal([held], [])
    assert "open hold" in moves.held_refusal([], [_record("k/h", Status.PENDING)])
    assert moves.held_refusal(ACCOUNTS, [_record("k/t1")]) == ""
    assert "overflow" in moves.refusal_of([_account("k/big", 2**62, 2**62)], [])
    with pytest.raises(moves.MoveRefusedError, match=r"not in 0\.\.4095"):
        moves.check_slots([SLOT_COUNT])
    with pytest.raises(moves.MoveRefusedError, match="no slots"):
        moves.check_slots([])


def test_the_fence_refuses_items_writing_to_a_moved_out_slot() -> None:
    slot = account_slot("k/dep")
    moved_out = {slot: "ab12"}
    inside = TransactionSpec("k/t9", Kind.ORDINARY, (), 1, (), "", 0, "", linked=True)
    legs_inside = TransactionSpec(
        "other/t1", Kind.ORDINARY, (Leg("@cash", True, 1, "USD"), Leg("k/sav", False, 1, "USD")),
        1, (), "", 0, "",
    )  # fmt: skip
    outside = TransactionSpec(
        "z/t1", Kind.ORDINARY, (Leg("@cash", True, 1, "USD"), Leg("z/sav", False, 1, "USD")),
        1, (), "", 0, "",
    )  # fmt: skip
    piece = TransactionSpec(
        ids.piece_id("z/t2", "af"), Kind.PREPARED, (Leg("k/dep", True, 1, "USD"),), 1, (), "",
        0, "0",
    )  # fmt: skip
    assert slot_of("z") != slot and slot_of("other") != slot
    refused = moves.refuse_moved([inside, legs_inside, outside, piece], moved_out)
    assert refused[2] is outside
    for item in (refused[0], refused[1], refused[3]):
        assert isinstance(item, Rejection) and item.code is ResultCode.WRONG_SHARD
        assert "move ab12" in item.message
    assert isinstance(refused[0], Rejection) and refused[0].linked


def test_a_rebalance_onto_an_added_shard_moves_each_slot_once_and_ends_even() -> None:
    owners = list(SlotMap.even(4).owners)
    moved: set[int] = set()
    while (step := moves.rebalance_step(owners, range(5), 256)) is not None:
        source, target, slots = step
        assert len(slots) <= 256 and all(owners[s] == source for s in slots)
        assert not moved & set(slots)
        moved.update(slots)
        for slot in slots:
            owners[slot] = target
    assert sorted(collections.Counter(owners).values()) == [819, 819, 819, 819, 820]
    assert moves.rebalance_step(owners, range(5), 256) is None


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, 6), min_size=1, max_size=64),
    st.integers(1, 8),
    st.integers(1, 600),
)
def test_any_rebalance_ends_with_every_share_within_one(
    runs: list[int], shard_count: int, per_move: int
) -> None:
    """Any map (runs of owners, spread over the 4096 slots) onto any set of shards."""
    owners = [runs[slot * len(runs) // SLOT_COUNT] for slot in range(SLOT_COUNT)]
    shards = set(range(shard_count)) | set(owners)
    for _ in range(SLOT_COUNT):
        step = moves.rebalance_step(owners, shards, per_move)
        if step is None:
            break
        _, target, slots = step
        for slot in slots:
            owners[slot] = target
    counts = collections.Counter({shard: 0 for shard in shards})
    counts.update(owners)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_clients_cannot_create_post_to_or_close_a_slot_move_account() -> None:
    moves_usd = ids.moves_account("USD")
    legs = (Leg(moves_usd, True, 1, "USD"), Leg("k/sav", False, 1, "USD"))
    posted = validation.refuse_clearing_legs(
        [TransactionSpec("k/t1", Kind.ORDINARY, legs, 1, (), "", 0, "")]
    )
    assert isinstance(posted[0], Rejection) and posted[0].code is ResultCode.INVALID_LEGS
    assert posted[0].message == validation.MOVES_RESERVED
    created = validation.refuse_clearing_accounts(
        [moves.moves_account_spec("USD"), AccountSpec("k/x", "USD", 1, False, False, ())],
        lambda spec: spec.id,
    )
    assert isinstance(created[0], Rejection) and created[0].code is ResultCode.INVALID_ID
    assert created[0].message == validation.MOVES_RESERVED
    assert not isinstance(created[1], Rejection)
    assert validation.clearing_leg_problem(legs) == validation.MOVES_RESERVED
