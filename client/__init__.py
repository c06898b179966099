"""tally.client: the client library for the products that post to Tally.

Typed calls for accounts, transactions, holds, reversals and reads, with amounts as integers in
minor units; credentials and TLS as the servers want them; a deadline budget on every call;
retries with backoff and jitter for retryable outcomes only, always with the same ids;
automatic batching of concurrent single calls into one RPC; and direct routing of single-shard
work to its node (RoutingOptions), the gateway taking the rest. Every write answers a `Result`
that says plainly whether it is applied, refused (and why), not applied, or unknown.

    async with AsyncClient("127.0.0.1:7600", Credentials.from_directory(".tally/tls")) as tally:
        result = await tally.post(transfer(new_id("cust-42"), "cust-42/dep", "@cash", 1_250, "USD"))
        if result.outcome is Outcome.UNKNOWN: ...  # retry later with the same transaction

`Client` is the same API for threads (blocking calls). docs/client.md is the guide.
"""

from .aio import AsyncClient, BatchOptions, RetryOptions
from .credentials import Credentials
from .ids import new_id, partition_key
from .money import from_minor, minor_digits, to_minor
from .outcomes import CallError, Outcome, Result
from .routing import RoutingOptions
from .sync import Client
from .types import (
    Account,
    AccountState,
    Balance,
    Leg,
    Posting,
    Side,
    Transaction,
    TransactionState,
    capture,
    hold,
    reversal,
    transfer,
    void,
)

__all__ = [
    "Account",
    "AccountState",
    "AsyncClient",
    "Balance",
    "BatchOptions",
    "CallError",
    "Client",
    "Credentials",
    "Leg",
    "Outcome",
    "Posting",
    "Result",
    "RetryOptions",
    "RoutingOptions",
    "Side",
    "Transaction",
    "TransactionState",
    "capture",
    "from_minor",
    "hold",
    "minor_digits",
    "new_id",
    "partition_key",
    "reversal",
    "to_minor",
    "transfer",
    "void",
]
