from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuditCheck(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIT_CHECK_UNSPECIFIED: _ClassVar[AuditCheck]
    AUDIT_CHECK_JOURNAL: _ClassVar[AuditCheck]
    AUDIT_CHECK_POSTINGS: _ClassVar[AuditCheck]
    AUDIT_CHECK_CHAINS: _ClassVar[AuditCheck]
    AUDIT_CHECK_COUNTERS: _ClassVar[AuditCheck]
    AUDIT_CHECK_TRIAL_BALANCE: _ClassVar[AuditCheck]
    AUDIT_CHECK_CLEARING: _ClassVar[AuditCheck]
    AUDIT_CHECK_HOLDS: _ClassVar[AuditCheck]
    AUDIT_CHECK_LEASE: _ClassVar[AuditCheck]
    AUDIT_CHECK_ANCHORS: _ClassVar[AuditCheck]
    AUDIT_CHECK_MOVES: _ClassVar[AuditCheck]
    AUDIT_CHECK_SEGMENTS: _ClassVar[AuditCheck]

class FindingKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINDING_KIND_UNSPECIFIED: _ClassVar[FindingKind]
    FINDING_KIND_BLOCK_MISSING: _ClassVar[FindingKind]
    FINDING_KIND_EPOCH_DECREASED: _ClassVar[FindingKind]
    FINDING_KIND_POSTING_RANGE_BACKWARDS: _ClassVar[FindingKind]
    FINDING_KIND_POSTING_MISSING: _ClassVar[FindingKind]
    FINDING_KIND_POSTING_IN_WRONG_BLOCK: _ClassVar[FindingKind]
    FINDING_KIND_BLOCK_COUNT_MISMATCH: _ClassVar[FindingKind]
    FINDING_KIND_BLOCK_HASH_ALTERED: _ClassVar[FindingKind]
    FINDING_KIND_BLOCK_ROWS_ALTERED: _ClassVar[FindingKind]
    FINDING_KIND_BLOCK_HASH_MISMATCH: _ClassVar[FindingKind]
    FINDING_KIND_PREVIOUS_HASH_ALTERED: _ClassVar[FindingKind]
    FINDING_KIND_PREVIOUS_HASH_MISMATCH: _ClassVar[FindingKind]
    FINDING_KIND_ROW_OUTSIDE_JOURNAL: _ClassVar[FindingKind]
    FINDING_KIND_POSTING_BEYOND_JOURNAL: _ClassVar[FindingKind]
    FINDING_KIND_BLOCK_UNSIGNED: _ClassVar[FindingKind]
    FINDING_KIND_BLOCK_SIGNATURE_INVALID: _ClassVar[FindingKind]
    FINDING_KIND_BLOCK_SIGNED_BY_UNKNOWN_KEY: _ClassVar[FindingKind]
    FINDING_KIND_LEGS_UNREADABLE: _ClassVar[FindingKind]
    FINDING_KIND_TRANSACTION_UNBALANCED: _ClassVar[FindingKind]
    FINDING_KIND_POSTING_NOT_A_LEG: _ClassVar[FindingKind]
    FINDING_KIND_POSTING_DIFFERS_FROM_LEG: _ClassVar[FindingKind]
    FINDING_KIND_LEG_WITHOUT_POSTING: _ClassVar[FindingKind]
    FINDING_KIND_POSTING_WITHOUT_TRANSACTION: _ClassVar[FindingKind]
    FINDING_KIND_BALANCE_AFTER_BROKEN: _ClassVar[FindingKind]
    FINDING_KIND_POSTINGS_OF_UNKNOWN_ACCOUNT: _ClassVar[FindingKind]
    FINDING_KIND_COUNTER_MISMATCH: _ClassVar[FindingKind]
    FINDING_KIND_LIMIT_EXCEEDED: _ClassVar[FindingKind]
    FINDING_KIND_SPREAD_ACCOUNT_FLAG: _ClassVar[FindingKind]
    FINDING_KIND_CLOSED_ACCOUNT_NOT_EMPTY: _ClassVar[FindingKind]
    FINDING_KIND_TRIAL_BALANCE_UNBALANCED: _ClassVar[FindingKind]
    FINDING_KIND_CLEARING_COUNTERS_MISMATCH: _ClassVar[FindingKind]
    FINDING_KIND_CROSS_SHARD_UNBALANCED: _ClassVar[FindingKind]
    FINDING_KIND_CROSS_SHARD_CONTRADICTION: _ClassVar[FindingKind]
    FINDING_KIND_CROSS_SHARD_UNDECIDED: _ClassVar[FindingKind]
    FINDING_KIND_CROSS_SHARD_NOT_RECHECKED: _ClassVar[FindingKind]
    FINDING_KIND_HOLD_WITHOUT_TRANSACTION: _ClassVar[FindingKind]
    FINDING_KIND_HOLD_OF_WRONG_KIND: _ClassVar[FindingKind]
    FINDING_KIND_HOLD_STATUS_MISMATCH: _ClassVar[FindingKind]
    FINDING_KIND_HOLD_DEADLINE_MISMATCH: _ClassVar[FindingKind]
    FINDING_KIND_HOLD_PAST_DEADLINE: _ClassVar[FindingKind]
    FINDING_KIND_PENDING_WITHOUT_HOLD: _ClassVar[FindingKind]
    FINDING_KIND_LEASE_AHEAD_OF_JOURNAL: _ClassVar[FindingKind]
    FINDING_KIND_ANCHOR_MISMATCH: _ClassVar[FindingKind]
    FINDING_KIND_PUBLISHED_HEAD_MISMATCH: _ClassVar[FindingKind]
    FINDING_KIND_PUBLISHED_HEAD_MISSING: _ClassVar[FindingKind]
    FINDING_KIND_MOVE_HALF_DONE: _ClassVar[FindingKind]
    FINDING_KIND_MOVE_IN_WITHOUT_OUT: _ClassVar[FindingKind]
    FINDING_KIND_MOVE_UNBALANCED: _ClassVar[FindingKind]
    FINDING_KIND_MOVES_COUNTERS_MISMATCH: _ClassVar[FindingKind]
    FINDING_KIND_MOVED_RECORDS_MISMATCH: _ClassVar[FindingKind]
    FINDING_KIND_MOVED_RECORD_ALTERED: _ClassVar[FindingKind]
    FINDING_KIND_SEGMENT_ALTERED: _ClassVar[FindingKind]
    FINDING_KIND_SEGMENT_CHAIN_BROKEN: _ClassVar[FindingKind]
    FINDING_KIND_SEGMENT_DATABASE_MISMATCH: _ClassVar[FindingKind]
AUDIT_CHECK_UNSPECIFIED: AuditCheck
AUDIT_CHECK_JOURNAL: AuditCheck
AUDIT_CHECK_POSTINGS: AuditCheck
AUDIT_CHECK_CHAINS: AuditCheck
AUDIT_CHECK_COUNTERS: AuditCheck
AUDIT_CHECK_TRIAL_BALANCE: AuditCheck
AUDIT_CHECK_CLEARING: AuditCheck
AUDIT_CHECK_HOLDS: AuditCheck
AUDIT_CHECK_LEASE: AuditCheck
AUDIT_CHECK_ANCHORS: AuditCheck
AUDIT_CHECK_MOVES: AuditCheck
AUDIT_CHECK_SEGMENTS: AuditCheck
FINDING_KIND_UNSPECIFIED: FindingKind
FINDING_KIND_BLOCK_MISSING: FindingKind
FINDING_KIND_EPOCH_DECREASED: FindingKind
FINDING_KIND_POSTING_RANGE_BACKWARDS: FindingKind
FINDING_KIND_POSTING_MISSING: FindingKind
FINDING_KIND_POSTING_IN_WRONG_BLOCK: FindingKind
FINDING_KIND_BLOCK_COUNT_MISMATCH: FindingKind
FINDING_KIND_BLOCK_HASH_ALTERED: FindingKind
FINDING_KIND_BLOCK_ROWS_ALTERED: FindingKind
FINDING_KIND_BLOCK_HASH_MISMATCH: FindingKind
FINDING_KIND_PREVIOUS_HASH_ALTERED: FindingKind
FINDING_KIND_PREVIOUS_HASH_MISMATCH: FindingKind
FINDING_KIND_ROW_OUTSIDE_JOURNAL: FindingKind
FINDING_KIND_POSTING_BEYOND_JOURNAL: FindingKind
FINDING_KIND_BLOCK_UNSIGNED: FindingKind
FINDING_KIND_BLOCK_SIGNATURE_INVALID: FindingKind
FINDING_KIND_BLOCK_SIGNED_BY_UNKNOWN_KEY: FindingKind
FINDING_KIND_LEGS_UNREADABLE: FindingKind
FINDING_KIND_TRANSACTION_UNBALANCED: FindingKind
FINDING_KIND_POSTING_NOT_A_LEG: FindingKind
FINDING_KIND_POSTING_DIFFERS_FROM_LEG: FindingKind
FINDING_KIND_LEG_WITHOUT_POSTING: FindingKind
FINDING_KIND_POSTING_WITHOUT_TRANSACTION: FindingKind
FINDING_KIND_BALANCE_AFTER_BROKEN: FindingKind
FINDING_KIND_POSTINGS_OF_UNKNOWN_ACCOUNT: FindingKind
FINDING_KIND_COUNTER_MISMATCH: FindingKind
FINDING_KIND_LIMIT_EXCEEDED: FindingKind
FINDING_KIND_SPREAD_ACCOUNT_FLAG: FindingKind
FINDING_KIND_CLOSED_ACCOUNT_NOT_EMPTY: FindingKind
FINDING_KIND_TRIAL_BALANCE_UNBALANCED: FindingKind
FINDING_KIND_CLEARING_COUNTERS_MISMATCH: FindingKind
FINDING_KIND_CROSS_SHARD_UNBALANCED: FindingKind
FINDING_KIND_CROSS_SHARD_CONTRADICTION: FindingKind
FINDING_KIND_CROSS_SHARD_UNDECIDED: FindingKind
FINDING_KIND_CROSS_SHARD_NOT_RECHECKED: FindingKind
FINDING_KIND_HOLD_WITHOUT_TRANSACTION: FindingKind
FINDING_KIND_HOLD_OF_WRONG_KIND: FindingKind
FINDING_KIND_HOLD_STATUS_MISMATCH: FindingKind
FINDING_KIND_HOLD_DEADLINE_MISMATCH: FindingKind
FINDING_KIND_HOLD_PAST_DEADLINE: FindingKind
FINDING_KIND_PENDING_WITHOUT_HOLD: FindingKind
FINDING_KIND_LEASE_AHEAD_OF_JOURNAL: FindingKind
FINDING_KIND_ANCHOR_MISMATCH: FindingKind
FINDING_KIND_PUBLISHED_HEAD_MISMATCH: FindingKind
FINDING_KIND_PUBLISHED_HEAD_MISSING: FindingKind
FINDING_KIND_MOVE_HALF_DONE: FindingKind
FINDING_KIND_MOVE_IN_WITHOUT_OUT: FindingKind
FINDING_KIND_MOVE_UNBALANCED: FindingKind
FINDING_KIND_MOVES_COUNTERS_MISMATCH: FindingKind
FINDING_KIND_MOVED_RECORDS_MISMATCH: FindingKind
FINDING_KIND_MOVED_RECORD_ALTERED: FindingKind
FINDING_KIND_SEGMENT_ALTERED: FindingKind
FINDING_KIND_SEGMENT_CHAIN_BROKEN: FindingKind
FINDING_KIND_SEGMENT_DATABASE_MISMATCH: FindingKind

class Anchor(_message.Message):
    __slots__ = ("shard", "block", "hash_hex")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    HASH_HEX_FIELD_NUMBER: _ClassVar[int]
    shard: int
    block: int
    hash_hex: str
    def __init__(self, shard: _Optional[int] = ..., block: _Optional[int] = ..., hash_hex: _Optional[str] = ...) -> None: ...

class RunAuditRequest(_message.Message):
    __slots__ = ("shards", "currencies", "anchors", "hold_grace_seconds", "finding_count_max")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    CURRENCIES_FIELD_NUMBER: _ClassVar[int]
    ANCHORS_FIELD_NUMBER: _ClassVar[int]
    HOLD_GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FINDING_COUNT_MAX_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedScalarFieldContainer[int]
    currencies: _containers.RepeatedScalarFieldContainer[str]
    anchors: _containers.RepeatedCompositeFieldContainer[Anchor]
    hold_grace_seconds: float
    finding_count_max: int
    def __init__(self, shards: _Optional[_Iterable[int]] = ..., currencies: _Optional[_Iterable[str]] = ..., anchors: _Optional[_Iterable[_Union[Anchor, _Mapping]]] = ..., hold_grace_seconds: _Optional[float] = ..., finding_count_max: _Optional[int] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("progress", "report")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    progress: AuditProgress
    report: AuditReport
    def __init__(self, progress: _Optional[_Union[AuditProgress, _Mapping]] = ..., report: _Optional[_Union[AuditReport, _Mapping]] = ...) -> None: ...

class AuditProgress(_message.Message):
    __slots__ = ("shard", "phase", "done", "total")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    shard: int
    phase: str
    done: int
    total: int
    def __init__(self, shard: _Optional[int] = ..., phase: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class AuditReport(_message.Message):
    __slots__ = ("ok", "complete", "started_at_ns", "duration_seconds", "shards", "trial_balance", "cross_shard", "findings", "finding_count", "findings_truncated")
    OK_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    TRIAL_BALANCE_FIELD_NUMBER: _ClassVar[int]
    CROSS_SHARD_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    FINDING_COUNT_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    complete: bool
    started_at_ns: int
    duration_seconds: float
    shards: _containers.RepeatedCompositeFieldContainer[ShardAudit]
    trial_balance: _containers.RepeatedCompositeFieldContainer[CurrencyBalance]
    cross_shard: CrossShard
    findings: _containers.RepeatedCompositeFieldContainer[Finding]
    finding_count: int
    findings_truncated: bool
    def __init__(self, ok: _Optional[bool] = ..., complete: _Optional[bool] = ..., started_at_ns: _Optional[int] = ..., duration_seconds: _Optional[float] = ..., shards: _Optional[_Iterable[_Union[ShardAudit, _Mapping]]] = ..., trial_balance: _Optional[_Iterable[_Union[CurrencyBalance, _Mapping]]] = ..., cross_shard: _Optional[_Union[CrossShard, _Mapping]] = ..., findings: _Optional[_Iterable[_Union[Finding, _Mapping]]] = ..., finding_count: _Optional[int] = ..., findings_truncated: _Optional[bool] = ...) -> None: ...

class ShardAudit(_message.Message):
    __slots__ = ("shard", "target", "ok", "error", "duration_seconds", "block_count", "transaction_count", "posting_count", "account_count", "hold_count", "head_block", "head_hash", "checks", "trial_balance", "cross_shard_count")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    POSTING_COUNT_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_COUNT_FIELD_NUMBER: _ClassVar[int]
    HOLD_COUNT_FIELD_NUMBER: _ClassVar[int]
    HEAD_BLOCK_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    TRIAL_BALANCE_FIELD_NUMBER: _ClassVar[int]
    CROSS_SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    shard: int
    target: str
    ok: bool
    error: str
    duration_seconds: float
    block_count: int
    transaction_count: int
    posting_count: int
    account_count: int
    hold_count: int
    head_block: int
    head_hash: str
    checks: _containers.RepeatedCompositeFieldContainer[CheckResult]
    trial_balance: _containers.RepeatedCompositeFieldContainer[CurrencyBalance]
    cross_shard_count: int
    def __init__(self, shard: _Optional[int] = ..., target: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ..., duration_seconds: _Optional[float] = ..., block_count: _Optional[int] = ..., transaction_count: _Optional[int] = ..., posting_count: _Optional[int] = ..., account_count: _Optional[int] = ..., hold_count: _Optional[int] = ..., head_block: _Optional[int] = ..., head_hash: _Optional[str] = ..., checks: _Optional[_Iterable[_Union[CheckResult, _Mapping]]] = ..., trial_balance: _Optional[_Iterable[_Union[CurrencyBalance, _Mapping]]] = ..., cross_shard_count: _Optional[int] = ...) -> None: ...

class CheckResult(_message.Message):
    __slots__ = ("check", "finding_count")
    CHECK_FIELD_NUMBER: _ClassVar[int]
    FINDING_COUNT_FIELD_NUMBER: _ClassVar[int]
    check: AuditCheck
    finding_count: int
    def __init__(self, check: _Optional[_Union[AuditCheck, str]] = ..., finding_count: _Optional[int] = ...) -> None: ...

class CurrencyBalance(_message.Message):
    __slots__ = ("currency", "debits_posted", "credits_posted", "debits_pending", "credits_pending", "balanced")
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    DEBITS_POSTED_FIELD_NUMBER: _ClassVar[int]
    CREDITS_POSTED_FIELD_NUMBER: _ClassVar[int]
    DEBITS_PENDING_FIELD_NUMBER: _ClassVar[int]
    CREDITS_PENDING_FIELD_NUMBER: _ClassVar[int]
    BALANCED_FIELD_NUMBER: _ClassVar[int]
    currency: str
    debits_posted: str
    credits_posted: str
    debits_pending: str
    credits_pending: str
    balanced: bool
    def __init__(self, currency: _Optional[str] = ..., debits_posted: _Optional[str] = ..., credits_posted: _Optional[str] = ..., debits_pending: _Optional[str] = ..., credits_pending: _Optional[str] = ..., balanced: _Optional[bool] = ...) -> None: ...

class CrossShard(_message.Message):
    __slots__ = ("checked", "reason", "settled_count", "in_flight_count", "rechecked_count", "in_flight", "open_hold_count")
    CHECKED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SETTLED_COUNT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_COUNT_FIELD_NUMBER: _ClassVar[int]
    RECHECKED_COUNT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    OPEN_HOLD_COUNT_FIELD_NUMBER: _ClassVar[int]
    checked: bool
    reason: str
    settled_count: int
    in_flight_count: int
    rechecked_count: int
    in_flight: _containers.RepeatedCompositeFieldContainer[InFlightTransaction]
    open_hold_count: int
    def __init__(self, checked: _Optional[bool] = ..., reason: _Optional[str] = ..., settled_count: _Optional[int] = ..., in_flight_count: _Optional[int] = ..., rechecked_count: _Optional[int] = ..., in_flight: _Optional[_Iterable[_Union[InFlightTransaction, _Mapping]]] = ..., open_hold_count: _Optional[int] = ...) -> None: ...

class InFlightTransaction(_message.Message):
    __slots__ = ("transaction_id", "attempt_key", "decision", "coordinator_shard", "pieces", "deadline_ns")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_KEY_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_SHARD_FIELD_NUMBER: _ClassVar[int]
    PIECES_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_NS_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    attempt_key: str
    decision: str
    coordinator_shard: int
    pieces: _containers.RepeatedCompositeFieldContainer[PieceState]
    deadline_ns: int
    def __init__(self, transaction_id: _Optional[str] = ..., attempt_key: _Optional[str] = ..., decision: _Optional[str] = ..., coordinator_shard: _Optional[int] = ..., pieces: _Optional[_Iterable[_Union[PieceState, _Mapping]]] = ..., deadline_ns: _Optional[int] = ...) -> None: ...

class PieceState(_message.Message):
    __slots__ = ("shard", "state")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    shard: int
    state: str
    def __init__(self, shard: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class Finding(_message.Message):
    __slots__ = ("kind", "check", "shard", "about", "block", "block_last", "transaction_id", "posting_sequence", "account_id", "currency", "expected", "found", "message", "text", "move_id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    ABOUT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    BLOCK_LAST_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    POSTING_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MOVE_ID_FIELD_NUMBER: _ClassVar[int]
    kind: FindingKind
    check: AuditCheck
    shard: int
    about: str
    block: int
    block_last: int
    transaction_id: str
    posting_sequence: int
    account_id: str
    currency: str
    expected: str
    found: str
    message: str
    text: str
    move_id: str
    def __init__(self, kind: _Optional[_Union[FindingKind, str]] = ..., check: _Optional[_Union[AuditCheck, str]] = ..., shard: _Optional[int] = ..., about: _Optional[str] = ..., block: _Optional[int] = ..., block_last: _Optional[int] = ..., transaction_id: _Optional[str] = ..., posting_sequence: _Optional[int] = ..., account_id: _Optional[str] = ..., currency: _Optional[str] = ..., expected: _Optional[str] = ..., found: _Optional[str] = ..., message: _Optional[str] = ..., text: _Optional[str] = ..., move_id: _Optional[str] = ...) -> None: ...

class VerifyChainRequest(_message.Message):
    __slots__ = ("shards", "anchors", "finding_count_max")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    ANCHORS_FIELD_NUMBER: _ClassVar[int]
    FINDING_COUNT_MAX_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedScalarFieldContainer[int]
    anchors: _containers.RepeatedCompositeFieldContainer[Anchor]
    finding_count_max: int
    def __init__(self, shards: _Optional[_Iterable[int]] = ..., anchors: _Optional[_Iterable[_Union[Anchor, _Mapping]]] = ..., finding_count_max: _Optional[int] = ...) -> None: ...

class VerifyChainResponse(_message.Message):
    __slots__ = ("ok", "complete", "shards", "findings", "finding_count", "findings_truncated")
    OK_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    FINDING_COUNT_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    complete: bool
    shards: _containers.RepeatedCompositeFieldContainer[ChainVerification]
    findings: _containers.RepeatedCompositeFieldContainer[Finding]
    finding_count: int
    findings_truncated: bool
    def __init__(self, ok: _Optional[bool] = ..., complete: _Optional[bool] = ..., shards: _Optional[_Iterable[_Union[ChainVerification, _Mapping]]] = ..., findings: _Optional[_Iterable[_Union[Finding, _Mapping]]] = ..., finding_count: _Optional[int] = ..., findings_truncated: _Optional[bool] = ...) -> None: ...

class ChainVerification(_message.Message):
    __slots__ = ("shard", "target", "ok", "error", "block_count", "posting_count", "head_block", "head_hash")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BLOCK_COUNT_FIELD_NUMBER: _ClassVar[int]
    POSTING_COUNT_FIELD_NUMBER: _ClassVar[int]
    HEAD_BLOCK_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    shard: int
    target: str
    ok: bool
    error: str
    block_count: int
    posting_count: int
    head_block: int
    head_hash: str
    def __init__(self, shard: _Optional[int] = ..., target: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ..., block_count: _Optional[int] = ..., posting_count: _Optional[int] = ..., head_block: _Optional[int] = ..., head_hash: _Optional[str] = ...) -> None: ...

class TrialBalanceRequest(_message.Message):
    __slots__ = ("shards", "currencies")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    CURRENCIES_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedScalarFieldContainer[int]
    currencies: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, shards: _Optional[_Iterable[int]] = ..., currencies: _Optional[_Iterable[str]] = ...) -> None: ...

class TrialBalanceResponse(_message.Message):
    __slots__ = ("balanced", "shards", "cluster")
    BALANCED_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    balanced: bool
    shards: _containers.RepeatedCompositeFieldContainer[ShardBalance]
    cluster: _containers.RepeatedCompositeFieldContainer[CurrencyBalance]
    def __init__(self, balanced: _Optional[bool] = ..., shards: _Optional[_Iterable[_Union[ShardBalance, _Mapping]]] = ..., cluster: _Optional[_Iterable[_Union[CurrencyBalance, _Mapping]]] = ...) -> None: ...

class ShardBalance(_message.Message):
    __slots__ = ("shard", "target", "error", "balances")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BALANCES_FIELD_NUMBER: _ClassVar[int]
    shard: int
    target: str
    error: str
    balances: _containers.RepeatedCompositeFieldContainer[CurrencyBalance]
    def __init__(self, shard: _Optional[int] = ..., target: _Optional[str] = ..., error: _Optional[str] = ..., balances: _Optional[_Iterable[_Union[CurrencyBalance, _Mapping]]] = ...) -> None: ...
