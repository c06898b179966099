"""Writing a segment: check the blocks, write under a temporary name, verify, rename.

A crash at any point leaves either no segment or a whole verified one: the files are written
and fsynced under a hidden temporary name in the segments' directory, read back and verified
there, and only then renamed to the segment's name (one rename of a directory, atomic on a
POSIX file system) and the directory fsynced. A temporary name left by a crash is never read
as a segment and is removed by the next write into that directory (one archiver writes a
shard's directory at a time).
"""

from __future__ import annotations

import itertools
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import pyarrow.parquet as pq

from core import journal
from core.store.cold.format import (
    DELTA_COLUMNS,
    FILE_NAMES,
    MANIFEST_NAME,
    ROW_GROUP_ROW_COUNT,
    SCHEMAS,
    SEGMENT_BLOCK_COUNT_MAX,
    SEGMENT_ROW_COUNT_MAX,
    SORT_KEYS,
    ZSTD_LEVEL,
    ColdBlock,
    FileEntry,
    Manifest,
    SegmentError,
    segment_name,
)
from core.store.cold.read import Segment
from core.store.cold.tables import to_tables
from core.store.cold.verify import sha256_hex, verify_segment

TEMPORARY_PREFIX: Final = ".tmp-"


def check_blocks(shard: int, blocks: Sequence[ColdBlock], previous: Manifest | None) -> None:
    """SegmentError unless the blocks are a contiguous, correctly hashed run of the chain that
    continues the previous segment (or starts the shard's journal when there is none)."""
    if not blocks:
        raise SegmentError("a segment holds at least one block")
    if len(blocks) > SEGMENT_BLOCK_COUNT_MAX:
        raise SegmentError(
            f"{len(blocks)} blocks: a segment holds {SEGMENT_BLOCK_COUNT_MAX} at most"
        )
    row_count = sum(block.row_count() for block in blocks)
    if row_count > SEGMENT_ROW_COUNT_MAX:
        raise SegmentError(f"{row_count} rows: a segment holds {SEGMENT_ROW_COUNT_MAX} at most")
    _check_start(shard, blocks[0], previous)
    for before, block in itertools.pairwise(blocks):
        header = block.header
        if header.sequence != before.header.sequence + 1:
            raise SegmentError(
                f"blocks are not contiguous: {header.sequence} after {before.header.sequence}"
            )
        if header.previous_hash != before.header.hash:
            raise SegmentError(
                f"block {header.sequence} does not chain to block {header.sequence - 1}"
            )
    for block in blocks:
        _check_block(block)


def _check_start(shard: int, first: ColdBlock, previous: Manifest | None) -> None:
    header = first.header
    if previous is None:
        if header.sequence != 1 or header.previous_hash != journal.GENESIS_HASH:
            raise SegmentError(
                f"a shard's first segment starts at block 1 on the genesis hash, not at block "
                f"{header.sequence}: give the previous segment's manifest"
            )
        return
    if previous.shard != shard:
        raise SegmentError(f"the previous segment is shard {previous.shard}'s, not shard {shard}'s")
    if header.sequence != previous.last_block + 1:
        raise SegmentError(
            f"block {header.sequence} does not follow the previous segment's last block "
            f"{previous.last_block}"
        )
    if header.previous_hash != previous.last_hash:
        raise SegmentError(
            f"block {header.sequence} does not chain to the previous segment's last hash"
        )


def _check_block(block: ColdBlock) -> None:
    header = block.header
    if block.recomputed_hash() != header.hash:
        raise SegmentError(f"block {header.sequence}'s records do not hash to its hash")
    # A block's postings are the sequence range its header ends at (core.store.stream relies
    # on it; so does the order of its P lines).
    first = header.next_posting_sequence - len(block.postings)
    sequences = [posting.sequence for posting in block.postings]
    if sequences != list(range(first, header.next_posting_sequence)):
        raise SegmentError(
            f"block {header.sequence}'s postings are not the sequences {first}.."
            f"{header.next_posting_sequence - 1} in order"
        )


def write_segment(
    directory: Path, shard: int, blocks: Sequence[ColdBlock], previous_manifest: Manifest | None
) -> Path:
    """Write the blocks as one segment in directory and return its path. Idempotent: a segment
    of the same range with the same content is left as it is; one with other content is a
    SegmentError (a segment is immutable)."""
    check_blocks(shard, blocks, previous_manifest)
    directory.mkdir(parents=True, exist_ok=True)
    remove_leftovers(directory)
    name = segment_name(shard, blocks[0].header.sequence, blocks[-1].header.sequence)
    final = directory / name
    previous_digest = previous_manifest.digest() if previous_manifest is not None else ""
    if final.exists():
        if _holds(final, blocks, previous_digest):
            return final
        raise SegmentError(f"segment {name} exists with other content (or does not verify)")
    temporary = directory / f"{TEMPORARY_PREFIX}{name}-{uuid.uuid4().hex}"
    temporary.mkdir()
    try:
        _write_files(temporary, shard, blocks, previous_digest)
        if not _holds(temporary, blocks, previous_digest):
            raise SegmentError(f"segment {name} does not read back as written")
        os.rename(temporary, final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _fsync_directory(directory)
    return final


def remove_leftovers(directory: Path) -> list[Path]:
    """Remove what a crashed write left (temporary names); the removed paths."""
    removed = []
    for path in sorted(directory.glob(f"{TEMPORARY_PREFIX}*")):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        _fsync_directory(directory)
    return removed


def _holds(path: Path, blocks: Sequence[ColdBlock], previous_digest: str) -> bool:
    """Whether the segment at path verifies and holds exactly these blocks."""
    if verify_segment(path, previous_digest):
        return False
    with Segment(path) as segment:
        return segment.blocks() == list(blocks)


def _write_files(
    temporary: Path, shard: int, blocks: Sequence[ColdBlock], previous_digest: str
) -> None:
    entries = []
    for name, table in to_tables(blocks).items():
        path = temporary / name
        sorting = [pq.SortingColumn(SCHEMAS[name].get_field_index(k)) for k in SORT_KEYS[name]]
        delta = DELTA_COLUMNS[name]
        pq.write_table(
            table,
            path,
            row_group_size=ROW_GROUP_ROW_COUNT,
            compression="zstd",
            compression_level=ZSTD_LEVEL,
            use_dictionary=[column for column in table.schema.names if column not in delta],
            column_encoding=dict.fromkeys(delta, "DELTA_BINARY_PACKED"),
            write_statistics=True,
            sorting_columns=sorting,
        )
        entries.append(
            FileEntry(name, path.stat().st_size, _fsync_and_digest(path), table.num_rows)
        )
    first, last = blocks[0].header, blocks[-1].header
    manifest = Manifest(
        shard,
        first.sequence,
        last.sequence,
        first.previous_hash,
        last.hash,
        len(blocks),
        sum(len(b.accounts) for b in blocks),
        sum(len(b.transactions) for b in blocks),
        sum(len(b.postings) for b in blocks),
        sum(len(b.closures) for b in blocks),
        tuple(sorted(entries, key=lambda entry: FILE_NAMES.index(entry.name))),
        previous_digest,
    )
    manifest_path = temporary / MANIFEST_NAME
    manifest_path.write_bytes(manifest.to_json())
    _fsync_and_digest(manifest_path)
    _fsync_directory(temporary)


def _fsync_and_digest(path: Path) -> str:
    """fsync the file and return its SHA-256 (hex), read back from the file."""
    with path.open("rb+") as file:
        os.fsync(file.fileno())
    return sha256_hex(path)


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
