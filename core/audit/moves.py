"""The audit of slot moves (docs/design.md, "Moving slots"; check "moves").

On each shard, from its snapshot (scan_moves): the sides of every move here (its slot_moves
rows), what each side's entries posted to the slot-move accounts (`@moves/<CUR>`), those
accounts' counters against the sums of the entries (no posting to them but a move's), and at a
target, the records each move brought (moved_transactions) against the count and digest its
move-in committed to (core.moves.records_digest, recomputed).

Over the cluster, when every shard was audited (check_moves): every move-out has its move-in
at its target (else the move is half done: a finding naming it, unless a new read finds the
move-in committed since the snapshots), every move-in its move-out, each finished move's
slot-move pieces net to zero per currency (as clearing does for cross-shard transactions),
its move-in committed to the records its move-out did (count and digest, both summaries),
and every record a target moved in is its source's record, line for line (the lines the
source's journal hashed; what changes after, a reversal's mark, is not in them). A source
record archived since (cold, docs/design.md "Cold history") is read from its segment given
AuditConfig.segments_root; without it, it reads as missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from core import ids, journal, moves
from core.audit.findings import About, AuditConfig, FindingKind, FindingLog, MoveSide, ShardReport
from core.audit.source import connect
from core.model import TransactionState
from core.store import audit as queries
from core.store.history import History, HotHistory
from core.store.shard import transaction_from_row

OUT, IN = "out", "in"
# Records compared with their source's per read.
RECORD_CHUNK_COUNT: Final = 1_000
# What decoding an altered row can raise (bad legs, a kind or status out of range, metadata
# that is not an object).
_UNREADABLE: Final = (ValueError, KeyError, AttributeError, TypeError)


def _line(record: TransactionState) -> str:
    return journal.transaction_line(record, *journal.legs_texts(record))


def _side_of(entry_id: str) -> tuple[str, str]:
    """(move id, direction) of a move's entry."""
    if ids.is_move_out_id(entry_id):
        return ids.parse_move_out_id(entry_id)[0], OUT
    return ids.parse_move_in_id(entry_id)[0], IN


# ---- one shard ----


async def scan_moves(
    connection: Any, config: AuditConfig, log: FindingLog, report: ShardReport
) -> None:
    """This shard's sides of slot moves, inside its audit's snapshot (see the module)."""
    timeout_s = config.statement_timeout_s
    for row in await connection.fetch(queries.MOVE_SIDES_SQL, timeout=timeout_s):
        report.move_sides[(row["move_id"], row["direction"])] = MoveSide(row["peer_shard"])
    sums: dict[str, list[int]] = {}
    cursor = connection.cursor(
        queries.MOVE_ENTRIES_SQL, prefetch=config.fetch_row_count, timeout=timeout_s
    )
    async for row in cursor:
        _fold_entry(report, sums, row)
    await _check_moves_accounts(connection, log, sums, timeout_s)
    for (move_id, direction), side in sorted(report.move_sides.items()):
        if direction == IN:
            await _check_moved_records(connection, log, move_id, side, timeout_s)


def _fold_entry(report: ShardReport, sums: dict[str, list[int]], row: Any) -> None:
    try:
        move_id, direction = _side_of(row["id"])
        legs = journal.decode_legs(row["applied_legs"])
        metadata = dict(journal.decode_metadata(row["metadata"]))
    except _UNREADABLE:  # not a move's entry as written: the journal and postings checks say
        return
    side = report.move_sides.setdefault((move_id, direction), MoveSide(-1))
    for leg in legs:
        if not ids.is_moves_account(leg.account_id):
            continue
        index = 0 if leg.is_debit else 1
        side.moves_legs.setdefault(leg.currency, [0, 0])[index] += leg.amount
        sums.setdefault(leg.currency, [0, 0])[index] += leg.amount
    if moves.COUNT_KEY in metadata:
        count_text = metadata[moves.COUNT_KEY]
        count = int(count_text) if count_text.isdigit() else -1
        side.summary = (count, metadata.get(moves.DIGEST_KEY, ""))


