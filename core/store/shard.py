"""The PostgreSQL store of one shard: migrations, bulk loads, one-transaction batch commits, reads.

Every statement is set-based (COPY or unnest over arrays); a batch costs a fixed number of round
trips whatever its size. Every awaited call carries an explicit timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from core import journal
from core.journal import BlockHeader, account_flags, decode_legs, decode_metadata
from core.model import (
    AccountSpec,
    AccountState,
    Kind,
    Posting,
    Status,
    TransactionSpec,
    TransactionState,
)
from core.signing import Signer
from core.slots import account_slot, transaction_slot
from core.state import WriteSet
from core.store import schema

STATEMENT_TIMEOUT_S = 30.0
# A migration may rewrite a table (migration 10 gives every row its slot): it gets an hour, not
# a statement's 30 s, so a large shard's first start after an upgrade is not cut short.
MIGRATION_TIMEOUT_S = 3600.0

Connection = Any  # asyncpg.Connection or a pool proxy; asyncpg ships no complete stubs


class FencedError(RuntimeError):
    """This writer's epoch is no longer the lease's epoch: another writer has taken over."""


class CommitOutcomeUnknownError(RuntimeError):
    """The COMMIT was sent but its answer never came back (the connection was lost, the commit
    timed out, the server went away while committing): the block may be durable or not. Any
    other failure of commit_block happened before COMMIT was sent, or the server answered
    COMMIT with a rollback, so nothing of the block was written."""


# SQLSTATE classes a server answers COMMIT with when it rolled the transaction back instead:
# integrity constraint violation (a deferred check) and transaction rollback (serialization).
# Any other error met at COMMIT (an administrator's terminate, a crash, a lost link) may come
# after the commit record is durable.
_ROLLED_BACK_AT_COMMIT_CLASSES = ("23", "40")


async def migrate(
    connection: Connection,
    migrations: tuple[tuple[int, str, str], ...] = schema.MIGRATIONS,
) -> list[int]:
    """Apply missing migrations in order; returns the versions applied now."""
    applied_now: list[int] = []
    async with connection.transaction():
        await connection.execute(
            "SELECT pg_advisory_xact_lock($1)", schema.MIGRATION_LOCK_KEY, timeout=60.0
        )
        await connection.execute(schema.BOOTSTRAP_SQL, timeout=STATEMENT_TIMEOUT_S)
        done = {
            row["version"]
            for row in await connection.fetch(
                "SELECT version FROM tally_schema_migrations", timeout=STATEMENT_TIMEOUT_S
            )
        }
        for version, name, sql in migrations:
            if version in done:
                continue
            await connection.execute(sql, timeout=MIGRATION_TIMEOUT_S)
            await connection.execute(
                "INSERT INTO tally_schema_migrations (version, name) VALUES ($1, $2)",
                version,
                name,
                timeout=STATEMENT_TIMEOUT_S,
            )
            applied_now.append(version)
    return applied_now


async def claim_shard(connection: Connection, shard_id: int, timeout_s: float) -> int:
    """The shard this database belongs to: shard_id if nobody recorded one yet (recorded now),
    else the one recorded first. The caller compares. Two statements, outside a transaction:
    the insert waits for a concurrent first claim to commit, and the select's snapshot, taken
    after it, sees that claim."""
    await connection.execute(
        "INSERT INTO shard_identity (id, shard_id) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
        shard_id,
        timeout=timeout_s,
    )
    recorded: int = await connection.fetchval(
        "SELECT shard_id FROM shard_identity WHERE id = 1", timeout=timeout_s
    )
    return recorded


# The server settings that decide how durable a commit is (see shards/node/durability.py).
DURABILITY_SETTINGS = (
    "fsync",
    "full_page_writes",
    "synchronous_commit",
    "synchronous_standby_names",
)


async def durability_settings(connection: Connection, timeout_s: float) -> dict[str, str]:
    """What this session's commits are made durable by: the DURABILITY_SETTINGS as the
    server applies them to this session, and in_recovery ("on" on a standby)."""
    rows = await connection.fetch(
        "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
        list(DURABILITY_SETTINGS),
        timeout=timeout_s,
    )
    settings = {row["name"]: row["setting"] for row in rows}
    in_recovery = await connection.fetchval("SELECT pg_is_in_recovery()", timeout=timeout_s)
    settings["in_recovery"] = "on" if in_recovery else "off"
    return settings


async def wait_durable(connection: Connection, timeout_s: float) -> None:
    """Return once everything committed on this server so far is as durable as a commit made
    now (flushed, and on the synchronous standby where one is named): a transaction that takes
    a transaction id commits, and waits for its commit record, which comes after all of it.
    For a writer that re-reads a journal after an ambiguous commit, which may have landed on
    the primary alone (a commit whose wait for the standby was cancelled is still committed
    there): what it reads is then never more than what a failover keeps."""
    async with connection.transaction():
        await connection.execute("SELECT pg_current_xact_id()", timeout=timeout_s)


# ---- row <-> domain ----


def account_from_row(row: asyncpg.Record) -> AccountState:
    flags = row["flags"]
    spec = AccountSpec(
        row["id"],
        row["currency"],
        row["code"],
        bool(flags & journal.FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS),
        bool(flags & journal.FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS),
        decode_metadata(row["metadata"]),
    )
    return AccountState(
        spec,
        row["created_at_ns"],
        row["debits_posted"],
        row["credits_posted"],
        row["debits_pending"],
        row["credits_pending"],
        row["version"],
        row["closed_at_ns"],
    )


def spec_from_row(row: asyncpg.Record) -> TransactionSpec:
    """A transactions row's spec: the columns that never change after it is written."""
    return TransactionSpec(
        row["id"],
        Kind(row["kind"]),
        decode_legs(row["legs"]),
        row["code"],
        decode_metadata(row["metadata"]),
        row["value_date"],
        row["timeout_seconds"],
        row["target_id"],
    )


