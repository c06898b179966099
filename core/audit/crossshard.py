"""The cross-shard judge: every cross-shard transaction, attempt by attempt over every shard's
rows, decided and netting to zero on the clearing accounts, in flight, or wrong (the comment
below says how snapshots taken at different moments are told from wrong books)."""

from __future__ import annotations

import asyncio
import heapq
import json
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Final

from core import ids
from core.audit.accounts import add_counters
from core.audit.cold import ColdJournal
from core.audit.cold_crossshard import cold_cross_shard_rows, merged
from core.audit.findings import (
    COUNTER_NAMES,
    About,
    AuditConfig,
    CrossShardReport,
    FindingKind,
    FindingLog,
    InFlight,
    ShardReport,
)
from core.audit.postings import DEBIT_SIGN, expected_postings
from core.audit.source import RowStream, connect
from core.model import Kind
from core.store import audit as queries

# In-flight cross-shard transactions listed in a report (all are counted).
IN_FLIGHT_KEPT_MAX: Final = 100


# ---- cross-shard transactions: the clearing pieces, exactly ----
#
# A cross-shard transaction T leaves rows on several shards (their ids: core.ids; the records:
# core.pieces; each gateway run of T is an attempt with its own name). Its coordinator records
# the attempt's decision: the commit as T itself (kind COMMIT, target_id the attempt's abort
# marker, ids.abort_marker_id(T, attempt)), or that abort marker (kind ABORT). Each participant
# holds its piece ids.piece_id(T, attempt) (kind PREPARED, target_id the coordinator's shard
# number) until it posts or voids it. Every piece is balanced on its own shard by a leg on that
# shard's piece of the clearing account (ids.clearing_account(CUR)), so the clearing pieces of
# a transaction decided and resolved everywhere net to zero.
#
# A cross-shard hold H is created the same way, but its coordinator's record is H of kind HOLD
# (legs held, the commit decision as COMMIT is) and the participants' pieces stay held after
# it: their deadline records (kind DEADLINE, target_id the piece) re-arm them. The hold's
# fate is decided once, at the coordinator: the client's post or void of H, or the shard's
# expiry ids.expiry_id(H), all targeting H and read under H's key; each participant then
# settles its piece the same way (ids.settlement_id or ids.expiry_id of the piece), a post by
# its share of the client's post, balanced by its clearing piece. A hold whose fate is not
# decided is open (its pieces held, nothing posted to clearing); once decided, it is in flight
# until every piece follows, then its clearing pieces net to zero like a transfer's.
#
# Shards are read in separate snapshots, taken at different moments: comparing per-shard
# clearing totals can catch a transaction half-way (committed in one snapshot, not yet posted
# in another) and cry wolf. So the check goes attempt by attempt (the attempt's key,
# "<attempt>/<T>": its abort marker or piece id without the prefix, core.store.audit; rows
# written before attempts existed, piece id T itself and an abort marker without attempt, key
# as T):
#
# 1. Each shard's snapshot lists, in key order, what its rows say of each attempt (decision,
#    its piece's state, the clearing it posted); these must sum to exactly the clearing
#    accounts' counters in the same snapshot, so no clearing posting escapes the check.
# 2. Merged over shards: an attempt with a piece still held is in flight (excluded and listed;
#    one held past its deadline is also a holds finding); a contradiction (committed, yet a
#    piece voided) is a finding; an attempt decided and resolved everywhere must net to zero.
# 3. An attempt that does not net to zero, or whose pieces are resolved while no snapshot shows
#    a decision (or, for a hold, its fate), is read again on every shard (rows after the first
#    snapshot's last block), in snapshots taken after all the first ones ended. Protocol order
#    (every prepare before the decision, the decision before any resolution; rows only ever
#    added) then settles it: if a first snapshot showed the decision, every piece exists in the
#    later ones; if one showed a piece resolved, the decision exists in the later ones. What
#    still does not net to zero, or stays undecided, is wrong.

# What each of core.store.audit.RESOLUTION_KINDS makes of what it resolves.
_RESOLUTIONS: Final = {
    Kind.POST_PENDING: "posted",
    Kind.VOID_PENDING: "voided",
    Kind.EXPIRY: "expired",
}


