"""Journal export and `tally verify-export`: an export verifies from its files alone (even with
nothing but the Python standard library), and one byte changed anywhere fails at its file and
line."""

from __future__ import annotations

import asyncio
import csv
import os
import random
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core import journal
from core.audit import export
from core.model import Posting
from shards.local.embedded_pg import EmbeddedPostgres
from tests.support.audit_commands import CLI_TIMEOUT_S, run_cli
from tests.support.seeded_ledger import clone_database, make_template
from tests.support.sql import execute, fetch_one

REPLACEMENT_BYTES = b'0123456789abcdefXYZ,"|\n {}:-'


@pytest.fixture(scope="module")
async def template(pg: EmbeddedPostgres) -> AsyncIterator[str]:
    name, _ = await make_template(pg, f"export_base_{os.getpid()}", seed=2)
    yield name


@pytest.fixture
async def books(pg: EmbeddedPostgres, template: str) -> str:
    return await clone_database(pg, template)


async def export_cli(dsn: str, out: Path, *extra: str) -> Path:
    code, stdout, stderr = await run_cli("export", "--dsn", dsn, "--out", str(out), *extra)
    assert code == 0, stderr
    assert "verify with: tally verify-export" in stdout
    return out / "shard-0"


@pytest.mark.parametrize("export_format", ["csv", "jsonl"])
async def test_export_verifies_from_its_files_alone(
    books: str, tmp_path: Path, export_format: str
) -> None:
    directory = await export_cli(books, tmp_path / "x", "--format", export_format)
    names = sorted(path.name for path in directory.iterdir())
    assert names == sorted(f"{name}.{export_format}" for name in export.SCHEMAS)
    code, stdout, _ = await run_cli("verify-export", str(tmp_path / "x"))
    assert code == 0 and stdout.endswith("export verifies\n"), stdout
    # The verifier is one stdlib-only file: copied alone, run without site-packages.
    standalone = tmp_path / "auditor" / "export.py"
    standalone.parent.mkdir()
    shutil.copy(export.__file__, standalone)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-S",
        str(standalone),
        str(directory),
        cwd=standalone.parent,
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=CLI_TIMEOUT_S)
    assert process.returncode == 0, output.decode()
    assert b"USD: posted debits" in output and b"EUR: posted debits" in output


@pytest.mark.parametrize("export_format", ["csv", "jsonl"])
async def test_one_changed_byte_fails_at_its_file_and_line(
    books: str, tmp_path: Path, export_format: str
) -> None:
    directory = await export_cli(books, tmp_path / "x", "--format", export_format)
    assert export.verify_export(directory).ok
    rng = random.Random(11)
    checked = 0
    for path in sorted(directory.iterdir()):
        original = path.read_bytes()
        positions = {0, len(original) - 1, *rng.sample(range(len(original)), 40)}
        for position in sorted(positions):
            changed = bytearray(original)
            changed[position] = rng.choice(
                [b for b in REPLACEMENT_BYTES if b != original[position]]
            )
            path.write_bytes(bytes(changed))
            verification = export.verify_export(directory)
            line = original[:position].count(b"\n") + 1
            where = [(error.file, error.line) for error in verification.errors]
            assert not verification.ok, (path.name, position)
            assert (path.name, line) in where, (path.name, position, line, verification.errors)
            checked += 1
        path.write_bytes(original)
    assert checked > 250
    assert export.verify_export(directory).ok


async def test_changed_amount_names_the_posting_line(books: str, tmp_path: Path) -> None:
    directory = await export_cli(books, tmp_path / "x")
    postings = directory / "postings.csv"
    lines = postings.read_text().splitlines(keepends=True)
    cells = lines[10].split(",")
    cells[5] = str(int(cells[5]) + 1)  # posted_amount
    lines[10] = ",".join(cells)
    postings.write_text("".join(lines))
    code, stdout, _ = await run_cli("verify-export", str(tmp_path / "x"))
    assert code == 1
    assert "postings.csv line 11: line_digest " in stdout
    assert "does not match its rows" in stdout and "export does NOT verify" in stdout


