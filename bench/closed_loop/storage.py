"""Where a shard database's bytes go (issue 13, "measure the bytes first"):
`python -m bench.closed_loop.storage --dsn DSN` (or `--data-dir DIR` of a `tally up`, or
`--data-dir DIR --database tally` of a `single_node --data-dir DIR`).

For every table of the schema (read from the catalog, so a table or index added by a migration
shows up by itself) and every one of its indexes: bytes on disk (pg_relation_size of the main
fork; the free space and visibility maps; TOAST with its index), live rows, bytes per row and
per index entry; with the `pgstattuple` extension (shipped with the embedded PostgreSQL; created
in the database when missing, which needs a superuser) also the live tuples' own bytes, dead
tuples and free space of each table, and each B-tree's leaf density.

Then the totals, indexes and TOAST included, with the definitions of bench/locust/cost.py (the
cost model) so the two never disagree:

    bytes per account     = total bytes of `accounts` / accounts
    bytes per posting     = total bytes of postings, transactions, journal_blocks and holds
                            (cost.PER_POSTING_RELATIONS: what grows with postings) / postings
    bytes per transaction = the same bytes / transactions (a transfer has 2 postings)

and each relation's share of them (its heap, TOAST and each index apart): the top consumers.
Relations of neither kind (writer_lease, shard_identity, account_closures, the migrations' table)
are listed with their bytes and counted in neither total, as in the cost model.

Writes storage.json and storage.md to --out (default: print only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg

from bench.locust import cost
from shards.local.embedded_pg import EmbeddedPostgres, EmbeddedPostgresConfig, free_port

TIMEOUT_S: Final = 600.0
# The targets for the schema redesign (issue 13), indexes included.
TARGET_BYTES_PER_POSTING: Final = cost.BYTES_TARGET["posting"]
TARGET_BYTES_PER_ACCOUNT: Final = cost.BYTES_TARGET["account"]
PER_ACCOUNT_RELATIONS: Final = ("accounts",)

_TABLES_SQL: Final = """
SELECT c.oid::regclass::text AS qualified, c.relname AS name,
    pg_relation_size(c.oid, 'main') AS heap_bytes,
    pg_relation_size(c.oid, 'fsm') + pg_relation_size(c.oid, 'vm') AS map_bytes,
    CASE WHEN c.reltoastrelid <> 0 THEN pg_total_relation_size(c.reltoastrelid) ELSE 0 END
        AS toast_bytes,
    pg_indexes_size(c.oid) AS index_bytes,
    pg_total_relation_size(c.oid) AS total_bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'm')
ORDER BY c.relname
"""
_INDEXES_SQL: Final = """
SELECT ci.oid::regclass::text AS qualified, ci.relname AS name, ct.relname AS table_name,
    am.amname AS method, pg_relation_size(ci.oid) AS bytes,
    pg_get_expr(i.indpred, i.indrelid) AS predicate
