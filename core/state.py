"""The state machine: apply one batch of requests to the ledger in memory, in order.

No I/O. The writer hands it every account and transaction the batch can touch (loaded from the
cache or the store, None for "does not exist"); it decides each item's result and returns the
write set for the store. Objects handed in are never mutated: the batch copies an account or a
transaction the first time it changes it, so a failed commit leaves the caller's state as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from core import ids, limits
from core.invariant import InvariantError, check, fail
from core.model import (
    HELD_KINDS,
    SUCCESS_CODES,
    AccountSpec,
    AccountState,
    CloseSpec,
    Kind,
    Leg,
    Posting,
    Rejection,
    Result,
    ResultCode,
    Status,
    TransactionSpec,
    TransactionState,
    expires_at,
)
from core.pieces import (
    decided_by_piece,
    fate_of_piece,
    legs_digest,
    next_deadline,
    reversed_by_piece,
    share_of_post,
)

Item = AccountSpec | TransactionSpec | CloseSpec | Rejection

log = logging.getLogger("tally.state")


@dataclass(slots=True)
class JournalPosition:
    """Where the shard's journal stands: the next posting sequence and the last timestamp."""

    next_posting_sequence: int
    last_timestamp_ns: int


@dataclass(slots=True)
class WriteSet:
    """Everything a batch changes, for the store to persist in one database transaction."""

    new_accounts: list[AccountState] = field(default_factory=list)
    new_transactions: list[TransactionState] = field(default_factory=list)
    postings: list[Posting] = field(default_factory=list)
    closures: list[tuple[str, int]] = field(default_factory=list)
    # Final states, by id, of accounts and earlier transactions this batch changed.
    changed_accounts: dict[str, AccountState] = field(default_factory=dict)
    changed_transactions: dict[str, TransactionState] = field(default_factory=dict)
    holds_opened: list[tuple[str, int]] = field(default_factory=list)
    holds_closed: list[str] = field(default_factory=list)
    # Open holds given another deadline (cross-shard pieces: Kind.DEADLINE).
    holds_rearmed: list[tuple[str, int]] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (
            self.new_accounts
            or self.new_transactions
            or self.closures
            or self.changed_accounts
            or self.changed_transactions
        )


class _Savepoint:
    """What undoing the items applied since it was taken needs (a linked group's, or one item's
    that met a fault): earlier values of what they changed, the write set's lengths, and the
    ids they were the first to touch (so taking one costs nothing per item already applied)."""

    __slots__ = (
        "accounts",
        "lengths",
        "next_sequence",
        "touched_accounts",
        "touched_transactions",
        "transactions",
    )

    def __init__(self, batch: Batch) -> None:
        self.accounts: dict[str, AccountState | None] = {}
        self.transactions: dict[str, TransactionState | None] = {}
        out = batch.out
        self.lengths = (
            len(out.new_accounts),
            len(out.new_transactions),
            len(out.postings),
            len(out.closures),
            len(out.holds_opened),
            len(out.holds_closed),
            len(out.holds_rearmed),
        )
        self.next_sequence = batch.next_sequence
        self.touched_accounts: list[str] = []
        self.touched_transactions: list[str] = []


