"""Issue 13's two measurements at small scale against a real embedded PostgreSQL: PostgreSQL's
own batched ceiling (bench/common/ceiling.py) beside Tally in single_node, and the storage
breakdown of a shard database (bench/closed_loop/storage.py). Behaviour only: no timing is
asserted (performance is claimed from bench runs, bench/baselines/)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bench.closed_loop import storage
from bench.common import ceiling
from bench.common.workload import (
    FUNDING_AMOUNT_CENTS,
    HOT_ACCOUNT_ID,
    Distribution,
    Shape,
    Transfer,
    TransferSource,
    Workload,
    customer_account_ids,
)
from bench.locust import cost
from core.store.schema import MIGRATIONS
from shards.local.embedded_pg import EmbeddedPostgres, EmbeddedPostgresConfig, free_port
from tests.support.paths import REPO_ROOT

BATCH_WORKLOADS = ("batch-uniform", "batch-hot")
HOT_BATCH = Workload(Shape.BATCH, Distribution.HOT)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Outside pytest's temporary root, as in test_bench_smoke.py (a concurrent pytest session
    resets that root's permissions under the server's feet)."""
    root = Path(tempfile.mkdtemp(prefix="tally-bench-ceiling-"))
    try:
        yield root / "data"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run_bench(out_dir: Path, data_dir: Path) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "bench.closed_loop.single_node",
        "--systems", "tally,ceiling", "--workloads", ",".join(BATCH_WORKLOADS),
        "--accounts", "1000", "--duration-s", "1", "--warmup-s", "0.2",
        "--batch-size", "100", "--batch-clients", "4", "--seed-batch-size", "1000",
        "--quiet-wait-s", "0", "--out", str(out_dir), "--data-dir", str(data_dir),
    ]  # fmt: skip
    finished = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=50, check=False
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    results: dict[str, Any] = json.loads((out_dir / "results.json").read_text())
    return results


def _check_ceiling_report(results: dict[str, Any]) -> None:
    runs = {(run["system"], run["workload"]): run for run in results["runs"]}
    assert set(runs) == {(s, w) for s in ("tally", "ceiling") for w in BATCH_WORKLOADS}
    for key, run in runs.items():
        assert run["transfers_created"] > 0 and run["results"].keys() == {"CREATED"}, key
        assert run["call_errors"] == {}, key
    assert results["seeding"]["audit"] == {"tally": [], "ceiling": []}
    comparison = results["ceiling"]
    for row in comparison["workloads"]:
        tally = runs[("tally", row["workload"])]["transfers_per_s"]
        ceiling_rate = runs[("ceiling", row["workload"])]["transfers_per_s"]
        assert row["tally_transfers_per_s"] == tally
        assert row["ceiling_transfers_per_s"] == ceiling_rate
        assert row["tally_share_of_ceiling"] == round(tally / ceiling_rate, 2)
    assert {row["workload"] for row in comparison["workloads"]} == set(BATCH_WORKLOADS)
    assert set(comparison["hot_at_least_uniform"].values()) <= {True, False}
    verdicts = {t["name"]: t["verdict"] for t in results["targets"]}
    assert verdicts["(b) hot: Tally / PostgreSQL's batched ceiling"] in {"PASS", "MISS"}
    assert results["storage"]["totals"]["bytes_per_posting"] > 0


def _schema_names() -> set[str]:
    """The tables and indexes the migrations create, and each table's primary key."""
    text = " ".join(sql for _, _, sql in MIGRATIONS)
    tables = set(re.findall(r"CREATE TABLE (\w+)", text))
    indexes = set(re.findall(r"CREATE INDEX (\w+)", text))
    return tables | indexes | {f"{table}_pkey" for table in tables}


async def _check_breakdown(dsn: str) -> None:
    breakdown = await storage.measure(dsn)
    connection = await asyncpg.connect(dsn, timeout=30.0)
    try:
        catalog = {
            row["relname"]
            for row in await connection.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'i')"
            )
        }
        assert breakdown.relation_names() == catalog
        assert _schema_names() <= catalog
        sizes = {}
        for table in breakdown.tables:
            name = table.name
            rows = await connection.fetchval(f'SELECT count(*) FROM "{name}"')
            total = await connection.fetchval("SELECT pg_total_relation_size($1::regclass)", name)
            assert (table.rows, table.total_bytes) == (rows, total), name
            parts = table.heap_bytes + table.map_bytes + table.toast_bytes + table.index_bytes
            assert parts == total, name
            assert table.index_bytes == sum(index.bytes for index in table.indexes), name
            sizes[name] = {"bytes": total, "rows": rows}
    finally:
        await connection.close()
    per_posting = breakdown.totals["bytes_per_posting"]
    assert per_posting is not None and per_posting > 0
    postings = sizes["postings"]["rows"]
    assert postings > 0
    expected = sum(sizes[n]["bytes"] for n in cost.PER_POSTING_RELATIONS) / postings
    assert per_posting == pytest.approx(expected, abs=0.05)
    assert per_posting == pytest.approx(cost.bytes_per_row([sizes])[1], abs=0.05)
    assert sum(value for _, value in breakdown.per_posting) == pytest.approx(expected, abs=1.0)


