"""Metrics on every process of `tally up --shards 2` (two nodes and a gateway, real processes):
each prints its metrics URL before the serving line, and a posted batch moves the counters it
should on every process, by exactly what it did. And no child shows the embedded server's
password on its command line or in its log. The clients are TLS, as the admin identity tally up
keeps in its data directory (tests/support/local_up.py)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from core.slots import SlotMap
from tally.v1 import audit_pb2, audit_pb2_grpc
from tally.v1 import ledger_pb2 as pb
from tests.support.helpers import Client, account, names, transfer
from tests.support.local_up import LocalUp, running_up, scratch_directory
from tests.support.metrics import Samples, metrics_text_at, parse_samples
from tests.support.processes import child_pids, proc_file

SHARD_COUNT = 2
METRICS_LINE = re.compile(r"^tally: metrics of (\S+) on (http://\S+/metrics)$")
POST = "PostTransactions"
AUDIT_LINE = "tally: audit (tally.v1.Audit, read-only) on "


@dataclass
class UpProcess(LocalUp):
    metrics: dict[str, str] = field(default_factory=dict)  # process name -> URL


@pytest.fixture
async def up(tmp_path: Path) -> AsyncIterator[UpProcess]:
    with scratch_directory() as scratch:
        arguments = ["--shards", str(SHARD_COUNT)]
        async with running_up(tmp_path / "up.log", arguments, data_dir=scratch / "data") as up:
            handle = UpProcess(up.child, up.data_dir)
            for line in up.lines:
                if match := METRICS_LINE.match(line.strip()):
                    handle.metrics[match.group(1)] = match.group(2)
            yield handle


async def scrape(url: str) -> Samples:
    return parse_samples(await asyncio.to_thread(metrics_text_at, url))


async def scrape_all(up: UpProcess) -> dict[str, Samples]:
    names = list(up.metrics)
    pages = await asyncio.gather(*(scrape(up.metrics[n]) for n in names))
    return dict(zip(names, pages, strict=True))


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample with exactly these labels (absent: 0, as a counter not yet incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def customers_on_each_shard() -> list[str]:
    slot_map = SlotMap.even(SHARD_COUNT)
    chosen: dict[int, str] = {}
    for n in range(10_000):
        chosen.setdefault(slot_map.shard_of_key(f"cust-{n}"), f"cust-{n}")
        if len(chosen) == SHARD_COUNT:
            break
    return [chosen[s] for s in range(SHARD_COUNT)]


async def test_every_process_counts_a_posted_batch(up: UpProcess) -> None:
    node_names = [f"node-{s}" for s in range(SHARD_COUNT)]
    assert sorted(up.metrics) == sorted([*node_names, "gateway", "audit"])
    metrics_lines = [n for n, line in enumerate(up.lines) if METRICS_LINE.match(line)]
    assert max(metrics_lines) < len(up.lines) - 1  # all before the serving line
    before, results, seconds = await _post_a_batch_over_two_shards(up)
    assert names([r.code for r in results]) == [
        "RESULT_CODE_REPLAYED",
        "RESULT_CODE_CREATED",
        "RESULT_CODE_CREATED",
        "RESULT_CODE_CREATED",
        "RESULT_CODE_INSUFFICIENT_FUNDS",
    ]
    # Resolving the cross-shard piece on shard 1 may follow the answer: wait for its batch.
    after = await _wait_for_batches(up, before, "node-1", item_count=4)
    scrapes = Scrapes(before, after)
    _check_the_gateway_counted(scrapes, seconds)
    _check_the_nodes_counted(scrapes)
    await _check_the_audit_service_counted(up, before)


@dataclass
class Scrapes:
    """Every process's samples, before and after the batch."""

    before: dict[str, Samples]
    after: dict[str, Samples]

    def moved(self, process: str, name: str, **labels: str) -> float:
        return value(self.after[process], name, **labels) - value(
            self.before[process], name, **labels
        )


