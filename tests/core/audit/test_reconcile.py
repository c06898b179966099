"""`tally reconcile`: an external statement against an account's postings. On a statement
generated from the ledger, with lines dropped, added and changed, exactly those are reported."""

from __future__ import annotations

import csv
import datetime
import io
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from core.audit import reconcile
from core.money import parse_minor_units
from tally.v1 import ledger_pb2 as pb
from tests.support.audit_commands import run_cli
from tests.support.helpers import Client, NodeHandle, account, transfer

CREATED = pb.RESULT_CODE_CREATED
ACCOUNT = "cust-9/dep"
COLUMNS = ["type", "value_date", "amount", "reference", "description", "balance"]


async def write_history(client: Client) -> tuple[int, int]:
    """24 transactions on ACCOUNT in the period, value dated 2026-03-01 .. 2026-03-24."""
    assert set(await client.create(account("@bank"), account(ACCOUNT, no_overdraft=True))) == {
        CREATED
    }
    await client.post(transfer("open", "@bank", ACCOUNT, 1_000_000))
    items = []
    for i in range(24):
        value_date = f"2026-03-{i + 1:02d}"
        metadata = {"reference": f"BANKREF-{i}"} if i % 4 == 0 else {}
        if i % 3 == 0:
            item = transfer(f"tx-{i}", ACCOUNT, "@bank", (i + 1) * 100 + 7, value_date=value_date)
        else:
            item = transfer(f"tx-{i}", "@bank", ACCOUNT, (i + 1) * 150, value_date=value_date)
        item.metadata.update(metadata)
        items.append(item)
    results = await client.post(*items)
    assert {r.code for r in results} == {CREATED}
    after = await client.post(transfer("after", "@bank", ACCOUNT, 5))
    return results[0].timestamp_ns, after[0].timestamp_ns


async def statement_rows(dsn: str, period: tuple[int, int], path: Path) -> list[dict[str, str]]:
    code, _, stderr = await run_cli(
        "statement",
        ACCOUNT,
        "--dsn",
        dsn,
        "--from",
        str(period[0]),
        "--to",
        str(period[1]),
        "--csv",
        str(path),
    )
    assert code == 0, stderr
    return list(csv.DictReader(io.StringIO(path.read_text())))  # noqa: ASYNC240 (small file)


def bank_statement(rows: list[dict[str, str]]) -> tuple[str, dict[str, int]]:
    """The bank's side: the ledger's lines with two dropped, two added, one amount and one
    date changed, references removed from three (one shifted beyond the window), and one
    given by the metadata reference. Returns the CSV and the line numbers by name."""
    by_reference = {row["reference"]: dict(row) for row in rows if row["type"] == "line"}
    named: list[tuple[str, dict[str, str]]] = []
    for i in range(24):
        row = by_reference[f"tx-{i}"]
        if i in (3, 10):
            continue  # missing from the statement
        if i == 5:
            row["amount"] = _add(row["amount"], "1.00")
        if i == 7:
            row["value_date"] = _shift(row["value_date"], 5)
        if i == 8:
            row["reference"] = "BANKREF-8"
        if i in (12, 13, 20):
            row["reference"] = ""
            row["value_date"] = _shift(row["value_date"], {12: 1, 13: -2, 20: 10}[i])
        named.append((f"tx-{i}", row))
        if i == 15:
            named.append(("EXT-1", _line("2026-03-15", "42.00", "EXT-1", "Cash deposit")))
            named.append(("card-fee", _line("2026-03-16", "-9.99", "", "Card fee")))
    opening = running = rows[0]["balance"]
    for _, row in named:
        running = _add(running, row["amount"])
        row["balance"] = running
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerow({"type": "opening", "balance": opening})
    writer.writerows(row for _, row in named)
    writer.writerow({"type": "closing", "balance": running})
    # Line 1 is the header, line 2 the opening row.
    numbers = {name: number for number, (name, _) in enumerate(named, start=3)}
    return buffer.getvalue(), numbers


def _line(value_date: str, amount: str, reference: str, description: str) -> dict[str, str]:
    return {
        "type": "line",
        "value_date": value_date,
        "amount": amount,
        "reference": reference,
        "description": description,
    }


def _add(left: str, right: str) -> str:
    from decimal import Decimal

    return f"{Decimal(left) + Decimal(right):.2f}"


def _shift(day: str, days: int) -> str:
    return (datetime.date.fromisoformat(day) + datetime.timedelta(days=days)).isoformat()


async def reconcile_json(dsn: str, period: tuple[int, int], path: Path) -> tuple[int, Any]:
    code, stdout, stderr = await run_cli(
        "reconcile",
        ACCOUNT,
        str(path),
        "--dsn",
        dsn,
        "--from",
        str(period[0]),
        "--to",
        str(period[1]),
        "--json",
    )
    assert code in (0, 1), stderr
    return code, json.loads(stdout)


