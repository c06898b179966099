"""core.moves: a slot move's journal entries balance on each side and bring the target's
counters to the source's exactly; the fence refuses what writes to a moved-out slot; a
rebalance reaches even shares and stops."""

from __future__ import annotations

import collections

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import ids, moves, validation
from core.invariant import check
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
from core.state import Batch, JournalPosition, WriteSet, check_balanced


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
    assert "overflow" in moves.refusal_of([_account("k/big", 2**62, 2**62)], [])
    with pytest.raises(moves.MoveRefusedError, match=r"not in 0\.\.4095"):
        moves.check_slots([SLOT_COUNT])
    with pytest.raises(moves.MoveRefusedError, match="no slots"):
        moves.check_slots([])


def _hold(
    hold_id: str, legs: tuple[Leg, ...], expires_at_ns: int = 0, kind: Kind = Kind.PENDING
) -> TransactionState:
    spec = TransactionSpec(hold_id, kind, legs, 1, (), "", 0, "")
    return TransactionState(spec, legs, 50, Status.PENDING, expires_at_ns)


def _held(account: AccountState, *holds: TransactionState) -> AccountState:
    """The account with the holds' amounts on it pending."""
    held = account.copy()
    for hold in holds:
        for leg in hold.applied_legs:
            if leg.account_id == held.spec.id:
                if leg.is_debit:
                    held.debits_pending += leg.amount
                else:
                    held.credits_pending += leg.amount
    return held


def test_which_open_holds_move_and_why_the_others_do_not() -> None:
    slots = frozenset({slot_of("k")})
    assert slot_of("z") not in slots
    usd = "USD"
    contained = _hold("k/h1", (Leg("k/dep", True, 5, usd), Leg("@cash", False, 5, usd)), 9)
    dep = _held(_account("k/dep", 0, 100), contained)
    assert moves.moving_holds([dep], [contained], slots) == [contained]
    # A hold whose record or a leg stays would span two shards after the move: refused.
    spanning = _hold("k/h2", (Leg("k/dep", True, 5, usd), Leg("z/sav", False, 5, usd)))
    homed_away = _hold("z/h3", (Leg("k/dep", True, 5, usd), Leg("z/sav", False, 5, usd)))
    for hold, why in ((spanning, "homed in the slots"), (homed_away, "homed in slot")):
        with pytest.raises(moves.MoveRefusedError, match=why) as refused:
            moves.moving_holds([_held(dep, hold)], [contained, hold], slots)
        assert not isinstance(refused.value, moves.MoveBusyError)
    # A cross-shard hold's coordinator record, and a piece of one (re-armed since prepared).
    coordinated = _hold("k/h4", (Leg("k/dep", True, 5, usd),), kind=Kind.HOLD)
    with pytest.raises(moves.MoveRefusedError, match="cross-shard hold") as refused:
        moves.moving_holds([dep], [coordinated], slots)
    assert not isinstance(refused.value, moves.MoveBusyError)
    piece_spec = TransactionSpec(
        ids.piece_id("z/h5", "ab"), Kind.PREPARED, (Leg("k/dep", True, 5, usd),), 0, (), "", 30,
        "3",
    )  # fmt: skip
    in_flight = TransactionState(piece_spec, piece_spec.legs, 50, Status.PENDING, 50 + 30 * 10**9)
    with pytest.raises(moves.MoveBusyError, match="between its prepare"):
        moves.moving_holds([_held(dep, in_flight)], [contained, in_flight], slots)
    rearmed = in_flight.copy()
    rearmed.expires_at_ns += 3_600 * 10**9
    with pytest.raises(moves.MoveRefusedError, match="coordinated at shard 3") as refused:
        moves.moving_holds([_held(dep, rearmed)], [contained, rearmed], slots)
    assert not isinstance(refused.value, moves.MoveBusyError)
    # A hold locked by a piece deciding it, and amounts no open hold explains: may pass soon.
    locked = contained.copy()
    locked.resolved_by_id = "z/p1"
    with pytest.raises(moves.MoveBusyError, match="being decided"):
        moves.moving_holds([dep], [locked], slots)
    with pytest.raises(moves.MoveBusyError, match="no open hold"):
        moves.moving_holds([dep], [], slots)
    # Holds elsewhere, on accounts elsewhere, are no concern of the move.
    away = _hold("z/h6", (Leg("z/dep", True, 5, usd), Leg("@cash", False, 5, usd)))
    assert moves.moving_holds([_account("k/sav", 0, 0)], [away], slots) == []


