"""The read-only tally.v1.Audit gRPC service: the same checks and findings as `tally audit`
(one implementation), structured; bad requests are INVALID_ARGUMENT naming the field; its
sessions cannot write; health and reflection; `tally audit-serve` as a process. Over TLS, as
the admin identity of the tests (tests/support/security.py), which holds the role auditor; only
an auditor may audit.

Two shards: copies of the seeded ledger (tests/support/seeded_ledger.py, every kind of
transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from core import audit
from core.authority import Role
from shards.audit.server import AuditServer, AuditServiceConfig
from shards.local import supervisor
from shards.local.embedded_pg import EmbeddedPostgres
from shards.security.credentials import aio_channel
from tally.v1 import audit_pb2 as apb
from tally.v1 import audit_pb2_grpc as apb_grpc
from tests.support import security
from tests.support.audit_commands import audit_cli
from tests.support.paths import REPO_ROOT
from tests.support.seeded_ledger import Ledger, clone_database, make_template
from tests.support.sql import execute

TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
async def template(pg: EmbeddedPostgres) -> AsyncIterator[tuple[str, Ledger]]:
    yield await make_template(pg, f"audit_service_{os.getpid()}", seed=3)


@pytest.fixture
async def dsns(pg: EmbeddedPostgres, template: tuple[str, Ledger]) -> list[str]:
    """Two shards: fresh copies of the module's ledger."""
    return [await clone_database(pg, template[0]) for _ in range(2)]


@contextlib.asynccontextmanager
async def running(dsns: list[str], **options: Any) -> AsyncIterator[str]:
    """An audit server in this process, serving TLS with the tests' credentials: its target."""
    options.setdefault("security", security.server_security())
    server = AuditServer(AuditServiceConfig(dsns=tuple(dsns), listen="127.0.0.1:0", **options))
    port = await server.start()
    task = asyncio.create_task(server.run())
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.request_stop()
        await asyncio.wait_for(task, timeout=30)


@contextlib.asynccontextmanager
async def serving(
    dsns: list[str], **options: Any
) -> AsyncIterator[tuple[apb_grpc.AuditStub, grpc.aio.Channel]]:
    async with running(dsns, **options) as target, security.channel(target) as channel:
        yield apb_grpc.AuditStub(channel), channel


async def test_clean_books_health_and_reflection(dsns: list[str]) -> None:
    async with serving(dsns) as (stub, channel):
        report = await stub.RunAudit(apb.RunAuditRequest(), timeout=TIMEOUT_S)
        assert report.ok and report.complete and list(report.findings) == []
        assert [s.shard for s in report.shards] == [0, 1]
        for shard in report.shards:
            assert shard.ok and shard.posting_count > 200 and shard.hold_count == 1
            assert len(shard.head_hash) == 64 and shard.head_block > 10
            assert {c.check for c in shard.checks} == set(range(1, 12))
            assert all(c.finding_count == 0 for c in shard.checks)
        usd = {b.currency: b for b in report.trial_balance}["USD"]
        assert usd.balanced and usd.debits_posted == usd.credits_posted
        assert int(usd.debits_pending) == 2 * 70  # the open hold, on each copy
        assert report.cross_shard.checked and report.cross_shard.settled_count == 0
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "tally.v1.Audit"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for answer in reflection.ServerReflectionInfo(iter([request]), timeout=10):
            names = {s.name for s in answer.list_services_response.service}
            assert "tally.v1.Audit" in names


