"""One fault campaign: a cluster of real processes, bank clients through every gateway, the
seeded fault schedule, then the quiet: every fault healed, every client's unanswered requests
sent again until answered (what a client does), every acknowledged hold left without a decision
voided, everything pending settled; then the checker over the whole history, and the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Final

import grpc

from bench.chaos import checker, faults, report
from bench.chaos.bank import (
    Bank,
    BankClient,
    Gateways,
    History,
    Item,
    Workload,
    open_bank,
    send_until_definitive,
)
from bench.chaos.cluster import Cluster, ClusterConfig, start_cluster
from bench.chaos.outcome import CampaignConfig, Outcome
from shards.security import directory
from shards.security.credentials import aio_channel
from tally.v1 import ledger_pb2 as pb

CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
# After the schedule: clients finish what they are doing within this, then the campaign
# resends what is still unanswered for at most RESOLVE_TIMEOUT_S.
CLIENT_FINISH_TIMEOUT_S = 60.0
RESOLVE_TIMEOUT_S = 120.0
HEALTHY_TIMEOUT_S = 120.0
# Every deadline (holds' up to a minute, pieces' PREPARE_DEADLINE_S) passes within this; what
# is still held once due is an anomaly (held_at_end).
SETTLED_TIMEOUT_S = 90.0
DEADLINE_GRACE_S = 5.0


@contextlib.asynccontextmanager
async def gateway_channels(cluster: Cluster) -> AsyncIterator[list[grpc.aio.Channel]]:
    security = directory.client_security(cluster.tls_root)
    channels = [aio_channel(t, security, CHANNEL_OPTIONS) for t in cluster.gateway_targets]
    try:
        yield channels
    finally:
        for channel in channels:
            await channel.close()


async def wait_healthy(gateways: Gateways, bank: Bank, timeout_s: float) -> None:
    """Until every gateway reads an account of every customer (so reaches every shard)."""
    ids = [a for a, _ in bank.customer_accounts()]
    deadline = time.monotonic() + timeout_s
    for stub in gateways.stubs:
        while True:
            try:
                response = await stub.GetAccounts(pb.GetAccountsRequest(ids=ids), timeout=10)
                if all(r.code == pb.RESULT_CODE_OK for r in response.results):
                    break
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster did not come back")
            await asyncio.sleep(0.5)


async def resolve(gateways: Gateways, history: History) -> None:
    """Every unanswered item sent again (its whole request: a linked group together) until
    answered; then every applied hold that no applied post or void names is voided."""
    give_up_at = time.monotonic() + RESOLVE_TIMEOUT_S
    groups: dict[str, list[Item]] = {}
    for item in history.items.values():
        if item.unknown:
            groups.setdefault(item.group or item.transaction_id, []).append(item)
    for items in groups.values():
        members = [i for i in history.items.values() if i.group and i.group == items[0].group]
        await send_until_definitive(gateways, members or items, history, lambda: give_up_at)
    settled = {
        i.target for i in history.of_kind("post", "post_part", "void", "expire_post") if i.applied
    }
    for hold in history.of_kind("hold"):
        if not hold.applied or hold.message.timeout_seconds or hold.transaction_id in settled:
            continue
        partition, name = hold.transaction_id.split("/", 1)
        void = pb.Transaction(
            id=f"{partition}/resolve-{name}", code=1, void_pending_id=hold.transaction_id
        )
        item = Item(void, "void", hold.cross_shard, -1, target=hold.transaction_id)
        history.add(item)
        await send_until_definitive(gateways, [item], history, lambda: give_up_at)


async def wait_settled(cluster: Cluster, timeout_s: float) -> None:
    """Until no shard holds anything, or what is left is due (no deadline, or its deadline
    passed DEADLINE_GRACE_S ago: the checker's held_at_end), or timeout_s. A piece may rightly
    wait for its hold's deadline (up to a minute) before it asks its coordinator."""
    deadline = time.monotonic() + timeout_s
    query = "SELECT expires_at_ns FROM holds"
    while True:
        per_shard = await checker.fetch_each_shard(cluster.shard_dsns, query)
        due_before_ns = time.time_ns() - int(DEADLINE_GRACE_S * 1e9)
        left = [r["expires_at_ns"] for rows in per_shard for r in rows]
        if all(e == 0 or e < due_before_ns for e in left) or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.5)