@dataclass(slots=True)
class PieceView:
    """One attempt of a cross-shard transaction as one shard's rows show it."""

    key: str
    shard: int
    transaction_id: str = ""
    # "commit", "abort" (this shard is the coordinator), or both (a contradiction). A
    # cross-shard hold's HOLD record is its "commit".
    decision: str = ""
    piece_id: str = ""
    # "posted", "voided", "expired"; "moved" (released by this shard's move-out: the piece is
    # held at the move's target now); "" while the piece is held.
    resolution: str = ""
    # The coordinator shard named by the piece (-1: no piece here).
    coordinator: int = -1
    deadline_ns: int = 0
    # Clearing posted here, debits minus credits, per currency.
    posted: dict[str, int] = field(default_factory=dict)
    # The decision is a cross-shard hold's HOLD record (this shard is its coordinator).
    hold: bool = False
    # The hold's fate here: "posted", "voided", "expired"; "" while it is open.
    hold_fate: str = ""

    @property
    def state(self) -> str:
        if self.piece_id:
            return self.resolution or "pending"
        if self.hold:
            return f"hold {self.hold_fate or 'open'}"
        return "decided" if self.decision else "seen"

    def line(self) -> str:
        fields = [
            self.key,
            self.shard,
            self.transaction_id,
            self.decision,
            self.piece_id,
            self.resolution,
            self.coordinator,
            self.deadline_ns,
            self.posted,
            self.hold,
            self.hold_fate,
        ]
        return json.dumps(fields, separators=(",", ":")) + "\n"

    @classmethod
    def from_line(cls, text: str) -> PieceView:
        fields = json.loads(text)
        return cls(*fields)


def _client_id(piece_id: str) -> str:
    """The client's transaction id of a participant's piece id (core.ids.piece_id), or the id
    itself when it is not one (a piece written before attempts existed is T itself)."""
    try:
        return ids.parse_piece_id(piece_id)[0]
    except ValueError:
        return piece_id


def _both(first: str, second: str) -> str:
    return f"{first} and {second}" if first else second


def fold(view: PieceView, row: Any, totals: dict[str, list[int]] | None) -> None:
    """Add one row of the attempt to this shard's view of it (and to the clearing totals)."""
    kind = row["kind"]
    if kind in (Kind.COMMIT, Kind.ABORT, Kind.HOLD):
        decision = "abort" if kind == Kind.ABORT else "commit"
        view.decision = decision if view.decision in ("", decision) else "commit and abort"
        view.transaction_id = row["target_id"] if kind == Kind.ABORT else row["id"]
        view.hold = view.hold or kind == Kind.HOLD
    elif kind == Kind.PREPARED:
        view.piece_id = row["id"]
        target = row["target_id"]
        view.coordinator = int(target) if target.isdigit() else -1
        view.deadline_ns = row["expires_at_ns"]
        view.transaction_id = view.transaction_id or _client_id(row["id"])
    elif kind == Kind.DEADLINE:
        # Rows come in the order they were written: the last one is the piece's deadline.
        view.piece_id = view.piece_id or row["target_id"]
        view.deadline_ns = _deadline_of(row)
        view.transaction_id = view.transaction_id or _client_id(row["target_id"])
    elif row["target_kind"] == Kind.HOLD:
        # The coordinator's post, void or expiry of a cross-shard hold: the hold's fate; or
        # its move-out's release ("moved": its record went with its slot, decided there).
        moved = ids.moved_out_by(row["id"], row["target_id"])
        view.hold_fate = _both(view.hold_fate, "moved" if moved else _RESOLUTIONS[Kind(kind)])
        view.transaction_id = view.transaction_id or row["target_id"]
    else:
        moved = ids.moved_out_by(row["id"], row["target_id"])
        view.resolution = _both(view.resolution, "moved" if moved else _RESOLUTIONS[Kind(kind)])
        view.piece_id = view.piece_id or row["target_id"]
        view.transaction_id = view.transaction_id or _client_id(row["target_id"])
    try:
        postings = expected_postings(kind, row["applied_legs"], row["held_legs"])
    except ValueError:
        return  # the postings check names the transaction
    for account, side, posted, pending, currency in postings:
        if not ids.is_clearing(account):
            continue
        if posted:
            view.posted[currency] = view.posted.get(currency, 0) + DEBIT_SIGN[side] * posted
        if totals is not None:
            debit = side == "D"
            add_counters(
                totals,
                currency,
                (posted, 0, pending, 0) if debit else (0, posted, 0, pending),
            )


