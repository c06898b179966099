from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResultCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESULT_CODE_UNSPECIFIED: _ClassVar[ResultCode]
    RESULT_CODE_OK: _ClassVar[ResultCode]
    RESULT_CODE_CREATED: _ClassVar[ResultCode]
    RESULT_CODE_REPLAYED: _ClassVar[ResultCode]
    RESULT_CODE_IDEMPOTENCY_CONFLICT: _ClassVar[ResultCode]
    RESULT_CODE_INSUFFICIENT_FUNDS: _ClassVar[ResultCode]
    RESULT_CODE_CREDITS_EXCEED_DEBITS: _ClassVar[ResultCode]
    RESULT_CODE_ACCOUNT_NOT_FOUND: _ClassVar[ResultCode]
    RESULT_CODE_ACCOUNT_CLOSED: _ClassVar[ResultCode]
    RESULT_CODE_UNBALANCED: _ClassVar[ResultCode]
    RESULT_CODE_CURRENCY_MISMATCH: _ClassVar[ResultCode]
    RESULT_CODE_AMOUNT_OVERFLOW: _ClassVar[ResultCode]
    RESULT_CODE_PENDING_NOT_FOUND: _ClassVar[ResultCode]
    RESULT_CODE_PENDING_ALREADY_RESOLVED: _ClassVar[ResultCode]
    RESULT_CODE_PENDING_EXPIRED: _ClassVar[ResultCode]
    RESULT_CODE_LINKED_ITEM_FAILED: _ClassVar[ResultCode]
    RESULT_CODE_LINKED_CHAIN_OPEN: _ClassVar[ResultCode]
    RESULT_CODE_DUPLICATE_ID_IN_BATCH: _ClassVar[ResultCode]
    RESULT_CODE_INVALID_ID: _ClassVar[ResultCode]
    RESULT_CODE_INVALID_AMOUNT: _ClassVar[ResultCode]
    RESULT_CODE_INVALID_CURRENCY: _ClassVar[ResultCode]
    RESULT_CODE_INVALID_LEGS: _ClassVar[ResultCode]
    RESULT_CODE_INVALID_METADATA: _ClassVar[ResultCode]
    RESULT_CODE_INVALID_CODE: _ClassVar[ResultCode]
    RESULT_CODE_INVALID_FLAGS: _ClassVar[ResultCode]
    RESULT_CODE_INVALID_VALUE_DATE: _ClassVar[ResultCode]
    RESULT_CODE_INVALID_TIMEOUT: _ClassVar[ResultCode]
    RESULT_CODE_INVALID_SIDE: _ClassVar[ResultCode]
    RESULT_CODE_POST_EXCEEDS_PENDING: _ClassVar[ResultCode]
    RESULT_CODE_TRANSACTION_NOT_FOUND: _ClassVar[ResultCode]
    RESULT_CODE_ALREADY_REVERSED: _ClassVar[ResultCode]
    RESULT_CODE_NOT_REVERSIBLE: _ClassVar[ResultCode]
    RESULT_CODE_INVALID_SPREAD_ACCOUNT_FLAGS: _ClassVar[ResultCode]
    RESULT_CODE_ACCOUNT_HAS_BALANCE: _ClassVar[ResultCode]
    RESULT_CODE_ACCOUNT_HAS_PENDING: _ClassVar[ResultCode]
    RESULT_CODE_UNAVAILABLE: _ClassVar[ResultCode]
    RESULT_CODE_WRONG_SHARD: _ClassVar[ResultCode]
    RESULT_CODE_ABORTED: _ClassVar[ResultCode]
    RESULT_CODE_ITEM_FAULT: _ClassVar[ResultCode]
    RESULT_CODE_OUTCOME_UNKNOWN: _ClassVar[ResultCode]

