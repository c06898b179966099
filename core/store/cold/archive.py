"""A shard database's journal written out as cold segments, and segments checked against it.

`archive` continues a directory's chain of segments from the shard's journal in PostgreSQL:
the blocks after the last one a segment holds, created before a cutoff, read as the change
stream reads them (core.store.stream.read_page, with journal_blocks' full header), cut into
segments of at most a number of blocks and rows, each written and verified by write_segment.
`remove_archived` then moves the segments written out of the database: each in turn, verified
again and held against the database's blocks, gets its cold_segments row in the transaction
that deletes the rows it holds (docs/design.md, "Cold history"), so a kill -9 at any step
leaves either the rows or the row and the segment; `archive_and_remove` is both, the archiver's
one pass.

`compare` is the second witness: every block a segment holds whose row is still in the
database must have the database's hash, so a segment (or a database) altered after the fact is
found even when it is consistent in itself.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from core import signing
from core.store import stream
from core.store.cold.catalog import cold_entries, id_hash, last_cold_block, shard_directory
from core.store.cold.format import (
    MANIFEST_NAME,
    SEGMENT_BLOCK_COUNT_MAX,
    SEGMENT_ROW_COUNT_MAX,
    ColdBlock,
    Manifest,
    SegmentError,
    from_streamed,
)
from core.store.cold.read import Segment, segment_paths
from core.store.cold.sizes import (
    BLOCKS_PER_SEGMENT_DEFAULT as BLOCKS_PER_SEGMENT_DEFAULT,  # re-exported
)
from core.store.cold.store import ObjectStore, download_segment, stored_already, upload_file
from core.store.cold.verify import Finding, read_manifest, verify_chain, verify_segment
from core.store.cold.write import TEMPORARY_PREFIX, remove_leftovers, write_segment
from core.store.shard import header_from_row

Connection = Any  # asyncpg.Connection

# Serialises archivers of one shard database (a second waits, then finds the work done).
ARCHIVE_LOCK_KEY: Final = 7_471_003
# Held for an archiver's whole pass (a session lock): one archiver a shard at a time, so one
# never removes what another is writing.
ARCHIVER_LOCK_KEY: Final = 7_471_004
# A named step of an archiver's pass ("segment_written"; with an object store "file_uploaded"
# after each Parquet file is put and read back, "segment_uploaded" after its manifest is;
# "rows_deleted" before that transaction commits, "segment_recorded" after), awaited there:
# the archiver's process arms its failpoints on them (tests kill it at each step).
Step = Callable[[str], Awaitable[None]]


async def _no_step(_: str) -> None:
    return None


_HEADERS_SQL: Final = """
SELECT sequence, previous_hash, hash, epoch, created_at_ns, next_posting_sequence,
       last_timestamp_ns, key_id, signature