def _deadline_of(row: Any) -> int:
    """The deadline a DEADLINE record sets: its metadata's expires_at_ns (hashed, unlike its
    expires_at_ns column), else that column."""
    try:
        return int(json.loads(row["metadata"])["expires_at_ns"])
    except (TypeError, ValueError, KeyError):
        return int(row["expires_at_ns"])


@dataclass(slots=True)
class PieceDeadline:
    """A held piece's deadline as its rows tell it: set at its creation (timestamp plus
    timeout_seconds, as core.state sets it), then by each of its DEADLINE records in order."""

    # The piece's expires_at_ns column (-1: no piece row seen).
    recorded_ns: int = -1
    expected_ns: int = 0
    # The DEADLINE record that set expected_ns ("": the piece's creation).
    record_id: str = ""

    def see(self, row: Any) -> None:
        kind = row["kind"]
        if kind == Kind.PREPARED and row.get("moved_in"):
            # Moved in with its deadline as it was (the source's deadline records stay there):
            # from here on, this shard's deadline records set it.
            self.recorded_ns = self.expected_ns = row["expires_at_ns"]
        elif kind == Kind.PREPARED:
            self.recorded_ns = row["expires_at_ns"]
            timeout_s = row["timeout_seconds"]
            self.expected_ns = row["timestamp_ns"] + timeout_s * 1_000_000_000 if timeout_s else 0
        elif kind == Kind.DEADLINE:
            self.expected_ns = _deadline_of(row)
            self.record_id = row["id"]

    def check(self, log: FindingLog, view: PieceView) -> None:
        """An open piece's deadline is the one its last deadline record (or its creation) set."""
        if self.recorded_ns < 0 or view.resolution or self.recorded_ns == self.expected_ns:
            return
        source = (
            f"its last deadline record {self.record_id}"
            if self.record_id
            else "its creation (timestamp_ns + timeout_seconds)"
        )
        log.add(
            FindingKind.HOLD_DEADLINE_MISMATCH,
            About.HOLD,
            f"expires_at_ns {self.recorded_ns}, but {source} sets {self.expected_ns}",
            self.expected_ns,
            self.recorded_ns,
            transaction_id=view.piece_id,
        )


async def scan_cross_shard(
    connection: Any,
    config: AuditConfig,
    log: FindingLog,
    report: ShardReport,
    spool: bool,
    cold: ColdJournal | None = None,
) -> None:
    """This shard's cross-shard attempts in key order (written to report.spool if asked), and
    its clearing accounts' counters against the sums of their pieces; an open piece's deadline
    against its deadline records. With cold history, the rows of cold blocks are merged in
    (core.audit.cold_crossshard)."""
    totals: dict[str, list[int]] = {}
    out = tempfile.TemporaryFile("w+", encoding="utf-8") if spool else None
    report.spool = out
    stream = await RowStream.open(
        connection, queries.CROSS_SHARD_SQL, config.fetch_row_count, config.statement_timeout_s
    )
    cold_rows = (
        []
        if cold is None
        else await cold_cross_shard_rows(connection, cold, config.statement_timeout_s)
    )
    view: PieceView | None = None
    deadline = PieceDeadline()
    async for rows in merged(stream, cold_rows):
        for row in rows:
            if view is None or row["key"] != view.key:
                if view is not None:
                    _close_view(view, deadline, log, out)
                view = PieceView(row["key"], report.shard)
                deadline = PieceDeadline()
                report.cross_shard_count += 1
            deadline.see(row)
            fold(view, row, totals)
    if view is not None:
        _close_view(view, deadline, log, out)
    _check_clearing_totals(log, totals, report.clearing, config.currencies)


def _close_view(
    view: PieceView, deadline: PieceDeadline, log: FindingLog, out: IO[str] | None
) -> None:
    deadline.check(log, view)
    if out is not None:
        out.write(view.line())


