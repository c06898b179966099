"""A slot moved whose records at its source are partly cold (archived: their transactions rows
gone, their segment holding them): the move carries them all (pre-copied, and one of them
reversed, so written hot again, between the pre-copy and the fence), so at the target a retry
of an archived transaction id is a replay, not applied twice, and the audit of the cluster (its
moves' records held against the source's, cold ones from their segments) is clean."""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import replace
from pathlib import Path

import asyncpg

from core.audit import AuditConfig, FindingKind, audit_cluster
from core.slots import slot_of
from core.store.cold.archive import archive_and_remove
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.helpers import Client, account, in_process_cluster, start_node, transfer
from tests.support.slot_moves import customer_on, post_until_done, run_slots

CREATED = pb.RESULT_CODE_CREATED
REPLAYED = pb.RESULT_CODE_REPLAYED
MOVED_RECORD_ALTERED = FindingKind.MOVED_RECORD_ALTERED


async def _archive(dsn: str, root: Path) -> int:
    """Archive every block of the shard so far; how many transactions rows went cold."""
    connection = await asyncpg.connect(dsn)
    try:
        _, removed = await archive_and_remove(connection, root, created_before_ns=time.time_ns())
    finally:
        await connection.close()
    return sum(r.transactions_deleted for r in removed)


# Why long: one cluster, written, archived at the source, moved, retried and audited.
async def test_a_slot_with_cold_records_moves_them_and_an_archived_id_replays_at_the_target(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    prefix = f"mc{os.getpid()}"
    root = tmp_path / "segments"
    options = {"slot_map_poll_interval_s": 0.2}
    async with in_process_cluster(pg, prefix, 2, gateway_options=options) as cluster:
        key = customer_on(0, 2)
        async with security.channel(cluster.target) as channel:
            client = Client(channel)
            created = await client.create(
                account("@cash"), account(f"{key}/dep"), account(f"{key}/sav")
            )
            assert created[1:] == [CREATED, CREATED]
            fund = transfer(f"{key}/fund", "@cash", f"{key}/dep", 1_000)
            assert await client.codes(fund) == [CREATED]
            old = [transfer(f"{key}/old-{n}", f"{key}/dep", f"{key}/sav", 1 + n) for n in range(4)]
            assert await client.codes(*old) == [CREATED] * 4
            source = cluster.nodes[0]
            assert await _archive(source.dsn, root) >= len(old)
            cold_ids = await asyncpg.connect(source.dsn)
            try:
                hot = await cold_ids.fetchval(
                    "SELECT count(*) FROM transactions WHERE id LIKE $1", f"{key}/old-%"
                )
            finally:
                await cold_ids.close()
            assert hot == 0  # the old transfers are cold at the source
            # Started again with its cold directory (--cold-dir), so its writer and its
            # move reads find the archived records.
            await source.stop()
            source = cluster.nodes[0] = await start_node(
                source.dsn, control_dsn=cluster.control_dsn, shard_id=0, cold_dir=str(root)
            )
            new = transfer(f"{key}/new", f"{key}/dep", f"{key}/sav", 50)
            await post_until_done(client, new, {})  # the gateway finds the node started again

            # Pre-copied (the cold records too), the mover killed before the move-out; then an
            # archived transfer is reversed, so its record is written hot again (block 0): the
            # copy after the fence finds it by the reversal naming it.
            move = ("move", "--slots", str(slot_of(key)), "--to", "1")
            code, _, stderr = await run_slots(
                cluster.control_dsn, *move, failpoint="slots.after_precopy=exit"
            )
            assert code == -9, stderr
            reversal = pb.Transaction(id=f"{key}/r-old-0", code=9, reverses_id=f"{key}/old-0")
            assert await client.codes(reversal) == [CREATED]
            before = await client.balance(f"{key}/dep")
            code, stdout, stderr = await run_slots(cluster.control_dsn, "resume")
            assert code == 0, stderr
            assert re.search(r"move ([0-9a-f]+) resumed and finished", stdout), stdout
            assert "copy-again" not in stdout, (stdout, stderr)
            await asyncio.sleep(0.5)  # the gateway's map poll: it routes the slot to shard 1
            reversed_old = await client.transaction(f"{key}/old-0")
            assert reversed_old.reversed_by_id == f"{key}/r-old-0"

            # Each archived transfer retried at the target: a replay, applied once.
            assert await client.codes(*old, new, reversal) == [REPLAYED] * 6
            after = await client.balance(f"{key}/dep")
            assert (after.debits_posted, after.credits_posted) == (
                before.debits_posted,
                before.credits_posted,
            )
        config = AuditConfig(statement_timeout_s=60.0, hold_grace_s=None, segments_root=root)
        report = await audit_cluster(cluster.dsns, config)
        assert report.complete, report.cross_shard.reason
        # Clean, the moves' findings (1001-1099) included: the records moved are the source's,
        # cold or hot, and every cold block reads from its segment.
        assert report.problems == [], report.problems[:5]
        # Without the segments, the shard with cold history is not audited as if it had none.
        hot_only = await audit_cluster(cluster.dsns, replace(config, segments_root=None))
        errors = [shard.error for shard in hot_only.shards if shard.error]
        assert len(errors) == 1 and "--segments" in errors[0], errors
