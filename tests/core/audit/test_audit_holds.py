"""The audit of cross-shard holds (core/model.py Kind.HOLD and Kind.DEADLINE): a cluster whose
holds were posted in part, voided, expired, left open or are being settled audits clean, with
the counts; a piece settled against its coordinator's fate, a clearing amount altered and a
piece's deadline moved without its hold row are named.

The shard databases are written by the state machine and the store directly (no node, no
gateway): each test lays out the records the two-phase commit of a hold leaves on each shard,
in the order the protocol writes them.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from core import audit
from core.audit import (
    AuditConfig,
    CrossShardReport,
    FindingKind,
    FindingLog,
    PieceView,
    crossshard,
    expected_postings,
)
from core.ids import abort_marker_id, expiry_id, piece_id
from core.journal import BlockHeader
from core.model import (
    SUCCESS_CODES,
    AccountSpec,
    AccountState,
    Kind,
    Leg,
    Result,
    ResultCode,
    TransactionSpec,
    TransactionState,
)
from core.pieces import DeadlineMode, deadline_spec, hold_settlement_spec, resolution_spec
from core.state import Batch, Item, JournalPosition, check_balanced, needed_ids
from core.store import shard as store
from shards.local.embedded_pg import EmbeddedPostgres

SECOND_NS = 1_000_000_000
HOLD_TIMEOUT_S = 3_600
PREPARE_TIMEOUT_S = 30
CLEARING = "@clearing/USD"
_numbers = itertools.count(1)


def debit(account_id: str, amount: int) -> Leg:
    return Leg(account_id, True, amount, "USD")


def credit(account_id: str, amount: int) -> Leg:
    return Leg(account_id, False, amount, "USD")


# ---- a shard written through the state machine and the store ----


@dataclass
class Shard:
    """One shard database, every account and transaction kept in memory (they are few)."""

    number: int
    dsn: str
    connection: Any
    previous: BlockHeader
    position: JournalPosition = field(default_factory=lambda: JournalPosition(1, 0))
    accounts: dict[str, AccountState | None] = field(default_factory=dict)
    transactions: dict[str, TransactionState | None] = field(default_factory=dict)

    @classmethod
    async def create(cls, pg: EmbeddedPostgres, name: str, number: int) -> Shard:
        await pg.create_database_async(name)
        dsn = pg.dsn(name)
        connection = await asyncpg.connect(dsn, timeout=30)
        await store.migrate(connection)
        previous = await store.last_block(connection, 10.0)
        return cls(number, dsn, connection, previous)

    async def apply(self, *items: Item) -> list[Result]:
        """One batch, one block; every item must succeed."""
        account_ids, transaction_ids = needed_ids([items])
        for account_id in account_ids:
            self.accounts.setdefault(account_id, None)
        for transaction_id in transaction_ids:
            self.transactions.setdefault(transaction_id, None)
        batch = Batch(self.accounts, self.transactions, self.position, time.time_ns())
        (results,) = batch.apply([list(items)])
        assert all(r.code in SUCCESS_CODES for r in results), [
            (r.code.name, r.message) for r in results
        ]
        check_balanced(batch.out, batch.accounts)
        end = batch.position
        block = store.build_block(
            batch.out,
            self.previous,
            0,
            end.next_posting_sequence,
            end.last_timestamp_ns,
            time.time_ns(),
        )
        await store.commit_block(self.connection, block, 10.0)
        self.accounts, self.transactions = batch.accounts, batch.transactions
        self.position, self.previous = batch.position, block.header
        return results

    def expires_at_ns(self, transaction_id: str) -> int:
        state = self.transactions[transaction_id]
        assert state is not None
        return state.expires_at_ns

    async def execute(self, sql: str, *args: object) -> None:
        await self.connection.execute(sql, *args, timeout=30)

    async def fetchval(self, sql: str, *args: object) -> Any:
        return await self.connection.fetchval(sql, *args, timeout=30)


def account(account_id: str) -> AccountSpec:
    return AccountSpec(account_id, "USD", 100, False, False, ())


# ---- what the two-phase commit of a hold records ----


@dataclass
class Cluster:
    shards: list[Shard]

    @property
    def dsns(self) -> list[str]:
        return [shard.dsn for shard in self.shards]


COORDINATOR = 0


async def prepare_hold(
    cluster: Cluster, hold_id: str, attempt: str, pieces: Mapping[int, tuple[Leg, ...]]
) -> int:
    """Prepare at the participants, commit (the HOLD record) at the coordinator, re-arm the
    pieces to the hold's expiry; returns that expiry."""
    for shard, legs in pieces.items():
        if shard != COORDINATOR:
            prepared = TransactionSpec(
                piece_id(hold_id, attempt),
                Kind.PREPARED,
                legs,
                2,
                (),
                "",
                PREPARE_TIMEOUT_S,
                str(COORDINATOR),
            )
            await cluster.shards[shard].apply(prepared)
    hold = TransactionSpec(
        hold_id,
        Kind.HOLD,
        pieces[COORDINATOR],
        2,
        (),
        "",
        HOLD_TIMEOUT_S,
        abort_marker_id(hold_id, attempt),
    )
    (result,) = await cluster.shards[COORDINATOR].apply(hold)
    expires_at_ns = result.timestamp_ns + HOLD_TIMEOUT_S * SECOND_NS
    await rearm(cluster, hold_id, attempt, pieces, expires_at_ns)
    return expires_at_ns


