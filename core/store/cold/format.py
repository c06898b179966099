"""The cold segment's format: its blocks as records, its Parquet files' schemas, its manifest.

A segment holds, for a contiguous run of one shard's blocks, every stored header field of each
block (journal_blocks' columns: hashes, epoch, times, next posting sequence, key id,
signature, the four counts) and the rows each block created, with what is needed to make its
canonical lines again byte for byte and in the order its hash covers them: accounts,
transactions and closures carry their position in the block (the transactions file is sorted
by id for lookups), postings are in sequence order within a block (a block's postings are the
sequence range its header ends at), and transactions keep their legs texts as recorded (the
applied legs text is null when it is the submitted one, as it most often is).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa

from core import journal
from core.journal import BlockHeader
from core.model import AccountSpec, Posting, TransactionSpec, TransactionState
from core.store.cold.catalog import SegmentError as SegmentError  # re-exported
from core.store.cold.sizes import SEGMENT_BLOCK_COUNT_MAX as SEGMENT_BLOCK_COUNT_MAX  # re-exported
from core.store.stream import StreamedBlock, created_state

FORMAT: Final = "tally-cold-segment/1"
MANIFEST_NAME: Final = "manifest.json"
# Files, in the order the manifest lists them.
FILE_NAMES: Final = (
    "blocks.parquet",
    "accounts.parquet",
    "transactions.parquet",
    "postings.parquet",
    "closures.parquet",
)
# Rows per row group: a history page or a lookup by id decompresses one group of its file
# (about 3 MB of postings columns before compression), and a group's min/max statistics prune
# the others.
ROW_GROUP_ROW_COUNT: Final = 32_768
ZSTD_LEVEL: Final = 9
# A segment is verified and read back whole by its writer and by verify_segment: this bounds
# that memory. Measured writing 163,451 rows (107,088 postings): 1.25 KB a row of Python heap
# at the peak beyond the blocks given, 773 MB peak RSS for the process; so about 300 MB of
# heap at this limit.
SEGMENT_ROW_COUNT_MAX: Final = 250_000


def _schema(columns: list[tuple[str, pa.DataType]], nullable: tuple[str, ...] = ()) -> pa.Schema:
    """Columns are required (a null is no journal value) but those named nullable."""
    return pa.schema([pa.field(name, kind, nullable=name in nullable) for name, kind in columns])


BLOCKS_SCHEMA: Final = _schema(
    [
        ("sequence", pa.int64()),
        ("previous_hash", pa.binary(32)),
        ("hash", pa.binary(32)),
        ("epoch", pa.int64()),
        ("created_at_ns", pa.int64()),
        ("next_posting_sequence", pa.int64()),
        ("last_timestamp_ns", pa.int64()),
        ("key_id", pa.string()),
        ("signature", pa.binary()),
        ("account_count", pa.int32()),
        ("transaction_count", pa.int32()),
        ("posting_count", pa.int32()),
        ("closure_count", pa.int32()),
    ]
)
ACCOUNTS_SCHEMA: Final = _schema(
    [
        ("block_sequence", pa.int64()),
        ("position", pa.int32()),
        ("id", pa.string()),
        ("currency", pa.string()),
        ("code", pa.int32()),
        ("flags", pa.int32()),
        ("metadata", pa.string()),
        ("created_at_ns", pa.int64()),
    ]
)
TRANSACTIONS_SCHEMA: Final = _schema(
    [
        ("id", pa.string()),
        ("block_sequence", pa.int64()),
        ("position", pa.int32()),
        ("kind", pa.int8()),
        ("code", pa.int32()),
        ("metadata", pa.string()),
        ("value_date", pa.string()),
        ("timeout_seconds", pa.int32()),
        ("target_id", pa.string()),
        ("legs", pa.string()),
        # Null: the legs as submitted were applied.
        ("applied_legs", pa.string()),
        ("timestamp_ns", pa.int64()),
    ],
    nullable=("applied_legs",),
)
POSTINGS_SCHEMA: Final = _schema(
    [
        ("account_id", pa.string()),
        ("sequence", pa.int64()),
        ("block_sequence", pa.int64()),
        ("transaction_id", pa.string()),
        ("is_debit", pa.bool_()),
        ("posted_amount", pa.int64()),
        ("pending_delta", pa.int64()),
        ("timestamp_ns", pa.int64()),
        ("debits_posted_after", pa.int64()),
        ("credits_posted_after", pa.int64()),
        ("debits_pending_after", pa.int64()),
        ("credits_pending_after", pa.int64()),
    ]
)
CLOSURES_SCHEMA: Final = _schema(
    [
        ("block_sequence", pa.int64()),
        ("position", pa.int32()),
        ("account_id", pa.string()),
        ("closed_at_ns", pa.int64()),
    ]
)
SCHEMAS: Final = dict(
    zip(
        FILE_NAMES,
        (BLOCKS_SCHEMA, ACCOUNTS_SCHEMA, TRANSACTIONS_SCHEMA, POSTINGS_SCHEMA, CLOSURES_SCHEMA),
        strict=True,
    )
)
# Each file's sort order (Parquet's sorting_columns say it too): postings by account then
# sequence, so an account's history is one range; transactions by id, for lookups by id.
SORT_KEYS: Final = {
    "blocks.parquet": ("sequence",),
    "accounts.parquet": ("block_sequence", "position"),
    "transactions.parquet": ("id",),
    "postings.parquet": ("account_id", "sequence"),
    "closures.parquet": ("block_sequence", "position"),
}

# Integer columns that grow along each file's order (sequences, times, an account's counters
# after each of its postings): delta-encoded (DELTA_BINARY_PACKED) rather than dictionary-
# encoded. Measured on 100,000 postings: 33.5 bytes a posting in the postings file with
# dictionaries, 28.5 with these deltas.
DELTA_COLUMNS: Final = {
    "blocks.parquet": (
        "sequence", "epoch", "created_at_ns", "next_posting_sequence", "last_timestamp_ns",
    ),
    "accounts.parquet": ("block_sequence", "created_at_ns"),
    "transactions.parquet": ("block_sequence", "position", "timestamp_ns"),
    "postings.parquet": (
        "sequence", "block_sequence", "timestamp_ns", "debits_posted_after",
        "credits_posted_after", "debits_pending_after", "credits_pending_after",
    ),
    "closures.parquet": ("block_sequence", "closed_at_ns"),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ColdTransaction:
    """A transaction as its block recorded it: what its T line holds, legs texts included."""

    spec: TransactionSpec
    legs_text: str
    applied_legs_text: str
    timestamp_ns: int

    def state(self) -> TransactionState:
        """Its state as created (later fates are transactions of later blocks)."""
        applied = self.spec.legs
        if self.applied_legs_text != self.legs_text:
            applied = journal.decode_legs(self.applied_legs_text)
        return created_state(self.spec, applied, self.timestamp_ns)

    def line(self) -> str:
        state = created_state(self.spec, self.spec.legs, self.timestamp_ns)
        return journal.transaction_line(state, self.legs_text, self.applied_legs_text)


def cold_transaction(state: TransactionState) -> ColdTransaction:
    """As the journal records it: `linked` is a request's, not recorded (the store has no
    column for it), so it is dropped."""
    legs_text, applied_text = journal.legs_texts(state)
    spec = state.spec._replace(linked=False) if state.spec.linked else state.spec
    return ColdTransaction(spec, legs_text, applied_text, state.timestamp_ns)


@dataclass(frozen=True, slots=True)
class ColdBlock:
    """One journal block with what it created, each list in the order its hash covers."""

    header: BlockHeader
    accounts: tuple[tuple[AccountSpec, int], ...]
    transactions: tuple[ColdTransaction, ...]
    postings: tuple[Posting, ...]
    closures: tuple[tuple[str, int], ...]

    def lines(self) -> list[str]:
        lines = [journal.created_account_line(spec, at) for spec, at in self.accounts]
        lines.extend(transaction.line() for transaction in self.transactions)
        lines.extend(journal.posting_line(posting) for posting in self.postings)
        lines.extend(journal.closure_line(account_id, at) for account_id, at in self.closures)
        return lines

    def recomputed_hash(self) -> bytes:
        header = self.header
        return journal.block_hash(header.previous_hash, header.sequence, self.lines())

    def row_count(self) -> int:
        return len(self.accounts) + len(self.transactions) + len(self.postings) + len(self.closures)


def from_streamed(header: BlockHeader, block: StreamedBlock) -> ColdBlock:
    """A block as core.store.stream.read_page reads it, with its full header (journal_blocks'
    row: the stream leaves out epoch, positions and signature)."""
    if (header.sequence, header.hash, header.previous_hash) != (
        block.sequence,
        block.hash,
        block.previous_hash,
    ):
        raise SegmentError(f"block {block.sequence}: its header is another block's")
    return ColdBlock(
        header,
        tuple(block.accounts),
        tuple(cold_transaction(t.state) for t in block.transactions),
        tuple(block.postings),
        tuple(block.closures),
    )


# ---- the manifest ----


@dataclass(frozen=True, slots=True)
class FileEntry:
    name: str
    byte_count: int
    sha256_hex: str
    row_count: int


@dataclass(frozen=True, slots=True)
class Manifest:
    shard: int
    first_block: int
    last_block: int
    first_previous_hash: bytes
    last_hash: bytes
    block_count: int
    account_count: int
    transaction_count: int
    posting_count: int
    closure_count: int
    files: tuple[FileEntry, ...]
    # The previous segment's manifest digest (hex); "" for a shard's first segment.
    previous_manifest_digest: str
    format: str = FORMAT

    def body(self) -> dict[str, Any]:
        """Every field but the digest, as the JSON object the digest covers."""
        return {
            "format": self.format,
            "shard": self.shard,
            "first_block": self.first_block,
            "last_block": self.last_block,
            "first_previous_hash": self.first_previous_hash.hex(),
            "last_hash": self.last_hash.hex(),
            "block_count": self.block_count,
            "account_count": self.account_count,
            "transaction_count": self.transaction_count,
            "posting_count": self.posting_count,
            "closure_count": self.closure_count,
            "files": [
                {"name": f.name, "bytes": f.byte_count, "sha256": f.sha256_hex, "rows": f.row_count}
                for f in self.files
            ],
            "previous_manifest_digest": self.previous_manifest_digest,
        }

    def digest(self) -> str:
        """SHA-256 (hex) of the body's canonical JSON: sorted keys, no spaces, ASCII."""
        return hashlib.sha256(canonical_json(self.body())).hexdigest()

    def to_json(self) -> bytes:
        document = self.body()
        document["digest"] = self.digest()
        return canonical_json(document) + b"\n"


def canonical_json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def manifest_of_json(document: dict[str, Any]) -> tuple[Manifest, str]:
    """A manifest and the digest it states; KeyError, TypeError or ValueError when malformed."""
    files = tuple(
        FileEntry(str(f["name"]), int(f["bytes"]), str(f["sha256"]), int(f["rows"]))
        for f in document["files"]
    )
    manifest = Manifest(
        int(document["shard"]),
        int(document["first_block"]),
        int(document["last_block"]),
        bytes.fromhex(document["first_previous_hash"]),
        bytes.fromhex(document["last_hash"]),
        int(document["block_count"]),
        int(document["account_count"]),
        int(document["transaction_count"]),
        int(document["posting_count"]),
        int(document["closure_count"]),
        files,
        str(document["previous_manifest_digest"]),
        str(document["format"]),
    )
    return manifest, str(document["digest"])


SEGMENT_PREFIX: Final = "segment-"


def segment_name(shard: int, first_block: int, last_block: int) -> str:
    """A segment's directory name: zero-padded, so names sort in journal order."""
    return f"{SEGMENT_PREFIX}{shard:04d}-{first_block:016d}-{last_block:016d}"