class Side(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIDE_UNSPECIFIED: _ClassVar[Side]
    SIDE_DEBIT: _ClassVar[Side]
    SIDE_CREDIT: _ClassVar[Side]

class TransactionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSACTION_STATUS_UNSPECIFIED: _ClassVar[TransactionStatus]
    TRANSACTION_STATUS_POSTED: _ClassVar[TransactionStatus]
    TRANSACTION_STATUS_PENDING: _ClassVar[TransactionStatus]
    TRANSACTION_STATUS_PENDING_POSTED: _ClassVar[TransactionStatus]
    TRANSACTION_STATUS_PENDING_VOIDED: _ClassVar[TransactionStatus]
    TRANSACTION_STATUS_PENDING_EXPIRED: _ClassVar[TransactionStatus]

class JournalEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOURNAL_ENCODING_UNSPECIFIED: _ClassVar[JournalEncoding]
    JOURNAL_ENCODING_RECORDS: _ClassVar[JournalEncoding]
    JOURNAL_ENCODING_LINES: _ClassVar[JournalEncoding]
RESULT_CODE_UNSPECIFIED: ResultCode
RESULT_CODE_OK: ResultCode
RESULT_CODE_CREATED: ResultCode
RESULT_CODE_REPLAYED: ResultCode
RESULT_CODE_IDEMPOTENCY_CONFLICT: ResultCode
RESULT_CODE_INSUFFICIENT_FUNDS: ResultCode
RESULT_CODE_CREDITS_EXCEED_DEBITS: ResultCode
RESULT_CODE_ACCOUNT_NOT_FOUND: ResultCode
RESULT_CODE_ACCOUNT_CLOSED: ResultCode
RESULT_CODE_UNBALANCED: ResultCode
RESULT_CODE_CURRENCY_MISMATCH: ResultCode
RESULT_CODE_AMOUNT_OVERFLOW: ResultCode
RESULT_CODE_PENDING_NOT_FOUND: ResultCode
RESULT_CODE_PENDING_ALREADY_RESOLVED: ResultCode
RESULT_CODE_PENDING_EXPIRED: ResultCode
RESULT_CODE_LINKED_ITEM_FAILED: ResultCode
RESULT_CODE_LINKED_CHAIN_OPEN: ResultCode
RESULT_CODE_DUPLICATE_ID_IN_BATCH: ResultCode
RESULT_CODE_INVALID_ID: ResultCode
RESULT_CODE_INVALID_AMOUNT: ResultCode
RESULT_CODE_INVALID_CURRENCY: ResultCode
RESULT_CODE_INVALID_LEGS: ResultCode
RESULT_CODE_INVALID_METADATA: ResultCode
RESULT_CODE_INVALID_CODE: ResultCode
RESULT_CODE_INVALID_FLAGS: ResultCode
RESULT_CODE_INVALID_VALUE_DATE: ResultCode
RESULT_CODE_INVALID_TIMEOUT: ResultCode
RESULT_CODE_INVALID_SIDE: ResultCode
RESULT_CODE_POST_EXCEEDS_PENDING: ResultCode
RESULT_CODE_TRANSACTION_NOT_FOUND: ResultCode
RESULT_CODE_ALREADY_REVERSED: ResultCode
RESULT_CODE_NOT_REVERSIBLE: ResultCode
RESULT_CODE_INVALID_SPREAD_ACCOUNT_FLAGS: ResultCode
RESULT_CODE_ACCOUNT_HAS_BALANCE: ResultCode
RESULT_CODE_ACCOUNT_HAS_PENDING: ResultCode
RESULT_CODE_UNAVAILABLE: ResultCode
RESULT_CODE_WRONG_SHARD: ResultCode
RESULT_CODE_ABORTED: ResultCode
RESULT_CODE_ITEM_FAULT: ResultCode
RESULT_CODE_OUTCOME_UNKNOWN: ResultCode
SIDE_UNSPECIFIED: Side
SIDE_DEBIT: Side
SIDE_CREDIT: Side
TRANSACTION_STATUS_UNSPECIFIED: TransactionStatus
TRANSACTION_STATUS_POSTED: TransactionStatus
TRANSACTION_STATUS_PENDING: TransactionStatus
TRANSACTION_STATUS_PENDING_POSTED: TransactionStatus
TRANSACTION_STATUS_PENDING_VOIDED: TransactionStatus
TRANSACTION_STATUS_PENDING_EXPIRED: TransactionStatus
JOURNAL_ENCODING_UNSPECIFIED: JournalEncoding
JOURNAL_ENCODING_RECORDS: JournalEncoding
JOURNAL_ENCODING_LINES: JournalEncoding

class ItemResult(_message.Message):
    __slots__ = ("code", "message", "timestamp_ns")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    code: ResultCode
    message: str
    timestamp_ns: int
    def __init__(self, code: _Optional[_Union[ResultCode, str]] = ..., message: _Optional[str] = ..., timestamp_ns: _Optional[int] = ...) -> None: ...

class Account(_message.Message):
    __slots__ = ("id", "currency", "code", "debits_must_not_exceed_credits", "credits_must_not_exceed_debits", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DEBITS_MUST_NOT_EXCEED_CREDITS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_MUST_NOT_EXCEED_DEBITS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    currency: str
    code: int
    debits_must_not_exceed_credits: bool
    credits_must_not_exceed_debits: bool
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., currency: _Optional[str] = ..., code: _Optional[int] = ..., debits_must_not_exceed_credits: _Optional[bool] = ..., credits_must_not_exceed_debits: _Optional[bool] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreateAccountsRequest(_message.Message):
    __slots__ = ("accounts",)
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    accounts: _containers.RepeatedCompositeFieldContainer[Account]
    def __init__(self, accounts: _Optional[_Iterable[_Union[Account, _Mapping]]] = ...) -> None: ...

class CreateAccountsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ItemResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ItemResult, _Mapping]]] = ...) -> None: ...

