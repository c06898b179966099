from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetFlowProfileRequest(_message.Message):
    __slots__ = ("partition_key", "as_of_ns")
    PARTITION_KEY_FIELD_NUMBER: _ClassVar[int]
    AS_OF_NS_FIELD_NUMBER: _ClassVar[int]
    partition_key: str
    as_of_ns: int
    def __init__(self, partition_key: _Optional[str] = ..., as_of_ns: _Optional[int] = ...) -> None: ...

class WindowFeatures(_message.Message):
    __slots__ = ("window_days", "currency", "start_day", "end_day", "inflow", "outflow", "net_flow", "inflow_count", "outflow_count", "transaction_count", "own_transfer_amount", "disbursed", "debt_service_paid", "debt_service_due", "has_coverage", "coverage", "counterparty_count", "largest_counterparty", "has_largest_counterparty_share", "largest_counterparty_share", "counterparties_truncated", "round_trip_amount", "has_round_trip_share", "round_trip_share", "linked_inflow_amount", "has_linked_inflow_share", "linked_inflow_share")
    WINDOW_DAYS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    START_DAY_FIELD_NUMBER: _ClassVar[int]
    END_DAY_FIELD_NUMBER: _ClassVar[int]
    INFLOW_FIELD_NUMBER: _ClassVar[int]
    OUTFLOW_FIELD_NUMBER: _ClassVar[int]
    NET_FLOW_FIELD_NUMBER: _ClassVar[int]
    INFLOW_COUNT_FIELD_NUMBER: _ClassVar[int]
    OUTFLOW_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    OWN_TRANSFER_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DISBURSED_FIELD_NUMBER: _ClassVar[int]
    DEBT_SERVICE_PAID_FIELD_NUMBER: _ClassVar[int]
    DEBT_SERVICE_DUE_FIELD_NUMBER: _ClassVar[int]
    HAS_COVERAGE_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    COUNTERPARTY_COUNT_FIELD_NUMBER: _ClassVar[int]
    LARGEST_COUNTERPARTY_FIELD_NUMBER: _ClassVar[int]
    HAS_LARGEST_COUNTERPARTY_SHARE_FIELD_NUMBER: _ClassVar[int]
    LARGEST_COUNTERPARTY_SHARE_FIELD_NUMBER: _ClassVar[int]
    COUNTERPARTIES_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    ROUND_TRIP_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    HAS_ROUND_TRIP_SHARE_FIELD_NUMBER: _ClassVar[int]
    ROUND_TRIP_SHARE_FIELD_NUMBER: _ClassVar[int]
    LINKED_INFLOW_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    HAS_LINKED_INFLOW_SHARE_FIELD_NUMBER: _ClassVar[int]
    LINKED_INFLOW_SHARE_FIELD_NUMBER: _ClassVar[int]
    window_days: int
    currency: str
    start_day: int
    end_day: int
    inflow: int
    outflow: int
    net_flow: int
    inflow_count: int
    outflow_count: int
    transaction_count: int
    own_transfer_amount: int
    disbursed: int
    debt_service_paid: int
    debt_service_due: int
    has_coverage: bool
    coverage: float
    counterparty_count: int
    largest_counterparty: str
    has_largest_counterparty_share: bool
    largest_counterparty_share: float
    counterparties_truncated: bool
    round_trip_amount: int
    has_round_trip_share: bool
    round_trip_share: float
    linked_inflow_amount: int
    has_linked_inflow_share: bool
    linked_inflow_share: float
    def __init__(self, window_days: _Optional[int] = ..., currency: _Optional[str] = ..., start_day: _Optional[int] = ..., end_day: _Optional[int] = ..., inflow: _Optional[int] = ..., outflow: _Optional[int] = ..., net_flow: _Optional[int] = ..., inflow_count: _Optional[int] = ..., outflow_count: _Optional[int] = ..., transaction_count: _Optional[int] = ..., own_transfer_amount: _Optional[int] = ..., disbursed: _Optional[int] = ..., debt_service_paid: _Optional[int] = ..., debt_service_due: _Optional[int] = ..., has_coverage: _Optional[bool] = ..., coverage: _Optional[float] = ..., counterparty_count: _Optional[int] = ..., largest_counterparty: _Optional[str] = ..., has_largest_counterparty_share: _Optional[bool] = ..., largest_counterparty_share: _Optional[float] = ..., counterparties_truncated: _Optional[bool] = ..., round_trip_amount: _Optional[int] = ..., has_round_trip_share: _Optional[bool] = ..., round_trip_share: _Optional[float] = ..., linked_inflow_amount: _Optional[int] = ..., has_linked_inflow_share: _Optional[bool] = ..., linked_inflow_share: _Optional[float] = ...) -> None: ...

