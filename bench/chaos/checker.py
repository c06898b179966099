"""The history checker: after a campaign (or the bank test), the whole history against every
shard's database and what the gateways answer, as anomalies by kind.

- every acknowledged transaction is recorded exactly once in the cluster (`ack_missing`,
  `ack_duplicated`), with the acknowledged content and timestamp as read back through a gateway
  (`ack_content`, `ack_unreadable`; a reversal read back as an ordinary transaction, the
  original's legs inverted and its `reverses_id` gone, is `reversal_read_as_transfer`); retried
  again it is REPLAYED with its timestamp (`replay`);
- no request, write or read, met gRPC UNKNOWN or INTERNAL (`forbidden_status`); a read by id
  of an applied transaction answered OK or a retryable status (`read_failed`);
- nothing unacknowledged is recorded twice (`unacked_twice`); nothing refused is recorded
  (`refused_present`); no transaction is recorded that no client sent (`phantom`);
- a cross-shard transfer is whole or absent on every shard (`cross_shard_records`);
- every hold has the fate its client was told, is resolved (`hold_unresolved`, `hold_fate`), and
  none is posted after its deadline (`hold_after_deadline`); nothing, hold or cross-shard piece,
  is still held once every deadline has passed (`held_at_end`);
- every customer's balance is what the answers say (`balance`); per currency the customers hold
  exactly what was funded and @cash owes exactly that (`total`), the clearing pieces net to zero
  (`clearing`), each shard's books balance with nothing pending (`trial_balance`), no account
  with debits_must_not_exceed_credits is below zero (`overdrawn`);
- the audit of every shard and of the cluster (`tally audit`'s checks) is clean (`audit`).

An unknown item (no definitive answer) counts as applied when it is recorded.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
import grpc

from bench.chaos.bank import (
    CURRENCIES,
    FORBIDDEN_STATUSES,
    REPLAYED,
    Bank,
    Gateways,
    History,
    Item,
    cash_of,
)
from core import audit
from core.audit import AuditConfig
from core.ids import (
    abort_marker_id,
    clearing_account,
    is_piece_id,
    is_reserved,
    parse_abort_marker,
    parse_piece_id,
    piece_id,
)
from core.journal import FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS
from core.model import Kind, Status
from tally.v1 import ledger_pb2 as pb

READ_CHUNK = 500
RETRYABLE_READS = ("UNAVAILABLE", "DEADLINE_EXCEEDED")
SQL_TIMEOUT_S = 120.0
RPC_TIMEOUT_S = 30.0
REPLAY_SAMPLE_COUNT = 200
EXAMPLES_PER_KIND_MAX = 20
# A hold's deadline, read back: the node's sweep runs every 0.5 s, a clock step moves it.
# What a transaction's record keeps of it (`linked` belongs to the request, not the record;
# legs compare as a multiset: the gateway reassembles a cross-shard one from its pieces).
CONTENT_FIELDS = (
    "id", "code", "pending", "timeout_seconds", "post_pending_id", "void_pending_id",
    "reverses_id",
)  # fmt: skip


@dataclass(frozen=True)
class Anomaly:
    kind: str
    transaction_id: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.transaction_id}: {self.detail}"


@dataclass
class Verdict:
    anomalies: list[Anomaly] = field(default_factory=list)
    checked: Counter[str] = field(default_factory=Counter)  # what was looked at, by kind

    def add(self, kind: str, transaction_id: str, detail: str) -> None:
        self.anomalies.append(Anomaly(kind, transaction_id, detail))

    @property
    def ok(self) -> bool:
        return not self.anomalies

    def by_kind(self) -> dict[str, list[Anomaly]]:
        found: dict[str, list[Anomaly]] = defaultdict(list)
        for anomaly in self.anomalies:
            found[anomaly.kind].append(anomaly)
        return dict(found)

    def summary(self) -> str:
        kinds = {k: len(v) for k, v in self.by_kind().items()}
        examples = [str(a) for a in self.anomalies[:EXAMPLES_PER_KIND_MAX]]
        return f"{len(self.anomalies)} anomalies {kinds}: {examples}"


@dataclass(frozen=True)
class Books:
    """Where the history is judged: every shard's database, the slot map, the gateways."""

    shard_dsns: Sequence[str]
    shard_of: Callable[[str], int]
    gateways: Gateways


@dataclass(frozen=True)
class Row:
    shard_id: int
    kind: int
    status: int
    timestamp_ns: int
    expires_at_ns: int
    target_id: str


