"""Stateless validation: raw client values in, a domain spec or a Rejection out.

Everything here is decided from the item alone (no ledger state), so the servicer can refuse
bad items before they reach the writer. Messages name the field at fault.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from core import ids, limits
from core.currencies import is_known_currency
from core.model import (
    AccountSpec,
    CloseSpec,
    Kind,
    Leg,
    Metadata,
    Rejection,
    ResultCode,
    TransactionSpec,
)

# Neither admits core.ids' reserved ids and keys ("~..."): no client can submit or forge one.
_ID_PATTERN = re.compile(r"@?[A-Za-z0-9][A-Za-z0-9_.:/+=-]*")
_METADATA_KEY_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
_VALUE_DATE_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")

RawLeg = tuple[str, int, int, str]
"""(account_id, side as tally.v1.Side number, amount, currency), straight from the wire."""

SIDE_DEBIT = 1
SIDE_CREDIT = 2

CLEARING_RESERVED = (
    f"accounts under {ids.CLEARING_PREFIX} are the cluster's own inter-shard clearing accounts; "
    "clients cannot post to, create or close them"
)
"""Why a client's item naming a clearing account is refused (by the gateway and by a node)."""

MOVES_RESERVED = (
    f"accounts under {ids.MOVES_PREFIX} are the cluster's own slot-move accounts; "
    "clients cannot post to, create or close them"
)
"""Why a client's item naming a slot-move account is refused (as CLEARING_RESERVED)."""


def _reserved_account_problem(account_id: str) -> str:
    return CLEARING_RESERVED if ids.is_clearing(account_id) else MOVES_RESERVED


# What an abort marker may record as the reason an attempt did not commit: a refusal, never a
# success (a later commit of the attempt answers the recorded reason as its own), nor "not
# known yet" (which a recorded abort is not).
_NOT_REFUSALS = frozenset(
    {
        ResultCode.UNSPECIFIED,
        ResultCode.OK,
        ResultCode.CREATED,
        ResultCode.REPLAYED,
        ResultCode.OUTCOME_UNKNOWN,
    }
)
REFUSAL_CODES = frozenset(code for code in ResultCode if code not in _NOT_REFUSALS)

_ORDINARY = (Kind.ORDINARY, "")


def id_problem(value: str, field: str) -> str:
    """Why an id is invalid, or "" when it is valid."""
    if not value:
        return f"{field} is empty"
    if len(value.encode()) > limits.id_length_max:
        return f"{field} is longer than {limits.id_length_max} bytes"
    if _ID_PATTERN.fullmatch(value) is None:
        return (
            f"{field} {value[:40]!r} has characters outside A-Z a-z 0-9 - _ . : / + = "
            "(or does not start with a letter or digit after an optional '@')"
        )
    return ""


def metadata_problem(metadata: Mapping[str, str]) -> str:
    if len(metadata) > limits.metadata_entry_count_max:
        return f"metadata has more than {limits.metadata_entry_count_max} entries"
    for key, value in metadata.items():
        if len(key) > limits.metadata_key_length_max or not _METADATA_KEY_PATTERN.fullmatch(key):
            return f"metadata key {key[:40]!r} must be 1..64 characters of A-Z a-z 0-9 _ . -"
        if len(value.encode()) > limits.metadata_value_length_max:
            return f"metadata[{key}] is longer than {limits.metadata_value_length_max} bytes"
    return ""


def canonical_metadata(metadata: Mapping[str, str]) -> Metadata:
    if not metadata:
        return ()
    return tuple(sorted(metadata.items()))


def code_problem(code: int, field: str) -> str:
    if not 1 <= code <= limits.code_max:
        return f"{field} must be 1..{limits.code_max}, got {code}"
    return ""