FROM journal_blocks WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence
"""


@dataclass(frozen=True, slots=True)
class ArchiveRun:
    shard: int
    written: list[Path]
    last_block: int  # the last block the directory's segments hold now (0: none)
    head_block: int  # the journal's last block when the run began


def last_manifest(directory: Path) -> Manifest | None:
    paths = segment_paths(directory)
    return Segment(paths[-1]).manifest if paths else None


async def shard_of(connection: Connection, timeout_s: float) -> int:
    """The shard the database belongs to (0: no node recorded one yet, a single node's)."""
    value = await connection.fetchval(
        "SELECT shard_id FROM shard_identity WHERE id = 1", timeout=timeout_s
    )
    return int(value or 0)


async def archive(
    connection: Connection,
    root: Path,
    *,
    created_before_ns: int,
    blocks_per_segment: int = BLOCKS_PER_SEGMENT_DEFAULT,
    timeout_s: float = 60.0,
    step: Step = _no_step,
) -> ArchiveRun:
    """Write the shard's blocks after its last segment under root (in shard_directory) and
    created before
    created_before_ns as new segments (none when there are none yet). A segment already
    written for the same blocks is kept (write_segment is idempotent); a directory whose last
    segment is not this database's journal is a SegmentError before anything is written."""
    if not 1 <= blocks_per_segment <= SEGMENT_BLOCK_COUNT_MAX:
        raise ValueError(f"blocks per segment must be 1 to {SEGMENT_BLOCK_COUNT_MAX}")
    shard = await shard_of(connection, timeout_s)
    directory = shard_directory(root, shard)
    previous = last_manifest(directory)
    if previous is not None:
        await _check_continues(connection, previous, shard, timeout_s)
    after = previous.last_block if previous is not None else 0
    head = await stream.head_sequence(connection, timeout_s)
    written: list[Path] = []
    while True:
        blocks = await _blocks(
            connection, after, head, created_before_ns, blocks_per_segment, timeout_s
        )
        if not blocks:
            return ArchiveRun(shard, written, after, head)
        written.append(write_segment(directory, shard, blocks, previous))
        await step("segment_written")
        previous = Segment(written[-1]).manifest
        after = previous.last_block


async def _check_continues(
    connection: Connection, previous: Manifest, shard: int, timeout_s: float
) -> None:
    if previous.shard != shard:
        raise SegmentError(
            f"the segments are shard {previous.shard}'s and the database is shard {shard}'s"
        )
    stored = await connection.fetchval(
        "SELECT hash FROM journal_blocks WHERE sequence = $1",
        previous.last_block,
        timeout=timeout_s,
    )
    if stored is None or bytes(stored) != previous.last_hash:
        raise SegmentError(
            f"the last segment ends at block {previous.last_block}, which the database "
            + ("does not have" if stored is None else "has with another hash")
        )


async def _blocks(
    connection: Connection,
    after: int,
    head: int,
    created_before_ns: int,
    block_count_max: int,
    timeout_s: float,
) -> list[ColdBlock]:
    blocks: list[ColdBlock] = []
    row_count = 0
    while len(blocks) < block_count_max and after < head:
        page = await stream.read_page(connection, after, head, timeout_s)
        if not page.blocks:
            break
        rows = await connection.fetch(
            _HEADERS_SQL, after, page.blocks[-1].sequence, timeout=timeout_s
        )
        headers = {row["sequence"]: header_from_row(row) for row in rows}
        for streamed in page.blocks:
            if streamed.created_at_ns >= created_before_ns or len(blocks) == block_count_max:
                return blocks
            block = from_streamed(headers[streamed.sequence], streamed)
            if blocks and row_count + block.row_count() > SEGMENT_ROW_COUNT_MAX:
                return blocks
            blocks.append(block)
            row_count += block.row_count()
            after = streamed.sequence
    return blocks


async def compare(connection: Connection, paths: list[Path], timeout_s: float) -> list[Finding]:
    """Findings for every block a segment holds whose hash differs from the database's row of
    it (blocks the database no longer has are not compared), and for segments of another
    shard."""
    shard = await shard_of(connection, timeout_s)
    findings: list[Finding] = []
    for path in paths:
        manifest, _ = read_manifest(path)
        if manifest is None:
            continue  # verify_chain names it
        if manifest.shard != shard:
            findings.append(
                Finding(
                    "segment_shard_mismatch",
                    f"segment of shard {manifest.shard}, database of shard {shard}",
                    segment=path.name,
                )
            )
            continue
        stored = {
            row["sequence"]: bytes(row["hash"])
            for row in await connection.fetch(
                "SELECT sequence, hash FROM journal_blocks WHERE sequence BETWEEN $1 AND $2",
                manifest.first_block,
                manifest.last_block,
                timeout=timeout_s,
            )
        }
        with Segment(path) as segment:
            held = segment.headers()
        for mine in held:
            theirs = stored.get(mine.sequence)
            if theirs is not None and theirs != mine.hash:
                findings.append(
                    Finding(
                        "segment_database_mismatch",
                        f"block {mine.sequence} has hash {mine.hash.hex()[:16]} in the segment "
                        f"and {theirs.hex()[:16]} in the database",
                        mine.sequence,
                        segment=path.name,
                    )
                )
    return findings


async def verify_shard(
    connection: Connection | None,
    root: Path,
    shard: int,
    timeout_s: float,
    verifier: signing.Verifier | None = None,
) -> tuple[list[Path], list[Finding]]:
    """A shard's segments under root and what is wrong with them: each segment and each link
    (verify_chain, with the blocks' signatures given a verifier) and, given its database, every
    block held against it (compare)."""
    paths = segment_paths(shard_directory(root, shard))
    findings = verify_chain(paths, verifier)
    if connection is not None and paths:
        findings += await compare(connection, paths, timeout_s)
    return paths, findings


@dataclass(frozen=True, slots=True)
class Removed:
    """A segment moved out of the database: its blocks and the rows deleted."""

    name: str
    first_block: int
    last_block: int
    postings_deleted: int
    transactions_deleted: int


# What stays hot of a cold block (docs/design.md, "Cold history"): the rows of slot moves'
# blocks (the moves' audit and move-outs read them by block), the system's records (`~` ids),
# and every transaction whose state is not the one its block created it in (created POSTED and
# never resolved or reversed is the only state deleted: holds stay until resolved and after).
_MOVE_BLOCKS_SQL: Final = """
SELECT block_sequence FROM slot_moves WHERE block_sequence BETWEEN $1 AND $2
UNION SELECT block_sequence FROM move_pages WHERE block_sequence BETWEEN $1 AND $2
"""
_DELETE_POSTINGS_SQL: Final = """
DELETE FROM postings WHERE sequence >= $1 AND sequence < $2
  AND NOT block_sequence = ANY($3::bigint[])
"""
_DELETE_TRANSACTIONS_SQL: Final = """
DELETE FROM transactions WHERE block_sequence BETWEEN $1 AND $2
  AND NOT block_sequence = ANY($3::bigint[])
  AND status = 1 AND resolved_by_id = '' AND reversed_by_id = '' AND expires_at_ns = 0
  AND id NOT LIKE '~%'
"""


async def remove_archived(
    connection: Connection,
    root: Path,
    *,
    verifier: signing.Verifier | None = None,
    timeout_s: float = 60.0,
    step: Step = _no_step,
    store: ObjectStore | None = None,
) -> list[Removed]:
    """Move the segments written under root and not yet recorded out of the database, in
    journal order: each verified (with the blocks' signatures given a verifier) and held
    against the database's blocks, then recorded and its rows deleted in one transaction. A
    segment that does not verify, or does not continue the recorded ones, is a SegmentError
    and nothing of it is removed. Given an object store, each is put there (and read back)
    before it is recorded, and a recorded one's staging copy is pruned (prune_staging)."""
    shard = await shard_of(connection, timeout_s)
    directory = shard_directory(root, shard)
    entries = await cold_entries(connection, timeout_s)
    recorded = entries[-1].last_block if entries else 0
    digest = entries[-1].manifest_digest if entries else ""
    removed: list[Removed] = []
    for path in segment_paths(directory):
        manifest, _ = read_manifest(path)
        if manifest is not None and manifest.last_block <= recorded:
            continue
        if manifest is None or manifest.first_block != recorded + 1:
            raise SegmentError(f"segment {path.name} does not continue block {recorded}")
        findings = verify_segment(path, digest, verifier)
        findings += await compare(connection, [path], timeout_s)
        if findings:
            raise SegmentError(f"segment {path.name}: {findings[0].message}")
        if store is not None:
            await _upload(store, shard, path, step)
        with Segment(path) as segment:
            done = await _remove(connection, segment, path.name, timeout_s, step)
        if done is None:  # another archiver recorded it meanwhile
            return removed
        await step("segment_recorded")
        removed.append(done)
        recorded, digest = manifest.last_block, manifest.digest()
        if store is not None:
            prune_staging(directory, recorded)
    return removed


async def _upload(store: ObjectStore, shard: int, path: Path, step: Step) -> None:
    """The segment into the store, its files first (each read back against the manifest), its
    manifest last: the store has the segment iff it has the manifest, so a kill mid-way leaves
    files that the next pass puts again. Blocking calls, off the event loop."""
    if await asyncio.to_thread(stored_already, store, shard, path):
        return
    for entry in Segment(path).manifest.files:
        await asyncio.to_thread(upload_file, store, shard, path, entry.name)
        await step("file_uploaded")
    await asyncio.to_thread(upload_file, store, shard, path, MANIFEST_NAME)
    await step("segment_uploaded")


def prune_staging(directory: Path, recorded: int) -> None:
    """Remove the staging copies of recorded segments (their home is the store now), all but
    the last one's manifest.json: what the next pass continues the chain from (its last block,
    hash and digest), read locally as without a store. Killed mid-way, the next pass prunes
    again."""
    recorded_paths = []
    for path in segment_paths(directory):
        manifest, _ = read_manifest(path)
        if manifest is not None and manifest.last_block <= recorded:
            recorded_paths.append(path)
    for path in recorded_paths[:-1]:
        shutil.rmtree(path)
    if recorded_paths:
        for file in recorded_paths[-1].iterdir():
            if file.name != MANIFEST_NAME:
                file.unlink()


async def _restore_staging(
    connection: Connection, store: ObjectStore, directory: Path, shard: int, timeout_s: float
) -> None:
    """A staging directory with no segment (new, or lost with its pod) gets the store's last
    one back, whole (it may be the one a killed pass put but did not record): the chain goes on
    from it, never from block 1 again."""
    if segment_paths(directory):
        return
    names = await asyncio.to_thread(store.segment_names, shard)
    if names:
        await asyncio.to_thread(_restore, store, shard, directory, names[-1])
        entries = await cold_entries(connection, timeout_s)
        prune_staging(directory, entries[-1].last_block if entries else 0)


def _restore(store: ObjectStore, shard: int, directory: Path, name: str) -> None:
    partial = directory / f"{TEMPORARY_PREFIX}restoring-{name}"  # remove_leftovers takes it
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    download_segment(store, shard, name, partial)
    (partial / name).rename(directory / name)
    shutil.rmtree(partial)


async def _remove(
    connection: Connection, segment: Segment, name: str, timeout_s: float, step: Step
) -> Removed | None:
    manifest = segment.manifest
    hashes = sorted({id_hash(i) for i in segment.transaction_ids()})
    async with connection.transaction():
        await connection.execute(
            "SELECT pg_advisory_xact_lock($1)", ARCHIVE_LOCK_KEY, timeout=timeout_s
        )
        recorded = await last_cold_block(connection, timeout_s)
        if recorded != manifest.first_block - 1:
            return None
        first = await connection.fetchrow(
            "SELECT next_posting_sequence - posting_count AS first_posting FROM journal_blocks "
            "WHERE sequence = $1",
            manifest.first_block,
            timeout=timeout_s,
        )
        last_next = await connection.fetchval(
            "SELECT next_posting_sequence FROM journal_blocks WHERE sequence = $1",
            manifest.last_block,
            timeout=timeout_s,
        )
        if first is None or last_next is None:
            raise SegmentError(f"segment {name}: the database has not its blocks")
        span = (manifest.first_block, manifest.last_block)
        kept = [
            r["block_sequence"]
            for r in await connection.fetch(_MOVE_BLOCKS_SQL, *span, timeout=timeout_s)
        ]
        await connection.execute(
            "INSERT INTO cold_segments (last_block, first_block, name, manifest_digest, "
            "first_posting_sequence, next_posting_sequence, id_hashes) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7::bigint[])",
            manifest.last_block,
            manifest.first_block,
            name,
            manifest.digest(),
            first["first_posting"],
            last_next,
            hashes,
            timeout=timeout_s,
        )
        postings = await connection.execute(
            _DELETE_POSTINGS_SQL, first["first_posting"], last_next, kept, timeout=timeout_s
        )
        transactions = await connection.execute(
            _DELETE_TRANSACTIONS_SQL, *span, kept, timeout=timeout_s
        )
        await step("rows_deleted")
    return Removed(name, *span, int(postings.split()[-1]), int(transactions.split()[-1]))


async def archive_and_remove(
    connection: Connection,
    root: Path,
    *,
    created_before_ns: int,
    blocks_per_segment: int = BLOCKS_PER_SEGMENT_DEFAULT,
    verifier: signing.Verifier | None = None,
    timeout_s: float = 60.0,
    step: Step = _no_step,
    store: ObjectStore | None = None,
) -> tuple[ArchiveRun, list[Removed]]:
    """The archiver's pass: write the blocks created before the cutoff as segments, then move
    every segment written out of the database. One archiver a shard: another one running is a
    SegmentError; what a killed one left half-written (temporary names) is removed first.
    Given an object store, root is the staging directory: segments are written and verified
    there, put into the store, then recorded, and pruned from root once recorded."""
    taken = await connection.fetchval(
        "SELECT pg_try_advisory_lock($1)", ARCHIVER_LOCK_KEY, timeout=timeout_s
    )
    if not taken:
        raise SegmentError("another archiver is running on this shard's database")
    try:
        shard = await shard_of(connection, timeout_s)
        directory = shard_directory(root, shard)
        if directory.is_dir():
            remove_leftovers(directory)
        if store is not None:
            await _restore_staging(connection, store, directory, shard, timeout_s)
        run = await archive(
            connection,
            root,
            created_before_ns=created_before_ns,
            blocks_per_segment=blocks_per_segment,
            timeout_s=timeout_s,
            step=step,
        )
        removed = await remove_archived(
            connection, root, verifier=verifier, timeout_s=timeout_s, step=step, store=store
        )
        return run, removed
    finally:
        if not connection.is_closed():  # a lost session took its lock with it
            await connection.execute(
                "SELECT pg_advisory_unlock($1)", ARCHIVER_LOCK_KEY, timeout=timeout_s
            )
