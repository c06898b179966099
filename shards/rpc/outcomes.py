"""What a failed write call to a shard node tells its caller (a gateway) about the outcome.

A status the server decided before taking the request (a refusal, a full queue, a message too
large to send) means nothing was applied. A call that failed in transport after it may have been
delivered (its deadline passed, the connection was reset or lost, the server died) may have been
applied: its items must never be answered UNAVAILABLE ("nothing was applied"). The caller asks
for the decision (retries the same ids, or asks a coordinator) and answers OUTCOME_UNKNOWN if it
cannot learn it.
"""

from __future__ import annotations

import grpc

from tally.v1 import ledger_pb2 as pb

# Statuses only a server's decision (or the client library, before sending) produces.
_NOT_DELIVERED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
# gRPC's words for a call that never left: no connection could be made.
_NEVER_SENT = ("failed to connect", "connection refused", "no connection", "empty address list")


def may_have_applied(error: grpc.aio.AioRpcError) -> bool:
    """Whether the failed call may have reached the server and been applied."""
    code = error.code()
    if code in _NOT_DELIVERED:
        return False
    if code is grpc.StatusCode.UNAVAILABLE:
        details = (error.details() or "").lower()
        return not any(words in details for words in _NEVER_SENT)
    return True


def unavailable(error: grpc.aio.AioRpcError, what: str = "shard") -> pb.ItemResult:
    """Nothing of the item was applied: retry with the same id."""
    return pb.ItemResult(
        code=pb.RESULT_CODE_UNAVAILABLE,
        message=f"{what} unavailable ({error.code().name}); nothing was applied: retry with "
        "the same id",
    )


def outcome_unknown(error: grpc.aio.AioRpcError | None, what: str) -> pb.ItemResult:
    """The item may have been applied: the retry with the same id learns it."""
    why = f" ({error.code().name})" if error is not None else ""
    return pb.ItemResult(
        code=pb.RESULT_CODE_OUTCOME_UNKNOWN,
        message=f"{what}{why}: it may have been applied; the outcome is not known yet, retry "
        "with the same id to learn it",
    )


def failed_call_result(error: grpc.aio.AioRpcError, what: str = "shard") -> pb.ItemResult:
    """An item of a failed write call that could not be asked about again."""
    if may_have_applied(error):
        return outcome_unknown(error, f"the call to the {what} failed after it may have arrived")
    return unavailable(error, what)
