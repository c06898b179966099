"""The terminal's tables (rich) and its usage errors (amounts, integer flags), without a node:
the README example (test_readme.py) runs them against one. The usage errors are checked with
credentials given (the tests' admin identity, in TALLY_CA/CERT/KEY), as a user of `tally up`
has them: the error then named is the usage error, found before any call."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from rich.table import Table

from shards.cli import terminal
from shards.cli.main import main
from tally.v1 import ledger_pb2 as pb
from tests.support import security

TIME_NS = 1_795_672_900_488_084_000  # 2026-11-26 06:01:40.488084 UTC


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands present the tests' admin identity (read from TALLY_* when parsing)."""
    for name, value in security.client_environment().items():
        monkeypatch.setenv(name, value)


def rendered(table: Table, *, indented: bool = False) -> list[str]:
    stream = io.StringIO()
    terminal.print_table(table, indented=indented, stream=stream)
    return stream.getvalue().splitlines()


def posting(transaction_id: str, side: int, amount: int, credits_posted: int) -> pb.Posting:
    return pb.Posting(
        transaction_id=transaction_id,
        side=side,
        posted_amount=amount,
        timestamp_ns=TIME_NS,
        balance_after=pb.Balance(credits_posted=credits_posted, debits_pending=12_000),
    )


def test_history_long_transaction_id_widens_its_column_for_every_row() -> None:
    rows = [
        posting("disb-7", pb.SIDE_CREDIT, 150_000, 150_000),
        posting("a-transaction-id-longer-than-24", pb.SIDE_DEBIT, 500, 149_500),
    ]
    assert rendered(terminal.history_table(rows, "USD")) == [
        "time                           transaction                    "
        "          debit         credit        pending        balance",
        "2026-11-26 06:01:40.488084 UTC disb-7                         "
        "                      1,500.00         120.00       1,500.00",
        "2026-11-26 06:01:40.488084 UTC a-transaction-id-longer-than-24"
        "           5.00                        120.00       1,495.00",
    ]


def test_history_without_postings_is_its_header() -> None:
    assert rendered(terminal.history_table([], "JPY")) == [
        "time                           transaction                       debit         credit"
        "        pending        balance"
    ]


def test_legs_in_a_scale_three_currency_and_a_long_account_id() -> None:
    legs = [
        pb.Leg(account_id="cust-1/dep", side=pb.SIDE_DEBIT, amount=1_500, currency="KWD"),
        pb.Leg(account_id="x" * 40, side=pb.SIDE_CREDIT, amount=1_500, currency="KWD"),
    ]
    assert rendered(terminal.legs_table(legs), indented=True) == [
        "  debit  cust-1/dep                                          1.500 KWD",
        "  credit xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx            1.500 KWD",
    ]


def test_cells_are_text_not_rich_markup() -> None:
    legs = [pb.Leg(account_id="[bold]a:smile:", side=pb.SIDE_DEBIT, amount=7, currency="JPY")]
    assert rendered(terminal.legs_table(legs)) == [
        "debit  [bold]a:smile:                                  7 JPY"
    ]


def test_balances_of_an_account() -> None:
    balance = pb.Balance(debits_posted=40_500, credits_posted=150_500_000)
    assert rendered(terminal.balance_table(balance, "USD"), indented=True) == [
        "  posted   debits           405.00  credits     1,505,000.00",
        "  pending  debits             0.00  credits             0.00",
    ]


def test_plain_text_when_piped_even_if_colour_is_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert "\x1b" not in "".join(rendered(terminal.history_table([], "USD")))


def test_bold_headers_on_a_terminal() -> None:
    controller, terminal_end = os.openpty()
    with os.fdopen(terminal_end, "w") as stream:
        terminal.print_table(terminal.history_table([], "USD"), stream=stream)
    written = os.read(controller, 4096).decode()
    os.close(controller)
    assert "\x1b[1m" in written and "transaction" in written


@pytest.mark.parametrize(
    ("amount", "error"),
    [
        ("1.001", "amount 1.001 has more than 2 decimals for USD"),
        ("1,000.00", "amount '1,000.00' is not a decimal like -1500.00"),
        # A negative amount once reached protobuf's unsigned field: a ValueError traceback.
        (
            "-5.00",
            "amount -5.00 is negative: a leg's amount is positive, "
            "--debit or --credit says which way it moves",
        ),
        (
            "184467440737095516.16",
            "amount 184467440737095516.16 is larger than 18446744073709551615 minor units",
        ),
    ],
)
@pytest.mark.usefixtures("credentials")
def test_an_amount_that_is_not_one_is_a_usage_error(
    amount: str, error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Refused before any call: the target need not exist.
    words = ["post", "t-1", "--currency=USD", "--code=1", "--target=127.0.0.1:9"]
    exit_code = main([*words, f"--debit=a={amount}", f"--credit=b={amount}"])
    assert exit_code == 2
    assert capsys.readouterr().err == f"tally: {error}\n"


@pytest.mark.parametrize(
    ("words", "error"),
    [
        (["post", "t-1", "--code=-1", "--debit=a=1", "--credit=b=1"], "--code -1 is negative"),
        (
            ["post", "t-1", "--code=4294967296", "--debit=a=1", "--credit=b=1"],
            "--code 4294967296 is larger than 4294967295",
        ),
        (
            ["post", "t-1", "--code=1", "--pending", "--timeout=-60", "--debit=a=1"],
            "--timeout -60 is negative",
        ),
        (["create-account", "a", "--code=-1"], "--code -1 is negative"),
        (["history", "a", "--limit=-1"], "--limit -1 is negative"),
    ],
)
@pytest.mark.usefixtures("credentials")
def test_an_integer_its_field_cannot_carry_is_a_usage_error(
    words: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Refused before any call, where protobuf would raise a ValueError: no target needed.
    extra = ["--currency=USD"] if words[0] != "history" else []
    exit_code = main([*words, *extra, "--target=127.0.0.1:9"])
    assert exit_code == 2
    assert capsys.readouterr().err == f"tally: {error}\n"


def test_without_credentials_a_command_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # No flags, no TALLY_* variables, and no tally up here: nothing to present, no call made.
    for name in [n for n in os.environ if n.startswith("TALLY_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    assert main(["show", "a", "--target=127.0.0.1:9"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("tally: no credentials: give --ca with --cert/--key or --token")
    assert "(.tally/tls not found)" in error
