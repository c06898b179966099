"""Slot moves as journal entries: what a source shard writes when it hands slots over (the
move-out) and what the target writes when it takes them (the move-in). Pure.

Each moved account with a balance gets one transaction on each side, balanced by that side's
piece of the slot-move account of its currency (core.ids.moves_account), so each shard's books
balance on their own and its audit needs nothing new (docs/design.md, "Moving slots"):

    move-out at the source:  D account credits_posted, C account debits_posted (net zero after)
    move-in at the target:   D account debits_posted,  C account credits_posted (the counters)

The transaction records homed in the moved slots travel beside the journal; the move-in's
first transaction carries their count and digest in its metadata, so the target's chain
commits to what it imported.

Open single-shard holds whose record and non-spread legs are all in the moved slots move too,
as journal entries on both sides like the posted counters (moving_holds says which):

    move-out at the source:  ~moveout/M/~hold/H, a VOID_PENDING of H: its pending amounts
                             released there, H's record resolved by it (it left with the move)
    move-in at the target:   ~movein/M/~hold/H, H's legs held again (kind PENDING, target H,
                             status POSTED: it is no hold of its own), and H's record, moved
                             in as PENDING with its expiry, has the target's holds row
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, TypeVar

from core import ids, journal
from core.invariant import check
from core.limits import amount_max
from core.model import (
    AccountSpec,
    AccountState,
    CloseSpec,
    Kind,
    Leg,
    Metadata,
    Posting,
    Rejection,
    ResultCode,
    Status,
    TransactionSpec,
    TransactionState,
    expires_at,
)
from core.pieces import decided_by_piece, reversed_by_piece
from core.slots import SLOT_COUNT, account_slot, is_spread, transaction_slot
from core.state import Item, JournalPosition, WriteSet

T = TypeVar("T")
U = TypeVar("U")

MOVES_CODE: Final = 9998
"""The code of the slot-move accounts (the clearing accounts' is 9999)."""

MOVE_RECORD_COUNT_MAX: Final = 20_000
"""At most this many accounts and transaction records in a MoveSlotsIn that carries them
inline, in one message (under gRPC's 16 MiB at up to 800 bytes each). The mover stages them
in pages instead (StageMoveIn), whatever the move's size."""

MOVE_ITEM_COUNT_MAX: Final = 500_000
"""At most this many accounts and transaction records in one move: the source's fence step
and the target's move-in hold them in memory at once (about 1 KiB each in Python: some
0.5 GiB), and the fence pauses the whole source for one scan of its tables. Move fewer slots
at once beyond this (a slot column and a bulk copy before the fence are the next step)."""

MOVE_READ_ITEM_COUNT_MAX: Final = 2_000
"""At most this many accounts or records in one page the mover reads from the source and
stages at the target (ReadMovedOut, StageMoveIn): about 1.6 MiB a message at 800 bytes each."""

MOVE_PAGE_ITEM_COUNT: Final = 2_000
"""At most this many of a move's entries (an account's move-out or move-in, an open hold's
release or raise) in one journal block, so a move's blocks stay bounded like a batch's: an
entry is at most 4 postings (a hold's, its legs), some 1.5 KiB in a block's stream message, so
a page is about 3 MiB, far under the change stream's 16 MiB message (WriterConfig overrides it
for tests)."""

COUNT_KEY: Final = "~moved_records"
DIGEST_KEY: Final = "~moved_digest"
ACCOUNT_COUNT_KEY: Final = "~moved_accounts"
ACCOUNTS_DIGEST_KEY: Final = "~accounts_digest"
PAGE_COUNT_KEY: Final = "~move_pages"
STATES_DIGEST_KEY: Final = "~states_digest"
"""On a source's summary entry: the SHA-256 of the moved records' states (records_states_digest),
which the target checks what it staged against (a change the copy missed is refused, then copied
again in full); summaries made before it lack it."""
SUMMARY_ENTRY: Final = "~records"
"""The entry of a side that carries the move's totals alone (no legs): ~moveout/M/~records at
the source (always, in its first block), ~movein/M/~records at the target (when no account
moving in has a balance)."""
SOURCE_KEY: Final = "~move_source"
TARGET_KEY: Final = "~move_target"
EXPIRES_KEY: Final = "~expires_at_ns"
"""On a hold's move-in entry: the moved hold's expiry (0: none), which the target honours."""


class MoveRefusedError(ValueError):
    """A move that cannot be made as asked; the message says why (nothing was written)."""


class MoveBusyError(MoveRefusedError):
    """A move that cannot be made now but may be soon: amounts are held in the slots (an open
    hold, a cross-shard piece between its prepare and its resolution). Nothing was written."""


def moves_account_spec(currency: str) -> AccountSpec:
    return AccountSpec(ids.moves_account(currency), currency, MOVES_CODE, False, False, ())


def check_slots(slots: Iterable[int]) -> frozenset[int]:
    """The slots asked for, each checked in range; MoveRefusedError otherwise."""
    checked = frozenset(slots)
    if not checked:
        raise MoveRefusedError("no slots given")
    for slot in sorted(checked):
        if not 0 <= slot < SLOT_COUNT:
            raise MoveRefusedError(f"slot {slot} is not in 0..{SLOT_COUNT - 1}")
    return checked


def account_moves(account_id: str, slots: frozenset[int]) -> bool:
    """Whether an account lives in the moving slots (spread accounts never move)."""
    return not is_spread(account_id) and account_slot(account_id) in slots


def record_moves(transaction_id: str, slots: frozenset[int]) -> bool:
    """Whether a transaction record is homed in the moving slots (reserved records stay: they
    are asked for by shard number, never by slot)."""
    return not ids.is_reserved(transaction_id) and transaction_slot(transaction_id) in slots


def _legs_moving(record: TransactionState, slots: frozenset[int]) -> tuple[bool, bool]:
    """(whether any, whether all) of a record's legs on accounts that are not spread live in
    the slots (a record without such legs: (False, True))."""
    legs = [leg.account_id for leg in record.applied_legs if not is_spread(leg.account_id)]
    moving = [account_moves(account_id, slots) for account_id in legs]
    return any(moving), all(moving)


def _piece_refusal(
    piece: TransactionState, slots: frozenset[int], target: int | None
) -> tuple[str, bool]:
    """Why a held cross-shard piece here keeps the slots from moving, and whether it may pass
    soon (("", False): it moves with them, or does not touch them). A piece of a committed open
    cross-shard hold moves with its accounts when all of them are in the slots (its legs but on
    spread accounts: its clearing legs), to any shard, its hold's coordinator included (the
    mover checks the target holds no other piece of it); `target` None: not known (no piece
    moves)."""
    locked = [decided_by_piece(piece.spec), reversed_by_piece(piece.spec)]
    if any(record_moves(record_id, slots) for record_id in locked if record_id):
        return f"cross-shard piece {piece.spec.id!r} is deciding a record homed in the slots", True
    some, every = _legs_moving(piece, slots)
    if not some:
        return "", False
    coordinator = piece.spec.target_id
    if piece.expires_at_ns == expires_at(piece.timestamp_ns, piece.spec.timeout_seconds):
        return (
            f"{piece.spec.id!r} holds amounts on the slots' accounts: a cross-shard piece between "
            f"its prepare and its resolution (coordinator shard {coordinator})"
        ), True
    # Given another deadline since its prepare: a piece of a committed cross-shard hold, open
    # until its coordinator decides it (maybe days).
    held = f"{piece.spec.id!r} holds amounts for an open cross-shard hold coordinated at shard "
    if not every:
        return (
            f"{held}{coordinator} on accounts both in and out of the slots: a piece that would "
            "span two shards after the move does not move; move its slots together, or post or "
            "void that hold"
        ), False
    if target is None:
        return (
            f"{held}{coordinator}: the mover did not check the target for the hold's other "
            "pieces (a mover from before pieces moved)"
        ), False
    return "", False


def _hold_refusal(
    record: TransactionState, slots: frozenset[int], target: int | None
) -> tuple[str, bool]:
    """Why an open hold (or a cross-shard hold's coordinator record) here keeps the slots from
    moving, and whether it may pass soon (("", False): it moves, or does not touch them). A
    cross-shard hold's record moves as a single-shard hold does (homed in the slots, every leg
    but on spread accounts in them), the target given (None: not known, it does not move)."""
    homed = record_moves(record.spec.id, slots)
    some, every = _legs_moving(record, slots)
    if not homed and not some:
        return "", False
    name = record.spec.id
    cross = record.spec.kind is Kind.HOLD
    if cross and not ids.is_abort_marker(record.spec.target_id):
        return f"cross-shard hold {name!r} does not name its committed attempt", False
    if cross and target is None:
        return (
            f"open cross-shard hold {name!r} is homed in or holds amounts on the slots: the "
            "mover did not check the target for its pieces (a mover from before coordinator "
            "records moved); post or void it first"
        ), False
    if not (homed and every):
        where = "homed in the slots" if homed else f"homed in slot {transaction_slot(name)}"
        what = "cross-shard hold" if cross else "hold"
        return (
            f"open {what} {name!r} ({where}) has legs on accounts both in and out of the slots: "
            "a hold that would span two shards after the move does not move; post or void it, "
            "or move its slots together"
        ), False
    if record.resolved_by_id:  # locked by a cross-shard piece deciding its post or void
        return f"open hold {name!r} is being decided by {record.resolved_by_id!r}", True
    return "", False


def _open_record_refusal(
    record: TransactionState, slots: frozenset[int], target: int | None
) -> tuple[str, bool]:
    """Why an open record here (a held piece, or a hold) keeps the slots from moving, and
    whether it may pass soon (("", False): it does not)."""
    if record.spec.kind is Kind.PREPARED:
        return _piece_refusal(record, slots, target)
    return _hold_refusal(record, slots, target)


def moving_refusal(record: TransactionState, slots: frozenset[int], target: int | None) -> str:
    """Why an open record keeps the slots from moving to target now or for good ("": it does
    not)."""
    return _open_record_refusal(record, slots, target)[0]


def is_moving_piece(record: TransactionState, slots: frozenset[int]) -> bool:
    """Whether an open record that moving_holds let pass is a held cross-shard piece moving
    with the slots (not one that only does not touch them)."""
    return record.spec.kind is Kind.PREPARED and _legs_moving(record, slots)[0]


def travels_with(record: TransactionState, slots: frozenset[int]) -> bool:
    """Whether a record goes with the slots: homed in them, or a held cross-shard piece whose
    every leg but on spread accounts is on their accounts (at least one)."""
    if not ids.is_piece_id(record.spec.id):
        return record_moves(record.spec.id, slots)
    return _legs_moving(record, slots) == (True, True)


def moving_holds(
    accounts: Sequence[AccountState],
    open_records: Sequence[TransactionState],
    slots: frozenset[int],
    target: int | None = None,
) -> list[TransactionState]:
    """The open records that move with the slots, in id order, from the shard's open records
    (holds and held pieces): the single-shard holds whose record and every leg but on spread
    accounts are in them, and (the target given) the held pieces of committed cross-shard holds
    whose accounts all are (_piece_refusal). MoveRefusedError for what cannot move (a hold or a
    cross-shard hold's record that would span shards, a piece that would, either with no
    target given), MoveBusyError for what may pass soon (a piece in flight, a hold being
    decided). The moved accounts' pending counters must be exactly the moving records' amounts
    (MoveBusyError otherwise: held by something not explained)."""
    moving: list[TransactionState] = []
    for record in sorted(open_records, key=lambda r: r.spec.id):
        why, soon = _open_record_refusal(record, slots, target)
        if why:
            raise (MoveBusyError if soon else MoveRefusedError)(why)
        if record.spec.kind in _HOLD_KINDS and record_moves(record.spec.id, slots):
            moving.append(record)
        elif is_moving_piece(record, slots):
            moving.append(record)
    held: dict[str, list[int]] = {}
    for hold in moving:
        for leg in hold.applied_legs:
            counters = held.setdefault(leg.account_id, [0, 0])
            counters[0 if leg.is_debit else 1] += leg.amount
    for account in accounts:
        if [account.debits_pending, account.credits_pending] != held.get(account.spec.id, [0, 0]):
            raise MoveBusyError(
                f"account {account.spec.id!r} has amounts held that no open hold of the slots "
                "explains (a hold or a cross-shard piece being written)"
            )
    return moving


_HOLD_KINDS: Final = frozenset({Kind.PENDING, Kind.HOLD})


def moving_pieces(holds: Sequence[TransactionState]) -> list[TransactionState]:
    """The held cross-shard pieces among moving_holds' answer: records that travel with the move
    though not homed in its slots (their ids are their hold's)."""
    return [record for record in holds if record.spec.kind is Kind.PREPARED]


def stuck_slots(
    open_records: Sequence[TransactionState],
    slots: frozenset[int],
    target: int | None = None,
) -> dict[int, str]:
    """Slot -> why, for the slots of these that cannot move now (to `target`, if known): those
    an open record here touches (by its id or a leg's account) that moving_holds refuses
    outright (MoveRefusedError: a hold, a cross-shard hold's record or a piece that would span
    shards, or either with no target given). What may pass in a moment
    (MoveBusyError) keeps no slot: the move-out waits for it. Without the slots named, the rest
    may still not move together (a hold spanning a named slot and another): ask again of what
    is left."""
    stuck: dict[int, str] = {}
    for record in sorted(open_records, key=lambda r: r.spec.id):
        why, soon = _open_record_refusal(record, slots, target)
        if not why or soon:
            continue
        stuck.update({s: why for s in touched_slots(record, slots) if s not in stuck})
    return dict(sorted(stuck.items()))


def touched_slots(record: TransactionState, slots: frozenset[int]) -> list[int]:
    """The slots of these an open record touches: its legs' accounts' (but spread accounts),
    and its id's home unless reserved."""
    legs = (*record.applied_legs, *record.spec.legs)
    touched = {account_slot(leg.account_id) for leg in legs if not is_spread(leg.account_id)}
    if record_moves(record.spec.id, slots):
        touched.add(transaction_slot(record.spec.id))
    return sorted(touched & slots)


def refusal_of(accounts: Sequence[AccountState], records: Sequence[TransactionState]) -> str:
    """Why these cannot move at all ("": they can)."""
    for account in accounts:
        if account.debits_posted + account.credits_posted > amount_max:
            return f"account {account.spec.id!r}: its move-out would overflow its counters"
    if len(accounts) + len(records) > MOVE_ITEM_COUNT_MAX:
        return (
            f"{len(accounts)} accounts and {len(records)} records: at most "
            f"{MOVE_ITEM_COUNT_MAX} in one move (move fewer slots at once)"
        )
    return ""


@dataclass(frozen=True, slots=True)
class MoveTotals:
    """What a move takes, as its source commits to it and its target checks what it staged
    against: the accounts' and records' counts and digests."""

    account_count: int
    accounts_digest: str
    record_count: int
    records_digest: str
    # The records' states (status, expiry, resolved and reversed by): "" from a move-out made
    # before it was committed to, and then not checked.
    records_states_digest: str = ""

    def matched_by(self, found: MoveTotals) -> bool:
        """Whether found (what was staged) is exactly what these totals commit to."""
        if not self.records_states_digest:
            found = replace(found, records_states_digest="")
        return found == self


def accounts_digest(accounts: Sequence[AccountState]) -> str:
    """SHA-256 over the accounts' canonical lines and the counters they move with, in id
    order."""
    digest = hashlib.sha256()
    for account in sorted(accounts, key=lambda a: a.spec.id):
        numbers = (
            account.debits_posted, account.credits_posted, account.version, account.closed_at_ns
        )  # fmt: skip
        digest.update(journal.account_line(account).encode())
        digest.update(("|" + "|".join(str(n) for n in numbers) + "\n").encode())
    return digest.hexdigest()


def totals_of(accounts: Sequence[AccountState], records: Sequence[TransactionState]) -> MoveTotals:
    return MoveTotals(
        len(accounts), accounts_digest(accounts), len(records), records_digest(records),
        records_states_digest(records),
    )  # fmt: skip


def totals_metadata(totals: MoveTotals, target: int, page_count: int) -> Metadata:
    """The source's summary entry's metadata: the totals it commits to, and how many pages
    (blocks) its move-out has."""
    digest = totals.records_states_digest
    states = [(STATES_DIGEST_KEY, digest)] if digest else []
    return (
        (PAGE_COUNT_KEY, str(page_count)),
        (ACCOUNT_COUNT_KEY, str(totals.account_count)),
        (ACCOUNTS_DIGEST_KEY, totals.accounts_digest),
        (COUNT_KEY, str(totals.record_count)),
        (DIGEST_KEY, totals.records_digest),
        (TARGET_KEY, str(target)),
        *states,
    )


def page_count_from_metadata(metadata: Metadata) -> int:
    """The page count a source's summary entry carries (0: none)."""
    text = dict(metadata).get(PAGE_COUNT_KEY, "")
    return int(text) if text.isascii() and text.isdigit() else 0


def totals_from_metadata(metadata: Metadata) -> MoveTotals | None:
    """The totals a source's summary entry carries (None: not such an entry)."""
    found = dict(metadata)
    counts = (found.get(ACCOUNT_COUNT_KEY, ""), found.get(COUNT_KEY, ""))
    if not all(text.isascii() and text.isdigit() for text in counts):
        return None
    return MoveTotals(
        int(counts[0]), found.get(ACCOUNTS_DIGEST_KEY, ""), int(counts[1]),
        found.get(DIGEST_KEY, ""), found.get(STATES_DIGEST_KEY, ""),
    )  # fmt: skip


def records_digest(records: Sequence[TransactionState]) -> str:
    """SHA-256 over the records' canonical lines, in id order: what the move-in commits to."""
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: r.spec.id):
        digest.update(journal.transaction_line(record, *journal.legs_texts(record)).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def records_states_digest(records: Sequence[TransactionState]) -> str:
    """SHA-256 over what changes in the records after they are made (status, expiry, resolved
    and reversed by), in id order: records_digest covers only their lines, so a copy staging a
    record as it was before a post, void or reversal would pass it."""
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: r.spec.id):
        state = (
            record.spec.id, int(record.status), record.expires_at_ns, record.resolved_by_id,
            record.reversed_by_id,
        )  # fmt: skip
        digest.update(("|".join(str(part) for part in state) + "\n").encode())
    return digest.hexdigest()