def _rearmed_piece(hold_id: str, coordinator: int, *legs: Leg) -> TransactionState:
    """A held piece of a committed cross-shard hold: re-armed since its prepare (a deadline
    an hour on), balanced by its clearing leg."""
    spec = TransactionSpec(
        ids.piece_id(hold_id, "ab"), Kind.PREPARED, legs, 0, (), "", 30, str(coordinator)
    )
    return TransactionState(spec, legs, 50, Status.PENDING, 50 + 3_600 * 10**9)


def test_a_held_piece_moves_with_its_accounts_to_any_shard_once_its_target_is_known() -> None:
    """A committed hold's piece on the slots' accounts moves with them (its clearing leg is the
    shards' own): released at the source, held again at the target with its deadline; to any
    shard, never split from an account that stays, never without the target asked."""
    k, z = slot_of("k"), slot_of("z")
    slots, usd = frozenset({k}), "USD"
    clearing = ids.clearing_account(usd)
    piece = _rearmed_piece(
        "z/h1", 3, Leg("k/dep", False, 5, usd), Leg("k/sav", False, 2, usd),
        Leg(clearing, True, 7, usd),
    )  # fmt: skip
    dep, sav = _held(_account("k/dep", 0, 100), piece), _held(_account("k/sav", 0, 0), piece)
    assert moves.moving_holds([dep, sav], [piece], slots, target=2) == [piece]
    assert moves.moving_pieces([piece]) == [piece]
    assert moves.stuck_slots([piece], slots, target=2) == {}
    assert moves.is_moving_piece(piece, slots) and moves.touched_slots(piece, slots) == [k]
    # To its hold's coordinator too (the coordinator record and one piece may share a shard).
    assert moves.moving_holds([dep, sav], [piece], slots, target=3) == [piece]
    with pytest.raises(moves.MoveRefusedError, match="did not check the target"):
        moves.moving_holds([dep, sav], [piece], slots)
    assert list(moves.stuck_slots([piece], slots)) == [k]
    split = _rearmed_piece(
        "z/h2", 3, Leg("k/dep", False, 5, usd), Leg("z/sav", False, 2, usd),
        Leg(clearing, True, 7, usd),
    )  # fmt: skip
    with pytest.raises(moves.MoveRefusedError, match="span two shards"):
        moves.moving_holds([_held(dep, split)], [split], slots, target=2)
    # What a target takes as of the slots: a piece only with every account leg in them.
    assert moves.travels_with(piece, slots) and not moves.travels_with(split, slots)
    assert moves.travels_with(split, frozenset({k, z})) and moves.travels_with(
        _record("k/t1"), slots
    )
    assert sorted(moves.stuck_slots([split], frozenset({k, z}) - {z}, target=2)) == [k]
    assert moves.stuck_slots([split], frozenset({k, z}), target=2) == {}  # moved together

    source_clearing = _held(
        AccountState(AccountSpec(clearing, usd, 9999, False, False, ()), 0), piece
    )
    out, _, after = moves.move_out_entries(
        "ab12", 2, [dep, sav], {}, JournalPosition(1, 0), 100, [piece], {clearing: source_clearing}
    )
    check_balanced(out, dict(after))
    assert _counters(after[clearing])[2:] == (0, 0)  # released with the accounts
    ended = out.changed_transactions[piece.spec.id]
    assert (ended.status, ids.moved_out_by(ended.resolved_by_id, piece.spec.id)) == (
        Status.PENDING_VOIDED, "ab12",
    )  # fmt: skip
    assert _record_fields(moves.record_before_out(ended, "ab12")) == _record_fields(piece)
    into, _, arrived = moves.move_in_entries(
        "ab12", 0, [dep, sav], [piece], {}, JournalPosition(1, 0), 200, [],
        {clearing: AccountState(AccountSpec(clearing, usd, 9999, False, False, ()), 0)},
    )  # fmt: skip
    check_balanced(into, dict(arrived))
    assert _counters(arrived[clearing])[2:] == (7, 0)  # held again at the target's clearing
    assert _counters(arrived["k/dep"]) == _counters(dep)
    assert into.holds_opened == [(piece.spec.id, piece.expires_at_ns)]
    moves.check_holds_in([piece], [dep, sav], slots)
    with pytest.raises(moves.MoveRefusedError, match="does not move in"):
        moves.check_holds_in([piece], [dep], slots)