def transaction_from_row(row: asyncpg.Record) -> TransactionState:
    spec = spec_from_row(row)
    return TransactionState(
        spec,
        journal.applied_legs_of(spec.legs, row["applied_legs"]),
        row["timestamp_ns"],
        Status(row["status"]),
        row["expires_at_ns"],
        row["resolved_by_id"],
        row["reversed_by_id"],
    )


def posting_from_row(row: asyncpg.Record) -> Posting:
    return Posting(
        row["sequence"],
        row["transaction_id"],
        row["account_id"],
        row["is_debit"],
        row["posted_amount"],
        row["pending_delta"],
        row["timestamp_ns"],
        row["debits_posted_after"],
        row["credits_posted_after"],
        row["debits_pending_after"],
        row["credits_pending_after"],
    )


def _account_record(account: AccountState, block_sequence: int) -> tuple[Any, ...]:
    spec = account.spec
    return (
        spec.id,
        spec.currency,
        spec.code,
        account_flags(spec),
        journal.encode_metadata(spec.metadata),
        account.created_at_ns,
        account.closed_at_ns,
        account.debits_posted,
        account.credits_posted,
        account.debits_pending,
        account.credits_pending,
        account.version,
        block_sequence,
        account_slot(spec.id),
    )


def _transaction_record(
    state: TransactionState, texts: tuple[str, str], block_sequence: int
) -> tuple[Any, ...]:
    spec = state.spec
    return (
        spec.id,
        int(spec.kind),
        spec.code,
        journal.encode_metadata(spec.metadata),
        spec.value_date,
        spec.timeout_seconds,
        spec.target_id,
        texts[0],
        journal.stored_applied_legs(*texts),
        state.timestamp_ns,
        int(state.status),
        state.expires_at_ns,
        state.resolved_by_id,
        state.reversed_by_id,
        block_sequence,
        transaction_slot(spec.id),
    )


_ACCOUNT_COLUMNS = (
    "id currency code flags metadata created_at_ns closed_at_ns debits_posted credits_posted "
    "debits_pending credits_pending version block_sequence slot"
).split()
TRANSACTION_COLUMNS = (
    "id kind code metadata value_date timeout_seconds target_id legs applied_legs timestamp_ns "
    "status expires_at_ns resolved_by_id reversed_by_id block_sequence"
).split()
# A row as written: the columns read, and its id's slot (migration 10; what moves select by).
TRANSACTION_WRITE_COLUMNS = [*TRANSACTION_COLUMNS, "slot"]
# The block_sequence of a transaction row written hot again after its block went cold.
REVIVED_BLOCK_SEQUENCE: Final = 0
# The order of core.model.Posting's fields: postings are copied as they are.
_POSTING_COLUMNS = list(Posting._fields)