@dataclass(slots=True)
class _Entries:
    """A move's side being built: its write set, the accounts as they end, where it stands."""

    position: JournalPosition
    timestamp_ns: int
    writes: WriteSet = field(default_factory=WriteSet)
    accounts: dict[str, AccountState] = field(default_factory=dict)

    def post(self, transaction_id: str, legs: tuple[Leg, ...], metadata: Metadata) -> None:
        spec = TransactionSpec(transaction_id, Kind.ORDINARY, legs, 0, metadata, "", 0, "")
        self.record(spec, legs, pending_sign=0)

    def record(self, spec: TransactionSpec, legs: tuple[Leg, ...], pending_sign: int) -> None:
        """A transaction of the move and its postings: legs posted (pending_sign 0), or held
        (1) or released (-1) in the pending counters."""
        self.timestamp_ns = max(self.timestamp_ns, self.position.last_timestamp_ns + 1)
        at = self.timestamp_ns
        self.writes.new_transactions.append(TransactionState(spec, legs, at, Status.POSTED))
        sequence = self.position.next_posting_sequence
        for leg in legs:
            account = self.accounts[leg.account_id]
            posted, pending = (0, pending_sign * leg.amount) if pending_sign else (leg.amount, 0)
            if leg.is_debit:
                account.debits_posted += posted
                account.debits_pending += pending
            else:
                account.credits_posted += posted
                account.credits_pending += pending
            check(
                min(account.debits_pending, account.credits_pending) >= 0,
                f"a move's pending counters of {leg.account_id} went negative",
            )
            account.version += 1
            self.writes.postings.append(
                Posting(
                    sequence, spec.id, leg.account_id, leg.is_debit, posted, pending, at,
                    account.debits_posted, account.credits_posted,
                    account.debits_pending, account.credits_pending,
                )
            )  # fmt: skip
            sequence += 1
        self.position = JournalPosition(sequence, at)
        self.timestamp_ns = at + 1

    def release_hold(self, move_id: str, hold: TransactionState) -> TransactionState:
        """The source's side of an open hold leaving: its amounts released by a VOID_PENDING
        of it, its record resolved by that (as a void resolves it). The record as it ends."""
        released = _summed(hold.applied_legs)
        spec = TransactionSpec(
            ids.move_out_hold_id(move_id, hold.spec.id), Kind.VOID_PENDING, (), 0, (), "", 0,
            hold.spec.id,
        )  # fmt: skip
        self.record(spec, released, pending_sign=-1)
        ended = hold.copy()
        ended.status, ended.resolved_by_id = Status.PENDING_VOIDED, spec.id
        self.writes.changed_transactions[hold.spec.id] = ended
        self.writes.holds_closed.append(hold.spec.id)
        return ended

    def raise_hold(self, move_id: str, source: int, hold: TransactionState) -> None:
        """The target's side of an open hold arriving: its legs held again by an entry of its
        own (no hold of its own: status POSTED, target the hold), and the hold's holds row
        with its expiry, so the node's sweep expires it here."""
        metadata = ((EXPIRES_KEY, str(hold.expires_at_ns)), (SOURCE_KEY, str(source)))
        spec = TransactionSpec(
            ids.move_in_hold_id(move_id, hold.spec.id), Kind.PENDING, hold.applied_legs, 0,
            metadata, "", 0, hold.spec.id,
        )  # fmt: skip
        self.record(spec, hold.applied_legs, pending_sign=1)
        self.writes.holds_opened.append((hold.spec.id, hold.expires_at_ns))


