"""The monitor's join and books on hand-made blocks: what a record id's postings belong to, a
cross-shard transaction made whole only with every piece in whatever order the shards' blocks
come, the joiner's and the books' checkpoints, gaps refused and redeliveries skipped."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.flows import rules
from core.flows.model import NS_PER_DAY, date_of_day
from shards.monitor.books import Books, GapError
from shards.monitor.join import Joiner, canonical_legs, client_id, flow_day_ns
from tally.v1 import ledger_pb2 as pb

DEBIT, CREDIT = pb.SIDE_DEBIT, pb.SIDE_CREDIT
DAY = 20_600


def test_client_ids_of_record_ids() -> None:
    assert client_id("cust-1/t") == "cust-1/t"
    assert client_id("~commit/~piece/0123456789ab/cust-1/t") == "cust-1/t"
    assert client_id("~piece/0123456789ab/cust-1/t") == "cust-1/t"
    assert client_id("~abort/0123456789ab/cust-1/t") is None
    assert client_id("~reversal/cust-1/t") is None


def test_flows_are_dated_by_value_date_unless_later_than_the_day_after_commit() -> None:
    commit_ns = DAY * NS_PER_DAY + 5
    assert flow_day_ns("", commit_ns) == (commit_ns, False)
    assert flow_day_ns("2026-01-01", commit_ns)[0] % NS_PER_DAY == 0
    assert date_of_day(DAY) == "2026-05-27"
    assert flow_day_ns("2026-05-27", commit_ns) == (DAY * NS_PER_DAY, False)
    assert flow_day_ns("2026-05-28", commit_ns) == ((DAY + 1) * NS_PER_DAY, False)
    assert flow_day_ns("2026-05-29", commit_ns) == (commit_ns, True)  # set aside


def _record(
    transaction_id: str,
    legs: list[tuple[str, int, int]],
    coordinator: bool = False,
    participants: tuple[int, ...] = (),
    **fields: object,
) -> pb.TransactionRecord:
    record = pb.TransactionRecord(
        transaction=pb.Transaction(id=transaction_id, code=1, **fields),  # type: ignore[arg-type]
        timestamp_ns=DAY * NS_PER_DAY + 1,
        applied_legs=[
            pb.Leg(account_id=a, side=side, amount=n, currency="USD") for a, side, n in legs
        ],
    )
    if coordinator:
        record.cross_shard_piece.coordinator = True
        record.cross_shard_piece.participant_shards.extend(participants)
    return record


def _block(shard: int, sequence: int, records: list[pb.TransactionRecord]) -> pb.JournalBlock:
    postings = [
        pb.Posting(transaction_id=r.transaction.id, account_id=leg.account_id, side=leg.side,
                   posted_amount=leg.amount)
        for r in records
        for leg in r.applied_legs
    ]  # fmt: skip
    return pb.JournalBlock(
        shard_id=shard, sequence=sequence, transactions=records, postings=postings
    )


PIECE = "~commit/~piece/0123456789ab/"


def _cross_shard_blocks() -> list[pb.JournalBlock]:
    """cust-a (shard 0) pays cust-b (shard 1) and cust-c (shard 2): coordinated at shard 0."""
    a = [("cust-a/dep", DEBIT, 30), ("@clearing/USD", CREDIT, 30)]
    b = [("@clearing/USD", DEBIT, 10), ("cust-b/dep", CREDIT, 10)]
    c = [("@clearing/USD", DEBIT, 20), ("cust-c/dep", CREDIT, 20)]
    return [
        _block(0, 1, [_record("cust-a/t", a, coordinator=True, participants=(1, 2))]),
        _block(1, 1, [_record(PIECE + "cust-a/t", b)]),
        _block(2, 1, [_record(PIECE + "cust-a/t", c)]),
    ]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_a_cross_shard_transaction_is_whole_only_with_every_piece(order: tuple[int, ...]) -> None:
    blocks = _cross_shard_blocks()
    joiner = Joiner()
    flows = []
    for n, index in enumerate(order):
        content = joiner.add_block(blocks[index])
        if n < 2:
            assert content.flows == ()
        flows += content.flows
    (flow,) = flows
    assert flow.transaction_id == "cust-a/t"
    assert [(leg.account_id, leg.is_debit, leg.amount) for leg in flow.legs] == [
        ("cust-a/dep", True, 30),
        ("cust-b/dep", False, 10),
        ("cust-c/dep", False, 20),
    ]
    assert joiner.pending_count == 0


def test_the_joiners_state_round_trips_with_pieces_waiting() -> None:
    blocks = _cross_shard_blocks()
    joiner = Joiner()
    joiner.add_block(blocks[1])
    restored = Joiner.restore(joiner.state())
    assert restored.state() == joiner.state()
    restored.add_block(blocks[0])
    (flow,) = restored.add_block(blocks[2]).flows
    assert flow.transaction_id == "cust-a/t"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a/x", "b/y", "c/z"]), st.booleans(),
                          st.integers(1, 10**6)), min_size=1, max_size=12))  # fmt: skip
def test_canonical_legs_keep_every_amount_once(legs: list[tuple[str, bool, int]]) -> None:
    amounts: dict[tuple[str, bool, str], int] = {}
    for account_id, is_debit, amount in legs:
        amounts[(account_id, is_debit, "USD")] = (
            amounts.get((account_id, is_debit, "USD"), 0) + amount
        )
    found = canonical_legs(amounts)
    assert sum(leg.amount for leg in found) == sum(n for _, _, n in legs)
    assert list(found) == sorted(found, key=lambda leg: (leg.account_id, not leg.is_debit))


def test_books_skip_redeliveries_and_refuse_gaps() -> None:
    books = Books(rules.parse_rules("[default]\ncoverage_below = 1.0\n"))
    blocks = _cross_shard_blocks()
    books.apply(1, blocks[0])
    books.apply(2, blocks[1])
    assert books.apply(2, blocks[1]) == []  # the same message again
    assert books.apply(3, blocks[1]) == []  # the same block in a later message
    assert books.positions == {0: 1, 1: 1}
    with pytest.raises(GapError, match="shard 2: block 2 follows block 0"):
        books.apply(4, pb.JournalBlock(shard_id=2, sequence=2))
    books.apply(5, blocks[2])
    assert books.joiner.counters.flow_count == 1
    assert Books.restore(books.checkpoint(), books.rule_set).checkpoint() == books.checkpoint()
