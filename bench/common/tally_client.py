"""The load generator's side of Tally: a grpc.aio TLS channel to one shard node (or a gateway),
presenting the bench's client credentials (bench/common/credentials.py).

Every call carries a deadline. Item results are counted by code name (CREATED, REPLAYED, ...);
a transport failure is counted by gRPC status and is never mistaken for an item result.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common.measure import CallOutcome
from bench.common.workload import (
    ACCOUNT_CODE,
    CURRENCY,
    FUNDING_AMOUNT_CENTS,
    HOT_ACCOUNT_ID,
    TRANSFER_CODE,
    Transfer,
    funding_transaction_id,
)
from core import limits
from shards.security.credentials import ClientSecurity, aio_channel
from tally.v1 import ledger_pb2 as pb
from tally.v1 import ledger_pb2_grpc as pb_grpc

CALL_TIMEOUT_S: Final = 30.0
RESULT_PREFIX: Final = "RESULT_CODE_"
_CODE_NAMES: Final[dict[int, str]] = {
    number: name.removeprefix(RESULT_PREFIX) for name, number in pb.ResultCode.items()
}


def code_name(code: int) -> str:
    return _CODE_NAMES.get(code, str(code))


def transfer_to_proto(transfer: Transfer) -> pb.Transaction:
    return pb.Transaction(
        id=transfer.transaction_id,
        code=TRANSFER_CODE,
        legs=[
            pb.Leg(
                account_id=transfer.debit_account_id,
                side=pb.SIDE_DEBIT,
                amount=transfer.amount_cents,
                currency=CURRENCY,
            ),
            pb.Leg(
                account_id=transfer.credit_account_id,
                side=pb.SIDE_CREDIT,
                amount=transfer.amount_cents,
                currency=CURRENCY,
            ),
        ],
    )


# gRPC's default message limit (4 MiB) is below Tally's (limits.message_size_max_bytes).
MESSAGE_SIZE_OPTIONS = [
    ("grpc.max_send_message_length", limits.message_size_max_bytes),
    ("grpc.max_receive_message_length", limits.message_size_max_bytes),
]


class TallyClient:
    def __init__(self, target: str, security: ClientSecurity) -> None:
        self.target = target
        self._channel = aio_channel(target, security, MESSAGE_SIZE_OPTIONS)
        self._stub = pb_grpc.LedgerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(grace=5.0)

    async def wait_serving(self, timeout_s: float) -> None:
        """The node listens before it holds the writer lease; wait for health SERVING."""
        deadline = time.monotonic() + timeout_s
        request = health_pb2.HealthCheckRequest(service="tally.v1.Ledger")
        last_error = ""
        while True:
            try:
                response = await self._health.Check(request, timeout=2.0)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError as error:
                # Not up yet, or (said in the timeout) a TLS handshake or credential refused.
                last_error = f" (last: {error.code().name} {error.details()})"
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.target} was not SERVING within {timeout_s:g}s{last_error}"
                )
            await asyncio.sleep(0.1)

    async def post(self, transfers: Sequence[Transfer]) -> CallOutcome:
        request = pb.PostTransactionsRequest(transactions=[transfer_to_proto(t) for t in transfers])
        return await self._post_request(request)

    async def hold_and_post(self, transfers: Sequence[Transfer]) -> CallOutcome:
        """The transfers as holds (one call), then each hold posted in full (a second call):
        a card authorisation and its capture. Codes of both calls."""
        holds = [transfer_to_proto(t) for t in transfers]
        for message in holds:
            message.pending = True
        held = await self._post_request(pb.PostTransactionsRequest(transactions=holds))
        if held.error:
            return held
        captures = [
            pb.Transaction(id=t.transaction_id + ".post", code=1, post_pending_id=t.transaction_id)
            for t in transfers
        ]
        posted = await self._post_request(pb.PostTransactionsRequest(transactions=captures))
        return CallOutcome(codes=held.codes + posted.codes, error=posted.error)

    async def _post_request(self, request: pb.PostTransactionsRequest) -> CallOutcome:
        try:
            response = await self._stub.PostTransactions(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            return CallOutcome(error=f"grpc:{error.code().name}")
        return CallOutcome(codes=Counter(code_name(r.code) for r in response.results))

    async def create_accounts(self, account_ids: Sequence[str]) -> Counter[str]:
        accounts = [
            pb.Account(
                id=account_id,
                currency=CURRENCY,
                code=ACCOUNT_CODE,
                # Spread accounts cannot carry must-not-exceed flags; customers cannot overdraw.
                debits_must_not_exceed_credits=not account_id.startswith("@"),
            )
            for account_id in account_ids
        ]
        response = await self._stub.CreateAccounts(
            pb.CreateAccountsRequest(accounts=accounts), timeout=CALL_TIMEOUT_S
        )
        return Counter(code_name(r.code) for r in response.results)

    async def fund(self, account_ids: Sequence[str]) -> Counter[str]:
        transfers = [
            Transfer(funding_transaction_id(a), HOT_ACCOUNT_ID, a, FUNDING_AMOUNT_CENTS)
            for a in account_ids
        ]
        outcome = await self.post(transfers)
        if outcome.error:
            raise RuntimeError(f"funding failed: {outcome.error}")
        return outcome.codes


def chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


async def seed(client: TallyClient, account_ids: list[str], batch_size: int) -> Counter[str]:
    """Create HOT_ACCOUNT_ID and the customers, then fund every customer from it.

    Re-seeding an existing node gives REPLAYED instead of CREATED, never a second funding.
    """
    codes: Counter[str] = Counter()
    codes.update(await client.create_accounts([HOT_ACCOUNT_ID]))
    parts = chunks(account_ids, batch_size)
    codes.update(await _in_parallel(client.create_accounts, parts))
    codes.update(await _in_parallel(client.fund, parts))
    return codes


async def _in_parallel(
    step: Callable[[Sequence[str]], Awaitable[Counter[str]]],
    parts: list[Sequence[str]],
    in_flight_max: int = 4,
) -> Counter[str]:
    """A few calls in flight keep the node's writer busy while the next request is decoded."""
    semaphore = asyncio.Semaphore(in_flight_max)
    codes: Counter[str] = Counter()

    async def one(part: Sequence[str]) -> None:
        async with semaphore:
            codes.update(await step(part))

    async with asyncio.TaskGroup() as group:
        for part in parts:
            group.create_task(one(part))
    return codes