def check_account(
    account_id: str,
    currency: str,
    code: int,
    debits_must_not_exceed_credits: bool,
    credits_must_not_exceed_debits: bool,
    metadata: Mapping[str, str],
) -> AccountSpec | Rejection:
    problem = id_problem(account_id, "id")
    if problem:
        return Rejection(ResultCode.INVALID_ID, problem)
    if not is_known_currency(currency):
        return Rejection(ResultCode.INVALID_CURRENCY, f"currency {currency[:8]!r} is not ISO 4217")
    problem = code_problem(code, "code")
    if problem:
        return Rejection(ResultCode.INVALID_CODE, problem)
    if debits_must_not_exceed_credits and credits_must_not_exceed_debits:
        return Rejection(
            ResultCode.INVALID_FLAGS,
            "debits_must_not_exceed_credits and credits_must_not_exceed_debits are exclusive",
        )
    if account_id.startswith("@") and (
        debits_must_not_exceed_credits or credits_must_not_exceed_debits
    ):
        return Rejection(
            ResultCode.INVALID_SPREAD_ACCOUNT_FLAGS,
            "spread (@) accounts are split across shards and cannot carry must-not-exceed flags",
        )
    problem = metadata_problem(metadata)
    if problem:
        return Rejection(ResultCode.INVALID_METADATA, problem)
    return AccountSpec(
        account_id,
        currency,
        code,
        debits_must_not_exceed_credits,
        credits_must_not_exceed_debits,
        canonical_metadata(metadata),
    )


def check_close(account_id: str) -> CloseSpec | Rejection:
    problem = id_problem(account_id, "account_id")
    if problem:
        return Rejection(ResultCode.INVALID_ID, problem)
    return CloseSpec(account_id)


def _kind_of(
    pending: bool, post_pending_id: str, void_pending_id: str, reverses_id: str
) -> tuple[Kind, str] | Rejection:
    if not (pending or post_pending_id or void_pending_id or reverses_id):
        return _ORDINARY
    chosen = [
        name
        for name, on in (
            ("pending", pending),
            ("post_pending_id", post_pending_id),
            ("void_pending_id", void_pending_id),
            ("reverses_id", reverses_id),
        )
        if on
    ]
    if len(chosen) > 1:
        return Rejection(ResultCode.INVALID_FLAGS, " and ".join(chosen) + " are exclusive")
    if pending:
        return (Kind.PENDING, "")
    for kind, target, field in (
        (Kind.POST_PENDING, post_pending_id, "post_pending_id"),
        (Kind.VOID_PENDING, void_pending_id, "void_pending_id"),
        (Kind.REVERSAL, reverses_id, "reverses_id"),
    ):
        if target:
            problem = id_problem(target, field)
            if problem:
                return Rejection(ResultCode.INVALID_ID, problem)
            return (kind, target)
    return (Kind.ORDINARY, "")


def _leg_problem(index: int, raw: RawLeg) -> Rejection | None:
    account_id, side, amount, currency = raw
    field = f"legs[{index}]"
    problem = id_problem(account_id, f"{field}.account_id")
    if problem:
        return Rejection(ResultCode.INVALID_ID, problem)
    if side not in (SIDE_DEBIT, SIDE_CREDIT):
        return Rejection(ResultCode.INVALID_SIDE, f"{field}.side must be DEBIT or CREDIT")
    if not 1 <= amount <= limits.amount_max:
        return Rejection(
            ResultCode.INVALID_AMOUNT, f"{field}.amount must be 1..{limits.amount_max}"
        )
    if not is_known_currency(currency):
        return Rejection(
            ResultCode.INVALID_CURRENCY, f"{field}.currency {currency[:8]!r} is not ISO 4217"
        )
    return None


def check_legs(raw_legs: Sequence[RawLeg], kind: Kind) -> tuple[Leg, ...] | Rejection:
    """Legs: well formed, at least two (unless derived), no account on both sides, balanced."""
    if kind in (Kind.VOID_PENDING, Kind.REVERSAL):
        if raw_legs:
            return Rejection(ResultCode.INVALID_LEGS, "legs must be empty: they are derived")
        return ()
    if kind is Kind.POST_PENDING and not raw_legs:
        return ()
    if len(raw_legs) < 2:
        return Rejection(ResultCode.INVALID_LEGS, "a transaction needs at least two legs")
    if len(raw_legs) > limits.leg_count_max:
        return Rejection(
            ResultCode.INVALID_LEGS, f"a transaction has at most {limits.leg_count_max} legs"
        )
    for index, raw in enumerate(raw_legs):
        rejection = _leg_problem(index, raw)
        if rejection is not None:
            return rejection
    legs = tuple(Leg(a, side == SIDE_DEBIT, amount, cur) for a, side, amount, cur in raw_legs)
    if len(legs) == 2:
        # The common case, decided without building sets and sums.
        first, second = legs
        if (
            first.is_debit != second.is_debit
            and first.amount == second.amount
            and first.currency == second.currency
            and first.account_id != second.account_id
        ):
            return legs
    problem = sides_problem(legs) or balance_problem(legs)
    if problem:
        code = ResultCode.INVALID_LEGS if "both" in problem else ResultCode.UNBALANCED
        return Rejection(code, problem)
    return legs