async def test_periods_chain_one_export_to_the_next(books: str, tmp_path: Path) -> None:
    first = await export_cli(books, tmp_path / "a", "--first-block", "1", "--last-block", "8")
    second = await export_cli(books, tmp_path / "b", "--first-block", "9")
    one, two = export.verify_export(first), export.verify_export(second)
    assert one.ok and two.ok, (one.errors, two.errors)
    assert (one.shards[0].first_block, one.shards[0].last_block) == (1, 8)
    assert two.shards[0].first_block == 9
    assert _manifest(second)["anchor_hash"] == one.shards[0].head_hash
    closing = {row[0]: row[6:10] for row in _rows(first / "balances.csv")}
    opening = {row[0]: row[2:6] for row in _rows(second / "balances.csv")}
    assert opening and all(closing[a] == opening[a] for a in opening if a in closing)


async def test_period_by_time_selects_blocks_by_their_timestamp(books: str, tmp_path: Path) -> None:
    start = await fetch_one(books, "SELECT created_at_ns FROM journal_blocks WHERE sequence = 5")
    end = await fetch_one(books, "SELECT created_at_ns FROM journal_blocks WHERE sequence = 12")
    directory = await export_cli(
        books, tmp_path / "x", "--from", str(start[0]), "--to", str(end[0])
    )
    verification = export.verify_export(directory)
    assert verification.ok, verification.errors
    assert (verification.shards[0].first_block, verification.shards[0].last_block) == (5, 11)


async def test_export_of_altered_books_does_not_verify(books: str, tmp_path: Path) -> None:
    row = await fetch_one(books, "SELECT sequence, block_sequence FROM postings WHERE sequence = 7")
    await execute(books, "UPDATE postings SET posted_amount = posted_amount + 1 WHERE sequence = 7")
    directory = await export_cli(books, tmp_path / "x")
    verification = export.verify_export(directory)
    texts = [str(error) for error in verification.errors]
    assert not verification.ok
    assert any(f"block {row['block_sequence']}: hash" in text for text in texts), texts
    assert any(text.startswith("postings.csv line ") and "posting 7 " in text for text in texts)


def test_export_lines_are_core_journal_lines() -> None:
    posting = Posting(57, "t-9", "cust-1/dep", True, 500, -20, 1_700_000_000_123, 900, 5, 0, 20)
    columns = [57, "t-9", "cust-1/dep", "D", 500, -20, 1_700_000_000_123, 900, 5, 0, 20]
    assert export.journal_line("P", columns) == journal.posting_line(posting)
    assert export.journal_line("X", ["a/b", 12]) == journal.closure_line("a/b", 12)
    lines = [journal.posting_line(posting), journal.closure_line("a/b", 12)]
    previous = bytes(range(32))
    assert export.block_hash(previous, 3, lines) == journal.block_hash(previous, 3, lines)


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))[1:]


def _manifest(directory: Path) -> dict[str, str]:
    return {row[0]: row[1] for row in _rows(directory / "manifest.csv")}


async def test_a_recomputed_line_digest_does_not_hide_a_change(books: str, tmp_path: Path) -> None:
    """The digest only locates a change; whoever recomputes it still breaks the block hash."""
    directory = await export_cli(books, tmp_path / "x")
    transactions = directory / "transactions.csv"
    header, *rows = transactions.read_text().splitlines()
    values = _rows_of(rows[3])[:-1]
    values[4] = '{"reference":"forged"}'  # the metadata column
    rows[3] = export.encode_line(export.SCHEMAS["transactions"], values, "csv").rstrip("\n")
    transactions.write_text("\n".join([header, *rows]) + "\n")
    verification = export.verify_export(directory)
    texts = [str(error) for error in verification.errors]
    block = int(values[0])
    assert len(texts) == 1, texts
    assert texts[0].startswith(f"blocks.csv line {block + 1}: block {block}: hash ")


def _rows_of(line: str) -> list[str]:
    return next(csv.reader([line]))