def _summed(legs: Sequence[Leg]) -> tuple[Leg, ...]:
    """Legs summed by (account, side, currency), in first-seen order: what a void releases."""
    sums: dict[tuple[str, bool, str], int] = {}
    for leg in legs:
        key = (leg.account_id, leg.is_debit, leg.currency)
        sums[key] = sums.get(key, 0) + leg.amount
    return tuple(Leg(account, debit, amount, cur) for (account, debit, cur), amount in sums.items())


def _moves_pieces(
    entries: _Entries, currencies: Iterable[str], existing: dict[str, AccountState | None]
) -> None:
    """The slot-move account of each currency, created where this shard has none yet."""
    for currency in sorted(set(currencies)):
        account_id = ids.moves_account(currency)
        found = existing.get(account_id)
        if found is None:
            found = AccountState(moves_account_spec(currency), entries.timestamp_ns, version=0)
            entries.writes.new_accounts.append(found)
        entries.accounts[account_id] = found.copy()


def move_out_entries(
    move_id: str,
    target: int,
    accounts: Sequence[AccountState],
    moves_accounts: dict[str, AccountState | None],
    position: JournalPosition,
    now_ns: int,
    holds: Sequence[TransactionState] = (),
    spread: dict[str, AccountState] | None = None,
    posted_ids: Collection[str] | None = None,
    summary: Metadata = (),
) -> tuple[WriteSet, JournalPosition, dict[str, AccountState]]:
    """The source's move-out block: its totals first when given (`summary`, totals_metadata:
    the first page's), each moving open hold released (moving_holds; `spread`: this shard's
    pieces of the spread accounts their legs name), then each account with a balance left at
    net zero (of posted_ids only, when given: a page of the move-out)."""
    entries = _Entries(position, now_ns)
    if summary:
        entries.post(ids.move_out_id(move_id, SUMMARY_ENTRY), (), summary)
    moving = [
        a
        for a in accounts
        if (a.debits_posted or a.credits_posted) and (posted_ids is None or a.spec.id in posted_ids)
    ]
    moving = list({a.spec.id: a for a in moving}.values())
    _moves_pieces(entries, (a.spec.currency for a in moving), moves_accounts)
    for account in [*accounts, *(spread or {}).values()]:
        entries.accounts.setdefault(account.spec.id, account.copy())
    for hold in holds:
        entries.release_hold(move_id, hold)
    for account in moving:
        metadata = ((TARGET_KEY, str(target)),)
        entries.post(
            ids.move_out_id(move_id, account.spec.id),
            _legs(entries.accounts[account.spec.id], out=True),
            metadata,
        )
    return _finish(entries, _touched(entries))


