"""`tally audit`: an unaltered ledger audits clean; PostgreSQL altered behind Tally's back (a
posting's amount, a balance counter, a block hash, a deleted posting, a forged one, ...) makes
the audit exit non-zero and name exactly the altered thing.

A ledger is written once per module through a real node (a seeded random workload with every
kind of transaction); each test audits its own copy (CREATE DATABASE ... TEMPLATE).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from core import audit
from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tests.support.helpers import (
    CREDIT,
    DEBIT,
    Client,
    account,
    audit_problems,
    leg,
    start_node,
    transfer,
)
from tests.support.paths import REPO_ROOT

REPO = REPO_ROOT
CLI_TIMEOUT_S = 120.0
CUSTOMERS = [f"c{i}/dep" for i in range(6)]
CREATED = pb.RESULT_CODE_CREATED
_copy_numbers = itertools.count(1)


# ---- a ledger with every kind of transaction ----


@dataclass
class Ledger:
    """What the workload wrote, for tests to pick targets from."""

    posted: list[str] = field(default_factory=list)
    open_hold: str = "hold-open"
    expired_hold: str = "hold-exp"
    closed_account: str = "z/temp"


async def build_ledger(dsn: str, seed: int = 1) -> Ledger:
    """A seeded random workload through a real node: transfers, fees, holds posted in full and
    in part, voided and expired, reversals, linked groups, multi-currency, a closed account."""
    node = await start_node(dsn, expiry_interval_ms=50)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
            client = Client(channel)
            ledger = Ledger()
            await _open_accounts(client)
            await _fund(client, ledger)
            rng = random.Random(seed)
            for round_number in range(6):
                await _random_round(client, rng, round_number, ledger)
            await _close_and_expire(client, ledger)
            return ledger
    finally:
        await node.stop()


async def _open_accounts(client: Client) -> None:
    codes = await client.create(
        account("@bank"),
        account("@fees", code=800),
        account("@eur", currency="EUR"),
        *[account(c, no_overdraft=True, metadata={"name": f"Customer {c}"}) for c in CUSTOMERS],
        account("c0/loan", code=200, credit_limit=True),
        account("e0/dep", currency="EUR", no_overdraft=True),
        account("z/temp"),
    )
    assert set(codes) == {pb.RESULT_CODE_CREATED}


async def _fund(client: Client, ledger: Ledger) -> None:
    items = [transfer(f"fund-{c}", "@bank", c, 100_000, value_date="2026-01-02") for c in CUSTOMERS]
    items.append(transfer("fund-e0", "@eur", "e0/dep", 50_000, currency="EUR"))
    items.append(transfer("disb-0", "c0/loan", "c0/dep", 20_000, metadata={"reference": "LN-1"}))
    assert {r.code for r in await client.post(*items)} == {pb.RESULT_CODE_CREATED}
    ledger.posted += [item.id for item in items]


async def _random_round(
    client: Client, rng: random.Random, round_number: int, ledger: Ledger
) -> None:
    items: list[pb.Transaction] = []
    for index in range(20):
        name = f"r{round_number}-{index}"
        debit, credit = rng.sample(CUSTOMERS, 2)
        amount = rng.randint(1, 500)
        roll = rng.random()
        if roll < 0.4:
            items.append(transfer(name, debit, credit, amount, metadata={"reference": f"R-{name}"}))
        elif roll < 0.55:
            items.append(transfer(name, debit, "@fees", amount, metadata={"description": "fee"}))
        elif roll < 0.7:
            items.append(
                transfer(f"h-{name}", debit, credit, amount, pending=True, timeout_seconds=3600)
            )
        elif roll < 0.8:
            items += _linked_pair(name, debit, credit, amount)
        elif roll < 0.9:
            items.append(_multi_currency(name, debit, amount))
        elif ledger.posted:
            items.append(pb.Transaction(id=f"rev-{name}", code=9, reverses_id=ledger.posted.pop(0)))
    results = await client.post(*items)
    ledger.posted += [i.id for i, r in zip(items, results, strict=True) if _reversible(i, r)]
    holds = [i.id for i, r in zip(items, results, strict=True) if i.pending and r.code == CREATED]
    await _resolve_holds(client, holds)


def _reversible(item: pb.Transaction, result: pb.ItemResult) -> bool:
    return result.code == pb.RESULT_CODE_CREATED and not item.pending and not item.reverses_id


def _linked_pair(name: str, debit: str, credit: str, amount: int) -> list[pb.Transaction]:
    # An even index: a pair that succeeds; odd: its second item overdraws, so neither applies.
    second_amount = amount if name.endswith(("0", "2", "4", "6", "8")) else 10**9
    return [
        transfer(f"l1-{name}", debit, credit, amount, linked=True),
        transfer(f"l2-{name}", credit, debit, second_amount),
    ]


def _multi_currency(name: str, debit: str, amount: int) -> pb.Transaction:
    return pb.Transaction(
        id=f"fx-{name}",
        code=7,
        value_date="2026-03-15",
        legs=[
            leg(debit, DEBIT, amount),
            leg("@bank", CREDIT, amount),
            leg("@eur", DEBIT, amount, "EUR"),
            leg("e0/dep", CREDIT, amount, "EUR"),
        ],
    )


async def _resolve_holds(client: Client, holds: list[str]) -> None:
    """Post a third of the holds in full, a third in part, void the rest."""
    items = []
    for index, hold in enumerate(holds):
        record = await client.transaction(hold)
        legs = list(record.applied_legs)
        if index % 3 == 0:
            items.append(pb.Transaction(id=f"post-{hold}", code=3, post_pending_id=hold))
        elif index % 3 == 1:
            part = max(1, legs[0].amount // 2)
            partial = [leg(x.account_id, x.side, part) for x in legs]
            items.append(
                pb.Transaction(id=f"part-{hold}", code=3, post_pending_id=hold, legs=partial)
            )
        else:
            items.append(pb.Transaction(id=f"void-{hold}", code=4, void_pending_id=hold))
    if items:
        codes = {r.code for r in await client.post(*items)}
        assert codes == {pb.RESULT_CODE_CREATED}, codes


async def _close_and_expire(client: Client, ledger: Ledger) -> None:
    steps = [
        [transfer("z-in", "@bank", "z/temp", 100)],
        [transfer("z-out", "z/temp", "@bank", 100)],
        [transfer(ledger.open_hold, "c1/dep", "c2/dep", 70, pending=True, timeout_seconds=3600)],
        [transfer(ledger.expired_hold, "c3/dep", "c4/dep", 30, pending=True, timeout_seconds=1)],
    ]
    for items in steps:
        assert [r.code for r in await client.post(*items)] == [pb.RESULT_CODE_CREATED]
    response = await client.stub.CloseAccounts(
        pb.CloseAccountsRequest(accounts=[pb.CloseAccount(account_id=ledger.closed_account)]),
        timeout=30,
    )
    assert response.results[0].code == pb.RESULT_CODE_CREATED
    async with asyncio.timeout(10):
        # The node's sweep releases the hold on its own; nothing to wait on but its status.
        while (await client.transaction(ledger.expired_hold)).status != (  # noqa: ASYNC110
            pb.TRANSACTION_STATUS_PENDING_EXPIRED
        ):
            await asyncio.sleep(0.05)


# ---- databases and the command line ----


async def clone_database(pg: EmbeddedPostgres, template: str) -> str:
    """A fresh copy of a database (no connection to the template may be open)."""
    name = f"{template}_copy{next(_copy_numbers)}"
    connection = await asyncpg.connect(pg.dsn(), timeout=30)
    try:
        await connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"', timeout=60)
    finally:
        await connection.close(timeout=10)
    return pg.dsn(name)


async def make_template(pg: EmbeddedPostgres, name: str, seed: int = 1) -> tuple[str, Ledger]:
    await pg.create_database_async(name)
    ledger = await build_ledger(pg.dsn(name), seed)
    return name, ledger


async def run_cli(*arguments: str) -> tuple[int, str, str]:
    """`python -m shards.auditing ...` in a child process: (exit code, stdout, stderr)."""
    environment = {k: v for k, v in os.environ.items() if k != "TALLY_AUDIT_DSNS"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shards.audit.commands",
        *arguments,
        cwd=REPO,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=CLI_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def audit_cli(*dsns: str, extra: tuple[str, ...] = ()) -> tuple[int, str]:
    arguments = [a for dsn in dsns for a in ("--dsn", dsn)]
    code, stdout, stderr = await run_cli("audit", *arguments, "--no-progress", *extra)
    assert code != 2, stderr
    return code, stdout


async def audit_json(*dsns: str, extra: tuple[str, ...] = ()) -> tuple[int, dict[str, Any]]:
    code, stdout = await audit_cli(*dsns, extra=("--json", *extra))
    return code, json.loads(stdout)


async def fetch_one(dsn: str, sql: str, *args: object) -> Any:
    connection = await asyncpg.connect(dsn, timeout=30)
    try:
        return await connection.fetchrow(sql, *args, timeout=30)
    finally:
        await connection.close(timeout=10)


async def execute(dsn: str, *statements: str) -> None:
    connection = await asyncpg.connect(dsn, timeout=30)
    try:
        for sql in statements:
            await connection.execute(sql, timeout=30)
    finally:
        await connection.close(timeout=10)


@pytest.fixture(scope="module")
async def template(pg: EmbeddedPostgres) -> AsyncIterator[tuple[str, Ledger]]:
    yield await make_template(pg, f"audit_base_{os.getpid()}")


@pytest.fixture
async def books(pg: EmbeddedPostgres, template: tuple[str, Ledger]) -> str:
    """The DSN of a fresh copy of the module's ledger."""
    return await clone_database(pg, template[0])