async def run_load(
    cluster: Cluster,
    gateways: Gateways,
    history: History,
    config: CampaignConfig,
    schedule: Sequence[faults.Fault],
) -> None:
    """The clients, the watchdog and the schedule, until the schedule's end; then the clients
    finish their operations (bounded) and the watchdog stops."""
    stop_clients, stop_faults, stop_watchdog = asyncio.Event(), asyncio.Event(), asyncio.Event()
    finish_by = [time.monotonic() + config.duration_s + CLIENT_FINISH_TIMEOUT_S]
    clients = [
        BankClient(n, config.seed, gateways, history, cluster.shard_of, Workload())
        for n in range(config.client_count)
    ]
    async with asyncio.TaskGroup() as group:
        watchdog = group.create_task(cluster.keep_running(stop_watchdog))
        client_tasks = [
            group.create_task(c.run(stop_clients, lambda: finish_by[0])) for c in clients
        ]
        started = history.started_at
        fault_task = group.create_task(
            faults.run_schedule(cluster, list(schedule), started, stop_faults)
        )
        await asyncio.sleep(max(0.0, started + config.duration_s - time.monotonic()))
        stop_clients.set()
        await fault_task
        finish_by[0] = time.monotonic() + CLIENT_FINISH_TIMEOUT_S
        await asyncio.gather(*client_tasks)
        stop_watchdog.set()
        await watchdog


async def run(config: CampaignConfig) -> Outcome:
    """The whole campaign; the report (and, for a failing run, the history) in out_dir."""
    config.out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    cluster = await start_cluster(
        ClusterConfig(
            root=config.out_dir / "cluster",
            shard_count=config.shard_count,
            gateway_count=config.gateway_count,
            prepare_deadline_s=config.prepare_deadline_s,
        )
    )
    try:
        async with gateway_channels(cluster) as channels:
            gateways = Gateways.of(channels)
            history = History(Bank(customer_count=config.customer_count))
            await open_bank(gateways.stubs[0], history)
            schedule = faults.schedule(
                faults.ScheduleConfig(
                    duration_s=config.duration_s,
                    seed=config.seed,
                    shard_count=config.shard_count,
                    gateway_count=config.gateway_count,
                    kinds=config.kinds,
                )
            )
            history.started_at = time.monotonic()
            await run_load(cluster, gateways, history, config, schedule)
            timings["load_s"] = time.monotonic() - history.started_at
            verdict = await settle_and_check(cluster, gateways, history, config, timings)
            check_outage_isolation(history, schedule, cluster.shard_of, verdict)
        outcome = Outcome(config, schedule, history, verdict, cluster.events, timings)
    finally:
        await cluster.close()
        if not config.keep_data:
            for server in cluster.postgres:
                await asyncio.to_thread(shutil.rmtree, server.server.data_dir, True)
    outcome.report_path = report.write(outcome)
    if not outcome.ok or config.keep_history:
        write_history(outcome)
    return outcome


async def settle_and_check(
    cluster: Cluster,
    gateways: Gateways,
    history: History,
    config: CampaignConfig,
    timings: dict[str, float],
) -> checker.Verdict:
    quiet = time.monotonic()
    for proxy in cluster.proxies:
        proxy.clear()
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        watchdog = group.create_task(cluster.keep_running(stop))
        try:
            await wait_healthy(gateways, history.bank, HEALTHY_TIMEOUT_S)
            timings["healthy_s"] = time.monotonic() - quiet
            await resolve(gateways, history)
            timings["resolve_s"] = time.monotonic() - quiet - timings["healthy_s"]
            await wait_settled(cluster, SETTLED_TIMEOUT_S)
            timings["settle_s"] = time.monotonic() - quiet
            started = time.monotonic()
            books = checker.Books(cluster.shard_dsns, cluster.shard_of, gateways)
            verdict = await checker.check(books, history, config.seed)
            timings["check_s"] = time.monotonic() - started
        finally:
            stop.set()
        await watchdog
    return verdict