class Baseline(_message.Message):
    __slots__ = ("currency", "window_days", "current_inflow", "window_count", "has_mean", "mean", "spread", "has_ratio", "ratio", "has_z_score", "z_score")
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    WINDOW_DAYS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_INFLOW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_COUNT_FIELD_NUMBER: _ClassVar[int]
    HAS_MEAN_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    SPREAD_FIELD_NUMBER: _ClassVar[int]
    HAS_RATIO_FIELD_NUMBER: _ClassVar[int]
    RATIO_FIELD_NUMBER: _ClassVar[int]
    HAS_Z_SCORE_FIELD_NUMBER: _ClassVar[int]
    Z_SCORE_FIELD_NUMBER: _ClassVar[int]
    currency: str
    window_days: int
    current_inflow: int
    window_count: int
    has_mean: bool
    mean: float
    spread: float
    has_ratio: bool
    ratio: float
    has_z_score: bool
    z_score: float
    def __init__(self, currency: _Optional[str] = ..., window_days: _Optional[int] = ..., current_inflow: _Optional[int] = ..., window_count: _Optional[int] = ..., has_mean: _Optional[bool] = ..., mean: _Optional[float] = ..., spread: _Optional[float] = ..., has_ratio: _Optional[bool] = ..., ratio: _Optional[float] = ..., has_z_score: _Optional[bool] = ..., z_score: _Optional[float] = ...) -> None: ...

class FlowProfile(_message.Message):
    __slots__ = ("partition_key", "as_of_ns", "as_of_day", "product", "windows", "baselines", "active_alerts", "stream_sequence")
    PARTITION_KEY_FIELD_NUMBER: _ClassVar[int]
    AS_OF_NS_FIELD_NUMBER: _ClassVar[int]
    AS_OF_DAY_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    BASELINES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ALERTS_FIELD_NUMBER: _ClassVar[int]
    STREAM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    partition_key: str
    as_of_ns: int
    as_of_day: int
    product: str
    windows: _containers.RepeatedCompositeFieldContainer[WindowFeatures]
    baselines: _containers.RepeatedCompositeFieldContainer[Baseline]
    active_alerts: _containers.RepeatedCompositeFieldContainer[FlowAlert]
    stream_sequence: int
    def __init__(self, partition_key: _Optional[str] = ..., as_of_ns: _Optional[int] = ..., as_of_day: _Optional[int] = ..., product: _Optional[str] = ..., windows: _Optional[_Iterable[_Union[WindowFeatures, _Mapping]]] = ..., baselines: _Optional[_Iterable[_Union[Baseline, _Mapping]]] = ..., active_alerts: _Optional[_Iterable[_Union[FlowAlert, _Mapping]]] = ..., stream_sequence: _Optional[int] = ...) -> None: ...

class GetPortfolioRequest(_message.Message):
    __slots__ = ("window_days",)
    WINDOW_DAYS_FIELD_NUMBER: _ClassVar[int]
    window_days: int
    def __init__(self, window_days: _Optional[int] = ...) -> None: ...

class CoverageBucket(_message.Message):
    __slots__ = ("upper_bound", "count")
    UPPER_BOUND_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    upper_bound: float
    count: int
    def __init__(self, upper_bound: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class RuleCount(_message.Message):
    __slots__ = ("rule", "count")
    RULE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    rule: str
    count: int
    def __init__(self, rule: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class Portfolio(_message.Message):
    __slots__ = ("as_of_ns", "window_days", "borrower_count", "coverage", "coverage_undefined_count", "active_alerts", "late_flow_count", "pair_overflow_count", "stream_sequence")
    AS_OF_NS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_DAYS_FIELD_NUMBER: _ClassVar[int]
    BORROWER_COUNT_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_UNDEFINED_COUNT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ALERTS_FIELD_NUMBER: _ClassVar[int]
    LATE_FLOW_COUNT_FIELD_NUMBER: _ClassVar[int]
    PAIR_OVERFLOW_COUNT_FIELD_NUMBER: _ClassVar[int]
    STREAM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    as_of_ns: int
    window_days: int
    borrower_count: int
    coverage: _containers.RepeatedCompositeFieldContainer[CoverageBucket]
    coverage_undefined_count: int
    active_alerts: _containers.RepeatedCompositeFieldContainer[RuleCount]
    late_flow_count: int
    pair_overflow_count: int
    stream_sequence: int
    def __init__(self, as_of_ns: _Optional[int] = ..., window_days: _Optional[int] = ..., borrower_count: _Optional[int] = ..., coverage: _Optional[_Iterable[_Union[CoverageBucket, _Mapping]]] = ..., coverage_undefined_count: _Optional[int] = ..., active_alerts: _Optional[_Iterable[_Union[RuleCount, _Mapping]]] = ..., late_flow_count: _Optional[int] = ..., pair_overflow_count: _Optional[int] = ..., stream_sequence: _Optional[int] = ...) -> None: ...

class FlowAlert(_message.Message):
    __slots__ = ("rule", "partition_key", "currency", "window_days", "has_value", "value", "threshold", "at_ns", "firing")
    RULE_FIELD_NUMBER: _ClassVar[int]
    PARTITION_KEY_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    WINDOW_DAYS_FIELD_NUMBER: _ClassVar[int]
    HAS_VALUE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    AT_NS_FIELD_NUMBER: _ClassVar[int]
    FIRING_FIELD_NUMBER: _ClassVar[int]
    rule: str
    partition_key: str
    currency: str
    window_days: int
    has_value: bool
    value: float
    threshold: float
    at_ns: int
    firing: bool
    def __init__(self, rule: _Optional[str] = ..., partition_key: _Optional[str] = ..., currency: _Optional[str] = ..., window_days: _Optional[int] = ..., has_value: _Optional[bool] = ..., value: _Optional[float] = ..., threshold: _Optional[float] = ..., at_ns: _Optional[int] = ..., firing: _Optional[bool] = ...) -> None: ...