async def rearm(
    cluster: Cluster,
    hold_id: str,
    attempt: str,
    pieces: Mapping[int, tuple[Leg, ...]],
    expires_at_ns: int,
    mode: DeadlineMode = DeadlineMode.CONFIRM,
) -> None:
    for shard in pieces:
        if shard != COORDINATOR:
            spec = deadline_spec(piece_id(hold_id, attempt), expires_at_ns, mode)
            await cluster.shards[shard].apply(spec)


async def decide(cluster: Cluster, resolution: TransactionSpec) -> None:
    await cluster.shards[COORDINATOR].apply(resolution)


async def settle(
    cluster: Cluster,
    hold_id: str,
    attempt: str,
    shards: Sequence[int],
    kind: Kind,
    resolution_id: str,
    legs: tuple[Leg, ...] = (),
) -> None:
    for shard in shards:
        spec = hold_settlement_spec(piece_id(hold_id, attempt), kind, resolution_id, legs)
        await cluster.shards[shard].apply(spec)


def post(post_id: str, hold_id: str, legs: tuple[Leg, ...] = ()) -> TransactionSpec:
    return TransactionSpec(post_id, Kind.POST_PENDING, legs, 3, (), "", 0, hold_id)


def void(void_id: str, hold_id: str) -> TransactionSpec:
    return TransactionSpec(void_id, Kind.VOID_PENDING, (), 4, (), "", 0, hold_id)


def expiry(hold_id: str) -> TransactionSpec:
    return TransactionSpec(expiry_id(hold_id), Kind.EXPIRY, (), 0, (), "", 0, hold_id)


# Holds: shard 0 (a/dep) coordinates; b/dep lives on shard 1, c/dep and c/sav on shard 2.
# H-part's piece on shard 2 nets to zero (no clearing leg held), and the post of a part of it
# needs one: its share posts a clearing key it did not hold.
PART_PIECES = {
    0: (debit("a/dep", 100), credit(CLEARING, 100)),
    1: (credit("b/dep", 100), debit(CLEARING, 100)),
    2: (debit("c/dep", 30), credit("c/sav", 30)),
}
PART_POST = (debit("a/dep", 70), credit("b/dep", 50), debit("c/dep", 10), credit("c/sav", 30))
VOID_PIECES = {
    0: (debit("a/dep", 20), credit(CLEARING, 20)),
    1: (credit("b/dep", 20), debit(CLEARING, 20)),
}
EXPIRED_PIECES = {
    0: (debit("a/dep", 15), credit(CLEARING, 15)),
    2: (credit("c/dep", 15), debit(CLEARING, 15)),
}
OPEN_PIECES = {
    0: (debit("a/dep", 25), credit(CLEARING, 25)),
    1: (credit("b/dep", 25), debit(CLEARING, 25)),
}
SETTLING_PIECES = {
    0: (debit("a/dep", 12), credit(CLEARING, 12)),
    2: (credit("c/dep", 12), debit(CLEARING, 12)),
}