def _check_clearing_totals(
    log: FindingLog,
    pieces: dict[str, list[int]],
    counters: dict[str, list[int]],
    currencies: frozenset[str],
) -> None:
    for currency in sorted(set(pieces) | set(counters)):
        if currencies and currency not in currencies:
            continue
        found = counters.get(currency, [0, 0, 0, 0])
        expected = pieces.get(currency, [0, 0, 0, 0])
        differ = [i for i in range(4) if found[i] != expected[i]]
        if not differ:
            continue
        log.add(
            FindingKind.CLEARING_COUNTERS_MISMATCH,
            About.CLEARING,
            "counters "
            + ", ".join(f"{COUNTER_NAMES[i]} {found[i]}" for i in differ)
            + ", but the cross-shard transactions recorded on this shard account for "
            + ", ".join(f"{COUNTER_NAMES[i]} {expected[i]}" for i in differ)
            + " (every posting to a clearing account must be part of one)",
            expected[differ[0]],
            found[differ[0]],
            account_id=ids.clearing_account(currency),
            currency=currency,
        )


async def check_cross_shard(
    reports: Sequence[ShardReport], dsns: Sequence[str], config: AuditConfig, log: FindingLog
) -> CrossShardReport:
    """Every cross-shard transaction over the shards' spools (see the comment above)."""
    result = CrossShardReport(checked=True)
    suspects: dict[str, list[PieceView]] = {}
    for key, views in _merged(reports):
        verdict = judge(views, config, log, final=False)
        if verdict == "suspect" and len(suspects) < config.recheck_count_max:
            suspects[key] = views
            continue
        if verdict == "suspect":
            _not_rechecked(log, views, f"more than {config.recheck_count_max:,} to recheck")
            continue
        tally(result, verdict, views)
    if not suspects:
        return result
    result.rechecked_count = len(suspects)
    try:
        await _read_again(suspects, reports, dsns, config)
    except Exception as error:  # a shard gone since its audit: say so, do not guess
        for views in suspects.values():
            _not_rechecked(log, views, f"the shards could not be read again ({error!r})")
        return result
    for views in suspects.values():
        tally(result, judge(views, config, log, final=True), views)
    return result


def _merged(reports: Sequence[ShardReport]) -> Iterator[tuple[str, list[PieceView]]]:
    """(key, the shards' views of that attempt), in key order, from every shard's spool."""

    def read(spool: IO[str]) -> Iterator[PieceView]:
        spool.seek(0)
        for text in spool:
            yield PieceView.from_line(text)

    streams = [read(report.spool) for report in reports if report.spool is not None]
    group: list[PieceView] = []
    for view in heapq.merge(*streams, key=lambda piece: piece.key):
        if group and view.key != group[0].key:
            yield group[0].key, group
            group = []
        group.append(view)
    if group:
        yield group[0].key, group


def _hold_of(decided: list[PieceView]) -> PieceView | None:
    """The coordinator's view of a cross-shard hold (None: not a hold)."""
    return next((view for view in decided if view.hold), None)


def judge(views: list[PieceView], config: AuditConfig, log: FindingLog, final: bool) -> str:
    """ "settled", "in flight", "open hold", "suspect" (not final: to be read again) or
    "wrong" (logged)."""
    views.sort(key=lambda view: view.shard)
    decided, pieces = _judged_decisions(views), _judged_pieces(views)
    contradictions = _contradictions(decided, pieces, _moved_coordinators(views))
    transaction_id = _transaction_id(views)
    hold = _hold_of(decided) if {view.decision for view in decided} == {"commit"} else None
    open_hold = hold if hold is not None and not hold.hold_fate else None
    # Pieces settled while their hold is open at the coordinator: the coordinator's snapshot
    # was taken before the hold's fate (read again), or they were settled on their own.
    ahead = [view for view in pieces if view.resolution] if open_hold is not None else []
    if open_hold is not None and ahead and final and not contradictions:
        contradictions = [
            f"its hold is open at its coordinator (shard {open_hold.shard}), but its piece "
            f"{view.piece_id} on shard {view.shard} was {view.resolution}"
            for view in ahead
        ]
    for message in contradictions:
        log.add(
            FindingKind.CROSS_SHARD_CONTRADICTION,
            About.CROSS_SHARD,
            message,
            transaction_id=transaction_id,
        )
    if contradictions:
        return "wrong"
    if ahead:
        return "suspect"
    if open_hold is not None:
        return _judge_open_hold(views, config, log, final, transaction_id)
    if any(not view.resolution for view in pieces):
        return "in flight"
    net: dict[str, int] = {}
    for view in views:
        for currency, amount in view.posted.items():
            if not config.currencies or currency in config.currencies:
                net[currency] = net.get(currency, 0) + amount
    unbalanced = {currency: amount for currency, amount in sorted(net.items()) if amount}
    if decided and not unbalanced:
        return "settled"
    if not final:
        return "suspect"
    if not decided:
        resolved = ", ".join(f"shard {view.shard} {view.resolution}" for view in pieces)
        log.add(
            FindingKind.CROSS_SHARD_UNDECIDED,
            About.CROSS_SHARD,
            f"its pieces were resolved ({resolved}), but no shard records its decision "
            f"(abort marker {queries.marker_of_key(views[0].key)} or the commit)",
            "a decision at the coordinator",
            "none",
            transaction_id=transaction_id,
        )
    for currency, amount in unbalanced.items():
        parts = ", ".join(
            f"shard {view.shard} ({_role(view)}) {view.posted.get(currency, 0)}" for view in views
        )
        log.add(
            FindingKind.CROSS_SHARD_UNBALANCED,
            About.CROSS_SHARD,
            f"its clearing pieces net to {amount} {currency} (debits minus credits), "
            f"expected 0: {parts}",
            0,
            amount,
            transaction_id=transaction_id,
            currency=currency,
        )
    return "wrong"