def _touched(entries: _Entries) -> set[str]:
    return {posting.account_id for posting in entries.writes.postings}


def move_in_entries(
    move_id: str,
    source: int,
    accounts: Sequence[AccountState],
    records: Sequence[TransactionState],
    moves_accounts: dict[str, AccountState | None],
    position: JournalPosition,
    now_ns: int,
    spread_missing: Sequence[AccountState] = (),
    spread: dict[str, AccountState] | None = None,
    holds: Sequence[TransactionState] | None = None,
    arrived: Mapping[str, AccountState] | None = None,
    summary: bool = True,
) -> tuple[WriteSet, JournalPosition, dict[str, AccountState]]:
    """The target's move-in block: every account created as it was made, its counters brought
    to the source's by one transaction; the first carries the records' count and digest
    (unless `summary` is False: a later page of the move-in). The spread accounts missing here
    are created too, empty. Then each open hold (`holds`; by default those among the records)
    is held again (`spread`: this shard's pieces of the spread accounts their legs name;
    `arrived`: the accounts an earlier page of the move-in created that they name)."""
    entries = _Entries(position, now_ns)
    _moves_pieces(entries, (a.spec.currency for a in accounts), moves_accounts)
    for piece in spread_missing:
        fresh = AccountState(piece.spec, piece.created_at_ns)
        entries.writes.new_accounts.append(fresh)
        entries.accounts[piece.spec.id] = fresh
    for piece in (spread or {}).values():
        entries.accounts.setdefault(piece.spec.id, piece.copy())
    # As they were at the source: the move is no change of theirs (versions, closures).
    as_were: dict[str, AccountState] = {a.spec.id: a for a in (arrived or {}).values()}
    for account_id, account in as_were.items():
        entries.accounts[account_id] = account.copy()
    first: Metadata = (
        (COUNT_KEY, str(len(records))),
        (DIGEST_KEY, records_digest(records)),
        (SOURCE_KEY, str(source)),
    )
    later: Metadata = ((SOURCE_KEY, str(source)),)
    carried = not summary
    for account in accounts:
        as_were[account.spec.id] = account
        fresh = AccountState(account.spec, account.created_at_ns, version=account.version)
        entries.writes.new_accounts.append(fresh)
        entries.accounts[account.spec.id] = fresh
        if account.closed_at_ns:
            entries.writes.closures.append((account.spec.id, account.closed_at_ns))
        if account.debits_posted or account.credits_posted:
            legs = _legs(account, out=False)
            metadata = later if carried else first
            entries.post(ids.move_in_id(move_id, account.spec.id), legs, metadata)
            carried = True
    if not carried:  # no account had a balance: the summary travels alone
        entries.post(ids.move_in_id(move_id, SUMMARY_ENTRY), (), first)
    for record in open_holds_of(records) if holds is None else holds:
        entries.raise_hold(move_id, source, record)
    for account_id, account in as_were.items():
        entries.accounts[account_id].closed_at_ns = account.closed_at_ns
        entries.accounts[account_id].version = account.version
    return _finish(entries, _touched(entries))


