"""tally.v1.Ledger servicer of one shard node: converts, submits to the writer, reads the store."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import asyncpg
import grpc

from core import dsn, history, ids, limits, moves, validation
from core.authority import Action
from core.model import (
    AccountSpec,
    AccountState,
    CloseSpec,
    Kind,
    Rejection,
    Result,
    ResultCode,
    TransactionSpec,
    TransactionState,
)
from core.slots import SlotMap, account_slot, is_spread, transaction_slot
from core.store import shard as store
from core.store.cold.catalog import SegmentError
from core.store.history import History
from shards.node.writer import QueueFullError, Writer, WriterUnavailableError
from shards.rpc import convert
from shards.rpc.servicer import abort, check_batch_size, request_size_bytes
from shards.security.guard import check_accounts_of_caller, check_posting_of_caller
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc

READ_TIMEOUT_S = 10.0
CURSOR_MAX = 2**63 - 1

# A storage that a read cannot reach: refused or lost connections (OSError, asyncpg's own
# connection errors), a server shutting down or starting (57P*), out of connections or disk
# (53*), or refusing the node's credentials (28*). Each is retryable once PostgreSQL is back.
STORAGE_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.InvalidAuthorizationSpecificationError,
)


@contextlib.asynccontextmanager
async def storage_answers(
    context: grpc.aio.ServicerContext[Any, Any], timeout_s: float
) -> AsyncIterator[None]:
    """Around a read of the store: its operating errors become retryable gRPC codes (a read
    changes nothing, so retrying is always safe), never gRPC's UNKNOWN. A read the storage did
    not answer within its timeout (asyncpg's, or PostgreSQL's statement_timeout) is
    DEADLINE_EXCEEDED; a storage that cannot be reached, UNAVAILABLE."""
    try:
        yield
    except (TimeoutError, asyncpg.QueryCanceledError):
        await abort(
            context,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"the storage did not answer within {timeout_s:g} s; retry",
        )
    except STORAGE_UNREACHABLE as error:
        reason = dsn.scrub(f"{type(error).__name__}: {error}")
        await abort(
            context, grpc.StatusCode.UNAVAILABLE, f"the storage is unreachable ({reason}); retry"
        )
    except SegmentError as error:  # a cold segment that does not read as written
        await abort(
            context, grpc.StatusCode.DATA_LOSS, f"the shard's cold history is unreadable: {error}"
        )


class NodeView(Protocol):
    """What the servicer needs from its node: the writer (None while standby), a read pool,
    the slots it owns (None: all of them) and the shards of its cluster (itself alone when it
    has no slot map)."""

    @property
    def writer(self) -> Writer | None: ...

    @property
    def read_pool(self) -> Any: ...

    @property
    def history(self) -> History: ...

    @property
    def owned_slots(self) -> frozenset[int] | None: ...

    @property
    def slot_map(self) -> SlotMap | None: ...

    @property
    def shard_ids(self) -> frozenset[int]: ...

    @property
    def shard_id(self) -> int: ...

    async def refresh_slot_map_now(self) -> None: ...


async def route_check(node: NodeView, items: Sequence[Any]) -> list[Any]:
    """Items for slots this node does not own become WRONG_SHARD rejections."""
    owned = node.owned_slots
    if owned is None:
        return list(items)
    marked = mark_wrong_shard(items, owned, node.slot_map)
    if marked != list(items):
        # Perhaps this node's map is the old one: look again before refusing.
        await node.refresh_slot_map_now()
        marked = mark_wrong_shard(items, node.owned_slots or frozenset(), node.slot_map)
    return marked


async def submit_or_abort(
    node: NodeView, context: grpc.aio.ServicerContext[Any, Any], items: Sequence[Any]
) -> list[Result]:
    """Hand items to the writer; operating errors become the gRPC status a client can act on."""
    if all(isinstance(item, Rejection) for item in items):
        return [Result(item.code, item.message) for item in items]
    writer = node.writer
    if writer is None:
        await abort(
            context, grpc.StatusCode.UNAVAILABLE, "standby: this node does not hold the lease"
        )
    try:
        return await writer.submit(items, request_size_bytes())
    except QueueFullError as error:
        await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
    except WriterUnavailableError as error:
        await abort(context, grpc.StatusCode.UNAVAILABLE, str(error))


# Serves StreamJournal (shards.node.stream.JournalStreams.serve, given by the node's server):
# its blocks as messages or, encoded once for every stream, as bytes.
StreamServer = Callable[
    [pb.StreamJournalRequest, grpc.aio.ServicerContext[Any, Any]],
    AsyncIterator[pb.JournalBlock | bytes],
]


class LedgerService(pb_grpc.LedgerServicer):  # type: ignore[misc]
    def __init__(
        self,
        node: NodeView,
        read_timeout_s: float = READ_TIMEOUT_S,
        stream: StreamServer | None = None,
    ) -> None:
        self._node = node
        self._read_timeout_s = read_timeout_s
        self._stream = stream

    async def _submit(
        self, context: grpc.aio.ServicerContext[Any, Any], items: Sequence[Any]
    ) -> list[Result]:
        return await submit_or_abort(self._node, context, await route_check(self._node, items))

    async def _target_accounts(self, target_ids: list[str]) -> Mapping[str, Iterable[str]]:
        """The accounts of the holds and originals a scoped poster's batch names."""
        found = await self._node.history.load_transactions(
            self._node.read_pool, target_ids, self._read_timeout_s
        )
        return {target_id: _accounts_of(state) for target_id, state in found.items()}

    # ---- writes ----

    async def CreateAccounts(
        self, request: pb.CreateAccountsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateAccountsResponse:
        await check_batch_size(context, len(request.accounts), "accounts")
        await check_accounts_of_caller(context, Action.MANAGE, (a.id for a in request.accounts))
        # The clearing accounts come through tally.v1.Shard (CreateClearingAccounts) only.
        items = validation.refuse_clearing_accounts(
            convert.accounts_from_proto(request.accounts), _account_id
        )
        results = await self._submit(context, items)
        return pb.CreateAccountsResponse(results=convert.results_to_proto(results))

    async def PostTransactions(
        self, request: pb.PostTransactionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PostTransactionsResponse:
        await check_batch_size(context, len(request.transactions), "transactions")
        items = validation.refuse_clearing_legs(
            convert.transactions_from_proto(request.transactions)
        )
        async with storage_answers(context, self._read_timeout_s):  # a scoped poster's reads
            await check_posting_of_caller(context, items, self._target_accounts)
        results = await self._submit(context, items)
        return pb.PostTransactionsResponse(results=convert.results_to_proto(results))

    async def CloseAccounts(
        self, request: pb.CloseAccountsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CloseAccountsResponse:
        await check_batch_size(context, len(request.accounts), "accounts")
        await check_accounts_of_caller(
            context, Action.MANAGE, (a.account_id for a in request.accounts)
        )
        items = validation.refuse_clearing_accounts(
            convert.closes_from_proto(request.accounts), _closed_account_id
        )
        results = await self._submit(context, items)
        return pb.CloseAccountsResponse(results=convert.results_to_proto(results))

    # ---- reads ----

    async def GetAccounts(
        self, request: pb.GetAccountsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetAccountsResponse:
        await check_batch_size(context, len(request.ids), "ids")
        await check_accounts_of_caller(context, Action.READ, request.ids)
        problems = [validation.id_problem(i, f"ids[{n}]") for n, i in enumerate(request.ids)]
        wanted = [i for i, problem in zip(request.ids, problems, strict=True) if not problem]
        async with storage_answers(context, self._read_timeout_s):
            found = await store.load_accounts(self._node.read_pool, wanted, self._read_timeout_s)
        moved_out = self._moved_out_slots()
        results = []
        for account_id, problem in zip(request.ids, problems, strict=True):
            if problem:
                results.append(pb.AccountLookup(code=pb.RESULT_CODE_INVALID_ID, message=problem))
            elif moved_out and moves.account_moves(account_id, moved_out):
                # Its balance here is the move-out's zero: its owner is the move's target.
                results.append(
                    pb.AccountLookup(
                        code=pb.RESULT_CODE_WRONG_SHARD,
                        message=f"account {account_id!r} has moved out of this shard",
                    )
                )
            elif account_id not in found:
                results.append(
                    pb.AccountLookup(
                        code=pb.RESULT_CODE_ACCOUNT_NOT_FOUND,
                        message=f"account {account_id!r} not found",
                    )
                )
            else:
                record = convert.account_to_proto(found[account_id])
                results.append(pb.AccountLookup(code=pb.RESULT_CODE_OK, account=record))
        return pb.GetAccountsResponse(results=results)

    async def GetTransactions(
        self, request: pb.GetTransactionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetTransactionsResponse:
        await check_batch_size(context, len(request.ids), "ids")
        problems = [_transaction_id_problem(i, f"ids[{n}]") for n, i in enumerate(request.ids)]
        moved_out = self._moved_out_slots()
        # A record homed in a slot moved out lives on at the move's target, which may have
        # changed it since (a hold posted, a transfer reversed): the copy here is not read.
        gone = {i for i in request.ids if moved_out and moves.record_moves(i, moved_out)}
        wanted = [
            i
            for i, problem in zip(request.ids, problems, strict=True)
            if not problem and i not in gone
        ]
        async with storage_answers(context, self._read_timeout_s):
            found = await self._node.history.load_transactions(
                self._node.read_pool, wanted, self._read_timeout_s
            )
        await check_accounts_of_caller(
            context, Action.READ, (a for state in found.values() for a in _accounts_of(state))
        )
        # Posts of cross-shard holds recorded here (their coordinator) read as a cross-shard
        # piece: what this shard posted of the client's post.
        holds = [s.spec.target_id for s in found.values() if s.spec.kind is Kind.POST_PENDING]
        hold_kinds: dict[str, Kind] = {}
        if holds:
            async with storage_answers(context, self._read_timeout_s):
                loaded = await self._node.history.load_transactions(
                    self._node.read_pool, holds, self._read_timeout_s
                )
            hold_kinds = {i: s.spec.kind for i, s in loaded.items()}
        results = []
        for transaction_id, problem in zip(request.ids, problems, strict=True):
            if problem:
                results.append(
                    pb.TransactionLookup(code=pb.RESULT_CODE_INVALID_ID, message=problem)
                )
            elif transaction_id in gone:
                results.append(
                    pb.TransactionLookup(
                        code=pb.RESULT_CODE_WRONG_SHARD,
                        message=f"transaction {transaction_id!r} has moved out of this shard",
                    )
                )
            elif transaction_id not in found:
                results.append(
                    pb.TransactionLookup(
                        code=pb.RESULT_CODE_TRANSACTION_NOT_FOUND,
                        message=f"transaction {transaction_id!r} not found",
                    )
                )
            else:
                state = found[transaction_id]
                record = convert.transaction_to_proto(state)
                if hold_kinds.get(state.spec.target_id) is Kind.HOLD:
                    record.cross_shard_piece.coordinator = True
                move_id = ids.moved_out_by(state.resolved_by_id, transaction_id)
                if move_id:  # a held piece gone with its accounts: its copy here as it left
                    results.append(
                        pb.TransactionLookup(
                            code=pb.RESULT_CODE_WRONG_SHARD,
                            message=f"{transaction_id!r} has moved out of this shard with its "
                            f"accounts (move {move_id}): it is held where they are",
                            transaction=record,
                        )
                    )
                    continue
                results.append(pb.TransactionLookup(code=pb.RESULT_CODE_OK, transaction=record))
        return pb.GetTransactionsResponse(results=results)

    async def _existing_account(
        self, context: grpc.aio.ServicerContext[Any, Any], account_id: str
    ) -> AccountState:
        problem = validation.id_problem(account_id, "account_id")
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        await check_accounts_of_caller(context, Action.READ, (account_id,))
        async with storage_answers(context, self._read_timeout_s):
            found = await store.load_accounts(
                self._node.read_pool, [account_id], self._read_timeout_s
            )
        if account_id not in found:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"account {account_id!r} not found")
        return found[account_id]

    async def ListPostings(
        self, request: pb.ListPostingsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListPostingsResponse:
        problem = _list_problem(request)
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        account = await self._existing_account(context, request.account_id)
        limit = request.limit or limits.list_postings_limit_default
        after = int(request.cursor) if request.cursor else 0
        async with storage_answers(context, self._read_timeout_s):
            rows = await self._node.history.list_postings(
                self._node.read_pool,
                request.account_id,
                after,
                limit,
                request.from_ns,
                request.to_ns,
                self._read_timeout_s,
            )
        postings = [convert.posting_to_proto(p, account.spec, block) for p, block in rows]
        next_cursor = str(rows[-1][0].sequence) if len(rows) == limit else ""
        return pb.ListPostingsResponse(postings=postings, next_cursor=next_cursor)

    async def BalanceAt(
        self, request: pb.BalanceAtRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.BalanceAtResponse:
        if request.at_ns < 0:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "at_ns must not be negative")
        account = await self._existing_account(context, request.account_id)
        self._mark_moved_out(context, request.account_id)
        async with storage_answers(context, self._read_timeout_s):
            posting = await self._node.history.posting_at(
                self._node.read_pool, request.account_id, request.at_ns, self._read_timeout_s
            )
        if posting is None:
            return pb.BalanceAtResponse(
                balance=convert.balance_to_proto(account.spec, (0, 0, 0, 0)), as_of_sequence=0
            )
        counters = (
            posting.debits_posted_after,
            posting.credits_posted_after,
            posting.debits_pending_after,
            posting.credits_pending_after,
        )
        return pb.BalanceAtResponse(
            balance=convert.balance_to_proto(account.spec, counters),
            as_of_sequence=posting.sequence,
        )

    async def GetRouting(
        self, request: pb.GetRoutingRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetRoutingResponse:
        """Routing is the gateway's to give: it holds the cluster's map and every shard's
        client endpoint as one view (a node knows its own, and may be a standby)."""
        await abort(
            context,
            grpc.StatusCode.FAILED_PRECONDITION,
            "a shard node does not serve routing: ask a gateway (GetRouting)",
        )

    def _moved_out_slots(self) -> frozenset[int]:
        """The slots this node's writer moved out (none on a standby)."""
        writer = self._node.writer
        return frozenset(writer.moved_out) if writer is not None else frozenset()

    def _mark_moved_out(self, context: grpc.aio.ServicerContext[Any, Any], account_id: str) -> None:
        """A read of an account this shard moved out says so (its history goes on at the move's
        target): the move's id in the trailing metadata (docs/design.md, "Reads across the
        move")."""
        writer = self._node.writer
        if writer is None or not writer.moved_out or is_spread(account_id):
            return
        move_id = writer.moved_out.get(account_slot(account_id))
        if move_id:
            context.set_trailing_metadata(((history.MOVED_OUT_METADATA_KEY, move_id),))

    async def StreamJournal(
        self, request: pb.StreamJournalRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.JournalBlock | bytes]:
        if self._stream is None:
            await abort(context, grpc.StatusCode.UNIMPLEMENTED, "this server has no change stream")
        async for block in self._stream(request, context):
            yield block


def _accounts_of(state: TransactionState) -> list[str]:
    """Every account a recorded transaction touches, as submitted and as applied."""
    return [leg.account_id for leg in (*state.spec.legs, *state.applied_legs)]


def _account_id(spec: AccountSpec) -> str:
    return spec.id


def _closed_account_id(spec: CloseSpec) -> str:
    return spec.account_id


def _transaction_id_problem(transaction_id: str, field: str) -> str:
    """Why an id names no transaction a client may read ("": it may): a client's id, or a
    record the shard writes itself around one (core.ids.readable_parts)."""
    parts = ids.readable_parts(transaction_id)
    if parts is None:
        return validation.id_problem(transaction_id, field)
    attempt, wrapped = parts
    if attempt is None:  # an expiry or a settlement, of a client's hold or of a piece
        return _transaction_id_problem(wrapped, field)
    if not ids.is_attempt(attempt):
        return f"{field} {transaction_id[:40]!r} names no attempt"
    return validation.id_problem(wrapped, field)


def _list_problem(request: pb.ListPostingsRequest) -> str:
    if request.limit > limits.list_postings_limit_max:
        return f"limit must be at most {limits.list_postings_limit_max}"
    cursor = request.cursor
    if cursor and not (cursor.isascii() and cursor.isdigit() and int(cursor) <= CURSOR_MAX):
        return "cursor is not one this API returned"
    if request.from_ns < 0 or request.to_ns < 0:
        return "from_ns and to_ns must not be negative"
    if request.to_ns and request.to_ns <= request.from_ns:
        return "to_ns must be after from_ns"
    return ""


# Kinds recorded under a client's transaction id (a coordinator's piece carries it too): they
# belong at the id's home (core.slots), the one shard where the id is an idempotency key. (A
# shard's own records of these kinds, settlements and expiries, have reserved ids.)
_RECORDED_UNDER_CLIENT_ID = frozenset(
    {
        Kind.ORDINARY,
        Kind.PENDING,
        Kind.POST_PENDING,
        Kind.VOID_PENDING,
        Kind.REVERSAL,
        Kind.COMMIT,
        Kind.HOLD,
    }
)


def _foreign_slot(item: Any, owned: frozenset[int]) -> tuple[int, str]:
    """The first slot of an item that this shard does not own, and what it is the slot of
    (an account, or the transaction id's home), or (-1, "")."""
    if isinstance(item, TransactionSpec):
        if item.kind in _RECORDED_UNDER_CLIENT_ID and not ids.is_reserved(item.id):
            slot = transaction_slot(item.id)
            if slot not in owned:
                return slot, f"transaction id {item.id!r} (its home)"
        for leg in item.legs:
            if not is_spread(leg.account_id):
                slot = account_slot(leg.account_id)
                if slot not in owned:
                    return slot, repr(leg.account_id)
        return -1, ""
    account_id = item.id if isinstance(item, AccountSpec) else item.account_id
    if not is_spread(account_id) and account_slot(account_id) not in owned:
        return account_slot(account_id), repr(account_id)
    return -1, ""


def mark_wrong_shard(
    items: Sequence[Any], owned: frozenset[int], slot_map: SlotMap | None
) -> list[Any]:
    """Refuse items for slots this shard does not own (a gateway with an old map sent them)."""
    version = slot_map.version if slot_map is not None else 0
    marked = []
    for item in items:
        if not isinstance(item, Rejection):
            slot, of = _foreign_slot(item, owned)
            if of:
                item = Rejection(
                    ResultCode.WRONG_SHARD,
                    f"slot {slot} of {of} is not on this shard (slot map version {version})",
                    getattr(item, "linked", False),
                )
        marked.append(item)
    return marked