@dataclass
class Layout:
    cluster: Cluster
    open_expires_at_ns: int = 0


async def make_cluster(pg: EmbeddedPostgres, shard_count: int = 3) -> Cluster:
    prefix = f"ah{os.getpid()}_{next(_numbers)}"
    shards = [await Shard.create(pg, f"{prefix}_s{n}", n) for n in range(shard_count)]
    cluster = Cluster(shards)
    owned = {0: ["a/dep"], 1: ["b/dep"], 2: ["c/dep", "c/sav"]}
    for shard in shards:
        customers = owned.get(shard.number, [])
        await shard.apply(*(account(a) for a in ["@bank", CLEARING, *customers]))
        await shard.apply(
            *(
                TransactionSpec(
                    f"fund-{a}",
                    Kind.ORDINARY,
                    (debit("@bank", 1_000), credit(a, 1_000)),
                    1,
                    (),
                    "",
                    0,
                    "",
                )
                for a in customers
            )
        )
    return cluster


async def write_holds(cluster: Cluster, forge_posted_against_void: bool = False) -> Layout:
    """Every fate of a cross-shard hold, a cross-shard transfer and an aborted attempt."""
    layout = Layout(cluster)
    layout.open_expires_at_ns = await _write_every_hold_fate(cluster, forge_posted_against_void)
    await _write_cross_shard_transfer(cluster)
    await _write_aborted_hold_attempt(cluster)
    return layout


async def _write_every_hold_fate(cluster: Cluster, forge_posted_against_void: bool) -> int:
    """Holds posted in part, voided, expired and left open; the open one's expiry (ns)."""
    # Posted in part: the coordinator decides, the participants post their shares.
    await prepare_hold(cluster, "H-part", "a1", PART_PIECES)
    await rearm(
        cluster,
        "H-part",
        "a1",
        PART_PIECES,
        time.time_ns() + PREPARE_TIMEOUT_S * SECOND_NS,
        DeadlineMode.DECISION,
    )
    await decide(cluster, post("P-part", "H-part", PART_POST))
    await settle(cluster, "H-part", "a1", [1, 2], Kind.POST_PENDING, "P-part", PART_POST)
    # Voided (or, forged, its piece posted all the same).
    await prepare_hold(cluster, "H-void", "a2", VOID_PIECES)
    await decide(cluster, void("V-void", "H-void"))
    if forge_posted_against_void:
        await settle(cluster, "H-void", "a2", [1], Kind.POST_PENDING, "V-void")
    else:
        await settle(cluster, "H-void", "a2", [1], Kind.VOID_PENDING, "V-void")
    # Expired at the coordinator, then at its participant.
    await prepare_hold(cluster, "H-exp", "a3", EXPIRED_PIECES)
    await decide(cluster, expiry("H-exp"))
    await settle(cluster, "H-exp", "a3", [2], Kind.EXPIRY, "")
    # Open: committed, its piece held until the hold's expiry.
    return await prepare_hold(cluster, "H-open", "a4", OPEN_PIECES)


