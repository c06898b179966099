"""Client: the blocking client, for threads. It runs an AsyncClient on an event loop in a
thread of its own, so calls from many threads coalesce into shared RPCs just as tasks do."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from .aio import AsyncClient, BatchOptions, RetryOptions
from .credentials import Credentials
from .outcomes import Result
from .routing import RoutingOptions
from .types import Account, AccountState, Balance, Posting, Transaction, TransactionState

T = TypeVar("T")


class Client:
    """The AsyncClient's calls, blocking. Use it as a context manager, or call close()."""

    def __init__(
        self,
        target: str,
        credentials: Credentials,
        *,
        retry: RetryOptions | None = None,
        batch: BatchOptions | None = None,
        routing: RoutingOptions | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tally-client", daemon=True
        )
        self._thread.start()

        async def make() -> AsyncClient:
            return AsyncClient(target, credentials, retry=retry, batch=batch, routing=routing)

        self._client = self._run(make())

    @property
    def stats(self) -> Any:
        return self._client.stats

    @property
    def routing(self) -> str:
        return self._client.routing

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def create_account(self, account: Account, *, timeout_s: float | None = None) -> Result:
        return self._run(self._client.create_account(account, timeout_s=timeout_s))

    def create_accounts(
        self, accounts: Iterable[Account], *, timeout_s: float | None = None
    ) -> list[Result]:
        return self._run(self._client.create_accounts(list(accounts), timeout_s=timeout_s))

    def close_accounts(
        self, account_ids: Iterable[str], *, timeout_s: float | None = None
    ) -> list[Result]:
        return self._run(self._client.close_accounts(list(account_ids), timeout_s=timeout_s))

    def post(self, transaction: Transaction, *, timeout_s: float | None = None) -> Result:
        return self._run(self._client.post(transaction, timeout_s=timeout_s))

    def post_linked(
        self, group: Sequence[Transaction], *, timeout_s: float | None = None
    ) -> list[Result]:
        return self._run(self._client.post_linked(group, timeout_s=timeout_s))

    def post_many(
        self, transactions: Iterable[Transaction], *, timeout_s: float | None = None
    ) -> list[Result]:
        return self._run(self._client.post_many(list(transactions), timeout_s=timeout_s))

    def get_account(
        self, account_id: str, *, timeout_s: float | None = None
    ) -> AccountState | None:
        return self._run(self._client.get_account(account_id, timeout_s=timeout_s))

    def get_accounts(
        self, ids: Sequence[str], *, timeout_s: float | None = None
    ) -> dict[str, AccountState | None]:
        return self._run(self._client.get_accounts(ids, timeout_s=timeout_s))

    def get_transaction(
        self, transaction_id: str, *, timeout_s: float | None = None
    ) -> TransactionState | None:
        return self._run(self._client.get_transaction(transaction_id, timeout_s=timeout_s))

    def get_transactions(
        self, ids: Sequence[str], *, timeout_s: float | None = None
    ) -> dict[str, TransactionState | None]:
        return self._run(self._client.get_transactions(ids, timeout_s=timeout_s))

    def postings(self, account_id: str, *, from_ns: int = 0, to_ns: int = 0) -> list[Posting]:
        """Every posting of the account in the range, read page by page."""

        async def every() -> list[Posting]:
            return [
                p async for p in self._client.postings(account_id, from_ns=from_ns, to_ns=to_ns)
            ]

        return self._run(every())

    def balance_at(
        self, account_id: str, at_ns: int, *, timeout_s: float | None = None
    ) -> tuple[Balance, int]:
        return self._run(self._client.balance_at(account_id, at_ns, timeout_s=timeout_s))

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()
