"""What a shard database records of its cold history: the cold_segments rows (one per
segment moved out, docs/design.md "Cold history"), the id hashes they index, and where a
shard's segments live under a cluster's segments root."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

Connection = Any  # asyncpg.Connection or a pool


class SegmentError(ValueError):
    """Blocks that cannot make a segment (not contiguous, a hash that does not match, a chain
    that does not continue the previous segment), or a segment that conflicts with them or does
    not read as written. Here, without pyarrow, so that a node without cold history can name it
    (core.store.cold.format re-exports it)."""


def shard_directory(root: Path, shard: int) -> Path:
    """Where a shard's segments live under the cluster's segments root."""
    return root / f"shard-{shard}"


def shard_directories(root: Path) -> dict[int, Path]:
    """The shards with a directory of segments under root, by shard."""
    if not root.is_dir():
        return {}
    found = {}
    for path in root.iterdir():
        number = path.name.removeprefix("shard-")
        if path.is_dir() and path.name.startswith("shard-") and number.isdigit():
            found[int(number)] = path
    return dict(sorted(found.items()))


def id_hash(transaction_id: str) -> int:
    """A transaction id's 64-bit hash, as cold_segments.id_hashes holds it (signed, as
    PostgreSQL's bigint)."""
    digest = hashlib.blake2b(transaction_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True, slots=True)
class ColdEntry:
    """A cold_segments row: a segment whose records left the database."""

    first_block: int
    last_block: int
    name: str
    manifest_digest: str
    first_posting_sequence: int
    next_posting_sequence: int


ENTRY_COLUMNS: Final = (
    "first_block, last_block, name, manifest_digest, first_posting_sequence, next_posting_sequence"
)


def entry_of(row: Any) -> ColdEntry:
    return ColdEntry(
        row["first_block"],
        row["last_block"],
        row["name"],
        row["manifest_digest"],
        row["first_posting_sequence"],
        row["next_posting_sequence"],
    )


async def cold_entries(connection: Connection, timeout_s: float) -> list[ColdEntry]:
    rows = await connection.fetch(
        f"SELECT {ENTRY_COLUMNS} FROM cold_segments ORDER BY last_block", timeout=timeout_s
    )
    return [entry_of(row) for row in rows]


async def last_cold_block(connection: Connection, timeout_s: float) -> int:
    """The last block whose records are cold (0: none)."""
    value = await connection.fetchval(
        "SELECT coalesce(max(last_block), 0) FROM cold_segments", timeout=timeout_s
    )
    return int(value)