# ---- the block a batch commits ----


@dataclass(frozen=True, slots=True)
class Block:
    header: BlockHeader
    writes: WriteSet
    # Encoded (legs, applied legs) of each new transaction, in order: hashed and stored as is.
    transaction_texts: list[tuple[str, str]]
    # The canonical lines the hash covers (journal.block_body), as the change stream's LINES
    # encoding sends them.
    body: bytes = b""


def build_block(
    writes: WriteSet,
    previous: BlockHeader,
    epoch: int,
    position_next_sequence: int,
    position_last_timestamp_ns: int,
    created_at_ns: int,
    signer: Signer | None = None,
    shard_id: int = 0,
) -> Block:
    """Hash the batch's records onto the chain, and sign the head when given a signer."""
    sequence = previous.sequence + 1
    texts = [journal.legs_texts(state) for state in writes.new_transactions]
    lines = journal.block_lines(
        ((account.spec, account.created_at_ns) for account in writes.new_accounts),
        zip(writes.new_transactions, texts, strict=True),
        writes.postings,
        writes.closures,
    )
    body = journal.block_body(lines)
    hash_ = journal.body_hash(previous.hash, sequence, body)
    key_id, signature = "", b""
    if signer is not None:
        key_id, signature = signer.key_id, signer.sign(shard_id, sequence, hash_)
    header = BlockHeader(
        sequence,
        previous.hash,
        hash_,
        epoch,
        created_at_ns,
        position_next_sequence,
        position_last_timestamp_ns,
        key_id,
        signature,
    )
    return Block(header, writes, texts, body)


BlockExtra = Callable[[Connection, int, float], Awaitable[None]]
"""More statements for a block's own database transaction (a slot move's rows): called with
the connection, the block's sequence and the timeout, after the block's rows."""


async def commit_block(
    connection: Connection, block: Block, timeout_s: float, extra: BlockExtra | None = None
) -> None:
    """Persist one batch in one database transaction, fenced by the writer's epoch.

    A failure before COMMIT is sent (a refused or lost connection, a statement's error or
    timeout, FencedError) raises as it is: the server never commits a transaction whose COMMIT
    it did not receive. A failure once COMMIT is in flight raises CommitOutcomeUnknownError.
    COMMIT gets the same timeout as every statement (asyncpg's managed transactions give it
    none, so a commit stuck in the server would hold the writer forever).
    """
    sequence = block.header.sequence
    await connection.execute("BEGIN", timeout=timeout_s)
    try:
        await _write_block(connection, block, timeout_s)
        if extra is not None:
            await extra(connection, sequence, timeout_s)
    except Exception:
        await _roll_back(connection, timeout_s)
        raise
    except BaseException:  # cancelled: no await here; closing the connection rolls back
        connection.terminate()
        raise
    try:
        await connection.execute("COMMIT", timeout=timeout_s)
    except asyncpg.PostgresError as error:
        if str(error.sqlstate or "")[:2] in _ROLLED_BACK_AT_COMMIT_CLASSES:
            raise
        raise CommitOutcomeUnknownError(f"COMMIT of block {sequence}: {error!r}") from error
    except Exception as error:  # lost connection, timeout: the answer never came
        raise CommitOutcomeUnknownError(f"COMMIT of block {sequence}: {error!r}") from error


async def end_backends(connection: Connection, pids: Sequence[int], timeout_s: float) -> None:
    """Terminate these server processes (a writer's own old connections) and wait until they
    are gone: a COMMIT one of them was running has then landed or not, for good."""
    if not pids:
        return
    deadline_s = time.monotonic() + timeout_s
    await connection.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY($1::int[])",
        list(pids),
        timeout=timeout_s,
    )
    while await connection.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])",
        list(pids),
        timeout=timeout_s,
    ):
        if time.monotonic() > deadline_s:
            raise TimeoutError(f"server processes {list(pids)} did not end")
        await asyncio.sleep(0.01)


async def _roll_back(connection: Connection, timeout_s: float) -> None:
    """Best effort after a failure before COMMIT: a connection that cannot even roll back is
    closed, which the server takes as a rollback (the writer reconnects either way)."""
    if connection.is_closed():
        return
    try:
        await connection.execute("ROLLBACK", timeout=timeout_s)
    except Exception:  # the connection is broken: closing it rolls back on the server
        connection.terminate()


