"""Bytes per posting and per account of candidate shard layouts, measured before one is built
(issue 13, "measure first, then redesign"): `python -m bench.closed_loop.layout_probe`.

One synthetic journal (customer accounts, their funding, then uniform transfers between them in
blocks of --block-size, counters after every posting computed as the writer computes them) is
loaded into each layout, in its own schema of one embedded PostgreSQL, block by block as a
writer would (each block's rows inserted, then one UPDATE of the accounts it touched, so the
accounts' heaps carry the dead versions and the free space updates leave), then VACUUMed as
autovacuum would (not FULL) and measured with bench.closed_loop.storage (relation sizes, TOAST
and indexes included). The layouts:

- `today`: the shard schema's ledger tables, migrations 1 and 2 of core/store/schema.py, as is.
- `keyed`: one row per posting and per transaction still, but accounts and transactions get
  integer keys inside the shard (text ids stored once, in their own rows), the legs stored once,
  zero pending columns and empty texts NULL, columns ordered for alignment, the posting's time
  and block left to its transaction, the block ranges found by BRIN indexes (rows are appended
  in journal order), a transaction id found by a hash index.
- `packed`: no row per posting or per transaction. A block's transactions are one row (their
  canonical lines, TOAST-compressed: pglz, the embedded server has no lz4) with the 64-bit
  hashes of their ids in an array under a GIN index (the idempotency lookup: a miss never
  reads the heap); an account's postings are pages of up to --page-postings, each one row
  keyed (account key, first sequence) holding the page's starting counters and, per posting,
  varint deltas of sequence and block, the amount and the pending delta (the counters after
  each posting are running sums from the page's start). Pages are cut per account every
  --page-blocks blocks: the postings of the blocks since are what a compaction would find.
- `packed-ids`: `packed` with the id hashes in a table of their own under a B-tree.
- `packed-static`: `packed` with accounts that hold no counters (never updated: an account's
  balance is its latest posting's counters after, which the writer caches), so an account row
  is written once.

What it does not measure: write or read speed (a layout is only worth building if the writer
and every read stay as fast: that is measured when it is built), WAL, and the recent rows a
`packed` layout keeps until its compaction runs (rows as in `keyed`).

Writes layouts.json and layouts.md to --out (default: print only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg

from bench.closed_loop import storage
from bench.common.workload import CURRENCY, customer_account_id, home_named
from core.store import schema
from shards.local.embedded_pg import EmbeddedPostgres, EmbeddedPostgresConfig, free_port

TIMEOUT_S: Final = 600.0
FUNDING_CENTS: Final = 100_000_000
TRANSFER_CENTS_MAX: Final = 10_000
BANK_ACCOUNT: Final = "@bank"
LAYOUTS: Final = ("today", "keyed", "packed", "packed-ids", "packed-static")
# The relations counted per account in every layout; everything else grows with postings.
ACCOUNT_RELATIONS: Final = ("accounts",)


@dataclass(frozen=True, slots=True)
class Posting:
    sequence: int
    transaction_key: int
    account_key: int
    is_debit: bool
    amount: int
    timestamp_ns: int
    debits_after: int
    credits_after: int


@dataclass(frozen=True, slots=True)
class Transaction:
    key: int
    id: str
    timestamp_ns: int
    debit_key: int
    credit_key: int
    amount: int


@dataclass(frozen=True, slots=True)
class Block:
    sequence: int
    transactions: list[Transaction]
    postings: list[Posting]


@dataclass(slots=True)
class Journal:
    account_ids: list[str]
    blocks: list[Block]
    # The counters of every account after the last block: (debits, credits).
    counters: list[list[int]]

    @property
    def posting_count(self) -> int:
        return sum(len(b.postings) for b in self.blocks)

    @property
    def transaction_count(self) -> int:
        return sum(len(b.transactions) for b in self.blocks)


def synthetic_journal(
    account_count: int, transfer_count: int, block_size: int, seed: int
) -> Journal:
    """@bank funds every customer, then uniform transfers between customers; every transaction
    posts a debit then a credit, sequences and keys in journal order."""
    rng = random.Random(seed)
    ids = [BANK_ACCOUNT] + [customer_account_id(n) for n in range(account_count)]
    counters = [[0, 0] for _ in ids]
    pairs = [(0, n + 1, FUNDING_CENTS, "fund." + ids[n + 1]) for n in range(account_count)]
    for number in range(transfer_count):
        debit = rng.randrange(1, account_count + 1)
        credit = rng.randrange(1, account_count)
        credit += credit >= debit
        pairs.append((debit, credit, rng.randrange(1, TRANSFER_CENTS_MAX + 1), f"probe.{number}"))
    journal, clock = Journal(ids, [], counters), 1_780_000_000_000_000_000
    sequence = 1
    for start in range(0, len(pairs), block_size):
        block = Block(len(journal.blocks) + 1, [], [])
        for debit, credit, amount, name in pairs[start : start + block_size]:
            clock += 1_000
            key = len(block.transactions) + start + 1
            tx_id = home_named(name, ids[debit], ids[credit])
            block.transactions.append(Transaction(key, tx_id, clock, debit, credit, amount))
            for account, is_debit in ((debit, True), (credit, False)):
                counters[account][0 if is_debit else 1] += amount
                block.postings.append(
                    Posting(sequence, key, account, is_debit, amount, clock, *counters[account])
                )
                sequence += 1
        journal.blocks.append(block)
    return journal


# ---- the layouts: their tables, and the rows a block writes ----

_TODAY_SQL: Final = schema.MIGRATIONS[0][2] + schema.MIGRATIONS[1][2]

_KEYED_SQL: Final = """
CREATE TABLE accounts (
    key bigint NOT NULL,
    created_at_ns bigint NOT NULL,
    debits_posted bigint NOT NULL,
    credits_posted bigint NOT NULL,
    version bigint NOT NULL,
    block_sequence bigint NOT NULL,
    debits_pending bigint,
    credits_pending bigint,
    closed_at_ns bigint,
    code integer NOT NULL,
    flags smallint NOT NULL,
    currency text NOT NULL,
    id text NOT NULL,
    metadata text
) WITH (fillfactor = 85);
CREATE UNIQUE INDEX accounts_by_id ON accounts (id);
CREATE INDEX accounts_by_block ON accounts USING brin (block_sequence);
CREATE TABLE transactions (
    key bigint NOT NULL,
    timestamp_ns bigint NOT NULL,
    block_sequence bigint NOT NULL,
    expires_at_ns bigint,
    code integer NOT NULL,
    timeout_seconds integer,
    kind smallint NOT NULL,
    status smallint NOT NULL,
    id text NOT NULL,
    legs text NOT NULL,
    applied_legs text,
    metadata text,
    value_date text,
    target_id text,
    resolved_by_key bigint,
    reversed_by_key bigint
);
CREATE INDEX transactions_by_id ON transactions USING hash (id);
CREATE INDEX transactions_by_block ON transactions USING brin (block_sequence);
CREATE TABLE postings (
    sequence bigint NOT NULL,
    transaction_key bigint NOT NULL,
    account_key bigint NOT NULL,
    amount bigint NOT NULL,
    debits_posted_after bigint NOT NULL,
    credits_posted_after bigint NOT NULL,
    pending_delta bigint,
    debits_pending_after bigint,
    credits_pending_after bigint
);
CREATE INDEX postings_by_account ON postings (account_key, sequence);
CREATE INDEX postings_by_sequence ON postings USING brin (sequence);
CREATE TABLE journal_blocks (LIKE ledger_today.journal_blocks INCLUDING ALL);
"""

# The packed layouts' parts: each layout is its accounts, its id index, these pages and blocks.
_UPDATED_ACCOUNTS_SQL: Final = """
CREATE TABLE accounts (LIKE ledger_keyed.accounts INCLUDING ALL) WITH (fillfactor = 85);
"""
_STATIC_ACCOUNTS_SQL: Final = """
CREATE TABLE accounts (
    key bigint NOT NULL,
    created_at_ns bigint NOT NULL,
    closed_at_ns bigint,
    code integer NOT NULL,
    flags smallint NOT NULL,
    currency text NOT NULL,
    id text NOT NULL,
    metadata text
);
CREATE UNIQUE INDEX accounts_by_id ON accounts (id);
"""
_GIN_IDS_SQL: Final = """
CREATE TABLE transaction_blocks (
    block_sequence bigint PRIMARY KEY,
    id_hashes bigint[] NOT NULL,
    body text NOT NULL
);
CREATE INDEX transaction_blocks_by_id ON transaction_blocks USING gin (id_hashes)
    WITH (fastupdate = off);
