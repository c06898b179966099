"""The audit: are a ledger's books whole? Computed from its shard databases' rows alone.

`audit_cluster(dsns)` audits every shard, each in one REPEATABLE READ READ ONLY transaction (one
consistent snapshot, so a commit landing meanwhile cannot make a shard disagree with itself),
streaming every table through server-side cursors: memory is bounded by the cursor chunk and
one journal block, never by the size of the ledger. Checks, per shard:

- journal: blocks 1..N without gaps; each block's previous_hash is the hash of the block before;
  each block's hash recomputed from its rows (core/journal.py's canonical lines, built by
  core.audit.export.journal_line); its row counts; its postings fill its sequence range without
  gaps.
- postings: every posting is a leg of a transaction recorded in the same block, with the leg's
  account, side, amount and the transaction's timestamp; every leg has its posting; every
  transaction balances per currency.
- chains: every posting's balance-after equals the account's previous balance-after plus its
  own amounts.
- counters: every account's four counters equal the sums of its postings; must-not-exceed
  flags hold; closed accounts are empty; trial balance per currency (debits equal credits).
- clearing: the clearing accounts' counters are exactly the sums of the shard's cross-shard
  pieces; over the cluster, every cross-shard transaction decided on all its shards has clearing
  pieces that net to zero (check_cross_shard: exact while the cluster writes).
- holds: every open hold is a pending transaction, and none is past its deadline.
- lease: the writer lease records the journal's last block (a deleted tail shows here).
- anchors: blocks whose hashes were published elsewhere (an export's head) still have them.
- moves: the slot-move accounts' counters are exactly the moves' entries on them; the records a
  target moved in are those its move-in committed to (count and digest); over the cluster, every
  move-out has its move-in (else the move is half done), each finished move's slot-move pieces
  net to zero, and every moved record is its source's (check_moves).

Every finding is a structured Finding (kind, shard, block, transaction, posting, account,
currency, expected, found). core.audit.report makes one structured report of an audit, which
every renderer reads: the command line's text, JSON, Markdown and HTML (core.audit.render) and
the gRPC service's messages (shards/audit/server.py).

The package, by concern: findings (findings, the configuration, the reports the checks fill
in), source (read-only sessions, streamed reads), journal_pass (hash chain, block structure,
the lease, anchors), postings (a transaction's postings against its legs), accounts
(counters, flags, chains, holds), crossshard (the cross-shard judge), moves (slot moves), run
(a shard, the cluster), report and render (the structured report, its renderers); the
auditor's other tools are export (the export's files and their stand-alone verifier) and
exporter (which writes them), reconcile and statement. Their SQL is in core.store (audit,
export, statement). This module is the names callers use.
"""

from core.audit.accounts import check_counters, check_trial_balance, trial_balance
from core.audit.crossshard import PieceView, check_cross_shard
from core.audit.findings import (
    CHECK_NAMES,
    CLUSTER,
    COUNTER_NAMES,
    About,
    Anchor,
    AuditConfig,
    AuditReport,
    CrossShardReport,
    Finding,
    FindingKind,
    FindingLog,
    InFlight,
    Progress,
    ShardReport,
)
from core.audit.postings import expected_postings
from core.audit.run import audit_cluster, audit_shard, check_all, verify_chain
from core.audit.source import connect, describe_error, redact

__all__ = [
    "CHECK_NAMES",
    "CLUSTER",
    "COUNTER_NAMES",
    "About",
    "Anchor",
    "AuditConfig",
    "AuditReport",
    "CrossShardReport",
    "Finding",
    "FindingKind",
    "FindingLog",
    "InFlight",
    "PieceView",
    "Progress",
    "ShardReport",
    "audit_cluster",
    "audit_shard",
    "check_all",
    "check_counters",
    "check_cross_shard",
    "check_trial_balance",
    "connect",
    "describe_error",
    "expected_postings",
    "redact",
    "trial_balance",
    "verify_chain",
]
