"""The SQL of slot moves on a shard database (docs/design.md, "Moving slots"): finding a slot's
accounts and homed records, the slots moved out, and the rows a move-out or move-in commits
with its block. Every statement carries a timeout.

Every account and transaction row carries its id's slot under an index (shard migration 10),
so a slot's rows are one index read of each table: what a move costs follows what it moves,
not the size of the shard. The rows read are still filtered with core.moves (spread accounts
and reserved records never move, whatever their slot).

A shard with cold history (docs/design.md, "Cold history") has records no transactions row
holds any more: a move carries them too (the target must still answer an archived id as a
duplicate), found by the ids its segments hold (ColdRecords, the node's ColdHistory). The hot
rows are read first, then the segments, so a record an archive moves meanwhile is read once at
least (hot wins: a cold record's hot row, if any, is its later state).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from core import ids, journal, moves
from core.invariant import check
from core.model import AccountState, Kind, Leg, TransactionState
from core.pieces import decided_by_piece, reversed_by_piece
from core.slots import transaction_slot
from core.store.cold.catalog import ColdEntry, cold_entries
from core.store.shard import (
    TRANSACTION_COLUMNS,
    TRANSACTION_WRITE_COLUMNS,
    account_from_row,
    load_accounts,
    load_transactions,
    transaction_from_row,
)

Connection = Any

# How many rows each scan fetches at once (a cursor: the scan never holds a table in memory).
_SCAN_ROW_COUNT = 5_000


class ColdSegmentIds(Protocol):
    def transaction_ids(self) -> list[str]: ...


class ColdRecords(Protocol):
    """A shard's cold history as moves read it (core.store.cold.history.ColdHistory; not
    imported here: it brings pyarrow)."""

    def segment(self, entry: ColdEntry) -> ColdSegmentIds: ...

    async def load_transactions(
        self, connection: Connection, ids: Iterable[str], timeout_s: float
    ) -> dict[str, TransactionState]: ...


async def cold_homed_records(
    connection: Connection,
    cold: ColdRecords | None,
    keep: Callable[[str], bool],
    after_id: str,
    up_to_id: str | None,
    timeout_s: float,
) -> dict[str, TransactionState]:
    """By id: the records the cold segments hold whose id keep keeps, after after_id (and at
    most up_to_id), each as it is now (its hot row when one was written since, else its cold
    record). None without cold history."""
    if cold is None:
        return {}
    entries = await cold_entries(connection, timeout_s)
    if not entries:
        return {}

    def scan() -> list[str]:
        found = set()
        for entry in entries:
            for transaction_id in cold.segment(entry).transaction_ids():
                if transaction_id <= after_id or transaction_id.startswith("~"):
                    continue
                if up_to_id is not None and transaction_id > up_to_id:
                    continue
                if keep(transaction_id):
                    found.add(transaction_id)
        return sorted(found)

    wanted = await asyncio.to_thread(scan)
    if not wanted:
        return {}
    return await cold.load_transactions(connection, wanted, timeout_s)


async def slot_accounts(
    connection: Connection, slots: frozenset[int], timeout_s: float
) -> list[AccountState]:
    """The accounts of the slots, in id order (spread accounts never move)."""
    found: list[AccountState] = []
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        cursor = connection.cursor(
            "SELECT * FROM accounts WHERE slot = ANY($1::smallint[]) AND id NOT LIKE '@%' "
            "ORDER BY id",
            sorted(slots),
            prefetch=_SCAN_ROW_COUNT,
            timeout=timeout_s,
        )
        async for row in cursor:
            if moves.account_moves(row["id"], slots):
                found.append(account_from_row(row))
    return found


async def homed_records(
    connection: Connection,
    slots: frozenset[int],
    timeout_s: float,
    cold: ColdRecords | None = None,
) -> list[TransactionState]:
    """The transaction records homed in the slots (their own and those moved in before, hot
    or cold), in id order."""
    columns = ", ".join(TRANSACTION_COLUMNS)
    found: list[TransactionState] = []
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        for table in ("transactions", "moved_transactions"):
            cursor = connection.cursor(
                f"SELECT {columns} FROM {table} "
                "WHERE slot = ANY($1::smallint[]) AND id NOT LIKE '~%'",
                sorted(slots),
                prefetch=_SCAN_ROW_COUNT,
                timeout=timeout_s,
            )
            async for row in cursor:
                if moves.record_moves(row["id"], slots):
                    found.append(transaction_from_row(row))
    hot = {record.spec.id for record in found}
    archived = await cold_homed_records(
        connection, cold, lambda i: moves.record_moves(i, slots), "", None, timeout_s
    )
    found.extend(record for i, record in archived.items() if i not in hot)
    found.sort(key=lambda record: record.spec.id)
    return found


async def moved_out_slots(connection: Connection, timeout_s: float) -> dict[int, str]:
    """Slot -> the move that took it, for every slot whose latest move here was out."""
    rows = await connection.fetch(
        """
        SELECT DISTINCT ON (slot) slot, move_id, direction FROM slot_moves
        ORDER BY slot, block_sequence DESC
        """,
        timeout=timeout_s,
    )
    return {row["slot"]: row["move_id"] for row in rows if row["direction"] == "out"}


async def move_sides(connection: Connection, move_id: str, timeout_s: float) -> set[str]:
    """The sides of this move committed here: "out", "in", both or none."""
    rows = await connection.fetch(
        "SELECT DISTINCT direction FROM slot_moves WHERE move_id = $1", move_id, timeout=timeout_s
    )
    return {row["direction"] for row in rows}


async def slots_held_before(
    connection: Connection, slots: frozenset[int], timeout_s: float
) -> list[int]:
    """The slots of these that this shard moved out before (moving a slot back is not built)."""
    rows = await connection.fetch(
        "SELECT DISTINCT slot FROM slot_moves WHERE slot = ANY($1::int[]) AND direction = 'out'",
        sorted(slots),
        timeout=timeout_s,
    )
    return sorted(row["slot"] for row in rows)


async def record_side(
    connection: Connection,
    move_id: str,
    slots: frozenset[int],
    direction: str,
    peer_shard: int,
    block_sequence: int,
    timeout_s: float,
) -> None:
    """This side of the move, inside the transaction committing its block."""
    await connection.executemany(
        "INSERT INTO slot_moves (move_id, slot, direction, peer_shard, block_sequence) "
        "VALUES ($1, $2, $3, $4, $5)",
        [(move_id, slot, direction, peer_shard, block_sequence) for slot in sorted(slots)],
        timeout=timeout_s,
    )


async def pages_done(
    connection: Connection, move_id: str, direction: str, timeout_s: float
) -> tuple[set[int], int]:
    """The pages of this side of the move committed here, and the page size they were made
    with (0: none committed)."""
    rows = await connection.fetch(
        "SELECT page, page_item_count FROM move_pages WHERE move_id = $1 AND direction = $2",
        move_id,
        direction,
        timeout=timeout_s,
    )
    return {row["page"] for row in rows}, max((row["page_item_count"] for row in rows), default=0)


async def record_page(
    connection: Connection,
    move_id: str,
    direction: str,
    page: int,
    page_item_count: int,
    block_sequence: int,
    timeout_s: float,
) -> None:
    """A page of this side of the move, inside the transaction committing its block."""
    await connection.execute(
        "INSERT INTO move_pages (move_id, direction, page, page_item_count, block_sequence) "
        "VALUES ($1, $2, $3, $4, $5)",
        move_id,
        direction,
        page,
        page_item_count,
        block_sequence,
        timeout=timeout_s,
    )


async def insert_moved_records(
    connection: Connection,
    move_id: str,
    source_shard: int,
    records: Sequence[TransactionState],
    timeout_s: float,
) -> None:
    """The records moved in, inside the transaction committing the move-in block."""
    if not records:
        return
    rows = []
    for record in records:
        spec = record.spec
        legs_text, applied_text = journal.legs_texts(record)
        rows.append(
            (
                spec.id, int(spec.kind), spec.code, journal.encode_metadata(spec.metadata),
                spec.value_date, spec.timeout_seconds, spec.target_id, legs_text,
                journal.stored_applied_legs(legs_text, applied_text),
                record.timestamp_ns, int(record.status), record.expires_at_ns,
                record.resolved_by_id, record.reversed_by_id, 0, transaction_slot(spec.id),
                move_id, source_shard,
            )
        )  # fmt: skip
    await connection.copy_records_to_table(
        "moved_transactions",
        records=rows,
        columns=[*TRANSACTION_WRITE_COLUMNS, "move_id", "source_shard"],
        timeout=timeout_s,
    )


async def accounts_before_out(
    connection: Connection,
    move_id: str,
    slots: frozenset[int],
    holds: Sequence[TransactionState],
    timeout_s: float,
) -> list[AccountState]:
    """The slots' accounts as they were before this move's move-out here (read again when a
    move-out is asked a second time): its transactions' legs say what each account held, and
    the releases of the moving open holds (`holds`, as they were before) what they held."""
    accounts = await slot_accounts(connection, slots, timeout_s)
    release_ids = [ids.move_out_hold_id(move_id, hold.spec.id) for hold in holds]
    releases = list((await load_transactions(connection, release_ids, timeout_s)).values())
    return await _before_out(connection, move_id, accounts, releases, timeout_s)


async def _before_out(
    connection: Connection,
    move_id: str,
    accounts: Sequence[AccountState],
    releases: Sequence[TransactionState],
    timeout_s: float,
) -> list[AccountState]:
    """These accounts as they were before the move's move-out, from its entries here."""
    out_ids = [ids.move_out_id(move_id, account.spec.id) for account in accounts]
    written = await load_transactions(connection, out_ids, timeout_s)
    released: dict[str, list[Leg]] = {}
    for release in releases:
        for leg in release.applied_legs:
            released.setdefault(leg.account_id, []).append(leg)
    before = []
    for account, out_id in zip(accounts, out_ids, strict=True):
        out = written.get(out_id)
        out_legs = out.applied_legs if out is not None else ()
        mine = released.get(account.spec.id, [])
        before.append(moves.account_before_out(account, out_legs, [mine]))
    return before