"""
_BTREE_IDS_SQL: Final = """
CREATE TABLE transaction_blocks (
    block_sequence bigint PRIMARY KEY,
    body text NOT NULL
);
CREATE TABLE transaction_ids (id_hash bigint NOT NULL, block_sequence bigint NOT NULL);
CREATE INDEX transaction_ids_by_hash ON transaction_ids (id_hash);
"""
_PAGES_AND_BLOCKS_SQL: Final = """
CREATE TABLE account_pages (
    account_key bigint NOT NULL,
    first_sequence bigint NOT NULL,
    debits_posted_before bigint NOT NULL,
    credits_posted_before bigint NOT NULL,
    debits_pending_before bigint,
    credits_pending_before bigint,
    first_block bigint NOT NULL,
    posting_count smallint NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (account_key, first_sequence)
);
CREATE TABLE journal_blocks (LIKE ledger_today.journal_blocks INCLUDING ALL);
"""
_PACKED_SQL: Final = _UPDATED_ACCOUNTS_SQL + _GIN_IDS_SQL + _PAGES_AND_BLOCKS_SQL
_PACKED_STATIC_SQL: Final = _STATIC_ACCOUNTS_SQL + _GIN_IDS_SQL + _PAGES_AND_BLOCKS_SQL
_PACKED_IDS_SQL: Final = _UPDATED_ACCOUNTS_SQL + _BTREE_IDS_SQL + _PAGES_AND_BLOCKS_SQL


def _legs_text(journal: Journal, tx: Transaction, *, keyed: bool = False) -> str:
    """The legs as today's rows store them, or (keyed) naming the accounts by their keys."""
    ids = journal.account_ids
    debit, credit = (
        (tx.debit_key, tx.credit_key) if keyed else (ids[tx.debit_key], ids[tx.credit_key])
    )
    return f"D {debit} {tx.amount} {CURRENCY},C {credit} {tx.amount} {CURRENCY}"


