"""Transaction ids that carry the partition key the cluster's idempotency design needs.

An id is the idempotency key for the whole cluster; its partition key (the text before its
first '/', as for accounts) names its home shard, which records it. An id under the partition
key of its accounts ("cust-42/...") is recorded where its legs are: one call to one shard. A
linked group's ids must share one partition key.
"""

from __future__ import annotations

import secrets
import time

ID_LENGTH_MAX = 128  # core.ids' bound on ids


def partition_key(account_or_transaction_id: str) -> str:
    """The text before the first '/' (the whole id when it has none)."""
    return account_or_transaction_id.split("/", 1)[0]


def new_id(key: str, label: str = "") -> str:
    """A fresh id under the partition key: "KEY/[LABEL-]TIME-RANDOM", ordered by creation time
    (milliseconds, hex) and unique without coordination (64 random bits). Keep it with the
    business event that made it and retry with it: a new id for the same event is a new
    transaction."""
    if not key or "/" in key:
        raise ValueError(f"a partition key is non-empty text without '/': {key!r}")
    if label and "/" in label:
        raise ValueError(f"a label has no '/': {label!r}")
    stamp = f"{time.time_ns() // 1_000_000:x}-{secrets.token_hex(8)}"
    made = f"{key}/{label}-{stamp}" if label else f"{key}/{stamp}"
    if len(made) > ID_LENGTH_MAX:
        raise ValueError(f"the id would be longer than {ID_LENGTH_MAX} characters")
    return made