async def test_findings_are_structured_and_the_command_lines_own(dsns: list[str]) -> None:
    """A posting's amount altered on shard 1: the service names it with its ids, and its text
    is the line `tally audit` prints (one implementation of the checks)."""
    posting = await _credit_posting(dsns[1], "fund-c2/dep")
    sequence, old = posting["sequence"], posting["posted_amount"]
    await execute(
        dsns[1], f"UPDATE postings SET posted_amount = {old + 9} WHERE sequence = {sequence}"
    )
    async with serving(dsns) as (stub, _):
        report = await stub.RunAudit(apb.RunAuditRequest(), timeout=TIMEOUT_S)
    assert not report.ok and report.complete
    assert [s.ok for s in report.shards] == [True, False]
    differs = [f for f in report.findings if f.kind == apb.FINDING_KIND_POSTING_DIFFERS_FROM_LEG]
    assert len(differs) == 1
    finding = differs[0]
    assert (finding.shard, finding.check, finding.about) == (1, apb.AUDIT_CHECK_POSTINGS, "posting")
    assert finding.posting_sequence == sequence and finding.block == posting["block_sequence"]
    assert (finding.transaction_id, finding.account_id) == ("fund-c2/dep", "c2/dep")
    assert (finding.expected, finding.found, finding.currency) == (str(old), str(old + 9), "USD")
    kinds = {f.kind for f in report.findings}
    assert {
        apb.FINDING_KIND_BALANCE_AFTER_BROKEN,
        apb.FINDING_KIND_COUNTER_MISMATCH,
        apb.FINDING_KIND_BLOCK_ROWS_ALTERED,
    } <= kinds
    assert report.finding_count == len(report.findings)
    counts = {c.check: c.finding_count for c in report.shards[1].checks}
    assert counts[apb.AUDIT_CHECK_POSTINGS] == 1 and counts[apb.AUDIT_CHECK_LEASE] == 0
    code, stdout = await audit_cli(*dsns)
    assert code == 1
    printed = {line.strip() for line in stdout.splitlines()}
    assert {f.text for f in report.findings} <= printed


async def _credit_posting(dsn: str, transaction_id: str) -> Any:
    connection = await asyncpg.connect(dsn, timeout=30)
    try:
        return await connection.fetchrow(
            "SELECT * FROM postings WHERE transaction_id = $1 AND NOT is_debit",
            transaction_id,
            timeout=30,
        )
    finally:
        await connection.close(timeout=10)


async def test_stream_sends_progress_then_the_report(dsns: list[str]) -> None:
    async with serving(dsns) as (stub, _):
        events = [e async for e in stub.StreamAudit(apb.RunAuditRequest(), timeout=TIMEOUT_S)]
    assert events[-1].WhichOneof("event") == "report" and events[-1].report.ok
    progress = [e.progress for e in events[:-1]]
    assert progress and all(e.WhichOneof("event") == "progress" for e in events[:-1])
    assert {(p.shard, p.phase) for p in progress} >= {(0, "journal"), (1, "accounts")}
    assert all(p.done <= p.total for p in progress)


async def test_verify_chain_and_anchors(dsns: list[str]) -> None:
    head = await _head(dsns[0])
    good = apb.Anchor(shard=0, block=head["sequence"], hash_hex=head["hash"])
    async with serving(dsns) as (stub, _):
        verified = await stub.VerifyChain(apb.VerifyChainRequest(anchors=[good]), timeout=TIMEOUT_S)
        assert verified.ok and verified.complete and list(verified.findings) == []
        assert (verified.shards[0].shard, verified.shards[0].head_hash) == (0, head["hash"])
        bad = apb.Anchor(shard=0, block=head["sequence"], hash_hex="ab" * 32)
        verified = await stub.VerifyChain(
            apb.VerifyChainRequest(shards=[0], anchors=[bad]), timeout=TIMEOUT_S
        )
    assert not verified.ok and [s.shard for s in verified.shards] == [0]
    (finding,) = verified.findings
    assert finding.kind == apb.FINDING_KIND_ANCHOR_MISMATCH and finding.block == head["sequence"]
    assert (finding.expected, finding.found) == ("ab" * 32, head["hash"])


async def _head(dsn: str) -> Any:
    connection = await asyncpg.connect(dsn, timeout=30)
    try:
        return await connection.fetchrow(
            "SELECT sequence, encode(hash, 'hex') AS hash FROM journal_blocks "
            "ORDER BY sequence DESC LIMIT 1",
            timeout=30,
        )
    finally:
        await connection.close(timeout=10)