async def _write_cross_shard_transfer(cluster: Cluster) -> None:
    # A cross-shard transfer, committed and posted everywhere.
    transfer_piece = piece_id("T-1", "a5")
    await cluster.shards[1].apply(
        TransactionSpec(
            transfer_piece,
            Kind.PREPARED,
            (credit("b/dep", 9), debit(CLEARING, 9)),
            1,
            (),
            "",
            PREPARE_TIMEOUT_S,
            "0",
        )
    )
    await cluster.shards[0].apply(
        TransactionSpec(
            "T-1",
            Kind.COMMIT,
            (debit("a/dep", 9), credit(CLEARING, 9)),
            1,
            (),
            "",
            0,
            abort_marker_id("T-1", "a5"),
        )
    )
    await cluster.shards[1].apply(resolution_spec(transfer_piece, True))


async def _write_aborted_hold_attempt(cluster: Cluster) -> None:
    # An attempt of a hold that aborted: its piece voided.
    aborted_piece = piece_id("H-abort", "a6")
    await cluster.shards[2].apply(
        TransactionSpec(
            aborted_piece,
            Kind.PREPARED,
            (credit("c/dep", 5), debit(CLEARING, 5)),
            2,
            (),
            "",
            PREPARE_TIMEOUT_S,
            "0",
        )
    )
    await cluster.shards[0].apply(
        TransactionSpec(
            abort_marker_id("H-abort", "a6"),
            Kind.ABORT,
            (),
            int(ResultCode.ABORTED),
            (),
            "",
            0,
            "H-abort",
        )
    )
    await cluster.shards[2].apply(resolution_spec(aborted_piece, False))


async def close(cluster: Cluster) -> None:
    for shard in cluster.shards:
        await shard.connection.close(timeout=10)


@pytest.fixture
async def cluster(pg: EmbeddedPostgres) -> AsyncIterator[Cluster]:
    made = await make_cluster(pg)
    try:
        yield made
    finally:
        await close(made)


def explain(report: audit.AuditReport) -> str:
    return "\n".join(str(finding) for finding in report.problems)


def of_kind(report: audit.AuditReport, kind: FindingKind) -> list[audit.Finding]:
    return [finding for finding in report.problems if finding.kind is kind]


# ---- clean ----


async def test_every_fate_of_a_cross_shard_hold_audits_clean(cluster: Cluster) -> None:
    layout = await write_holds(cluster)
    # One more, being settled: posted at its coordinator, its participant not told yet.
    await prepare_hold(cluster, "H-settling", "a7", SETTLING_PIECES)
    await rearm(
        cluster,
        "H-settling",
        "a7",
        SETTLING_PIECES,
        time.time_ns() + PREPARE_TIMEOUT_S * SECOND_NS,
        DeadlineMode.DECISION,
    )
    await decide(cluster, post("P-settling", "H-settling"))
    report = await audit.audit_cluster(cluster.dsns, AuditConfig())
    assert report.ok and report.complete, explain(report)
    cross = report.cross_shard
    assert cross.checked
    # H-part, H-void, H-exp, T-1 and the aborted attempt.
    assert (cross.settled_count, cross.open_hold_count, cross.in_flight_count) == (5, 1, 1)
    (flight,) = cross.in_flight
    assert flight.transaction_id == "H-settling" and flight.decision == "hold posted"
    assert flight.coordinator == 0 and set(flight.pieces) == {(0, "hold posted"), (2, "pending")}
    assert cross.in_flight_clearing == {"USD": -12}  # the coordinator's share, posted
    # The open hold's piece is held until the hold's expiry, and its deadline records say so.
    piece = piece_id("H-open", "a4")
    assert cluster.shards[1].expires_at_ns(piece) == layout.open_expires_at_ns
    held = await cluster.shards[1].fetchval(
        "SELECT expires_at_ns FROM holds WHERE transaction_id = $1", piece
    )
    assert held == layout.open_expires_at_ns
    # The shards' holds: H-open and H-settling at the coordinator, their pieces elsewhere.
    assert [shard.hold_count for shard in report.shards] == [1, 1, 1]
    # Clearing per shard: what is posted is the settled holds' shares and the transfer's.
    assert report.shards[2].clearing["USD"][:2] == [20, 0]
    assert await audit_problems_all(cluster) == []