async def _write_block(connection: Connection, block: Block, timeout_s: float) -> None:
    """Every statement of one block, inside the caller's open transaction."""
    header, writes = block.header, block.writes
    sequence = header.sequence
    status = await connection.execute(
        "UPDATE writer_lease SET last_block_sequence = $2 WHERE id = 1 AND epoch = $1",
        header.epoch,
        sequence,
        timeout=timeout_s,
    )
    if status != "UPDATE 1":
        raise FencedError(f"writer epoch {header.epoch} no longer holds the lease")
    await _write_accounts(connection, writes, sequence, timeout_s)
    await _write_transactions(connection, block, sequence, timeout_s)
    await _write_postings(connection, writes.postings, sequence, timeout_s)
    await _write_holds(connection, writes, timeout_s)
    if writes.closures:
        await connection.copy_records_to_table(
            "account_closures",
            records=[(a, at, sequence) for a, at in writes.closures],
            timeout=timeout_s,
        )
    await connection.execute(
        "INSERT INTO journal_blocks VALUES "
        "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        sequence,
        header.previous_hash,
        header.hash,
        header.epoch,
        header.created_at_ns,
        header.next_posting_sequence,
        header.last_timestamp_ns,
        len(writes.new_accounts),
        len(writes.new_transactions),
        len(writes.postings),
        len(writes.closures),
        header.key_id,
        header.signature,
        timeout=timeout_s,
    )


async def _write_accounts(
    connection: Connection, writes: WriteSet, sequence: int, timeout_s: float
) -> None:
    new_ids = {account.spec.id for account in writes.new_accounts}
    if writes.new_accounts:
        final = [writes.changed_accounts.get(a.spec.id, a) for a in writes.new_accounts]
        await connection.copy_records_to_table(
            "accounts",
            records=[_account_record(account, sequence) for account in final],
            columns=_ACCOUNT_COLUMNS,
            timeout=timeout_s,
        )
    changed = [a for i, a in writes.changed_accounts.items() if i not in new_ids]
    if not changed:
        return
    await connection.execute(
        """
        UPDATE accounts AS a SET
            debits_posted = u.dp, credits_posted = u.cp, debits_pending = u.dq,
            credits_pending = u.cq, version = u.v, closed_at_ns = u.closed
        FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                    $6::bigint[], $7::bigint[]) AS u(id, dp, cp, dq, cq, v, closed)
        WHERE a.id = u.id
        """,
        [a.spec.id for a in changed],
        [a.debits_posted for a in changed],
        [a.credits_posted for a in changed],
        [a.debits_pending for a in changed],
        [a.credits_pending for a in changed],
        [a.version for a in changed],
        [a.closed_at_ns for a in changed],
        timeout=timeout_s,
    )


async def _write_transactions(
    connection: Connection, block: Block, sequence: int, timeout_s: float
) -> None:
    writes = block.writes
    if writes.new_transactions:
        await connection.copy_records_to_table(
            "transactions",
            records=[
                _transaction_record(state, texts, sequence)
                for state, texts in zip(
                    writes.new_transactions, block.transaction_texts, strict=True
                )
            ],
            columns=TRANSACTION_WRITE_COLUMNS,
            timeout=timeout_s,
        )
    changed = list(writes.changed_transactions.values())
    if not changed:
        return
    # One statement for both tables a record can lie in (moved_transactions: records moved in
    # with slots), so the commit pays no extra round trip for them. It returns the records
    # neither holds: those of cold blocks (docs/design.md, "Cold history"), loaded from their
    # segment and written hot again here.
    unheld = await connection.fetch(
        """
        WITH u AS (
            SELECT * FROM unnest($1::text[], $2::smallint[], $3::text[], $4::text[],
                                 $5::bigint[]) AS u(id, status, resolved, reversed, expires)
        ), moved AS (
            UPDATE moved_transactions AS m SET
                status = u.status, resolved_by_id = u.resolved, reversed_by_id = u.reversed,
                expires_at_ns = u.expires
            FROM u WHERE m.id = u.id RETURNING m.id
        ), hot AS (
            UPDATE transactions AS t SET
                status = u.status, resolved_by_id = u.resolved, reversed_by_id = u.reversed,
                expires_at_ns = u.expires
            FROM u WHERE t.id = u.id RETURNING t.id
        )
        SELECT u.id FROM u
        WHERE NOT EXISTS (SELECT 1 FROM moved WHERE moved.id = u.id)
          AND NOT EXISTS (SELECT 1 FROM hot WHERE hot.id = u.id)
        """,
        [s.spec.id for s in changed],
        [int(s.status) for s in changed],
        [s.resolved_by_id for s in changed],
        [s.reversed_by_id for s in changed],
        [s.expires_at_ns for s in changed],
        timeout=timeout_s,
    )
    if unheld:
        await _revive(connection, writes, [row["id"] for row in unheld], timeout_s)


