from tally.v1 import ledger_pb2 as _ledger_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MovedPart(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MOVED_PART_UNSPECIFIED: _ClassVar[MovedPart]
    MOVED_PART_ACCOUNTS: _ClassVar[MovedPart]
    MOVED_PART_RECORDS: _ClassVar[MovedPart]
    MOVED_PART_PRECOPY_RECORDS: _ClassVar[MovedPart]
    MOVED_PART_CHANGED_RECORDS: _ClassVar[MovedPart]
    MOVED_PART_STUCK_SLOTS: _ClassVar[MovedPart]
    MOVED_PART_PIECES: _ClassVar[MovedPart]
    MOVED_PART_HELD_PIECES: _ClassVar[MovedPart]

class HoldFate(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOLD_FATE_UNSPECIFIED: _ClassVar[HoldFate]
    HOLD_FATE_OPEN: _ClassVar[HoldFate]
    HOLD_FATE_POSTED: _ClassVar[HoldFate]
    HOLD_FATE_VOIDED: _ClassVar[HoldFate]
    HOLD_FATE_EXPIRED: _ClassVar[HoldFate]
MOVED_PART_UNSPECIFIED: MovedPart
MOVED_PART_ACCOUNTS: MovedPart
MOVED_PART_RECORDS: MovedPart
MOVED_PART_PRECOPY_RECORDS: MovedPart
MOVED_PART_CHANGED_RECORDS: MovedPart
MOVED_PART_STUCK_SLOTS: MovedPart
MOVED_PART_PIECES: MovedPart
MOVED_PART_HELD_PIECES: MovedPart
HOLD_FATE_UNSPECIFIED: HoldFate
HOLD_FATE_OPEN: HoldFate
HOLD_FATE_POSTED: HoldFate
HOLD_FATE_VOIDED: HoldFate
HOLD_FATE_EXPIRED: HoldFate

class MovedAccount(_message.Message):
    __slots__ = ("line", "debits_posted", "credits_posted", "version", "closed_at_ns")
    LINE_FIELD_NUMBER: _ClassVar[int]
    DEBITS_POSTED_FIELD_NUMBER: _ClassVar[int]
    CREDITS_POSTED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    line: str
    debits_posted: int
    credits_posted: int
    version: int
    closed_at_ns: int
    def __init__(self, line: _Optional[str] = ..., debits_posted: _Optional[int] = ..., credits_posted: _Optional[int] = ..., version: _Optional[int] = ..., closed_at_ns: _Optional[int] = ...) -> None: ...

class MovedRecord(_message.Message):
    __slots__ = ("line", "status", "expires_at_ns", "resolved_by_id", "reversed_by_id")
    LINE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_NS_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_BY_ID_FIELD_NUMBER: _ClassVar[int]
    REVERSED_BY_ID_FIELD_NUMBER: _ClassVar[int]
    line: str
    status: int
    expires_at_ns: int
    resolved_by_id: str
    reversed_by_id: str
    def __init__(self, line: _Optional[str] = ..., status: _Optional[int] = ..., expires_at_ns: _Optional[int] = ..., resolved_by_id: _Optional[str] = ..., reversed_by_id: _Optional[str] = ...) -> None: ...

class MoveSlotsOutRequest(_message.Message):
    __slots__ = ("move_id", "slots", "target_shard", "pieces_checked", "checked_piece_ids")
    MOVE_ID_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    TARGET_SHARD_FIELD_NUMBER: _ClassVar[int]
    PIECES_CHECKED_FIELD_NUMBER: _ClassVar[int]
    CHECKED_PIECE_IDS_FIELD_NUMBER: _ClassVar[int]
    move_id: str
    slots: _containers.RepeatedScalarFieldContainer[int]
    target_shard: int
    pieces_checked: bool
    checked_piece_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, move_id: _Optional[str] = ..., slots: _Optional[_Iterable[int]] = ..., target_shard: _Optional[int] = ..., pieces_checked: _Optional[bool] = ..., checked_piece_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class MoveSlotsOutResponse(_message.Message):
    __slots__ = ("accounts", "records", "block_sequence", "again", "spread_accounts", "totals")
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    AGAIN_FIELD_NUMBER: _ClassVar[int]
    SPREAD_ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    accounts: _containers.RepeatedCompositeFieldContainer[MovedAccount]
    records: _containers.RepeatedCompositeFieldContainer[MovedRecord]
    block_sequence: int
    again: bool
    spread_accounts: _containers.RepeatedCompositeFieldContainer[MovedAccount]
    totals: MoveTotals
    def __init__(self, accounts: _Optional[_Iterable[_Union[MovedAccount, _Mapping]]] = ..., records: _Optional[_Iterable[_Union[MovedRecord, _Mapping]]] = ..., block_sequence: _Optional[int] = ..., again: _Optional[bool] = ..., spread_accounts: _Optional[_Iterable[_Union[MovedAccount, _Mapping]]] = ..., totals: _Optional[_Union[MoveTotals, _Mapping]] = ...) -> None: ...

class MoveTotals(_message.Message):
    __slots__ = ("account_count", "accounts_digest", "record_count", "records_digest", "records_states_digest")
    ACCOUNT_COUNT_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    RECORD_COUNT_FIELD_NUMBER: _ClassVar[int]
    RECORDS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    RECORDS_STATES_DIGEST_FIELD_NUMBER: _ClassVar[int]
    account_count: int
    accounts_digest: str
    record_count: int
    records_digest: str
    records_states_digest: str
    def __init__(self, account_count: _Optional[int] = ..., accounts_digest: _Optional[str] = ..., record_count: _Optional[int] = ..., records_digest: _Optional[str] = ..., records_states_digest: _Optional[str] = ...) -> None: ...

class MoveSlotsInRequest(_message.Message):
    __slots__ = ("move_id", "slots", "source_shard", "accounts", "records", "spread_accounts", "staged", "totals")
    MOVE_ID_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SHARD_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    SPREAD_ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    STAGED_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    move_id: str
    slots: _containers.RepeatedScalarFieldContainer[int]
    source_shard: int
    accounts: _containers.RepeatedCompositeFieldContainer[MovedAccount]
    records: _containers.RepeatedCompositeFieldContainer[MovedRecord]
    spread_accounts: _containers.RepeatedCompositeFieldContainer[MovedAccount]
    staged: bool
    totals: MoveTotals
    def __init__(self, move_id: _Optional[str] = ..., slots: _Optional[_Iterable[int]] = ..., source_shard: _Optional[int] = ..., accounts: _Optional[_Iterable[_Union[MovedAccount, _Mapping]]] = ..., records: _Optional[_Iterable[_Union[MovedRecord, _Mapping]]] = ..., spread_accounts: _Optional[_Iterable[_Union[MovedAccount, _Mapping]]] = ..., staged: _Optional[bool] = ..., totals: _Optional[_Union[MoveTotals, _Mapping]] = ...) -> None: ...

class MovingPiece(_message.Message):
    __slots__ = ("piece_id", "slots")
    PIECE_ID_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    piece_id: str
    slots: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, piece_id: _Optional[str] = ..., slots: _Optional[_Iterable[int]] = ...) -> None: ...

class StuckSlot(_message.Message):
    __slots__ = ("slot", "reason")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    slot: int
    reason: str
    def __init__(self, slot: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ReadMovedOutRequest(_message.Message):
    __slots__ = ("move_id", "slots", "part", "after_id", "item_count_max", "since_sequence", "target_shard", "piece_ids")
    MOVE_ID_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_MAX_FIELD_NUMBER: _ClassVar[int]
    SINCE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_SHARD_FIELD_NUMBER: _ClassVar[int]
    PIECE_IDS_FIELD_NUMBER: _ClassVar[int]
    move_id: str
    slots: _containers.RepeatedScalarFieldContainer[int]
    part: MovedPart
    after_id: str
    item_count_max: int
    since_sequence: int
    target_shard: int
    piece_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, move_id: _Optional[str] = ..., slots: _Optional[_Iterable[int]] = ..., part: _Optional[_Union[MovedPart, str]] = ..., after_id: _Optional[str] = ..., item_count_max: _Optional[int] = ..., since_sequence: _Optional[int] = ..., target_shard: _Optional[int] = ..., piece_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ReadMovedOutResponse(_message.Message):
    __slots__ = ("accounts", "records", "next_after_id", "done", "snapshot_sequence", "stuck_slots", "moving_pieces", "held_piece_ids")
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STUCK_SLOTS_FIELD_NUMBER: _ClassVar[int]
    MOVING_PIECES_FIELD_NUMBER: _ClassVar[int]
    HELD_PIECE_IDS_FIELD_NUMBER: _ClassVar[int]
    accounts: _containers.RepeatedCompositeFieldContainer[MovedAccount]
    records: _containers.RepeatedCompositeFieldContainer[MovedRecord]
    next_after_id: str
    done: bool
    snapshot_sequence: int
    stuck_slots: _containers.RepeatedCompositeFieldContainer[StuckSlot]
    moving_pieces: _containers.RepeatedCompositeFieldContainer[MovingPiece]
    held_piece_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, accounts: _Optional[_Iterable[_Union[MovedAccount, _Mapping]]] = ..., records: _Optional[_Iterable[_Union[MovedRecord, _Mapping]]] = ..., next_after_id: _Optional[str] = ..., done: _Optional[bool] = ..., snapshot_sequence: _Optional[int] = ..., stuck_slots: _Optional[_Iterable[_Union[StuckSlot, _Mapping]]] = ..., moving_pieces: _Optional[_Iterable[_Union[MovingPiece, _Mapping]]] = ..., held_piece_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class StageMoveInRequest(_message.Message):
    __slots__ = ("move_id", "slots", "source_shard", "accounts", "records", "restart")
    MOVE_ID_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SHARD_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    move_id: str
    slots: _containers.RepeatedScalarFieldContainer[int]
    source_shard: int
    accounts: _containers.RepeatedCompositeFieldContainer[MovedAccount]
    records: _containers.RepeatedCompositeFieldContainer[MovedRecord]
    restart: bool
    def __init__(self, move_id: _Optional[str] = ..., slots: _Optional[_Iterable[int]] = ..., source_shard: _Optional[int] = ..., accounts: _Optional[_Iterable[_Union[MovedAccount, _Mapping]]] = ..., records: _Optional[_Iterable[_Union[MovedRecord, _Mapping]]] = ..., restart: _Optional[bool] = ...) -> None: ...

class StageMoveInResponse(_message.Message):
    __slots__ = ("staged_count",)
    STAGED_COUNT_FIELD_NUMBER: _ClassVar[int]
    staged_count: int
    def __init__(self, staged_count: _Optional[int] = ...) -> None: ...

class MoveSlotsInResponse(_message.Message):
    __slots__ = ("again",)
    AGAIN_FIELD_NUMBER: _ClassVar[int]
    again: bool
    def __init__(self, again: _Optional[bool] = ...) -> None: ...

class HoldState(_message.Message):
    __slots__ = ("fate", "expires_at_ns", "resolution", "deciding")
    FATE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_NS_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    DECIDING_FIELD_NUMBER: _ClassVar[int]
    fate: HoldFate
    expires_at_ns: int
    resolution: _ledger_pb2.Transaction
    deciding: bool
    def __init__(self, fate: _Optional[_Union[HoldFate, str]] = ..., expires_at_ns: _Optional[int] = ..., resolution: _Optional[_Union[_ledger_pb2.Transaction, _Mapping]] = ..., deciding: _Optional[bool] = ...) -> None: ...

class PrepareItem(_message.Message):
    __slots__ = ("piece", "coordinator_shard", "deadline_seconds", "attempt", "reverses_id", "decides")
    PIECE_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_SHARD_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REVERSES_ID_FIELD_NUMBER: _ClassVar[int]
    DECIDES_FIELD_NUMBER: _ClassVar[int]
    piece: _ledger_pb2.Transaction
    coordinator_shard: int
    deadline_seconds: int
    attempt: str
    reverses_id: str
    decides: bool
    def __init__(self, piece: _Optional[_Union[_ledger_pb2.Transaction, _Mapping]] = ..., coordinator_shard: _Optional[int] = ..., deadline_seconds: _Optional[int] = ..., attempt: _Optional[str] = ..., reverses_id: _Optional[str] = ..., decides: _Optional[bool] = ...) -> None: ...

class PrepareRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[PrepareItem]
    def __init__(self, items: _Optional[_Iterable[_Union[PrepareItem, _Mapping]]] = ...) -> None: ...

class PrepareResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_ledger_pb2.ItemResult]
    def __init__(self, results: _Optional[_Iterable[_Union[_ledger_pb2.ItemResult, _Mapping]]] = ...) -> None: ...

class CommitItem(_message.Message):
    __slots__ = ("piece", "attempt", "reverses_id", "as_sent", "decide_before_ns", "legs_digest", "participant_shards", "reversal_of")
    PIECE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REVERSES_ID_FIELD_NUMBER: _ClassVar[int]
    AS_SENT_FIELD_NUMBER: _ClassVar[int]
    DECIDE_BEFORE_NS_FIELD_NUMBER: _ClassVar[int]
    LEGS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_SHARDS_FIELD_NUMBER: _ClassVar[int]
    REVERSAL_OF_FIELD_NUMBER: _ClassVar[int]
    piece: _ledger_pb2.Transaction
    attempt: str
    reverses_id: str
    as_sent: bool
    decide_before_ns: int
    legs_digest: str
    participant_shards: _containers.RepeatedScalarFieldContainer[int]
    reversal_of: str
    def __init__(self, piece: _Optional[_Union[_ledger_pb2.Transaction, _Mapping]] = ..., attempt: _Optional[str] = ..., reverses_id: _Optional[str] = ..., as_sent: _Optional[bool] = ..., decide_before_ns: _Optional[int] = ..., legs_digest: _Optional[str] = ..., participant_shards: _Optional[_Iterable[int]] = ..., reversal_of: _Optional[str] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[CommitItem]
    def __init__(self, items: _Optional[_Iterable[_Union[CommitItem, _Mapping]]] = ...) -> None: ...

class CommitResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_ledger_pb2.ItemResult]
    def __init__(self, results: _Optional[_Iterable[_Union[_ledger_pb2.ItemResult, _Mapping]]] = ...) -> None: ...

class AbortItem(_message.Message):
    __slots__ = ("transaction_id", "reason", "message", "attempt", "piece", "legs_digest")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PIECE_FIELD_NUMBER: _ClassVar[int]
    LEGS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    reason: _ledger_pb2.ResultCode
    message: str
    attempt: str
    piece: _ledger_pb2.Transaction
    legs_digest: str
    def __init__(self, transaction_id: _Optional[str] = ..., reason: _Optional[_Union[_ledger_pb2.ResultCode, str]] = ..., message: _Optional[str] = ..., attempt: _Optional[str] = ..., piece: _Optional[_Union[_ledger_pb2.Transaction, _Mapping]] = ..., legs_digest: _Optional[str] = ...) -> None: ...

class AbortRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[AbortItem]
    def __init__(self, items: _Optional[_Iterable[_Union[AbortItem, _Mapping]]] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("committed", "reason", "message", "timestamp_ns", "hold", "moved")
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    HOLD_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    committed: bool
    reason: _ledger_pb2.ResultCode
    message: str
    timestamp_ns: int
    hold: HoldState
    moved: bool
    def __init__(self, committed: _Optional[bool] = ..., reason: _Optional[_Union[_ledger_pb2.ResultCode, str]] = ..., message: _Optional[str] = ..., timestamp_ns: _Optional[int] = ..., hold: _Optional[_Union[HoldState, _Mapping]] = ..., moved: _Optional[bool] = ...) -> None: ...

class AbortResponse(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ...) -> None: ...

class ResolveItem(_message.Message):
    __slots__ = ("transaction_id", "commit", "attempt")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    commit: bool
    attempt: str
    def __init__(self, transaction_id: _Optional[str] = ..., commit: _Optional[bool] = ..., attempt: _Optional[str] = ...) -> None: ...

class ResolveRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ResolveItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ResolveItem, _Mapping]]] = ...) -> None: ...

class ResolveResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_ledger_pb2.ItemResult]
    def __init__(self, results: _Optional[_Iterable[_Union[_ledger_pb2.ItemResult, _Mapping]]] = ...) -> None: ...

class DecideHoldItem(_message.Message):
    __slots__ = ("resolution", "decide_before_ns")
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    DECIDE_BEFORE_NS_FIELD_NUMBER: _ClassVar[int]
    resolution: _ledger_pb2.Transaction
    decide_before_ns: int
    def __init__(self, resolution: _Optional[_Union[_ledger_pb2.Transaction, _Mapping]] = ..., decide_before_ns: _Optional[int] = ...) -> None: ...

class DecideHoldsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[DecideHoldItem]
    def __init__(self, items: _Optional[_Iterable[_Union[DecideHoldItem, _Mapping]]] = ...) -> None: ...

class DecideHoldsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_ledger_pb2.ItemResult]
    def __init__(self, results: _Optional[_Iterable[_Union[_ledger_pb2.ItemResult, _Mapping]]] = ...) -> None: ...

class SettleHoldItem(_message.Message):
    __slots__ = ("transaction_id", "attempt", "fate", "deadline_ns", "resolution", "before_decision")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FATE_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_NS_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    BEFORE_DECISION_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    attempt: str
    fate: HoldFate
    deadline_ns: int
    resolution: _ledger_pb2.Transaction
    before_decision: bool
    def __init__(self, transaction_id: _Optional[str] = ..., attempt: _Optional[str] = ..., fate: _Optional[_Union[HoldFate, str]] = ..., deadline_ns: _Optional[int] = ..., resolution: _Optional[_Union[_ledger_pb2.Transaction, _Mapping]] = ..., before_decision: _Optional[bool] = ...) -> None: ...

class SettleHoldsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[SettleHoldItem]
    def __init__(self, items: _Optional[_Iterable[_Union[SettleHoldItem, _Mapping]]] = ...) -> None: ...

class SettleHoldsResponse(_message.Message):
    __slots__ = ("results", "clock_ns")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_NS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_ledger_pb2.ItemResult]
    clock_ns: int
    def __init__(self, results: _Optional[_Iterable[_Union[_ledger_pb2.ItemResult, _Mapping]]] = ..., clock_ns: _Optional[int] = ...) -> None: ...

class CreateClearingAccountsRequest(_message.Message):
    __slots__ = ("currencies",)
    CURRENCIES_FIELD_NUMBER: _ClassVar[int]
    currencies: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, currencies: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateClearingAccountsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_ledger_pb2.ItemResult]
    def __init__(self, results: _Optional[_Iterable[_Union[_ledger_pb2.ItemResult, _Mapping]]] = ...) -> None: ...
