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
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from core import ids, journal
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
)
from core.slots import SLOT_COUNT, account_slot, is_spread, transaction_slot
from core.state import Item, JournalPosition, WriteSet

MOVES_CODE: Final = 9998
"""The code of the slot-move accounts (the clearing accounts' is 9999)."""

MOVE_RECORD_COUNT_MAX: Final = 20_000
"""At most this many accounts and transaction records in one move: they travel in one message
(under gRPC's 16 MiB at up to 800 bytes each). Paging the copy is the next step."""

COUNT_KEY: Final = "~moved_records"
DIGEST_KEY: Final = "~moved_digest"
SOURCE_KEY: Final = "~move_source"
TARGET_KEY: Final = "~move_target"


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


def held_refusal(accounts: Sequence[AccountState], records: Sequence[TransactionState]) -> str:
    """Why these cannot move now, though they may soon ("": nothing held): open holds and held
    cross-shard pieces are not moved."""
    for account in accounts:
        if account.debits_pending or account.credits_pending:
            return (
                f"account {account.spec.id!r} has amounts held (an open hold or a held "
                "cross-shard piece): moving open holds is not built; post, void or let them "
                "expire first"
            )
    for record in records:
        if record.status is Status.PENDING:
            return f"transaction {record.spec.id!r} homed in the slots is an open hold"
    return ""


def refusal_of(accounts: Sequence[AccountState], records: Sequence[TransactionState]) -> str:
    """Why these cannot move at all ("": they can)."""
    for account in accounts:
        if account.debits_posted + account.credits_posted > amount_max:
            return f"account {account.spec.id!r}: its move-out would overflow its counters"
    if len(accounts) + len(records) > MOVE_RECORD_COUNT_MAX:
        return (
            f"{len(accounts)} accounts and {len(records)} records: at most "
            f"{MOVE_RECORD_COUNT_MAX} in one move (move fewer slots at once)"
        )
    return ""


def records_digest(records: Sequence[TransactionState]) -> str:
    """SHA-256 over the records' canonical lines, in id order: what the move-in commits to."""
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: r.spec.id):
        digest.update(journal.transaction_line(record, *journal.legs_texts(record)).encode())
        digest.update(b"\n")
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
        self.timestamp_ns = max(self.timestamp_ns, self.position.last_timestamp_ns + 1)
        at = self.timestamp_ns
        self.writes.new_transactions.append(TransactionState(spec, legs, at, Status.POSTED))
        sequence = self.position.next_posting_sequence
        for leg in legs:
            account = self.accounts[leg.account_id]
            if leg.is_debit:
                account.debits_posted += leg.amount
            else:
                account.credits_posted += leg.amount
            account.version += 1
            self.writes.postings.append(
                Posting(
                    sequence, transaction_id, leg.account_id, leg.is_debit, leg.amount, 0, at,
                    account.debits_posted, account.credits_posted,
                    account.debits_pending, account.credits_pending,
                )
            )  # fmt: skip
            sequence += 1
        self.position = JournalPosition(sequence, at)
        self.timestamp_ns = at + 1


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
) -> tuple[WriteSet, JournalPosition, dict[str, AccountState]]:
    """The source's move-out block: each account with a balance left at net zero."""
    entries = _Entries(position, now_ns)
    moving = [a for a in accounts if a.debits_posted or a.credits_posted]
    _moves_pieces(entries, (a.spec.currency for a in moving), moves_accounts)
    for account in moving:
        entries.accounts[account.spec.id] = account.copy()
        metadata = ((TARGET_KEY, str(target)),)
        entries.post(
            ids.move_out_id(move_id, account.spec.id),
            _legs(account, out=True),
            metadata,
        )
    return _finish(entries, {a.spec.id for a in moving})


def move_in_entries(
    move_id: str,
    source: int,
    accounts: Sequence[AccountState],
    records: Sequence[TransactionState],
    moves_accounts: dict[str, AccountState | None],
    position: JournalPosition,
    now_ns: int,
    spread_missing: Sequence[AccountState] = (),
) -> tuple[WriteSet, JournalPosition, dict[str, AccountState]]:
    """The target's move-in block: every account created as it was made, its counters brought
    to the source's by one transaction; the first carries the records' count and digest. The
    spread accounts missing here are created too, empty."""
    entries = _Entries(position, now_ns)
    _moves_pieces(entries, (a.spec.currency for a in accounts), moves_accounts)
    for piece in spread_missing:
        fresh = AccountState(piece.spec, piece.created_at_ns)
        entries.writes.new_accounts.append(fresh)
        entries.accounts[piece.spec.id] = fresh
    summary: Metadata = (
        (COUNT_KEY, str(len(records))),
        (DIGEST_KEY, records_digest(records)),
        (SOURCE_KEY, str(source)),
    )
    for account in accounts:
        fresh = AccountState(account.spec, account.created_at_ns, version=account.version)
        entries.writes.new_accounts.append(fresh)
        entries.accounts[account.spec.id] = fresh
        if account.closed_at_ns:
            entries.writes.closures.append((account.spec.id, account.closed_at_ns))
        if account.debits_posted or account.credits_posted:
            legs = _legs(account, out=False)
            entries.post(ids.move_in_id(move_id, account.spec.id), legs, summary)
            summary = ((SOURCE_KEY, str(source)),)
    if summary[0][0] == COUNT_KEY:  # no account had a balance: the summary travels alone
        entries.post(ids.move_in_id(move_id, "~records"), (), summary)
    for account in accounts:  # as they were at the source: the move is no change of theirs
        entries.accounts[account.spec.id].closed_at_ns = account.closed_at_ns
        entries.accounts[account.spec.id].version = account.version
    new_ids = {a.spec.id for a in entries.writes.new_accounts}
    return _finish(entries, set(entries.accounts) - new_ids)


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


def moving_slot_of(item: Item, slots: frozenset[int]) -> int:
    """The first of `slots` an item writes to (an account's, or its id's home), or -1: what a
    source refuses once it has moved those slots out."""
    if isinstance(item, TransactionSpec):
        if record_moves(item.id, slots):
            return transaction_slot(item.id)
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
    owners: Sequence[int], shard_ids: Iterable[int], slot_count_max: int
) -> tuple[int, int, list[int]] | None:
    """The next move of a rebalance that spreads the slots evenly over shard_ids (a shard new
    to the cluster included): (source, target, slots), at most slot_count_max slots, or None
    when every shard holds its share. Shares: SLOT_COUNT // n each, one more for the first
    SLOT_COUNT % n shards in id order. The most loaded shard gives its highest slots to the
    least loaded one, so slots move once and ranges stay mostly contiguous."""
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
    return source, target, held[source][-count:]
