"""How a held cross-shard piece's deadline moves (core.pieces.next_deadline, applied by the
state machine as DEADLINE records): a participant must never stop waiting for a decision a
gateway may still make, whatever order the re-arms arrive in."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from core import ids
from core.model import Kind, Status, TransactionSpec, TransactionState
from core.pieces import DeadlineMode, deadline_spec, hold_settlement_spec, next_deadline
from core.state import Batch, JournalPosition

S = 1_000_000_000
D = 30  # the prepare deadline, seconds
CREATED_AT = 1_000 * S


def piece(expires_at_ns: int) -> TransactionState:
    spec = TransactionSpec("~piece/a1/h", Kind.PREPARED, (), 1, (), "", D, "0")
    return TransactionState(spec, (), CREATED_AT, Status.PENDING, expires_at_ns)


PREPARED_UNTIL = CREATED_AT + D * S


def test_confirm_applies_only_to_a_piece_still_on_its_prepare_deadline() -> None:
    confirm = deadline_spec("~piece/a1/h", 5_000 * S, DeadlineMode.CONFIRM)
    assert next_deadline(confirm, piece(PREPARED_UNTIL), CREATED_AT + S) == 5_000 * S
    # A decision re-armed it first (the confirm arrived late): the decision's deadline stays.
    assert next_deadline(confirm, piece(CREATED_AT + 40 * S), CREATED_AT + S) == CREATED_AT + 40 * S
    no_expiry = deadline_spec("~piece/a1/h", 0, DeadlineMode.CONFIRM)
    assert next_deadline(no_expiry, piece(PREPARED_UNTIL), CREATED_AT + S) == 0


def test_a_decision_brings_a_long_deadline_forward_and_never_shortens_a_short_one() -> None:
    now = 2_000 * S
    decide = deadline_spec("~piece/a1/h", now + D * S, DeadlineMode.DECISION)
    assert next_deadline(decide, piece(0), now) == now + D * S  # no expiry: ask by then
    assert next_deadline(decide, piece(9_000 * S), now) == now + D * S  # expiry far away
    later = piece(now + D * S + 5 * S)  # within reach: another decision's deadline
    assert next_deadline(decide, later, now) == now + D * S + 5 * S
    sooner = piece(now + 3 * S)
    assert next_deadline(decide, sooner, now) == now + D * S
    expiring = piece(now + 50 * S)  # the hold expires within two deadlines: asked then
    assert next_deadline(decide, expiring, now) == now + 50 * S


def test_after_asking_the_piece_goes_back_only_if_nobody_rearmed_it() -> None:
    seen = 3_000 * S
    back = deadline_spec("~piece/a1/h", 9_000 * S, DeadlineMode.ASKED, seen_ns=seen)
    assert next_deadline(back, piece(seen), seen + S) == 9_000 * S
    rearmed = piece(seen + 20 * S)  # a decision re-armed it while the participant asked
    assert next_deadline(back, rearmed, seen + S) == seen + 20 * S


@given(
    starts=st.lists(st.integers(min_value=0, max_value=4 * D), min_size=1, max_size=6),
    order=st.randoms(use_true_random=False),
)
def test_every_decision_is_asked_about_after_it_could_be_made(starts: list[int], order) -> None:  # type: ignore[no-untyped-def]
    """Gateways re-arm a confirmed piece before deciding (each at its own time, the messages
    arriving in any order within the window); a decision can be made until half the deadline
    after its re-arm. Whatever the order, the deadline left asks after every decision."""
    expiry = 10_000 * S
    state = piece(expiry)
    base = 5_000 * S
    rearms = [(base + start * S, base + (start + D) * S) for start in starts]
    order.shuffle(rearms)
    arrived = 0
    for sent, ask_by in rearms:  # each applied after it was sent and after the one before
        arrived = max(arrived, sent)
        spec = deadline_spec(state.spec.id, min(ask_by, expiry), DeadlineMode.DECISION)
        state.expires_at_ns = next_deadline(spec, state, arrived)
    latest_decision = max(sent for sent, _ in rearms) + D * S // 2
    assert state.expires_at_ns >= latest_decision


def test_the_state_machine_records_the_deadline_it_set() -> None:
    held = piece(PREPARED_UNTIL)
    confirm = deadline_spec(held.spec.id, 5_000 * S, DeadlineMode.CONFIRM)
    loaded: dict[str, TransactionState | None] = {held.spec.id: held, confirm.id: None}
    batch = Batch({}, loaded, JournalPosition(1, 0), CREATED_AT + S)
    late = deadline_spec(held.spec.id, 6_000 * S, DeadlineMode.CONFIRM)
    results = batch.apply([[confirm], [late]])
    assert [r[0].code.name for r in results] == ["CREATED", "REPLAYED"]
    (record,) = batch.out.new_transactions
    assert record.spec.id.startswith("~deadline/") and record.expires_at_ns == 5_000 * S
    assert dict(record.spec.metadata)["expires_at_ns"] == str(5_000 * S)
    assert batch.out.holds_rearmed == [(held.spec.id, 5_000 * S)]
    assert batch.transactions[held.spec.id].expires_at_ns == 5_000 * S
    assert held.expires_at_ns == PREPARED_UNTIL  # the caller's object is not changed


def test_a_piece_that_moved_out_with_its_accounts_is_wrong_shard_here() -> None:
    """A source's copy of a held piece it moved out (resolved by its move-out's release) is not
    the piece any more: a deadline or a settlement of it is WRONG_SHARD there, never
    PENDING_ALREADY_RESOLVED (which a gateway re-arming it would take for settled)."""
    gone = piece(PREPARED_UNTIL + 3_600 * S)
    gone.status = Status.PENDING_VOIDED
    gone.resolved_by_id = ids.move_out_hold_id("0f1e", gone.spec.id)
    voided = piece(PREPARED_UNTIL + 3_600 * S)
    voided.status, voided.resolved_by_id = Status.PENDING_VOIDED, ids.settlement_id("x", False)
    rearm = deadline_spec(gone.spec.id, 5_000 * S, DeadlineMode.DECISION)
    settle = hold_settlement_spec(gone.spec.id, Kind.POST_PENDING, "h-post")
    for held, wanted, said in (
        (gone, "WRONG_SHARD", "moved out of this shard with its accounts (move 0f1e)"),
        (voided, "PENDING_ALREADY_RESOLVED", "was resolved by"),
    ):
        loaded: dict[str, TransactionState | None] = {
            held.spec.id: held,
            rearm.id: None,
            settle.id: None,
        }
        batch = Batch({}, loaded, JournalPosition(1, 0), CREATED_AT + S)
        results = batch.apply([[rearm], [settle]])
        assert [r[0].code.name for r in results] == [wanted, wanted], held.resolved_by_id
        assert all(said in r[0].message for r in results), results
        assert batch.out.new_transactions == []