# ---- clean books ----


async def test_random_workload_audits_clean(books: str, tmp_path: Path) -> None:
    markdown, page = tmp_path / "audit.md", tmp_path / "audit.html"
    code, stdout = await audit_cli(books, extra=("--report", str(markdown)))
    assert code == 0, stdout
    assert "the books are whole" in stdout
    assert "| ok" in markdown.read_text() or "ok" in markdown.read_text()
    code, report = await audit_json(books)
    assert code == 0 and report["ok"] and report["problems"] == []
    shard = report["shards"][0]
    assert shard["postings"] > 200 and shard["blocks"] > 10 and shard["holds"] == 1
    assert set(shard["trial_balance"]) == {"EUR", "USD"}
    usd = shard["trial_balance"]["USD"]
    assert usd["debits_posted"] == usd["credits_posted"] > 0
    assert usd["debits_pending"] == usd["credits_pending"] == 70  # the open hold
    code, _ = await audit_cli(books, extra=("--report", str(page)))
    assert code == 0 and "<table>" in page.read_text()
    assert await audit_problems(books) == []


async def test_progress_bar_goes_to_stderr(books: str) -> None:
    code, stdout, stderr = await run_cli("audit", "--dsn", books, "--progress")
    assert code == 0
    assert "audit [" in stderr and "100.0%" in stderr
    assert "audit [" not in stdout