class Batch:
    """One batch being applied. Create, call apply(), then read `out` and `position`.

    No item can stop the batch but a broken invariant (core.invariant.InvariantError): an item
    whose application raises anything else is answered ITEM_FAULT with nothing of it applied
    (logged with its traceback), and the rest of the batch goes on. Applying costs nothing more
    for it while no item faults: the batch is applied again from its inputs only then, each
    item under a savepoint of its own (see apply).
    """

    def __init__(
        self,
        accounts: dict[str, AccountState | None],
        transactions: dict[str, TransactionState | None],
        position: JournalPosition,
        now_ns: int,
    ) -> None:
        self._inputs = (accounts, transactions, position, now_ns)
        self._guarded = False
        self._start()

    def _start(self) -> None:
        accounts, transactions, position, now_ns = self._inputs
        # The batch's own views; values are shared with the caller until copied on write.
        self.accounts = dict(accounts)
        self.transactions = dict(transactions)
        self.owned_accounts: set[str] = set()
        self.owned_transactions: set[str] = set()
        self.touched_accounts: set[str] = set()
        self.touched_transactions: set[str] = set()
        self.next_sequence = position.next_posting_sequence
        self.base_timestamp_ns = max(now_ns, position.last_timestamp_ns + 1)
        self.item_count = 0
        self.out = WriteSet()
        self._savepoint: _Savepoint | None = None

    # ---- entry point ----

    def apply(self, requests: Sequence[Sequence[Item]]) -> list[list[Result]]:
        try:
            results = [self._apply_request(items) for items in requests]
        except InvariantError:
            raise
        except Exception:
            # An item met a fault, its effects half made. The inputs were never mutated (copy
            # on write): start again from them, each item guarded, to find it and undo only it.
            self._guarded = True
            self._start()
            results = [self._apply_request(items) for items in requests]
        self._finish()
        return results

    @property
    def position(self) -> JournalPosition:
        return JournalPosition(self.next_sequence, self.base_timestamp_ns + self.item_count)

    def _finish(self) -> None:
        # Lists hold the objects as first created; a rolled-back linked group may have put an
        # earlier copy back in the views, and the views are the truth.
        self.out.new_accounts = [self._final_account(a.spec.id) for a in self.out.new_accounts]
        self.out.new_transactions = [
            self._final_transaction(t.spec.id) for t in self.out.new_transactions
        ]
        for account_id in self.touched_accounts:
            account = self.accounts[account_id]
            check(account is not None, f"touched account {account_id} vanished")
            assert account is not None  # for the type checker; checked above
            self.out.changed_accounts[account_id] = account
        new_ids = {state.spec.id for state in self.out.new_transactions}
        for transaction_id in self.touched_transactions - new_ids:
            state = self.transactions[transaction_id]
            assert state is not None
            self.out.changed_transactions[transaction_id] = state

    def _final_account(self, account_id: str) -> AccountState:
        account = self.accounts[account_id]
        check(account is not None, f"created account {account_id} vanished")
        assert account is not None
        return account

    def _final_transaction(self, transaction_id: str) -> TransactionState:
        state = self.transactions[transaction_id]
        check(state is not None, f"recorded transaction {transaction_id} vanished")
        assert state is not None
        return state

    def _apply_request(self, items: Sequence[Item]) -> list[Result]:
        results: list[Result] = []
        index = 0
        while index < len(items):
            end = index
            while end < len(items) - 1 and getattr(items[end], "linked", False):
                end += 1
            if end == index:
                results.append(self._apply_item(items[index]))
            else:
                results.extend(self._apply_chain(items[index : end + 1]))
            index = end + 1
        return results

    def _apply_chain(self, chain: Sequence[Item]) -> list[Result]:
        check(self._savepoint is None, "linked groups do not nest")
        self._savepoint = _Savepoint(self)
        results: list[Result] = []
        failed_at = -1
        for position, item in enumerate(chain):
            result = self._apply_item(item)
            results.append(result)
            if result.code not in SUCCESS_CODES:
                failed_at = position
                break
        savepoint, self._savepoint = self._savepoint, None
        if failed_at < 0:
            return results
        self._rollback(savepoint)
        message = f"item {failed_at} of this linked group failed"
        return [
            results[position]
            if position == failed_at
            else (
                Result(item.code, item.message)
                if isinstance(item, Rejection)
                else Result(ResultCode.LINKED_ITEM_FAILED, message)
            )
            for position, item in enumerate(chain)
        ]

    def _rollback(self, savepoint: _Savepoint) -> None:
        for account_id, account in savepoint.accounts.items():
            self.accounts[account_id] = account
        for transaction_id, state in savepoint.transactions.items():
            self.transactions[transaction_id] = state
        out = self.out
        a, t, p, c, ho, hc, hr = savepoint.lengths
        del out.new_accounts[a:], out.new_transactions[t:], out.postings[p:]
        del out.closures[c:], out.holds_opened[ho:], out.holds_closed[hc:]
        del out.holds_rearmed[hr:]
        self.next_sequence = savepoint.next_sequence
        self.touched_accounts.difference_update(savepoint.touched_accounts)
        self.touched_transactions.difference_update(savepoint.touched_transactions)

    def _apply_item(self, item: Item) -> Result:
        if not self._guarded:
            return self._apply_one(item)
        # Inside a linked group, the group's savepoint undoes the item (it failed); alone, it
        # gets one of its own.
        alone = self._savepoint is None
        if alone:
            self._savepoint = _Savepoint(self)
        savepoint = self._savepoint
        assert savepoint is not None
        try:
            return self._apply_one(item)
        except InvariantError:
            raise
        except Exception as error:
            if alone:
                self._rollback(savepoint)
            log.exception("unexpected fault applying %s; answered ITEM_FAULT", _describe(item))
            return Result(
                ResultCode.ITEM_FAULT,
                f"the node met an unexpected fault applying this item ({type(error).__name__}; "
                "logged); nothing of it was applied",
            )
        finally:
            if alone:
                self._savepoint = None

    def _apply_one(self, item: Item) -> Result:
        self.item_count += 1
        if isinstance(item, Rejection):
            return Result(item.code, item.message)
        timestamp_ns = self.base_timestamp_ns + self.item_count - 1
        if isinstance(item, TransactionSpec):
            return self._post(item, timestamp_ns)
        if isinstance(item, AccountSpec):
            return self._create_account(item, timestamp_ns)
        return self._close_account(item, timestamp_ns)

    # ---- copy on write ----

    def _known_account(self, account_id: str) -> AccountState | None:
        if account_id not in self.accounts:
            fail(f"account {account_id} was not loaded for this batch")
        return self.accounts[account_id]

    def _known_transaction(self, transaction_id: str) -> TransactionState | None:
        if transaction_id not in self.transactions:
            fail(f"transaction {transaction_id} was not loaded for this batch")
        return self.transactions[transaction_id]

    def _own_account(self, account_id: str) -> AccountState:
        account = self.accounts[account_id]
        check(account is not None, f"writing missing account {account_id}")
        assert account is not None
        if self._savepoint is not None and account_id not in self._savepoint.accounts:
            self._savepoint.accounts[account_id] = account.copy()
        if account_id not in self.owned_accounts:
            account = account.copy()
            self.accounts[account_id] = account
            self.owned_accounts.add(account_id)
        self._touch_account(account_id)
        return account

    def _touch_account(self, account_id: str) -> None:
        if account_id not in self.touched_accounts:
            self.touched_accounts.add(account_id)
            if self._savepoint is not None:
                self._savepoint.touched_accounts.append(account_id)

    def _touch_transaction(self, transaction_id: str) -> None:
        if transaction_id not in self.touched_transactions:
            self.touched_transactions.add(transaction_id)
            if self._savepoint is not None:
                self._savepoint.touched_transactions.append(transaction_id)

    def _own_transaction(self, transaction_id: str) -> TransactionState:
        state = self.transactions[transaction_id]
        check(state is not None, f"writing missing transaction {transaction_id}")
        assert state is not None
        if self._savepoint is not None and transaction_id not in self._savepoint.transactions:
            self._savepoint.transactions[transaction_id] = state.copy()
        if transaction_id not in self.owned_transactions:
            state = state.copy()
            self.transactions[transaction_id] = state
            self.owned_transactions.add(transaction_id)
        self._touch_transaction(transaction_id)
        return state

    def _add_transaction(self, state: TransactionState) -> None:
        transaction_id = state.spec.id
        if self._savepoint is not None and transaction_id not in self._savepoint.transactions:
            self._savepoint.transactions[transaction_id] = self.transactions.get(transaction_id)
        self.transactions[transaction_id] = state
        self.owned_transactions.add(transaction_id)
        self._touch_transaction(transaction_id)
        self.out.new_transactions.append(state)

    # ---- accounts ----

    def _create_account(self, spec: AccountSpec, timestamp_ns: int) -> Result:
        existing = self._known_account(spec.id)
        if existing is not None:
            differences = account_differences(existing.spec, spec)
            if differences:
                return Result(
                    ResultCode.IDEMPOTENCY_CONFLICT,
                    f"account {spec.id!r} exists with a different " + ", ".join(differences),
                )
            return Result(ResultCode.REPLAYED, "", existing.created_at_ns)
        account = AccountState(spec, timestamp_ns)
        if self._savepoint is not None and spec.id not in self._savepoint.accounts:
            self._savepoint.accounts[spec.id] = None
        self.accounts[spec.id] = account
        self.owned_accounts.add(spec.id)
        self.out.new_accounts.append(account)
        return Result(ResultCode.CREATED, "", timestamp_ns)

    def _close_account(self, spec: CloseSpec, timestamp_ns: int) -> Result:
        account = self._known_account(spec.account_id)
        if account is None:
            return Result(ResultCode.ACCOUNT_NOT_FOUND, f"account {spec.account_id!r} not found")
        if account.closed_at_ns:
            return Result(ResultCode.REPLAYED, "", account.closed_at_ns)
        if account.debits_pending or account.credits_pending:
            return Result(ResultCode.ACCOUNT_HAS_PENDING, "void or post its holds first")
        if account.debits_posted != account.credits_posted:
            return Result(
                ResultCode.ACCOUNT_HAS_BALANCE,
                f"posted balance is {account.credits_posted - account.debits_posted}, not zero",
            )
        account = self._own_account(spec.account_id)
        account.closed_at_ns = timestamp_ns
        account.version += 1
        self.out.closures.append((spec.account_id, timestamp_ns))
        return Result(ResultCode.CREATED, "", timestamp_ns)

    # ---- transactions ----

    def _post(self, spec: TransactionSpec, timestamp_ns: int) -> Result:
        existing = self._known_transaction(spec.id)
        if existing is not None:
            if spec.kind is Kind.REVERSAL_MARK:
                return _mark_replay(existing, spec)
            return _replay(existing, spec)
        kind = spec.kind
        if kind is Kind.PREPARED and spec.metadata:
            if reversed_by_piece(spec):
                return self._prepare_reversal(spec, timestamp_ns)
            if decided_by_piece(spec):
                return self._prepare_fate(spec, timestamp_ns)
        if kind is Kind.ORDINARY or kind is Kind.PENDING or kind is Kind.PREPARED:
            return self._apply_new(spec, spec.legs, timestamp_ns)
        if kind is Kind.REVERSAL:
            return self._reverse(spec, timestamp_ns)
        if kind is Kind.COMMIT or kind is Kind.HOLD:
            return self._commit_piece(spec, timestamp_ns)
        if kind is Kind.DEADLINE:
            return self._set_deadline(spec, timestamp_ns)
        if kind is Kind.ABORT:
            return self._record_abort(spec, timestamp_ns)
        if kind is Kind.REVERSAL_MARK:
            return self._mark_reversal(spec, timestamp_ns)
        return self._resolve(spec, timestamp_ns)

    def _commit_piece(self, spec: TransactionSpec, timestamp_ns: int) -> Result:
        """The coordinator's piece: applying it records the commit, unless abort came first."""
        marker = self._known_transaction(spec.target_id)
        if marker is not None:
            reason = ResultCode(marker.spec.code)
            recorded = dict(marker.spec.metadata).get("message", "")
            return Result(reason, recorded or f"transaction {spec.id!r} was aborted earlier")
        return self._apply_new(spec, spec.legs, timestamp_ns)

    def _record_abort(self, spec: TransactionSpec, timestamp_ns: int) -> Result:
        """An attempt's abort marker (its id), unless that attempt committed."""
        committed = self._known_transaction(spec.target_id)
        if (
            committed is not None
            and committed.spec.kind in (Kind.COMMIT, Kind.HOLD)
            and committed.spec.target_id == spec.id
        ):
            return Result(ResultCode.IDEMPOTENCY_CONFLICT, f"{spec.target_id!r} is committed")
        # Another attempt's commit, or an ordinary transaction under the same id here: this
        # attempt can never commit on this shard, so its abort is recorded.
        self._add_transaction(TransactionState(spec, (), timestamp_ns, Status.POSTED))
        return Result(ResultCode.CREATED, "", timestamp_ns)

    def _set_deadline(self, spec: TransactionSpec, timestamp_ns: int) -> Result:
        """A held cross-shard piece gets another deadline (0: none)."""
        piece = self._known_transaction(spec.target_id)
        if piece is None or piece.spec.kind is not Kind.PREPARED:
            return Result(
                ResultCode.PENDING_NOT_FOUND, f"{spec.target_id!r} is not a cross-shard piece"
            )
        if piece.status is not Status.PENDING:
            return _moved_out(piece) or Result(
                ResultCode.PENDING_ALREADY_RESOLVED,
                f"piece {spec.target_id!r} was resolved by {piece.resolved_by_id!r}",
            )
        expires_at_ns = next_deadline(spec, piece, timestamp_ns)
        if piece.expires_at_ns == expires_at_ns:
            return Result(ResultCode.REPLAYED, "", timestamp_ns)
        self._own_transaction(spec.target_id).expires_at_ns = expires_at_ns
        self.out.holds_rearmed.append((spec.target_id, expires_at_ns))
        # Recorded with the deadline it set (the one asked for, in its mode's terms, kept too).
        asked = dict(spec.metadata)
        metadata = {
            **asked,
            "expires_at_ns": str(expires_at_ns),
            "asked_ns": asked["expires_at_ns"],
        }
        record = spec._replace(
            id=ids.deadline_record_id(spec.target_id, timestamp_ns),
            metadata=tuple(sorted(metadata.items())),
        )
        self._add_transaction(
            TransactionState(record, (), timestamp_ns, Status.POSTED, expires_at_ns)
        )
        return Result(ResultCode.CREATED, "", timestamp_ns)

    def _prepare_reversal(self, spec: TransactionSpec, timestamp_ns: int) -> Result:
        """A participant's piece of a reversal whose original is recorded here: the original
        must be reversible and not reversed; it is marked reversed by the piece's transaction
        while the piece is held (voiding the piece frees it)."""
        target = reversed_by_piece(spec)
        problem = _reversal_problem(
            target, self._known_transaction(target), lambda t: t.spec.kind in _REVERSIBLE_HERE
        )
        if problem is not None:
            return problem
        result = self._apply_new(spec, spec.legs, timestamp_ns)
        if result.code is ResultCode.CREATED:
            self._own_transaction(target).reversed_by_id = ids.parse_piece_id(spec.id)[0]
        return result

    def _prepare_fate(self, spec: TransactionSpec, timestamp_ns: int) -> Result:
        """A participant's piece deciding the post or void of a hold recorded here: refused
        as the post or void would be now; else it locks the hold until the piece is resolved
        (posted: the post or void is applied; voided: the hold is free again)."""
        fate = fate_of_piece(spec)
        existing = self._known_transaction(fate.id)
        if existing is not None:
            return _replay(existing, fate)
        hold = self._known_transaction(fate.target_id)
        problem = _resolution_problem(hold, fate, timestamp_ns)
        if problem is None:
            assert hold is not None
            if hold.spec.kind is Kind.PREPARED:
                problem = Result(
                    ResultCode.PENDING_NOT_FOUND,
                    f"{fate.target_id!r} is not a pending transaction",
                )
            elif fate.kind is Kind.POST_PENDING:
                chosen = self._chosen_post(hold, fate)
                if isinstance(chosen, Result):
                    problem = chosen
        if problem is not None:
            return problem
        assert hold is not None
        result = self._apply_new(spec, (), timestamp_ns)
        if result.code is ResultCode.CREATED:
            self._own_transaction(hold.spec.id).resolved_by_id = fate.id  # the lock
        return result

    def _mark_reversal(self, spec: TransactionSpec, timestamp_ns: int) -> Result:
        """A cross-shard transaction committed here (the coordinator) is being reversed: once."""
        problem = _reversal_problem(
            spec.target_id,
            self._known_transaction(spec.target_id),
            lambda t: t.spec.kind is Kind.COMMIT or self._is_hold_post(t),
            "is not a committed cross-shard transaction here",
        )
        if problem is not None:
            return problem
        self._own_transaction(spec.target_id).reversed_by_id = dict(spec.metadata)["reversal"]
        self._add_transaction(TransactionState(spec, (), timestamp_ns, Status.POSTED))
        return Result(ResultCode.CREATED, "", timestamp_ns)

    def _apply_new(self, spec: TransactionSpec, legs: tuple[Leg, ...], timestamp_ns: int) -> Result:
        kind = spec.kind
        pending = kind is Kind.PENDING or kind is Kind.PREPARED or kind is Kind.HOLD
        rejection = self._check_legs(legs, pending)
        if rejection is not None:
            return rejection
        for leg in legs:
            if pending:
                self._write_posting(
                    spec.id, leg.account_id, leg.is_debit, 0, leg.amount, timestamp_ns
                )
            else:
                self._write_posting(
                    spec.id, leg.account_id, leg.is_debit, leg.amount, 0, timestamp_ns
                )
        # (For PREPARED: when to ask the coordinator.)
        expires_at_ns = expires_at(timestamp_ns, spec.timeout_seconds) if pending else 0
        status = Status.PENDING if pending else Status.POSTED
        self._add_transaction(TransactionState(spec, legs, timestamp_ns, status, expires_at_ns))
        if pending:
            self.out.holds_opened.append((spec.id, expires_at_ns))
        return Result(ResultCode.CREATED, "", timestamp_ns)

    def _check_legs(self, legs: tuple[Leg, ...], pending: bool) -> Result | None:
        """Decide whether legs can apply, without changing anything. Hot path: keep it lean."""
        accounts = self.accounts
        after: dict[str, list[int]] = {}
        offset = 2 if pending else 0
        for index, leg in enumerate(legs):
            account_id = leg.account_id
            counters = after.get(account_id)
            if counters is None:
                if account_id not in accounts:
                    fail(f"account {account_id} was not loaded for this batch")
                account = accounts[account_id]
                rejection = _leg_account_problem(index, leg, account)
                if rejection is not None:
                    return rejection
                assert account is not None
                counters = after[account_id] = [
                    account.debits_posted,
                    account.credits_posted,
                    account.debits_pending,
                    account.credits_pending,
                ]
            counters[offset if leg.is_debit else offset + 1] += leg.amount
        return self._check_limits(after, legs)

    def _check_limits(self, after: dict[str, list[int]], legs: tuple[Leg, ...]) -> Result | None:
        amount_max = limits.amount_max
        for account_id, (
            debits_posted,
            credits_posted,
            debits_pending,
            credits_pending,
        ) in after.items():
            if (
                debits_posted > amount_max
                or credits_posted > amount_max
                or debits_pending > amount_max
                or credits_pending > amount_max
            ):
                return Result(
                    ResultCode.AMOUNT_OVERFLOW,
                    f"a balance counter of {account_id!r} would exceed {amount_max}",
                )
            if (
                debits_posted + debits_pending - credits_posted > amount_max
                or credits_posted + credits_pending - debits_posted > amount_max
            ):
                # The available balance (posted minus pending, either side) must stay
                # representable: it is reported as a signed 64-bit number.
                return Result(
                    ResultCode.AMOUNT_OVERFLOW,
                    f"the net balance of {account_id!r} would exceed {amount_max}",
                )
            account = self.accounts[account_id]
            assert account is not None
            spec = account.spec
            if (
                spec.debits_must_not_exceed_credits
                and debits_posted + debits_pending > credits_posted
                and any(leg.is_debit and leg.account_id == account_id for leg in legs)
            ):
                return Result(
                    ResultCode.INSUFFICIENT_FUNDS,
                    f"account {account_id!r} has {account.available} (minor units) available",
                )
            if (
                spec.credits_must_not_exceed_debits
                and credits_posted + credits_pending > debits_posted
                and any(not leg.is_debit and leg.account_id == account_id for leg in legs)
            ):
                return Result(
                    ResultCode.CREDITS_EXCEED_DEBITS,
                    f"account {account_id!r} has {account.available} (minor units) available",
                )
        return None

    def _write_posting(
        self,
        transaction_id: str,
        account_id: str,
        is_debit: bool,
        posted_amount: int,
        pending_delta: int,
        timestamp_ns: int,
    ) -> None:
        account = self._own_account(account_id)
        if is_debit:
            account.debits_posted += posted_amount
            account.debits_pending += pending_delta
            if account.debits_pending < 0:
                fail(f"debits_pending of {account_id} went negative")
        else:
            account.credits_posted += posted_amount
            account.credits_pending += pending_delta
            if account.credits_pending < 0:
                fail(f"credits_pending of {account_id} went negative")
        account.version += 1
        self.out.postings.append(
            Posting(
                self.next_sequence,
                transaction_id,
                account_id,
                is_debit,
                posted_amount,
                pending_delta,
                timestamp_ns,
                account.debits_posted,
                account.credits_posted,
                account.debits_pending,
                account.credits_pending,
            )
        )
        self.next_sequence += 1

    # ---- holds: post, void, expire ----

    def _resolve(self, spec: TransactionSpec, timestamp_ns: int, locked: bool = False) -> Result:
        """locked: a post or void its piece decided (its hold locked for it since then: no
        expiry by the clock since)."""
        pending = self._known_transaction(spec.target_id)
        rejection = _resolution_problem(pending, spec, timestamp_ns, locked)
        if rejection is not None:
            return rejection
        assert pending is not None
        held = _sum_by_leg_key(pending.applied_legs)
        posted: dict[tuple[str, bool, str], int] = {}
        if spec.kind is Kind.POST_PENDING:
            chosen = self._chosen_post(pending, spec)
            if isinstance(chosen, Result):
                return chosen
            posted = chosen
        for (account_id, is_debit, _currency), amount in held.items():
            post_amount = posted.get((account_id, is_debit, _currency), 0)
            self._write_posting(spec.id, account_id, is_debit, post_amount, -amount, timestamp_ns)
        for key, amount in posted.items():
            if key not in held and amount:  # a clearing leg a cross-shard piece did not hold
                self._write_posting(spec.id, key[0], key[1], amount, 0, timestamp_ns)
        applied = tuple(
            Leg(account_id, is_debit, amount, currency)
            for (account_id, is_debit, currency), amount in (
                posted if spec.kind is Kind.POST_PENDING else held
            ).items()
            if amount
        )
        self._close_hold(pending, spec, timestamp_ns)
        self._add_transaction(TransactionState(spec, applied, timestamp_ns, Status.POSTED))
        if pending.spec.metadata and pending.spec.kind is Kind.PREPARED:
            self._after_piece(pending, spec.kind is Kind.POST_PENDING, timestamp_ns)
        return Result(ResultCode.CREATED, "", timestamp_ns)

    def _after_piece(self, piece: TransactionState, posted: bool, timestamp_ns: int) -> None:
        """A participant's piece that locked a record here was resolved: a voided reversal
        piece frees its original; a fate piece frees its hold and, posted, applies the post
        or void it decided (refused only if the hold is gone: an invariant)."""
        transaction_id = ids.parse_piece_id(piece.spec.id)[0]
        original_id = reversed_by_piece(piece.spec)
        if original_id and not posted:
            original = self._known_transaction(original_id)
            if original is not None and original.reversed_by_id == transaction_id:
                self._own_transaction(original_id).reversed_by_id = ""
        hold_id = decided_by_piece(piece.spec)
        if hold_id:
            hold = self._known_transaction(hold_id)
            if hold is not None and hold.resolved_by_id == transaction_id:
                self._own_transaction(hold_id).resolved_by_id = ""
            if posted:
                # A record of its own, so a timestamp of its own (the journal orders a block's
                # records by timestamp): the next one, as if it were the next item.
                self.item_count += 1
                at_ns = self.base_timestamp_ns + self.item_count - 1
                result = self._resolve(fate_of_piece(piece.spec), at_ns, locked=True)
                check(
                    result.code is ResultCode.CREATED,
                    f"{transaction_id} decided at {piece.spec.id}: {result}",
                )

    def _chosen_post(
        self, pending: TransactionState, spec: TransactionSpec
    ) -> dict[tuple[str, bool, str], int] | Result:
        """What a post posts of the hold, by leg key, or why it cannot."""
        held = _sum_by_leg_key(pending.applied_legs)
        # A piece of a cross-shard hold posts its share of the client's post (spec.legs name
        # accounts of every shard), balanced by its clearing piece, whatever it held.
        cross = pending.spec.kind is not Kind.PENDING
        if cross:
            chosen = share_of_post(pending.applied_legs, spec.legs)
        else:
            chosen = spec.legs or pending.applied_legs
        posted = _sum_by_leg_key(chosen)
        for key, amount in posted.items():
            if cross and ids.is_clearing(key[0]):
                continue
            if amount > held.get(key, 0):
                return Result(
                    ResultCode.POST_EXCEEDS_PENDING,
                    f"posting {amount} to {key[0]!r} but {held.get(key, 0)} is held there",
                )
        overflow = self._post_overflow(posted)
        return overflow if overflow is not None else posted

    def _post_overflow(self, posted: dict[tuple[str, bool, str], int]) -> Result | None:
        for (account_id, is_debit, _currency), amount in posted.items():
            account = self._known_account(account_id)
            assert account is not None
            current = account.debits_posted if is_debit else account.credits_posted
            if current + amount > limits.amount_max:
                return Result(
                    ResultCode.AMOUNT_OVERFLOW,
                    f"a balance counter of {account_id!r} would exceed {limits.amount_max}",
                )
        return None

    def _close_hold(self, pending: TransactionState, spec: TransactionSpec, at_ns: int) -> None:
        state = self._own_transaction(pending.spec.id)
        state.status = {
            Kind.POST_PENDING: Status.PENDING_POSTED,
            Kind.VOID_PENDING: Status.PENDING_VOIDED,
            Kind.EXPIRY: Status.PENDING_EXPIRED,
        }[spec.kind]
        state.resolved_by_id = spec.id
        self.out.holds_closed.append(pending.spec.id)

    # ---- reversal ----

    def _reverse(self, spec: TransactionSpec, timestamp_ns: int) -> Result:
        original = self._known_transaction(spec.target_id)
        problem = _reversal_problem(
            spec.target_id, original, lambda t: t.spec.kind not in _NOT_REVERSIBLE_ALONE
        )
        if problem is not None:
            return problem
        assert original is not None
        if self._is_hold_post(original):  # legs on several shards: the gateway reverses it
            return Result(
                ResultCode.NOT_REVERSIBLE,
                f"{spec.target_id!r} posted a hold whose legs span shards: reverse it through "
                "the gateway",
            )
        inverted = tuple(
            Leg(leg.account_id, not leg.is_debit, leg.amount, leg.currency)
            for leg in original.applied_legs
        )
        result = self._apply_new(spec, inverted, timestamp_ns)
        if result.code is ResultCode.CREATED:
            self._own_transaction(spec.target_id).reversed_by_id = spec.id
        return result

    def _is_hold_post(self, state: TransactionState) -> bool:
        """The post of a cross-shard hold recorded here (its coordinator). The writer loads
        the target of a post a batch reverses (see reversed_posts)."""
        if state.spec.kind is not Kind.POST_PENDING:
            return False
        hold = self.transactions.get(state.spec.target_id)
        return hold is not None and hold.spec.kind is Kind.HOLD

    def iter_touched_account_ids(self) -> Iterator[str]:
        return iter(self.touched_accounts)