FROM pg_index i
JOIN pg_class ci ON ci.oid = i.indexrelid
JOIN pg_class ct ON ct.oid = i.indrelid
JOIN pg_namespace n ON n.oid = ct.relnamespace
JOIN pg_am am ON am.oid = ci.relam
WHERE n.nspname = $1
ORDER BY ct.relname, ci.relname
"""


@dataclass(frozen=True, slots=True)
class IndexSize:
    name: str
    table: str
    method: str
    bytes: int
    entries: int  # the table's live rows, or those its predicate keeps (a partial index)
    bytes_per_entry: float | None
    predicate: str | None
    leaf_density_percent: float | None  # pgstatindex: how full the B-tree's leaf pages are


@dataclass(frozen=True, slots=True)
class TableSize:
    name: str
    rows: int  # live rows
    heap_bytes: int
    map_bytes: int  # free space map and visibility map
    toast_bytes: int  # the TOAST table with its index
    index_bytes: int
    total_bytes: int  # pg_total_relation_size: all of the above
    heap_bytes_per_row: float | None
    total_bytes_per_row: float | None
    # pgstattuple (None without it): live tuples' bytes (headers included), dead tuples, free
    tuple_bytes: int | None = None
    dead_rows: int | None = None
    dead_tuple_bytes: int | None = None
    free_bytes: int | None = None
    indexes: list[IndexSize] = field(default_factory=list)


@dataclass(slots=True)
class Breakdown:
    schema: str
    pgstattuple: bool
    tables: list[TableSize]
    totals: dict[str, float | None]
    # (relation part, bytes per posting / per account): who the bytes go to
    per_posting: list[tuple[str, float]]
    per_account: list[tuple[str, float]]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def relation_names(self) -> set[str]:
        """Every table and index named."""
        names = {table.name for table in self.tables}
        return names | {index.name for table in self.tables for index in table.indexes}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _per(numerator: float, count: int) -> float | None:
    return round(numerator / count, 1) if count else None


async def _ensure_pgstattuple(connection: Any) -> str | None:
    """The schema of the pgstattuple functions, created when missing; None when it cannot be
    (no superuser, or a server without the extension)."""
    try:
        await connection.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple", timeout=60.0)
    except asyncpg.PostgresError:
        return None
    schema: str = await connection.fetchval(
        "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pgstattuple'",
        timeout=60.0,
    )
    return schema


async def _table(connection: Any, row: Any, stattuple: str | None) -> TableSize:
    qualified = row["qualified"]
    found = None
    if stattuple is not None:
        found = await connection.fetchrow(
            f"SELECT * FROM {stattuple}.pgstattuple($1::regclass)", qualified, timeout=TIMEOUT_S
        )
        rows = int(found["tuple_count"])
    else:
        rows = int(
            await connection.fetchval(f"SELECT count(*) FROM {qualified}", timeout=TIMEOUT_S)
        )
    return TableSize(
        name=row["name"],
        rows=rows,
        heap_bytes=int(row["heap_bytes"]),
        map_bytes=int(row["map_bytes"]),
        toast_bytes=int(row["toast_bytes"]),
        index_bytes=int(row["index_bytes"]),
        total_bytes=int(row["total_bytes"]),
        heap_bytes_per_row=_per(int(row["heap_bytes"]), rows),
        total_bytes_per_row=_per(int(row["total_bytes"]), rows),
        tuple_bytes=None if found is None else int(found["tuple_len"]),
        dead_rows=None if found is None else int(found["dead_tuple_count"]),
        dead_tuple_bytes=None if found is None else int(found["dead_tuple_len"]),
        free_bytes=None if found is None else int(found["free_space"]),
    )


async def _index(connection: Any, row: Any, table: TableSize, stattuple: str | None) -> IndexSize:
    entries = table.rows
    predicate = row["predicate"]
    if predicate is not None:
        entries = int(
            await connection.fetchval(
                f"SELECT count(*) FROM {_quote(row['table_name'])} WHERE {predicate}",
                timeout=TIMEOUT_S,
            )
        )
    density = None
    if stattuple is not None and row["method"] == "btree":
        found = await connection.fetchrow(
            f"SELECT avg_leaf_density FROM {stattuple}.pgstatindex($1::regclass)",
            row["qualified"],
            timeout=TIMEOUT_S,
        )
        value = float(found["avg_leaf_density"])
        density = None if value != value else round(value, 1)  # NaN: no leaf page yet
    return IndexSize(
        name=row["name"],
        table=row["table_name"],
        method=row["method"],
        bytes=int(row["bytes"]),
        entries=entries,
        bytes_per_entry=_per(int(row["bytes"]), entries),
        predicate=predicate,
        leaf_density_percent=density,
    )


async def measure(dsn: str, schema: str = "public", use_pgstattuple: bool = True) -> Breakdown:
    """The breakdown of one database's schema (a shard database: schema public)."""
    connection = await asyncpg.connect(
        dsn, timeout=30.0, server_settings={"search_path": _quote(schema)}
    )
    try:
        stattuple = await _ensure_pgstattuple(connection) if use_pgstattuple else None
        tables = []
        for row in await connection.fetch(_TABLES_SQL, schema, timeout=TIMEOUT_S):
            tables.append(await _table(connection, row, stattuple))
        by_name = {table.name: table for table in tables}
        for row in await connection.fetch(_INDEXES_SQL, schema, timeout=TIMEOUT_S):
            table = by_name[row["table_name"]]
            table.indexes.append(await _index(connection, row, table, stattuple))
    finally:
        await connection.close(timeout=10.0)
    return summarise(schema, tables, stattuple is not None)