async def fetch_each_shard(
    dsns: Sequence[str], query: str, *arguments: object
) -> list[list[asyncpg.Record]]:
    async def one(dsn: str) -> list[asyncpg.Record]:
        connection = await asyncpg.connect(dsn, timeout=SQL_TIMEOUT_S)
        try:
            return list(await connection.fetch(query, *arguments, timeout=SQL_TIMEOUT_S))
        finally:
            await connection.close(timeout=SQL_TIMEOUT_S)

    return list(await asyncio.gather(*(one(dsn) for dsn in dsns)))


async def read_records(books: Books) -> dict[str, list[Row]]:
    """Every client-named transaction record of every shard (the whole history), by id."""
    query = """
        SELECT id, kind, status, timestamp_ns, expires_at_ns, target_id FROM transactions
    """
    found: dict[str, list[Row]] = defaultdict(list)
    for shard_id, rows in enumerate(await fetch_each_shard(books.shard_dsns, query)):
        for r in rows:
            if is_reserved(r["id"]):
                continue
            found[r["id"]].append(
                Row(shard_id, r["kind"], r["status"], r["timestamp_ns"], r["expires_at_ns"],
                    r["target_id"])
            )  # fmt: skip
    return found


def check_presence(history: History, records: dict[str, list[Row]], verdict: Verdict) -> None:
    """Acknowledged: once, at its timestamp; refused: nowhere; unknown: at most once;
    nothing that no client sent."""
    for item in history.items.values():
        here = records.get(item.transaction_id, [])
        verdict.checked["items"] += 1
        if item.applied:
            assert item.result is not None
            if not here:
                verdict.add("ack_missing", item.transaction_id, f"acknowledged {item.kind}")
            elif len(here) > 1:
                verdict.add("ack_duplicated", item.transaction_id, f"{here}")
            elif here[0].timestamp_ns != item.result.timestamp_ns:
                verdict.add(
                    "ack_content", item.transaction_id,
                    f"timestamp {here[0].timestamp_ns}, acknowledged {item.result.timestamp_ns}",
                )  # fmt: skip
        elif item.refused and here:
            assert item.result is not None
            verdict.add(
                "refused_present", item.transaction_id,
                f"refused {pb.ResultCode.Name(item.result.code)} but recorded {here}",
            )  # fmt: skip
        elif item.unknown and len(here) > 1:
            verdict.add("unacked_twice", item.transaction_id, f"{here}")
    for transaction_id in records.keys() - history.items.keys():
        verdict.add("phantom", transaction_id, f"recorded, never sent: {records[transaction_id]}")


def check_statuses(history: History, verdict: Verdict) -> None:
    """No request met gRPC UNKNOWN or INTERNAL, writes or reads, whatever the faults."""
    for item in history.items.values():
        met = FORBIDDEN_STATUSES.intersection(item.errors)
        if met:
            verdict.add("forbidden_status", item.transaction_id, f"post met {sorted(met)}")
    for read in history.reads:
        verdict.checked["reads during the load"] += 1
        if read.answer in FORBIDDEN_STATUSES:
            verdict.add("forbidden_status", read.transaction_id, f"read met {read.answer}")
        elif read.answer not in ("OK", *RETRYABLE_READS):
            verdict.add(
                "read_failed", read.transaction_id, f"read of an applied one: {read.answer}"
            )


def _content(transaction: pb.Transaction) -> tuple[object, ...]:
    legs = tuple(sorted((g.account_id, g.side, g.amount, g.currency) for g in transaction.legs))
    return (*(getattr(transaction, f) for f in CONTENT_FIELDS), legs)


def _reads_as_its_inverse(record: pb.TransactionRecord, item: Item, history: History) -> bool:
    """The reversal read back has no reverses_id and its target's legs, inverted."""
    target = history.items.get(item.target)
    if target is None or record.transaction.reverses_id:
        return False
    inverted = sorted(
        (g.account_id, pb.SIDE_CREDIT if g.side == pb.SIDE_DEBIT else pb.SIDE_DEBIT, g.amount,
         g.currency)
        for g in target.message.legs
    )  # fmt: skip
    return _content(record.transaction)[-1] == tuple(inverted)