# ---- altered behind Tally's back ----


async def _a_posting(dsn: str, transaction_id: str, is_debit: bool) -> Any:
    return await fetch_one(
        dsn,
        "SELECT * FROM postings WHERE transaction_id = $1 AND is_debit = $2",
        transaction_id,
        is_debit,
    )


async def test_changed_posting_amount_is_named(books: str) -> None:
    posting = await _a_posting(books, "fund-c1/dep", False)
    sequence, old = posting["sequence"], posting["posted_amount"]
    await execute(
        books, f"UPDATE postings SET posted_amount = {old + 7} WHERE sequence = {sequence}"
    )
    code, stdout = await audit_cli(books)
    assert code == 1
    subject = f"shard 0: posting {sequence} (transaction fund-c1/dep, account c1/dep)"
    assert (
        f"{subject}: posted_amount {old + 7}, expected {old} (from transaction fund-c1/dep)"
        in stdout
    )
    assert f"{subject}: balance-after credits_posted {old}, expected {old + 7}" in stdout
    assert "shard 0: account c1/dep: credits_posted" in stdout
    block = posting["block_sequence"]
    assert f"shard 0: block {block}: hash " in stdout and "its rows were changed" in stdout


async def test_changed_balance_counter_is_named(books: str) -> None:
    row = await fetch_one(books, "SELECT credits_posted FROM accounts WHERE id = 'c2/dep'")
    old = row["credits_posted"]
    await execute(books, f"UPDATE accounts SET credits_posted = {old - 100} WHERE id = 'c2/dep'")
    code, report = await audit_json(books)
    assert code == 1
    texts = [p["text"] for p in report["problems"]]
    counters = [p for p in report["problems"] if p["check"] == "counters"]
    assert len(counters) == 1
    assert counters[0]["text"].startswith(
        f"shard 0: account c2/dep: credits_posted {old - 100}, but its "
    )
    assert counters[0]["expected"] == str(old) and counters[0]["found"] == str(old - 100)
    assert counters[0]["kind"] == "counter_mismatch"
    assert (counters[0]["account_id"], counters[0]["currency"]) == ("c2/dep", "USD")
    assert any(t.startswith("shard 0: USD: posted debits") for t in texts)
    # Counters are not hashed: the journal itself is intact, and the audit says so.
    assert report["shards"][0]["checks"]["journal"] == 0