async def _post_hot_concurrently(
    ledger: ceiling.CeilingLedger, accounts: list[str], clients: int, batches: int
) -> list[Transfer]:
    posted: list[Transfer] = []

    async def client(number: int) -> None:
        source = TransferSource(accounts, HOT_BATCH, "t", number, seed=number)
        for _ in range(batches):
            transfers = source.take(150)
            outcome = await ledger.post(transfers)
            assert outcome.error == "" and outcome.codes["CREATED"] == len(transfers)
            posted.extend(transfers)

    async with asyncio.TaskGroup() as group:
        for number in range(clients):
            group.create_task(client(number))
    return posted


async def _check_ceiling_concurrency(dsn: str) -> None:
    accounts = customer_account_ids(200)  # few accounts: concurrent batches share many
    await ceiling.create_and_seed(dsn, accounts)
    ledger = await ceiling.CeilingLedger.open(dsn, 8)
    try:
        posted = await _post_hot_concurrently(ledger, accounts, clients=8, batches=4)
        before = await ceiling.totals(dsn)
        unknown = Transfer("t/unknown", HOT_ACCOUNT_ID, "cust-999999/deposit", 5)
        known = Transfer("t/known", HOT_ACCOUNT_ID, accounts[0], 5)
        refused = await ledger.post([known, unknown])
        assert refused.error.startswith("postgres:") and not refused.codes
        assert await ceiling.totals(dsn) == before  # the whole batch failed, nothing written
    finally:
        await ledger.close()
    assert await ceiling.audit(dsn) == []
    credited = Counter[str]()
    for transfer in posted:
        credited[transfer.credit_account_id] += transfer.amount_cents
    connection = await asyncpg.connect(dsn, server_settings={"search_path": ceiling.SCHEMA})
    try:
        rows = await connection.fetch("SELECT id, debits_posted, credits_posted FROM accounts")
    finally:
        await connection.close()
    counters = {row["id"]: (row["debits_posted"], row["credits_posted"]) for row in rows}
    total = sum(t.amount_cents for t in posted)
    assert counters[HOT_ACCOUNT_ID] == (FUNDING_AMOUNT_CENTS * len(accounts) + total, 0)
    for account in accounts:
        assert counters[account] == (0, FUNDING_AMOUNT_CENTS + credited[account]), account
    assert before == {
        "accounts": len(accounts) + 1,
        "transactions": len(accounts) + len(posted),
        "postings": 2 * (len(accounts) + len(posted)),
    }
    await _check_audit_finds_damage(dsn)


async def _check_audit_finds_damage(dsn: str) -> None:
    """The audit is not vacuous: a counter-after off by one, and a balance off by one, show."""
    connection = await asyncpg.connect(dsn, server_settings={"search_path": ceiling.SCHEMA})
    try:
        await connection.execute(
            "UPDATE postings SET credits_posted_after = credits_posted_after + 1 "
            "WHERE sequence = (SELECT max(sequence) FROM postings WHERE NOT is_debit)"
        )
        await connection.execute(
            "UPDATE accounts SET debits_posted = debits_posted + 1 WHERE id = $1", HOT_ACCOUNT_ID
        )
    finally:
        await connection.close()
    found = " / ".join(await ceiling.audit(dsn))
    assert "the books do not balance" in found
    assert f"counters are not the sums of the account's postings: ('{HOT_ACCOUNT_ID}',)" in found
    assert "counters after a posting are not the running sums" in found


@pytest.mark.timeout(90)
async def test_ceiling_and_storage_breakdown(tmp_path: Path, data_dir: Path) -> None:
    results = await asyncio.to_thread(_run_bench, tmp_path / "report", data_dir)
    _check_ceiling_report(results)
    # The bench stopped its server; start it again on the same data for the catalog's view.
    server = EmbeddedPostgres(EmbeddedPostgresConfig(data_dir=data_dir / "pg", port=free_port()))
    await asyncio.to_thread(server.start)
    try:
        await _check_breakdown(server.dsn("tally"))
        await _check_ceiling_concurrency(server.dsn("ceiling"))
    finally:
        await asyncio.to_thread(server.stop)