def _block_header(block: Block, previous: bytes) -> tuple[Any, ...]:
    digest = hashlib.sha256(previous + block.sequence.to_bytes(8, "big")).digest()
    last = block.transactions[-1].timestamp_ns
    first_posting = block.postings[0].sequence
    return (block.sequence, previous, digest, 1, last, first_posting + len(block.postings), last)


def _id_hash(text: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True
    )


def _varint(value: int) -> bytes:
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = zigzag & 0x7F
        zigzag >>= 7
        if zigzag:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def page_body(postings: Sequence[tuple[int, int, Posting]]) -> bytes:
    """(sequence delta, block delta, signed amount, pending delta) varints per posting, deltas
    from the page's first sequence and block."""
    first_sequence, first_block = postings[0][0], postings[0][1]
    body = bytearray()
    for sequence, block_sequence, posting in postings:
        body += _varint(sequence - first_sequence) + _varint(block_sequence - first_block)
        body += _varint(-posting.amount if posting.is_debit else posting.amount) + _varint(0)
    return bytes(body)


# ---- loading ----


@dataclass(frozen=True, slots=True)
class Paging:
    """How the packed layouts cut pages, and how often the load VACUUMs the accounts (as
    autovacuum would while a writer runs: their updates' dead versions are then reused)."""

    page_postings: int = 64
    page_blocks: int = 100
    vacuum_blocks: int = 50


