"""examples/loan_book.py, run as written against a real 2-shard cluster: every figure of the
month as a lender would check it, the end-of-day rerun accruing nothing twice, and the books
balanced (every account's debits minus credits sums to zero)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from examples import loan_book
from shards.local.embedded_pg import EmbeddedPostgres
from tally.client import AsyncClient, Credentials
from tests.support import security
from tests.support.helpers import InProcessCluster, in_process_cluster
from tests.support.local_up import running_up, scratch_directory, wait_serving
from tests.support.paths import REPO_ROOT


@pytest.fixture
async def cluster(pg: EmbeddedPostgres) -> AsyncIterator[InProcessCluster]:
    async with in_process_cluster(pg, f"book{os.getpid()}", 2, slot_map_poll_interval_s=0.2) as c:
        yield c


def _daily(principal: int, rate_bp: int) -> int:
    return principal * rate_bp // (10_000 * 365)


async def test_the_loan_book_month(cluster: InProcessCluster) -> None:
    credentials = Credentials.from_directory(security.root())
    async with AsyncClient(cluster.target, credentials) as tally:
        figures = await loan_book.run_book(tally, days=30)
        bakery, farm, tailor = loan_book.BOOK
        assert figures["accruals_applied"] == 30 * 3
        assert figures["accruals_applied_on_rerun"] == 0
        # The bakery's fee was waived: its repayment pays interest, then principal.
        assert "bakery_fees_paid" not in figures
        assert figures["bakery_interest_paid"] == 30 * _daily(bakery.principal, bakery.rate_bp)
        assert figures["bakery_principal_paid"] == 100_000 - figures["bakery_interest_paid"]
        # The farm's repayment pays its fee first.
        assert figures["farm_fees_paid"] == loan_book.LATE_FEE_AMOUNT
        assert figures["farm_interest_paid"] == 30 * _daily(farm.principal, farm.rate_bp)
        tailor_interest = 30 * _daily(tailor.principal, tailor.rate_bp)
        assert figures["tailor_written_off"] == tailor.principal + tailor_interest
        accounts = [a.id for a in loan_book.chart_of_accounts(loan_book.BOOK)]
        states = await tally.get_accounts(accounts)
        net = {
            i: s.balance.debits_posted - s.balance.credits_posted for i, s in states.items() if s
        }
        assert len(net) == len(accounts)
        assert sum(net.values()) == 0  # double entry: the book balances
        assert net[tailor.account("principal")] == net[tailor.account("interest")] == 0
        assert net[loan_book.FEE_INCOME] == -loan_book.LATE_FEE_AMOUNT  # the waived fee is gone
        assert -net[loan_book.INTEREST_INCOME] == 30 * sum(
            _daily(loan.principal, loan.rate_bp) for loan in loan_book.BOOK
        )
        statement = await loan_book.statement(tally, bakery.borrower, loan_book.BOOK)
        assert any("biz-bakery/disburse-1" in line for line in statement)


@pytest.mark.timeout(180)
async def test_the_loan_book_runs_against_tally_up_as_the_readme_says() -> None:
    """`python examples/loan_book.py --target ... --credentials DATA_DIR/tls` against tally up."""
    with scratch_directory() as scratch:
        log = scratch / "up.log"
        async with running_up(log, data_dir=scratch / "data") as up:
            await wait_serving(up)
            command = [
                sys.executable, "examples/loan_book.py", "--target", up.target,
                "--credentials", str(up.credentials), "--days", "3",
            ]  # fmt: skip
            finished = await asyncio.to_thread(
                subprocess.run,
                command,
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
    assert "Statement of biz-bakery" in finished.stdout
    assert "'accruals_applied': 9" in finished.stdout