def test_a_cross_shard_holds_record_moves_with_its_slot_once_its_target_is_checked() -> None:
    """The coordinator record of a committed cross-shard hold homed in the slots, its legs on
    their accounts (and clearing), moves like a single-shard hold, to any shard; without a
    target (a mover from before), or spanning slots, or naming no attempt, it stays."""
    k, z = slot_of("k"), slot_of("z")
    slots, usd = frozenset({k}), "USD"
    legs = (Leg("k/dep", True, 5, usd), Leg(ids.clearing_account(usd), False, 5, usd))
    spec = TransactionSpec("k/h1", Kind.HOLD, legs, 1, (), "", 0, ids.abort_marker_id("k/h1", "ab"))
    hold = TransactionState(spec, legs, 50, Status.PENDING, 0)
    dep = _held(_account("k/dep", 0, 100), hold)
    assert moves.moving_holds([dep], [hold], slots, target=2) == [hold]
    assert moves.moving_pieces([hold]) == []
    assert not moves.is_moving_piece(hold, slots)  # not asked of the target: it may join a piece
    assert moves.stuck_slots([hold], slots, target=2) == {}
    with pytest.raises(moves.MoveRefusedError, match="did not check the target"):
        moves.moving_holds([dep], [hold], slots)
    spanning = TransactionState(
        spec._replace(id="k/h2", target_id=ids.abort_marker_id("k/h2", "ab")),
        (*legs, Leg("z/sav", False, 1, usd)), 50, Status.PENDING, 0,
    )  # fmt: skip
    assert list(moves.stuck_slots([spanning], frozenset({k, z}) - {z}, target=2)) == [k]
    unnamed = TransactionState(spec._replace(target_id=""), legs, 50, Status.PENDING, 0)
    with pytest.raises(moves.MoveRefusedError, match="does not name its committed attempt"):
        moves.moving_holds([dep], [unnamed], slots, target=2)
    assert not moves.is_moving_piece(unnamed, slots)
    moves.check_holds_in([hold], [dep], slots)
    with pytest.raises(moves.MoveRefusedError, match="not homed"):
        moves.check_holds_in([hold], [dep], frozenset({z}))


