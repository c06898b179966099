"""`tally audit`: an unaltered ledger audits clean; PostgreSQL altered behind Tally's back (a
posting's amount, a balance counter, a block hash, a deleted posting, a forged one, ...) makes
the audit exit non-zero and name exactly the altered thing.

A ledger is written once per module through a real node (a seeded random workload with every
kind of transaction); each test audits its own copy (CREATE DATABASE ... TEMPLATE).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from core import audit
from core.slots import transaction_slot
from shards.local.embedded_pg import EmbeddedPostgres
from tests.support.audit_commands import audit_cli, audit_json, run_cli
from tests.support.helpers import audit_problems
from tests.support.seeded_ledger import Ledger, clone_database, make_template
from tests.support.sql import execute, fetch_one


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
        {timestamp}, 1, 0, '', '', 8, {transaction_slot("forged-1")})""",
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