# ---- paging: a move's entries over several bounded blocks ----


@dataclass(frozen=True, slots=True)
class OutPage:
    """A page of a move-out: the open holds it releases, then the accounts it leaves at zero."""

    holds: tuple[TransactionState, ...]
    account_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InPage:
    """A page of a move-in: the accounts it creates (with their entries), then the open holds
    it holds again."""

    accounts: tuple[AccountState, ...]
    holds: tuple[TransactionState, ...]


@dataclass(frozen=True, slots=True)
class MoveBlock:
    """One page's block as built: its page number, its writes, where the journal stands after
    it, and the accounts it wrote as they end."""

    page: int
    writes: WriteSet
    position: JournalPosition
    accounts: dict[str, AccountState]


def _slices(count: int, page_item_count: int) -> list[tuple[int, int]]:
    """[start, end) of each page of `count` items, at least one page (maybe empty)."""
    check(page_item_count >= 1, "a move's page must hold at least one item")
    if count == 0:
        return [(0, 0)]
    return [(s, min(s + page_item_count, count)) for s in range(0, count, page_item_count)]


def _pages_of_two(
    first: Sequence[T], second: Sequence[U], page_item_count: int
) -> list[tuple[tuple[T, ...], tuple[U, ...]]]:
    """first then second, cut in pages of at most page_item_count items: each page's share of
    each (at least one page, maybe empty)."""
    split = len(first)
    return [
        (
            tuple(first[start : min(end, split)]),
            tuple(second[max(start - split, 0) : max(end - split, 0)]),
        )
        for start, end in _slices(split + len(second), page_item_count)
    ]