@dataclass(frozen=True, slots=True)
class LayoutSize:
    layout: str
    bytes_per_posting: float
    bytes_per_account: float
    bytes_per_transaction: float
    per_posting: list[tuple[str, float]]
    per_account: list[tuple[str, float]]


async def _load_accounts(connection: Any, layout: str, journal: Journal) -> None:
    ids = journal.account_ids
    if layout == "today":
        rows: list[tuple[Any, ...]] = [
            (id_, CURRENCY, 100, 0, "{}", 1, 0, 0, 0, 0, 0, 0, 0) for id_ in ids
        ]
    elif layout == "packed-static":
        rows = [(k, 1, None, 100, 0, CURRENCY, id_, None) for k, id_ in enumerate(ids)]
    else:
        rows = [
            (k, 1, 0, 0, 0, 0, None, None, None, 100, 0, CURRENCY, id_, None)
            for k, id_ in enumerate(ids)
        ]
    await connection.copy_records_to_table("accounts", records=rows, timeout=TIMEOUT_S)


async def _update_accounts(connection: Any, layout: str, journal: Journal, block: Block) -> None:
    """The writer's one UPDATE per block of the accounts it touched (their counters after it)."""
    last: dict[int, Posting] = {p.account_key: p for p in block.postings}
    keys = sorted(last)
    debits = [last[k].debits_after for k in keys]
    credits = [last[k].credits_after for k in keys]
    column = "id" if layout == "today" else "key"
    values: list[Any] = [journal.account_ids[k] for k in keys] if layout == "today" else keys
    array_type = "text[]" if layout == "today" else "bigint[]"
    await connection.execute(
        f"UPDATE accounts a SET debits_posted = u.d, credits_posted = u.c, "
        f"version = a.version + 1, block_sequence = $4 "
        f"FROM unnest($1::{array_type}, $2::bigint[], $3::bigint[]) AS u(k, d, c) "
        f"WHERE a.{column} = u.k",
        values,
        debits,
        credits,
        block.sequence,
        timeout=TIMEOUT_S,
    )


def _today_rows(journal: Journal, block: Block) -> dict[str, list[tuple[Any, ...]]]:
    ids = journal.account_ids
    tx_ids = {tx.key: tx.id for tx in block.transactions}
    transactions = []
    for tx in block.transactions:
        legs = _legs_text(journal, tx)
        transactions.append(
            (
                tx.id,
                1,
                1,
                "{}",
                "",
                0,
                "",
                legs,
                legs,
                tx.timestamp_ns,
                2,
                0,
                "",
                "",
                block.sequence,
            )
        )
    postings = [
        (
            p.sequence,
            tx_ids[p.transaction_key],
            ids[p.account_key],
            p.is_debit,
            p.amount,
            0,
            p.timestamp_ns,
            p.debits_after,
            p.credits_after,
            0,
            0,
            block.sequence,
        )
        for p in block.postings
    ]
    return {"transactions": transactions, "postings": postings}


def _keyed_rows(journal: Journal, block: Block) -> dict[str, list[tuple[Any, ...]]]:
    transactions = [
        (
            tx.key,
            tx.timestamp_ns,
            block.sequence,
            None,
            1,
            None,
            1,
            2,
            tx.id,
            _legs_text(journal, tx, keyed=True),
            None,
            None,
            None,
            None,
            None,
            None,
        )
        for tx in block.transactions
    ]
    postings = [
        (
            p.sequence,
            p.transaction_key,
            p.account_key,
            -p.amount if p.is_debit else p.amount,
            p.debits_after,
            p.credits_after,
            None,
            None,
            None,
        )
        for p in block.postings
    ]
    return {"transactions": transactions, "postings": postings}


def _packed_rows(journal: Journal, block: Block) -> dict[str, list[tuple[Any, ...]]]:
    lines = "\n".join(
        f"T|{tx.id}|1|1|{{}}||0||{_legs_text(journal, tx)}||{tx.timestamp_ns}"
        for tx in block.transactions
    )
    hashes = [_id_hash(tx.id) for tx in block.transactions]
    return {"transaction_blocks": [(block.sequence, hashes, lines)]}