def _judged_decisions(views: list[PieceView]) -> list[PieceView]:
    """The decisions among views but a hold's record moved out with its slot: it is judged
    where it went, moved in there."""
    return [view for view in views if view.decision and view.hold_fate != "moved"]


def _moved_coordinators(views: list[PieceView]) -> set[int]:
    """The shards a hold's record moved out of: its participants may name them."""
    return {view.shard for view in views if view.decision and view.hold_fate == "moved"}


def _judged_pieces(views: list[PieceView]) -> list[PieceView]:
    """The pieces among views but those moved out with their accounts: each is judged where it
    went, moved in there."""
    return [view for view in views if view.piece_id and view.resolution != "moved"]


def _judge_open_hold(
    views: list[PieceView], config: AuditConfig, log: FindingLog, final: bool, transaction_id: str
) -> str:
    """A hold committed and open, every piece held: nothing may be posted to clearing yet."""
    posted = [
        (view, currency, amount)
        for view in views
        for currency, amount in sorted(view.posted.items())
        if amount and (not config.currencies or currency in config.currencies)
    ]
    if not posted:
        return "open hold"
    if not final:
        return "suspect"
    for view, currency, amount in posted:
        log.add(
            FindingKind.CROSS_SHARD_UNBALANCED,
            About.CROSS_SHARD,
            f"its hold is open, yet shard {view.shard} ({_role(view)}) posted {amount} "
            f"{currency} to clearing (debits minus credits), expected 0 until its fate",
            0,
            amount,
            transaction_id=transaction_id,
            currency=currency,
        )
    return "wrong"


def _contradictions(
    decided: list[PieceView], pieces: list[PieceView], moved_from: set[int] | None = None
) -> list[str]:
    """What no order of events can explain: both decisions, a resolution against the
    decision (or a hold's fate), a piece naming another coordinator (than the decision's, or
    a shard the hold's record moved out of: moved_from)."""
    found = []
    decisions = {view.decision for view in decided}
    where = ", ".join(f"shard {view.shard} {view.decision}" for view in decided)
    hold = _hold_of(decided)
    if len(decisions) > 1 or "commit and abort" in decisions:
        found.append(f"both committed and aborted ({where})")
    elif decisions == {"commit"} and hold is not None:
        found += _hold_contradictions(hold, pieces)
    elif decisions == {"commit"}:
        for view in pieces:
            if view.resolution and view.resolution != "posted":
                found.append(
                    f"committed ({where}), but its piece {view.piece_id} on shard {view.shard} "
                    f"was {view.resolution}"
                )
    elif decisions == {"abort"}:
        for view in pieces:
            if "posted" in view.resolution:
                found.append(
                    f"aborted ({where}), but its piece {view.piece_id} on shard {view.shard} "
                    "was posted"
                )
    coordinators = {view.shard for view in decided} | (moved_from or set())
    for view in pieces:
        if coordinators and view.coordinator not in coordinators:
            found.append(
                f"its piece {view.piece_id} on shard {view.shard} names shard "
                f"{view.coordinator} as coordinator, but the decision is recorded on {where}"
            )
    return found