class Balance(_message.Message):
    __slots__ = ("debits_posted", "credits_posted", "debits_pending", "credits_pending", "available")
    DEBITS_POSTED_FIELD_NUMBER: _ClassVar[int]
    CREDITS_POSTED_FIELD_NUMBER: _ClassVar[int]
    DEBITS_PENDING_FIELD_NUMBER: _ClassVar[int]
    CREDITS_PENDING_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int
    available: int
    def __init__(self, debits_posted: _Optional[int] = ..., credits_posted: _Optional[int] = ..., debits_pending: _Optional[int] = ..., credits_pending: _Optional[int] = ..., available: _Optional[int] = ...) -> None: ...

class AccountRecord(_message.Message):
    __slots__ = ("account", "balance", "version", "closed", "created_at_ns", "closed_at_ns")
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    account: Account
    balance: Balance
    version: int
    closed: bool
    created_at_ns: int
    closed_at_ns: int
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ..., balance: _Optional[_Union[Balance, _Mapping]] = ..., version: _Optional[int] = ..., closed: _Optional[bool] = ..., created_at_ns: _Optional[int] = ..., closed_at_ns: _Optional[int] = ...) -> None: ...

class CloseAccount(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class CloseAccountsRequest(_message.Message):
    __slots__ = ("accounts",)
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    accounts: _containers.RepeatedCompositeFieldContainer[CloseAccount]
    def __init__(self, accounts: _Optional[_Iterable[_Union[CloseAccount, _Mapping]]] = ...) -> None: ...

class CloseAccountsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ItemResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ItemResult, _Mapping]]] = ...) -> None: ...

class GetAccountsRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AccountLookup(_message.Message):
    __slots__ = ("code", "message", "account")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    code: ResultCode
    message: str
    account: AccountRecord
    def __init__(self, code: _Optional[_Union[ResultCode, str]] = ..., message: _Optional[str] = ..., account: _Optional[_Union[AccountRecord, _Mapping]] = ...) -> None: ...

class GetAccountsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[AccountLookup]
    def __init__(self, results: _Optional[_Iterable[_Union[AccountLookup, _Mapping]]] = ...) -> None: ...

class Leg(_message.Message):
    __slots__ = ("account_id", "side", "amount", "currency")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    side: Side
    amount: int
    currency: str
    def __init__(self, account_id: _Optional[str] = ..., side: _Optional[_Union[Side, str]] = ..., amount: _Optional[int] = ..., currency: _Optional[str] = ...) -> None: ...

class Transaction(_message.Message):
    __slots__ = ("id", "legs", "code", "metadata", "value_date", "pending", "timeout_seconds", "linked", "post_pending_id", "void_pending_id", "reverses_id")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    LEGS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    VALUE_DATE_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LINKED_FIELD_NUMBER: _ClassVar[int]
    POST_PENDING_ID_FIELD_NUMBER: _ClassVar[int]
    VOID_PENDING_ID_FIELD_NUMBER: _ClassVar[int]
    REVERSES_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    legs: _containers.RepeatedCompositeFieldContainer[Leg]
    code: int
    metadata: _containers.ScalarMap[str, str]
    value_date: str
    pending: bool
    timeout_seconds: int
    linked: bool
    post_pending_id: str
    void_pending_id: str
    reverses_id: str
    def __init__(self, id: _Optional[str] = ..., legs: _Optional[_Iterable[_Union[Leg, _Mapping]]] = ..., code: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., value_date: _Optional[str] = ..., pending: _Optional[bool] = ..., timeout_seconds: _Optional[int] = ..., linked: _Optional[bool] = ..., post_pending_id: _Optional[str] = ..., void_pending_id: _Optional[str] = ..., reverses_id: _Optional[str] = ...) -> None: ...