# Kinds a reversal on one shard refuses (void a hold instead; the rest are the cluster's).
_NOT_REVERSIBLE_ALONE: Final = frozenset(
    {
        Kind.PENDING,
        Kind.VOID_PENDING,
        Kind.EXPIRY,
        Kind.PREPARED,
        Kind.COMMIT,
        Kind.ABORT,
        Kind.HOLD,
        Kind.DEADLINE,
    }
)
# Kinds a participant's reversal piece may lock as reversed: what one shard reverses, and a
# cross-shard transaction committed here.
_REVERSIBLE_HERE: Final = frozenset({Kind.ORDINARY, Kind.REVERSAL, Kind.POST_PENDING, Kind.COMMIT})


def _reversal_problem(
    target_id: str,
    original: TransactionState | None,
    reversible: Callable[[TransactionState], bool],
    not_reversible: str = "",
) -> Result | None:
    """Why `original` (target_id's record here, or None) cannot be reversed now: not found,
    not `reversible` (not_reversible says why; by default its kind), or reversed already."""
    if original is None:
        return Result(ResultCode.TRANSACTION_NOT_FOUND, f"reverses_id {target_id!r} not found")
    if not reversible(original):
        why = not_reversible or (
            f"is a {original.spec.kind.name.lower()} record; void a hold instead of reversing it"
        )
        return Result(ResultCode.NOT_REVERSIBLE, f"{target_id!r} {why}")
    if original.reversed_by_id:
        return Result(
            ResultCode.ALREADY_REVERSED,
            f"{target_id!r} was reversed by {original.reversed_by_id!r}",
        )
    return None


