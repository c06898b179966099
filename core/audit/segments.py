"""The audit's check `segments` (findings 1101-1103): a shard's cold segments verified and held
against its database (core/store/cold; `tally audit --segments ROOT`).

Each segment's manifest, files and blocks (every block's hash from its lines, its signature
given the audit's verify keys), each link from
one segment to the next, and every block a segment holds that the database still has, whose
hash must be the database's: a segment altered and made consistent again is still named, by the
database. Skipped without AuditConfig.segments_root.
"""

from __future__ import annotations

from typing import Any, Final

from core import signing
from core.audit.findings import About, AuditConfig, FindingKind, FindingLog
from core.store.cold import archive
from core.store.cold.verify import Finding

_CHAIN_CODES: Final = frozenset({"chain_break", "previous_segment"})
_DATABASE_CODES: Final = frozenset({"segment_database_mismatch", "segment_shard_mismatch"})


def kind_of(finding: Finding) -> FindingKind:
    if finding.code in _DATABASE_CODES:
        return FindingKind.SEGMENT_DATABASE_MISMATCH
    if finding.code in _CHAIN_CODES:
        return FindingKind.SEGMENT_CHAIN_BROKEN
    return FindingKind.SEGMENT_ALTERED


async def check_segments(connection: Any, config: AuditConfig, log: FindingLog) -> None:
    """The segments of the shard the database says it is (shard_identity), not of its place
    in the audit's list of DSNs."""
    if config.segments_root is None:
        return
    timeout_s = config.statement_timeout_s
    shard = await archive.shard_of(connection, timeout_s)
    verifier = signing.Verifier(config.verify_keys) if config.verify_keys else None
    root = config.segments_root
    _, findings = await archive.verify_shard(connection, root, shard, timeout_s, verifier)
    for finding in findings:
        where = ", ".join(part for part in (finding.segment, finding.file) if part)
        log.add(
            kind_of(finding),
            About.SEGMENT,
            f"segment {where or '?'}: {finding.message} ({finding.code})",
            block=finding.block or 0,
        )
