"""Reads across hot and cold history: a shard's records wherever they lie (docs/design.md,
"Cold history").

A block is cold when a cold_segments row covers it: its postings and (most of) its
transactions rows have left PostgreSQL and its records are read from its segment, under the
shard's directory of segments. What stays hot of a cold block is what can still change or what
slot moves look up by block: a transaction whose state is not the one its block recorded (a
resolved hold, a reversed transfer), a pending hold, the system's records (`~` ids); a cold
transaction that changes later is written hot again ("revived", block_sequence 0). So:

- a transaction by id is its hot row when there is one, else its cold record (found through
  the segments' id hashes), whose state is the one its block recorded;
- an account's postings are those of the segments up to the horizon (the first hot posting
  sequence), then the hot rows from it: each read takes the horizon in the same statement as
  its hot rows, so an archive committing meanwhile (segment row and deletions in one
  transaction) never makes a read miss or repeat a posting.

The segments are immutable once their row is committed; a ColdHistory keeps their rows and
opened files in memory (the rows only grow).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import pyarrow as pa

from core.model import Posting, TransactionState
from core.store.cold.catalog import (
    ENTRY_COLUMNS,
    ColdEntry,
    cold_entries,
    entry_of,
    id_hash,
    shard_directory,
)
from core.store.cold.format import MANIFEST_NAME, ColdBlock, Manifest, SegmentError
from core.store.cold.read import POSTING_READ_COUNT_MAX, Segment
from core.store.cold.store import ObjectStore, fetch_file
from core.store.cold.verify import Finding, read_manifest
from core.store.history import ColdHistoryError
from core.store.shard import (
    TRANSACTION_COLUMNS,
    posting_from_row,
    transaction_from_row,
)

Connection = Any  # asyncpg.Connection or a pool
_T = TypeVar("_T")

# Opened segments kept (each holds its files' footers).
SEGMENT_CACHE_COUNT: Final = 64
# The prefix of a slot move's move-out postings, which balance-at passes over (see
# core.store.shard.posting_at).
_MOVE_OUT_PREFIX: Final = "~moveout/"


# The hot postings of an account after a sequence, with the horizon in the same statement (one
# snapshot): h.hot_from is the first posting sequence still hot.
_POSTINGS_SQL: Final = """
WITH h AS (SELECT coalesce(max(next_posting_sequence), 1) AS hot_from FROM cold_segments)
SELECT h.hot_from, p.*
FROM h LEFT JOIN LATERAL (
    SELECT * FROM postings
    WHERE account_id = $1 AND sequence > greatest($2::bigint, h.hot_from - 1)
      AND timestamp_ns >= $3::bigint AND ($4::bigint = 0 OR timestamp_ns < $4::bigint)
    ORDER BY sequence LIMIT $5
) p ON true
ORDER BY p.sequence
"""

_POSTING_AT_SQL: Final = """
WITH h AS (SELECT coalesce(max(next_posting_sequence), 1) AS hot_from FROM cold_segments)
SELECT h.hot_from, p.*
FROM h LEFT JOIN LATERAL (
    SELECT * FROM postings
    WHERE account_id = $1 AND timestamp_ns <= $2 AND sequence >= h.hot_from
      AND transaction_id NOT LIKE '~moveout/%'
    ORDER BY sequence DESC LIMIT 1
) p ON true
"""

_HOT_TRANSACTIONS_SQL: Final = f"""
SELECT {", ".join(TRANSACTION_COLUMNS)} FROM transactions WHERE id = ANY($1::text[])
UNION ALL
SELECT {", ".join(TRANSACTION_COLUMNS)} FROM moved_transactions WHERE id = ANY($1::text[])
"""

_COLD_CANDIDATES_SQL: Final = f"""
SELECT {ENTRY_COLUMNS}, array(SELECT unnest(id_hashes) INTERSECT SELECT unnest($1::bigint[]))
    AS matched