def _describe(item: Item) -> str:
    """An item for the log: its kind and id (ids are bounded by validation)."""
    if isinstance(item, TransactionSpec):
        return f"transaction {item.id[:200]!r} ({item.kind.name})"
    if isinstance(item, AccountSpec):
        return f"account {item.id[:200]!r}"
    if isinstance(item, CloseSpec):
        return f"closing of {item.account_id[:200]!r}"
    return "a rejection"


def _leg_account_problem(index: int, leg: Leg, account: AccountState | None) -> Result | None:
    if account is None:
        return Result(
            ResultCode.ACCOUNT_NOT_FOUND, f"legs[{index}].account_id {leg.account_id!r} not found"
        )
    if account.closed_at_ns:
        return Result(ResultCode.ACCOUNT_CLOSED, f"account {leg.account_id!r} is closed")
    if account.spec.currency != leg.currency:
        return Result(
            ResultCode.CURRENCY_MISMATCH,
            f"legs[{index}].currency is {leg.currency}, account {leg.account_id!r} "
            f"is {account.spec.currency}",
        )
    return None


def _replay(existing: TransactionState, spec: TransactionSpec) -> Result:
    if spec.kind in _COORDINATED and (
        existing.spec.kind is not spec.kind or existing.spec.target_id != spec.target_id
    ):
        # Another attempt of the id committed here, or a single-shard record holds it: this
        # attempt can never commit. Its gateway then records the attempt's abort, whose
        # decision says whether it was the same transaction (REPLAYED) or not
        # (shards.crossshard.participant.decision): a replay here would commit its pieces.
        differences = transaction_differences(existing.spec, spec)
        why = (
            "exists with a different " + ", ".join(differences)
            if differences
            else "was recorded by another attempt"
        )
        return Result(ResultCode.IDEMPOTENCY_CONFLICT, f"transaction {spec.id!r} {why}")
    return replay_result(existing, spec, ())


