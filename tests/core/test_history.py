"""core.history: an account's history read across slot moves, holder after holder, in pages of
any size, is its history as one shard would have kept it: every posting once, in order, the
moves' own entries (made by core.moves, as the shards make them) left out, the balance-after
chain continuous across each move; cursors are checked; holders follow the done moves."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import history, ids, moves
from core.history import CursorError, DoneMove, Position, SlotHolders
from core.model import AccountSpec, AccountState, Posting
from core.state import JournalPosition

ACCOUNT = "k/dep"
SPEC = AccountSpec(ACCOUNT, "USD", 1, False, False, ())


def _after(posting: Posting) -> tuple[int, int, int, int]:
    return (
        posting.debits_posted_after,
        posting.credits_posted_after,
        posting.debits_pending_after,
        posting.credits_pending_after,
    )


class _Shard:
    """One shard's journal of the account: its own sequences (other accounts' postings
    between), its counters of the account."""

    def __init__(self, first_sequence: int) -> None:
        self.postings: list[Posting] = []
        self.next_sequence = first_sequence
        self.counters = [0, 0, 0, 0]
        self.now_ns = 0

    def post(self, transaction_id: str, is_debit: bool, amount: int, at_ns: int) -> Posting:
        self.counters[0 if is_debit else 1] += amount
        posting = Posting(
            self.next_sequence, transaction_id, ACCOUNT, is_debit, amount, 0, at_ns,
            *self.counters,
        )  # fmt: skip
        self.postings.append(posting)
        self.next_sequence += 3  # other accounts post in between
        return posting

    def take(self, entries: Sequence[Posting]) -> None:
        """A move's entries for the account, as core.moves made them at this shard."""
        for entry in entries:
            if entry.account_id == ACCOUNT:
                self.postings.append(entry._replace(sequence=self.next_sequence))
                self.next_sequence += 1
                self.counters = list(_after(entry))

    def state(self) -> AccountState:
        return AccountState(SPEC, 1, *self.counters, version=len(self.postings) + 1)


def _moved_history(
    activity: list[tuple[bool, int]], cuts: list[int]
) -> tuple[list[Posting], dict[int, _Shard]]:
    """The account's activity on one shard (the reference), and the same activity spread over
    shards 0, 1, ... with a move at each cut, made with core.moves' entries."""
    reference = _Shard(1)
    shards = {0: _Shard(1)}
    holder, clock_ns = 0, 1_000
    for n, (is_debit, amount) in enumerate(activity):
        if n in cuts:
            source, target = shards[holder], _Shard(100 * (holder + 1))
            move_id = f"{holder + 1:x}a"
            out, _, _ = moves.move_out_entries(
                move_id, holder + 1, [source.state()], {},
                JournalPosition(source.next_sequence, clock_ns), clock_ns,
            )  # fmt: skip
            source.take(out.postings)
            moved_in, _, _ = moves.move_in_entries(
                move_id, holder, [reference.state()], [], {},
                JournalPosition(target.next_sequence, clock_ns + 5), clock_ns + 5,
            )  # fmt: skip
            target.take(moved_in.postings)
            holder += 1
            shards[holder] = target
            clock_ns += 10
        transaction_id = f"k/t{n}"
        reference.post(transaction_id, is_debit, amount, clock_ns)
        shards[holder].post(transaction_id, is_debit, amount, clock_ns)
        clock_ns += 10
    return reference.postings, shards


async def _read_all(shards: dict[int, _Shard], limit: int) -> tuple[list[Posting], int]:
    """Every page, each next one from the cursor of the one before: (postings, pages)."""
    holders = tuple(sorted(shards))

    async def fetch(shard: int, after: int, count: int) -> list[Posting] | None:
        rows = [p for p in shards[shard].postings if p.sequence > after]
        return rows[:count] if shards[shard].postings else None

    read: list[Posting] = []
    position, pages = Position(0, 0), 0
    while True:
        page = await history.read_page(holders, position, limit, fetch)
        pages += 1
        assert len(page.rows) <= limit
        read += page.rows
        if page.next_position is None:
            return read, pages
        assert len(page.rows) == limit  # only the last page is short
        cursor = history.encode_cursor(ACCOUNT, holders, page.next_position)
        position = history.decode_cursor(ACCOUNT, holders, cursor)
        assert position == page.next_position


@settings(max_examples=150, deadline=None)
@given(
    activity=st.lists(st.tuples(st.booleans(), st.integers(1, 1_000)), min_size=1, max_size=40),
    cut_fractions=st.lists(st.floats(0, 1), max_size=3),
    limit=st.integers(1, 12),
)
def test_the_history_across_moves_is_the_history_one_shard_would_keep(
    activity: list[tuple[bool, int]], cut_fractions: list[float], limit: int
) -> None:
    cuts = sorted({int(f * (len(activity) - 1)) for f in cut_fractions} - {0})
    reference, shards = _moved_history(activity, cuts)
    assert len(shards) == len(cuts) + 1
    read, pages = asyncio.run(_read_all(shards, limit))
    assert [(p.transaction_id, _after(p)) for p in read] == [
        (p.transaction_id, _after(p)) for p in reference
    ]
    assert pages <= len(reference) // limit + 1 + len(shards)
    # Continuous: each balance-after is the one before plus the posting's own amount.
    before = (0, 0, 0, 0)
    for posting in read:
        debit = posting.posted_amount if posting.is_debit else 0
        credit = 0 if posting.is_debit else posting.posted_amount
        assert _after(posting) == (before[0] + debit, before[1] + credit, 0, 0)
        before = _after(posting)
    # Skipping the moves' entries is what makes it so: each shard's own chain has them.
    for shard in list(shards.values())[1:]:
        assert ids.is_move_entry(shard.postings[0].transaction_id)