async def _revive(
    connection: Connection, writes: WriteSet, revived_ids: list[str], timeout_s: float
) -> None:
    """Write hot again the changed records of cold blocks, whole, with block_sequence 0: their
    block is in a cold segment, which the audit holds them against."""
    states = [writes.changed_transactions[i] for i in revived_ids]
    await connection.copy_records_to_table(
        "transactions",
        records=[
            _transaction_record(state, journal.legs_texts(state), REVIVED_BLOCK_SEQUENCE)
            for state in states
        ],
        columns=TRANSACTION_WRITE_COLUMNS,
        timeout=timeout_s,
    )


async def _write_postings(
    connection: Connection, postings: Sequence[Posting], sequence: int, timeout_s: float
) -> None:
    if not postings:
        return
    # block_sequence comes from the column default (see the schema), set for this transaction.
    await connection.execute(
        "SELECT set_config('tally.block_sequence', $1, true)", str(sequence), timeout=timeout_s
    )
    await connection.copy_records_to_table(
        "postings", records=postings, columns=_POSTING_COLUMNS, timeout=timeout_s
    )


async def _write_holds(connection: Connection, writes: WriteSet, timeout_s: float) -> None:
    if writes.holds_opened:
        await connection.copy_records_to_table(
            "holds", records=writes.holds_opened, timeout=timeout_s
        )
    if writes.holds_rearmed:
        # In order: a batch may re-arm a piece twice; the last deadline wins.
        final = dict(writes.holds_rearmed)
        await connection.execute(
            """
            UPDATE holds AS h SET expires_at_ns = u.expires
            FROM unnest($1::text[], $2::bigint[]) AS u(id, expires)
            WHERE h.transaction_id = u.id
            """,
            list(final),
            list(final.values()),
            timeout=timeout_s,
        )
    if writes.holds_closed:
        await connection.execute(
            "DELETE FROM holds WHERE transaction_id = ANY($1::text[])",
            writes.holds_closed,
            timeout=timeout_s,
        )


# ---- loads and reads ----


async def load_accounts(
    connection: Connection, ids: Iterable[str], timeout_s: float
) -> dict[str, AccountState]:
    rows = await connection.fetch(
        "SELECT * FROM accounts WHERE id = ANY($1::text[])", list(ids), timeout=timeout_s
    )
    return {row["id"]: account_from_row(row) for row in rows}


async def load_transactions(
    connection: Connection, ids: Iterable[str], timeout_s: float
) -> dict[str, TransactionState]:
    """By id, from transactions and from the records moved in with slots (moved_transactions:
    docs/design.md, "Moving slots"); an id is in one of them at most."""
    rows = await connection.fetch(_LOAD_TRANSACTIONS_SQL, list(ids), timeout=timeout_s)
    return {row["id"]: transaction_from_row(row) for row in rows}


_LOAD_TRANSACTIONS_SQL = f"""
SELECT {", ".join(TRANSACTION_COLUMNS)} FROM transactions WHERE id = ANY($1::text[])
UNION ALL
SELECT {", ".join(TRANSACTION_COLUMNS)} FROM moved_transactions WHERE id = ANY($1::text[])
"""


async def last_block(connection: Connection, timeout_s: float) -> BlockHeader:
    row = await connection.fetchrow(
        "SELECT * FROM journal_blocks ORDER BY sequence DESC LIMIT 1", timeout=timeout_s
    )
    if row is None:
        return BlockHeader(0, journal.GENESIS_HASH, journal.GENESIS_HASH, 0, 0, 1, 0)
    return header_from_row(row)