def replay_result(
    existing: TransactionState, spec: TransactionSpec, ignored: tuple[str, ...]
) -> Result:
    """REPLAYED with the recorded timestamp, or IDEMPOTENCY_CONFLICT naming the fields that
    differ (but the ignored ones)."""
    differences = transaction_differences(existing.spec, spec)
    if ignored:
        differences = [name for name in differences if name not in ignored]
    if differences:
        return Result(
            ResultCode.IDEMPOTENCY_CONFLICT,
            f"transaction {spec.id!r} exists with a different " + ", ".join(differences),
        )
    return Result(ResultCode.REPLAYED, "", existing.timestamp_ns)


def _mark_replay(existing: TransactionState, spec: TransactionSpec) -> Result:
    """The target was marked reversed already: by this reversal (a replay) or by another."""
    recorded = dict(existing.spec.metadata).get("reversal", "")
    if recorded == dict(spec.metadata).get("reversal"):
        return Result(ResultCode.REPLAYED, "", existing.timestamp_ns)
    return Result(ResultCode.ALREADY_REVERSED, f"{spec.target_id!r} was reversed by {recorded!r}")


def _moved_out(record: TransactionState) -> Result | None:
    """WRONG_SHARD for a held record this shard's move-out released (a cross-shard piece that
    moved with its accounts: it is held at the move's target now), else None."""
    move_id = ids.moved_out_by(record.resolved_by_id, record.spec.id)
    if not move_id:
        return None
    return Result(
        ResultCode.WRONG_SHARD,
        f"{record.spec.id!r} has moved out of this shard with its accounts (move {move_id})",
    )