async def audit_problems_all(cluster: Cluster) -> list[str]:
    """Each shard alone through check_all (every check but the cross-shard one)."""
    problems = []
    for shard in cluster.shards:
        connection = await asyncpg.connect(shard.dsn, timeout=30)
        try:
            problems += await audit.check_all(connection)
        finally:
            await connection.close(timeout=10)
    return problems


async def test_a_hold_settled_between_two_snapshots_is_read_again(cluster: Cluster) -> None:
    """The coordinator read before the hold's fate, the participant after its piece settled:
    not a contradiction, but a hold read again and found settled."""
    await prepare_hold(cluster, "H-race", "b1", OPEN_PIECES)
    config = AuditConfig()
    reports = []
    try:
        reports.append(await _shard_audit(cluster, 0, config))
        await decide(cluster, post("P-race", "H-race", (debit("a/dep", 5), credit("b/dep", 5))))
        await settle(
            cluster,
            "H-race",
            "b1",
            [1],
            Kind.POST_PENDING,
            "P-race",
            (debit("a/dep", 5), credit("b/dep", 5)),
        )
        for shard in (1, 2):
            reports.append(await _shard_audit(cluster, shard, config))
        assert all(r.ok for r in reports), [str(p) for r in reports for p in r.problems]
        log = FindingLog(audit.CLUSTER, 100)
        cross = await audit.check_cross_shard(reports, cluster.dsns, config, log)
    finally:
        for report in reports:
            if report.spool is not None:
                report.spool.close()
    assert log.kept == [], [str(p) for p in log.kept]
    assert (cross.rechecked_count, cross.settled_count, cross.open_hold_count) == (1, 1, 0)


async def _shard_audit(cluster: Cluster, shard: int, config: AuditConfig) -> audit.ShardReport:
    connection = await audit.connect(cluster.dsns[shard], config)
    try:
        report = await audit.audit_shard(connection, shard, config, spool=True)
    finally:
        await connection.close()
    report.target = cluster.dsns[shard]
    return report


# ---- forged ----


async def test_a_piece_posted_while_its_hold_was_voided_is_a_contradiction(
    cluster: Cluster,
) -> None:
    await write_holds(cluster, forge_posted_against_void=True)
    report = await audit.audit_cluster(cluster.dsns, AuditConfig())
    assert not report.ok
    (found,) = of_kind(report, FindingKind.CROSS_SHARD_CONTRADICTION)
    assert found.shard == audit.CLUSTER and found.transaction_id == "H-void"
    assert str(found) == (
        "cluster: cross-shard transaction H-void: its hold was voided at its coordinator "
        "(shard 0), but its piece ~piece/a2/H-void on shard 1 was posted"
    )
    # Each shard alone is consistent: only the cluster's view shows it.
    assert all(shard.ok for shard in report.shards), explain(report)
    assert report.cross_shard.settled_count == 4


async def test_an_altered_clearing_share_is_named(cluster: Cluster) -> None:
    await write_holds(cluster)
    participant = cluster.shards[2]
    settlement = "~commit/" + piece_id("H-part", "a1")
    applied = await participant.fetchval(
        "SELECT COALESCE(applied_legs, legs) FROM transactions WHERE id = $1", settlement
    )
    assert "D @clearing/USD 20 USD" in applied, applied  # a clearing key the piece did not hold
    forged = applied.replace("D @clearing/USD 20 USD", "D @clearing/USD 21 USD")
    await participant.execute(
        "UPDATE transactions SET applied_legs = $1 WHERE id = $2", forged, settlement
    )
    report = await audit.audit_cluster(cluster.dsns, AuditConfig())
    assert not report.ok
    (unbalanced,) = of_kind(report, FindingKind.CROSS_SHARD_UNBALANCED)
    assert unbalanced.transaction_id == "H-part" and (unbalanced.expected, unbalanced.found) == (
        "0",
        "1",
    )
    assert unbalanced.message == (
        "its clearing pieces net to 1 USD (debits minus credits), expected 0: shard 0 "
        "(coordinator, hold posted) -70, shard 1 (piece, posted) 50, shard 2 (piece, posted) 21"
    )
    (mismatch,) = of_kind(report, FindingKind.CLEARING_COUNTERS_MISMATCH)
    assert (mismatch.shard, mismatch.account_id) == (2, CLEARING)
    (differs,) = of_kind(report, FindingKind.POSTING_DIFFERS_FROM_LEG)
    assert (differs.shard, differs.transaction_id, differs.account_id) == (2, settlement, CLEARING)
    assert differs.message == f"posted_amount 20, expected 21 (from transaction {settlement})"