async def test_generated_statement_reports_exactly_what_was_changed(
    channel: grpc.aio.Channel, node: NodeHandle, tmp_path: Path
) -> None:
    period = await write_history(Client(channel))
    rows = await statement_rows(node.dsn, period, tmp_path / "ours.csv")
    text, numbers = bank_statement(rows)
    (tmp_path / "bank.csv").write_text(text)
    code, result = await reconcile_json(node.dsn, period, tmp_path / "bank.csv")
    assert code == 1 and not result["ok"]
    differences = {d["ledger"]["transaction_id"]: d for d in result["differences"]}
    assert set(differences) == {"tx-5", "tx-7"}
    assert differences["tx-5"]["amount_difference"] == 100
    assert differences["tx-5"]["statement"]["line"] == numbers["tx-5"]
    assert differences["tx-7"]["date_difference_days"] == 5
    missing_ledger = {line["line"] for line in result["missing_from_ledger"]}
    assert missing_ledger == {numbers["EXT-1"], numbers["card-fee"], numbers["tx-20"]}
    missing_statement = {line["transaction_id"] for line in result["missing_from_statement"]}
    assert missing_statement == {"tx-3", "tx-10", "tx-20"}
    matched = {m["ledger"]["transaction_id"]: m["by"] for m in result["matched"]}
    assert len(matched) == 24 - 2 - 2 - 1
    assert matched["tx-12"] == matched["tx-13"] == "amount"
    assert matched["tx-8"] == matched["tx-0"] == "reference"
    checks = {c["name"]: c["ok"] for c in result["balance_checks"]}
    assert checks == {
        "opening balance": True,
        "closing balance": False,
        "statement arithmetic": True,
    }
    totals = result["totals"]
    assert totals["counts"] == {
        "matched": 19,
        "differences": 2,
        "missing_from_ledger": 3,
        "missing_from_statement": 3,
    }
    assert totals["difference"] == totals["statement"] - totals["ledger"]
    assert result["running_balance_breaks"] == []


async def test_terminal_report_names_the_lines(
    channel: grpc.aio.Channel, node: NodeHandle, tmp_path: Path
) -> None:
    period = await write_history(Client(channel))
    rows = await statement_rows(node.dsn, period, tmp_path / "ours.csv")
    text, numbers = bank_statement(rows)
    (tmp_path / "bank.csv").write_text(text)
    code, stdout, _ = await run_cli(
        "reconcile",
        ACCOUNT,
        str(tmp_path / "bank.csv"),
        "--dsn",
        node.dsn,
        "--from",
        str(period[0]),
        "--to",
        str(period[1]),
    )
    assert code == 1
    assert f"statement line {numbers['tx-5']} / posting " in stdout
    assert "(difference +1.00)" in stdout
    assert f"statement line {numbers['EXT-1']}: 2026-03-15 +42.00 reference EXT-1" in stdout
    assert "transaction tx-3 " in stdout and "NOT reconciled" in stdout
    assert "closing balance" in stdout and "DIFFERS by" in stdout


async def test_the_ledgers_own_statement_reconciles(
    channel: grpc.aio.Channel, node: NodeHandle, tmp_path: Path
) -> None:
    period = await write_history(Client(channel))
    await statement_rows(node.dsn, period, tmp_path / "ours.csv")
    code, result = await reconcile_json(node.dsn, period, tmp_path / "ours.csv")
    assert code == 0 and result["ok"], result
    assert len(result["matched"]) == 24
    assert all(check["ok"] for check in result["balance_checks"])


async def test_statement_format_errors_name_the_line(node: NodeHandle, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "value_date,amount,reference,description\n2026-03-01,1.00,a,b\n2026-03-02,1,5,x,y\n"
    )
    code, _, stderr = await run_cli(
        "reconcile",
        "nobody/dep",
        str(bad),
        "--dsn",
        node.dsn,
        "--from",
        "2026-01-01",
        "--to",
        "2026-02-01",
    )
    assert code == 2 and "not found" in stderr  # the account is looked up first
    with pytest.raises(reconcile.StatementFormatError, match=r"bad\.csv line 3: amount '1,5'"):
        reconcile.parse_statement_csv(
            'value_date,amount,reference,description\n2026-03-01,1.00,a,b\n2026-03-02,"1,5",x,y\n',
            "bad.csv",
            "USD",
        )
    with pytest.raises(reconcile.StatementFormatError, match="line 1: no column amount"):
        reconcile.parse_statement_csv("value_date,reference,description\n", "x.csv", "USD")
    with pytest.raises(reconcile.StatementFormatError, match=r"line 2: amount 1\.001 has more"):
        reconcile.parse_statement_csv(
            "value_date,amount,reference,description\n2026-03-01,1.001,a,b\n", "x.csv", "USD"
        )
    assert parse_minor_units("-1500.5", "USD") == -150050
    assert parse_minor_units("7", "JPY") == 7