class PostTransactionsRequest(_message.Message):
    __slots__ = ("transactions",)
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[Transaction]
    def __init__(self, transactions: _Optional[_Iterable[_Union[Transaction, _Mapping]]] = ...) -> None: ...

class PostTransactionsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ItemResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ItemResult, _Mapping]]] = ...) -> None: ...

class TransactionRecord(_message.Message):
    __slots__ = ("transaction", "timestamp_ns", "status", "resolved_by_id", "reversed_by_id", "expires_at_ns", "applied_legs", "cross_shard_piece")
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_BY_ID_FIELD_NUMBER: _ClassVar[int]
    REVERSED_BY_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_NS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_LEGS_FIELD_NUMBER: _ClassVar[int]
    CROSS_SHARD_PIECE_FIELD_NUMBER: _ClassVar[int]
    transaction: Transaction
    timestamp_ns: int
    status: TransactionStatus
    resolved_by_id: str
    reversed_by_id: str
    expires_at_ns: int
    applied_legs: _containers.RepeatedCompositeFieldContainer[Leg]
    cross_shard_piece: CrossShardPiece
    def __init__(self, transaction: _Optional[_Union[Transaction, _Mapping]] = ..., timestamp_ns: _Optional[int] = ..., status: _Optional[_Union[TransactionStatus, str]] = ..., resolved_by_id: _Optional[str] = ..., reversed_by_id: _Optional[str] = ..., expires_at_ns: _Optional[int] = ..., applied_legs: _Optional[_Iterable[_Union[Leg, _Mapping]]] = ..., cross_shard_piece: _Optional[_Union[CrossShardPiece, _Mapping]] = ...) -> None: ...

class CrossShardPiece(_message.Message):
    __slots__ = ("coordinator", "coordinator_shard", "attempt", "participant_shards")
    COORDINATOR_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_SHARD_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_SHARDS_FIELD_NUMBER: _ClassVar[int]
    coordinator: bool
    coordinator_shard: int
    attempt: str
    participant_shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, coordinator: _Optional[bool] = ..., coordinator_shard: _Optional[int] = ..., attempt: _Optional[str] = ..., participant_shards: _Optional[_Iterable[int]] = ...) -> None: ...

class GetTransactionsRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class TransactionLookup(_message.Message):
    __slots__ = ("code", "message", "transaction")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    code: ResultCode
    message: str
    transaction: TransactionRecord
    def __init__(self, code: _Optional[_Union[ResultCode, str]] = ..., message: _Optional[str] = ..., transaction: _Optional[_Union[TransactionRecord, _Mapping]] = ...) -> None: ...

class GetTransactionsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TransactionLookup]
    def __init__(self, results: _Optional[_Iterable[_Union[TransactionLookup, _Mapping]]] = ...) -> None: ...

class Posting(_message.Message):
    __slots__ = ("sequence", "transaction_id", "account_id", "side", "posted_amount", "pending_delta", "timestamp_ns", "balance_after", "block_sequence")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    POSTED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PENDING_DELTA_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    BALANCE_AFTER_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    transaction_id: str
    account_id: str
    side: Side
    posted_amount: int
    pending_delta: int
    timestamp_ns: int
    balance_after: Balance
    block_sequence: int
    def __init__(self, sequence: _Optional[int] = ..., transaction_id: _Optional[str] = ..., account_id: _Optional[str] = ..., side: _Optional[_Union[Side, str]] = ..., posted_amount: _Optional[int] = ..., pending_delta: _Optional[int] = ..., timestamp_ns: _Optional[int] = ..., balance_after: _Optional[_Union[Balance, _Mapping]] = ..., block_sequence: _Optional[int] = ...) -> None: ...

class ListPostingsRequest(_message.Message):
    __slots__ = ("account_id", "cursor", "limit", "from_ns", "to_ns")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FROM_NS_FIELD_NUMBER: _ClassVar[int]
    TO_NS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    cursor: str
    limit: int
    from_ns: int
    to_ns: int
    def __init__(self, account_id: _Optional[str] = ..., cursor: _Optional[str] = ..., limit: _Optional[int] = ..., from_ns: _Optional[int] = ..., to_ns: _Optional[int] = ...) -> None: ...