async def _post_a_batch_over_two_shards(
    up: UpProcess,
) -> tuple[dict[str, Samples], list[pb.ItemResult], float]:
    """Accounts on shards 0 and 1 funded, then one batch of every kind of item through the
    gateway: (the samples before it, its results, how long it took in seconds)."""
    a, b = customers_on_each_shard()  # a on shard 0, b on shard 1
    async with up.channel() as channel:
        client = Client(channel)
        created = await client.create(
            account("@funding"),
            *(account(f"{c}/dep", no_overdraft=True) for c in (a, b)),
            *(account(f"{c}/loan") for c in (a, b)),
        )
        assert set(names(created)) == {"RESULT_CODE_CREATED"}
        warm_up = await client.codes(
            transfer(f"{a}/fund", "@funding", f"{a}/dep", 10_000),
            transfer(f"{b}/fund", "@funding", f"{b}/dep", 10_000),
        )
        # After the funding (units of one request on different shards run concurrently).
        warm_up += await client.codes(
            transfer(f"{a}/warm-cross", f"{a}/dep", f"{b}/dep", 1),  # makes the clearing accounts
        )
        assert set(names(warm_up)) == {"RESULT_CODE_CREATED"}

        before = await scrape_all(up)
        started = time.monotonic()
        results = await client.post(
            transfer(f"{a}/fund", "@funding", f"{a}/dep", 10_000),  # a retry: replayed, shard 0
            transfer(f"{a}/local", f"{a}/dep", f"{a}/loan", 100),  # shard 0
            transfer(f"{a}/cross", f"{a}/dep", f"{b}/dep", 200),  # coordinator 0, prepare on 1
            transfer(f"{b}/spread", "@funding", f"{b}/dep", 300),  # a spread leg, shard 1
            transfer(f"{b}/over", f"{b}/dep", f"{b}/loan", 10**9),  # refused, shard 1
        )
        seconds = time.monotonic() - started
    return before, results, seconds


def _check_the_gateway_counted(scrapes: Scrapes, seconds: float) -> None:
    moved, after = scrapes.moved, scrapes.after
    # The gateway: one request, its items by code, one call per shard for the single-shard ones.
    assert moved("gateway", "tally_gateway_rpc_total", method=POST, status="OK") == 1
    assert moved("gateway", "tally_gateway_rpc_duration_seconds_count", method=POST) == 1
    assert 0 < moved("gateway", "tally_gateway_rpc_duration_seconds_sum", method=POST) <= seconds
    gateway_items = "tally_gateway_item_results_total"
    assert moved("gateway", gateway_items, method=POST, code="CREATED") == 3
    assert moved("gateway", gateway_items, method=POST, code="REPLAYED") == 1
    assert moved("gateway", gateway_items, method=POST, code="INSUFFICIENT_FUNDS") == 1
    for shard in ("0", "1"):
        calls = {"shard": shard, "method": POST}
        assert moved("gateway", "tally_gateway_shard_call_duration_seconds_count", **calls) == 1
        assert moved("gateway", "tally_gateway_shard_call_items_sum", **calls) == 2
        assert moved("gateway", "tally_gateway_shard_call_requests_sum", **calls) == 1
        assert moved("gateway", "tally_gateway_shard_call_wait_seconds_count", **calls) == 1
        assert moved("gateway", "tally_gateway_shard_call_failures_total", **calls) == 0
        assert value(after["gateway"], "tally_gateway_shard_calls_in_flight", **calls) == 0
        assert value(after["gateway"], "tally_gateway_shard_queued_requests", **calls) == 0
    two_phase = "tally_gateway_shard_call_duration_seconds_count"
    assert moved("gateway", two_phase, shard="1", method="Prepare") == 1
    assert moved("gateway", two_phase, shard="0", method="Commit") == 1
    assert moved("gateway", "tally_gateway_wrong_shard_retries_total") == 0
    cross = "tally_gateway_cross_shard_items_total"
    assert moved("gateway", cross, code="CREATED") == 1
    assert moved("gateway", "tally_gateway_cross_shard_duration_seconds_count") == 1
    phases = "tally_gateway_cross_shard_phase_duration_seconds_count"
    assert (
        moved("gateway", phases, phase="Prepare") == moved("gateway", phases, phase="Commit") == 1
    )