def move_out_pages(
    accounts: Sequence[AccountState], holds: Sequence[TransactionState], page_item_count: int
) -> list[OutPage]:
    """A move-out's entries in pages of at most page_item_count: the holds' releases first,
    then the accounts with a balance, in the order given (so the same input pages the same,
    which lets a source resume a move-out page by page)."""
    posted = [a.spec.id for a in accounts if a.debits_posted or a.credits_posted]
    return [OutPage(*page) for page in _pages_of_two(holds, posted, page_item_count)]


def move_in_pages(
    accounts: Sequence[AccountState], records: Sequence[TransactionState], page_item_count: int
) -> list[InPage]:
    """A move-in's entries in pages of at most page_item_count: the accounts first (each page's
    holds then name accounts created before or in it), then the open holds among the records."""
    holds = open_holds_of(records)
    return [InPage(*page) for page in _pages_of_two(accounts, holds, page_item_count)]


def _leg_ids(holds: Iterable[TransactionState]) -> list[str]:
    return [leg.account_id for hold in holds for leg in hold.applied_legs]


def move_out_blocks(
    move_id: str,
    target: int,
    pages: Sequence[tuple[int, OutPage]],
    accounts: Mapping[str, AccountState],
    moves_accounts: dict[str, AccountState | None],
    position: JournalPosition,
    now_ns: int,
    spread: Mapping[str, AccountState] | None = None,
    summary: Metadata = (),
) -> list[MoveBlock]:
    """The blocks of these pages of a move-out, one after another (each page's from the
    accounts as the pages before it left them): `accounts`, the slots' accounts as they are
    now; `spread`, this shard's pieces of the spread accounts the holds name; `summary`, what
    page 0 commits to (totals_metadata)."""
    current: dict[str, AccountState] = {**accounts, **(spread or {})}
    pieces = dict(moves_accounts)
    blocks = []
    for number, page in pages:
        wanted = dict.fromkeys([*_leg_ids(page.holds), *page.account_ids])
        touched = [current[i] for i in wanted if i in accounts]
        held_spread = {i: current[i] for i in wanted if spread and i in spread}
        writes, position, states = move_out_entries(
            move_id, target, touched, pieces, position, now_ns, page.holds, held_spread,
            posted_ids=frozenset(page.account_ids), summary=summary if number == 0 else (),
        )  # fmt: skip
        blocks.append(MoveBlock(number, writes, position, states))
        current.update(states)
        pieces.update({i: a for i, a in states.items() if ids.is_moves_account(i)})
        now_ns = position.last_timestamp_ns + 1
    return blocks