def test_the_slots_that_cannot_move_now_are_named_with_why() -> None:
    """What moving_holds refuses outright keeps the slots it touches (and only those of the
    move); what may pass soon, or moves with the slots, keeps none."""
    k, z, q = slot_of("k"), slot_of("z"), slot_of("q")
    assert len({k, z, q}) == 3
    usd = "USD"
    spanning = _hold("k/h2", (Leg("k/dep", True, 5, usd), Leg("z/sav", False, 5, usd)))
    coordinated = _hold("q/h4", (Leg("q/dep", True, 5, usd),), kind=Kind.HOLD)
    contained = _hold("k/h1", (Leg("k/dep", True, 5, usd), Leg("@cash", False, 5, usd)), 9)
    piece_spec = TransactionSpec(
        ids.piece_id("z/h5", "ab"), Kind.PREPARED, (Leg("q/sav", True, 5, usd),), 0, (), "", 30,
        "3",
    )  # fmt: skip
    in_flight = TransactionState(piece_spec, piece_spec.legs, 50, Status.PENDING, 50 + 30 * 10**9)
    records = [spanning, coordinated, contained, in_flight]
    stuck = moves.stuck_slots(records, frozenset({k, q}))
    assert sorted(stuck) == [k, q]
    assert "span two shards" in stuck[k] and "cross-shard hold" in stuck[q]
    # The spanning hold moves when both its slots do; the piece in flight waits, keeps none.
    assert moves.stuck_slots([spanning, contained, in_flight], frozenset({k, z})) == {}
    rearmed = in_flight.copy()
    rearmed.expires_at_ns += 3_600 * 10**9
    assert list(moves.stuck_slots([rearmed], frozenset({k, q}))) == [q]
    # A rebalance passes them by: the next highest slots instead.
    owners = [0] * 3000 + [1] * 1096
    step = moves.rebalance_step(owners, range(3), 50, None, {2999, 2990})
    assert step is not None and step[2] == [s for s in range(2948, 3000) if s not in (2999, 2990)]


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
    # What posts, voids or reverses a record homed in the slot is refused too (the record is
    # the target's), whatever its own id; the source's expiry of it is not (it finds the hold
    # released by the move-out).
    naming = [
        TransactionSpec("z/p1", Kind.POST_PENDING, (), 1, (), "", 0, "k/h1"),
        TransactionSpec("z/v1", Kind.VOID_PENDING, (), 1, (), "", 0, "k/h1"),
        TransactionSpec("z/r1", Kind.REVERSAL, (), 1, (), "", 0, "k/t1"),
        TransactionSpec(ids.expiry_id("k/h1"), Kind.EXPIRY, (), 0, (), "", 0, "k/h1"),
    ]
    refused = moves.refuse_moved(naming, moved_out)
    assert [isinstance(item, Rejection) for item in refused] == [True, True, True, False]


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


def test_a_rebalance_never_gives_a_shard_back_a_slot_it_left() -> None:
    """Shard 2 left slots 2900..2999 (they went to shard 0): the rebalance onto it takes shard
    0's other slots, and refuses clearly when those are all it could take."""
    owners = [0] * 3000 + [1] * 1096
    left = {2: set(range(2900, 3000))}
    step = moves.rebalance_step(owners, range(3), 50, left)
    assert step is not None
    source, target, slots = step
    assert (source, target) == (0, 2) and slots == list(range(2850, 2900))
    with pytest.raises(moves.MoveRefusedError, match="moving a slot back is not built"):
        moves.rebalance_step(owners, range(3), 50, {2: set(range(3000))})


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


_KEYS = ("k/a", "k/b", "k/c", "@cash")
_COUNTERS = ("debits_posted", "credits_posted", "debits_pending", "credits_pending")


def _counters(account: AccountState) -> tuple[int, ...]:
    return tuple(getattr(account, name) for name in _COUNTERS)


def _spread_piece(pending: tuple[int, int], holds: list[TransactionState]) -> AccountState:
    piece = AccountState(AccountSpec("@cash", "USD", 1, False, False, ()), 5, 0, 0, *pending, 3)
    return _held(piece, *holds)