def summarise(schema: str, tables: list[TableSize], pgstattuple: bool) -> Breakdown:
    by_name = {table.name: table for table in tables}
    relations = {t.name: {"bytes": t.total_bytes, "rows": t.rows} for t in tables}
    postings = relations.get("postings", {}).get("rows", 0)
    accounts = relations.get("accounts", {}).get("rows", 0)
    transactions = relations.get("transactions", {}).get("rows", 0)
    per_posting_bytes = sum(
        by_name[n].total_bytes for n in cost.PER_POSTING_RELATIONS if n in by_name
    )
    totals: dict[str, float | None] = {
        "accounts": accounts,
        "transactions": transactions,
        "postings": postings,
        "bytes_per_account": None,
        "bytes_per_posting": None,
        "bytes_per_transaction": _per(per_posting_bytes, transactions),
        "postings_per_transaction": round(postings / transactions, 3) if transactions else None,
        "target_bytes_per_posting": TARGET_BYTES_PER_POSTING,
        "target_bytes_per_account": TARGET_BYTES_PER_ACCOUNT,
        "database_bytes": sum(t.total_bytes for t in tables),
    }
    notes = []
    try:
        per_account, per_posting = cost.bytes_per_row([relations])  # the cost model's own
        totals["bytes_per_account"] = round(per_account, 1)
        totals["bytes_per_posting"] = round(per_posting, 1)
    except ValueError as error:
        notes.append(f"no per-row totals: {error}")
    unattributed = sorted(
        set(by_name) - set(cost.PER_POSTING_RELATIONS) - set(PER_ACCOUNT_RELATIONS)
    )
    notes.append("in neither total: " + ", ".join(unattributed))
    return Breakdown(
        schema=schema,
        pgstattuple=pgstattuple,
        tables=tables,
        totals=totals,
        per_posting=shares(by_name, cost.PER_POSTING_RELATIONS, postings),
        per_account=shares(by_name, PER_ACCOUNT_RELATIONS, accounts),
        notes=notes,
    )


def shares(
    by_name: dict[str, TableSize], names: Sequence[str], count: int
) -> list[tuple[str, float]]:
    """Each part (heap with its maps, TOAST, each index) of these tables, per row counted, the
    largest first."""
    if not count:
        return []
    parts: list[tuple[str, float]] = []
    for name in names:
        table = by_name.get(name)
        if table is None:
            continue
        parts.append((f"{name} (heap)", (table.heap_bytes + table.map_bytes) / count))
        if table.toast_bytes:
            parts.append((f"{name} (TOAST)", table.toast_bytes / count))
        parts += [(f"{index.name} (index)", index.bytes / count) for index in table.indexes]
    return sorted(((part, round(value, 1)) for part, value in parts), key=lambda p: -p[1])


# ---- rendering ----


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}".removesuffix(".0")


def _table_rows(breakdown: Breakdown) -> list[list[str]]:
    rows = []
    for t in breakdown.tables:
        dead = "-" if t.dead_rows is None else f"{t.dead_rows:,}"
        rows.append(
            [t.name, "table", f"{t.rows:,}", f"{t.heap_bytes:,}", f"{t.toast_bytes:,}",
             f"{t.total_bytes:,}", _number(t.heap_bytes_per_row), _number(t.total_bytes_per_row),
             _number(t.tuple_bytes / t.rows if t.tuple_bytes is not None and t.rows else None),
             dead, _number(t.free_bytes), "-"]
        )  # fmt: skip
        for i in t.indexes:
            rows.append(
                [f"  {i.name}", f"index ({i.method})", f"{i.entries:,}", f"{i.bytes:,}", "-",
                 "-", _number(i.bytes_per_entry), "-", "-", "-", "-",
                 _number(i.leaf_density_percent)]
            )  # fmt: skip
    return rows


_HEADER: Final = (
    "relation", "kind", "rows / entries", "bytes (heap or index)", "TOAST bytes", "total bytes",
    "B/row or entry", "total B/row", "live tuple B/row", "dead rows", "free bytes",
    "leaf density %",
)  # fmt: skip