async def open_records(connection: Connection, timeout_s: float) -> list[TransactionState]:
    """Every open hold and held cross-shard piece here (the holds table: only open ones live
    there), in id order."""
    rows = await connection.fetch(
        "SELECT transaction_id FROM holds ORDER BY transaction_id", timeout=timeout_s
    )
    found = await load_transactions(connection, [row["transaction_id"] for row in rows], timeout_s)
    return [found[key] for key in sorted(found)]


async def existing_accounts(
    connection: Connection, account_ids: Sequence[str], timeout_s: float
) -> list[str]:
    """Those of these accounts that exist here already."""
    return sorted(await load_accounts(connection, account_ids, timeout_s))


async def spread_accounts(connection: Connection, timeout_s: float) -> list[AccountState]:
    """This shard's pieces of the spread accounts (but the slot-move accounts, which every
    move makes where it needs them), counters zeroed: what a target lacking them creates."""
    rows = await connection.fetch(
        "SELECT * FROM accounts WHERE id LIKE '@%' AND id NOT LIKE '@moves/%' ORDER BY id",
        timeout=timeout_s,
    )
    return [AccountState(account_from_row(row).spec, row["created_at_ns"]) for row in rows]


# ---- a move read in pages (the source) and staged (the target) ----

_MOVE_BLOCKS_SQL = """
SELECT block_sequence FROM move_pages WHERE move_id = $1 AND direction = 'out'
UNION SELECT block_sequence FROM slot_moves WHERE move_id = $1 AND direction = 'out'
"""