async def check_content(books: Books, history: History, verdict: Verdict) -> None:
    """Each acknowledged transaction read back through a gateway is what was sent."""
    applied = [i for i in history.items.values() if i.applied and i.kind != "funding"]
    for start in range(0, len(applied), READ_CHUNK):
        chunk = applied[start : start + READ_CHUNK]
        request = pb.GetTransactionsRequest(ids=[i.transaction_id for i in chunk])
        response = await books.gateways.next().GetTransactions(request, timeout=RPC_TIMEOUT_S)
        for item, lookup in zip(chunk, response.results, strict=True):
            verdict.checked["read back"] += 1
            if lookup.code != pb.RESULT_CODE_OK:
                name = pb.ResultCode.Name(lookup.code)
                verdict.add("ack_unreadable", item.transaction_id, f"{name} {lookup.message}")
                continue
            read, sent = _content(lookup.transaction.transaction), _content(item.message)
            if read == sent:
                continue
            if item.kind == "reversal" and _reads_as_its_inverse(lookup.transaction, item, history):
                # Its own kind: the books are right (the legs are the original's inverted), but
                # the record read back is not what was sent.
                verdict.add(
                    "reversal_read_as_transfer", item.transaction_id,
                    f"read back without reverses_id, as the legs {read[-1]}",
                )  # fmt: skip
                continue
            verdict.add("ack_content", item.transaction_id, f"read {read}, sent {sent}")


async def check_replays(books: Books, history: History, verdict: Verdict, seed: int) -> None:
    """Acknowledged items (every one that met an error, and a sample) sent again: REPLAYED
    with the acknowledged timestamp. Refused ones are not resent: a retry may now succeed."""
    applied = [i for i in history.items.values() if i.applied and i.kind != "funding"]
    with_errors = [i for i in applied if i.errors]
    rng = random.Random(seed)
    sampled = rng.sample(applied, min(REPLAY_SAMPLE_COUNT, len(applied)))
    sample = list({i.transaction_id: i for i in [*with_errors, *sampled]}.values())
    for start in range(0, len(sample), READ_CHUNK):
        chunk = [i for i in sample[start : start + READ_CHUNK] if not i.group]
        request = pb.PostTransactionsRequest(transactions=[i.message for i in chunk])
        response = await books.gateways.next().PostTransactions(request, timeout=RPC_TIMEOUT_S)
        for item, again in zip(chunk, response.results, strict=True):
            verdict.checked["replayed"] += 1
            assert item.result is not None
            if (again.code, again.timestamp_ns) != (REPLAYED, item.result.timestamp_ns):
                name = pb.ResultCode.Name(again.code)
                verdict.add("replay", item.transaction_id, f"{name} {again.message}")


def _settles_by_hold(history: History) -> dict[str, list[Item]]:
    settles: dict[str, list[Item]] = defaultdict(list)
    for item in history.of_kind("post", "post_part", "void", "expire_post"):
        settles[item.target].append(item)
    return settles


def _expected_status(hold: Item, settles: list[Item], records: dict[str, list[Row]]) -> int:
    for settle in settles:
        if settle.applied or (settle.unknown and records.get(settle.transaction_id)):
            return Status.PENDING_VOIDED if settle.kind == "void" else Status.PENDING_POSTED
    return Status.PENDING_EXPIRED


def check_holds(history: History, records: dict[str, list[Row]], verdict: Verdict) -> None:
    """Each recorded hold resolved, with its client's fate, never posted after its deadline."""
    settles = _settles_by_hold(history)
    for hold in history.of_kind("hold"):
        here = records.get(hold.transaction_id, [])
        if len(here) != 1:
            continue  # check_presence says what is wrong
        verdict.checked["holds"] += 1
        (row,) = here
        if row.status == Status.PENDING:
            verdict.add("hold_unresolved", hold.transaction_id, f"still pending: {row}")
            continue
        expected = _expected_status(hold, settles[hold.transaction_id], records)
        if row.status != expected:
            verdict.add(
                "hold_fate", hold.transaction_id,
                f"{Status(row.status).name}, its client was told {Status(expected).name}",
            )  # fmt: skip
        for settle in settles[hold.transaction_id]:
            posted = records.get(settle.transaction_id, [])
            if settle.kind == "void" or len(posted) != 1 or not row.expires_at_ns:
                continue
            if posted[0].timestamp_ns > row.expires_at_ns:
                verdict.add(
                    "hold_after_deadline", hold.transaction_id,
                    f"posted by {settle.transaction_id} "
                    f"{(posted[0].timestamp_ns - row.expires_at_ns) / 1e9:.3f}s after its deadline",
                )  # fmt: skip


def _took_effect(item: Item, records: dict[str, list[Row]]) -> bool:
    return item.applied or (item.unknown and len(records.get(item.transaction_id, [])) == 1)