def header_from_row(row: asyncpg.Record) -> BlockHeader:
    """A journal_blocks row's header (every column but the counts)."""
    return BlockHeader(
        row["sequence"],
        bytes(row["previous_hash"]),
        bytes(row["hash"]),
        row["epoch"],
        row["created_at_ns"],
        row["next_posting_sequence"],
        row["last_timestamp_ns"],
        row["key_id"],
        bytes(row["signature"]),
    )


async def signed_heads_after(
    connection: Connection, sequence: int, count_max: int, timeout_s: float
) -> list[tuple[int, bytes, str, bytes]]:
    """(sequence, hash, key id, signature) of the signed blocks after `sequence`, in order."""
    rows = await connection.fetch(
        "SELECT sequence, hash, key_id, signature FROM journal_blocks "
        "WHERE sequence > $1 AND key_id <> '' ORDER BY sequence LIMIT $2",
        sequence,
        count_max,
        timeout=timeout_s,
    )
    return [(r["sequence"], bytes(r["hash"]), r["key_id"], bytes(r["signature"])) for r in rows]


# The records the holds table's rows are of: this shard's own and those moved in with slots
# (an open hold, or a held cross-shard piece moved with its accounts: docs/design.md, "Moving
# slots"). Joined from holds (only open records live there), each branch by its primary key.
_HELD_RECORDS: Final = """(
    SELECT id, kind, target_id, timeout_seconds, timestamp_ns, resolved_by_id FROM transactions
    UNION ALL
    SELECT id, kind, target_id, timeout_seconds, timestamp_ns, resolved_by_id
    FROM moved_transactions
)"""


async def expired_holds(
    connection: Connection, now_ns: int, limit: int, timeout_s: float
) -> list[str]:
    rows = await connection.fetch(
        f"""
        SELECT h.transaction_id FROM holds h JOIN {_HELD_RECORDS} t ON t.id = h.transaction_id
        WHERE h.expires_at_ns > 0 AND h.expires_at_ns <= $1 AND t.kind = ANY($3::smallint[])
          AND t.resolved_by_id = ''  -- not locked by a piece deciding it (it waits for that)
        ORDER BY h.expires_at_ns LIMIT $2
        """,
        now_ns,
        limit,
        [int(Kind.PENDING), int(Kind.HOLD)],
        timeout=timeout_s,
    )
    return [row["transaction_id"] for row in rows]


def _held_pieces(rows: list[Any]) -> list[tuple[str, int, int, int]]:
    """(id, coordinator shard, deadline, prepare deadline in seconds) of held pieces' rows."""
    return [
        (
            row["transaction_id"],
            int(row["target_id"]),
            int(row["expires_at_ns"]),
            int(row["timeout_seconds"]),
        )
        for row in rows
    ]


async def prepared_past_deadline(
    connection: Connection, now_ns: int, limit: int, timeout_s: float
) -> list[tuple[str, int, int, int]]:
    """Cross-shard pieces held past their deadline: (id, coordinator shard, that deadline,
    the piece's prepare deadline in seconds), at most `limit`, taken round robin across
    coordinators (each one's earliest first, then each one's second, ...): the pieces of a
    coordinator that never answers stay overdue, and ordered by deadline alone they would
    fill every sweep and starve the pieces of the coordinators that do answer."""
    rows = await connection.fetch(
        f"""
        SELECT transaction_id, target_id, expires_at_ns, timeout_seconds FROM (
            SELECT h.transaction_id, t.target_id, h.expires_at_ns, t.timeout_seconds,
                   row_number() OVER (PARTITION BY t.target_id ORDER BY h.expires_at_ns) AS turn
            FROM holds h JOIN {_HELD_RECORDS} t ON t.id = h.transaction_id
            WHERE h.expires_at_ns > 0 AND h.expires_at_ns <= $1 AND t.kind = $3
        ) overdue
        ORDER BY turn, expires_at_ns LIMIT $2
        """,
        now_ns,
        limit,
        int(Kind.PREPARED),
        timeout=timeout_s,
    )
    return _held_pieces(rows)