def sides_problem(legs: Iterable[Leg]) -> str:
    debited = {leg.account_id for leg in legs if leg.is_debit}
    credited = {leg.account_id for leg in legs if not leg.is_debit}
    both = debited & credited
    if both:
        return f"legs: account {sorted(both)[0]!r} is both debited and credited"
    return ""


def balance_problem(legs: Iterable[Leg]) -> str:
    """Per currency, debits must equal credits."""
    net: dict[str, int] = {}
    for leg in legs:
        net[leg.currency] = net.get(leg.currency, 0) + (leg.amount if leg.is_debit else -leg.amount)
    for currency, difference in sorted(net.items()):
        if difference:
            return f"legs: {currency} debits and credits differ by {abs(difference)}"
    return ""


def value_date_problem(value_date: str) -> str:
    if not value_date:
        return ""
    if _VALUE_DATE_PATTERN.fullmatch(value_date) is None:
        return f"value_date {value_date[:20]!r} must be YYYY-MM-DD"
    try:
        datetime.date.fromisoformat(value_date)
    except ValueError:
        return f"value_date {value_date!r} is not a calendar date"
    return ""


def check_transaction(
    transaction_id: str,
    raw_legs: Sequence[RawLeg],
    code: int,
    metadata: Mapping[str, str],
    value_date: str,
    pending: bool,
    timeout_seconds: int,
    linked: bool,
    post_pending_id: str = "",
    void_pending_id: str = "",
    reverses_id: str = "",
) -> TransactionSpec | Rejection:
    problem = id_problem(transaction_id, "id")
    if problem:
        return Rejection(ResultCode.INVALID_ID, problem, linked)
    kind_and_target = _kind_of(pending, post_pending_id, void_pending_id, reverses_id)
    if isinstance(kind_and_target, Rejection):
        return Rejection(kind_and_target.code, kind_and_target.message, linked)
    kind, target_id = kind_and_target
    legs = check_legs(raw_legs, kind)
    if isinstance(legs, Rejection):
        return Rejection(legs.code, legs.message, linked)
    rejection = _check_scalars(code, metadata, value_date, kind, timeout_seconds)
    if rejection is not None:
        return Rejection(rejection.code, rejection.message, linked)
    return TransactionSpec(
        transaction_id,
        kind,
        legs,
        code,
        canonical_metadata(metadata),
        value_date,
        timeout_seconds,
        target_id,
        linked,
    )


def check_scalars(
    code: int, metadata: Mapping[str, str], value_date: str, kind: Kind, timeout_seconds: int
) -> Rejection | None:
    """A transaction's code, metadata, value date and timeout (as for a `kind`), or why not:
    for records built without check_transaction (a cross-shard piece without legs)."""
    return _check_scalars(code, metadata, value_date, kind, timeout_seconds)


def _check_scalars(
    code: int, metadata: Mapping[str, str], value_date: str, kind: Kind, timeout_seconds: int
) -> Rejection | None:
    problem = code_problem(code, "code")
    if problem:
        return Rejection(ResultCode.INVALID_CODE, problem)
    problem = metadata_problem(metadata)
    if problem:
        return Rejection(ResultCode.INVALID_METADATA, problem)
    problem = value_date_problem(value_date)
    if problem:
        return Rejection(ResultCode.INVALID_VALUE_DATE, problem)
    if not timeout_seconds:
        return None
    if kind is not Kind.PENDING:
        return Rejection(ResultCode.INVALID_TIMEOUT, "timeout_seconds is only for pending")
    if timeout_seconds > limits.pending_timeout_seconds_max:
        return Rejection(
            ResultCode.INVALID_TIMEOUT,
            f"timeout_seconds must be at most {limits.pending_timeout_seconds_max}",
        )
    return None