async def test_trial_balance_and_limits_to_shards_and_currencies(dsns: list[str]) -> None:
    await execute(
        dsns[0], "UPDATE accounts SET debits_posted = debits_posted + 5 WHERE id = '@fees'"
    )
    async with serving(dsns) as (stub, _):
        balances = await stub.TrialBalance(apb.TrialBalanceRequest(), timeout=TIMEOUT_S)
        assert not balances.balanced
        usd = [{b.currency: b for b in s.balances}["USD"] for s in balances.shards]
        assert [b.balanced for b in usd] == [False, True]
        cluster = {b.currency: b for b in balances.cluster}
        assert set(cluster) == {"EUR", "USD"} and cluster["EUR"].balanced
        assert int(cluster["USD"].debits_posted) == int(cluster["USD"].credits_posted) + 5
        euros = await stub.TrialBalance(
            apb.TrialBalanceRequest(shards=[1], currencies=["EUR"]), timeout=TIMEOUT_S
        )
        assert euros.balanced and [s.shard for s in euros.shards] == [1]
        assert [b.currency for b in euros.cluster] == ["EUR"]
        # The audit of shard 1 alone, in euros: clean; no cross-shard check on a part.
        report = await stub.RunAudit(
            apb.RunAuditRequest(shards=[1], currencies=["EUR"]), timeout=TIMEOUT_S
        )
        assert report.ok and [s.shard for s in report.shards] == [1]
        assert [b.currency for b in report.trial_balance] == ["EUR"]
        assert not report.cross_shard.checked and report.cross_shard.reason
        # Shard 0 in euros: the altered USD counter is left out, as asked.
        report = await stub.RunAudit(
            apb.RunAuditRequest(shards=[0], currencies=["EUR"]), timeout=TIMEOUT_S
        )
        assert report.ok
        report = await stub.RunAudit(apb.RunAuditRequest(shards=[0]), timeout=TIMEOUT_S)
        assert not report.ok and {f.account_id for f in report.findings} == {"@fees", ""}


@pytest.mark.parametrize(
    ("request_fields", "named"),
    [
        ({"shards": [2]}, "shards[0]: shard 2 does not exist (this server audits shards 0..1)"),
        ({"shards": [1, 1]}, "shards[1]: shard 1 is listed twice"),
        ({"currencies": ["USD", "usd"]}, "currencies[1]: 'usd' is not an ISO 4217"),
        ({"finding_count_max": 10_001}, "finding_count_max: 10001, at most 10000"),
        ({"hold_grace_seconds": -1.0}, "hold_grace_seconds: must be a finite number"),
        ({"hold_grace_seconds": float("nan")}, "hold_grace_seconds: must be a finite number"),
        (
            {"anchors": [apb.Anchor(shard=0, block=1, hash_hex="xyz")]},
            "anchors[0].hash_hex: must be 64 hexadecimal digits",
        ),
        (
            {"anchors": [apb.Anchor(shard=5, block=1, hash_hex="00" * 32)]},
            "anchors[0].shard: shard 5 does not exist",
        ),
        (
            {"anchors": [apb.Anchor(shard=0, block=0, hash_hex="00" * 32)]},
            "anchors[0].block: must be 1 or more",
        ),
    ],
)
async def test_bad_requests_name_the_field(
    dsns: list[str], request_fields: dict[str, Any], named: str
) -> None:
    async with serving(dsns) as (stub, _):
        for call in (stub.RunAudit, _streamed(stub)):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(apb.RunAuditRequest(**request_fields), timeout=TIMEOUT_S)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert named in (raised.value.details() or "")


def _streamed(stub: apb_grpc.AuditStub) -> Any:
    async def collect(events: Any) -> list[Any]:
        return [event async for event in events]

    def call(request: apb.RunAuditRequest, timeout: float) -> Any:
        return collect(stub.StreamAudit(request, timeout=timeout))

    return call


