"""What a write came to, and which answers are worth a retry.

The rules (docs/client.md):
- `created` and `replayed` are APPLIED (replayed: by an earlier attempt, perhaps this call's).
- A refusal (insufficient funds, idempotency conflict, invalid legs, ...) is REFUSED and never
  retried: the same request would be refused the same way, or worse, succeed later by surprise.
- `unavailable`, `aborted` and `wrong_shard` mean nothing of the item was applied: retried
  with the same id while the budget lasts, and NOT_APPLIED if it runs out.
- `outcome_unknown`, a call that timed out, or a transport failure after the request may have
  left: retried with the same id to learn the outcome (the ledger answers `replayed` if the
  first attempt landed); UNKNOWN if the budget runs out before an answer. Never a refusal:
  retry it later with the same id, never with a new one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

import grpc

from tally.v1 import ledger_pb2 as pb


class Outcome(enum.Enum):
    APPLIED = "applied"
    REFUSED = "refused"
    NOT_APPLIED = "not_applied"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Result:
    """One item's end: its id, the outcome, the ledger's code in lower case ("created",
    "insufficient_funds", ...; "deadline_exceeded" or a transport status when no answer came)
    and message, the timestamp the ledger applied it at (0 unless applied), and how many
    attempts it took."""

    id: str
    outcome: Outcome
    code: str
    message: str = ""
    timestamp_ns: int = 0
    attempts: int = 1

    @property
    def applied(self) -> bool:
        return self.outcome is Outcome.APPLIED

    @property
    def replayed(self) -> bool:
        return self.code == "replayed"


class CallError(Exception):
    """A call the servers refused as a whole (bad credentials, a role that does not allow it,
    a malformed request), or a read that did not succeed within its budget. `code` is the gRPC
    status name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


APPLIED_CODES: Final = frozenset(
    {pb.RESULT_CODE_CREATED, pb.RESULT_CODE_REPLAYED, pb.RESULT_CODE_OK}
)
# Nothing of the item was applied, for certain: the same request again may succeed.
NOT_APPLIED_CODES: Final = frozenset(
    {pb.RESULT_CODE_UNAVAILABLE, pb.RESULT_CODE_ABORTED, pb.RESULT_CODE_WRONG_SHARD}
)
UNKNOWN_CODES: Final = frozenset({pb.RESULT_CODE_OUTCOME_UNKNOWN})
RETRY_CODES: Final = NOT_APPLIED_CODES | UNKNOWN_CODES

# Whole-call statuses worth another attempt. RESOURCE_EXHAUSTED is a server's concurrency
# limit (the request was not taken); the others may have left with the request in flight.
RETRY_STATUSES: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)
NOT_TAKEN_STATUSES: Final = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED})


def code_name(code: int) -> str:
    """RESULT_CODE_INSUFFICIENT_FUNDS -> "insufficient_funds"."""
    try:
        return str(pb.ResultCode.Name(code)).removeprefix("RESULT_CODE_").lower()
    except ValueError:
        return f"code_{code}"


def status_name(status: grpc.StatusCode) -> str:
    return str(status.name).lower()