async def prepared_before(
    connection: Connection, before_ns: int, limit: int, timeout_s: float
) -> list[tuple[str, int, int, int]]:
    """Cross-shard pieces held since before before_ns (a writer's start: pieces an earlier
    writer prepared, whose gateway may have lost them with it), in prepared_past_deadline's
    shape, oldest first, at most `limit`."""
    rows = await connection.fetch(
        f"""
        SELECT h.transaction_id, t.target_id, h.expires_at_ns, t.timeout_seconds
        FROM holds h JOIN {_HELD_RECORDS} t ON t.id = h.transaction_id
        WHERE h.expires_at_ns > 0 AND t.kind = $3 AND t.timestamp_ns < $1
        ORDER BY t.timestamp_ns LIMIT $2
        """,
        before_ns,
        limit,
        int(Kind.PREPARED),
        timeout=timeout_s,
    )
    return _held_pieces(rows)


async def prepared_without_deadline(
    connection: Connection, limit: int, timeout_s: float
) -> list[str]:
    """Cross-shard pieces held with no deadline (0), which prepared_past_deadline never takes:
    left by code from before every held piece had one (a re-arm to 0, since refused). At most
    `limit`; a scan of holds (small: only open holds live there), run once per writer."""
    rows = await connection.fetch(
        f"""
        SELECT h.transaction_id FROM holds h JOIN {_HELD_RECORDS} t ON t.id = h.transaction_id
        WHERE h.expires_at_ns = 0 AND t.kind = $1
        ORDER BY h.transaction_id LIMIT $2
        """,
        int(Kind.PREPARED),
        limit,
        timeout=timeout_s,
    )
    return [row["transaction_id"] for row in rows]


async def prepared_pieces(connection: Connection, timeout_s: float) -> tuple[int, int]:
    """Cross-shard pieces held here, and the oldest one's creation time (0: none). One scan of
    holds (small: only open holds live there) joined on the transactions primary key."""
    row = await connection.fetchrow(
        f"""
        SELECT count(*) AS piece_count, coalesce(min(t.timestamp_ns), 0) AS oldest_ns
        FROM holds h JOIN {_HELD_RECORDS} t ON t.id = h.transaction_id
        WHERE t.kind = $1
        """,
        int(Kind.PREPARED),
        timeout=timeout_s,
    )
    return int(row["piece_count"]), int(row["oldest_ns"])


async def hot_history(connection: Connection, timeout_s: float) -> tuple[int, int]:
    """The last block moved to cold segments (0: none) and the creation time of the oldest
    block still hot (0: none yet): how far the archiver has come (docs/design.md, "Cold
    history"). Two primary-key reads."""
    row = await connection.fetchrow(
        """
        WITH c AS (SELECT coalesce(max(last_block), 0) AS last_cold FROM cold_segments)
        SELECT c.last_cold, coalesce(b.created_at_ns, 0) AS oldest_hot_ns
        FROM c LEFT JOIN journal_blocks b ON b.sequence = c.last_cold + 1
        """,
        timeout=timeout_s,
    )
    return int(row["last_cold"]), int(row["oldest_hot_ns"])


async def list_postings(
    connection: Connection,
    account_id: str,
    after_sequence: int,
    limit: int,
    from_ns: int,
    to_ns: int,
    timeout_s: float,
) -> list[tuple[Posting, int]]:
    """Postings with the sequence of the journal block each was committed in."""
    rows = await connection.fetch(
        """
        SELECT * FROM postings
        WHERE account_id = $1 AND sequence > $2::bigint AND timestamp_ns >= $3::bigint
          AND ($4::bigint = 0 OR timestamp_ns < $4::bigint)
        ORDER BY sequence LIMIT $5
        """,
        account_id,
        after_sequence,
        from_ns,
        to_ns,
        limit,
        timeout=timeout_s,
    )
    return [(posting_from_row(row), row["block_sequence"]) for row in rows]


async def posting_at(
    connection: Connection, account_id: str, at_ns: int, timeout_s: float
) -> Posting | None:
    """The account's last posting at or before at_ns, but a slot move's move-out: after its
    move-out a source answers the balance the account left with (docs/design.md, "Reads
    across the move"), not the move-out's doubled counters."""
    row = await connection.fetchrow(
        """
        SELECT * FROM postings WHERE account_id = $1 AND timestamp_ns <= $2
          AND transaction_id NOT LIKE '~moveout/%'
        ORDER BY sequence DESC LIMIT 1
        """,
        account_id,
        at_ns,
        timeout=timeout_s,
    )
    return None if row is None else posting_from_row(row)
