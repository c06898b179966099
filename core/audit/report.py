"""One structured report of an audit: every figure and finding of an AuditReport, derived once.

structured(report) orders what the checks filled in (currencies sorted, checks in CHECK_NAMES
order, findings shard by shard then the cluster's) and derives what every renderer shows
(verdicts, balanced flags, per-check counts, totals), so that the command line's text, JSON,
Markdown and HTML (core.audit.render) and the service's protobuf messages
(shards/audit/server.py) cannot disagree: each only formats this tree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from core.audit.findings import (
    CHECK_NAMES,
    AuditReport,
    CrossShardReport,
    Finding,
    InFlight,
    ShardReport,
)


@dataclass(frozen=True, slots=True)
class Balance:
    """A currency's four counter sums, in minor units (over a shard, the cluster, an export)."""

    currency: str
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int

    @property
    def counters(self) -> tuple[int, int, int, int]:
        """In COUNTER_NAMES order."""
        return (self.debits_posted, self.credits_posted, self.debits_pending, self.credits_pending)

    @property
    def balanced(self) -> bool:
        return self.debits_posted == self.credits_posted and (
            self.debits_pending == self.credits_pending
        )


def balances(sums: Mapping[str, Sequence[int]]) -> tuple[Balance, ...]:
    """Per-currency [debits_posted, credits_posted, debits_pending, credits_pending], as the
    reports keep them, in currency order."""
    return tuple(
        Balance(currency, dp, cp, dq, cq) for currency, (dp, cp, dq, cq) in sorted(sums.items())
    )


def check_number(name: str) -> int:
    """A check's number, 1 (journal) to 9 (anchors): tally.v1.AuditCheck's, and the hundreds of
    its FindingKinds."""
    return CHECK_NAMES.index(name) + 1


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    number: int
    finding_count: int


@dataclass(frozen=True, slots=True)
class ShardSummary:
    shard: int
    target: str
    ok: bool
    # Why the shard could not be audited at all ("": it was).
    error: str
    duration_s: float
    block_count: int
    transaction_count: int
    posting_count: int
    account_count: int
    hold_count: int
    head_block: int
    head_hash: str
    # Every check, in CHECK_NAMES order.
    checks: tuple[CheckResult, ...]
    trial_balance: tuple[Balance, ...]
    cross_shard_count: int
    # The findings kept (the first of each check), and how many there were in all.
    findings: tuple[Finding, ...]
    finding_count: int

    def balance(self, currency: str) -> Balance | None:
        return next((b for b in self.trial_balance if b.currency == currency), None)


@dataclass(frozen=True, slots=True)
class CrossShardSummary:
    checked: bool
    # Why not checked ("" when checked).
    reason: str
    settled_count: int
    in_flight_count: int
    open_hold_count: int
    rechecked_count: int
    # The first in-flight transactions (all are counted).
    in_flight: tuple[InFlight, ...]
    # Net posted clearing of the in-flight ones, per currency in currency order.
    in_flight_clearing: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class StructuredReport:
    ok: bool
    # Every shard asked for was audited.
    complete: bool
    started_at_ns: int
    duration_s: float
    shards: tuple[ShardSummary, ...]
    # Over every shard.
    trial_balance: tuple[Balance, ...]
    posting_count: int
    account_count: int
    cross_shard: CrossShardSummary
    # Every shard's kept findings, in shard order, then the cluster's.
    findings: tuple[Finding, ...]
    finding_count: int


def structured(report: AuditReport) -> StructuredReport:
    shards = tuple(shard_summary(shard) for shard in report.shards)
    return StructuredReport(
        ok=report.ok,
        complete=report.complete,
        started_at_ns=report.started_at_ns,
        duration_s=report.duration_s,
        shards=shards,
        trial_balance=balances(report.trial_balance),
        posting_count=sum(shard.posting_count for shard in shards),
        account_count=sum(shard.account_count for shard in shards),
        cross_shard=_cross_shard_summary(report.cross_shard),
        findings=tuple(report.problems),
        finding_count=report.problem_count,
    )


def shard_summary(shard: ShardReport) -> ShardSummary:
    """One shard's part of the report (also a chain verification's whole result)."""
    counts = shard.problem_counts
    return ShardSummary(
        shard=shard.shard,
        target=shard.target,
        ok=shard.ok,
        error=shard.error,
        duration_s=shard.duration_s,
        block_count=shard.block_count,
        transaction_count=shard.transaction_count,
        posting_count=shard.posting_count,
        account_count=shard.account_count,
        hold_count=shard.hold_count,
        head_block=shard.head_block,
        head_hash=shard.head_hash,
        checks=tuple(
            CheckResult(name, check_number(name), counts.get(name, 0)) for name in CHECK_NAMES
        ),
        trial_balance=balances(shard.trial_balance),
        cross_shard_count=shard.cross_shard_count,
        findings=tuple(shard.problems),
        finding_count=sum(counts.values()),
    )


def _cross_shard_summary(cross: CrossShardReport) -> CrossShardSummary:
    return CrossShardSummary(
        checked=cross.checked,
        reason=cross.reason,
        settled_count=cross.settled_count,
        in_flight_count=cross.in_flight_count,
        open_hold_count=cross.open_hold_count,
        rechecked_count=cross.rechecked_count,
        in_flight=tuple(cross.in_flight),
        in_flight_clearing=tuple(sorted(cross.in_flight_clearing.items())),
    )