async def moved_out_slots_of(
    connection: Connection, move_id: str, timeout_s: float
) -> frozenset[int]:
    """The slots this shard moved out by this move (none: no move-out of it here)."""
    rows = await connection.fetch(
        "SELECT slot FROM slot_moves WHERE move_id = $1 AND direction = 'out'",
        move_id,
        timeout=timeout_s,
    )
    return frozenset(row["slot"] for row in rows)


async def move_out_summary(
    connection: Connection, move_id: str, timeout_s: float
) -> TransactionState | None:
    """The move-out's summary entry (its totals), if it has one (moves before pages: none)."""
    entry_id = ids.move_out_id(move_id, moves.SUMMARY_ENTRY)
    return (await load_transactions(connection, [entry_id], timeout_s)).get(entry_id)


async def _releases(
    connection: Connection, move_id: str, timeout_s: float
) -> list[TransactionState]:
    """The move-out's releases of open holds, from its blocks (transactions_by_block)."""
    columns = ", ".join(TRANSACTION_COLUMNS)
    rows = await connection.fetch(
        f"SELECT {columns} FROM transactions WHERE block_sequence IN ({_MOVE_BLOCKS_SQL}) "
        "AND kind = $2",
        move_id,
        int(Kind.VOID_PENDING),
        timeout=timeout_s,
    )
    prefix = ids.move_out_hold_id(move_id, "")
    return [transaction_from_row(row) for row in rows if row["id"].startswith(prefix)]


