"""Tally's gRPC API as Locust sees it: a blocking client that reports every call to Locust.

Locust's documented way to test gRPC: a gevent-compatible grpcio (the locustfile calls
`grpc.experimental.gevent.init_gevent()` before any channel exists) and a wrapper that fires
Locust's `request` event for each call, with request_type "grpc", the method name, the
response time and size, and an exception when the call failed.

A call fails in Locust's statistics when, after its retries,
- the transport failed (a gRPC status other than OK), or
- an item came back with a result code the scenario does not expect.
Every scenario states which rejections it provokes on purpose (a declined overdraft answers
INSUFFICIENT_FUNDS): those count as successes and are tallied apart (`Tallies`), so the report
can say how many there were.

Retries: UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED (a full writer queue) are
retried with the very same request, and an item answered UNAVAILABLE (nothing applied) or
OUTCOME_UNKNOWN (not known yet) is sent
again with the same id: idempotency makes every retry safe. REPLAYED is accepted only for an
item that was sent more than once; on a first attempt it would mean a transaction id clash.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import grpc

from bench.common.tally_client import MESSAGE_SIZE_OPTIONS
from shards.security.credentials import ClientSecurity, channel
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc

CALL_TIMEOUT_S: Final = 30.0
RETRY_COUNT_MAX: Final = 8
RETRY_PAUSE_S: Final = 0.05
RETRY_PAUSE_MAX_S: Final = 2.0
RETRYABLE_STATUSES: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
_PREFIX: Final = "RESULT_CODE_"
CODE_NAMES: Final[dict[int, str]] = {
    number: name.removeprefix(_PREFIX) for name, number in pb.ResultCode.items()
}
UNAVAILABLE: Final = pb.RESULT_CODE_UNAVAILABLE
# Items retried with the same id: nothing applied (UNAVAILABLE), or not known yet
# (OUTCOME_UNKNOWN: the retry answers REPLAYED if it was applied).
RETRYABLE_RESULTS: Final = frozenset({UNAVAILABLE, pb.RESULT_CODE_OUTCOME_UNKNOWN})
WRITE_OK: Final = frozenset({"CREATED"})
READ_OK: Final = frozenset({"OK"})


def code_name(code: int) -> str:
    return CODE_NAMES.get(code, str(code))


class UnexpectedResult(Exception):
    """An item result the scenario did not expect. The message names the method and code only
    (not the item), so Locust's failure table stays one row per kind of failure."""


@dataclass(slots=True)
class Tallies:
    """Item results by code, expected rejections, retries and end-of-day timings of one
    process. Workers send what they counted since their last report to the master
    (Locust's report_to_master / worker_report events), which adds it up."""

    results: Counter[str] = field(default_factory=Counter)  # "Method CODE" -> items
    expected: Counter[str] = field(default_factory=Counter)  # "Method CODE" -> items
    retries: Counter[str] = field(default_factory=Counter)  # reason -> attempts
    eod: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, method: str, code: str, expected: bool) -> None:
        with self.lock:
            self.results[f"{method} {code}"] += 1
            if expected:
                self.expected[f"{method} {code}"] += 1

    def retried(self, reason: str) -> None:
        with self.lock:
            self.retries[reason] += 1

    def eod_progress(self, items: int, started_s: float, finished_s: float) -> None:
        with self.lock:
            self.eod["items"] = self.eod.get("items", 0) + items
            self.eod["started_s"] = min(self.eod.get("started_s", started_s), started_s)
            self.eod["finished_s"] = max(self.eod.get("finished_s", finished_s), finished_s)

    def take(self) -> dict[str, Any]:
        """What was counted since the last take (a worker's report)."""
        with self.lock:
            data = self.as_dict()
            self.results.clear()
            self.expected.clear()
            self.retries.clear()
            self.eod.clear()
        return data

    def as_dict(self) -> dict[str, Any]:
        return {
            "results": dict(self.results),
            "expected": dict(self.expected),
            "retries": dict(self.retries),
            "eod": dict(self.eod),
        }

    def merge(self, data: dict[str, Any]) -> None:
        with self.lock:
            self.results.update(data.get("results", {}))
            self.expected.update(data.get("expected", {}))
            self.retries.update(data.get("retries", {}))
        eod = data.get("eod") or {}
        if eod:
            self.eod_progress(int(eod["items"]), eod["started_s"], eod["finished_s"])


FireRequest = Callable[..., None]


def open_channel(target: str, security: ClientSecurity) -> grpc.Channel:
    """A TLS channel presenting security (bench/common/credentials.py)."""
    return channel(target, security, MESSAGE_SIZE_OPTIONS)