def _hold_contradictions(hold: PieceView, pieces: list[PieceView]) -> list[str]:
    """A hold's fate is decided once, at its coordinator; every piece settles the same way.
    (Pieces settled while the hold is open are judged by judge: maybe a snapshot race.)"""
    fate = hold.hold_fate
    if " and " in fate:
        return [
            f"its hold was resolved more than once at its coordinator (shard {hold.shard}: {fate})"
        ]
    if not fate:
        return []
    return [
        f"its hold was {fate} at its coordinator (shard {hold.shard}), but its piece "
        f"{view.piece_id} on shard {view.shard} was {view.resolution}"
        for view in pieces
        if view.resolution and view.resolution != fate
    ]


def _transaction_id(views: Iterable[PieceView]) -> str:
    ids = [view.transaction_id for view in views if view.transaction_id]
    return ids[0] if ids else ""


def _role(view: PieceView) -> str:
    if view.piece_id:
        return f"piece, {view.state}"
    if view.hold:
        return f"coordinator, hold {view.hold_fate or 'open'}"
    return f"coordinator, {'committed' if view.decision == 'commit' else view.decision}"


def _not_rechecked(log: FindingLog, views: list[PieceView], why: str) -> None:
    log.add(
        FindingKind.CROSS_SHARD_NOT_RECHECKED,
        About.CROSS_SHARD,
        f"did not net to zero, or showed no decision, in the first snapshots and was not read "
        f"again: {why}; audit again",
        transaction_id=_transaction_id(views),
    )


def tally(result: CrossShardReport, verdict: str, views: list[PieceView]) -> None:
    if verdict == "settled":
        result.settled_count += 1
    elif verdict == "open hold":
        result.open_hold_count += 1
    elif verdict == "in flight":
        result.in_flight_count += 1
        for view in views:
            for currency, amount in view.posted.items():
                result.in_flight_clearing[currency] = (
                    result.in_flight_clearing.get(currency, 0) + amount
                )
        if len(result.in_flight) < IN_FLIGHT_KEPT_MAX:
            result.in_flight.append(_in_flight(views))


def _in_flight(views: list[PieceView]) -> InFlight:
    decided = [view for view in views if view.decision]
    held = [view.deadline_ns for view in views if view.piece_id and not view.resolution]
    coordinator = decided[0].shard if decided else -1
    if coordinator < 0:
        coordinator = next((view.coordinator for view in views if view.piece_id), -1)
    decision = decided[0].decision if decided else ""
    hold = _hold_of(decided)
    if hold is not None:
        decision = f"hold {hold.hold_fate or 'open'}"
    return InFlight(
        transaction_id=_transaction_id(views),
        key=views[0].key,
        decision=decision,
        coordinator=coordinator,
        pieces=tuple((view.shard, view.state) for view in views),
        deadline_ns=min((d for d in held if d), default=0),
    )


async def _read_again(
    suspects: dict[str, list[PieceView]],
    reports: Sequence[ShardReport],
    dsns: Sequence[str],
    config: AuditConfig,
) -> None:
    """Fold into the suspects' views their rows written since each shard's first snapshot,
    read in new snapshots (taken after every first snapshot ended)."""
    keys = sorted(suspects)
    views = {(view.key, view.shard): view for group in suspects.values() for view in group}

    async def one(report: ShardReport) -> list[Any]:
        connection = await connect(dsns[report.shard], config)
        try:
            async with connection.transaction(isolation="repeatable_read", readonly=True):
                rows: list[Any] = await connection.fetch(
                    queries.CROSS_SHARD_AGAIN_SQL,
                    report.head_block,
                    keys,
                    timeout=config.statement_timeout_s,
                )
                return rows
        finally:
            await connection.close(timeout=config.connect_timeout_s)

    async with asyncio.TaskGroup() as group:
        tasks = {report.shard: group.create_task(one(report)) for report in reports}
    for shard, task in tasks.items():
        for row in task.result():
            view = views.get((row["key"], shard))
            if view is None:
                view = views[(row["key"], shard)] = PieceView(row["key"], shard)
                suspects[row["key"]].append(view)
            fold(view, row, None)