def expected_balances(history: History, records: dict[str, list[Row]]) -> dict[str, int]:
    """Each customer account's credits minus debits, posted, by what the answers say."""
    bank = history.bank
    balances = dict.fromkeys((a for a, _ in bank.customer_accounts()), 0)

    def move(legs: Sequence[pb.Leg], sign: int, amount: int | None = None) -> None:
        for g in legs:
            if g.account_id in balances:
                moved = g.amount if amount is None else amount
                balances[g.account_id] += sign * (moved if g.side == pb.SIDE_CREDIT else -moved)

    for item in history.items.values():
        if not _took_effect(item, records):
            continue
        if item.kind in ("funding", "transfer", "linked"):
            move(item.message.legs, 1)
        elif item.kind == "reversal":
            move(history.items[item.target].message.legs, -1)
        elif item.kind in ("post", "post_part", "expire_post"):
            hold = history.items[item.target]
            amount = item.message.legs[0].amount if item.message.legs else None
            move(hold.message.legs, 1, amount)
    return balances


async def check_books(
    books: Books, history: History, records: dict[str, list[Row]], verdict: Verdict
) -> None:
    """Balances, totals per currency, clearing, trial balances, no overdraft."""
    query = """
        SELECT id, currency, flags, debits_posted AS dp, credits_posted AS cp,
               debits_pending AS dq, credits_pending AS cq FROM accounts
    """
    per_shard = await fetch_each_shard(books.shard_dsns, query)
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for shard_id, rows in enumerate(per_shard):
        trial: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for r in rows:
            for counters in (totals[r["id"]], trial[r["currency"]]):
                for n, column in enumerate(("dp", "cp", "dq", "cq")):
                    counters[n] += int(r[column])
            overdrawn = r["dp"] + r["dq"] > r["cp"]
            if r["flags"] & FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS and overdrawn:
                verdict.add("overdrawn", r["id"], f"shard {shard_id}: {dict(r)}")
        for currency, (dp, cp, dq, cq) in trial.items():
            if (dp, dq, cq) != (cp, 0, 0):
                verdict.add(
                    "trial_balance", f"shard-{shard_id}", f"{currency}: {dp} {cp} {dq} {cq}"
                )
    _check_balances(history, records, totals, verdict)


def _check_balances(
    history: History,
    records: dict[str, list[Row]],
    totals: dict[str, list[int]],
    verdict: Verdict,
) -> None:
    bank: Bank = history.bank
    expected = expected_balances(history, records)
    held: Counter[str] = Counter()
    for account_id, currency in bank.customer_accounts():
        dp, cp, _, _ = totals.get(account_id, [0, 0, 0, 0])
        verdict.checked["balances"] += 1
        held[currency] += cp - dp
        if cp - dp != expected[account_id]:
            verdict.add("balance", account_id, f"{cp - dp}, the answers say {expected[account_id]}")
    funded = bank.funded_per_currency()
    for currency in CURRENCIES:
        if held[currency] != funded:
            verdict.add("total", currency, f"customers hold {held[currency]}, funded {funded}")
        dp, cp, dq, cq = totals.get(cash_of(currency), [0, 0, 0, 0])
        if (dp - cp, dq, cq) != (funded, 0, 0):
            verdict.add("total", cash_of(currency), f"owes {dp - cp} (pending {dq}/{cq})")
        clearing = totals.get(clearing_account(currency), [0, 0, 0, 0])
        if clearing[0] != clearing[1] or clearing[2] or clearing[3]:
            verdict.add("clearing", clearing_account(currency), f"{clearing}")


async def check_cross_shard_records(books: Books, history: History, verdict: Verdict) -> None:
    """On the shards' own records: an applied single-shard transfer is one posted row; an
    applied cross-shard one is a commit on its coordinator (naming its attempt) and that
    attempt's piece posted on its participant. Every other attempt (refused, aborted, or run
    again by a retry) has an abort marker on the coordinator and, if its participant prepared,
    a voided piece. A transfer not applied has no commit anywhere."""
    transfers = {i.transaction_id: i for i in history.of_kind("transfer")}
    query = """
        SELECT id, kind, status, target_id FROM transactions
        WHERE id = ANY($1::text[]) OR id LIKE $2 OR id LIKE $3
    """
    patterns = (piece_id("%", "%"), abort_marker_id("%", "%"))
    per_shard = await fetch_each_shard(books.shard_dsns, query, list(transfers), *patterns)
    found: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    commits: dict[str, str] = {}  # transaction -> its committed attempt
    pieces: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
    markers: dict[str, dict[str, int]] = defaultdict(dict)
    for shard_id, rows in enumerate(per_shard):
        for row in rows:
            identifier = row["id"]
            if is_piece_id(identifier):
                transaction_id, attempt = parse_piece_id(identifier)
                pieces[transaction_id][attempt] = (shard_id, row["status"])
            elif is_reserved(identifier):  # the query reads no other reserved id
                transaction_id, attempt = parse_abort_marker(identifier)
                markers[transaction_id][attempt] = shard_id
            else:
                found[identifier].append((shard_id, row["kind"], row["status"]))
                if row["kind"] == Kind.COMMIT:
                    commits[identifier] = parse_abort_marker(row["target_id"])[1]
    for transaction_id, item in transfers.items():
        problem = _cross_shard_problem(
            books, item, sorted(found.get(transaction_id, [])), commits.get(transaction_id),
            pieces.get(transaction_id, {}), markers.get(transaction_id, {}),
        )  # fmt: skip
        verdict.checked["transfer records"] += 1
        if problem:
            verdict.add("cross_shard_records", transaction_id, problem)


