"""The domain's result codes and statuses mirror the wire enums number for number."""

from core.model import ResultCode, Status
from tally.v1 import ledger_pb2 as pb


def test_result_codes_match_proto() -> None:
    wire = {name.removeprefix("RESULT_CODE_"): number for name, number in pb.ResultCode.items()}
    assert wire == {code.name: code.value for code in ResultCode}


def test_statuses_match_proto() -> None:
    wire = {
        name.removeprefix("TRANSACTION_STATUS_"): number
        for name, number in pb.TransactionStatus.items()
        if number
    }
    assert wire == {status.name: status.value for status in Status}
