"""The cross-shard rows of a shard's cold blocks (core.audit.crossshard, with cold history:
docs/design.md, "Cold history"). Of a cross-shard attempt's records, those an archive run may
move out of the tables are the ones with a client's id and their state as created: a commit's
decision (kind COMMIT) and a client's post of a cross-shard hold; pieces, abort markers,
deadline records and the system's resolutions have `~` ids, and holds stay hot once resolved.
The journal pass keeps them as it reads each cold block (ColdJournal.cross_shard); here they
are keyed as core.store.audit.cross_shard_rows_sql keys the tables' rows and merged into that
stream in its order, so that the clearing counters and the cross-shard judge see every attempt
as before archiving.

Memory: the cold records of cross-shard kinds (not every cold record), sorted once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from core import journal
from core.audit.cold import ColdJournal
from core.audit.source import RowStream
from core.model import Kind
from core.store import audit as queries
from core.store.audit import MARKER_PREFIX, PIECE_PREFIX, RESOLUTION_KINDS
from core.store.cold.format import ColdTransaction

_DECISIONS = frozenset({Kind.PREPARED, Kind.COMMIT, Kind.ABORT, Kind.HOLD, Kind.DEADLINE})
_TARGET_KINDS = (int(Kind.PREPARED), int(Kind.HOLD))


def _strip(text: str, prefix: str) -> str:
    return text[len(prefix) :] if text.startswith(prefix) else text


def _decision_key(kind: Kind, transaction_id: str, target_id: str) -> str:
    if kind in (Kind.COMMIT, Kind.HOLD):
        return _strip(target_id, MARKER_PREFIX)
    if kind == Kind.ABORT:
        return _strip(transaction_id, MARKER_PREFIX)
    if kind == Kind.DEADLINE:
        return _strip(target_id, PIECE_PREFIX)
    return _strip(transaction_id, PIECE_PREFIX)


def _row(block: int, record: ColdTransaction, key: str, target: Any) -> dict[str, Any]:
    """A row as cross_shard_rows_sql selects it (`target`: the resolved piece or hold)."""
    spec = record.spec
    metadata = journal.encode_metadata(spec.metadata) if spec.kind == Kind.DEADLINE else None
    return {
        "key": key,
        "id": spec.id,
        "kind": int(spec.kind),
        "target_id": spec.target_id,
        "applied_legs": record.applied_legs_text,
        "expires_at_ns": 0,  # an archive run moves out only records that expire at 0
        "held_legs": None if target is None else target["applied_legs"],
        "target_kind": None if target is None else target["kind"],
        "timestamp_ns": record.timestamp_ns,
        "timeout_seconds": spec.timeout_seconds,
        "block_sequence": block,
        "metadata": metadata,
    }


def order_of(row: Any) -> tuple[str, int, int, str]:
    """CROSS_SHARD_SQL's order (key and id in byte order, as COLLATE "C")."""
    return (row["key"], row["block_sequence"], row["timestamp_ns"], row["id"])


def is_candidate(record: ColdTransaction) -> bool:
    """Whether a cold record may be a cross-shard row (the journal pass keeps those)."""
    kind = record.spec.kind
    return kind in _DECISIONS or kind in RESOLUTION_KINDS


async def cold_cross_shard_rows(
    connection: Any, cold: ColdJournal, timeout_s: float
) -> list[dict[str, Any]]:
    """The cross-shard rows the shard's cold blocks hold and its tables do not, in
    CROSS_SHARD_SQL's order."""
    candidates = cold.cross_shard
    if not candidates:
        return []
    ids = [record.spec.id for _, record in candidates]
    hot = {r["id"] for r in await connection.fetch(queries.HOT_IDS_SQL, ids, timeout=timeout_s)}
    candidates = [(b, r) for b, r in candidates if r.spec.id not in hot]
    wanted = [r.spec.target_id for _, r in candidates if r.spec.kind in RESOLUTION_KINDS]
    targets = {
        t["id"]: t
        for t in await connection.fetch(
            queries.RESOLVED_TARGETS_SQL, wanted, list(_TARGET_KINDS), timeout=timeout_s
        )
    }
    rows = []
    for block, record in candidates:
        spec = record.spec
        if spec.kind in _DECISIONS:
            key = _decision_key(spec.kind, spec.id, spec.target_id)
            rows.append(_row(block, record, key, None))
            continue
        target = targets.get(spec.target_id)
        if target is None:
            continue  # resolves no piece nor hold: not a cross-shard row
        if target["kind"] == Kind.HOLD:
            key = _strip(target["target_id"], MARKER_PREFIX)
        else:
            key = _strip(target["id"], PIECE_PREFIX)
        rows.append(_row(block, record, key, target))
    rows.sort(key=order_of)
    return rows


async def merged(stream: RowStream, cold_rows: list[dict[str, Any]]) -> AsyncIterator[list[Any]]:
    """The hot stream's chunks with the cold rows merged in, in CROSS_SHARD_SQL's order."""
    index = 0
    while rows := await stream.rest():
        chunk: list[Any] = []
        for row in rows:
            while index < len(cold_rows) and order_of(cold_rows[index]) < order_of(row):
                chunk.append(cold_rows[index])
                index += 1
            chunk.append(row)
        yield chunk
    if index < len(cold_rows):
        yield cold_rows[index:]