def _resolution_problem(
    pending: TransactionState | None,
    spec: TransactionSpec,
    timestamp_ns: int,
    locked: bool = False,
) -> Result | None:
    field = "void_pending_id" if spec.kind is Kind.VOID_PENDING else "post_pending_id"
    if pending is None or pending.spec.kind not in HELD_KINDS:
        return Result(
            ResultCode.PENDING_NOT_FOUND, f"{field} {spec.target_id!r} is not a pending transaction"
        )
    if pending.status is Status.PENDING_EXPIRED:
        return Result(ResultCode.PENDING_EXPIRED, f"hold {spec.target_id!r} expired")
    if pending.status is not Status.PENDING:
        return _moved_out(pending) or Result(
            ResultCode.PENDING_ALREADY_RESOLVED,
            f"hold {spec.target_id!r} was resolved by {pending.resolved_by_id!r}",
        )
    if pending.resolved_by_id and pending.spec.kind is not Kind.PREPARED and not locked:
        # Locked by a participant's piece deciding it (see core.ids.DECIDES_KEY).
        return Result(
            ResultCode.UNAVAILABLE,
            f"hold {spec.target_id!r} is being decided by {pending.resolved_by_id!r}; retry "
            "with the same id",
        )
    if (
        not locked
        and pending.spec.kind is not Kind.PREPARED  # a prepared piece's deadline is not an expiry
        and spec.kind is not Kind.EXPIRY
        and pending.expires_at_ns
        and timestamp_ns >= pending.expires_at_ns
    ):
        return Result(ResultCode.PENDING_EXPIRED, f"hold {spec.target_id!r} expired")
    return None


