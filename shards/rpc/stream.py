"""What a shard node's and the gateway's change streams (Ledger.StreamJournal) share: a stored
block as a JournalBlock, a block filtered to a scoped caller, the request's positions checked,
the size a block message may have; and, for a consumer of JOURNAL_ENCODING_LINES, a block's
lines checked against its hash and made into the records (records_of_lines)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from core import journal, limits
from core.model import AccountSpec, Kind
from core.store.stream import StreamedBlock, StreamedTransaction, created_state
from shards.rpc import convert
from tally.v1 import ledger_pb2 as pb

# A block message must fit the gRPC message limit with room for the transport's own framing.
BLOCK_SIZE_MAX_BYTES: Final = limits.message_size_max_bytes - 64 * 1024
_SHARDS_NAMED_MAX: Final = 16
LINES_NEED_WHOLE: Final = (
    "JOURNAL_ENCODING_LINES sends whole blocks (lines cut to a scope would no longer match "
    "their hash), and this caller may read only its scope: ask for JOURNAL_ENCODING_RECORDS"
)


class LinesError(ValueError):
    """A LINES block whose lines do not hash to its hash, or are not canonical lines."""


def records_of_lines(block: pb.JournalBlock) -> pb.JournalBlock:
    """A JOURNAL_ENCODING_LINES block as the RECORDS block of the same content: its lines
    checked against its hash first (LinesError if they do not match, or do not parse). The
    records are those the node sends but for what a block's lines do not hold: a posting's
    balance_after.available (it needs the account's flags, which only the block creating the
    account records: left 0) and, on the post of a cross-shard hold at its coordinator, the
    coordinator's cross_shard_piece (it needs the hold's kind, recorded in an earlier block)."""
    if journal.body_hash(block.previous_hash, block.sequence, block.lines) != block.hash:
        raise LinesError(
            f"block {block.sequence} of shard {block.shard_id}: its lines do not hash to its hash"
        )
    try:
        parsed = journal.parse_lines(block.lines)
    except journal.LineError as error:
        raise LinesError(f"block {block.sequence} of shard {block.shard_id}: {error}") from None
    streamed = StreamedBlock(
        block.sequence,
        block.hash,
        block.previous_hash,
        block.created_at_ns,
        [
            StreamedTransaction(created_state(spec, applied, at), None)
            for spec, applied, at in parsed.transactions
        ],
        parsed.postings,
        parsed.accounts,
        parsed.closures,
    )
    created = {spec.id: spec for spec, _ in parsed.accounts}
    flagless = {
        p.account_id: created.get(p.account_id)
        or AccountSpec(p.account_id, "", 0, False, False, ())
        for p in parsed.postings
    }
    records = block_to_proto(block.shard_id, streamed, flagless)
    for posting in records.postings:
        if posting.account_id not in created:
            posting.balance_after.available = 0
    return records


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
