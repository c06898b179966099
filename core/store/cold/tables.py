"""Blocks as the segment's Arrow tables and back: the one mapping between ColdBlock and rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from core import journal
from core.journal import BlockHeader
from core.model import AccountSpec, Kind, Posting, TransactionSpec
from core.store.cold.format import (
    ACCOUNTS_SCHEMA,
    BLOCKS_SCHEMA,
    CLOSURES_SCHEMA,
    POSTINGS_SCHEMA,
    SORT_KEYS,
    TRANSACTIONS_SCHEMA,
    ColdBlock,
    ColdTransaction,
)

Columns = dict[str, list[Any]]


def _table(columns: Columns, schema: pa.Schema, name: str) -> pa.Table:
    table = pa.Table.from_pydict(columns, schema=schema)
    keys = SORT_KEYS[name]
    if len(keys) == 1 and keys[0] in ("sequence", "block_sequence"):
        return table  # made in that order
    return table.sort_by([(key, "ascending") for key in keys])


def to_tables(blocks: Sequence[ColdBlock]) -> dict[str, pa.Table]:
    """The five files' tables, each sorted as SORT_KEYS says."""
    return {
        "blocks.parquet": _table(_block_columns(blocks), BLOCKS_SCHEMA, "blocks.parquet"),
        "accounts.parquet": _table(_account_columns(blocks), ACCOUNTS_SCHEMA, "accounts.parquet"),
        "transactions.parquet": _table(
            _transaction_columns(blocks), TRANSACTIONS_SCHEMA, "transactions.parquet"
        ),
        "postings.parquet": _table(_posting_columns(blocks), POSTINGS_SCHEMA, "postings.parquet"),
        "closures.parquet": _table(_closure_columns(blocks), CLOSURES_SCHEMA, "closures.parquet"),
    }


def _empty(schema: pa.Schema) -> Columns:
    return {name: [] for name in schema.names}


def _block_columns(blocks: Sequence[ColdBlock]) -> Columns:
    columns = _empty(BLOCKS_SCHEMA)
    for block in blocks:
        h = block.header
        row = (
            h.sequence, h.previous_hash, h.hash, h.epoch, h.created_at_ns,
            h.next_posting_sequence, h.last_timestamp_ns, h.key_id, h.signature,
            len(block.accounts), len(block.transactions), len(block.postings), len(block.closures),
        )  # fmt: skip
        for name, value in zip(BLOCKS_SCHEMA.names, row, strict=True):
            columns[name].append(value)
    return columns


def _account_columns(blocks: Sequence[ColdBlock]) -> Columns:
    columns = _empty(ACCOUNTS_SCHEMA)
    for block in blocks:
        for position, (spec, created_at_ns) in enumerate(block.accounts):
            row = (
                block.header.sequence, position, spec.id, spec.currency, spec.code,
                journal.account_flags(spec), journal.encode_metadata(spec.metadata), created_at_ns,
            )  # fmt: skip
            for name, value in zip(ACCOUNTS_SCHEMA.names, row, strict=True):
                columns[name].append(value)
    return columns


def _transaction_columns(blocks: Sequence[ColdBlock]) -> Columns:
    columns = _empty(TRANSACTIONS_SCHEMA)
    for block in blocks:
        for position, t in enumerate(block.transactions):
            spec = t.spec
            applied = journal.stored_applied_legs(t.legs_text, t.applied_legs_text)
            row = (
                spec.id, block.header.sequence, position, int(spec.kind), spec.code,
                journal.encode_metadata(spec.metadata), spec.value_date, spec.timeout_seconds,
                spec.target_id, t.legs_text, applied, t.timestamp_ns,
            )  # fmt: skip
            for name, value in zip(TRANSACTIONS_SCHEMA.names, row, strict=True):
                columns[name].append(value)
    return columns