def _packed_ids_rows(journal: Journal, block: Block) -> dict[str, list[tuple[Any, ...]]]:
    """As packed, the id hashes in a table of their own under a B-tree instead of a GIN."""
    rows = _packed_rows(journal, block)
    ((sequence, hashes, lines),) = rows["transaction_blocks"]
    return {
        "transaction_blocks": [(sequence, lines)],
        "transaction_ids": [(h, sequence) for h in hashes],
    }


_ROWS: Final[dict[str, Callable[[Journal, Block], dict[str, list[tuple[Any, ...]]]]]] = {
    "today": _today_rows,
    "keyed": _keyed_rows,
    "packed": _packed_rows,
    "packed-ids": _packed_ids_rows,
    "packed-static": _packed_rows,
}


async def _flush_pages(
    connection: Any, pending: dict[int, list[tuple[int, int, Posting]]], page_postings: int
) -> None:
    rows = []
    for account_key, postings in pending.items():
        for start in range(0, len(postings), page_postings):
            page = postings[start : start + page_postings]
            first = page[0][2]
            debits = first.debits_after - (first.amount if first.is_debit else 0)
            credits = first.credits_after - (0 if first.is_debit else first.amount)
            rows.append(
                (
                    account_key,
                    page[0][0],
                    debits,
                    credits,
                    None,
                    None,
                    page[0][1],
                    len(page),
                    page_body(page),
                )
            )
    pending.clear()
    if rows:
        await connection.copy_records_to_table("account_pages", records=rows, timeout=TIMEOUT_S)


async def load(connection: Any, layout: str, journal: Journal, paging: Paging) -> None:
    await _load_accounts(connection, layout, journal)
    previous = bytes(32)
    pending: dict[int, list[tuple[int, int, Posting]]] = {}
    for block in journal.blocks:
        async with connection.transaction():
            for table, rows in _ROWS[layout](journal, block).items():
                await connection.copy_records_to_table(table, records=rows, timeout=TIMEOUT_S)
            header = _block_header(block, previous)
            previous = header[2]
            await connection.execute(
                "INSERT INTO journal_blocks (sequence, previous_hash, hash, epoch, created_at_ns,"
                " next_posting_sequence, last_timestamp_ns, account_count, transaction_count,"
                " posting_count, closure_count) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, 0)",
                *header,
                len(block.transactions),
                len(block.postings),
                timeout=TIMEOUT_S,
            )
            if layout != "packed-static":  # its accounts hold no counters: never updated
                await _update_accounts(connection, layout, journal, block)
        if block.sequence % paging.vacuum_blocks == 0:
            await connection.execute("VACUUM accounts", timeout=TIMEOUT_S)
        if layout.startswith("packed"):
            for posting in block.postings:
                pending.setdefault(posting.account_key, []).append(
                    (posting.sequence, block.sequence, posting)
                )
            if block.sequence % paging.page_blocks == 0:
                await _flush_pages(connection, pending, paging.page_postings)
    if layout.startswith("packed"):
        await _flush_pages(connection, pending, paging.page_postings)


async def measure_layout(dsn: str, layout: str, journal: Journal, paging: Paging) -> LayoutSize:
    name = "ledger_" + layout.replace("-", "_")
    connection = await asyncpg.connect(dsn, timeout=60)
    try:
        ddl = {
            "today": _TODAY_SQL,
            "keyed": _KEYED_SQL,
            "packed": _PACKED_SQL,
            "packed-ids": _PACKED_IDS_SQL,
            "packed-static": _PACKED_STATIC_SQL,
        }[layout]
        await connection.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}")
        await connection.execute(f"SET search_path = {name}")
        await connection.execute(ddl, timeout=TIMEOUT_S)
        await load(connection, layout, journal, paging)
        await connection.execute("VACUUM (ANALYZE)", timeout=TIMEOUT_S)
    finally:
        await connection.close()
    breakdown = await storage.measure(dsn, name, use_pgstattuple=False)
    by_name = {t.name: t for t in breakdown.tables}
    account_bytes = sum(by_name[n].total_bytes for n in ACCOUNT_RELATIONS)
    posting_bytes = sum(t.total_bytes for t in breakdown.tables if t.name not in ACCOUNT_RELATIONS)
    postings, transactions = journal.posting_count, journal.transaction_count
    growing = [t.name for t in breakdown.tables if t.name not in ACCOUNT_RELATIONS]
    return LayoutSize(
        layout,
        round(posting_bytes / postings, 1),
        round(account_bytes / len(journal.account_ids), 1),
        round(posting_bytes / transactions, 1),
        storage.shares(by_name, growing, postings),
        storage.shares(by_name, ACCOUNT_RELATIONS, len(journal.account_ids)),
    )


