"""An account's history through the gateway, across slot moves (docs/design.md, "Reads across
the move"): ListPostings and BalanceAt read the account at each shard that held its slot, in
order (core.history), and never show a move's own entries."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import grpc

from core import history, limits, validation
from core.history import CursorError, Position
from shards.gateway.cluster import Cluster
from shards.rpc.servicer import Unavailable, abort
from tally.v1 import ledger_pb2 as pb

Context = Any  # grpc.aio.ServicerContext

# Moves remembered as seen in flight (one at a time is planned: a few suffice), and how often
# at most the control database is asked about one (at most the map poll interval, too).
IN_FLIGHT_MOVE_COUNT_MAX = 64
IN_FLIGHT_ASK_INTERVAL_MAX_S = 1.0

# A shard's own failure is the client's to retry, never UNKNOWN or INTERNAL.
_PASSED_THROUGH = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
    }
)


class History:
    """The gateway's history reads of one (non-spread) account."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        # Moves seen in flight (a move-out at the last holder, the move not done), with when
        # the control database was last asked about each: asked at most once per map poll
        # interval, so a move left half done does not cost every read of its slot a query.
        self._in_flight_asked_s: dict[str, float] = {}

    async def list_postings(
        self, context: Context, request: pb.ListPostingsRequest
    ) -> pb.ListPostingsResponse:
        account_id = request.account_id
        await _check_account_id(context, account_id)
        if request.limit > limits.list_postings_limit_max:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"limit must be at most {limits.list_postings_limit_max}",
            )
        holders = await self._holders(context, account_id)
        position, holders = await self._position(context, account_id, request.cursor, holders)
        page = await self._page(context, request, holders, position)
        if self._ask_about(page.left_by_move):
            # The account moved on from what this gateway knows: if the move is done, read
            # the page again with its target among the holders (else it is in flight: the
            # target takes no writes until the map moves, so this page is the whole story).
            await self._refresh(context)
            newer = self._cluster.holders(account_id)
            if newer != holders:
                holders = newer
                page = await self._page(context, request, holders, position)
        if not page.found:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"account {account_id!r} not found")
        cursor = (
            ""
            if page.next_position is None
            else history.encode_cursor(account_id, holders, page.next_position)
        )
        return pb.ListPostingsResponse(postings=page.rows, next_cursor=cursor)

    async def balance_at(
        self, context: Context, request: pb.BalanceAtRequest
    ) -> pb.BalanceAtResponse:
        """At the last holder that has a posting at or before the time (a node skips its
        move-outs: a source answers the balance the account left with); holders are asked
        newest first, so a recent time costs one call. If the newest says it moved the
        account out by a move this gateway has not read done, the moves are read again."""
        account_id = request.account_id
        await _check_account_id(context, account_id)
        holders = await self._holders(context, account_id)
        answer, moved_by = await self._balance_at(context, request, holders)
        if self._ask_about(moved_by):
            await self._refresh(context)
            newer = self._cluster.holders(account_id)
            if newer != holders:
                answer, _ = await self._balance_at(context, request, newer)
        if answer is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"account {account_id!r} not found")
        return answer

    async def _balance_at(
        self, context: Context, request: pb.BalanceAtRequest, holders: Sequence[int]
    ) -> tuple[pb.BalanceAtResponse | None, str]:
        """The answer (None: no holder has the account), and the move the newest holder says
        took the account on ("": none)."""

        async def ask(shard_id: int) -> tuple[pb.BalanceAtResponse | None, bool, str]:
            answer, mark = await self._call_marked(context, shard_id, "BalanceAt", request)
            return answer, answer is not None and answer.as_of_sequence != 0, mark

        return await history.balance_at(holders, ask)

    # ---- parts ----

    def _ask_about(self, move_id: str) -> bool:
        """Whether to ask the control database about a move seen in flight now."""
        if not move_id or self._cluster.knows_move(move_id):
            return False
        now_s = time.monotonic()
        asked_s = self._in_flight_asked_s.get(move_id)
        interval_s = min(
            self._cluster.config.slot_map_poll_interval_s, IN_FLIGHT_ASK_INTERVAL_MAX_S
        )
        if asked_s is not None and now_s - asked_s < interval_s:
            return False
        if len(self._in_flight_asked_s) >= IN_FLIGHT_MOVE_COUNT_MAX:
            self._in_flight_asked_s.clear()
        self._in_flight_asked_s[move_id] = now_s
        return True

    async def _holders(self, context: Context, account_id: str) -> tuple[int, ...]:
        try:
            return self._cluster.holders(account_id)
        except RuntimeError as error:  # no slot map yet
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"{error}; retry")

    async def _position(
        self, context: Context, account_id: str, cursor: str, holders: tuple[int, ...]
    ) -> tuple[Position, tuple[int, ...]]:
        """Where the cursor starts, and the holders it was read under (reloaded if it names
        one past those this gateway knew)."""
        if not cursor:
            return Position(0, 0), holders
        try:
            return history.decode_cursor(account_id, holders, cursor), holders
        except CursorError as error:
            problem, beyond = str(error), error.beyond_holders
        if beyond and len(holders) < len(self._cluster.links):
            # Made by a gateway that knew of a move this one has not read yet.
            await self._refresh(context)
            holders = self._cluster.holders(account_id)
            try:
                return history.decode_cursor(account_id, holders, cursor), holders
            except CursorError as error:
                problem = str(error)
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)

    async def _page(
        self,
        context: Context,
        request: pb.ListPostingsRequest,
        holders: Sequence[int],
        position: Position,
    ) -> history.Page[pb.Posting]:
        limit = request.limit or limits.list_postings_limit_default

        async def fetch(shard_id: int, after: int, count: int) -> list[pb.Posting] | None:
            asked = pb.ListPostingsRequest(
                account_id=request.account_id,
                cursor=str(after) if after else "",
                limit=count,
                from_ns=request.from_ns,
                to_ns=request.to_ns,
            )
            answer = await self._call(context, shard_id, "ListPostings", asked)
            return None if answer is None else list(answer.postings)

        return await history.read_page(holders, position, limit, fetch)

    async def _call(self, context: Context, shard_id: int, method: str, request: Any) -> Any:
        """One read at one shard: its answer, or None if the account is not there."""
        answer, _ = await self._call_marked(context, shard_id, method, request)
        return answer

    async def _call_marked(
        self, context: Context, shard_id: int, method: str, request: Any
    ) -> tuple[Any, str]:
        """_call, and the move the shard says took the account on ("": none)."""
        try:
            link = self._cluster.link(shard_id)
            call = getattr(link.stub, method)(request, timeout=link.call_timeout_s)
            answer = await call
            trailing = await call.trailing_metadata()
        except Unavailable as error:
            await abort(context, grpc.StatusCode.UNAVAILABLE, str(error))
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None, ""
            if error.code() in _PASSED_THROUGH:
                await abort(context, error.code(), error.details() or "")
            await abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"shard {shard_id} could not answer ({error.code().name}: {error.details()}); "
                "retry",
            )
        marks = [value for key, value in trailing or () if key == history.MOVED_OUT_METADATA_KEY]
        return answer, str(marks[0]) if marks else ""

    async def _refresh(self, context: Context) -> None:
        try:
            await self._cluster.refresh()
        except Exception as error:  # the control database unreachable: retryable
            await abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"cannot read the slot moves ({type(error).__name__}); retry",
            )


async def _check_account_id(context: Context, account_id: str) -> None:
    problem = validation.id_problem(account_id, "account_id")
    if problem:
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
