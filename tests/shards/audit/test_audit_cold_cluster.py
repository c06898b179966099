"""The audit of a 2-shard cluster whose shards archived their cross-shard history (cold
segments): the cross-shard commits that left the tables are read from the segments, so the
clearing counters and the cross-shard judge hold across the boundary."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import asyncpg

from core import audit
from core.slots import SlotMap
from core.store.cold.archive import archive_and_remove
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.helpers import Client, account, in_process_cluster, transfer

SHARD_COUNT = 2
CREATED = pb.RESULT_CODE_CREATED


def _keys_per_shard() -> dict[int, str]:
    slot_map = SlotMap.even(SHARD_COUNT)
    chosen: dict[int, str] = {}
    for n in itertools.count():
        chosen.setdefault(slot_map.shard_of_key(f"cc{n}"), f"cc{n}")
        if len(chosen) == SHARD_COUNT:
            return chosen
    raise AssertionError("unreachable")


async def _archive(dsn: str, root: Path) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        _, removed = await archive_and_remove(
            connection, root, created_before_ns=time.time_ns(), blocks_per_segment=3
        )
        return len(removed)
    finally:
        await connection.close()


async def test_archived_cross_shard_history_audits_clean(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    root = tmp_path / "segments"
    keys = _keys_per_shard()
    a, b = keys[0], keys[1]
    async with in_process_cluster(
        pg, f"acc{os.getpid()}", SHARD_COUNT, cold_dir=str(root)
    ) as cluster:
        async with security.channel(f"127.0.0.1:{cluster.gateway.port}") as channel:
            client = Client(channel)
            opened = await client.create(account("@bank"), account(f"{a}/dep"), account(f"{b}/dep"))
            assert set(opened) == {CREATED}
            assert await client.codes(transfer("fund", "@bank", f"{a}/dep", 10_000)) == [CREATED]
            for n in range(4):
                item = transfer(f"x{n}", f"{a}/dep", f"{b}/dep", 10 + n)
                assert await client.codes(item) == [CREATED]
            hold = transfer("xh", f"{a}/dep", f"{b}/dep", 50, pending=True, timeout_seconds=3600)
            assert await client.codes(hold) == [CREATED]
            post = pb.Transaction(id="xh-post", code=1, post_pending_id="xh")
            assert await client.codes(post) == [CREATED]
            dsns = cluster.dsns if hasattr(cluster, "dsns") else [n.dsn for n in cluster.nodes]
            config = audit.AuditConfig(hold_grace_s=None, segments_root=root)
            before = await audit.audit_cluster(dsns, config)
            assert before.ok, [str(p) for s in before.shards for p in s.problems]
            assert sum([await _archive(dsn, root) for dsn in dsns]) >= 2
            after = await audit.audit_cluster(dsns, config)
            problems = [str(p) for s in after.shards for p in s.problems]
            problems += [str(p) for p in after.cluster_problems]
            assert problems == [] and after.ok, problems
            assert (
                after.cross_shard.checked
                and after.cross_shard.settled_count == (before.cross_shard.settled_count) > 0
            )