async def test_changed_block_hash_is_named(books: str) -> None:
    row = await fetch_one(
        books, "SELECT sequence, encode(hash, 'hex') AS hash FROM journal_blocks WHERE sequence = 5"
    )
    forged = "ab" * 32
    await execute(books, f"UPDATE journal_blocks SET hash = '\\x{forged}' WHERE sequence = 5")
    code, report = await audit_json(books)
    assert code == 1
    texts = [p["text"] for p in report["problems"]]
    assert texts == [
        f"shard 0: block 5: hash {forged} was altered: its rows give {row['hash']}, which "
        "block 6's previous_hash also records"
    ]


async def test_deleted_posting_is_named(books: str) -> None:
    posting = await _a_posting(books, "fund-c3/dep", False)
    sequence, block = posting["sequence"], posting["block_sequence"]
    await execute(books, f"DELETE FROM postings WHERE sequence = {sequence}")
    code, stdout = await audit_cli(books)
    assert code == 1
    assert f"shard 0: block {block}: posting {sequence} missing (sequence gap)" in stdout
    assert (
        f"shard 0: transaction fund-c3/dep (block {block}): no posting for its credit of c3/dep"
        in stdout
    )
    assert "shard 0: account c3/dep: credits_posted" in stdout


async def test_forged_posting_after_the_last_block_is_named(books: str) -> None:
    last = await fetch_one(books, "SELECT max(sequence) AS s FROM postings")
    tail = await fetch_one(books, "SELECT max(sequence) AS b FROM journal_blocks")
    before = await fetch_one(
        books,
        "SELECT * FROM postings WHERE account_id = 'c5/dep' ORDER BY sequence DESC LIMIT 1",
    )
    sequence = last["s"] + 1
    await execute(
        books,
        f"""INSERT INTO postings VALUES ({sequence}, 'fund-c5/dep', 'c5/dep', false, 5000, 0,
        {before["timestamp_ns"] + 1}, {before["debits_posted_after"]},
        {before["credits_posted_after"] + 5000}, {before["debits_pending_after"]},
        {before["credits_pending_after"]}, {tail["b"]})""",
        "UPDATE accounts SET credits_posted = credits_posted + 5000 WHERE id = 'c5/dep'",
    )
    code, stdout = await audit_cli(books)
    assert code == 1
    assert (
        f"shard 0: posting {sequence} (transaction fund-c5/dep, account c5/dep): beyond the "
        f"journal (it claims block {tail['b']}, but the last block, {tail['b']}, ends before "
        f"posting {sequence})"
    ) in stdout