async def moved_pieces(
    connection: Connection, move_id: str, timeout_s: float
) -> list[TransactionState]:
    """The held cross-shard pieces this move's move-out released (they travel with it), as they
    were before it, in id order."""
    releases = await _releases(connection, move_id, timeout_s)
    wanted = sorted(r.spec.target_id for r in releases if ids.is_piece_id(r.spec.target_id))
    found = await load_transactions(connection, wanted, timeout_s)
    return [moves.record_before_out(found[i], move_id) for i in wanted if i in found]


async def pieces_page(
    connection: Connection, move_id: str, after_id: str, count_max: int, timeout_s: float
) -> tuple[list[TransactionState], bool]:
    """Up to count_max of moved_pieces after after_id, and whether they are the last."""
    after = [p for p in await moved_pieces(connection, move_id, timeout_s) if p.spec.id > after_id]
    return after[:count_max], len(after) <= count_max


async def accounts_page(
    connection: Connection,
    move_id: str,
    slots: frozenset[int],
    after_id: str,
    count_max: int,
    timeout_s: float,
) -> tuple[list[AccountState], bool]:
    """Up to count_max of the slots' accounts after after_id, in id order, as they were before
    this move's move-out, and whether they are the last."""
    query = (
        "SELECT * FROM accounts WHERE slot = ANY($2::smallint[]) AND id NOT LIKE '@%' "
        "AND id > $1 ORDER BY id LIMIT $3"
    )
    rows, done = await _rows_in_slots(
        connection, query, after_id, slots, lambda i: moves.account_moves(i, slots), count_max,
        timeout_s,
    )  # fmt: skip
    found = [account_from_row(row) for row in rows]
    releases = await _releases(connection, move_id, timeout_s) if found else []
    return await _before_out(connection, move_id, found, releases, timeout_s), done