FROM cold_segments WHERE id_hashes && $1::bigint[] ORDER BY last_block
"""


class ColdHistory:
    """A shard's cold history under a cluster's segments root (root/shard-N, as the archiver
    writes it), read together with its database. Given an object store (the segments' home),
    root is a cache: a file a read needs and root lacks is fetched from the store first, one
    file at a time, its SHA-256 checked against its manifest (the manifest's digest against
    the one recorded in cold_segments) before it is renamed into place."""

    def __init__(self, root: Path, shard: int, store: ObjectStore | None = None) -> None:
        self.root = root
        self.shard = shard
        self.store = store
        self.directory = shard_directory(root, shard)
        self._entries: list[ColdEntry] = []
        self._segments: OrderedDict[str, Segment] = OrderedDict()

    # ---- the segments ----

    async def entries(
        self, connection: Connection, hot_from: int, timeout_s: float
    ) -> list[ColdEntry]:
        """The cold segments up to the horizon a read saw (hot_from: the first hot posting
        sequence); read again from the database only when that horizon is past the known."""
        known = self._entries[-1].next_posting_sequence if self._entries else 1
        if hot_from > known:
            self._entries = await cold_entries(connection, timeout_s)
        return [e for e in self._entries if e.next_posting_sequence <= hot_from]

    async def cold_blocks(
        self, connection: Connection, after: int, last: int, timeout_s: float
    ) -> list[ColdBlock]:
        """The cold blocks with sequence in (after, last], in order, with their records as
        their segments hold them (verified when written; the audit verifies them again). A
        range past the last cold block ends there: the rest is hot."""
        self._entries = await cold_entries(connection, timeout_s)
        asks = [e for e in self._entries if e.last_block > after and e.first_block <= last]
        return await self._read(self._read_blocks, asks, after, last)

    def _read_blocks(self, entries: list[ColdEntry], after: int, last: int) -> list[ColdBlock]:
        blocks: list[ColdBlock] = []
        for entry in entries:
            blocks.extend(self.segment(entry).blocks(after + 1, last))
        return blocks

    async def check(self, connection: Connection, timeout_s: float) -> None:
        """Refuse a directory that is not the database's cold history: every segment its
        cold_segments rows record must be there with the manifest recorded (its digest)."""
        entries = await cold_entries(connection, timeout_s)
        where = self.directory if self.store is None else self.store
        for entry in entries:
            try:
                manifest, findings = await self._read(self._manifest_of, entry)
            except (SegmentError, FileNotFoundError) as error:
                manifest, findings = None, [Finding("manifest_missing", str(error))]
            except OSError as error:  # a store not reached: refused too, it cannot be checked
                raise ColdHistoryError(
                    f"cold segment {entry.name} cannot be checked: {error}"
                ) from error
            if manifest is None or manifest.digest() != entry.manifest_digest:
                why = findings[0].message if findings else "its manifest is another segment's"
                raise ColdHistoryError(
                    f"cold segment {entry.name} (blocks {entry.first_block} to "
                    f"{entry.last_block}) is not as recorded under {where}: {why}"
                )
        self._entries = entries

    def _manifest_of(self, entry: ColdEntry) -> tuple[Manifest | None, list[Finding]]:
        path = self.directory / entry.name
        if self.store is not None:
            fetch_file(
                self.store, self.shard, path, MANIFEST_NAME, manifest_digest=entry.manifest_digest
            )
        return read_manifest(path)

    async def _read(self, read: Callable[..., _T], *args: Any) -> _T:
        """A read of the segments, off the event loop; a file that does not read as its format
        says is a SegmentError naming the directory (an OSError stays one: a missing mount is
        retryable, a corrupt file is not)."""
        try:
            return await asyncio.to_thread(read, *args)
        except SegmentError:
            raise
        except (pa.ArrowException, ValueError, KeyError, IndexError) as error:
            raise SegmentError(f"cold segments under {self.directory}: {error!r}") from error

    def segment(self, entry: ColdEntry) -> Segment:
        name = entry.name
        found = self._segments.pop(name, None)
        if found is None:
            found = Segment(self.directory / name, self._fetcher(entry))
        self._segments[name] = found
        while len(self._segments) > SEGMENT_CACHE_COUNT:
            _, oldest = self._segments.popitem(last=False)
            oldest.close()
        return found

    def _fetcher(self, entry: ColdEntry) -> Callable[[str, str], Path] | None:
        """With a store, what brings a file of the entry's segment into the cache: its manifest
        checked against the digest recorded, a Parquet file against the manifest."""
        store = self.store
        if store is None:
            return None

        def fetch(file: str, sha256_hex: str) -> Path:
            return fetch_file(
                store,
                self.shard,
                self.directory / entry.name,
                file,
                sha256_hex=sha256_hex,
                manifest_digest=entry.manifest_digest,
            )

        return fetch

    def close(self) -> None:
        for segment in self._segments.values():
            segment.close()
        self._segments.clear()

    # ---- reads ----

    async def load_transactions(
        self, connection: Connection, ids: Iterable[str], timeout_s: float
    ) -> dict[str, TransactionState]:
        """By id: the hot row (transactions, moved_transactions) when there is one, else the
        record a cold segment holds, as its block recorded it. A drop-in for
        core.store.shard.load_transactions."""
        wanted = list(dict.fromkeys(ids))
        rows = await connection.fetch(_HOT_TRANSACTIONS_SQL, wanted, timeout=timeout_s)
        found = {row["id"]: transaction_from_row(row) for row in rows}
        missing = [i for i in wanted if i not in found]
        if missing:
            found.update(await self.cold_transactions(connection, missing, timeout_s))
        return found

    async def cold_transactions(
        self, connection: Connection, ids: Sequence[str], timeout_s: float
    ) -> dict[str, TransactionState]:
        """The records of these ids that cold segments hold (one index probe; a segment is
        opened only for ids whose hash it holds)."""
        by_hash: dict[int, list[str]] = {}
        for transaction_id in ids:
            by_hash.setdefault(id_hash(transaction_id), []).append(transaction_id)
        rows = await connection.fetch(_COLD_CANDIDATES_SQL, list(by_hash), timeout=timeout_s)
        if not rows:
            return {}
        asks = [(entry_of(row), [i for h in row["matched"] for i in by_hash[h]]) for row in rows]
        return await self._read(self._read_transactions, asks)

    def _read_transactions(
        self, asks: list[tuple[ColdEntry, list[str]]]
    ) -> dict[str, TransactionState]:
        found: dict[str, TransactionState] = {}
        for entry, wanted in asks:
            segment = self.segment(entry)
            for transaction_id in wanted:
                held = segment.transaction(transaction_id)
                if held is not None:
                    found[transaction_id] = held[0].state()
        return found

    async def list_postings(
        self,
        connection: Connection,
        account_id: str,
        after_sequence: int,
        limit: int,
        from_ns: int,
        to_ns: int,
        timeout_s: float,
    ) -> list[tuple[Posting, int]]:
        """An account's postings after a sequence in [from_ns, to_ns) (to_ns 0: no end), with
        the block each was committed in, at most limit: the cold segments' first, then the hot
        rows. A drop-in for core.store.shard.list_postings."""
        rows = await connection.fetch(
            _POSTINGS_SQL, account_id, after_sequence, from_ns, to_ns, limit, timeout=timeout_s
        )
        hot_from = rows[0]["hot_from"]
        hot = [
            (posting_from_row(r), r["block_sequence"]) for r in rows if r["sequence"] is not None
        ]
        if after_sequence + 1 >= hot_from:
            return hot
        entries = await self.entries(connection, hot_from, timeout_s)
        cold = await self._read(
            self._cold_postings, entries, account_id, after_sequence, limit, from_ns, to_ns
        )
        return (cold + hot)[:limit]

    def _cold_postings(
        self,
        entries: list[ColdEntry],
        account_id: str,
        after_sequence: int,
        limit: int,
        from_ns: int,
        to_ns: int,
    ) -> list[tuple[Posting, int]]:
        found: list[tuple[Posting, int]] = []
        for entry in entries:
            if entry.next_posting_sequence <= after_sequence + 1:
                continue
            segment = self.segment(entry)
            after = after_sequence
            while len(found) < limit:
                read = segment.account_postings(account_id, after, POSTING_READ_COUNT_MAX)
                if not read:
                    break
                after = read[-1][0].sequence
                for posting, block in read:
                    if to_ns and posting.timestamp_ns >= to_ns:
                        return found
                    if posting.timestamp_ns >= from_ns:
                        found.append((posting, block))
                        if len(found) == limit:
                            return found
            if len(found) == limit:
                break
        return found

    async def posting_at(
        self, connection: Connection, account_id: str, at_ns: int, timeout_s: float
    ) -> Posting | None:
        """The account's last posting at or before at_ns but a move-out (as
        core.store.shard.posting_at): the hot rows', else the latest cold segment's that has
        one."""
        row = await connection.fetchrow(_POSTING_AT_SQL, account_id, at_ns, timeout=timeout_s)
        if row["sequence"] is not None:
            return posting_from_row(row)
        hot_from = row["hot_from"]
        if hot_from <= 1:
            return None
        entries = await self.entries(connection, hot_from, timeout_s)
        return await self._read(self._cold_posting_at, entries, account_id, at_ns)

    def _cold_posting_at(
        self, entries: list[ColdEntry], account_id: str, at_ns: int
    ) -> Posting | None:
        for entry in reversed(entries):
            found = self.segment(entry).last_posting_at(
                account_id, at_ns, excluding_prefix=_MOVE_OUT_PREFIX
            )
            if found is not None:
                return found
        return None