async def test_forged_transaction_inside_a_block_is_named(books: str) -> None:
    """A careful forger: a balanced transaction, its two postings with consistent balances,
    the account counters and the block header's counts all updated. The rows no longer hash
    to the block's hash, and the postings are outside the block's sequence range."""
    block = await fetch_one(books, "SELECT * FROM journal_blocks WHERE sequence = 8")
    top = (await fetch_one(books, "SELECT max(sequence) AS s FROM postings"))["s"]
    timestamp = block["last_timestamp_ns"] - 1
    statements = [
        f"""INSERT INTO transactions VALUES ('forged-1', 0, 1, '{{}}', '', 0, '',
        'D @bank 9999 USD,C c4/dep 9999 USD', 'D @bank 9999 USD,C c4/dep 9999 USD',
        {timestamp}, 1, 0, '', '', 8)""",
        "UPDATE journal_blocks SET transaction_count = transaction_count + 1, "
        "posting_count = posting_count + 2 WHERE sequence = 8",
    ]
    for offset, (account_id, is_debit) in enumerate((("@bank", True), ("c4/dep", False))):
        last = await fetch_one(
            books,
            "SELECT * FROM postings WHERE account_id = $1 ORDER BY sequence DESC LIMIT 1",
            account_id,
        )
        dp = last["debits_posted_after"] + (9999 if is_debit else 0)
        cp = last["credits_posted_after"] + (0 if is_debit else 9999)
        statements.append(
            f"""INSERT INTO postings VALUES ({top + 1 + offset}, 'forged-1', '{account_id}',
            {is_debit}, 9999, 0, {timestamp}, {dp}, {cp}, {last["debits_pending_after"]},
            {last["credits_pending_after"]}, 8)"""
        )
        column = "debits_posted" if is_debit else "credits_posted"
        statements.append(
            f"UPDATE accounts SET {column} = {column} + 9999 WHERE id = '{account_id}'"
        )
    await execute(books, *statements)
    last = (await fetch_one(books, "SELECT max(sequence) AS b FROM journal_blocks"))["b"]
    code, stdout = await audit_cli(books)
    assert code == 1
    for offset, account_id in enumerate(("@bank", "c4/dep")):
        assert (
            f"shard 0: posting {top + 1 + offset} (transaction forged-1, account {account_id}): "
            f"beyond the journal (it claims block 8, but the last block, {last}, ends before "
            f"posting {top + 1})"
        ) in stdout
    assert "shard 0: block 8: posting_count 6 in its header, but 4 rows found" in stdout
    assert "shard 0: block 8: hash " in stdout and "does not match its rows" in stdout
    assert "shard 0: transaction forged-1 (block 8): no posting for its debit of @bank" in stdout


async def test_rewritten_head_block_is_caught_by_an_anchor(books: str) -> None:
    """With write access one can rewrite the last block and recompute its hash: the database
    alone cannot tell. A hash recorded elsewhere (an export's head, a published digest) can."""
    head = await fetch_one(
        books,
        "SELECT sequence, encode(hash, 'hex') AS hash FROM journal_blocks "
        "ORDER BY sequence DESC LIMIT 1",
    )
    anchor = f"0:{head['sequence']}:{head['hash']}"
    code, _ = await audit_cli(books, extra=("--anchor", anchor))
    assert code == 0
    await execute(
        books,
        f"UPDATE journal_blocks SET hash = '\\x{'cd' * 32}' WHERE sequence = {head['sequence']}",
    )
    code, stdout = await audit_cli(books, extra=("--anchor", anchor))
    assert code == 1
    assert (
        f"shard 0: block {head['sequence']}: hash {'cd' * 32}, but the anchor records "
        f"{head['hash']}"
    ) in stdout


async def test_altered_transaction_row_is_named(books: str) -> None:
    row = await fetch_one(books, "SELECT block_sequence FROM transactions WHERE id = 'disb-0'")
    await execute(
        books, """UPDATE transactions SET metadata = '{"reference":"LN-2"}' WHERE id = 'disb-0'"""
    )
    code, stdout = await audit_cli(books)
    assert code == 1
    assert f"shard 0: block {row['block_sequence']}: hash " in stdout
    assert "its rows were changed after it was written" in stdout