def mark_batch(items: list[TransactionSpec | Rejection]) -> list[TransactionSpec | Rejection]:
    """Batch-level rules: duplicate ids in one batch, and a linked group left open at the end."""
    seen: set[str] = set()
    marked: list[TransactionSpec | Rejection] = []
    for item in items:
        if isinstance(item, TransactionSpec):
            if item.id in seen:
                item = Rejection(
                    ResultCode.DUPLICATE_ID_IN_BATCH,
                    f"id {item.id!r} appears earlier in this batch",
                    item.linked,
                )
            else:
                seen.add(item.id)
        marked.append(item)
    return _close_open_chain(marked)


def _close_open_chain(
    items: list[TransactionSpec | Rejection],
) -> list[TransactionSpec | Rejection]:
    if not items or not items[-1].linked:
        return items
    start = len(items) - 1
    while start > 0 and items[start - 1].linked:
        start -= 1
    message = "the batch ends inside a linked group (the last item has linked = true)"
    for index in range(start, len(items)):
        items[index] = Rejection(ResultCode.LINKED_CHAIN_OPEN, message, True)
    return items


def mark_duplicates(items: list[Any], field: str) -> list[Any]:
    """Later items repeating an earlier valid item's `field` (an id) are refused."""
    seen: set[str] = set()
    marked: list[Any] = []
    for item in items:
        if not isinstance(item, Rejection):
            value = getattr(item, field)
            if value in seen:
                item = Rejection(
                    ResultCode.DUPLICATE_ID_IN_BATCH,
                    f"{field} {value!r} appears earlier in this batch",
                )
            else:
                seen.add(value)
        marked.append(item)
    return marked


def mark_duplicate_accounts(
    items: list[AccountSpec | Rejection],
) -> list[AccountSpec | Rejection]:
    return mark_duplicates(items, "id")


# ---- the cluster's clearing accounts, refused to clients ----


def clearing_leg_problem(legs: Iterable[Leg]) -> str:
    """CLEARING_RESERVED (MOVES_RESERVED) if a leg names a clearing (slot-move) account, else
    ""."""
    for leg in legs:
        if leg.account_id.startswith(ids.CLUSTER_ACCOUNT_PREFIXES):
            return _reserved_account_problem(leg.account_id)
    return ""


def refuse_clearing_legs(
    items: list[TransactionSpec | Rejection],
) -> list[TransactionSpec | Rejection]:
    """Clients' transactions with a leg on a clearing or slot-move account become INVALID_LEGS
    (in place)."""
    # Hot path (every item of every request): plain loops, the list untouched if clean.
    prefixes = ids.CLUSTER_ACCOUNT_PREFIXES
    for n, item in enumerate(items):
        if isinstance(item, TransactionSpec):
            for leg in item.legs:
                if leg.account_id.startswith(prefixes):
                    problem = _reserved_account_problem(leg.account_id)
                    items[n] = Rejection(ResultCode.INVALID_LEGS, problem, item.linked)
                    break
    return items


def refuse_clearing_accounts(items: list[Any], account_of: Any) -> list[Any]:
    """Clients' creations or closings of a clearing or slot-move account become INVALID_ID."""
    return [
        Rejection(ResultCode.INVALID_ID, _reserved_account_problem(account_of(item)))
        if not isinstance(item, Rejection) and ids.is_cluster_account(account_of(item))
        else item
        for item in items
    ]


def abort_reason_problem(reason: int, field: str) -> str:
    """Why an abort marker cannot record `reason` ("": it can; 0 means UNAVAILABLE)."""
    if reason == 0 or reason in REFUSAL_CODES:
        return ""
    return (
        f"{field} {reason} is not a refusal code (a ResultCode other than OK, CREATED and REPLAYED)"
    )
