"""Accounts, chains and holds: every account's counters against the sums of its postings, its
flags and the trial balance; every posting's balance-after chain; every open hold against its
transaction and deadline. Also the one-call checks the service and the benchmark use."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from core import ids, journal
from core.audit.cold import ColdJournal, ColdTotals, chain_row
from core.audit.findings import (
    COUNTER_NAMES,
    About,
    AuditConfig,
    FindingKind,
    FindingLog,
    Progress,
    ShardReport,
)
from core.audit.source import TIMEOUT_S, RowStream
from core.model import HELD_KINDS, Kind, Status
from core.slots import is_spread
from core.store import audit as queries

# ---- accounts: counters against their postings, flags, trial balance ----


async def check_accounts(
    connection: Any,
    config: AuditConfig,
    log: FindingLog,
    report: ShardReport,
    progress: Progress | None = None,
    cold: ColdJournal | None = None,
) -> None:
    """Each account's counters equal the sums of its postings (with cold history: its cold
    postings' sums, which the journal pass made, plus its hot ones'); flags hold; the
    per-currency trial balance of the counters (every account streams through once)."""
    args: tuple[int, ...] = ()
    sql = queries.ACCOUNT_SUMS_SQL
    totals = ColdTotals()
    if cold is not None:
        sql, args, totals = queries.ACCOUNT_SUMS_FROM_SQL, (cold.hot_from,), cold.totals
    stream = await RowStream.open(
        connection, sql, config.fetch_row_count, config.statement_timeout_s, *args
    )
    unseen = set(totals.sums)
    done = 0
    while rows := await stream.rest():
        for row in rows:
            unseen.discard(row["id"])
            cold_sums = totals.sums.get(row["id"], [0, 0, 0, 0, 0])
            _check_account(
                log, row, report.trial_balance, report.clearing, cold_sums, totals.complete
            )
        done += len(rows)
        if progress is not None:
            progress(log.shard, "accounts", done, max(done, report.account_count))
    for account_id in sorted(unseen):
        log.add(
            FindingKind.POSTINGS_OF_UNKNOWN_ACCOUNT,
            About.ACCOUNT,
            f"has {totals.sums[account_id][4]} cold postings but is not in accounts",
            account_id=account_id,
        )
    if config.currencies:
        for balances in (report.trial_balance, report.clearing):
            for currency in set(balances) - config.currencies:
                del balances[currency]
    for currency, (dp, cp, dq, cq) in sorted(report.trial_balance.items()):
        for kind, debits, credits in (("posted", dp, cp), ("pending", dq, cq)):
            if debits != credits:
                log.add(
                    FindingKind.TRIAL_BALANCE_UNBALANCED,
                    About.CURRENCY,
                    f"{kind} debits {debits}, {kind} credits {credits} (differ by "
                    f"{debits - credits})",
                    f"{kind} debits = {kind} credits",
                    f"{debits} != {credits}",
                    currency=currency,
                )


def add_counters(sums: dict[str, list[int]], currency: str, counters: Sequence[int]) -> None:
    into = sums.setdefault(currency, [0, 0, 0, 0])
    for index, value in enumerate(counters):
        into[index] += value


def _check_account(
    log: FindingLog,
    row: Any,
    trial_balance: dict[str, list[int]],
    clearing: dict[str, list[int]],
    cold_sums: list[int],
    check_sums: bool = True,
) -> None:
    account_id = row["id"]
    posting_count = row["posting_count"] + cold_sums[4]
    if not row["known"]:
        log.add(
            FindingKind.POSTINGS_OF_UNKNOWN_ACCOUNT,
            About.ACCOUNT,
            f"has {posting_count} postings but is not in accounts",
            account_id=account_id,
        )
        return
    currency = row["currency"]
    counters = [row[name] for name in COUNTER_NAMES]
    hot = [int(row[name]) for name in ("sum_dp", "sum_cp", "sum_dq", "sum_cq")]
    sums = [h + c for h, c in zip(hot, cold_sums, strict=False)]
    for name, found, expected in zip(COUNTER_NAMES, counters, sums, strict=True):
        if found != expected and check_sums:
            log.add(
                FindingKind.COUNTER_MISMATCH,
                About.ACCOUNT,
                f"{name} {found}, but its {posting_count} postings sum to {expected}",
                expected,
                found,
                account_id=account_id,
                currency=currency,
            )
    add_counters(trial_balance, currency, counters)
    if ids.is_clearing(account_id):
        add_counters(clearing, currency, counters)
    _check_flags(log, account_id, currency, row["flags"], row["closed_at_ns"], counters)


def _check_flags(
    log: FindingLog,
    account_id: str,
    currency: str,
    flags: int,
    closed_at_ns: int,
    counters: list[int],
) -> None:
    dp, cp, dq, cq = counters
    no_overdraft = bool(flags & journal.FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS)
    credit_limit = bool(flags & journal.FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS)
    if no_overdraft and dp + dq > cp:
        log.add(
            FindingKind.LIMIT_EXCEEDED,
            About.ACCOUNT,
            f"debits_posted {dp} + debits_pending {dq} exceed credits_posted {cp}, but it "
            "is debits_must_not_exceed_credits",
            f"<= {cp}",
            dp + dq,
            account_id=account_id,
            currency=currency,
        )
    if credit_limit and cp + cq > dp:
        log.add(
            FindingKind.LIMIT_EXCEEDED,
            About.ACCOUNT,
            f"credits_posted {cp} + credits_pending {cq} exceed debits_posted {dp}, but it "
            "is credits_must_not_exceed_debits",
            f"<= {dp}",
            cp + cq,
            account_id=account_id,
            currency=currency,
        )
    if (no_overdraft or credit_limit) and is_spread(account_id):
        log.add(
            FindingKind.SPREAD_ACCOUNT_FLAG,
            About.ACCOUNT,
            "a spread account carries a must-not-exceed flag",
            account_id=account_id,
            currency=currency,
        )
    if closed_at_ns and (dp != cp or dq or cq):
        log.add(
            FindingKind.CLOSED_ACCOUNT_NOT_EMPTY,
            About.ACCOUNT,
            f"closed, but its posted balance is {cp - dp} and {dq + cq} is pending",
            "0",
            f"{cp - dp}",
            account_id=account_id,
            currency=currency,
        )


# ---- balance-after chains ----


async def check_chains(
    connection: Any, config: AuditConfig, log: FindingLog, cold: ColdJournal | None = None
) -> None:
    """Every posting's balance-after is the account's previous balance-after plus its amounts
    (PostgreSQL walks each account's postings in order; only broken links come back). With
    cold history, the hot postings' (the journal pass checked the cold ones'): each account's
    first hot posting follows its last cold one."""
    args: tuple[int, ...] = ()
    sql = queries.CHAINS_SQL
    if cold is not None:
        sql, args = queries.CHAINS_FROM_SQL, (cold.hot_from,)
    stream = await RowStream.open(
        connection, sql, config.fetch_row_count, config.statement_timeout_s, *args
    )
    while rows := await stream.rest():
        for row in rows:
            if cold is not None and row["previous_sequence"] is None:
                if not cold.totals.complete:
                    continue  # its last cold posting is in a segment that cannot be read
                row = _first_hot_link(row, cold)
                if row is None:
                    continue
            report_chain_break(log, row)


def _first_hot_link(row: Any, cold: ColdJournal) -> dict[str, Any] | None:
    """An account's first hot posting against its last cold one (or zero): the broken link,
    or None."""
    before = cold.totals.after.get(row["account_id"], (0, 0, 0, 0, 0))
    link = chain_row(
        (row["sequence"], row["transaction_id"], row["account_id"], row["is_debit"]),
        (row["posted_amount"], row["pending_delta"]),
        (row["dp"], row["cp"], row["dq"], row["cq"]),
        before,
    )
    debit = row["is_debit"]
    changes = (
        (row["posted_amount"], 0, row["pending_delta"], 0)
        if debit
        else (0, row["posted_amount"], 0, row["pending_delta"])
    )
    after = (row["dp"], row["cp"], row["dq"], row["cq"])
    if all(after[i] == before[i] + changes[i] for i in range(4)):
        return None
    return link


def report_chain_break(log: FindingLog, row: Any) -> None:
    is_debit = row["is_debit"]
    changes = (
        ("debits_posted", "dp", "pdp", row["posted_amount"] if is_debit else 0, "posted_amount"),
        ("credits_posted", "cp", "pcp", 0 if is_debit else row["posted_amount"], "posted_amount"),
        ("debits_pending", "dq", "pdq", row["pending_delta"] if is_debit else 0, "pending_delta"),
        ("credits_pending", "cq", "pcq", 0 if is_debit else row["pending_delta"], "pending_delta"),
    )
    previous = row["previous_sequence"]
    before = f"posting {previous}'s" if previous is not None else "no earlier posting:"
    parts, expected_first, found_first = [], "", ""
    for name, found_key, previous_key, change, change_name in changes:
        expected = row[previous_key] + change
        if row[found_key] != expected:
            parts.append(
                f"balance-after {name} {row[found_key]}, expected {expected} "
                f"({before} {row[previous_key]} + {change_name} {change})"
            )
            expected_first = expected_first or str(expected)
            found_first = found_first or str(row[found_key])
    log.add(
        FindingKind.BALANCE_AFTER_BROKEN,
        About.POSTING,
        "; ".join(parts),
        expected_first,
        found_first,
        posting=row["sequence"],
        transaction_id=row["transaction_id"],
        account_id=row["account_id"],
    )


# ---- holds ----


async def check_holds(
    connection: Any, config: AuditConfig, log: FindingLog, report: ShardReport
) -> None:
    """Open holds agree with their transactions, and none is past its deadline."""
    now_ns = config.now_ns or time.time_ns()
    stream = await RowStream.open(
        connection, queries.HOLDS_SQL, config.fetch_row_count, config.statement_timeout_s
    )
    while rows := await stream.rest():
        report.hold_count += len(rows)
        for row in rows:
            _check_hold(log, row, config.hold_grace_s, now_ns)
    orphans = await RowStream.open(
        connection,
        queries.PENDING_WITHOUT_HOLD_SQL,
        config.fetch_row_count,
        config.statement_timeout_s,
        int(Status.PENDING),
    )
    while rows := await orphans.rest():
        for row in rows:
            log.add(
                FindingKind.PENDING_WITHOUT_HOLD,
                About.TRANSACTION,
                "pending, but has no open hold row",
                "a hold row",
                "none",
                transaction_id=row["id"],
            )


def _check_hold(log: FindingLog, row: Any, grace_s: float | None, now_ns: int) -> None:
    transaction_id = row["transaction_id"]
    expires_at_ns = row["expires_at_ns"]
    if row["kind"] is None:
        log.add(
            FindingKind.HOLD_WITHOUT_TRANSACTION,
            About.HOLD,
            "open, but no such transaction is recorded",
            transaction_id=transaction_id,
        )
        return
    if row["kind"] not in HELD_KINDS:
        kind = Kind(row["kind"]).name if row["kind"] in set(Kind) else row["kind"]
        log.add(
            FindingKind.HOLD_OF_WRONG_KIND,
            About.HOLD,
            f"open, but the transaction is a {kind}",
            "PENDING, PREPARED or HOLD",
            kind,
            transaction_id=transaction_id,
        )
    if row["status"] != Status.PENDING:
        status = Status(row["status"]).name if row["status"] in set(Status) else row["status"]
        log.add(
            FindingKind.HOLD_STATUS_MISMATCH,
            About.HOLD,
            f"open, but the transaction's status is {status}",
            "PENDING",
            status,
            transaction_id=transaction_id,
        )
    if row["recorded_ns"] != expires_at_ns:
        log.add(
            FindingKind.HOLD_DEADLINE_MISMATCH,
            About.HOLD,
            f"expires_at_ns {expires_at_ns}, but the transaction records {row['recorded_ns']}",
            row["recorded_ns"],
            expires_at_ns,
            transaction_id=transaction_id,
        )
    if grace_s is not None and expires_at_ns and expires_at_ns + grace_s * 1e9 < now_ns:
        late_s = (now_ns - expires_at_ns) / 1e9
        why = (
            "a prepared cross-shard piece is resolved by its coordinator by then"
            if row["kind"] == Kind.PREPARED
            else "holds are released when they expire"
        )
        log.add(
            FindingKind.HOLD_PAST_DEADLINE,
            About.HOLD,
            f"still open {late_s:,.0f} s after its deadline ({_utc(expires_at_ns)}); {why}",
            f"resolved by {_utc(expires_at_ns)}",
            "open",
            transaction_id=transaction_id,
        )


def _utc(timestamp_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp_ns / 1e9))


# ---- one-call checks (the service's TrialBalance, the benchmark), on the caller's session ----


async def trial_balance(connection: Any) -> dict[str, tuple[int, int, int, int]]:
    """Per currency: (debits_posted, credits_posted, debits_pending, credits_pending)."""
    rows = await connection.fetch(queries.TRIAL_BALANCE_SQL, timeout=TIMEOUT_S)
    return {r["currency"]: (int(r["dp"]), int(r["cp"]), int(r["dq"]), int(r["cq"])) for r in rows}


async def check_trial_balance(connection: Any) -> list[str]:
    problems = []
    for currency, (dp, cp, dq, cq) in (await trial_balance(connection)).items():
        if dp != cp:
            problems.append(f"{currency}: posted debits {dp} != posted credits {cp}")
        if dq != cq:
            problems.append(f"{currency}: pending debits {dq} != pending credits {cq}")
    return problems


async def check_counters(connection: Any) -> list[str]:
    """Every account's four counters equal the sum of its postings."""
    log = FindingLog(0, 10**9)
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        await check_accounts(connection, AuditConfig(statement_timeout_s=TIMEOUT_S), log, _blank())
    return [f"{p.subject}: {p.message}" for p in log.kept if p.check == "counters"]


def _blank() -> ShardReport:
    return ShardReport(0, "")