async def test_deleted_last_block_is_named(books: str) -> None:
    head = await fetch_one(books, "SELECT max(sequence) AS b FROM journal_blocks")
    last = head["b"]
    await execute(books, f"DELETE FROM journal_blocks WHERE sequence = {last}")
    code, stdout = await audit_cli(books)
    assert code == 1
    assert (
        f"shard 0: block {last}: the journal ends at block {last - 1}, but the writer lease "
        f"records block {last} as the last committed"
    ) in stdout


async def test_overdue_hold_is_named(books: str) -> None:
    past_ns = 1_700_000_000 * 10**9
    await execute(
        books,
        f"UPDATE holds SET expires_at_ns = {past_ns} WHERE transaction_id = 'hold-open'",
        f"UPDATE transactions SET expires_at_ns = {past_ns} WHERE id = 'hold-open'",
    )
    code, stdout = await audit_cli(books)
    assert code == 1
    assert "shard 0: hold hold-open: still open" in stdout and "after its deadline" in stdout


async def test_problems_of_several_shards_are_named_by_shard(
    pg: EmbeddedPostgres, template: tuple[str, Ledger]
) -> None:
    shard_0, shard_1 = [await clone_database(pg, template[0]) for _ in range(2)]
    await execute(
        shard_1, "UPDATE accounts SET debits_posted = debits_posted + 1 WHERE id = '@fees'"
    )
    code, report = await audit_json(shard_0, shard_1)
    assert code == 1
    assert [s["ok"] for s in report["shards"]] == [True, False]
    assert all(p["text"].startswith(("shard 1: ", "cluster: ")) for p in report["problems"])
    assert any(p["text"].startswith("cluster: USD: posted debits") for p in report["problems"])
    cluster = report["trial_balance"]["USD"]
    shards = [s["trial_balance"]["USD"] for s in report["shards"]]
    assert cluster["debits_posted"] == sum(s["debits_posted"] for s in shards)
    assert cluster["debits_posted"] == cluster["credits_posted"] + 1


async def test_audit_limited_to_shards_and_currencies(
    pg: EmbeddedPostgres, template: tuple[str, Ledger]
) -> None:
    shard_0, shard_1 = [await clone_database(pg, template[0]) for _ in range(2)]
    await execute(
        shard_1, "UPDATE accounts SET debits_posted = debits_posted + 1 WHERE id = '@fees'"
    )
    code, report = await audit_json(shard_0, shard_1)
    assert code == 1 and report["cross_shard"]["checked"]
    # Shard 0 alone is whole; the cross-shard check needs every shard, and says so.
    code, stdout = await audit_cli(shard_0, shard_1, extra=("--shard", "0"))
    assert code == 0, stdout
    assert "cross-shard transactions: not checked (not every shard" in stdout
    # In euros, the altered USD counter is left out.
    code, report = await audit_json(shard_0, shard_1, extra=("--currency", "EUR"))
    assert code == 0 and set(report["trial_balance"]) == {"EUR"}
    code, stdout, stderr = await run_cli(
        "audit", "--dsn", shard_0, "--shard", "1", "--currency", "usd", "--no-progress"
    )
    assert code == 2 and "--currency 'usd'" in stderr


async def test_unreachable_shard_is_a_usage_error(books: str) -> None:
    code, _, stderr = await run_cli("audit", "--dsn", books + "_nope", "--no-progress")
    assert code == 2
    assert "cannot connect" in stderr or "_nope" in stderr


async def test_check_all_keeps_its_contract(books: str) -> None:
    connection = await asyncpg.connect(books, timeout=30)
    try:
        assert await audit.check_all(connection) == []
    finally:
        await connection.close(timeout=10)
    await execute(books, "UPDATE postings SET posted_amount = posted_amount + 1 WHERE sequence = 3")
    problems = await audit_problems(books)
    assert problems and all(isinstance(p, str) for p in problems)
    assert any("posting 3 (" in p for p in problems)
