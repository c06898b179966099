"""Books with cold history, for the auditor's tools (audit, export, statements): one shard's
journal written through a real node (every kind of record, then transfers in two runs), kept
hot in one database and, in a copy, archived up to the end of the first run
(core.store.cold.archive.archive_and_remove, four blocks a segment), so that the copy reads the
first run's blocks from segments and the second's from its tables."""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from core import audit
from core.store.cold.archive import archive_and_remove
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.cold import post_journal
from tests.support.helpers import Client, start_node
from tests.support.seeded_ledger import clone_database

CREATED = pb.RESULT_CODE_CREATED
BLOCKS_PER_SEGMENT = 4
FIRST_RUN = [f"cust-1/a{n}" for n in range(6)]
SECOND_RUN = [f"cust-1/b{n}" for n in range(4)]


@dataclass(frozen=True)
class ColdBooks:
    hot_dsn: str  # every row in PostgreSQL
    cold_template: str  # the same books, the first run archived: a template to clone
    root: Path  # the cold copy's segments (the cluster's root: root/shard-0)
    boundary_ns: int  # between the runs: what was created before it is cold
    end_ns: int  # after the second run


async def audit_shard_of(dsn: str, root: Path | None) -> audit.ShardReport:
    """Shard 0's audit of dsn, with the cold segments under root (None: none given)."""
    config = audit.AuditConfig(statement_timeout_s=60.0, hold_grace_s=None, segments_root=root)
    connection = await asyncpg.connect(dsn)
    try:
        return await audit.audit_shard(connection, 0, config)
    finally:
        await connection.close()


async def post(dsn: str, names: list[str], every_kind: bool = False, cold_dir: str = "") -> None:
    """Transfers between the customers' deposits through a node, one block each."""
    await post_journal(dsn, names, every_kind, Path(cold_dir) if cold_dir else None)


async def reverse(dsn: str, cold_dir: Path, reversal_id: str, reversed_id: str) -> None:
    """Reverse a transaction through a node reading the cold history under cold_dir."""
    handle = await start_node(dsn, cold_dir=str(cold_dir))
    try:
        async with security.channel(handle.target) as channel:
            item = pb.Transaction(id=reversal_id, code=1, reverses_id=reversed_id)
            assert await Client(channel).codes(item) == [CREATED]
    finally:
        await handle.stop()


async def archive_before(dsn: str, root: Path, before_ns: int) -> int:
    """Archive and remove the blocks created before before_ns; the segments removed."""
    connection = await asyncpg.connect(dsn)
    try:
        _, removed = await archive_and_remove(
            connection, root, created_before_ns=before_ns, blocks_per_segment=BLOCKS_PER_SEGMENT
        )
        return len(removed)
    finally:
        await connection.close()


async def make_cold_books(pg: EmbeddedPostgres, name: str, directory: Path) -> ColdBooks:
    await pg.create_database_async(name)
    hot_dsn = pg.dsn(name)
    await post(hot_dsn, FIRST_RUN, every_kind=True)
    await asyncio.sleep(0.002)
    boundary_ns = time.time_ns()
    await asyncio.sleep(0.002)
    await post(hot_dsn, SECOND_RUN)
    end_ns = time.time_ns()
    cold_name = f"{name}_cold"
    connection = await asyncpg.connect(pg.dsn(), timeout=30)
    try:
        await connection.execute(f'CREATE DATABASE "{cold_name}" TEMPLATE "{name}"', timeout=60)
    finally:
        await connection.close(timeout=10)
    root = directory / "segments"
    assert await archive_before(pg.dsn(cold_name), root, boundary_ns) >= 2
    return ColdBooks(hot_dsn, cold_name, root, boundary_ns, end_ns)


async def cold_copy(pg: EmbeddedPostgres, books: ColdBooks, directory: Path) -> tuple[str, Path]:
    """A fresh copy of the cold books, with its own copy of their segments (to alter or add
    to)."""
    root = directory / "segments"
    shutil.copytree(books.root, root)
    return await clone_database(pg, books.cold_template), root