async def test_a_deadline_without_its_hold_row_is_named(cluster: Cluster) -> None:
    """A DEADLINE record moved the open piece's deadline; its hold row was left behind."""
    layout = await write_holds(cluster)
    piece = piece_id("H-open", "a4")
    participant = cluster.shards[1]
    stale = layout.open_expires_at_ns - 7 * SECOND_NS
    await participant.execute(
        "UPDATE holds SET expires_at_ns = $1 WHERE transaction_id = $2", stale, piece
    )
    report = await audit.audit_cluster(cluster.dsns, AuditConfig())
    (found,) = of_kind(report, FindingKind.HOLD_DEADLINE_MISMATCH)
    assert (found.shard, found.transaction_id) == (1, piece)
    assert (found.expected, found.found) == (str(layout.open_expires_at_ns), str(stale))
    assert report.cross_shard.open_hold_count == 1


async def test_a_piece_deadline_its_records_do_not_give_is_named(cluster: Cluster) -> None:
    """The piece's deadline (and its hold row) changed with no DEADLINE record for it."""
    layout = await write_holds(cluster)
    piece = piece_id("H-open", "a4")
    participant = cluster.shards[1]
    moved = layout.open_expires_at_ns + 86_400 * SECOND_NS
    await participant.execute(
        "UPDATE transactions SET expires_at_ns = $1 WHERE id = $2", moved, piece
    )
    await participant.execute(
        "UPDATE holds SET expires_at_ns = $1 WHERE transaction_id = $2", moved, piece
    )
    report = await audit.audit_cluster(cluster.dsns, AuditConfig())
    (found,) = of_kind(report, FindingKind.HOLD_DEADLINE_MISMATCH)
    assert (found.shard, found.transaction_id) == (1, piece)
    record = await participant.fetchval(
        "SELECT id FROM transactions WHERE kind = $1 AND target_id = $2 "
        "ORDER BY block_sequence DESC LIMIT 1",
        int(Kind.DEADLINE),
        piece,
    )
    assert found.message == (
        f"expires_at_ns {moved}, but its last deadline record {record} sets "
        f"{layout.open_expires_at_ns}"
    )


async def test_an_open_hold_past_its_deadline_is_named(cluster: Cluster) -> None:
    layout = await write_holds(cluster)
    late = AuditConfig(now_ns=layout.open_expires_at_ns + 3_600 * SECOND_NS)
    report = await audit.audit_cluster(cluster.dsns, late)
    overdue = sorted(
        (f.shard, f.transaction_id) for f in of_kind(report, FindingKind.HOLD_PAST_DEADLINE)
    )
    assert overdue == [(0, "H-open"), (1, piece_id("H-open", "a4"))]
    (hold,) = [f for f in of_kind(report, FindingKind.HOLD_PAST_DEADLINE) if f.shard == 0]
    assert hold.message.endswith("holds are released when they expire")


# ---- the pure parts ----