def totals_lines(breakdown: Breakdown) -> list[str]:
    t = breakdown.totals
    return [
        f"bytes per posting: {_number(t['bytes_per_posting'])} "
        f"(target <= {TARGET_BYTES_PER_POSTING:g}; postings, transactions, journal_blocks, holds)",
        f"bytes per account: {_number(t['bytes_per_account'])} "
        f"(target <= {TARGET_BYTES_PER_ACCOUNT:g}; accounts)",
        f"bytes per transaction: {_number(t['bytes_per_transaction'])} "
        f"({_number(t['postings_per_transaction'])} postings each)",
        f"rows: {t['accounts']:,} accounts, {t['transactions']:,} transactions, "
        f"{t['postings']:,} postings; database {t['database_bytes']:,} bytes",
    ]


def markdown(breakdown: Breakdown) -> str:
    """A section of a report (level-3 headings inside)."""
    shares = [
        [part, _number(value), _number(account)]
        for part, value, account in _zipshares(breakdown.per_posting, breakdown.per_account)
    ]
    return "\n\n".join(
        [
            "\n".join(f"- {line}" for line in totals_lines(breakdown)),
            "### Per relation\n\n" + markdown_table(_HEADER, _table_rows(breakdown)),
            "### Who the bytes go to (largest first)\n\n"
            + markdown_table(["part", "B per posting", "B per account"], shares),
            "\n".join(f"- {note}" for note in breakdown.notes)
            + f"\n- pgstattuple: {'yes' if breakdown.pgstattuple else 'no'}; schema "
            f"`{breakdown.schema}`",
        ]
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _zipshares(
    per_posting: list[tuple[str, float]], per_account: list[tuple[str, float]]
) -> list[tuple[str, float | None, float | None]]:
    rows: list[tuple[str, float | None, float | None]] = [(p, v, None) for p, v in per_posting]
    return rows + [(p, None, v) for p, v in per_account]


def text(breakdown: Breakdown) -> str:
    rows = [list(_HEADER), *_table_rows(breakdown)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines += ["", *totals_lines(breakdown), "", "largest per posting:"]
    lines += [f"  {part}: {value:,.1f} B" for part, value in breakdown.per_posting[:6]]
    return "\n".join(lines)


# ---- the command ----


@contextlib.contextmanager
def _database(args: argparse.Namespace) -> Iterator[str]:
    """The DSN to read: --dsn as given, or the database of DATA_DIR/pg (a `tally up`'s, or a
    `single_node --data-dir`'s): its running server, or else started for the reading and
    stopped after."""
    if args.dsn:
        yield args.dsn
        return
    pg_dir = Path(args.data_dir).resolve() / "pg"
    database = args.database or f"tally_shard_{args.shard}"
    probe = EmbeddedPostgres(EmbeddedPostgresConfig(data_dir=pg_dir, port=5432))
    if probe.is_running():
        # postmaster.pid's 4th line is the port it listens on
        port = int((pg_dir / "postmaster.pid").read_text().splitlines()[3])
        yield EmbeddedPostgres(EmbeddedPostgresConfig(data_dir=pg_dir, port=port)).dsn(database)
        return
    server = EmbeddedPostgres(EmbeddedPostgresConfig(data_dir=pg_dir, port=free_port()))
    server.start()
    try:
        yield server.dsn(database)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.closed_loop.storage",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--dsn", help="the shard database (a superuser's for pgstattuple)")
    where.add_argument(
        "--data-dir",
        type=Path,
        help="a directory with PostgreSQL's data in pg/: `tally up`'s DATA_DIR or single_node's "
        "--data-dir (a stopped server is started for the reading, then stopped)",
    )
    parser.add_argument("--shard", type=int, default=0, help="with --data-dir: tally_shard_N")
    parser.add_argument(
        "--database", help="with --data-dir: this database (single_node's: tally) instead"
    )
    parser.add_argument("--schema", default="public")
    parser.add_argument("--no-pgstattuple", action="store_true", help="sizes and counts only")
    parser.add_argument("--out", type=Path, help="write storage.json and storage.md here")
    args = parser.parse_args(argv)
    with _database(args) as dsn:
        breakdown = asyncio.run(measure(dsn, args.schema, not args.no_pgstattuple))
    print(text(breakdown))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "storage.json").write_text(json.dumps(breakdown.to_json(), indent=2) + "\n")
        (args.out / "storage.md").write_text("# Storage breakdown\n\n" + markdown(breakdown) + "\n")
        print(f"\nstorage: wrote {args.out / 'storage.md'} and storage.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