async def _check_moves_accounts(
    connection: Any, log: FindingLog, sums: dict[str, list[int]], timeout_s: float
) -> None:
    """Each slot-move account's posted counters are exactly the moves' entries on it."""
    found: dict[str, tuple[int, int]] = {}
    for row in await connection.fetch(queries.MOVES_ACCOUNTS_SQL, timeout=timeout_s):
        found[row["currency"]] = (row["debits_posted"], row["credits_posted"])
    for currency in sorted(set(found) | set(sums)):
        expected = tuple(sums.get(currency, [0, 0]))
        counters = found.get(currency, (0, 0))
        if counters != expected:
            log.add(
                FindingKind.MOVES_COUNTERS_MISMATCH,
                About.CLEARING,
                "the slot-move account's posted counters (debits, credits) are not the sums of "
                "the moves' entries on it (every posting to it must be a move's)",
                expected,
                counters,
                account_id=ids.moves_account(currency),
                currency=currency,
            )


async def _check_moved_records(
    connection: Any, log: FindingLog, move_id: str, side: MoveSide, timeout_s: float
) -> None:
    """The records this move brought here are those its move-in committed to."""
    rows = await connection.fetch(queries.MOVED_RECORDS_SQL, move_id, timeout=timeout_s)
    try:
        found: tuple[int, str] = (len(rows), moves.records_digest(_records(rows)))
    except _UNREADABLE as error:  # a row that does not decode: altered
        found = (len(rows), f"unreadable ({error})")
    if side.summary is None:
        log.add(
            FindingKind.MOVED_RECORDS_MISMATCH,
            About.MOVE,
            "the move-in here carries no count and digest of the records it moved in",
            f"{moves.COUNT_KEY} and {moves.DIGEST_KEY} in its first entry",
            "none",
            move_id=move_id,
        )
    elif found != side.summary:
        log.add(
            FindingKind.MOVED_RECORDS_MISMATCH,
            About.MOVE,
            "the records moved in (moved_transactions) are not those the move-in committed to "
            "(their count and the SHA-256 of their lines)",
            _summary_text(side.summary),
            _summary_text(found),
            move_id=move_id,
        )


def _records(rows: Sequence[Any]) -> list[TransactionState]:
    return [transaction_from_row(row) for row in rows]


def _summary_text(summary: tuple[int, str]) -> str:
    return f"{summary[0]} records, digest {summary[1]}"


# ---- the cluster ----


async def check_moves(
    reports: Sequence[ShardReport], dsns: Sequence[str], config: AuditConfig, log: FindingLog
) -> None:
    """Every move across the cluster (see the module); reports: every shard's, in order."""
    sides: dict[str, dict[str, tuple[int, MoveSide]]] = {}
    for report in reports:
        for (move_id, direction), side in report.move_sides.items():
            sides.setdefault(move_id, {})[direction] = (report.shard, side)
    for move_id, both in sorted(sides.items()):
        if OUT in both and IN not in both:
            await _half_done(move_id, both[OUT], dsns, config, log)
        elif IN in both and OUT not in both:
            shard, side = both[IN]
            log.add(
                FindingKind.MOVE_IN_WITHOUT_OUT,
                About.MOVE,
                f"shard {shard} moved slots in from shard {side.peer_shard}, which has no "
                "move-out of them",
                f"a move-out at shard {side.peer_shard}",
                "none",
                move_id=move_id,
            )
        else:
            _check_netting(move_id, both[OUT][1], both[IN][1], log)
            _check_summaries(move_id, both[OUT][1], both[IN][1], log)
            await _check_records_at_source(move_id, both[OUT][0], both[IN][0], dsns, config, log)


async def _half_done(
    move_id: str,
    out: tuple[int, MoveSide],
    dsns: Sequence[str],
    config: AuditConfig,
    log: FindingLog,
) -> None:
    source, side = out
    target = side.peer_shard
    if 0 <= target < len(dsns) and await _has_side(dsns[target], move_id, IN, config):
        return  # its move-in committed after the target's snapshot: judged by the next audit
    log.add(
        FindingKind.MOVE_HALF_DONE,
        About.MOVE,
        f"shard {source} moved slots out to shard {target}, which has not moved them in: the "
        "move is half done (its accounts are at neither shard's clients; `tally slots resume` "
        "finishes it)",
        f"a move-in at shard {target}",
        "none",
        move_id=move_id,
    )