def move_in_blocks(
    move_id: str,
    source: int,
    pages: Sequence[tuple[int, InPage]],
    records: Sequence[TransactionState],
    moves_accounts: dict[str, AccountState | None],
    position: JournalPosition,
    now_ns: int,
    spread_missing: Sequence[AccountState] = (),
    spread: Mapping[str, AccountState] | None = None,
    arrived: Mapping[str, AccountState] | None = None,
) -> list[MoveBlock]:
    """The blocks of these pages of a move-in, one after another: page 0 carries the records'
    summary and creates the spread accounts missing here; `spread`, this shard's pieces of the
    spread accounts the holds name (as they are now); `arrived`, the accounts pages done
    before created, as they are now."""
    current: dict[str, AccountState] = {**(spread or {}), **(arrived or {})}
    pieces = dict(moves_accounts)
    spread_ids = {a.spec.id for a in spread_missing} | set(spread or {})
    blocks = []
    for number, page in pages:
        legs = dict.fromkeys(_leg_ids(page.holds))
        page_ids = {a.spec.id for a in page.accounts}
        writes, position, states = move_in_entries(
            move_id, source, page.accounts, records, pieces, position, now_ns,
            spread_missing if number == 0 else (),
            {i: current[i] for i in legs if i in spread_ids and i in current},
            page.holds,
            {i: current[i] for i in legs if i not in spread_ids and i not in page_ids},
            summary=number == 0,
        )  # fmt: skip
        blocks.append(MoveBlock(number, writes, position, states))
        current.update(states)
        pieces.update({i: a for i, a in states.items() if ids.is_moves_account(i)})
        now_ns = position.last_timestamp_ns + 1
    return blocks


def open_holds_of(records: Sequence[TransactionState]) -> list[TransactionState]:
    """The open holds among moved records, in id order."""
    held = [r for r in records if r.status is Status.PENDING]
    return sorted(held, key=lambda r: r.spec.id)


def record_before_out(record: TransactionState, move_id: str) -> TransactionState:
    """A record homed in moved-out slots as it was before move `move_id`'s move-out (read
    again when the move-out is asked a second time): an open hold it released is open."""
    if record.resolved_by_id != ids.move_out_hold_id(move_id, record.spec.id):
        return record
    before = record.copy()
    before.status, before.resolved_by_id = Status.PENDING, ""
    return before


def check_holds_in(
    records: Sequence[TransactionState], accounts: Sequence[AccountState], slots: frozenset[int]
) -> None:
    """MoveRefusedError unless every open record moving in is a hold (single- or cross-shard)
    homed in the slots, or a held cross-shard piece, whose legs are on the accounts moving in
    or on spread accounts."""
    moving = {account.spec.id for account in accounts}
    for record in open_holds_of(records):
        if record.spec.kind is Kind.PREPARED:
            if not ids.is_piece_id(record.spec.id):
                raise MoveRefusedError(f"open record {record.spec.id!r} is not a piece's")
        elif record.spec.kind not in _HOLD_KINDS or ids.is_reserved(record.spec.id):
            raise MoveRefusedError(f"open record {record.spec.id!r} is not a hold")
        elif not record_moves(record.spec.id, slots):
            raise MoveRefusedError(f"open hold {record.spec.id!r} is not homed in the slots")
        for leg in record.applied_legs:
            if not is_spread(leg.account_id) and leg.account_id not in moving:
                raise MoveRefusedError(
                    f"open record {record.spec.id!r} has a leg on {leg.account_id!r}, which "
                    "does not move in with it"
                )


def _legs(account: AccountState, out: bool) -> tuple[Leg, ...]:
    """Out: D credits_posted, C debits_posted; in: D debits_posted, C credits_posted; each
    balanced on the slot-move account, zero amounts left out."""
    spec = account.spec
    moves = ids.moves_account(spec.currency)
    debit, credit = (
        (account.credits_posted, account.debits_posted)
        if out
        else (account.debits_posted, account.credits_posted)
    )
    legs: list[Leg] = []
    if debit:
        legs += [Leg(spec.id, True, debit, spec.currency), Leg(moves, False, debit, spec.currency)]
    if credit:
        legs += [
            Leg(spec.id, False, credit, spec.currency),
            Leg(moves, True, credit, spec.currency),
        ]
    return tuple(legs)


def _finish(
    entries: _Entries, changed_ids: set[str]
) -> tuple[WriteSet, JournalPosition, dict[str, AccountState]]:
    writes = entries.writes
    # In the order the audit reads a block's rows back to hash them (core.store.audit):
    # accounts by creation time then id, closures by time then account.
    writes.new_accounts.sort(key=lambda a: (a.created_at_ns, a.spec.id))
    writes.closures.sort(key=lambda closure: (closure[1], closure[0]))
    new_ids = {a.spec.id for a in writes.new_accounts}
    for account_id, account in entries.accounts.items():
        if account_id in new_ids or account_id in changed_ids or ids.is_moves_account(account_id):
            writes.changed_accounts[account_id] = account
    return writes, entries.position, entries.accounts


def counters_before_out(out_legs: Sequence[Leg], account_id: str) -> tuple[int, int]:
    """(debits_posted, credits_posted) an account had before its move-out, from the move-out's
    legs (the source reads them back when a move-out is asked again)."""
    debits = sum(
        leg.amount for leg in out_legs if leg.account_id == account_id and not leg.is_debit
    )
    credits = sum(leg.amount for leg in out_legs if leg.account_id == account_id and leg.is_debit)
    return debits, credits


