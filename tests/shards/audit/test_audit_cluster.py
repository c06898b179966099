"""The audit of a live 4-shard cluster: clean while cross-shard and single-shard transfers run
(the library, `tally audit` and the gRPC service), exact about transactions caught between two
shards' snapshots, in-flight transactions reported and not blamed, and a clearing piece altered
in PostgreSQL named.

One in-process cluster (4 nodes, a gateway, an audit server, all TLS) for the module; each test
creates the customers it uses.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from core import audit
from core.audit import AuditConfig, FindingKind
from core.slots import SlotMap
from shards import failpoints
from shards.audit.server import AuditServer, AuditServiceConfig
from shards.gateway.server import Gateway
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import audit_pb2 as apb
from tally.v1 import audit_pb2_grpc as apb_grpc
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.audit_commands import audit_cli, audit_json
from tests.support.helpers import Client, NodeHandle, account, in_process_cluster, transfer
from tests.support.sql import execute, fetch_one

SHARD_COUNT = 4
CREATED = pb.RESULT_CODE_CREATED
_numbers = itertools.count(1)


@dataclass
class LiveCluster:
    nodes: list[NodeHandle]
    gateway: Gateway
    auditor: AuditServer

    @property
    def dsns(self) -> list[str]:
        return [node.dsn for node in self.nodes]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"


@pytest.fixture(scope="module")
async def live(pg: EmbeddedPostgres) -> AsyncIterator[LiveCluster]:
    prefix = f"ac{os.getpid()}_{next(_numbers)}"
    async with in_process_cluster(pg, prefix, SHARD_COUNT) as cluster:
        config = AuditServiceConfig(
            dsns=tuple(cluster.dsns), listen="127.0.0.1:0", security=security.server_security()
        )
        auditor = AuditServer(config)
        await auditor.start()
        auditor_task = asyncio.create_task(auditor.run())
        try:
            yield LiveCluster(cluster.nodes, cluster.gateway, auditor)
        finally:
            auditor.request_stop()
            await asyncio.wait_for(auditor_task, timeout=30)


@pytest.fixture
async def client(live: LiveCluster) -> AsyncIterator[Client]:
    async with security.channel(live.target) as channel:
        yield Client(channel)


def customers(prefix: str, per_shard: int) -> dict[int, list[str]]:
    """Partition keys starting with prefix, per_shard of them on each shard (even map)."""
    slot_map = SlotMap.even(SHARD_COUNT)
    chosen: dict[int, list[str]] = {shard: [] for shard in range(SHARD_COUNT)}
    for n in itertools.count():
        key = f"{prefix}{n}"
        found = chosen[slot_map.shard_of_key(key)]
        if len(found) < per_shard:
            found.append(key)
        if all(len(keys) == per_shard for keys in chosen.values()):
            return chosen
    raise AssertionError("unreachable")


async def open_customers(client: Client, keys: list[str]) -> None:
    codes = await client.create(
        account("@bank"), *(account(f"{k}/{kind}") for k in keys for kind in ("dep", "sav"))
    )
    assert set(codes) <= {pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED}
    funding = [transfer(f"fund-{k}", "@bank", f"{k}/dep", 1_000_000) for k in keys]
    results = await client.post(*funding)
    assert {r.code for r in results} <= {CREATED, pb.RESULT_CODE_REPLAYED}


async def run_audit_service(live: LiveCluster, **fields: object) -> apb.AuditReport:
    async with security.channel(f"127.0.0.1:{live.auditor.port}") as channel:
        stub = apb_grpc.AuditStub(channel)
        report: apb.AuditReport = await stub.RunAudit(apb.RunAuditRequest(**fields), timeout=120)
        return report


def explain(report: audit.AuditReport) -> str:
    return "\n".join(str(finding) for finding in report.problems)


# ---- the audit while the cluster writes ----


@dataclass
class Workload:
    cross_shard: int = 0
    single_shard: int = 0
    refused: int = 0
    # Set once CROSS_SHARD_UNDER_WAY cross-shard transfers committed.
    under_way: asyncio.Event = field(default_factory=asyncio.Event)


CROSS_SHARD_UNDER_WAY = 30


async def _send(
    client: Client, by_shard: dict[int, list[str]], worker: int, stop: asyncio.Event, done: Workload
) -> None:
    rng = random.Random(worker)
    every = [key for keys in by_shard.values() for key in keys]
    shard_of = {key: shard for shard, keys in by_shard.items() for key in keys}
    for round_number in itertools.count():
        if stop.is_set():
            return
        items, kinds = [], []
        for index in range(6):
            name = f"w{worker}-{round_number}-{index}"
            source = rng.choice(every)
            if rng.random() < 0.5:
                target = rng.choice([k for k in every if shard_of[k] != shard_of[source]])
                items.append(transfer(name, f"{source}/dep", f"{target}/dep", rng.randint(1, 99)))
                kinds.append("cross")
            else:
                items.append(transfer(name, f"{source}/dep", f"{source}/sav", rng.randint(1, 99)))
                kinds.append("single")
        for kind, result in zip(kinds, await client.post(*items), strict=True):
            if result.code != CREATED:
                done.refused += 1
            elif kind == "cross":
                done.cross_shard += 1
                if done.cross_shard >= CROSS_SHARD_UNDER_WAY:
                    done.under_way.set()
            else:
                done.single_shard += 1


async def test_audits_clean_while_the_cluster_writes(live: LiveCluster, client: Client) -> None:
    by_shard = customers("live-", 3)
    await open_customers(client, [k for keys in by_shard.values() for k in keys])
    stop, done = asyncio.Event(), Workload()
    async with asyncio.TaskGroup() as group:
        senders = [group.create_task(_send(client, by_shard, w, stop, done)) for w in range(3)]
        try:
            await asyncio.wait_for(done.under_way.wait(), timeout=60)
            seen = []
            for config in (AuditConfig(), AuditConfig(shard_concurrency_max=1)):
                report = await audit.audit_cluster(live.dsns, config)
                assert report.ok and report.complete, explain(report)
                assert report.cross_shard.checked
                seen.append(report.cross_shard)
            code, stdout = await audit_cli(*live.dsns)
            assert code == 0, stdout
            assert "cross-shard transactions: " in stdout and "the books are whole" in stdout
            served = await run_audit_service(live)
            assert served.ok and served.complete, [f.text for f in served.findings]
            assert served.cross_shard.checked and served.cross_shard.settled_count > 0
            writing = done.cross_shard + done.single_shard
        finally:
            stop.set()
        for sender in senders:
            await sender
    assert done.refused == 0
    assert done.cross_shard > 30 and done.single_shard > 30
    assert writing > 60  # audits ran while these committed
    # Quiet now: every cross-shard transaction is settled, none in flight.
    report = await audit.audit_cluster(live.dsns, AuditConfig())
    assert report.ok, explain(report)
    assert report.cross_shard.in_flight_count == 0
    assert report.cross_shard.settled_count >= done.cross_shard
    assert all(cross.settled_count > 0 for cross in seen)


# ---- exactness: a transaction caught between two shards' snapshots ----


async def _snapshot_audits(
    live: LiveCluster, shards: list[int], config: AuditConfig
) -> list[audit.ShardReport]:
    reports = []
    for shard in shards:
        connection = await audit.connect(live.dsns[shard], config)
        try:
            report = await audit.audit_shard(connection, shard, config, spool=True)
        finally:
            await connection.close()
        report.target = live.dsns[shard]
        reports.append(report)
    return reports


def _clearing_posted_net(reports: list[audit.ShardReport]) -> int:
    sums = [r.clearing.get("USD", [0, 0, 0, 0]) for r in reports]
    return sum(debits - credits for debits, credits, _, _ in sums)


async def _wait_resolved(dsn: str, transaction_id: str) -> None:
    """Until the participant has posted or voided its piece of the transaction."""
    async with asyncio.timeout(30):
        while True:
            found = await fetch_one(
                dsn,
                "SELECT 1 FROM transactions r JOIN transactions p ON p.id = r.target_id "
                "AND p.kind = 6 WHERE r.kind IN (2, 3) AND (p.id = $1 OR p.id LIKE $2)",
                transaction_id,
                f"~piece/%/{transaction_id}",
            )
            if found:
                return
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("first", ["participant", "coordinator"])
async def test_a_transaction_between_two_snapshots_is_no_false_alarm(
    live: LiveCluster, client: Client, first: str
) -> None:
    """Shards read one after another, a cross-shard transfer committing in between: per-shard
    clearing totals disagree (the old check's false alarm); the exact check reads the
    transaction again in later snapshots and finds it settled."""
    by_shard = customers(f"gap-{first}-", 1)
    await open_customers(client, [keys[0] for keys in by_shard.values()])
    coordinator, participant = 0, 1  # the transfer debits shard 0's customer: it coordinates
    source, target = by_shard[coordinator][0], by_shard[participant][0]
    config = AuditConfig()
    early = participant if first == "participant" else coordinator
    late = [shard for shard in range(SHARD_COUNT) if shard != early]
    reports = await _snapshot_audits(live, [early], config)
    results = await client.post(transfer(f"gap-{first}", f"{source}/dep", f"{target}/dep", 250))
    assert results[0].code == CREATED
    await _wait_resolved(live.dsns[participant], f"gap-{first}")
    try:
        reports += await _snapshot_audits(live, late, config)
        assert all(r.ok for r in reports), [str(p) for r in reports for p in r.problems]
        assert _clearing_posted_net(reports) in (250, -250)  # what per-shard totals would say
        log = audit.FindingLog(audit.CLUSTER, 100)
        cross = await audit.check_cross_shard(reports, live.dsns, config, log)
    finally:
        for report in reports:
            if report.spool is not None:
                report.spool.close()
    assert log.kept == [], [str(p) for p in log.kept]
    assert cross.rechecked_count >= 1 and cross.settled_count >= 1


# ---- in flight: held between prepare and commit ----


async def test_in_flight_transaction_is_reported_not_blamed(
    live: LiveCluster, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    by_shard = customers("held-", 1)
    await open_customers(client, [keys[0] for keys in by_shard.values()])
    prepared, release = asyncio.Event(), asyncio.Event()
    real_hit = failpoints.hit

    async def hold_after_prepare(name: str) -> None:
        if name == "gateway.after_prepare":
            prepared.set()
            await release.wait()
        else:
            await real_hit(name)

    monkeypatch.setattr(failpoints, "ARMED", True)
    monkeypatch.setattr(failpoints, "hit", hold_after_prepare)
    source, target = by_shard[2][0], by_shard[3][0]
    posting = asyncio.create_task(
        client.post(transfer(f"{source}/held-1", f"{source}/dep", f"{target}/dep", 70))
    )
    try:
        await asyncio.wait_for(prepared.wait(), timeout=30)
        report = await audit.audit_cluster(live.dsns, AuditConfig())
        assert report.ok, explain(report)
        flights = [
            f for f in report.cross_shard.in_flight if f.transaction_id == f"{source}/held-1"
        ]
        assert len(flights) == 1, report.cross_shard.in_flight
        assert flights[0].decision == "" and (3, "pending") in flights[0].pieces
        assert flights[0].coordinator == 2 and flights[0].deadline_ns > 0
        # The same piece, judged an hour later: held past its deadline is a finding.
        late = AuditConfig(now_ns=flights[0].deadline_ns + 3_600 * 10**9)
        report = await audit.audit_cluster(live.dsns, late)
        overdue = [p for p in report.problems if p.kind is FindingKind.HOLD_PAST_DEADLINE]
        assert [(p.shard, p.transaction_id.endswith("held-1")) for p in overdue] == [(3, True)]
        served = await run_audit_service(live)
        assert served.ok and f"{source}/held-1" in [
            f.transaction_id for f in served.cross_shard.in_flight
        ]
    finally:
        release.set()
        results = await asyncio.wait_for(posting, timeout=30)
    assert results[0].code == CREATED
    report = await audit.audit_cluster(live.dsns, AuditConfig())
    assert report.ok and report.cross_shard.in_flight_count == 0, explain(report)


# ---- a clearing piece altered behind Tally's back ----


async def test_altered_clearing_piece_is_named(live: LiveCluster, client: Client) -> None:
    """Last in the module: it leaves the cluster's books altered."""
    by_shard = customers("forged-", 1)
    await open_customers(client, [keys[0] for keys in by_shard.values()])
    source, target = by_shard[1][0], by_shard[2][0]
    results = await client.post(transfer("forged-1", f"{source}/dep", f"{target}/dep", 400))
    assert results[0].code == CREATED
    participant = live.dsns[2]
    await _wait_resolved(participant, "forged-1")
    # A later block on the participant, so the altered one is told apart (next previous_hash).
    later = await client.post(transfer("forged-after", f"{target}/dep", f"{target}/sav", 1))
    assert later[0].code == CREATED
    # The participant's piece was posted by its resolution: a commit row targeting the piece.
    resolution = await fetch_one(
        participant,
        "SELECT r.id, COALESCE(r.applied_legs, r.legs) AS applied_legs, r.block_sequence, "
        "p.id AS piece FROM transactions r "
        "JOIN transactions p ON p.id = r.target_id AND p.kind = 6 "
        "WHERE r.kind = 2 AND p.id LIKE '%forged-1'",
    )
    assert "D @clearing/USD 400 USD" in resolution["applied_legs"], resolution
    forged = resolution["applied_legs"].replace(
        "D @clearing/USD 400 USD", "D @clearing/USD 401 USD"
    )
    await execute(
        participant,
        f"UPDATE transactions SET applied_legs = '{forged}' WHERE id = '{resolution['id']}'",
    )
    code, report = await audit_json(*live.dsns)
    assert code == 1
    by_kind = {(p["kind"], p["shard"]): p for p in report["problems"]}
    unbalanced = by_kind[("cross_shard_unbalanced", audit.CLUSTER)]
    assert unbalanced["transaction_id"] == "forged-1" and unbalanced["currency"] == "USD"
    assert unbalanced["found"] == "1" and unbalanced["expected"] == "0"
    assert "its clearing pieces net to 1 USD" in unbalanced["text"]
    assert "shard 2 (piece, posted) 401" in unbalanced["text"]
    mismatch = by_kind[("clearing_counters_mismatch", 2)]
    assert mismatch["account_id"] == "@clearing/USD"
    assert by_kind[("block_rows_altered", 2)]["block"] == resolution["block_sequence"]
    served = await run_audit_service(live)
    assert not served.ok
    named = [f for f in served.findings if f.kind == apb.FINDING_KIND_CROSS_SHARD_UNBALANCED]
    assert [(f.transaction_id, f.shard, f.found) for f in named] == [("forged-1", -1, "1")]
    assert named[0].text == unbalanced["text"]
