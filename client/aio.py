"""AsyncClient: the asyncio client (tally.client's docstring says what it gives).

Every call has a budget (`timeout_s`, default RetryOptions.timeout_s): attempts, each bounded by
attempt_timeout_s, and backoff with full jitter between them, until an answer is final or the
budget is spent. Writes go through a Batcher per RPC (accounts, transactions) and destination,
so concurrent single calls share RPCs. outcomes.py holds the rules of what is retried.

Direct routing (RoutingOptions, on by default when the gateway offers it; routing.py decides,
destinations.py sends): single-shard units go straight to their node. A routed attempt that is
not final (WRONG_SHARD, UNAVAILABLE, OUTCOME_UNKNOWN, a transport error, no answer) sends the
unit to the gateway from then on, at once and with the same messages, and reloads the map in
the background: the ledger's idempotency makes the second send safe (it answers REPLAYED if
the node had applied it). Lookups by id (GetAccounts, GetTransactions) go to the one node that
holds them all, and to the gateway when that node's answer is not whole (see _read_routed).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from tally.v1 import ledger_pb2 as pb

from .batcher import NotSent, Stats
from .credentials import Credentials
from .destinations import Destination, Routes, channel_opener
from .outcomes import (
    APPLIED_CODES,
    NOT_TAKEN_STATUSES,
    RETRY_CODES,
    RETRY_STATUSES,
    UNKNOWN_CODES,
    CallError,
    Outcome,
    Result,
    code_name,
    status_name,
)
from .routing import MOVE_OUT_PREFIX, RoutingOptions
from .types import Account, AccountState, Balance, Posting, Transaction, TransactionState

MESSAGE_BYTES_MAX = 16 * 1024 * 1024  # the servers' message limit (core.limits)


@dataclass(frozen=True)
class RetryOptions:
    timeout_s: float = 30.0  # a call's whole budget, retries included
    attempt_timeout_s: float = 5.0  # one attempt's deadline
    backoff_base_s: float = 0.05
    backoff_max_s: float = 2.0


@dataclass(frozen=True)
class BatchOptions:
    items_max: int = 2000  # the ledger takes up to 8190 items per call
    bytes_max: int = 4 * 1024 * 1024  # well below the 16 MiB message limit
    in_flight_max: int = 4  # RPCs per kind out at once; the rest coalesce behind them


@dataclass
class _Attempts:
    """One unit's retry state across its attempts."""

    number: int = 0
    maybe_applied: bool = False
    code: str = ""
    message: str = ""
    via_gateway: bool = False  # routed once and not final: the gateway from then on