def _posting_columns(blocks: Sequence[ColdBlock]) -> Columns:
    columns = _empty(POSTINGS_SCHEMA)
    for block in blocks:
        for p in block.postings:
            row = (
                p.account_id, p.sequence, block.header.sequence, p.transaction_id, p.is_debit,
                p.posted_amount, p.pending_delta, p.timestamp_ns, p.debits_posted_after,
                p.credits_posted_after, p.debits_pending_after, p.credits_pending_after,
            )  # fmt: skip
            for name, value in zip(POSTINGS_SCHEMA.names, row, strict=True):
                columns[name].append(value)
    return columns


def _closure_columns(blocks: Sequence[ColdBlock]) -> Columns:
    columns = _empty(CLOSURES_SCHEMA)
    for block in blocks:
        for position, (account_id, closed_at_ns) in enumerate(block.closures):
            row = (block.header.sequence, position, account_id, closed_at_ns)
            for name, value in zip(CLOSURES_SCHEMA.names, row, strict=True):
                columns[name].append(value)
    return columns


# ---- rows back into records ----


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()  # type: ignore[no-any-return]


def headers_of(table: pa.Table) -> list[tuple[BlockHeader, tuple[int, int, int, int]]]:
    """Each block's header and its four counts (accounts, transactions, postings, closures)."""
    found = []
    for r in _rows(table.sort_by("sequence")):
        header = BlockHeader(
            r["sequence"], r["previous_hash"], r["hash"], r["epoch"], r["created_at_ns"],
            r["next_posting_sequence"], r["last_timestamp_ns"], r["key_id"], r["signature"],
        )  # fmt: skip
        counts = (
            r["account_count"], r["transaction_count"], r["posting_count"], r["closure_count"]
        )  # fmt: skip
        found.append((header, counts))
    return found


def account_spec(r: dict[str, Any]) -> AccountSpec:
    flags = r["flags"]
    return AccountSpec(
        r["id"],
        r["currency"],
        r["code"],
        bool(flags & journal.FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS),
        bool(flags & journal.FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS),
        journal.decode_metadata(r["metadata"]),
    )


def transaction_of(r: dict[str, Any]) -> ColdTransaction:
    spec = TransactionSpec(
        r["id"], Kind(r["kind"]), journal.decode_legs(r["legs"]), r["code"],
        journal.decode_metadata(r["metadata"]), r["value_date"], r["timeout_seconds"],
        r["target_id"],
    )  # fmt: skip
    applied = r["legs"] if r["applied_legs"] is None else r["applied_legs"]
    return ColdTransaction(spec, r["legs"], applied, r["timestamp_ns"])


def posting_of(r: dict[str, Any]) -> Posting:
    return Posting(
        r["sequence"], r["transaction_id"], r["account_id"], r["is_debit"], r["posted_amount"],
        r["pending_delta"], r["timestamp_ns"], r["debits_posted_after"], r["credits_posted_after"],
        r["debits_pending_after"], r["credits_pending_after"],
    )  # fmt: skip


def _by_block(table: pa.Table, order: str) -> dict[int, list[dict[str, Any]]]:
    grouped: dict[int, list[dict[str, Any]]] = {}
    for r in _rows(table.sort_by([("block_sequence", "ascending"), (order, "ascending")])):
        grouped.setdefault(r["block_sequence"], []).append(r)
    return grouped


def blocks_of(tables: dict[str, pa.Table]) -> list[ColdBlock]:
    """The blocks the tables hold, in sequence order, each list in its hash's order (accounts,
    transactions and closures by position, postings by sequence). The header counts are not
    checked here (verify and read do)."""
    accounts = _by_block(tables["accounts.parquet"], "position")
    transactions = _by_block(tables["transactions.parquet"], "position")
    postings = _by_block(tables["postings.parquet"], "sequence")
    closures = _by_block(tables["closures.parquet"], "position")
    blocks = []
    for header, _ in headers_of(tables["blocks.parquet"]):
        s = header.sequence
        blocks.append(
            ColdBlock(
                header,
                tuple((account_spec(r), r["created_at_ns"]) for r in accounts.get(s, [])),
                tuple(transaction_of(r) for r in transactions.get(s, [])),
                tuple(posting_of(r) for r in postings.get(s, [])),
                tuple((r["account_id"], r["closed_at_ns"]) for r in closures.get(s, [])),
            )
        )
    return blocks
