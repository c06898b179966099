"""Reads of the change stream (Ledger.StreamJournal): committed journal blocks with the records
each created, a page at a time, from the rows as committed.

Every SQL of the stream is here (a later storage redesign changes this module alone). A page is
at most BLOCK_COUNT_PER_PAGE_MAX blocks and about ROW_COUNT_PER_PAGE_MAX rows (a block is never
cut: one larger block is a page of its own), read with one statement per table, each bounded by
the page's block range and served by an index: journal_blocks by its key, transactions by
transactions_by_block, accounts by accounts_by_block, closures by account_closures_by_block,
and postings by their key, since a block's postings are the sequence range between the previous
block's next_posting_sequence and its own (no index on postings.block_sequence is needed).

What is read is only what never changes after its block commits. A transaction's row is updated
in place by its later fates (status, resolved_by_id, reversed_by_id, expires_at_ns): those
columns are not read; its state as created is derived (created_state). An account's counters
change; only its immutable columns are read.

A block becomes visible only once committed, with its rows (one PostgreSQL transaction), and
sequences are contiguous, so a page starts at the block after the position or not at all: a
block after it seen without it is a gap (GapError), which the caller reads again; a page never
skips a block.

A cold block (one a cold_segments row covers, docs/design.md "Cold history") keeps its
journal_blocks row but not its postings nor most of its transactions: its records are read
from its segment (a ColdBlocks, the node's core.store.cold.history.ColdHistory), the same
StreamedBlock as before archiving. A page is all hot or all cold; without a ColdBlocks, a page
that would begin in cold history is a ColdHistoryNeeded, never a wrong block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import asyncpg

from core import journal
from core.invariant import InvariantError, check
from core.journal import decode_metadata
from core.model import (
    HELD_KINDS,
    AccountSpec,
    AccountState,
    Kind,
    Posting,
    Status,
    TransactionSpec,
    TransactionState,
    expires_at,
)
from core.state import WriteSet
from core.store.cold.catalog import last_cold_block
from core.store.shard import spec_from_row

BLOCK_COUNT_PER_PAGE_MAX: Final = 64
ROW_COUNT_PER_PAGE_MAX: Final = 5_000

Connection = Any  # asyncpg.Connection or a pool; asyncpg ships no complete stubs


class ColdHistoryNeeded(RuntimeError):
    """The page asked for begins at or before the last cold block and no cold history was
    given to read it from."""

    def __init__(self, last_cold_block: int) -> None:
        super().__init__(
            f"history up to block {last_cold_block} is in cold segments: a position before "
            f"{last_cold_block} needs the node's cold directory (--cold-dir, the --dir of tally "
            "segments archive); configure it, or stream from a later position"
        )
        self.last_cold_block = last_cold_block


class GapError(RuntimeError):
    """The block after the position is not visible while a later one is (or the journal ends
    before it but a later block exists): read again."""

    def __init__(self, missing_sequence: int) -> None:
        super().__init__(f"journal block {missing_sequence} is not visible yet")
        self.missing_sequence = missing_sequence


@dataclass(frozen=True, slots=True)
class StreamedTransaction:
    state: TransactionState
    # For a post of a hold: the hold's kind (a post of a cross-shard hold reads as the
    # coordinator's piece at its coordinator); None otherwise.
    target_kind: Kind | None


@dataclass(frozen=True, slots=True)
class StreamedBlock:
    sequence: int
    hash: bytes
    previous_hash: bytes
    created_at_ns: int
    transactions: list[StreamedTransaction]
    postings: list[Posting]
    # Accounts created in the block, as created, with their creation time.
    accounts: list[tuple[AccountSpec, int]]
    closures: list[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class Page:
    blocks: list[StreamedBlock]
    # The account of every posting of the page (their flags make the available balance).
    posted_accounts: dict[str, AccountSpec]


class ColdTransactionRecord(Protocol):
    """A transaction as a cold block recorded it (core.store.cold.format.ColdTransaction)."""

    def state(self) -> TransactionState: ...


class ColdBlockRecords(Protocol):
    """One cold block with its records (core.store.cold.format.ColdBlock)."""

    @property
    def header(self) -> journal.BlockHeader: ...
    @property
    def accounts(self) -> Sequence[tuple[AccountSpec, int]]: ...
    @property
    def transactions(self) -> Sequence[ColdTransactionRecord]: ...
    @property
    def postings(self) -> Sequence[Posting]: ...
    @property
    def closures(self) -> Sequence[tuple[str, int]]: ...


class ColdBlocks(Protocol):
    """Where cold blocks are read (core.store.cold.history.ColdHistory: this module never
    imports it, it brings pyarrow)."""

    async def cold_blocks(
        self, connection: Connection, after: int, last: int, timeout_s: float
    ) -> Sequence[ColdBlockRecords]: ...

    async def cold_transactions(
        self, connection: Connection, ids: Sequence[str], timeout_s: float
    ) -> dict[str, TransactionState]: ...


def created_state(
    spec: TransactionSpec, applied_legs: tuple[Any, ...], timestamp_ns: int
) -> TransactionState:
    """A transaction as its block created it: held (PENDING, with the expiry its timeout gives)
    for the held kinds, POSTED otherwise; resolved and reversed by nothing yet."""
    if spec.kind in HELD_KINDS:  # held at creation; every other kind is created POSTED
        expires_at_ns = expires_at(timestamp_ns, spec.timeout_seconds)
        return TransactionState(spec, applied_legs, timestamp_ns, Status.PENDING, expires_at_ns)
    return TransactionState(spec, applied_legs, timestamp_ns, Status.POSTED)


def committed_block(
    header: journal.BlockHeader,
    writes: WriteSet,
    accounts: dict[str, AccountState | None],
    transactions: dict[str, TransactionState | None],
) -> Page:
    """A block just committed, from what its writer held in memory, equal to what read_page
    reads of it from the store (tests/shards/node/test_stream.py holds them equal, byte for
    byte): the same records as created, in the same order. accounts and transactions are the
    batch's (every account posted to and every hold posted is there). A page of that one
    block."""
    created = sorted(
        (created_state(t.spec, t.applied_legs, t.timestamp_ns) for t in writes.new_transactions),
        key=lambda state: (state.timestamp_ns, state.spec.id),
    )
    streamed = []
    for state in created:
        target_kind = None
        if state.spec.kind is Kind.POST_PENDING:
            target = transactions.get(state.spec.target_id)
            target_kind = target.spec.kind if target is not None else None
        streamed.append(StreamedTransaction(state, target_kind))
    posted_accounts: dict[str, AccountSpec] = {}
    for posting in writes.postings:
        if posting.account_id not in posted_accounts:
            account = accounts.get(posting.account_id)
            check(account is not None, f"posted account {posting.account_id} is in its batch")
            assert account is not None
            posted_accounts[posting.account_id] = account.spec
    block = StreamedBlock(
        header.sequence,
        header.hash,
        header.previous_hash,
        header.created_at_ns,
        streamed,
        list(writes.postings),
        sorted(
            ((a.spec, a.created_at_ns) for a in writes.new_accounts),
            key=lambda created_account: (created_account[1], created_account[0].id),
        ),
        sorted(writes.closures, key=lambda closure: (closure[1], closure[0])),
    )
    return Page([block], posted_accounts)


async def head_sequence(connection: Connection, timeout_s: float) -> int:
    """The sequence of the last committed block (0: none yet)."""
    value = await connection.fetchval(
        "SELECT coalesce(max(sequence), 0) FROM journal_blocks", timeout=timeout_s
    )
    return int(value)


async def read_page(
    connection: Connection,
    after_sequence: int,
    up_to_sequence: int,
    timeout_s: float,
    cold: ColdBlocks | None = None,
) -> Page:
    """The blocks after after_sequence (at most up_to_sequence), one page of them, with their
    content; empty when the journal has none yet. GapError: see the module docstring. A page
    beginning in cold history is read from `cold` (ColdHistoryNeeded without one)."""
    check(after_sequence >= 0, "a position is never negative")
    # The last cold block in the same statement (one snapshot with the headers).
    headers = await connection.fetch(
        """
        SELECT sequence, hash, previous_hash, created_at_ns, next_posting_sequence,
               account_count, transaction_count, posting_count, closure_count,
               (SELECT coalesce(max(last_block), 0) FROM cold_segments) AS last_cold_block
        FROM journal_blocks WHERE sequence > $1 AND sequence <= $2
        ORDER BY sequence LIMIT $3
        """,
        after_sequence,
        up_to_sequence,
        BLOCK_COUNT_PER_PAGE_MAX,
        timeout=timeout_s,
    )
    page = _page_of(headers, after_sequence)
    if not page:
        return Page([], {})
    last_cold = page[0]["last_cold_block"]
    if after_sequence < last_cold:
        return await _cold_page(connection, page, last_cold, cold, timeout_s)
    try:
        return await _read_content(connection, page, timeout_s)
    except InvariantError:
        # An archive that committed between the headers and the rows took them: read the page
        # again from cold history (the rows it deleted are its segment's).
        last_cold = await last_cold_block(connection, timeout_s)
        if after_sequence >= last_cold:
            raise
        return await _cold_page(connection, page, last_cold, cold, timeout_s)


async def _cold_page(
    connection: Connection,
    headers: list[asyncpg.Record],
    last_cold: int,
    cold: ColdBlocks | None,
    timeout_s: float,
) -> Page:
    """The page's blocks up to the last cold one, from their segments, as read_page read
    them hot before they were archived."""
    if cold is None:
        raise ColdHistoryNeeded(last_cold)
    headers = [h for h in headers if h["sequence"] <= last_cold]
    after, last = headers[0]["sequence"] - 1, headers[-1]["sequence"]
    read = await cold.cold_blocks(connection, after, last, timeout_s)
    check(
        [b.header.sequence for b in read] == [h["sequence"] for h in headers],
        f"the cold segments hold blocks {after + 1} to {last}",
    )
    held = {
        t.spec.target_id
        for b in read
        for t in (c.state() for c in b.transactions)
        if t.spec.kind is Kind.POST_PENDING
    }
    kinds = await _kinds(connection, list(held), cold, timeout_s)
    blocks = []
    for header, block in zip(headers, read, strict=True):
        streamed = _streamed(block, kinds)
        _check_counts(streamed, header)
        blocks.append(streamed)
    posted_ids = list({p.account_id for b in blocks for p in b.postings})
    posted_accounts = await _specs(connection, posted_ids, timeout_s) if posted_ids else {}
    check(
        all(p.account_id in posted_accounts for b in blocks for p in b.postings),
        "every posting's account exists",
    )
    return Page(blocks, posted_accounts)


def _streamed(block: ColdBlockRecords, kinds: dict[str, Kind]) -> StreamedBlock:
    transactions = []
    for record in block.transactions:
        state = record.state()
        spec = state.spec
        target_kind = kinds.get(spec.target_id) if spec.kind is Kind.POST_PENDING else None
        transactions.append(StreamedTransaction(state, target_kind))
    header = block.header
    return StreamedBlock(
        header.sequence,
        header.hash,
        header.previous_hash,
        header.created_at_ns,
        transactions,
        list(block.postings),
        list(block.accounts),
        list(block.closures),
    )


async def _kinds(
    connection: Connection, held: list[str], cold: ColdBlocks | None, timeout_s: float
) -> dict[str, Kind]:
    """The kinds of the holds posted, by their key (a join let the planner scan the table);
    those no longer hot, from cold history."""
    if not held:
        return {}
    found = await connection.fetch(
        "SELECT id, kind FROM transactions WHERE id = ANY($1::text[])", held, timeout=timeout_s
    )
    kinds = {r["id"]: Kind(r["kind"]) for r in found}
    missing = [i for i in held if i not in kinds]
    if missing and cold is not None:
        archived = await cold.cold_transactions(connection, missing, timeout_s)
        kinds.update((i, state.spec.kind) for i, state in archived.items())
    return kinds


def _page_of(headers: Sequence[asyncpg.Record], after_sequence: int) -> list[asyncpg.Record]:
    """The contiguous run of headers from after_sequence + 1, cut at ROW_COUNT_PER_PAGE_MAX
    rows (never before its first block)."""
    if not headers:
        return []
    if headers[0]["sequence"] != after_sequence + 1:
        raise GapError(after_sequence + 1)
    page: list[asyncpg.Record] = []
    row_count = 0
    for header in headers:
        if header["sequence"] != after_sequence + 1 + len(page):
            break  # a later block seen before this one: the next page reads again from here
        rows = (
            header["account_count"]
            + header["transaction_count"]
            + header["posting_count"]
            + header["closure_count"]
        )
        if page and row_count + rows > ROW_COUNT_PER_PAGE_MAX:
            break
        page.append(header)
        row_count += rows
    return page


async def _read_content(
    connection: Connection, headers: list[asyncpg.Record], timeout_s: float
) -> Page:
    first, last = headers[0]["sequence"], headers[-1]["sequence"]
    transactions = await _transactions(connection, first, last, timeout_s)
    postings = await _postings(connection, headers, timeout_s)
    accounts: dict[int, list[tuple[AccountSpec, int]]] = {}
    if any(h["account_count"] for h in headers):
        accounts = await _accounts(connection, first, last, timeout_s)
    closures: dict[int, list[tuple[str, int]]] = {}
    if any(h["closure_count"] for h in headers):
        closures = await _closures(connection, first, last, timeout_s)
    posted_ids = list({posting.account_id for block in postings.values() for posting in block})
    posted_accounts = await _specs(connection, posted_ids, timeout_s) if posted_ids else {}
    blocks = []
    for header in headers:
        sequence = header["sequence"]
        block = StreamedBlock(
            sequence,
            bytes(header["hash"]),
            bytes(header["previous_hash"]),
            header["created_at_ns"],
            transactions.get(sequence, []),
            postings.get(sequence, []),
            accounts.get(sequence, []),
            closures.get(sequence, []),
        )
        _check_counts(block, header)
        blocks.append(block)
    check(
        all(p.account_id in posted_accounts for b in blocks for p in b.postings),
        "every posting's account exists",
    )
    return Page(blocks, posted_accounts)


def _check_counts(block: StreamedBlock, header: asyncpg.Record) -> None:
    """What was read of a block is what its header says it committed (paired with the
    writer's counts, made from the same write set)."""
    sequence = block.sequence
    check(
        len(block.transactions) == header["transaction_count"],
        f"block {sequence}: {len(block.transactions)} transactions read, "
        f"{header['transaction_count']} committed",
    )
    check(
        len(block.postings) == header["posting_count"],
        f"block {sequence}: {len(block.postings)} postings read, "
        f"{header['posting_count']} committed",
    )
    check(
        len(block.accounts) == header["account_count"],
        f"block {sequence}: {len(block.accounts)} accounts read, "
        f"{header['account_count']} committed",
    )
    check(
        len(block.closures) == header["closure_count"],
        f"block {sequence}: {len(block.closures)} closures read, "
        f"{header['closure_count']} committed",
    )


async def _transactions(
    connection: Connection, first: int, last: int, timeout_s: float
) -> dict[int, list[StreamedTransaction]]:
    # Only the columns that never change; timestamps are strictly increasing within a shard.
    rows = await connection.fetch(
        """
        SELECT id, kind, code, metadata, value_date, timeout_seconds, target_id, legs,
               applied_legs, timestamp_ns, block_sequence
        FROM transactions WHERE block_sequence BETWEEN $1 AND $2
        ORDER BY block_sequence, timestamp_ns, id
        """,
        first,
        last,
        timeout=timeout_s,
    )
    held = list({r["target_id"] for r in rows if r["kind"] == Kind.POST_PENDING})
    kinds = await _kinds(connection, held, None, timeout_s)
    transactions: dict[int, list[StreamedTransaction]] = {}
    for row in rows:
        spec = spec_from_row(row)
        legs = journal.applied_legs_of(spec.legs, row["applied_legs"])  # shard migration 11
        state = created_state(spec, legs, row["timestamp_ns"])
        target_kind = kinds.get(spec.target_id) if spec.kind is Kind.POST_PENDING else None
        transactions.setdefault(row["block_sequence"], []).append(
            StreamedTransaction(state, target_kind)
        )
    return transactions


async def _postings(
    connection: Connection, headers: list[asyncpg.Record], timeout_s: float
) -> dict[int, list[Posting]]:
    """By the postings' key: the page's postings are one sequence range."""
    start = headers[0]["next_posting_sequence"] - headers[0]["posting_count"]
    end = headers[-1]["next_posting_sequence"]
    if start == end:
        return {}
    rows = await connection.fetch(
        """
        SELECT sequence, transaction_id, account_id, is_debit, posted_amount, pending_delta,
               timestamp_ns, debits_posted_after, credits_posted_after, debits_pending_after,
               credits_pending_after, block_sequence
        FROM postings WHERE sequence >= $1 AND sequence < $2 ORDER BY sequence
        """,
        start,
        end,
        timeout=timeout_s,
    )
    check(len(rows) == end - start, f"postings {start}..{end - 1} are contiguous")
    found: dict[int, list[Posting]] = {}
    for row in rows:
        found.setdefault(row["block_sequence"], []).append(Posting(*tuple(row)[:-1]))
    return found


async def _accounts(
    connection: Connection, first: int, last: int, timeout_s: float
) -> dict[int, list[tuple[AccountSpec, int]]]:
    rows = await connection.fetch(
        """
        SELECT id, currency, code, flags, metadata, created_at_ns, block_sequence
        FROM accounts WHERE block_sequence BETWEEN $1 AND $2
        ORDER BY block_sequence, created_at_ns, id
        """,
        first,
        last,
        timeout=timeout_s,
    )
    found: dict[int, list[tuple[AccountSpec, int]]] = {}
    for row in rows:
        found.setdefault(row["block_sequence"], []).append((_spec(row), row["created_at_ns"]))
    return found


async def _closures(
    connection: Connection, first: int, last: int, timeout_s: float
) -> dict[int, list[tuple[str, int]]]:
    rows = await connection.fetch(
        """
        SELECT account_id, closed_at_ns, block_sequence FROM account_closures
        WHERE block_sequence BETWEEN $1 AND $2 ORDER BY block_sequence, closed_at_ns, account_id
        """,
        first,
        last,
        timeout=timeout_s,
    )
    found: dict[int, list[tuple[str, int]]] = {}
    for row in rows:
        found.setdefault(row["block_sequence"], []).append((row["account_id"], row["closed_at_ns"]))
    return found


async def _specs(
    connection: Connection, account_ids: list[str], timeout_s: float
) -> dict[str, AccountSpec]:
    rows = await connection.fetch(
        "SELECT id, currency, code, flags, metadata FROM accounts WHERE id = ANY($1::text[])",
        account_ids,
        timeout=timeout_s,
    )
    return {row["id"]: _spec(row) for row in rows}


def _spec(row: asyncpg.Record) -> AccountSpec:
    flags = row["flags"]
    return AccountSpec(
        row["id"],
        row["currency"],
        row["code"],
        bool(flags & journal.FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS),
        bool(flags & journal.FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS),
        decode_metadata(row["metadata"]),
    )


def block_body(block: StreamedBlock) -> bytes:
    """A stored block's canonical lines, as its writer hashed them (journal.block_body), made
    again from its records; InvariantError unless they hash to the block's hash."""
    states = [t.state for t in block.transactions]
    lines = journal.block_lines(
        block.accounts,
        ((state, journal.legs_texts(state)) for state in states),
        block.postings,
        block.closures,
    )
    body = journal.block_body(lines)
    check(
        journal.body_hash(block.previous_hash, block.sequence, body) == block.hash,
        f"block {block.sequence}'s records do not hash to its hash",
    )
    return body