def markdown(sizes: Sequence[LayoutSize], journal: Journal, args: argparse.Namespace) -> str:
    lines = [
        "# Candidate layouts: bytes per posting and per account",
        "",
        f"- journal: {len(journal.account_ids):,} accounts, {journal.transaction_count:,} "
        f"transactions, {journal.posting_count:,} postings in {len(journal.blocks):,} blocks of "
        f"{args.block_size}; packed pages of up to {args.page_postings} postings cut every "
        f"{args.page_blocks} blocks; accounts vacuumed every {args.vacuum_blocks} blocks; "
        f"seed {args.seed}",
        f"- targets (issue 13): <= {storage.TARGET_BYTES_PER_POSTING:g} B per posting, "
        f"<= {storage.TARGET_BYTES_PER_ACCOUNT:g} B per account, indexes included",
        "",
        "| layout | B per posting | B per account | B per transaction |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {s.layout} | {s.bytes_per_posting:,.1f} | {s.bytes_per_account:,.1f} | "
        f"{s.bytes_per_transaction:,.1f} |"
        for s in sizes
    ]
    for s in sizes:
        lines += ["", f"## {s.layout}", "", "| part | B per posting |", "|---|---|"]
        lines += [f"| {part} | {value:,.1f} |" for part, value in s.per_posting]
        lines += ["", "| part | B per account |", "|---|---|"]
        lines += [f"| {part} | {value:,.1f} |" for part, value in s.per_account]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _server(args: argparse.Namespace) -> Iterator[str]:
    if args.dsn:
        yield args.dsn
        return
    with tempfile.TemporaryDirectory(prefix="tally-layout-") as directory:
        server = EmbeddedPostgres(EmbeddedPostgresConfig(Path(directory) / "pg", free_port()))
        server.start()
        try:
            yield server.dsn()
        finally:
            server.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="", help="a PostgreSQL to use (default: an embedded one)")
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--transfers", type=int, default=200_000)
    parser.add_argument("--block-size", type=int, default=500)
    parser.add_argument("--page-postings", type=int, default=64)
    parser.add_argument("--page-blocks", type=int, default=100)
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--vacuum-blocks", type=int, default=50)
    args = parser.parse_args(argv)
    for name in (
        "accounts",
        "transfers",
        "block_size",
        "page_postings",
        "page_blocks",
        "vacuum_blocks",
    ):
        if getattr(args, name) < 2:
            parser.error(f"--{name.replace('_', '-')} must be at least 2")
    unknown = set(args.layouts.split(",")) - set(LAYOUTS)
    if unknown:
        parser.error(f"unknown layouts {sorted(unknown)}; known: {', '.join(LAYOUTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    journal = synthetic_journal(args.accounts, args.transfers, args.block_size, args.seed)
    layouts = ["today"] + [name for name in args.layouts.split(",") if name != "today"]
    paging = Paging(args.page_postings, args.page_blocks, args.vacuum_blocks)
    with _server(args) as dsn:
        sizes = [asyncio.run(measure_layout(dsn, name, journal, paging)) for name in layouts]
    report = markdown(sizes, journal, args)
    print(report)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "layouts.md").write_text(report)
        (args.out / "layouts.json").write_text(json.dumps([asdict(s) for s in sizes], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