def test_a_post_of_a_share_posts_clearing_keys_it_did_not_hold() -> None:
    held = "D c/dep 30 USD,C c/sav 30 USD"
    applied = "D c/dep 10 USD,C c/sav 30 USD,D @clearing/USD 20 USD"
    assert expected_postings(Kind.POST_PENDING, applied, held) == [
        ("c/dep", "D", 10, -30, "USD"),
        ("c/sav", "C", 30, -30, "USD"),
        ("@clearing/USD", "D", 20, 0, "USD"),
    ]
    # The clearing side flipped: the held side released, the other posted.
    flipped = expected_postings(
        Kind.POST_PENDING,
        "D x/a 100 USD,C @clearing/USD 100 USD",
        "D x/a 100 USD,C x/b 300 USD,D @clearing/USD 200 USD",
    )
    assert flipped == [
        ("x/a", "D", 100, -100, "USD"),
        ("x/b", "C", 0, -300, "USD"),
        ("@clearing/USD", "D", 0, -200, "USD"),
        ("@clearing/USD", "C", 100, 0, "USD"),
    ]
    # An ordinary partial post is as before.
    assert expected_postings(
        Kind.POST_PENDING, "D x/a 5 USD,C x/b 5 USD", "D x/a 9 USD,C x/b 9 USD"
    ) == [
        ("x/a", "D", 5, -9, "USD"),
        ("x/b", "C", 5, -9, "USD"),
    ]
    assert expected_postings(Kind.HOLD, "D x/a 9 USD,C @clearing/USD 9 USD", None) == [
        ("x/a", "D", 0, 9, "USD"),
        ("@clearing/USD", "C", 0, 9, "USD"),
    ]
    assert expected_postings(Kind.DEADLINE, "", None) == []


def test_a_piece_view_survives_its_spool_line() -> None:
    view = PieceView("a1/H", 0, "H", "commit", "", "", -1, 0, {"USD": -70}, True, "posted")
    assert PieceView.from_line(view.line()) == view
    assert view.state == "hold posted"


def _row(
    key: str, kind: Kind, id_: str, target: str, applied: str = "", **extra: Any
) -> dict[str, Any]:
    row = {
        "key": key,
        "id": id_,
        "kind": int(kind),
        "target_id": target,
        "applied_legs": applied,
        "expires_at_ns": 0,
        "held_legs": None,
        "target_kind": None,
        "timestamp_ns": 1,
        "timeout_seconds": 0,
        "block_sequence": 1,
        "metadata": None,
    }
    row.update(extra)
    return row


def _views_of_a_hold(fate_at_coordinator: Kind | None, piece: Kind | None) -> list[PieceView]:
    """A hold H (coordinator shard 0) with one piece on shard 1, folded from rows."""
    key = "a1/H"
    held = "D x/a 10 USD,C @clearing/USD 10 USD"
    coordinator = PieceView(key, 0)
    crossshard.fold(coordinator, _row(key, Kind.HOLD, "H", "~abort/a1/H", held), None)
    if fate_at_coordinator is not None:
        crossshard.fold(
            coordinator,
            _row(
                key,
                fate_at_coordinator,
                "R",
                "H",
                held,
                held_legs=held,
                target_kind=int(Kind.HOLD),
            ),
            None,
        )
    participant = PieceView(key, 1)
    piece_held = "C y/b 10 USD,D @clearing/USD 10 USD"
    crossshard.fold(participant, _row(key, Kind.PREPARED, "~piece/a1/H", "0", piece_held), None)
    if piece is not None:
        crossshard.fold(
            participant,
            _row(
                key,
                piece,
                "~x/~piece/a1/H",
                "~piece/a1/H",
                piece_held,
                held_legs=piece_held,
                target_kind=int(Kind.PREPARED),
            ),
            None,
        )
    return [coordinator, participant]