_holds = st.lists(
    st.tuples(
        st.sampled_from(_KEYS), st.sampled_from(_KEYS), st.integers(1, 10**6),
        st.sampled_from([0, 10**18]), st.sampled_from(["post", "void", "expire"]),
        st.integers(0, 10**6),
    ).filter(lambda h: h[0] != h[1]),
    max_size=6,
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 10**9)), min_size=3, max_size=3),
    _holds,
    st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
    st.booleans(),
)
def test_open_holds_move_with_every_counter_conserved_and_settle_once_at_the_target(
    posted: list[tuple[int, int]],
    drawn: list[tuple[str, str, int, int, str, int]],
    spread_pending: tuple[int, int],
    target_has_spread: bool,
) -> None:
    """Accounts with posted balances and open holds (legs between them and a spread account)
    move out and in: the source's accounts end empty and released, the target's have the
    source's four counters, every counter summed over both shards is what it was (the spread
    piece's pending moves between them, the @moves pieces net to zero); the move-out asked
    again reads the same accounts and holds back; each hold then posts (partly), voids or
    expires at the target exactly as it would have at the source."""
    slots = frozenset({slot_of("k")})
    holds = [
        _hold(f"k/h{n}", (Leg(d, True, amount, "USD"), Leg(c, False, amount, "USD")), expiry)
        for n, (d, c, amount, expiry, _, _) in enumerate(drawn)
    ]
    source = [
        _held(_account(key, *counters), *holds)
        for key, counters in zip(_KEYS, posted, strict=False)
    ]
    source_spread = _spread_piece(spread_pending, holds)
    assert moves.moving_holds(source, holds, slots) == sorted(holds, key=lambda h: h.spec.id)

    out, _, after = moves.move_out_entries(
        "ab12", 2, source, {}, JournalPosition(1, 0), 100, holds, {"@cash": source_spread}
    )
    check_balanced(out, dict(after))
    for before in source:
        left = after[before.spec.id]
        check(left.debits_posted == left.credits_posted, "net zero at the source")
        check(left.debits_pending == left.credits_pending == 0, "released at the source")
    check(_counters(after["@cash"])[2:] == spread_pending, "the spread piece keeps the rest")
    assert sorted(out.holds_closed) == sorted(h.spec.id for h in holds)
    ended = [out.changed_transactions[h.spec.id] for h in holds]
    assert all(r.status is Status.PENDING_VOIDED for r in ended)
    restored = [moves.record_before_out(r, "ab12") for r in ended]
    assert [_record_fields(r) for r in restored] == [_record_fields(h) for h in holds]
    _check_read_back(source, after, out)

    target_spread = _spread_piece((7, 7), []) if target_has_spread else None
    into, _, arrived = moves.move_in_entries(
        "ab12", 0, source, holds, {}, JournalPosition(1, 0), 200,
        [] if target_has_spread else [_spread_piece((0, 0), [])],
        {"@cash": target_spread} if target_spread is not None else {},
    )  # fmt: skip
    check_balanced(into, dict(arrived))
    moves.check_holds_in(holds, source, slots)
    for before in source:
        check(_counters(arrived[before.spec.id]) == _counters(before), "the source's counters")
    base = (7, 7) if target_has_spread else (0, 0)
    for n in (2, 3):  # the spread piece's pending moved between the shards, nothing lost
        moved = _counters(arrived["@cash"])[n] - base[n - 2]
        check(_counters(source_spread)[n] == _counters(after["@cash"])[n] + moved, "pending")
    net = sum(
        s.debits_posted - s.credits_posted
        for states in (after, arrived)
        for account_id, s in states.items()
        if ids.is_moves_account(account_id)
    )
    check(net == 0, "the @moves pieces net to zero")
    assert sorted(into.holds_opened) == sorted((h.spec.id, h.expires_at_ns) for h in holds)
    _settle_at_the_target(arrived, holds, drawn)


def _record_fields(record: TransactionState) -> tuple[object, ...]:
    return (
        record.spec, record.applied_legs, record.timestamp_ns, record.status,
        record.expires_at_ns, record.resolved_by_id, record.reversed_by_id,
    )  # fmt: skip


def _check_read_back(
    source: list[AccountState], after: dict[str, AccountState], out: WriteSet
) -> None:
    """What a move-out asked again reads back from the accounts and its own entries."""
    written = {t.spec.id: t for t in out.new_transactions}
    for before in source:
        out_id = ids.move_out_id("ab12", before.spec.id)
        out_legs = written[out_id].applied_legs if out_id in written else ()
        released = [
            t.applied_legs for t in out.new_transactions if t.spec.kind is Kind.VOID_PENDING
        ]
        again = moves.account_before_out(after[before.spec.id], out_legs, released)
        check(_counters(again) == _counters(before), "counters read back")
        check(again.version == before.version, "version read back")