def _check_the_nodes_counted(scrapes: Scrapes) -> None:
    moved, after = scrapes.moved, scrapes.after
    # The nodes: what each applied, by the method that brought it.
    node_items = "tally_item_results_total"
    assert moved("node-0", node_items, shard="0", method=POST, code="REPLAYED") == 1
    assert moved("node-0", node_items, shard="0", method=POST, code="CREATED") == 1
    assert moved("node-0", node_items, shard="0", method="Commit", code="CREATED") == 1
    assert moved("node-1", node_items, shard="1", method=POST, code="CREATED") == 1
    assert moved("node-1", node_items, shard="1", method=POST, code="INSUFFICIENT_FUNDS") == 1
    assert moved("node-1", node_items, shard="1", method="Prepare", code="CREATED") == 1
    # Node 0 took the post and the commit; node 1 the post, the prepare and the resolution. The
    # writer may group calls that arrive together into one batch.
    for node, shard, call_count in (("node-0", "0", 2), ("node-1", "1", 3)):
        assert moved(node, "tally_rpc_total", shard=shard, method=POST, status="OK") == 1
        assert 1 <= moved(node, "tally_batches_committed_total", shard=shard) <= call_count
        assert moved(node, "tally_commit_duration_seconds_count", shard=shard) == moved(
            node, "tally_batches_committed_total", shard=shard
        )
        assert ("tally_prepared_pieces", frozenset({("shard", shard)})) in after[node]
        version = value(after[node], "tally_slot_map_version", shard=shard)
        assert version == value(after["gateway"], "tally_gateway_slot_map_version") >= 1
    # Items through node 0's writer: the post's two and the coordinator's committed piece.
    assert moved("node-0", "tally_batch_items_sum", shard="0") == 3


async def _check_the_audit_service_counted(up: UpProcess, before: dict[str, Samples]) -> None:
    # tally up also serves the auditors' read-only Audit service over every shard: clean.
    (audit_line,) = [line for line in up.lines if line.startswith(AUDIT_LINE)]
    async with up.channel(audit_line.removeprefix(AUDIT_LINE)) as channel:
        report = await audit_pb2_grpc.AuditStub(channel).RunAudit(audit_pb2.RunAuditRequest())
    assert report.ok, report
    assert len(report.shards) == SHARD_COUNT
    audited = await scrape_all(up)
    calls = value(audited["audit"], "tally_audit_rpc_total", method="RunAudit", status="OK")
    assert calls - value(before["audit"], "tally_audit_rpc_total", method="RunAudit") == 1
    assert value(audited["audit"], "tally_audit_rpc_duration_seconds_count", method="RunAudit") == 1


async def _wait_for_batches(
    up: UpProcess, before: dict[str, Samples], node: str, item_count: int, timeout_s: float = 10.0
) -> dict[str, Samples]:
    """Scrapes until `node`'s writer has taken item_count more items (post, prepare, resolve)."""
    shard = node.removeprefix("node-")
    deadline = time.monotonic() + timeout_s
    while True:
        after = await scrape_all(up)
        taken = value(after[node], "tally_batch_items_sum", shard=shard) - value(
            before[node], "tally_batch_items_sum", shard=shard
        )
        if taken >= item_count:
            assert taken == item_count
            return after
        assert time.monotonic() < deadline, f"{node} took {taken} items, not {item_count}"
        await asyncio.sleep(0.05)


async def test_no_child_shows_the_password_in_its_command_line_or_log(
    up: UpProcess, tmp_path: Path
) -> None:
    password = (up.data_dir / "pg" / "superuser.password").read_text().strip()
    assert len(password) >= 32
    tls_key = up.credentials / "cluster.key"
    commands = {}
    for pid in child_pids(up.child.pid):
        command_line = proc_file(pid, "cmdline")
        if b"shards.cli" not in command_line:
            continue  # not a tally child (PostgreSQL's tools run under the supervisor too)
        assert password.encode() not in command_line, command_line
        words = command_line.split(b"\0")
        # Its TLS key as a path to tally up's 0600 file, never the key itself.
        assert f"--tls-key={tls_key}".encode() in words and b"PRIVATE KEY" not in command_line
        role = words[words.index(b"shards.cli") + 1].decode()
        environment = dict(
            entry.split(b"=", 1)
            for entry in proc_file(pid, "environ").split(b"\0")
            if b"=" in entry
        )
        commands.setdefault(role, []).append(environment)
    assert sorted((role, len(found)) for role, found in commands.items()) == [
        ("audit-serve", 1),
        ("gateway", 1),
        ("node", SHARD_COUNT),
    ]
    # They have their databases from their environment instead.
    assert all(password.encode() in e[b"TALLY_DSN"] for e in commands["node"])
    assert password.encode() in commands["gateway"][0][b"TALLY_CONTROL_DSN"]
    assert commands["audit-serve"][0][b"TALLY_AUDIT_DSNS"].count(password.encode()) == SHARD_COUNT
    logs = [*(up.data_dir / "logs").glob("*.log"), tmp_path / "up.log"]
    assert len(logs) == SHARD_COUNT + 3
    for log in logs:
        assert password not in log.read_text(), log
        assert "PRIVATE KEY" not in log.read_text(), log
    assert not any(password in line for line in up.lines)