def _sum_by_leg_key(legs: Sequence[Leg]) -> dict[tuple[str, bool, str], int]:
    sums: dict[tuple[str, bool, str], int] = {}
    for leg in legs:
        key = (leg.account_id, leg.is_debit, leg.currency)
        sums[key] = sums.get(key, 0) + leg.amount
    return sums


def account_differences(recorded: AccountSpec, submitted: AccountSpec) -> list[str]:
    names = (
        "currency",
        "code",
        "debits_must_not_exceed_credits",
        "credits_must_not_exceed_debits",
        "metadata",
    )
    return [name for name in names if getattr(recorded, name) != getattr(submitted, name)]


def transaction_differences(recorded: TransactionSpec, submitted: TransactionSpec) -> list[str]:
    """Fields that differ, as the client sees its transaction; `linked` is how the item was
    grouped, not what it does, and a prepared piece's timeout is the gateway's deadline
    setting, not the client's content. A coordinator's piece (COMMIT, HOLD) is the client's
    transfer or hold: its legs are the digest of the client's legs on every shard that it
    carries (core.pieces.legs_digest), and its target, its attempt's abort marker, is no
    content of the client's."""
    names: tuple[str, ...] = ("kind", "legs", "code", "metadata", "value_date", "target_id")
    if recorded.kind is not Kind.PREPARED:
        names += ("timeout_seconds",)
    if recorded.kind not in _COORDINATED and submitted.kind not in _COORDINATED:
        return [name for name in names if getattr(recorded, name) != getattr(submitted, name)]
    before, after = _client_view(recorded), _client_view(submitted)
    if not (before["digest"] and after["digest"]):
        # A piece recorded before pieces carried the digest: its own legs are all it says.
        before["digest"], after["digest"] = recorded.legs, submitted.legs
    names = tuple("digest" if name == "legs" else name for name in names)
    differences = [name for name in names if before[name] != after[name]]
    return ["legs" if name == "digest" else name for name in differences]