def _settle_at_the_target(
    arrived: dict[str, AccountState],
    holds: list[TransactionState],
    drawn: list[tuple[str, str, int, int, str, int]],
) -> None:
    """Each hold's fate applied by the target's state machine: pending back to what the other
    holds keep, posted counters up by what was posted, each result once; a replay replays."""
    accounts: dict[str, AccountState | None] = dict(arrived)
    expected = {key: list(_counters(arrived[key])) for key in _KEYS}
    for hold, (debit, credit, amount, expiry, fate, part) in zip(holds, drawn, strict=True):
        share = part % amount + 1
        if fate == "post":
            legs = (Leg(debit, True, share, "USD"), Leg(credit, False, share, "USD"))
            spec = TransactionSpec(f"k/p-{hold.spec.id}", Kind.POST_PENDING, legs, 1, (), "", 0,
                                   hold.spec.id)  # fmt: skip
        elif fate == "void":
            spec = TransactionSpec(f"k/v-{hold.spec.id}", Kind.VOID_PENDING, (), 1, (), "", 0,
                                   hold.spec.id)  # fmt: skip
        else:
            spec = TransactionSpec(ids.expiry_id(hold.spec.id), Kind.EXPIRY, (), 0, (), "", 0,
                                   hold.spec.id)  # fmt: skip
        now_ns = 10**19 if fate == "expire" and expiry else 300
        batch = Batch(accounts, {hold.spec.id: hold, spec.id: None}, JournalPosition(1, 0), now_ns)
        first, again = batch.apply([[spec], [spec]])
        assert (first[0].code, again[0].code) == (ResultCode.CREATED, ResultCode.REPLAYED)
        check_balanced(batch.out, batch.accounts)
        accounts.update(batch.accounts)
        expected[debit][2] -= amount
        expected[credit][3] -= amount
        if fate == "post":
            expected[debit][0] += share
            expected[credit][1] += share
    for key in _KEYS:
        final = accounts[key]
        assert final is not None
        check(list(_counters(final)) == expected[key], f"{key} settled at the target")


# ---- paging: a move's entries over several bounded blocks ----

_PAGED_KEYS = tuple(f"k/{n}" for n in range(7))


def _paged(
    pages: list[moves.MoveBlock],
) -> tuple[dict[str, tuple[object, ...]], dict[str, AccountState], list[int]]:
    """The pages' transactions by id (kind, legs, target), the accounts as the last page that
    wrote each left them, and the postings' sequences in order."""
    written: dict[str, tuple[object, ...]] = {}
    states: dict[str, AccountState] = {}
    sequences: list[int] = []
    for block in pages:
        check_balanced(block.writes, dict(block.accounts))
        for t in block.writes.new_transactions:
            written[t.spec.id] = (t.spec.kind, t.applied_legs, t.spec.target_id)
        states.update(block.accounts)
        sequences += [p.sequence for p in block.writes.postings]
    return written, states, sequences