async def records_page(
    connection: Connection,
    move_id: str,
    slots: frozenset[int],
    after_id: str,
    count_max: int,
    timeout_s: float,
    cold: ColdRecords | None = None,
) -> tuple[list[TransactionState], bool]:
    """Up to count_max of the records homed in the slots after after_id (hot or cold), in id
    order, as they were before this move's move-out, and whether they are the last."""
    columns = ", ".join(TRANSACTION_COLUMNS)
    in_slots = "slot = ANY($2::smallint[]) AND id > $1"
    query = (
        f"SELECT {columns} FROM (SELECT {columns} FROM transactions WHERE {in_slots} "
        f"UNION ALL SELECT {columns} FROM moved_transactions WHERE {in_slots}) r "
        "WHERE id NOT LIKE '~%' ORDER BY id LIMIT $3"
    )
    keep = lambda i: moves.record_moves(i, slots)  # noqa: E731
    rows, done = await _rows_in_slots(
        connection, query, after_id, slots, keep, count_max, timeout_s
    )
    found = {r["id"]: transaction_from_row(r) for r in rows}
    # Past the last hot row read, the next page reads them (its hot rows may come first).
    up_to = None if done or not rows else rows[-1]["id"]
    archived = await cold_homed_records(connection, cold, keep, after_id, up_to, timeout_s)
    for transaction_id, record in archived.items():
        found.setdefault(transaction_id, record)
    ordered = [found[i] for i in sorted(found)]
    page = ordered[:count_max]
    done = done and len(ordered) <= count_max
    return [moves.record_before_out(record, move_id) for record in page], done


async def precopy_records_page(
    connection: Connection,
    move_id: str,
    slots: frozenset[int],
    after_id: str,
    count_max: int,
    timeout_s: float,
    cold: ColdRecords | None = None,
) -> tuple[list[TransactionState], bool, int]:
    """records_page read before the move-out, in one snapshot, with the last block committed in
    it: every change to the page's records after that block is in a later block (the writer
    commits a block's rows with it, one block at a time)."""
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        sequence = await head_sequence(connection, timeout_s)
        records, done = await records_page(
            connection, move_id, slots, after_id, count_max, timeout_s, cold
        )
    return records, done, sequence


async def head_sequence(connection: Connection, timeout_s: float) -> int:
    """The last block committed here (0: none)."""
    found = await connection.fetchval(
        "SELECT coalesce(max(sequence), 0) FROM journal_blocks", timeout=timeout_s
    )
    return int(found)


# The transactions of the blocks after $1 that may have changed a record homed in the slots $2:
# those homed in them (made there), and every one naming a record (a post, void, expiry,
# reversal or deadline by target_id; a cross-shard piece by its metadata, or resolved by a
# transaction naming it). Along transactions_by_block: what was written since, not the table.
_CHANGED_SINCE_SQL = f"""
SELECT {", ".join(TRANSACTION_COLUMNS)} FROM transactions
WHERE block_sequence > $1 AND (slot = ANY($2::smallint[]) OR target_id <> '' OR id LIKE '~piece/%')
LIMIT $3
"""
CHANGED_SCAN_ROW_COUNT_MAX = 200_000
"""At most this many transactions since a pre-copy are read to find what changed (held in
memory by the read): more, and the move is copied in full (a pre-copy long stale; a full copy
of a move is at most moves.MOVE_ITEM_COUNT_MAX items, read page by page)."""


class PrecopyStaleError(ValueError):
    """Too much was written since the pre-copy to find what changed: copy the move in full."""