class AsyncClient:
    """A client of a gateway (or a single node). Use it as an async context manager, or call
    close(). Safe to share between tasks: that is how batching happens."""

    def __init__(
        self,
        target: str,
        credentials: Credentials,
        *,
        retry: RetryOptions | None = None,
        batch: BatchOptions | None = None,
        routing: RoutingOptions | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self.retry = retry or RetryOptions()
        batching = batch or BatchOptions()
        options = [
            ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
            *channel_options,
        ]
        self.stats = Stats()
        open_channel = channel_opener(credentials, options)
        bounds = (
            batching.items_max,
            min(batching.bytes_max, MESSAGE_BYTES_MAX // 2),
            batching.in_flight_max,
        )
        gateway = Destination(target, open_channel(target), self.stats, bounds, direct=False)
        self._stub: Any = gateway.stub
        self._routes = Routes(
            gateway, open_channel, routing or RoutingOptions(), self.stats, bounds
        )
        # Holds being written now, by id: a post or void of one waits for its answer, since
        # the two may go to different targets (a node, the gateway), whose order is not kept.
        self._holds_in_flight: dict[str, asyncio.Future[None]] = {}

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._routes.close()

    @property
    def routing(self) -> str:
        """How calls are routed: "direct (map version N)", "loading", or why every call goes
        to the gateway."""
        router = self._routes.router
        if not router.on:
            return f"gateway only: {router.off_reason}"
        if router.table is None:
            return "loading"
        return f"direct (map version {router.table.version})"

    # ---- writes ----

    async def create_account(self, account: Account, *, timeout_s: float | None = None) -> Result:
        (result,) = await self._write("accounts", [account.to_message()], timeout_s)
        return result

    async def create_accounts(
        self, accounts: Iterable[Account], *, timeout_s: float | None = None
    ) -> list[Result]:
        units = [[account.to_message()] for account in accounts]
        return await self._write_units("accounts", units, timeout_s)

    async def close_accounts(
        self, account_ids: Iterable[str], *, timeout_s: float | None = None
    ) -> list[Result]:
        """Close accounts (no further postings): each needs a zero balance and nothing held
        (else refused: account_has_balance, account_has_pending); closing again is replayed."""
        units = [[pb.CloseAccount(account_id=account_id)] for account_id in account_ids]
        return await self._write_units("closures", units, timeout_s)

    async def post(self, transaction: Transaction, *, timeout_s: float | None = None) -> Result:
        """Post one transaction (a transfer, hold, capture, void or reversal)."""
        (result,) = await self._write("transactions", [transaction.to_message()], timeout_s)
        return result

    async def post_linked(
        self, group: Sequence[Transaction], *, timeout_s: float | None = None
    ) -> list[Result]:
        """Post transactions that succeed or fail together (their ids share one partition
        key). If one is refused, every other is refused as linked_item_failed."""
        if not group:
            return []
        messages = [t.to_message(linked=n < len(group) - 1) for n, t in enumerate(group)]
        return await self._write("transactions", messages, timeout_s)

    async def post_many(
        self, transactions: Iterable[Transaction], *, timeout_s: float | None = None
    ) -> list[Result]:
        """Post independent transactions (each applied or refused on its own), in order."""
        units = [[t.to_message()] for t in transactions]
        return await self._write_units("transactions", units, timeout_s)

    # ---- reads ----

    async def get_account(
        self, account_id: str, *, timeout_s: float | None = None
    ) -> AccountState | None:
        return (await self.get_accounts([account_id], timeout_s=timeout_s))[account_id]

    async def get_accounts(
        self, ids: Sequence[str], *, timeout_s: float | None = None
    ) -> dict[str, AccountState | None]:
        """Each id's account, or None if there is none. CallError for an invalid id."""
        request = pb.GetAccountsRequest(ids=list(ids))
        response = await self._read_routed(
            "GetAccounts",
            request,
            lambda: self._routes.for_accounts(list(ids), via_gateway=False),
            timeout_s,
        )
        return {
            account_id: AccountState.of_message(found.account) if found is not None else None
            for account_id, found in zip(ids, response, strict=True)
        }

    async def get_transaction(
        self, transaction_id: str, *, timeout_s: float | None = None
    ) -> TransactionState | None:
        return (await self.get_transactions([transaction_id], timeout_s=timeout_s))[transaction_id]

    async def get_transactions(
        self, ids: Sequence[str], *, timeout_s: float | None = None
    ) -> dict[str, TransactionState | None]:
        """Each id's transaction as the gateway assembles it (a cross-shard one whole), or
        None if there is none. CallError for an invalid id."""
        request = pb.GetTransactionsRequest(ids=list(ids))
        response = await self._read_routed(
            "GetTransactions",
            request,
            lambda: self._routes.for_records(ids),
            timeout_s,
            fresh_table=True,  # routing.RoutingOptions.record_table_age_max_s says why
        )
        return {
            transaction_id: TransactionState.of_message(found.transaction) if found else None
            for transaction_id, found in zip(ids, response, strict=True)
        }

    async def postings(
        self,
        account_id: str,
        *,
        from_ns: int = 0,
        to_ns: int = 0,
        page_size: int = 1000,
        timeout_s: float | None = None,
    ) -> AsyncIterator[Posting]:
        """Every posting of the account in order (from_ns <= timestamp < to_ns; 0: open),
        page after page; each page's call has its own budget."""
        cursor = ""
        while True:
            request = pb.ListPostingsRequest(
                account_id=account_id, cursor=cursor, limit=page_size, from_ns=from_ns, to_ns=to_ns
            )
            page = await self._read(self._stub.ListPostings, request, timeout_s)
            for posting in page.postings:
                yield Posting.of_message(posting)
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def balance_at(
        self, account_id: str, at_ns: int, *, timeout_s: float | None = None
    ) -> tuple[Balance, int]:
        """The account's balance after every posting at or before at_ns, and the sequence of
        the last of them (0: none)."""
        request = pb.BalanceAtRequest(account_id=account_id, at_ns=at_ns)
        answer = await self._read(self._stub.BalanceAt, request, timeout_s)
        return Balance.of_message(answer.balance), answer.as_of_sequence

    # ---- the retry loop ----

    async def _write_units(
        self, kind: str, units: list[list[Any]], timeout_s: float | None
    ) -> list[Result]:
        ends = await asyncio.gather(*(self._write(kind, unit, timeout_s) for unit in units))
        return [result for end in ends for result in end]

    async def _write(self, kind: str, messages: list[Any], timeout_s: float | None) -> list[Result]:
        """One unit, written after any hold it posts or voids that is being written now (a
        capture called right after its hold never overtakes it, whichever way each goes)."""
        if kind != "transactions":
            return await self._write_unit(kind, messages, timeout_s)
        loop = asyncio.get_running_loop()
        deadline = self._deadline(timeout_s)
        named = {m.post_pending_id or m.void_pending_id for m in messages} - {""}
        waits = [self._holds_in_flight[h] for h in named if h in self._holds_in_flight]
        mine: dict[str, asyncio.Future[None]] = {}
        for message in messages:
            if message.pending and message.id not in self._holds_in_flight:
                mine[message.id] = self._holds_in_flight[message.id] = loop.create_future()
        try:
            if waits:
                await asyncio.wait(waits, timeout=max(0.0, deadline - loop.time()))
            return await self._write_unit(kind, messages, timeout_s)
        finally:
            for hold_id, future in mine.items():
                future.set_result(None)
                if self._holds_in_flight.get(hold_id) is future:
                    del self._holds_in_flight[hold_id]

    async def _write_unit(
        self, kind: str, messages: list[Any], timeout_s: float | None
    ) -> list[Result]:
        """One unit (an item or a linked group), attempted until its answer is final or the
        budget is spent; always the same messages, so always the same ids. Routed to a node
        while routing places it there and no attempt there failed; else to the gateway."""
        loop = asyncio.get_running_loop()
        deadline = self._deadline(timeout_s)
        ids = [_id_of(m) for m in messages]
        size = sum(m.ByteSize() for m in messages)
        state = _Attempts()
        await self._routes.ready(self._lookup_timeout_s(deadline))
        while True:
            state.number += 1
            destination = self._destination(kind, messages, state.via_gateway)
            answers = await self._attempt(destination, kind, messages, ids, size, deadline, state)
            if answers is not None and _final(answers):
                if destination.direct and kind == "transactions":
                    self._note_applied_directly(messages, answers)
                return [_result(a, i, state.number) for a, i in zip(answers, ids, strict=True)]
            if answers is not None:
                _note_retryable(state, answers)
            if destination.direct:
                self._fall_back(state)
                go_on = loop.time() + self.retry.backoff_base_s < deadline
            else:
                go_on = await self._backoff(state.number, deadline)
            if not go_on:
                outcome = Outcome.UNKNOWN if state.maybe_applied else Outcome.NOT_APPLIED
                return [Result(i, outcome, state.code, state.message, 0, state.number) for i in ids]
            self.stats.retries += 1

    async def _attempt(
        self,
        destination: Destination,
        kind: str,
        messages: list[Any],
        ids: list[str],
        size: int,
        deadline: float,
        state: _Attempts,
    ) -> Sequence[Any] | None:
        """One attempt's answers, or None (noted in state) when none came. A refusal of the
        whole call is final at the gateway (CallError); at a node the gateway is asked too."""
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            return await destination.batcher(kind).submit(
                messages, ids, size, min(remaining, self.retry.attempt_timeout_s)
            )
        except NotSent:
            state.code, state.message = "deadline_exceeded", "not sent within its deadline"
        except TimeoutError:
            state.maybe_applied = True
            state.code, state.message = "deadline_exceeded", "no answer within the deadline"
            if destination.direct:
                self._routes.mark_down(destination.target)
        except grpc.aio.AioRpcError as error:
            _note_failed_call(state, error, refusal_is_final=not destination.direct)
            if destination.direct and error.code() in RETRY_STATUSES:
                self._routes.mark_down(destination.target)
        return None

    def _destination(self, kind: str, messages: list[Any], via_gateway: bool) -> Destination:
        if kind == "transactions":
            return self._routes.for_transactions(messages, via_gateway)
        return self._routes.for_accounts([_id_of(m) for m in messages], via_gateway)

    def _note_applied_directly(self, messages: list[Any], answers: Sequence[Any]) -> None:
        applied = [m for m, a in zip(messages, answers, strict=True) if a.code in APPLIED_CODES]
        self._routes.router.note_applied_directly(applied)

    def _fall_back(self, state: _Attempts) -> None:
        """A node refused or failed routed work: the gateway takes the unit from here (it
        routes by its own, fresher map), and the map is reloaded in the background."""
        state.via_gateway = True
        self.stats.fallbacks += 1
        self._routes.reload_soon(self.retry.attempt_timeout_s)

    def _lookup_timeout_s(self, deadline: float) -> float:
        """A routing load's share of a call's budget: one attempt's at most."""
        remaining = deadline - asyncio.get_running_loop().time()
        return max(min(remaining, self.retry.attempt_timeout_s), 0.001)

    def _deadline(self, timeout_s: float | None) -> float:
        """When a call's budget ends, on the loop's clock (RetryOptions.timeout_s by default)."""
        budget = self.retry.timeout_s if timeout_s is None else timeout_s
        return asyncio.get_running_loop().time() + budget

    async def _backoff(self, attempt: int, deadline: float) -> bool:
        """Sleep before the next attempt (full jitter, exponential); False when the budget
        cannot hold a sleep and another attempt."""
        loop = asyncio.get_running_loop()
        ceiling = min(self.retry.backoff_max_s, self.retry.backoff_base_s * 2 ** (attempt - 1))
        pause = random.uniform(0, ceiling)
        if loop.time() + pause + self.retry.backoff_base_s >= deadline:
            return False
        await asyncio.sleep(pause)
        return True

    async def _read(self, method: Any, request: Any, timeout_s: float | None) -> Any:
        """A read, retried on a retryable status within the budget; CallError otherwise."""
        loop = asyncio.get_running_loop()
        deadline = self._deadline(timeout_s)
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - loop.time()
            try:
                return await method(request, timeout=min(remaining, self.retry.attempt_timeout_s))
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRY_STATUSES:
                    raise CallError(status_name(error.code()), error.details() or "") from None
                last = error
            if not await self._backoff(attempt, deadline):
                raise CallError(status_name(last.code()), last.details() or "no answer")
            self.stats.retries += 1

    async def _read_routed(
        self,
        method: str,
        request: pb.GetAccountsRequest | pb.GetTransactionsRequest,
        place: Callable[[], Destination],
        timeout_s: float | None,
        *,
        fresh_table: bool = False,
    ) -> list[Any]:
        """A lookup by ids (GetAccounts, GetTransactions): at the node routing places them all
        on (`place`, called once the table is loaded, and reloaded first if fresh_table and it
        is older than record_table_age_max_s), else, or when that node's answer is not whole,
        at the gateway, within one budget."""
        loop = asyncio.get_running_loop()
        deadline = self._deadline(timeout_s)
        await self._routes.ready(self._lookup_timeout_s(deadline))
        if fresh_table:
            await self._routes.fresh(self._lookup_timeout_s(deadline))
        destination = place()
        if destination.direct:
            found = await self._direct_lookup(method, destination, request, deadline)
            if found is not None:
                return found
        remaining = max(deadline - loop.time(), 0.001)
        return await self._read_items(getattr(self._stub, method), request, remaining)

    async def _direct_lookup(
        self,
        method: str,
        destination: Destination,
        request: pb.GetAccountsRequest | pb.GetTransactionsRequest,
        deadline: float,
    ) -> list[Any] | None:
        """One attempt at the node: its records if it answered each id whole (_whole), else
        None, and the gateway answers instead (a node that never held a slot says "not
        found", one that moved an account out "wrong_shard", a transaction's home holds only
        its piece of a cross-shard one; the gateway follows the moves and joins the pieces),
        and the table is reloaded in the background."""
        self.stats.count_direct(method, len(request.ids))
        try:
            response = await getattr(destination.stub, method)(
                request, timeout=self._lookup_timeout_s(deadline)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in RETRY_STATUSES:
                self._routes.mark_down(destination.target)
            response = None
        if response is None or not all(map(_whole, response.results)):
            self.stats.fallbacks += 1
            self._routes.reload_soon(self.retry.attempt_timeout_s)
            return None
        return list(response.results)

    async def _read_items(self, method: Any, request: Any, timeout_s: float | None) -> list[Any]:
        """A lookup by ids: each found record, or None for not found; retried while any item
        is unavailable; CallError for an invalid id or when the budget runs out."""
        loop = asyncio.get_running_loop()
        deadline = self._deadline(timeout_s)
        attempt = 0
        while True:
            attempt += 1
            remaining = max(deadline - loop.time(), 0.001)
            response = await self._read(method, request, remaining)
            retry = [item for item in response.results if item.code in RETRY_CODES]
            if not retry:
                return [_found(item) for item in response.results]
            if not await self._backoff(attempt, deadline):
                raise CallError(code_name(retry[0].code), retry[0].message)
            self.stats.retries += 1


def _final(answers: Sequence[Any]) -> bool:
    """A unit's answers are final unless one of them is retryable and none is a refusal of
    its own (in a linked group the others answer linked_item_failed, which follows)."""
    codes = {answer.code for answer in answers}
    if not codes & RETRY_CODES:
        return True
    refusals = codes - RETRY_CODES - APPLIED_CODES - {pb.RESULT_CODE_LINKED_ITEM_FAILED}
    return bool(refusals)


def _note_retryable(state: _Attempts, answers: Sequence[Any]) -> None:
    retryable = next(answer for answer in answers if answer.code in RETRY_CODES)
    state.code, state.message = code_name(retryable.code), retryable.message
    if any(answer.code in UNKNOWN_CODES for answer in answers):
        state.maybe_applied = True


def _note_failed_call(
    state: _Attempts, error: grpc.aio.AioRpcError, refusal_is_final: bool = True
) -> None:
    """A whole call that failed: retried if its status says so, else a CallError (the servers
    refused the request itself: credentials, role, a malformed request) if refusal_is_final."""
    status = error.code()
    if status not in RETRY_STATUSES:
        if refusal_is_final:
            raise CallError(status_name(status), error.details() or "")
    elif status not in NOT_TAKEN_STATUSES:
        state.maybe_applied = True  # the request may have reached the ledger
    state.code, state.message = status_name(status), error.details() or ""


def _result(answer: Any, transaction_id: str, attempts: int) -> Result:
    code = answer.code
    outcome = Outcome.APPLIED if code in APPLIED_CODES else Outcome.REFUSED
    stamp = answer.timestamp_ns if outcome is Outcome.APPLIED else 0
    return Result(transaction_id, outcome, code_name(code), answer.message, stamp, attempts)


def _id_of(message: Any) -> str:
    """The item's id: a transaction's or account's `id`, a closure's `account_id`."""
    if isinstance(message, pb.CloseAccount):
        return str(message.account_id)
    return str(message.id)


def _whole(item: pb.AccountLookup | pb.TransactionLookup) -> bool:
    """A node's answer for one id is the one the gateway would give: found, and for a
    transaction neither a cross-shard piece (the gateway joins a cross-shard transaction's
    pieces and completes a cross-shard hold's post) nor a hold the shard gave up to a slot
    move (its copy there reads voided by the cluster's own `~moveout/...`: the hold lives on
    at the slot's new shard)."""
    if item.code != pb.RESULT_CODE_OK:
        return False
    if isinstance(item, pb.AccountLookup):
        return True
    record = item.transaction
    given_up = record.resolved_by_id.startswith(MOVE_OUT_PREFIX)
    return not record.HasField("cross_shard_piece") and not given_up


def _found(item: Any) -> Any:
    """A lookup's record, None when not found; CallError for an invalid id."""
    if item.code == pb.RESULT_CODE_OK:
        return item
    if item.code in (pb.RESULT_CODE_ACCOUNT_NOT_FOUND, pb.RESULT_CODE_TRANSACTION_NOT_FOUND):
        return None
    raise CallError(code_name(item.code), item.message)