@pytest.mark.parametrize(
    ("fate", "piece", "first", "final"),
    [
        (None, None, "open hold", "open hold"),
        (Kind.POST_PENDING, None, "in flight", "in flight"),
        (Kind.POST_PENDING, Kind.POST_PENDING, "settled", "settled"),
        (Kind.VOID_PENDING, Kind.VOID_PENDING, "settled", "settled"),
        (Kind.EXPIRY, Kind.EXPIRY, "settled", "settled"),
        (Kind.VOID_PENDING, Kind.POST_PENDING, "wrong", "wrong"),
        (Kind.POST_PENDING, Kind.VOID_PENDING, "wrong", "wrong"),
        (Kind.EXPIRY, Kind.VOID_PENDING, "wrong", "wrong"),
        # Settled at the participant, open at the coordinator: a snapshot race until read again.
        (None, Kind.POST_PENDING, "suspect", "wrong"),
    ],
)
def test_judging_a_hold(fate: Kind | None, piece: Kind | None, first: str, final: str) -> None:
    config = AuditConfig()
    log = FindingLog(audit.CLUSTER, 10)
    assert crossshard.judge(_views_of_a_hold(fate, piece), config, log, final=False) == first
    verdicts = crossshard.judge(_views_of_a_hold(fate, piece), config, log, final=True)
    assert verdicts == final
    kinds = {finding.kind for finding in log.kept}
    if final == "wrong":
        assert kinds == {FindingKind.CROSS_SHARD_CONTRADICTION}, [str(f) for f in log.kept]
        assert all(finding.transaction_id == "H" for finding in log.kept)
    else:
        assert kinds == set()


def test_an_open_hold_with_clearing_posted_is_named() -> None:
    views = _views_of_a_hold(None, None)
    views[1].posted["USD"] = 4
    log = FindingLog(audit.CLUSTER, 10)
    assert crossshard.judge(views, AuditConfig(), log, final=False) == "suspect"
    assert crossshard.judge(views, AuditConfig(), log, final=True) == "wrong"
    (found,) = log.kept
    assert found.kind is FindingKind.CROSS_SHARD_UNBALANCED and found.transaction_id == "H"
    assert found.message == (
        "its hold is open, yet shard 1 (piece, pending) posted 4 USD to clearing (debits minus "
        "credits), expected 0 until its fate"
    )


def test_open_holds_are_counted_apart() -> None:
    result = CrossShardReport(checked=True)
    crossshard.tally(result, "open hold", _views_of_a_hold(None, None))
    assert (result.open_hold_count, result.in_flight_count, result.in_flight) == (1, 0, [])


def test_an_open_piece_keeps_the_deadline_its_records_set() -> None:
    key, piece = "a1/T", "~piece/a1/T"
    created = _row(
        key, Kind.PREPARED, piece, "0", timestamp_ns=5, timeout_seconds=30, expires_at_ns=0
    )
    created["expires_at_ns"] = 5 + 30 * SECOND_NS + 1  # not what its creation set
    log = FindingLog(1, 10)
    view, deadline = PieceView(key, 1), crossshard.PieceDeadline()
    deadline.see(created)
    crossshard.fold(view, created, None)
    deadline.check(log, view)
    (found,) = log.kept
    assert found.kind is FindingKind.HOLD_DEADLINE_MISMATCH and found.transaction_id == piece
    assert found.message == (
        f"expires_at_ns {5 + 30 * SECOND_NS + 1}, but its creation (timestamp_ns + "
        f"timeout_seconds) sets {5 + 30 * SECOND_NS}"
    )
    # A deadline record sets it (from its hashed metadata), the last one wins; once the piece
    # is settled its deadline no longer matters.
    log = FindingLog(1, 10)
    view, deadline = PieceView(key, 1), crossshard.PieceDeadline()
    rearmed = [
        _row(key, Kind.DEADLINE, f"~deadline/{n}/{piece}", piece, metadata=text, expires_at_ns=7)
        for n, text in ((6, '{"expires_at_ns":"900"}'), (7, '{"expires_at_ns":"700"}'))
    ]
    for row in (created, *rearmed):
        deadline.see(row)
        crossshard.fold(view, row, None)
    assert view.deadline_ns == 700
    view.resolution = "posted"
    deadline.check(log, view)
    view.resolution = ""
    deadline.check(log, view)
    (found,) = log.kept
    assert (found.expected, found.found) == ("700", str(5 + 30 * SECOND_NS + 1))