# The gateways reconnect to a shard within their maximum reconnect backoff
# (shards/gateway/links.py, grpc.max_reconnect_backoff_ms: 2 s) of its return, plus a margin.
# Seen in the 30-minute campaign at 8fc1764: reads naming a healed shard ("shard 0: failed to
# connect") up to 1 s after its fault healed; two such, during another shard's fault, were
# reported as outage_spread at 38fd8ab.
RECONNECT_TAIL_S: Final = 2.5


def shard_under(fault: faults.Fault) -> int | None:
    """The shard a fault takes out for the gateways (a node or its PostgreSQL stopped, or the
    gateways cut from it), or None for faults that do not (clocks, peers, gateways, control)."""
    target = fault.target
    if fault.kind in ("kill", "pause") and target.startswith("node-"):
        return int(target.split("-")[1])
    if fault.kind in ("pg_kill", "pg_restart") and target.startswith("pg-shard"):
        return int(target.removeprefix("pg-shard"))
    if fault.kind == "partition_gateways":
        return int(target.split("-")[1])
    return None


def check_outage_isolation(
    history: History,
    schedule: Sequence[faults.Fault],
    shard_of: Callable[[str], int],
    verdict: checker.Verdict,
) -> None:
    """A read that failed while one shard was out, of a transaction that does not touch that
    shard, is `outage_spread`: one shard's outage is that shard's problem. (Reads meeting
    another kind of fault, or none, are not judged here.) A shard is out from its fault until
    RECONNECT_TAIL_S after the fault heals: until then a gateway's channel to it may still be
    waiting out its reconnect backoff, and a call to it fails at once ("failed to connect")."""
    for read in history.reads:
        if read.answer not in checker.RETRYABLE_READS:
            continue
        ended_at = read.started_at + read.latency_s
        out = {
            shard_under(f)
            for f in schedule
            if f.started_s is not None
            and f.healed_s is not None
            and f.started_s <= ended_at
            and read.started_at
            <= f.healed_s + (RECONNECT_TAIL_S if shard_under(f) is not None else 0)
        }
        if None in out or len(out) != 1:
            continue  # another kind of fault under way too: not this check's to judge
        touched = {shard_of(g.account_id) for g in history.items[read.transaction_id].message.legs}
        verdict.checked["reads during one shard's outage"] += 1
        if not out & touched:
            verdict.add(
                "outage_spread", read.transaction_id,
                f"read answered {read.answer} after {read.latency_s:.1f}s while shard "
                f"{out.pop()} was out; it touches shards {sorted(touched)} only"
                + (f" ({read.detail})" if read.detail else ""),
            )  # fmt: skip


def write_history(outcome: Outcome) -> Path:
    """history.jsonl: every item as sent, with its answers; reads.json: the reads by id during
    the load; faults.json: the schedule."""
    out = outcome.config.out_dir
    path = out / "history.jsonl"
    with path.open("w", encoding="utf-8") as file:
        for item in outcome.history.items.values():
            file.write(json.dumps(item_record(item)) + "\n")
    (out / "reads.json").write_text(
        json.dumps([asdict(r) for r in outcome.history.reads]), encoding="utf-8"
    )
    (out / "faults.json").write_text(
        json.dumps([asdict(f) for f in outcome.schedule], indent=1), encoding="utf-8"
    )
    return path


def item_record(item: Item) -> dict[str, object]:
    from google.protobuf import json_format

    return {
        "id": item.transaction_id,
        "kind": item.kind,
        "cross_shard": item.cross_shard,
        "client": item.client,
        "group": item.group,
        "target": item.target,
        "message": json_format.MessageToDict(item.message),
        "result": json_format.MessageToDict(item.result) if item.result else None,
        "attempts": item.attempt_count,
        "errors": item.errors,
        "sent_at": item.sent_at,
        "answered_at": item.answered_at,
    }