async def test_other_bad_requests(dsns: list[str]) -> None:
    async with serving(dsns) as (stub, channel):
        for method in ("RunAudit", "VerifyChain", "TrialBalance"):
            raw = channel.unary_unary(f"/tally.v1.Audit/{method}")
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await raw(b"\xff\xff\xff", timeout=TIMEOUT_S)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "is not a valid tally.v1." in (raised.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.TrialBalance(apb.TrialBalanceRequest(currencies=["XXX"]), timeout=10)
        assert "currencies[0]: 'XXX'" in (raised.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.VerifyChain(apb.VerifyChainRequest(shards=[9]), timeout=10)
        assert "shards[0]: shard 9 does not exist" in (raised.value.details() or "")


async def test_the_services_sessions_cannot_write(dsns: list[str]) -> None:
    config = AuditServiceConfig(
        dsns=tuple(dsns), listen="127.0.0.1:0", security=security.server_security()
    )
    server = AuditServer(config)
    connection = await server.connect(0)
    try:
        assert await connection.fetchval("SHOW default_transaction_read_only") == "on"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await connection.execute("UPDATE accounts SET code = 1 WHERE id = '@bank'")
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await connection.execute("CREATE TABLE forged (x int)")
    finally:
        await connection.close()


async def test_audits_beyond_the_limit_are_resource_exhausted(
    dsns: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    real = audit.audit_cluster

    async def held(*args: Any, **kwargs: Any) -> audit.AuditReport:
        started.set()
        await release.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(audit, "audit_cluster", held)
    async with serving(dsns, audit_concurrency_max=1) as (stub, _):
        first = asyncio.ensure_future(stub.RunAudit(apb.RunAuditRequest(), timeout=TIMEOUT_S))
        await asyncio.wait_for(started.wait(), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.RunAudit(apb.RunAuditRequest(), timeout=TIMEOUT_S)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 1 at once" in (raised.value.details() or "")
        release.set()
        assert (await first).ok
        assert (await stub.RunAudit(apb.RunAuditRequest(), timeout=TIMEOUT_S)).ok


async def test_an_unreadable_shard_is_reported_in_the_report(dsns: list[str]) -> None:
    async with serving([dsns[0], dsns[1] + "_nope"]) as (stub, _):
        report = await stub.RunAudit(apb.RunAuditRequest(), timeout=TIMEOUT_S)
        assert not report.ok and not report.complete
        assert report.shards[0].ok and "cannot connect" in report.shards[1].error
        assert "_nope" in report.shards[1].target
        balances = await stub.TrialBalance(apb.TrialBalanceRequest(), timeout=TIMEOUT_S)
        assert not balances.balanced and balances.shards[1].error


async def test_only_an_auditor_may_audit(dsns: list[str]) -> None:
    """Every call is authenticated (TLS, a certificate of the cluster's CA) and only the role
    auditor audits; any authenticated caller may check its health; a plain channel gets
    nothing at all."""
    probe = health_pb2.HealthCheckRequest(service="tally.v1.Audit")
    async with running(dsns) as target:
        async with aio_channel(target, security.identity({Role.AUDITOR})) as channel:
            balances = await apb_grpc.AuditStub(channel).TrialBalance(
                apb.TrialBalanceRequest(), timeout=TIMEOUT_S
            )
            assert balances.balanced and len(balances.shards) == 2
        everything_else = security.identity({Role.ADMIN, Role.POSTER, Role.READER}, ["**"])
        async with aio_channel(target, everything_else) as channel:
            stub = apb_grpc.AuditStub(channel)
            for call, request in (
                (stub.RunAudit, apb.RunAuditRequest()),
                (_streamed(stub), apb.RunAuditRequest()),
                (stub.VerifyChain, apb.VerifyChainRequest()),
                (stub.TrialBalance, apb.TrialBalanceRequest()),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await call(request, timeout=TIMEOUT_S)
                assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
            answer = await health_pb2_grpc.HealthStub(channel).Check(probe, timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        async with grpc.aio.insecure_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await health_pb2_grpc.HealthStub(channel).Check(probe, timeout=10)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_finding_kinds_and_checks_mirror_the_proto() -> None:
    for kind in audit.FindingKind:
        assert apb.FindingKind.Value(f"FINDING_KIND_{kind.name}") == kind.value
        check = apb.AuditCheck.Name(kind.value // 100)
        assert check == "AUDIT_CHECK_" + kind.check.upper().replace(" ", "_")
    assert len(apb.FindingKind.keys()) == len(audit.FindingKind) + 1


async def test_audit_serve_command(dsns: list[str], tmp_path: Path) -> None:
    child = await supervisor.start(
        ["audit-serve", "--listen", "127.0.0.1:0", *security.server_flags()],
        tmp_path / "audit-serve.log",
        name="audit-serve",
        environment=supervisor.dsn_environment(audit_dsns=dsns),
        cwd=REPO_ROOT,
        serving_prefixes=(supervisor.AUDIT_SERVING_PREFIX,),
        serving_timeout_s=30,
    )
    try:
        line = child.stdout_lines[0]  # the first line it prints
        assert line.startswith("tally: serving tally.v1.Audit on 127.0.0.1:"), line
        async with security.channel(line.split(" on ")[1].strip()) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(
                health_pb2.HealthCheckRequest(service="tally.v1.Audit"), timeout=10
            )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            report = await apb_grpc.AuditStub(channel).RunAudit(
                apb.RunAuditRequest(), timeout=TIMEOUT_S
            )
            assert report.ok and len(report.shards) == 2
        assert await child.stop(timeout_s=30, signum=signal.SIGTERM) == 0
    finally:
        await child.close()
