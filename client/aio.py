"""AsyncClient: the asyncio client (tally.client's docstring says what it gives).

Every call has a budget (`timeout_s`, default RetryOptions.timeout_s): attempts, each bounded by
attempt_timeout_s, and backoff with full jitter between them, until an answer is final or the
budget is spent. Writes go through a Batcher per RPC (accounts, transactions), so concurrent
single calls share RPCs. outcomes.py holds the rules of what is retried.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc

from .batcher import Batcher, NotSent, Stats
from .credentials import Credentials
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
        self._channel = grpc.aio.secure_channel(
            target, credentials.channel_credentials(), options=options
        )
        self._stub = pb_grpc.LedgerStub(self._channel)
        self.stats = Stats()
        self._transactions: Batcher[pb.Transaction] = self._batcher(
            "PostTransactions", self._send_transactions, batching
        )
        self._accounts: Batcher[pb.Account] = self._batcher(
            "CreateAccounts", self._send_accounts, batching
        )
        self._closures: Batcher[pb.CloseAccount] = self._batcher(
            "CloseAccounts", self._send_closures, batching
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._transactions.close()
        await self._accounts.close()
        await self._closures.close()
        await self._channel.close()

    # ---- writes ----

    async def create_account(self, account: Account, *, timeout_s: float | None = None) -> Result:
        (result,) = await self._write(self._accounts, [account.to_message()], timeout_s)
        return result

    async def create_accounts(
        self, accounts: Iterable[Account], *, timeout_s: float | None = None
    ) -> list[Result]:
        units = [[account.to_message()] for account in accounts]
        return await self._write_units(self._accounts, units, timeout_s)

    async def close_accounts(
        self, account_ids: Iterable[str], *, timeout_s: float | None = None
    ) -> list[Result]:
        """Close accounts (no further postings): each needs a zero balance and nothing held
        (else refused: account_has_balance, account_has_pending); closing again is replayed."""
        units = [[pb.CloseAccount(account_id=account_id)] for account_id in account_ids]
        return await self._write_units(self._closures, units, timeout_s)

    async def post(self, transaction: Transaction, *, timeout_s: float | None = None) -> Result:
        """Post one transaction (a transfer, hold, capture, void or reversal)."""
        (result,) = await self._write(self._transactions, [transaction.to_message()], timeout_s)
        return result

    async def post_linked(
        self, group: Sequence[Transaction], *, timeout_s: float | None = None
    ) -> list[Result]:
        """Post transactions that succeed or fail together (their ids share one partition
        key). If one is refused, every other is refused as linked_item_failed."""
        if not group:
            return []
        messages = [t.to_message(linked=n < len(group) - 1) for n, t in enumerate(group)]
        return await self._write(self._transactions, messages, timeout_s)

    async def post_many(
        self, transactions: Iterable[Transaction], *, timeout_s: float | None = None
    ) -> list[Result]:
        """Post independent transactions (each applied or refused on its own), in order."""
        units = [[t.to_message()] for t in transactions]
        return await self._write_units(self._transactions, units, timeout_s)

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
        response = await self._read_items(self._stub.GetAccounts, request, timeout_s)
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
        request = pb.GetTransactionsRequest(ids=list(ids))
        response = await self._read_items(self._stub.GetTransactions, request, timeout_s)
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

    def _batcher(self, method: str, send: Any, options: BatchOptions) -> Batcher[Any]:
        return Batcher(
            method,
            send,
            self.stats,
            options.items_max,
            min(options.bytes_max, MESSAGE_BYTES_MAX // 2),
            options.in_flight_max,
        )

    async def _send_transactions(self, messages: list[pb.Transaction], timeout_s: float) -> Any:
        request = pb.PostTransactionsRequest(transactions=messages)
        return (await self._stub.PostTransactions(request, timeout=timeout_s)).results

    async def _send_accounts(self, messages: list[pb.Account], timeout_s: float) -> Any:
        request = pb.CreateAccountsRequest(accounts=messages)
        return (await self._stub.CreateAccounts(request, timeout=timeout_s)).results

    async def _send_closures(self, messages: list[pb.CloseAccount], timeout_s: float) -> Any:
        request = pb.CloseAccountsRequest(accounts=messages)
        return (await self._stub.CloseAccounts(request, timeout=timeout_s)).results

    async def _write_units(
        self, batcher: Batcher[Any], units: list[list[Any]], timeout_s: float | None
    ) -> list[Result]:
        ends = await asyncio.gather(*(self._write(batcher, unit, timeout_s) for unit in units))
        return [result for end in ends for result in end]

    async def _write(
        self, batcher: Batcher[Any], messages: list[Any], timeout_s: float | None
    ) -> list[Result]:
        """One unit (an item or a linked group), attempted until its answer is final or the
        budget is spent; always the same messages, so always the same ids."""
        loop = asyncio.get_running_loop()
        deadline = self._deadline(timeout_s)
        ids = [_id_of(m) for m in messages]
        size = sum(m.ByteSize() for m in messages)
        state = _Attempts()
        while True:
            state.number += 1
            remaining = deadline - loop.time()
            try:
                answers = await batcher.submit(
                    messages, ids, size, min(remaining, self.retry.attempt_timeout_s)
                )
            except NotSent:
                state.code, state.message = "deadline_exceeded", "not sent within its deadline"
            except TimeoutError:
                state.maybe_applied = True
                state.code, state.message = "deadline_exceeded", "no answer within the deadline"
            except grpc.aio.AioRpcError as error:
                _note_failed_call(state, error)
            else:
                if _final(answers):
                    return [_result(a, i, state.number) for a, i in zip(answers, ids, strict=True)]
                _note_retryable(state, answers)
            if not await self._backoff(state.number, deadline):
                outcome = Outcome.UNKNOWN if state.maybe_applied else Outcome.NOT_APPLIED
                return [Result(i, outcome, state.code, state.message, 0, state.number) for i in ids]
            self.stats.retries += 1

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


def _note_failed_call(state: _Attempts, error: grpc.aio.AioRpcError) -> None:
    """A whole call that failed: retried if its status says so, else a CallError (the servers
    refused the request itself: credentials, role, a malformed request)."""
    status = error.code()
    if status not in RETRY_STATUSES:
        raise CallError(status_name(status), error.details() or "")
    if status not in NOT_TAKEN_STATUSES:
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


def _found(item: Any) -> Any:
    """A lookup's record, None when not found; CallError for an invalid id."""
    if item.code == pb.RESULT_CODE_OK:
        return item
    if item.code in (pb.RESULT_CODE_ACCOUNT_NOT_FOUND, pb.RESULT_CODE_TRANSACTION_NOT_FOUND):
        return None
    raise CallError(code_name(item.code), item.message)
