"""What a shard node's and the gateway's change streams (Ledger.StreamJournal) share: a stored
block as a JournalBlock, a block filtered to a scoped caller, the request's positions checked,
and the size a block message may have."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from core import limits
from core.model import AccountSpec, Kind
from core.store.stream import StreamedBlock, StreamedTransaction
from shards.rpc import convert
from tally.v1 import ledger_pb2 as pb

# A block message must fit the gRPC message limit with room for the transport's own framing.
BLOCK_SIZE_MAX_BYTES: Final = limits.message_size_max_bytes - 64 * 1024
_SHARDS_NAMED_MAX: Final = 16


def block_to_proto(
    shard_id: int, block: StreamedBlock, posted_accounts: dict[str, AccountSpec]
) -> pb.JournalBlock:
    return pb.JournalBlock(
        shard_id=shard_id,
        sequence=block.sequence,
        hash=block.hash,
        previous_hash=block.previous_hash,
        created_at_ns=block.created_at_ns,
        # As fields, so the whole block is made in one call (convert: the *_fields functions).
        transactions=[_transaction(t) for t in block.transactions],
        postings=[
            convert.posting_fields(p, posted_accounts[p.account_id], block.sequence)
            for p in block.postings
        ],
        accounts=[
            pb.CreatedAccount(account=convert.account_spec_to_proto(spec), created_at_ns=at)
            for spec, at in block.accounts
        ],
        closures=[
            pb.AccountClosure(account_id=account_id, closed_at_ns=at)
            for account_id, at in block.closures
        ],
    )


def _transaction(streamed: StreamedTransaction) -> dict[str, object]:
    """As GetTransactions reads it at a node (a post of a cross-shard hold recorded here reads
    as a coordinator's piece), with its state as created."""
    fields = convert.transaction_fields(streamed.state)
    if streamed.target_kind is Kind.HOLD:
        piece = fields.setdefault("cross_shard_piece", {})
        assert isinstance(piece, dict)
        piece["coordinator"] = True
    return fields


def in_scope_of(block: pb.JournalBlock, in_scope: Callable[[str], bool]) -> pb.JournalBlock:
    """The block as a scoped caller sees it: its head whole (sequence, hashes: positions stay
    gap-free), of its content only what touches an account in scope."""
    return pb.JournalBlock(
        shard_id=block.shard_id,
        sequence=block.sequence,
        hash=block.hash,
        previous_hash=block.previous_hash,
        created_at_ns=block.created_at_ns,
        transactions=[t for t in block.transactions if _touches(t, in_scope)],
        postings=[p for p in block.postings if in_scope(p.account_id)],
        accounts=[a for a in block.accounts if in_scope(a.account.id)],
        closures=[c for c in block.closures if in_scope(c.account_id)],
    )


def _touches(record: pb.TransactionRecord, in_scope: Callable[[str], bool]) -> bool:
    legs = (*record.transaction.legs, *record.applied_legs)
    return any(in_scope(leg.account_id) for leg in legs)


def positions_of(
    request: pb.StreamJournalRequest, shard_ids: Iterable[int], served_by: str
) -> tuple[dict[int, int], str]:
    """The request's positions by shard, and "" if they are well formed; else a problem naming
    the position at fault (served_by: "this node (shard 3)", "this cluster")."""
    known = frozenset(shard_ids)
    if len(request.after) > limits.stream_position_count_max:
        return {}, (
            f"after has {len(request.after)} positions; at most "
            f"{limits.stream_position_count_max} (one per shard)"
        )
    positions: dict[int, int] = {}
    for index, position in enumerate(request.after):
        if position.sequence < 0:
            return {}, f"after[{index}].sequence must not be negative (got {position.sequence})"
        if position.shard_id not in known:
            shards = ", ".join(str(s) for s in sorted(known)[:_SHARDS_NAMED_MAX])
            more = ", ..." if len(known) > _SHARDS_NAMED_MAX else ""
            return {}, (
                f"after[{index}] names shard {position.shard_id}, which {served_by} does not "
                f"serve (shards: {shards}{more})"
            )
        if position.shard_id in positions:
            return {}, f"after[{index}] names shard {position.shard_id} a second time"
        positions[position.shard_id] = position.sequence
    return positions, ""


def oversized(block: pb.JournalBlock, size: int | None = None) -> str:
    """Why a block cannot be sent as one message ("" if it can); size: its ByteSize(), when
    the caller has it already."""
    size = block.ByteSize() if size is None else size
    if size <= BLOCK_SIZE_MAX_BYTES:
        return ""
    return (
        f"block {block.sequence} of shard {block.shard_id} is {size} bytes, above the "
        f"{BLOCK_SIZE_MAX_BYTES} a stream message may carry; it cannot be streamed (read it "
        "with ListPostings and GetTransactions, or from a journal export)"
    )
