"""Where the client's RPCs go: the gateway, and the nodes it reaches directly when routing.

A Destination is one server: a channel with the client's credentials and a batcher per write
RPC, so batching coalesces per target (each node's share, and the gateway's). Routes holds the
gateway's Destination, the nodes' (opened as routes name them, at most node_count_max) and the
Router with the current slot table, and loads that table from the gateway: once before the
first routed call, then again (in the background, at most every reload_interval_min_s) when a
node refused or failed routed work, and before a routed read of transaction records when the
table is older than record_table_age_max_s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import grpc

from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc

from .batcher import Batcher, Stats
from .credentials import Credentials
from .routing import GATEWAY, Router, RoutingError, RoutingOptions, SlotTable

WRITE_METHODS = {
    "transactions": "PostTransactions",
    "accounts": "CreateAccounts",
    "closures": "CloseAccounts",
}
# A gateway that answers these does not offer routing to this caller: every call goes to it.
ROUTING_REFUSED = frozenset(
    {
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


class Destination:
    def __init__(
        self,
        target: str,
        channel: grpc.aio.Channel,
        stats: Stats,
        batching: tuple[int, int, int],
        direct: bool,
    ) -> None:
        self.target = target
        self.direct = direct
        self.channel = channel
        self.stub = pb_grpc.LedgerStub(channel)
        items_max, bytes_max, in_flight_max = batching
        self._batchers: dict[str, Batcher[Any]] = {
            kind: Batcher(
                method,
                _sender(self.stub, method),
                stats,
                items_max,
                bytes_max,
                in_flight_max,
                direct=direct,
            )
            for kind, method in WRITE_METHODS.items()
        }

    def batcher(self, kind: str) -> Batcher[Any]:
        return self._batchers[kind]

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        await self.channel.close()


def _sender(stub: Any, method: str) -> Any:
    call = getattr(stub, method)

    async def send(messages: list[Any], timeout_s: float) -> Any:
        return (await call(_request(method, messages), timeout=timeout_s)).results

    return send


def _request(method: str, messages: list[Any]) -> Any:
    if method == "PostTransactions":
        return pb.PostTransactionsRequest(transactions=messages)
    if method == "CreateAccounts":
        return pb.CreateAccountsRequest(accounts=messages)
    return pb.CloseAccountsRequest(accounts=messages)


class Routes:
    """The gateway, the nodes reached directly, and the table that says which is which."""

    def __init__(
        self,
        gateway: Destination,
        open_channel: Any,
        options: RoutingOptions,
        stats: Stats,
        batching: tuple[int, int, int],
    ) -> None:
        self.gateway = gateway
        self.router = Router(options)
        self._open_channel = open_channel
        self._stats = stats
        self._batching = batching
        self._nodes: dict[str, Destination] = {}
        self._down_until: dict[str, float] = {}  # endpoint -> loop time routing resumes
        self._first_load: asyncio.Task[None] | None = None
        self._loaded_at = float("-inf")  # when the last load started (the reloads' pace)
        self._current_at = float("-inf")  # when the last load that answered started
        self._reloads: set[asyncio.Task[None]] = set()

    def for_transactions(self, unit: Sequence[pb.Transaction], via_gateway: bool) -> Destination:
        if via_gateway:
            return self.gateway
        return self._node(self.router.transactions_target(unit))

    def for_accounts(self, account_ids: Sequence[str], via_gateway: bool) -> Destination:
        if via_gateway:
            return self.gateway
        return self._node(self.router.accounts_target(account_ids))

    def for_records(self, transaction_ids: Sequence[str]) -> Destination:
        return self._node(self.router.records_target(transaction_ids))

    def _node(self, endpoint: str) -> Destination:
        if endpoint == GATEWAY:
            return self.gateway
        if self._down_until and self._is_down(endpoint):
            return self.gateway
        node = self._nodes.get(endpoint)
        if node is None:
            if len(self._nodes) >= self.router.options.node_count_max:
                return self.gateway
            channel = self._open_channel(endpoint)
            items_max, bytes_max, _ = self._batching
            bounds = (items_max, bytes_max, self.router.options.node_in_flight_max)
            node = Destination(endpoint, channel, self._stats, bounds, direct=True)
            self._nodes[endpoint] = node
        return node

    def mark_down(self, endpoint: str) -> None:
        """The node failed a call: its work goes to the gateway for node_down_s."""
        now = asyncio.get_running_loop().time()
        self._down_until[endpoint] = now + self.router.options.node_down_s

    def _is_down(self, endpoint: str) -> bool:
        until = self._down_until.get(endpoint)
        if until is None:
            return False
        if asyncio.get_running_loop().time() < until:
            return True
        del self._down_until[endpoint]
        return False

    async def ready(self, timeout_s: float) -> None:
        """The first table, loaded before the first routed call (the calls made meanwhile
        wait for it, up to timeout_s); a load that fails leaves routing to later reloads."""
        if not self.router.on:
            return
        if self._first_load is None:
            self._first_load = asyncio.create_task(self._load(timeout_s))
            self._first_load.add_done_callback(_retrieve)
        if not self._first_load.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._first_load), timeout_s)
        elif self.router.table is None:  # the first load failed: try again now and then
            self.reload_soon(timeout_s)

    def reload_soon(self, timeout_s: float) -> None:
        """After a node refused or failed routed work: reload the table in the background,
        unless one is under way or was loaded less than reload_interval_min_s ago."""
        loop = asyncio.get_running_loop()
        due = self._loaded_at + self.router.options.reload_interval_min_s
        if self._reloads or not self.router.on or loop.time() < due:
            return
        self._start_reload(timeout_s)

    async def fresh(self, timeout_s: float) -> None:
        """A table the gateway confirmed at most record_table_age_max_s ago: else a load,
        waited for up to timeout_s (one under way, or a new one unless the last started less
        than reload_interval_min_s ago: a gateway that does not answer is not asked at every
        read, and the table stays as it was)."""
        if not self.router.on or self.router.table is None:
            return
        now = asyncio.get_running_loop().time()
        if now - self._current_at <= self.router.options.record_table_age_max_s:
            return
        if not self._reloads and now >= self._loaded_at + self.router.options.reload_interval_min_s:
            self._start_reload(timeout_s)
        if self._reloads:
            await asyncio.wait(set(self._reloads), timeout=timeout_s)

    def _start_reload(self, timeout_s: float) -> None:
        self._loaded_at = asyncio.get_running_loop().time()
        task = asyncio.create_task(self._load(timeout_s))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _load(self, timeout_s: float) -> None:
        started = self._loaded_at = asyncio.get_running_loop().time()
        known = self.router.table.version if self.router.table is not None else 0
        request = pb.GetRoutingRequest(known_version=known)
        self._stats.routing_loads += 1
        try:
            answer = await self.gateway.stub.GetRouting(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as error:
            if error.code() in ROUTING_REFUSED:
                self.router.turn_off(f"the gateway refused GetRouting: {error.code().name}")
            return  # else: away for now; the next refusal or failure of a node reloads
        self._current_at = started
        if answer.unchanged:
            return
        try:
            self.router.take(SlotTable.of_message(answer))
        except RoutingError as error:
            self.router.turn_off(str(error))

    async def close(self) -> None:
        tasks = [*self._reloads, *([self._first_load] if self._first_load else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for node in self._nodes.values():
            await node.close()
        await self.gateway.close()


def channel_opener(credentials: Credentials, options: Sequence[tuple[str, Any]]) -> Any:
    """Opens a channel to a target with the client's credentials and channel options."""
    transport = credentials.channel_credentials()

    def open_channel(target: str) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(target, transport, options=list(options))

    return open_channel


def _retrieve(task: asyncio.Task[None]) -> None:
    """A load nobody waited for to the end: its exception is retrieved, not left to warn."""
    if not task.cancelled():
        task.exception()