class ListPostingsResponse(_message.Message):
    __slots__ = ("postings", "next_cursor")
    POSTINGS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    postings: _containers.RepeatedCompositeFieldContainer[Posting]
    next_cursor: str
    def __init__(self, postings: _Optional[_Iterable[_Union[Posting, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class BalanceAtRequest(_message.Message):
    __slots__ = ("account_id", "at_ns")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AT_NS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    at_ns: int
    def __init__(self, account_id: _Optional[str] = ..., at_ns: _Optional[int] = ...) -> None: ...

class BalanceAtResponse(_message.Message):
    __slots__ = ("balance", "as_of_sequence")
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    AS_OF_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    balance: Balance
    as_of_sequence: int
    def __init__(self, balance: _Optional[_Union[Balance, _Mapping]] = ..., as_of_sequence: _Optional[int] = ...) -> None: ...

class GetRoutingRequest(_message.Message):
    __slots__ = ("known_version",)
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    known_version: int
    def __init__(self, known_version: _Optional[int] = ...) -> None: ...

class SlotRange(_message.Message):
    __slots__ = ("first_slot", "slot_count", "shard_id")
    FIRST_SLOT_FIELD_NUMBER: _ClassVar[int]
    SLOT_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    first_slot: int
    slot_count: int
    shard_id: int
    def __init__(self, first_slot: _Optional[int] = ..., slot_count: _Optional[int] = ..., shard_id: _Optional[int] = ...) -> None: ...

class ShardRoute(_message.Message):
    __slots__ = ("shard_id", "client_endpoint")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    client_endpoint: str
    def __init__(self, shard_id: _Optional[int] = ..., client_endpoint: _Optional[str] = ...) -> None: ...

class GetRoutingResponse(_message.Message):
    __slots__ = ("version", "slot_count", "unchanged", "ranges", "shards")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SLOT_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    version: int
    slot_count: int
    unchanged: bool
    ranges: _containers.RepeatedCompositeFieldContainer[SlotRange]
    shards: _containers.RepeatedCompositeFieldContainer[ShardRoute]
    def __init__(self, version: _Optional[int] = ..., slot_count: _Optional[int] = ..., unchanged: _Optional[bool] = ..., ranges: _Optional[_Iterable[_Union[SlotRange, _Mapping]]] = ..., shards: _Optional[_Iterable[_Union[ShardRoute, _Mapping]]] = ...) -> None: ...

class ShardPosition(_message.Message):
    __slots__ = ("shard_id", "sequence")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    sequence: int
    def __init__(self, shard_id: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class StreamJournalRequest(_message.Message):
    __slots__ = ("after", "follow", "encoding")
    AFTER_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    after: _containers.RepeatedCompositeFieldContainer[ShardPosition]
    follow: bool
    encoding: JournalEncoding
    def __init__(self, after: _Optional[_Iterable[_Union[ShardPosition, _Mapping]]] = ..., follow: _Optional[bool] = ..., encoding: _Optional[_Union[JournalEncoding, str]] = ...) -> None: ...

class AccountClosure(_message.Message):
    __slots__ = ("account_id", "closed_at_ns")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    closed_at_ns: int
    def __init__(self, account_id: _Optional[str] = ..., closed_at_ns: _Optional[int] = ...) -> None: ...

class CreatedAccount(_message.Message):
    __slots__ = ("account", "created_at_ns")
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    account: Account
    created_at_ns: int
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ..., created_at_ns: _Optional[int] = ...) -> None: ...

class JournalBlock(_message.Message):
    __slots__ = ("shard_id", "sequence", "hash", "previous_hash", "created_at_ns", "transactions", "postings", "accounts", "closures", "lines")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_HASH_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    POSTINGS_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    CLOSURES_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    sequence: int
    hash: bytes
    previous_hash: bytes
    created_at_ns: int
    transactions: _containers.RepeatedCompositeFieldContainer[TransactionRecord]
    postings: _containers.RepeatedCompositeFieldContainer[Posting]
    accounts: _containers.RepeatedCompositeFieldContainer[CreatedAccount]
    closures: _containers.RepeatedCompositeFieldContainer[AccountClosure]
    lines: bytes
    def __init__(self, shard_id: _Optional[int] = ..., sequence: _Optional[int] = ..., hash: _Optional[bytes] = ..., previous_hash: _Optional[bytes] = ..., created_at_ns: _Optional[int] = ..., transactions: _Optional[_Iterable[_Union[TransactionRecord, _Mapping]]] = ..., postings: _Optional[_Iterable[_Union[Posting, _Mapping]]] = ..., accounts: _Optional[_Iterable[_Union[CreatedAccount, _Mapping]]] = ..., closures: _Optional[_Iterable[_Union[AccountClosure, _Mapping]]] = ..., lines: _Optional[bytes] = ...) -> None: ...
