"""`tally up` supervises every child, its PostgreSQL included (real processes, kill -9): a node,
the gateway or the audit server that dies is restarted with backoff on the ports it had, and
transfers through the gateway succeed again within a bound; a killed postmaster is restarted,
under one node in this process as under a cluster, and the nodes serve again; every restart is
said on stdout; and Ctrl-C after all that still stops everything, PostgreSQL included."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from core.slots import SlotMap
from shards.local.embedded_pg import EmbeddedPostgres, EmbeddedPostgresConfig
from tally.v1 import audit_pb2, audit_pb2_grpc
from tally.v1 import ledger_pb2 as pb
from tests.support.helpers import Client, account, transfer
from tests.support.local_up import (
    LocalUp,
    child_of,
    kill_9,
    running,
    running_up,
    stop,
    wait_line,
    wait_serving,
)
from tests.support.processes import child_pids, proc_file

SHARD_COUNT = 2
RECOVERY_TIMEOUT_S = 60.0
LINE_TIMEOUT_S = 30.0
APPLIED = {pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED}
# What a client retries with the same ids: OUTCOME_UNKNOWN too (a write that reached a node as
# it was killed or restarting may have landed; the retry learns it).
RETRYABLE_RESULTS = {
    pb.RESULT_CODE_UNAVAILABLE,
    pb.RESULT_CODE_ABORTED,
    pb.RESULT_CODE_OUTCOME_UNKNOWN,
}
RETRYABLE_STATUSES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
AUDIT_LINE = "tally: audit (tally.v1.Audit, read-only) on "


# ------------------------------------------------------------------ helpers


@pytest.fixture
async def cluster(scratch: Path, tmp_path: Path) -> AsyncIterator[LocalUp]:
    arguments = ["--shards", str(SHARD_COUNT)]
    async with running_up(tmp_path / "up.log", arguments, data_dir=scratch / "data") as up:
        await wait_serving(up)
        yield up


def customers_on_each_shard() -> list[str]:
    slot_map = SlotMap.even(SHARD_COUNT)
    chosen: dict[int, str] = {}
    for n in range(10_000):
        chosen.setdefault(slot_map.shard_of_key(f"cust-{n}"), f"cust-{n}")
        if len(chosen) == SHARD_COUNT:
            break
    return [chosen[shard] for shard in range(SHARD_COUNT)]


def printed_endpoint(up: LocalUp, name: str) -> str:
    """Where tally up said, at its start, that child name listens."""
    if name == "gateway":
        return up.target
    prefix = AUDIT_LINE if name == "audit" else f"tally: shard {name.removeprefix('node-')} on "
    (line,) = [line for line in up.lines if line.startswith(prefix)]
    return line.removeprefix(prefix).strip()


def postmaster_pid(up: LocalUp) -> int:
    return int((up.data_dir / "pg" / "postmaster.pid").read_text().splitlines()[0])


async def post_until_applied(
    up: LocalUp, *transactions: pb.Transaction, timeout_s: float = RECOVERY_TIMEOUT_S
) -> float:
    """Post the batch, retrying it with the same ids while the answer is retryable, until every
    item is applied (created, or replayed by a retry); returns the seconds it took."""
    started = time.monotonic()
    last: object = None
    async with up.channel() as channel:
        client = Client(channel)
        while time.monotonic() - started < timeout_s:
            try:
                results = await client.stub.PostTransactions(
                    pb.PostTransactionsRequest(transactions=transactions), timeout=10
                )
            except grpc.aio.AioRpcError as error:
                assert error.code() in RETRYABLE_STATUSES, error
                last = error
            else:
                codes = {r.code for r in results.results}
                if codes <= APPLIED:
                    return time.monotonic() - started
                assert codes <= APPLIED | RETRYABLE_RESULTS, results
                last = results
            await asyncio.sleep(0.2)
    raise AssertionError(f"not applied within {timeout_s}s (last: {last}): {up.child.describe()}")


async def create_accounts(up: LocalUp, *accounts: pb.Account) -> None:
    async with up.channel() as channel:
        assert set(await Client(channel).create(*accounts)) == {pb.RESULT_CODE_CREATED}


async def audit_is_clean(up: LocalUp, timeout_s: float = RECOVERY_TIMEOUT_S) -> None:
    """The audit server (restarted on the port it had) answers a clean audit within the bound."""
    target = (await wait_line(up, AUDIT_LINE)).removeprefix(AUDIT_LINE).strip()
    deadline = time.monotonic() + timeout_s
    async with up.channel(target) as channel:
        stub = audit_pb2_grpc.AuditStub(channel)
        while True:
            try:
                report = await stub.RunAudit(audit_pb2.RunAuditRequest(), timeout=30)
            except grpc.aio.AioRpcError as error:
                assert error.code() in RETRYABLE_STATUSES, error
                assert time.monotonic() < deadline, error
                await asyncio.sleep(0.2)
                continue
            assert report.ok, report
            return


# ------------------------------------------------------------------ children


@pytest.mark.timeout(300)
async def test_a_killed_node_gateway_or_audit_server_is_restarted_and_serves_again(
    cluster: LocalUp,
) -> None:
    a, b = customers_on_each_shard()
    await create_accounts(cluster, account("@bank"), account(f"{a}/d"), account(f"{b}/d"))
    funding = [transfer(f"fund-{c}", "@bank", f"{c}/d", 1000) for c in (a, b)]
    # A first cross-shard transfer while every node serves makes the clearing accounts: the
    # gateway's making of them does not yet answer a shard's standby as retryable (UNKNOWN,
    # issue 12's "no UNKNOWN anywhere", the gateway's part).
    warm_up = transfer("warm-up", f"{a}/d", f"{b}/d", 1)
    await post_until_applied(cluster, *funding, warm_up)
    for round_number, (name, words) in enumerate(
        [
            ("node-1", ("node", "--shard-id", "1")),
            ("node-0", ("node", "--shard-id", "0")),
            ("gateway", ("gateway",)),
            ("audit", ("audit-serve",)),
        ]
    ):
        pid = child_of(cluster, *words)
        seen = len(cluster.lines)
        await kill_9(pid)
        said = await wait_line(cluster, f"tally: {name} exited", after=seen)
        assert said == f"tally: {name} exited (code -9); restarting in 0.5 s", said
        await wait_line(cluster, f"tally: {name} restarted (pid ", after=seen)
        restarted = child_of(cluster, *words)
        assert restarted != pid
        # On the port it had: what tally up printed of it stays true.
        command = proc_file(restarted, "cmdline").split(b"\0")
        assert f"--listen={printed_endpoint(cluster, name)}".encode() in command, command
        # Through the gateway (on the port it had), across both shards, with the same ids
        # however often it is retried.
        await post_until_applied(
            cluster,
            transfer(f"a-{round_number}", f"{a}/d", f"{b}/d", 1),
            transfer(f"b-{round_number}", f"{b}/d", f"{a}/d", 2),
            transfer(f"local-{round_number}", "@bank", f"{b}/d", 3),
        )
    await audit_is_clean(cluster)
    async with cluster.channel() as channel:
        client = Client(channel)
        assert (await client.balance(f"{a}/d")).credits_posted == 1000 + 2 * 4
        assert (await client.balance(f"{b}/d")).credits_posted == 1000 + 1 + (1 + 3) * 4


# ------------------------------------------------------------------ PostgreSQL


async def _postgresql_is_restarted(
    up: LocalUp, customers: list[str], run: str, delay: str = "0.5"
) -> None:
    await create_accounts(up, account(f"@bank-{run}"), *(account(f"{c}/{run}") for c in customers))
    old = postmaster_pid(up)
    seen = len(up.lines)
    await kill_9(old)
    said = await wait_line(up, "tally: PostgreSQL exited", after=seen)
    assert said == f"tally: PostgreSQL exited (pid {old}); restarting in {delay} s", said
    await wait_line(up, "tally: PostgreSQL restarted (pid ", after=seen)
    assert postmaster_pid(up) != old
    await post_until_applied(
        up, *(transfer(f"{run}-{c}", f"@bank-{run}", f"{c}/{run}", 7) for c in customers)
    )


@pytest.mark.timeout(300)
async def test_a_killed_postgresql_under_a_cluster_is_restarted_and_the_nodes_serve_again(
    cluster: LocalUp,
) -> None:
    customers = customers_on_each_shard()
    await _postgresql_is_restarted(cluster, customers, "first")
    # Once more: it is still watched, and having served less than 30 s it waits twice as long.
    await _postgresql_is_restarted(cluster, customers, "again", delay="1")
    await audit_is_clean(cluster)
    # Ctrl-C after all that stops everything: every child, and PostgreSQL.
    children = child_pids(cluster.child.pid)
    assert await stop(cluster.child) == 0, cluster.child.describe()
    assert cluster.lines[-1] == "tally: stopped"
    assert not any(running(pid) for pid in children)
    server = EmbeddedPostgres(EmbeddedPostgresConfig(cluster.data_dir / "pg", port=5432))
    assert not server.is_running()


@pytest.mark.timeout(300)
async def test_a_killed_postgresql_under_one_node_is_restarted_and_the_node_serves_again(
    scratch: Path, tmp_path: Path
) -> None:
    async with running_up(tmp_path / "up.log", data_dir=scratch / "data") as up:
        await wait_serving(up)
        await _postgresql_is_restarted(up, ["cust-1"], "first")
        await wait_serving(up)
        assert await stop(up.child) == 0, up.child.describe()
        assert up.lines[-1] == "tally: stopped"
        server = EmbeddedPostgres(EmbeddedPostgresConfig(up.data_dir / "pg", port=5432))
        assert not server.is_running()