_COORDINATED: Final = {Kind.COMMIT: Kind.ORDINARY, Kind.HOLD: Kind.PENDING}


def _client_view(spec: TransactionSpec) -> dict[str, object]:
    """A transaction's content as its client sent it (see transaction_differences); "digest"
    stands for its legs ("" if a coordinator's piece does not carry one)."""
    metadata = dict(spec.metadata)
    digest = metadata.pop(ids.DIGEST_KEY, "")
    metadata.pop(ids.SHARDS_KEY, None)  # where its pieces are: no content of the client's
    metadata.pop(ids.REVERSAL_OF_KEY, None)  # what its legs say already
    coordinated = spec.kind in _COORDINATED
    return {
        "kind": _COORDINATED.get(spec.kind, spec.kind),
        "digest": digest if coordinated else legs_digest(spec.legs),
        "code": spec.code,
        "metadata": tuple(sorted(metadata.items())),
        "value_date": spec.value_date,
        "target_id": "" if coordinated else spec.target_id,
        "timeout_seconds": spec.timeout_seconds,
    }


def needed_ids(requests: Sequence[Sequence[Item]]) -> tuple[set[str], set[str]]:
    """The account and transaction ids a batch reads, before targets' legs are known."""
    account_ids: set[str] = set()
    transaction_ids: set[str] = set()
    for items in requests:
        for item in items:
            if isinstance(item, TransactionSpec):
                transaction_ids.add(item.id)
                if item.target_id:
                    transaction_ids.add(item.target_id)
                for leg in item.legs:
                    account_ids.add(leg.account_id)
                if item.metadata and item.kind is Kind.PREPARED:
                    reversed_id = reversed_by_piece(item)
                    if reversed_id:
                        transaction_ids.add(reversed_id)
                    if decided_by_piece(item):
                        try:
                            fate = fate_of_piece(item)
                        except Exception:  # applying it faults the same way: ITEM_FAULT
                            continue
                        transaction_ids.update((fate.id, fate.target_id))
            elif isinstance(item, AccountSpec):
                account_ids.add(item.id)
            elif isinstance(item, CloseSpec):
                account_ids.add(item.account_id)
    return account_ids, transaction_ids


def reversal_targets(requests: Sequence[Sequence[Item]]) -> set[str]:
    """Ids a batch reverses (or marks reversed): if one is a post of a hold, the batch must
    know that hold too (Batch._is_hold_post)."""
    return {
        item.target_id
        for items in requests
        for item in items
        if isinstance(item, TransactionSpec)
        and (item.kind is Kind.REVERSAL or item.kind is Kind.REVERSAL_MARK)
    }


def check_balanced(writes: WriteSet, accounts: dict[str, AccountState | None]) -> None:
    """Per currency, posted debits equal posted credits and pending deltas net to zero, for the
    batch as a whole (every transaction is balanced, so their sum must be)."""
    posted: dict[str, int] = {}
    pending: dict[str, int] = {}
    for posting in writes.postings:
        account = accounts[posting.account_id]
        check(account is not None, f"posting to unknown account {posting.account_id}")
        assert account is not None
        currency = account.spec.currency
        sign = 1 if posting.is_debit else -1
        posted[currency] = posted.get(currency, 0) + sign * posting.posted_amount
        pending[currency] = pending.get(currency, 0) + sign * posting.pending_delta
    for currency in posted:
        check(posted[currency] == 0, f"batch unbalanced in posted {currency}: {posted[currency]}")
        check(pending[currency] == 0, f"batch unbalanced in pending {currency}")