def account_before_out(
    account: AccountState, out_legs: Sequence[Leg], released: Sequence[Sequence[Leg]]
) -> AccountState:
    """An account as it was before its move-out, from what the move wrote to it: its
    move-out's legs (out_legs, () if it had no balance) and the legs its moving holds'
    releases released (each one posting)."""
    before = account.copy()
    account_id = account.spec.id
    if out_legs:
        before.debits_posted, before.credits_posted = counters_before_out(out_legs, account_id)
    postings = sum(1 for leg in out_legs if leg.account_id == account_id)
    for legs in released:
        for leg in legs:
            if leg.account_id == account_id:
                postings += 1
                if leg.is_debit:
                    before.debits_pending += leg.amount
                else:
                    before.credits_pending += leg.amount
    before.version -= postings
    return before


def moving_slot_of(item: Item, slots: frozenset[int]) -> int:
    """The first of `slots` an item writes to (an account's, or its id's home), or -1: what a
    source refuses once it has moved those slots out."""
    if isinstance(item, TransactionSpec):
        if record_moves(item.id, slots):
            return transaction_slot(item.id)
        for record_id in _records_named(item):
            if record_moves(record_id, slots):
                return transaction_slot(record_id)
        for leg in item.legs:
            if account_moves(leg.account_id, slots):
                return account_slot(leg.account_id)
        return -1
    if isinstance(item, AccountSpec):
        return account_slot(item.id) if account_moves(item.id, slots) else -1
    if isinstance(item, CloseSpec):
        moves = account_moves(item.account_id, slots)
        return account_slot(item.account_id) if moves else -1
    return -1


_NAMING_KINDS: Final = frozenset({Kind.POST_PENDING, Kind.VOID_PENDING, Kind.REVERSAL})


def _records_named(spec: TransactionSpec) -> tuple[str, ...]:
    """The records an item writes besides its own: what it posts, voids or reverses, and what
    a cross-shard piece locks (a record of a moved-out slot is the target's now). Kept cheap:
    every item a source writes after a move passes here. An abort marker is not refused: an
    attempt commits only at its coordinator, which can no longer commit one of a moved-out
    slot, so its abort there is true (a moved-out hold's participants are sent on instead:
    shards.node.shard_service, Abort)."""
    if spec.kind in _NAMING_KINDS:
        return (spec.target_id,)
    if spec.kind is Kind.PREPARED and spec.metadata:
        return tuple(r for r in (decided_by_piece(spec), reversed_by_piece(spec)) if r)
    return ()


def refuse_moved(items: Sequence[Item], moved_out: dict[int, str]) -> list[Item]:
    """Items writing to a slot moved out (slot -> the move that took it) become WRONG_SHARD."""
    slots = frozenset(moved_out)
    refused: list[Item] = []
    for item in items:
        slot = -1 if isinstance(item, Rejection) else moving_slot_of(item, slots)
        if slot >= 0:
            item = Rejection(
                ResultCode.WRONG_SHARD,
                f"slot {slot} has moved out of this shard (move {moved_out[slot]})",
                getattr(item, "linked", False),
            )
        refused.append(item)
    return refused


def rebalance_step(
    owners: Sequence[int],
    shard_ids: Iterable[int],
    slot_count_max: int,
    left: Mapping[int, Collection[int]] | None = None,
    kept: Collection[int] = (),
) -> tuple[int, int, list[int]] | None:
    """The next move of a rebalance that spreads the slots evenly over shard_ids (a shard new
    to the cluster included): (source, target, slots), at most slot_count_max slots, or None
    when every shard holds its share. Shares: SLOT_COUNT // n each, one more for the first
    SLOT_COUNT % n shards in id order. The most loaded shard gives its highest slots to the
    least loaded one, so slots move once and ranges stay mostly contiguous; never a slot the
    target moved out before (left: shard -> those slots; moving a slot back is not built), nor
    one of kept (slots that cannot move now: core.moves.stuck_slots), MoveRefusedError if
    those are all the source could give it."""
    shards = sorted(set(shard_ids) | set(owners))
    if not shards or slot_count_max < 1:
        raise MoveRefusedError("a rebalance needs shards and at least one slot per move")
    base, extra = divmod(len(owners), len(shards))
    share = {shard: base + (1 if n < extra else 0) for n, shard in enumerate(shards)}
    held: dict[int, list[int]] = {shard: [] for shard in shards}
    for slot, owner in enumerate(owners):
        held[owner].append(slot)
    surplus = {s: len(held[s]) - share[s] for s in shards}
    source = max(shards, key=lambda s: (surplus[s], -s))
    target = min(shards, key=lambda s: (surplus[s], s))
    if surplus[source] <= 0 or surplus[target] >= 0:
        return None
    count = min(surplus[source], -surplus[target], slot_count_max)
    barred = set(left.get(target, ())) if left else set()
    barred |= set(kept)
    free = [slot for slot in held[source] if slot not in barred]
    if not free:
        raise MoveRefusedError(
            f"every slot shard {source} could give shard {target} was moved out of shard "
            f"{target} before (moving a slot back is not built) or cannot move now"
        )
    return source, target, free[-count:]
