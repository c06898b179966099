"""An audit's run: every check on one shard from one snapshot (audit_shard), and every chosen
shard at once, then the cluster's trial balance and cross-shard check (audit_cluster)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from core.audit.accounts import add_counters, check_accounts, check_chains, check_holds
from core.audit.cold import ColdJournal
from core.audit.crossshard import check_cross_shard, scan_cross_shard
from core.audit.findings import (
    CLUSTER,
    About,
    AuditConfig,
    AuditReport,
    FindingKind,
    FindingLog,
    Progress,
    ShardReport,
)
from core.audit.journal_pass import JournalPass, check_anchors, check_lease
from core.audit.moves import check_moves, scan_moves
from core.audit.segments import check_segments
from core.audit.source import TIMEOUT_S, connect, describe_error, redact
from core.store import audit as queries

# ---- the cluster ----


async def audit_cluster(
    dsns: Sequence[str],
    config: AuditConfig,
    progress: Progress | None = None,
    shards: Sequence[int] | None = None,
) -> AuditReport:
    """Audit the chosen shards (shard k is dsns[k]; default: all), then the cluster: its trial
    balance, and its cross-shard transactions when every shard was audited."""
    started = time.monotonic()
    report = AuditReport([], time.time_ns())
    chosen = list(range(len(dsns))) if shards is None else list(shards)
    whole = sorted(chosen) == list(range(len(dsns)))
    limit = asyncio.Semaphore(config.shard_concurrency_max)

    async def one(shard: int) -> ShardReport:
        async with limit:
            return await _audit_dsn(shard, dsns[shard], config, progress, spool=whole)

    tasks: list[asyncio.Task[ShardReport]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks += [group.create_task(one(shard)) for shard in chosen]
        report.shards = [task.result() for task in tasks]
        report.trial_balance = _sum_balances([shard.trial_balance for shard in report.shards])
        log = FindingLog(CLUSTER, config.problem_count_max, config.currencies)
        _check_cluster_trial_balance(log, report.trial_balance)
        if not whole:
            report.cross_shard.reason = "not every shard of the cluster was audited"
        elif not report.complete:
            report.cross_shard.reason = "a shard could not be audited"
        else:
            report.cross_shard = await check_cross_shard(report.shards, dsns, config, log)
            await check_moves(report.shards, dsns, config, log)
        report.cluster_problems = log.sorted_kept()
        report.cluster_problem_counts = {k: v for k, v in log.counts.items() if v}
    finally:  # the spools of every shard audited, even when another one failed
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is None:
                if (spool := task.result().spool) is not None:
                    spool.close()
                task.result().spool = None
    report.duration_s = time.monotonic() - started
    return report


def _check_cluster_trial_balance(log: FindingLog, balances: dict[str, list[int]]) -> None:
    for currency, (dp, cp, dq, cq) in sorted(balances.items()):
        if dp != cp or dq != cq:
            log.add(
                FindingKind.TRIAL_BALANCE_UNBALANCED,
                About.CURRENCY,
                f"posted debits {dp}, credits {cp}; pending debits {dq}, credits {cq}",
                f"{dp} = {cp}",
                f"{dp} != {cp}" if dp != cp else f"{dq} != {cq}",
                currency=currency,
            )


async def _audit_dsn(
    shard: int, dsn: str, config: AuditConfig, progress: Progress | None, spool: bool = False
) -> ShardReport:
    started = time.monotonic()
    try:
        connection = await connect(dsn, config)
    except (OSError, TimeoutError) as error:
        error_text = describe_error(dsn, error, as_repr=True)
        return ShardReport(shard, redact(dsn), error=f"cannot connect: {error_text}")
    except Exception as error:  # asyncpg's errors: bad password, no database, ...
        error_text = describe_error(dsn, error)
        return ShardReport(shard, redact(dsn), error=f"cannot connect: {error_text}")
    try:
        report = await audit_shard(connection, shard, config, progress, spool)
    except Exception as error:  # a shard without the schema, a lost connection
        error_text = describe_error(dsn, error, as_repr=True)
        report = ShardReport(shard, "", error=f"audit failed: {error_text}")
    finally:
        await connection.close(timeout=config.connect_timeout_s)
    report.target = redact(dsn)
    report.duration_s = time.monotonic() - started
    return report


def _sum_balances(parts: Sequence[dict[str, list[int]]]) -> dict[str, list[int]]:
    total: dict[str, list[int]] = {}
    for part in parts:
        for currency, sums in part.items():
            add_counters(total, currency, sums)
    return total


# ---- one shard ----


async def audit_shard(
    connection: Any,
    shard: int,
    config: AuditConfig,
    progress: Progress | None = None,
    spool: bool = False,
) -> ShardReport:
    """Every check on one shard database, from one snapshot. With `spool`, the shard's
    cross-shard pieces are also written to report.spool for check_cross_shard (the caller
    closes it)."""
    log = FindingLog(shard, config.problem_count_max, config.currencies)
    report = ShardReport(shard, "")
    timeout_s = config.statement_timeout_s
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        sizes = await connection.fetchrow(queries.SIZES_SQL, timeout=timeout_s)
        report.account_count = sizes["accounts"]
        cold = await ColdJournal.open(connection, config)
        journal = JournalPass(connection, config, log, report, progress, sizes["postings"], cold)
        await journal.run()
        await check_accounts(connection, config, log, report, progress, cold)
        await check_chains(connection, config, log, cold)
        await scan_cross_shard(connection, config, log, report, spool, cold)
        await check_holds(connection, config, log, report)
        await check_lease(connection, config, log, report)
        await check_anchors(connection, config, log, shard)
        await scan_moves(connection, config, log, report)
        await check_segments(connection, config, log)
    report.problems = log.sorted_kept()
    report.problem_counts = dict(log.counts)
    return report


# ---- parts of an audit (the service's VerifyChain, tests) ----


async def verify_chain(
    connection: Any, shard: int, config: AuditConfig
) -> tuple[ShardReport, FindingLog]:
    """The journal pass (hash chain, block structure, postings against their transactions),
    the lease and the anchors of one shard, from one snapshot; no account or hold checks."""
    log = FindingLog(shard, config.problem_count_max, config.currencies)
    report = ShardReport(shard, "")
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        total = await connection.fetchval(
            queries.POSTING_TOTAL_SQL, timeout=config.statement_timeout_s
        )
        cold = await ColdJournal.open(connection, config)
        await JournalPass(connection, config, log, report, None, total, cold).run()
        await check_lease(connection, config, log, report)
        await check_anchors(connection, config, log, shard)
    report.problems = log.sorted_kept()
    report.problem_counts = dict(log.counts)
    return report, log


async def check_all(connection: Any) -> list[str]:
    """Every check of `tally audit` on one shard but hold deadlines (tests stop nodes before
    their sweeps run); one string per problem, empty when the books are whole."""
    config = AuditConfig(statement_timeout_s=TIMEOUT_S, hold_grace_s=None)
    report = await audit_shard(connection, 0, config)
    problems = [str(p) for p in report.problems]
    hidden = sum(report.problem_counts.values()) - len(report.problems)
    if hidden:
        problems.append(f"shard 0: ... and {hidden} more problems")
    return problems
