"""`tally statement`: an account's opening balance, postings and closing balance for a period,
as CSV and as a printable HTML page, read straight from the shard databases."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import grpc

from shards.local.embedded_pg import EmbeddedPostgres
from tally.v1 import ledger_pb2 as pb
from tests.support import security
from tests.support.audit_commands import run_cli
from tests.support.helpers import Client, NodeHandle, account, leg, start_node, transfer

CREATED = pb.RESULT_CODE_CREATED


async def _post(client: Client, *items: pb.Transaction) -> int:
    """Post; returns the timestamp of the first item."""
    results = await client.post(*items)
    assert [r.code for r in results] == [CREATED] * len(items), results
    return results[0].timestamp_ns


async def write_history(client: Client) -> tuple[int, int]:
    """A deposit account's history; returns the period (from_ns, to_ns) around its middle."""
    assert set(
        await client.create(
            account("@bank"),
            account("@fees", code=800),
            account("cust-1/dep", no_overdraft=True, metadata={"name": "Amina <Farm & Co>"}),
        )
    ) == {CREATED}
    await _post(client, transfer("open-1", "@bank", "cust-1/dep", 100_000))
    from_ns = await _post(
        client,
        transfer(
            "inv-1",
            "@bank",
            "cust-1/dep",
            50_000,
            value_date="2026-03-01",
            metadata={"reference": "INV-1", "description": "Invoice 1"},
        ),
    )
    await _post(client, transfer("fee-1", "cust-1/dep", "@fees", 12_000))
    await _post(client, transfer("hold-1", "cust-1/dep", "@fees", 5_000, pending=True))
    await _post(
        client,
        pb.Transaction(
            id="cap-1",
            code=3,
            post_pending_id="hold-1",
            legs=[leg("cust-1/dep", pb.SIDE_DEBIT, 3_000), leg("@fees", pb.SIDE_CREDIT, 3_000)],
        ),
    )
    await _post(client, pb.Transaction(id="fee-1-rev", code=9, reverses_id="fee-1"))
    to_ns = await _post(client, transfer("late-1", "@bank", "cust-1/dep", 777))
    return from_ns, to_ns


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


async def test_statement_csv_and_html(
    channel: grpc.aio.Channel, node: NodeHandle, tmp_path: Path
) -> None:
    from_ns, to_ns = await write_history(Client(channel))
    csv_path, html_path = tmp_path / "s.csv", tmp_path / "s.html"
    code, stdout, stderr = await run_cli(
        "statement",
        "cust-1/dep",
        "--dsn",
        node.dsn,
        "--from",
        str(from_ns),
        "--to",
        str(to_ns),
        "--csv",
        str(csv_path),
        "--html",
        str(html_path),
    )
    assert code == 0, stderr
    rows = _csv_rows(csv_path.read_text())
    assert [row["type"] for row in rows] == ["opening"] + ["line"] * 4 + ["closing"]
    lines = rows[1:-1]
    # The hold and the release of its unposted part move no posted money: not lines.
    assert [(r["reference"], r["amount"], r["balance"]) for r in lines] == [
        ("inv-1", "500.00", "1500.00"),
        ("fee-1", "-120.00", "1380.00"),
        ("cap-1", "-30.00", "1350.00"),
        ("fee-1-rev", "120.00", "1470.00"),
    ]
    assert rows[0]["balance"] == "1000.00" and rows[-1]["balance"] == "1470.00"
    assert lines[0]["value_date"] == "2026-03-01" and lines[0]["description"] == "Invoice 1"
    assert lines[2]["description"] == "capture of hold hold-1"
    assert lines[3]["description"] == "reversal of fee-1"
    assert (lines[1]["debit"], lines[1]["credit"]) == ("120.00", "")
    page = html_path.read_text()
    assert "Account statement" in page and "@media print" in page
    assert "Amina &lt;Farm &amp; Co&gt;" in page and "<script" not in page
    assert page.count("<tr class='line'>") == 4 and "1,470.00" in page
    assert "closing balance" in stdout and "1,470.00" in stdout


async def test_a_loan_balance_grows_with_debits(
    channel: grpc.aio.Channel, node: NodeHandle
) -> None:
    client = Client(channel)
    assert set(await client.create(account("c/loan", credit_limit=True), account("c/dep"))) == {
        CREATED
    }
    await _post(client, transfer("disb", "c/loan", "c/dep", 90_000))
    await _post(client, transfer("repay", "c/dep", "c/loan", 10_000))
    code, stdout, _ = await run_cli(
        "statement", "c/loan", "--dsn", node.dsn, "--from", "2000-01-01", "--to", "2100-01-01"
    )
    assert code == 0
    assert "800.00" in stdout.splitlines()[-1]  # 900.00 lent, 100.00 repaid


async def test_spread_account_statement_merges_its_shards(pg: EmbeddedPostgres) -> None:
    dsns = []
    for shard in range(2):
        name = f"statement_shard_{shard}_{id(pg)}"
        await pg.create_database_async(name)
        dsns.append(pg.dsn(name))
        handle = await start_node(pg.dsn(name))
        try:
            async with security.channel(f"127.0.0.1:{handle.port}") as channel:
                client = Client(channel)
                await client.create(account("@cash"), account(f"s{shard}/dep"))
                await _post(
                    client, transfer(f"cash-{shard}", f"s{shard}/dep", "@cash", 1000 + shard)
                )
        finally:
            await handle.stop()
    code, stdout, stderr = await run_cli(
        "statement",
        "@cash",
        "--dsn",
        dsns[0],
        "--dsn",
        dsns[1],
        "--from",
        "2000-01-01",
        "--to",
        "2100-01-01",
    )
    assert code == 0, stderr
    assert "cash-0" in stdout and "cash-1" in stdout
    assert stdout.splitlines()[-1].endswith("20.01")  # both pieces: 10.00 + 10.01


async def test_unknown_account_and_empty_period_are_usage_errors(node: NodeHandle) -> None:
    code, _, stderr = await run_cli(
        "statement", "nobody/dep", "--dsn", node.dsn, "--from", "2026-01-01", "--to", "2026-02-01"
    )
    assert code == 2 and "not found" in stderr
    code, _, stderr = await run_cli(
        "statement", "nobody/dep", "--dsn", node.dsn, "--from", "2026-02-01", "--to", "2026-01-01"
    )
    assert code == 2 and "after its start" in stderr
