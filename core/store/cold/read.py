"""Reading a segment, lazily: the manifest when opened, a file's footer when first read, then
only the row groups a read needs (their min/max statistics prune the others).

Reads answer from a segment as written and verified; they trust its files (verify_segment
checks them), but what contradicts itself (a block's rows against its header's counts) is a
SegmentError, never a wrong answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.journal import BlockHeader
from core.model import Posting
from core.store.cold.format import (
    FILE_NAMES,
    MANIFEST_NAME,
    SEGMENT_PREFIX,
    ColdBlock,
    ColdTransaction,
    Manifest,
    SegmentError,
)
from core.store.cold.tables import blocks_of, headers_of, posting_of, transaction_of
from core.store.cold.verify import read_manifest

# The most postings one history read returns (a page of the API is far smaller).
POSTING_READ_COUNT_MAX: Final = 10_000
# Brings one of a segment's files into its directory when it is not there (a node reading
# from an object store: core.store.cold.store.fetch_file), given the file's name and the
# SHA-256 its manifest states ("" for the manifest itself).
Fetch = Callable[[str, str], object]


def segment_paths(directory: Path) -> list[Path]:
    """The segments in directory, in journal order (their names sort so); what a crashed write
    left under a temporary name is not one of them."""
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.glob(f"{SEGMENT_PREFIX}*") if path.is_dir())


class Segment:
    """One segment directory, opened for reads."""

    def __init__(self, path: Path, fetch: Fetch | None = None) -> None:
        self.path = path
        self._fetch = fetch
        self._manifest: Manifest | None = None
        self._files: dict[str, Any] = {}

    def close(self) -> None:
        """Close the files opened so far (a later read opens them again)."""
        for file in self._files.values():
            file.close()
        self._files.clear()

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            if self._fetch is not None:
                self._fetch(MANIFEST_NAME, "")
            manifest, findings = read_manifest(self.path)
            if manifest is None or findings:
                problems = "; ".join(f.message for f in findings)
                raise SegmentError(f"segment {self.path.name}: {problems}")
            self._manifest = manifest
        return self._manifest

    def _file(self, name: str) -> Any:
        if name not in FILE_NAMES:
            raise KeyError(name)
        if name not in self._files:
            if self._fetch is not None:
                stated = {entry.name: entry.sha256_hex for entry in self.manifest.files}
                self._fetch(name, stated.get(name, ""))
            self._files[name] = pq.ParquetFile(self.path / name)
        return self._files[name]

    def _row_groups(self, name: str, column: str, low: Any, high: Any) -> Iterator[int]:
        """The row groups of the file whose statistics of column meet [low, high] (a group
        without statistics is read)."""
        file = self._file(name)
        index = file.schema_arrow.get_field_index(column)
        for group in range(file.metadata.num_row_groups):
            statistics = file.metadata.row_group(group).column(index).statistics
            if statistics is not None and statistics.has_min_max:
                if statistics.max < low or statistics.min > high:
                    continue
            yield group

    def _read(self, name: str, column: str, low: Any, high: Any) -> pa.Table:
        """The rows of the file with column in [low, high], from the groups that may hold them."""
        file = self._file(name)
        groups = list(self._row_groups(name, column, low, high))
        if not groups:
            return file.schema_arrow.empty_table()
        table = file.read_row_groups(groups)
        mask = pc.and_(pc.greater_equal(table[column], low), pc.less_equal(table[column], high))
        return table.filter(mask)

    def blocks(self, first: int | None = None, last: int | None = None) -> list[ColdBlock]:
        """The segment's blocks from first to last (default: all), with their records in the
        order their hashes cover."""
        manifest = self.manifest
        low = manifest.first_block if first is None else max(first, manifest.first_block)
        high = manifest.last_block if last is None else min(last, manifest.last_block)
        if low > high:
            return []
        tables = {
            name: self._read(
                name, "sequence" if name == "blocks.parquet" else "block_sequence", low, high
            )
            for name in FILE_NAMES
        }
        blocks = blocks_of(tables)
        for block, (_, counts) in zip(blocks, headers_of(tables["blocks.parquet"]), strict=True):
            held = (
                len(block.accounts),
                len(block.transactions),
                len(block.postings),
                len(block.closures),
            )
            if held != counts:
                raise SegmentError(
                    f"segment {self.path.name}: block {block.header.sequence} holds {held} "
                    f"records, its header says {counts}"
                )
        return blocks

    def headers(self) -> list[BlockHeader]:
        """Every block's header, in block order, from the blocks file alone."""
        return [header for header, _ in headers_of(self._file("blocks.parquet").read())]

    def postings_after(self, account_id: str, after_sequence: int, limit: int) -> list[Posting]:
        """The account's postings with sequence > after_sequence, ascending, at most limit
        (a history page: the next page starts after the last one's sequence)."""
        return [p for p, _ in self.account_postings(account_id, after_sequence, limit)]

    def account_postings(
        self, account_id: str, after_sequence: int, limit: int
    ) -> list[tuple[Posting, int]]:
        """As postings_after, each with the sequence of the block it was committed in."""
        if not 1 <= limit <= POSTING_READ_COUNT_MAX:
            raise ValueError(f"limit {limit}: between 1 and {POSTING_READ_COUNT_MAX}")
        found: list[tuple[Posting, int]] = []
        file = self._file("postings.parquet")
        for group in self._row_groups("postings.parquet", "account_id", account_id, account_id):
            table = file.read_row_group(group)
            mask = pc.and_(
                pc.equal(table["account_id"], account_id),
                pc.greater(table["sequence"], after_sequence),
            )
            rows = table.filter(mask).slice(0, limit - len(found)).to_pylist()
            found.extend((posting_of(row), int(row["block_sequence"])) for row in rows)
            if len(found) == limit:
                break
        return found

    def last_posting_at(
        self, account_id: str, at_ns: int, excluding_prefix: str = ""
    ) -> Posting | None:
        """The account's last posting at or before at_ns (its counters after it are the
        balance at that time), or None when the segment has none; with excluding_prefix, the
        last whose transaction id does not start with it. Within a shard timestamps never
        decrease along the sequence, so the last group holding one has the answer."""
        file = self._file("postings.parquet")
        groups = list(self._row_groups("postings.parquet", "account_id", account_id, account_id))
        for group in reversed(groups):
            table = file.read_row_group(group)
            mask = pc.and_(
                pc.equal(table["account_id"], account_id),
                pc.less_equal(table["timestamp_ns"], at_ns),
            )
            if excluding_prefix:
                mask = pc.and_(
                    mask, pc.invert(pc.starts_with(table["transaction_id"], excluding_prefix))
                )
            matching = table.filter(mask)
            if matching.num_rows:
                return posting_of(matching.slice(matching.num_rows - 1).to_pylist()[0])
        return None

    def transaction_ids(self) -> list[str]:
        """Every transaction id the segment holds, in id order."""
        table = self._file("transactions.parquet").read(columns=["id"])
        return [str(i) for i in table["id"].to_pylist()]

    def transaction(self, transaction_id: str) -> tuple[ColdTransaction, int] | None:
        """The transaction with this id as its block recorded it, and that block's sequence."""
        table = self._read("transactions.parquet", "id", transaction_id, transaction_id)
        if not table.num_rows:
            return None
        row = table.to_pylist()[0]
        return transaction_of(row), int(row["block_sequence"])
