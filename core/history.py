"""An account's history across slot moves (docs/design.md, "Reads across the move"). Pure.

A slot lives at one shard at a time; the shards that held it, oldest first, are its *holders*
(from the done moves, as the control database records them). An account's postings are at each
holder in turn: the source's up to its move-out, then the target's from its move-in. The
move's own entries (`~moveout/...`, `~movein/...`) are the cluster's, not the account
holder's: a read across moves leaves them out. That keeps the balance-after chain continuous:
a move-out leaves the account's counters at the source's last posting doubled to net zero, the
move-in brings the target's from zero to exactly the counters before the move-out, so the
posting after the move-in follows the posting before the move-out.

A page of history is read holder by holder (read_page) through a fetch the caller supplies
(the gateway's: a node's ListPostings); its position, (holder, the posting sequence there)
travels to the client as an opaque, checked cursor (encode_cursor, decode_cursor).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, Protocol, TypeVar

from core import ids
from core.invariant import check
from core.slots import SLOT_COUNT

SEQUENCE_MAX: Final = 2**63 - 1
CURSOR_LENGTH_MAX: Final = 200
# A holder's listing holds at most this many move entries of one account: two postings of its
# move-in (debit and credit legs) and two of its move-out.
MOVE_ENTRY_COUNT_MAX: Final = 4
# A node's reads of an account whose slot it moved out carry the move's id in their trailing
# metadata under this key: a reader that has not read the move done knows to (BalanceAt).
MOVED_OUT_METADATA_KEY: Final = "tally-moved-out"
_CURSOR_PREFIX: Final = "h1."
_CHECK_HEX_LENGTH: Final = 16


@dataclass(frozen=True, slots=True)
class DoneMove:
    """A finished slot move, as the control database records it."""

    move_id: str
    slots: tuple[int, ...]
    source_shard: int
    target_shard: int


class SlotHolders:
    """Per slot, the shards that held it before its current owner, oldest first, from the done
    moves in the order they finished. A shard holds a slot at most once (moving a slot back is
    refused), so a slot's holders are at most the cluster's shards."""

    def __init__(self) -> None:
        self._before: dict[int, list[int]] = {}
        self._last_target: dict[int, int] = {}
        self._move_ids: set[str] = set()

    def add(self, moves: Sequence[DoneMove]) -> None:
        """More done moves, in the order they finished (a move already added is skipped)."""
        for move in moves:
            if move.move_id in self._move_ids:
                continue
            self._move_ids.add(move.move_id)
            for slot in move.slots:
                check(0 <= slot < SLOT_COUNT, f"move {move.move_id} names slot {slot}")
                before = self._before.setdefault(slot, [])
                if move.source_shard in before:
                    before.remove(move.source_shard)
                before.append(move.source_shard)
                self._last_target[slot] = move.target_shard

    def holders(self, slot: int, owner: int) -> tuple[int, ...]:
        """The shards that held the slot, oldest first, ending with its owner now (the map's;
        the moves may be newer than the map read with them: then their last target)."""
        before = self._before.get(slot)
        if not before:
            return (owner,)
        last = self._last_target[slot]
        chain = [shard for shard in before if shard != last]
        chain.append(last)
        if owner not in chain:  # reassigned since without its data (a test's map move)
            chain.append(owner)
        return tuple(chain)

    def knows(self, move_id: str) -> bool:
        return move_id in self._move_ids

    @property
    def move_count(self) -> int:
        return len(self._move_ids)


def holder_order(moved_to: dict[int, Sequence[int]]) -> list[int]:
    """The shards of moved_to (each with the shards it moved a slot to) in the order they held
    it: each before those it moved it to; ties, and any shards a damaged record would put in a
    cycle, in shard order."""
    incoming = {shard: 0 for shard in moved_to}
    for targets in moved_to.values():
        for target in targets:
            if target in incoming:
                incoming[target] += 1
    ordered: list[int] = []
    ready = sorted(shard for shard, count in incoming.items() if count == 0)
    while ready:
        shard = ready.pop(0)
        ordered.append(shard)
        for target in sorted(moved_to[shard]):
            if target in incoming:
                incoming[target] -= 1
                if incoming[target] == 0:
                    ready.append(target)
                    ready.sort()
    ordered += sorted(set(moved_to) - set(ordered))
    return ordered


# ---- a page of history ----


class Row(Protocol):
    """What read_page needs of a posting (core.model.Posting and tally.v1.Posting have it)."""

    @property
    def sequence(self) -> int: ...

    @property
    def transaction_id(self) -> str: ...


R = TypeVar("R", bound=Row)

Fetch = Callable[[int, int, int], Awaitable[Sequence[R] | None]]
"""(shard, after sequence, limit) -> the account's postings there with a greater sequence, in
order, at most limit of them (fewer: no more there); None when the shard has no such account."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page of history starts: the holder (its index among the slot's holders) and
    the last posting sequence read there (0: none yet)."""

    holder_index: int
    after_sequence: int


@dataclass(frozen=True, slots=True)
class Page(Generic[R]):
    rows: list[R]
    # Where the next page starts; None: the history ends here.
    next_position: Position | None
    # Whether any holder read had the account.
    found: bool
    # A move-out seen at the last holder: the move that took the account on ("": none). A
    # reader whose holders end there has not yet learnt that the move is done.
    left_by_move: str


async def read_page(
    holders: Sequence[int], start: Position, limit: int, fetch: Fetch[R]
) -> Page[R]:
    """Up to `limit` of the account's postings from `start` on, holder after holder, without
    the moves' own entries. Pages are full but for the last: a holder's listing is asked for
    what the page still lacks, so every listing read is consumed whole."""
    check(limit >= 1, "a page holds at least one posting")
    check(0 <= start.holder_index <= len(holders), "the position names a holder")
    rows: list[R] = []
    found, left_by_move = False, ""
    position = start
    # Each holder: at most MOVE_ENTRY_COUNT_MAX listings the page is not full after (each
    # with a move entry), and one that ends it (short, or no such account).
    call_count_max = (MOVE_ENTRY_COUNT_MAX + 1) * len(holders) + 1
    call_count = 0
    while position.holder_index < len(holders):
        call_count += 1
        check(call_count <= call_count_max, f"{call_count} listings for one page")
        last = position.holder_index == len(holders) - 1
        wanted = limit - len(rows)
        got = await fetch(holders[position.holder_index], position.after_sequence, wanted)
        if got is None:
            position = Position(position.holder_index + 1, 0)
            continue
        found = True
        for row in got:
            if not ids.is_move_entry(row.transaction_id):
                rows.append(row)
            elif last and ids.is_move_out_id(row.transaction_id):
                left_by_move = ids.parse_move_out_id(row.transaction_id)[0]
        check(len(got) <= wanted, "a listing longer than asked")
        if len(got) == wanted:  # there may be more at this holder
            position = Position(position.holder_index, got[-1].sequence)
        else:
            position = Position(position.holder_index + 1, 0)
        if len(rows) == limit:
            break
    ended = position.holder_index >= len(holders)
    return Page(rows, None if ended else position, found, left_by_move)


A = TypeVar("A")

Ask = Callable[[int], Awaitable[tuple[A | None, bool, str]]]
"""(shard) -> that shard's balance-at answer (None: no such account there), whether a posting
at or before the time gave it (a node skips its move-outs), and the move the shard says took
the account on ("": none)."""


async def balance_at(holders: Sequence[int], ask: Ask[A]) -> tuple[A | None, str]:
    """The balance at a time across the holders: the newest holder's with a posting at or
    before it, else (none has) the newest answer; None if no holder has the account. Holders
    are asked newest first, so a recent time costs one ask. Also the move the newest holder
    says took the account on (a reader whose holders end there is behind)."""
    fallback: A | None = None
    moved_by = ""
    for n, shard in enumerate(reversed(holders)):
        answer, from_posting, mark = await ask(shard)
        if n == 0:
            moved_by = mark
        if answer is None:
            continue
        if from_posting:
            return answer, moved_by
        if fallback is None:
            fallback = answer
    return fallback, moved_by


# ---- the cursor ----


class CursorError(ValueError):
    """A cursor this API did not return (edited, for another account, or of another
    history); the message says so. beyond_holders: a checked cursor naming a holder past
    those given (its maker may have known of a move the reader has not read yet)."""

    def __init__(self, message: str, beyond_holders: bool = False) -> None:
        super().__init__(message)
        self.beyond_holders = beyond_holders


def _check_text(account_id: str, payload: str) -> str:
    text = f"tally-history-cursor|{account_id}|{payload}".encode()
    return hashlib.sha256(text).hexdigest()[:_CHECK_HEX_LENGTH]


def encode_cursor(account_id: str, holders: Sequence[int], position: Position) -> str:
    """A position as the client's opaque cursor. It names the holder's shard as well as its
    index (so a cursor is refused if the holders it was made under are not the reader's) and
    carries a check over the account and the position: an edited cursor, or one from another
    account's listing, is refused. The check is not a secret: a cursor only ever positions a
    read of the same account, which the caller is authorised for anyway."""
    index = position.holder_index
    check(0 <= index < len(holders), "a cursor names one of the holders")
    check(0 <= position.after_sequence <= SEQUENCE_MAX, "a cursor's sequence is in range")
    payload = f"{index}.{holders[index]}.{position.after_sequence}"
    body = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    return f"{_CURSOR_PREFIX}{body}.{_check_text(account_id, payload)}"


def decode_cursor(account_id: str, holders: Sequence[int], cursor: str) -> Position:
    """The position an encoded cursor names; CursorError if it is not one encode_cursor made
    for this account under these holders (or under fewer of them: holders only grow)."""
    refused = CursorError("cursor is not one this API returned for this account")
    if len(cursor) > CURSOR_LENGTH_MAX or not cursor.isascii():
        raise refused
    if not cursor.startswith(_CURSOR_PREFIX):
        raise refused
    body, _, check_hex = cursor.removeprefix(_CURSOR_PREFIX).partition(".")
    try:
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise refused from None
    if not hmac.compare_digest(check_hex, _check_text(account_id, payload)):
        raise refused
    parts = payload.split(".")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise refused
    index, shard, after = (int(part) for part in parts)
    if after > SEQUENCE_MAX:
        raise refused
    if index >= len(holders) or holders[index] != shard:
        raise CursorError(
            "cursor names a shard that did not hold this account (or not yet, as this "
            "gateway knows)",
            beyond_holders=index >= len(holders),
        )
    return Position(index, after)