async def _has_side(dsn: str, move_id: str, direction: str, config: AuditConfig) -> bool:
    connection = await connect(dsn, config)
    try:
        count = await connection.fetchval(
            queries.MOVE_SIDE_SQL, move_id, direction, timeout=config.statement_timeout_s
        )
    finally:
        await connection.close(timeout=config.connect_timeout_s)
    return bool(count)


def _check_netting(move_id: str, out: MoveSide, into: MoveSide, log: FindingLog) -> None:
    """A finished move's slot-move pieces net to zero: what the move-out credited to the
    source's, the move-in debited from the target's (and the other way round)."""
    for currency in sorted(set(out.moves_legs) | set(into.moves_legs)):
        debits = out.moves_legs.get(currency, [0, 0])[0] + into.moves_legs.get(currency, [0, 0])[0]
        credits = out.moves_legs.get(currency, [0, 0])[1] + into.moves_legs.get(currency, [0, 0])[1]
        if debits != credits:
            log.add(
                FindingKind.MOVE_UNBALANCED,
                About.MOVE,
                f"its slot-move pieces net to {debits - credits} {currency} (debits minus "
                "credits over its move-out and move-in), expected 0",
                0,
                debits - credits,
                currency=currency,
                move_id=move_id,
            )


def _check_summaries(move_id: str, out: MoveSide, into: MoveSide, log: FindingLog) -> None:
    """The records a move-in committed to are those its move-out did (a move-out made before
    paging carries no summary: nothing to compare)."""
    if out.summary is not None and into.summary is not None and out.summary != into.summary:
        log.add(
            FindingKind.MOVED_RECORDS_MISMATCH,
            About.MOVE,
            "the move-in committed to other records than its move-out (their count and the "
            "SHA-256 of their lines)",
            _summary_text(out.summary),
            _summary_text(into.summary),
            move_id=move_id,
        )


async def _check_records_at_source(
    move_id: str,
    source: int,
    target: int,
    dsns: Sequence[str],
    config: AuditConfig,
    log: FindingLog,
) -> None:
    """Each record the target holds for the move is the source's record of that id (hot, or
    cold given the segments' root)."""
    timeout_s = config.statement_timeout_s
    at_target = await connect(dsns[target], config)
    at_source = await connect(dsns[source], config)
    history: History = HotHistory()
    if config.segments_root is not None:
        from core.store.cold.history import ColdHistory  # pyarrow: only where it is read

        history = ColdHistory(config.segments_root, source)
    try:
        rows = await at_target.fetch(queries.MOVED_RECORDS_SQL, move_id, timeout=timeout_s)
        for start in range(0, len(rows), RECORD_CHUNK_COUNT):
            chunk = rows[start : start + RECORD_CHUNK_COUNT]
            there = await history.load_transactions(
                at_source, [row["id"] for row in chunk], timeout_s
            )
            for row in chunk:
                _compare_record(move_id, source, target, row, there.get(row["id"]), log)
    finally:
        history.close()
        await at_target.close(timeout=config.connect_timeout_s)
        await at_source.close(timeout=config.connect_timeout_s)


def _compare_record(
    move_id: str,
    source: int,
    target: int,
    row: Any,
    original: TransactionState | None,
    log: FindingLog,
) -> None:
    try:
        moved_line = _line(transaction_from_row(row))
    except _UNREADABLE as error:
        moved_line = f"unreadable ({error})"
    original_line = "none" if original is None else _line(original)
    if moved_line != original_line:
        log.add(
            FindingKind.MOVED_RECORD_ALTERED,
            About.MOVE,
            f"the record shard {target} moved in differs from shard {source}'s, its source",
            original_line,
            moved_line,
            transaction_id=row["id"],
            move_id=move_id,
        )