class LedgerClient:
    """The tally.v1.Ledger stub of one Locust user, reporting each call to Locust."""

    def __init__(self, channel: grpc.Channel, fire: FireRequest, tallies: Tallies) -> None:
        self._stub = pb_grpc.LedgerStub(channel)
        self._fire = fire
        self._tallies = tallies

    def post(self, transactions: list[pb.Transaction], expected: Iterable[str] = ()) -> list[str]:
        """PostTransactions; returns the final result code of each item, in order."""
        return self._write("PostTransactions", transactions, frozenset(expected))

    def create_accounts(self, accounts: list[pb.Account]) -> list[str]:
        return self._write("CreateAccounts", accounts, frozenset({"REPLAYED"}))

    def get_accounts(self, ids: list[str]) -> pb.GetAccountsResponse | None:
        return self._read("GetAccounts", pb.GetAccountsRequest(ids=ids))

    def get_transactions(self, ids: list[str]) -> pb.GetTransactionsResponse | None:
        return self._read("GetTransactions", pb.GetTransactionsRequest(ids=ids))

    def list_postings(self, account_id: str, limit: int) -> pb.ListPostingsResponse | None:
        request = pb.ListPostingsRequest(account_id=account_id, limit=limit)
        return self._read("ListPostings", request)

    def balance_at(self, account_id: str, at_ns: int) -> pb.BalanceAtResponse | None:
        return self._read("BalanceAt", pb.BalanceAtRequest(account_id=account_id, at_ns=at_ns))

    # -------------------------------------------------------------------------------- writes

    def _write(self, method: str, items: list[Any], expected: frozenset[str]) -> list[str]:
        started = time.perf_counter()
        codes: list[str] = [""] * len(items)
        sent_before = [False] * len(items)
        pending = list(range(len(items)))
        response_bytes = 0
        error: Exception | None = None
        for attempt in range(RETRY_COUNT_MAX + 1):
            request = _write_request(method, [items[n] for n in pending])
            try:
                response = getattr(self._stub, method)(request, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as rpc_error:
                error = _retry_or_raise(rpc_error, attempt, self._tallies)
                if error is not None:
                    break
                for n in pending:
                    sent_before[n] = True
                continue
            response_bytes += response.ByteSize()
            still_pending = []
            for n, result in zip(pending, response.results, strict=True):
                if result.code in RETRYABLE_RESULTS and attempt < RETRY_COUNT_MAX:
                    still_pending.append(n)
                    sent_before[n] = True
                    self._tallies.retried(f"item {code_name(result.code)}")
                else:
                    codes[n] = code_name(result.code)
            if not still_pending:
                error = None
                break
            pending = still_pending
            _pause(attempt)
        if error is None:
            error = self._judge(method, codes, sent_before, expected)
        self._report(method, started, response_bytes, error)
        return codes

    def _judge(
        self, method: str, codes: list[str], sent_before: list[bool], expected: frozenset[str]
    ) -> Exception | None:
        unexpected: Counter[str] = Counter()
        for code, resent in zip(codes, sent_before, strict=True):
            is_expected = code in expected
            ok = code in WRITE_OK or is_expected or (code == "REPLAYED" and resent)
            self._tallies.count(method, code, is_expected and code not in WRITE_OK)
            if not ok:
                unexpected[code] += 1
        if not unexpected:
            return None
        described = ", ".join(sorted(unexpected))
        return UnexpectedResult(f"{method}: unexpected result {described}")

    # --------------------------------------------------------------------------------- reads

    def _read(self, method: str, request: Any) -> Any:
        started = time.perf_counter()
        response = None
        error: Exception | None = None
        for attempt in range(RETRY_COUNT_MAX + 1):
            try:
                response = getattr(self._stub, method)(request, timeout=CALL_TIMEOUT_S)
                error = None
                break
            except grpc.RpcError as rpc_error:
                error = _retry_or_raise(rpc_error, attempt, self._tallies)
                if error is not None:
                    break
        size = 0
        if response is not None:
            size = response.ByteSize()
            error = self._judge_lookups(method, response)
        self._report(method, started, size, error)
        return response if error is None else None

    def _judge_lookups(self, method: str, response: Any) -> Exception | None:
        lookups = getattr(response, "results", None)
        if lookups is None:  # ListPostings, BalanceAt: the gRPC status says it all
            self._tallies.count(method, "OK", False)
            return None
        bad = Counter(
            code_name(lookup.code) for lookup in lookups if lookup.code != pb.RESULT_CODE_OK
        )
        for lookup in lookups:
            self._tallies.count(method, code_name(lookup.code), False)
        if not bad:
            return None
        return UnexpectedResult(f"{method}: unexpected result {', '.join(sorted(bad))}")

    def _report(
        self, method: str, started: float, response_bytes: int, error: Exception | None
    ) -> None:
        self._fire(
            request_type="grpc",
            name=method,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=response_bytes,
            response=None,
            context=None,
            exception=error,
        )


def _write_request(method: str, items: list[Any]) -> Any:
    if method == "PostTransactions":
        return pb.PostTransactionsRequest(transactions=items)
    return pb.CreateAccountsRequest(accounts=items)


def _retry_or_raise(error: grpc.RpcError, attempt: int, tallies: Tallies) -> Exception | None:
    """None: retry (after a pause); else the error to report."""
    code = getattr(error, "code", None)
    status = code() if callable(code) else grpc.StatusCode.UNKNOWN
    if status in RETRYABLE_STATUSES and attempt < RETRY_COUNT_MAX:
        tallies.retried(f"grpc {status.name}")
        _pause(attempt)
        return None
    return error


def _pause(attempt: int) -> None:
    time.sleep(min(RETRY_PAUSE_MAX_S, RETRY_PAUSE_S * 2**attempt))


def leg(account_id: str, debit: bool, amount_cents: int, currency: str) -> pb.Leg:
    return pb.Leg(
        account_id=account_id,
        side=pb.SIDE_DEBIT if debit else pb.SIDE_CREDIT,
        amount=amount_cents,
        currency=currency,
    )