def _entry_count(block: moves.MoveBlock) -> int:
    return sum(1 for t in block.writes.new_transactions if not t.spec.id.endswith("/~records"))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
        min_size=len(_PAGED_KEYS), max_size=len(_PAGED_KEYS),
    ),
    st.lists(
        st.tuples(st.sampled_from((*_PAGED_KEYS, "@cash")), st.sampled_from(_PAGED_KEYS),
                  st.integers(1, 10**6)).filter(lambda h: h[0] != h[1]),
        max_size=5,
    ),
    st.integers(1, 4),
)  # fmt: skip
def test_a_move_in_pages_is_the_move_in_one_block(
    posted: list[tuple[int, int]], drawn: list[tuple[str, str, int]], page_item_count: int
) -> None:
    """A move-out and a move-in paged (each block at most page_item_count entries, balanced,
    the postings' sequences continuous across the blocks) write exactly the transactions and
    leave exactly the accounts one block each would; the summary travels once."""
    holds = [
        _hold(f"k/h{n}", (Leg(d, True, amount, "USD"), Leg(c, False, amount, "USD")))
        for n, (d, c, amount) in enumerate(drawn)
    ]
    source = [_held(_account(k, *c), *holds) for k, c in zip(_PAGED_KEYS, posted, strict=True)]
    spread = {"@cash": _spread_piece((0, 0), holds)}
    records = [*holds, _record("k/t1")]
    now = {a.spec.id: a for a in source}
    wholes, pieces = [], []
    for size in (10**6, page_item_count):
        out_pages = list(enumerate(moves.move_out_pages(source, holds, size)))
        outs = moves.move_out_blocks(
            "ab12", 2, out_pages, now, {}, JournalPosition(1, 0), 9, spread
        )
        in_pages = list(enumerate(moves.move_in_pages(source, records, size)))
        ins = moves.move_in_blocks(
            "ab12", 0, in_pages, records, {}, JournalPosition(1, 0), 9,
            [_spread_piece((0, 0), [])],
        )  # fmt: skip
        for blocks in (outs, ins):
            assert all(_entry_count(b) <= size for b in blocks)
            (wholes if size == 10**6 else pieces).append(_paged(blocks))
    for whole, paged in zip(wholes, pieces, strict=True):
        assert paged[0] == whole[0]
        assert {k: (_counters(a), a.version) for k, a in paged[1].items()} == {
            k: (_counters(a), a.version) for k, a in whole[1].items()
        }
        assert paged[2] == list(range(1, 1 + len(paged[2])))
    for key in _PAGED_KEYS:  # at the target exactly as at the source
        arrived, before = pieces[1][1][key], now[key]
        assert (_counters(arrived), arrived.version) == (_counters(before), before.version)
    summaries = [
        t for b in moves.move_in_blocks(
            "ab12", 0, list(enumerate(moves.move_in_pages(source, records, page_item_count))),
            records, {}, JournalPosition(1, 0), 9, [_spread_piece((0, 0), [])],
        )
        for t in b.writes.new_transactions if moves.COUNT_KEY in dict(t.spec.metadata)
    ]  # fmt: skip
    assert len(summaries) == 1
    assert dict(summaries[0].spec.metadata)[moves.DIGEST_KEY] == moves.records_digest(records)


def test_a_move_out_resumed_from_any_page_ends_as_one_block_would() -> None:
    """Pages done before a crash are skipped; the rest, built from the accounts as the done
    pages left them, end the accounts exactly as the move-out in one block."""
    hold = _hold("k/h0", (Leg("k/0", True, 5, "USD"), Leg("k/1", False, 5, "USD")))
    source = [_held(_account(k, 10 * n, n), hold) for n, k in enumerate(_PAGED_KEYS)]
    now = {a.spec.id: a for a in source}
    pages = list(enumerate(moves.move_out_pages(source, [hold], 2)))
    whole = _paged(moves.move_out_blocks("ab12", 2, pages, now, {}, JournalPosition(1, 0), 9))
    for crash in range(1, len(pages)):
        first = moves.move_out_blocks("ab12", 2, pages[:crash], now, {}, JournalPosition(1, 0), 9)
        done = _paged(first)
        left = {**now, **{k: a for k, a in done[1].items() if k in now}}
        pieces = {k: a for k, a in done[1].items() if ids.is_moves_account(k)}
        rest = moves.move_out_blocks(
            "ab12", 2, pages[crash:], left, dict(pieces), first[-1].position, 99
        )
        resumed = _paged(rest)
        assert {**done[0], **resumed[0]} == whole[0]
        final = {**done[1], **resumed[1]}
        assert {k: _counters(a) for k, a in final.items()} == {
            k: _counters(a) for k, a in whole[1].items()
        }