def _cross_shard_problem(
    books: Books,
    item: Item,
    here: list[tuple[int, int, int]],
    committed: str | None,
    attempts: dict[str, tuple[int, int]],
    aborted: dict[str, int],
) -> str:
    debit, credit = (g.account_id for g in item.message.legs)
    applied = item.applied or (item.unknown and bool(here))
    if not item.cross_shard:
        expected = [(books.shard_of(debit), Kind.ORDINARY, Status.POSTED)] if applied else []
        return "" if here == expected and not attempts and not aborted else f"{here} {attempts}"
    coordinator, participant = books.shard_of(debit), books.shard_of(credit)
    if applied:
        if here != [(coordinator, Kind.COMMIT, Status.POSTED)] or committed is None:
            return f"applied: {here}"
        if attempts.get(committed) != (participant, Status.PENDING_POSTED):
            return f"applied: pieces {attempts}"
        if committed in aborted:
            return "applied: its attempt also aborted"
    elif here:
        return f"not applied: {here}"
    for attempt, (shard_id, status) in attempts.items():
        if attempt == committed:
            continue
        if (shard_id, status) != (participant, Status.PENDING_VOIDED):
            return f"attempt {attempt} piece {shard_id} {status}"
        if aborted.get(attempt) != coordinator:
            return f"attempt {attempt} voided, no abort recorded"
    return ""


async def check_nothing_held(books: Books, verdict: Verdict) -> None:
    """Once the cluster is quiet, nothing is held anywhere: every hold and every cross-shard
    piece was decided by its deadline (the campaign waited past every deadline)."""
    query = "SELECT transaction_id, expires_at_ns FROM holds ORDER BY transaction_id"
    for shard_id, rows in enumerate(await fetch_each_shard(books.shard_dsns, query)):
        for row in rows:
            expires_at_ns = row["expires_at_ns"]
            late_s = (time.time_ns() - expires_at_ns) / 1e9
            deadline = f"deadline passed {late_s:.1f}s ago" if expires_at_ns else "no deadline"
            verdict.add(
                "held_at_end", row["transaction_id"], f"still held on shard {shard_id} ({deadline})"
            )


async def check_audit(books: Books, verdict: Verdict) -> None:
    """`tally audit`'s checks: every shard, then the cluster."""
    report = await audit.audit_cluster(list(books.shard_dsns), AuditConfig())
    for shard in report.shards:
        if shard.error:
            verdict.add("audit", f"shard-{shard.shard}", f"not audited: {shard.error}")
        for finding in shard.findings:
            verdict.add("audit", f"shard-{shard.shard}", finding.message)
    for problem in report.cluster_problems:
        verdict.add("audit", "cluster", problem.message)
    if not report.ok and not report.problems:
        verdict.add("audit", "cluster", f"not ok: {report.cluster_problem_counts}")
    in_flight = (report.cross_shard.in_flight_count, report.cross_shard.open_hold_count)
    if in_flight != (0, 0):
        verdict.add("audit", "cluster", f"cross-shard in flight, open holds: {in_flight}")
    verdict.checked["audited shards"] += len(report.shards)


async def check(books: Books, history: History, seed: int = 0) -> Verdict:
    """Every check above, in an order where a replay's double application would show."""
    verdict = Verdict()
    try:
        await check_replays(books, history, verdict, seed)
        records = await read_records(books)
        check_presence(history, records, verdict)
        check_statuses(history, verdict)
        await check_content(books, history, verdict)
        check_holds(history, records, verdict)
        await check_nothing_held(books, verdict)
        await check_cross_shard_records(books, history, verdict)
        await check_books(books, history, records, verdict)
        await check_audit(books, verdict)
    except (grpc.aio.AioRpcError, OSError, asyncpg.PostgresError) as error:
        verdict.add("checker_failed", "-", f"{type(error).__name__}: {error}")
    return verdict