def _posting_at(shard: _Shard, at_ns: int) -> Posting | None:
    """A node's BalanceAt: its last posting at or before the time, but its move-outs."""
    found = [
        p
        for p in shard.postings
        if p.timestamp_ns <= at_ns and not ids.is_move_out_id(p.transaction_id)
    ]
    return found[-1] if found else None


@settings(max_examples=100, deadline=None)
@given(
    activity=st.lists(st.tuples(st.booleans(), st.integers(1, 1_000)), min_size=1, max_size=25),
    cut_fractions=st.lists(st.floats(0, 1), max_size=3),
)
def test_the_balance_at_any_time_across_moves_is_the_one_shard_balance(
    activity: list[tuple[bool, int]], cut_fractions: list[float]
) -> None:
    cuts = sorted({int(f * (len(activity) - 1)) for f in cut_fractions} - {0})
    reference, shards = _moved_history(activity, cuts)
    holders = tuple(sorted(shards))
    moments = {t + d for s in shards.values() for p in s.postings for t in [p.timestamp_ns]
               for d in (-1, 0, 1)}  # fmt: skip
    for at_ns in sorted(moments):

        async def ask(shard: int, at_ns: int = at_ns) -> tuple[Posting | None, bool, str]:
            found = _posting_at(shards[shard], at_ns)
            return found, found is not None, ""

        answer, _ = asyncio.run(history.balance_at(holders, ask))
        expected = [p for p in reference if p.timestamp_ns <= at_ns]
        got = _after(answer) if answer is not None else (0, 0, 0, 0)
        assert got == (_after(expected[-1]) if expected else (0, 0, 0, 0)), at_ns


def test_an_account_found_at_no_holder_is_not_found_and_a_later_holder_alone_is_read() -> None:
    async def nowhere(shard: int, after: int, count: int) -> list[Posting] | None:
        return None

    page = asyncio.run(history.read_page((0, 1), Position(0, 0), 5, nowhere))
    assert (page.found, page.rows, page.next_position) == (False, [], None)
    # Created at the target after the move: the source has no such account.
    created = _Shard(7)
    created.post("k/t0", False, 5, 10)

    async def at_target(shard: int, after: int, count: int) -> list[Posting] | None:
        return [p for p in created.postings if p.sequence > after][:count] if shard else None

    page = asyncio.run(history.read_page((0, 1), Position(0, 0), 5, at_target))
    assert page.found and [p.transaction_id for p in page.rows] == ["k/t0"]


def test_a_move_out_at_the_last_holder_says_the_account_moved_on() -> None:
    _, shards = _moved_history([(False, 5), (True, 2)], [1])
    source = {0: shards[0]}

    async def fetch(shard: int, after: int, count: int) -> list[Posting] | None:
        return [p for p in source[shard].postings if p.sequence > after][:count]

    page = asyncio.run(history.read_page((0,), Position(0, 0), 10, fetch))
    assert page.left_by_move == "1a" and [p.transaction_id for p in page.rows] == ["k/t0"]


def test_cursors_are_checked() -> None:
    holders = (0, 2)
    cursor = history.encode_cursor(ACCOUNT, holders, Position(1, 42))
    assert history.decode_cursor(ACCOUNT, holders, cursor) == Position(1, 42)
    body, _, check_hex = cursor.removeprefix("h1.").partition(".")
    edited = [
        "42",  # a node's cursor is not the gateway's
        cursor[:-1] + ("0" if cursor[-1] != "0" else "1"),
        "h1." + body + "x." + check_hex,
        "h1.!!!." + check_hex,
        cursor + "." + "0" * 300,
        "é" + cursor,
        "",
    ]
    for bad in edited[:-1]:
        with pytest.raises(CursorError):
            history.decode_cursor(ACCOUNT, holders, bad)
    with pytest.raises(CursorError):  # another account's
        history.decode_cursor("k/sav", holders, cursor)
    with pytest.raises(CursorError) as stale:  # made under more holders than the reader knows
        history.decode_cursor(ACCOUNT, (0,), cursor)
    assert stale.value.beyond_holders
    with pytest.raises(CursorError) as other:  # under other holders
        history.decode_cursor(ACCOUNT, (0, 3), cursor)
    assert not other.value.beyond_holders


def test_holders_follow_the_done_moves() -> None:
    holders = SlotHolders()
    assert holders.holders(7, 1) == (1,)
    holders.add([DoneMove("a1", (7, 8), 1, 2)])
    holders.add([DoneMove("a1", (7, 8), 1, 2), DoneMove("b2", (7,), 2, 3)])  # again: once
    assert holders.holders(7, 3) == (1, 2, 3)
    assert holders.holders(8, 2) == (1, 2)
    assert holders.holders(7, 2) == (1, 2, 3)  # the moves read newer than the map
    assert holders.holders(9, 0) == (0,)
    assert holders.knows("b2") and not holders.knows("c3") and holders.move_count == 2


def test_holder_order_follows_where_each_shard_moved_the_slot() -> None:
    assert history.holder_order({3: [], 0: [2], 2: [3]}) == [0, 2, 3]
    assert history.holder_order({1: [], 0: [5]}) == [0, 1]  # 5 never held the account
    assert history.holder_order({2: [0], 0: [2]}) == [0, 2]  # a damaged record: shard order