async def changed_records_page(
    connection: Connection,
    move_id: str,
    slots: frozenset[int],
    since_sequence: int,
    after_id: str,
    count_max: int,
    timeout_s: float,
) -> tuple[list[TransactionState], bool, str]:
    """Up to count_max of the records homed in the slots that may differ from a pre-copy read
    at since_sequence, after after_id in id order, as they were before this move's move-out,
    whether they are the last, and the after_id of the next page (the last id looked at: one
    named but recorded nowhere hot here is unchanged since its block, and skipped). A record
    revived from cold history (block 0) is named by the transaction that changed it; one this
    misses fails the target's digest check, and the move is copied again in full."""
    rows = await connection.fetch(
        _CHANGED_SINCE_SQL, since_sequence, sorted(slots), CHANGED_SCAN_ROW_COUNT_MAX + 1,
        timeout=timeout_s,
    )  # fmt: skip
    if len(rows) > CHANGED_SCAN_ROW_COUNT_MAX:
        raise PrecopyStaleError(
            f"more than {CHANGED_SCAN_ROW_COUNT_MAX} transactions since the pre-copy's block "
            f"{since_sequence}: copy it in full"
        )
    named: set[str] = set()
    pieces: set[str] = set()
    for row in rows:
        late = transaction_from_row(row)
        named.update((late.spec.id, late.spec.target_id, *_piece_targets(late)))
        if ids.is_piece_id(late.spec.target_id):  # a piece resolved: what it locked is freed
            pieces.add(late.spec.target_id)
    for piece in (await load_transactions(connection, sorted(pieces), timeout_s)).values():
        named.update(_piece_targets(piece))
    wanted = sorted(
        i for i in named if i > after_id and not i.startswith("~") and moves.record_moves(i, slots)
    )
    page = wanted[:count_max]
    found = await load_transactions(connection, page, timeout_s)
    records = [moves.record_before_out(found[i], move_id) for i in page if i in found]
    return records, len(wanted) <= count_max, page[-1] if page else after_id


def _piece_targets(record: TransactionState) -> tuple[str, str]:
    """The records a cross-shard piece locks (reverses, or decides the post or void of)."""
    if not ids.is_piece_id(record.spec.id):
        return "", ""
    return reversed_by_piece(record.spec), decided_by_piece(record.spec)


async def _rows_in_slots(
    connection: Connection,
    query: str,
    after_id: str,
    slots: frozenset[int],
    moves_with: Callable[[str], bool],
    count_max: int,
    timeout_s: float,
) -> tuple[list[Any], bool]:
    """Up to count_max rows of query (the slots' rows after after_id, in id order, at most its
    limit) whose id moves_with keeps, and whether they are the last such rows."""
    rows = await connection.fetch(query, after_id, sorted(slots), count_max + 1, timeout=timeout_s)
    page = rows[:count_max]
    check(
        all(moves_with(row["id"]) for row in page),
        "a row under the slot index is not of its slot (a slot column written wrong)",
    )
    return page, len(rows) <= count_max


async def stage(
    connection: Connection,
    move_id: str,
    part: str,
    items: Sequence[tuple[str, bytes]],
    timeout_s: float,
) -> int:
    """Keep these (id, body) of a move's part ('account' or 'record'), each replacing what was
    staged under its id before (the copy after a pre-copy stages what changed since); how many
    were new or changed (a page staged again as it was: none)."""
    if not items:
        return 0
    result = await connection.execute(
        "INSERT INTO move_staging (move_id, part, item_id, body) "
        "SELECT $1, $2, item_id, body FROM unnest($3::text[], $4::bytea[]) AS i(item_id, body) "
        "ON CONFLICT (move_id, part, item_id) DO UPDATE SET body = EXCLUDED.body "
        "WHERE move_staging.body IS DISTINCT FROM EXCLUDED.body",
        move_id,
        part,
        [item_id for item_id, _ in items],
        [body for _, body in items],
        timeout=timeout_s,
    )
    return int(result.split()[-1])


async def staged(connection: Connection, move_id: str, part: str, timeout_s: float) -> list[bytes]:
    """The bodies of a move's part staged here, in id order."""
    rows = await connection.fetch(
        "SELECT body FROM move_staging WHERE move_id = $1 AND part = $2 ORDER BY item_id",
        move_id,
        part,
        timeout=timeout_s,
    )
    return [bytes(row["body"]) for row in rows]


async def clear_staged(connection: Connection, move_id: str, timeout_s: float) -> None:
    """The move's staging, inside the transaction committing its move-in's last block."""
    await connection.execute(
        "DELETE FROM move_staging WHERE move_id = $1", move_id, timeout=timeout_s
    )
