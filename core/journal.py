"""Canonical encodings of what a batch records, and the journal block hash chain.

A committed batch is a journal block. Its hash covers the previous block's hash and a canonical
line for every account created, transaction recorded, posting written and account closed, so
an auditor can recompute the chain from the stored rows alone (see verify_chain in core.audit).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from core.model import AccountSpec, AccountState, Leg, Metadata, Posting, TransactionState

GENESIS_HASH = bytes(32)

FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS = 1
FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS = 2


def account_flags(spec: AccountSpec) -> int:
    flags = 0
    if spec.debits_must_not_exceed_credits:
        flags |= FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS
    if spec.credits_must_not_exceed_debits:
        flags |= FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS
    return flags


def encode_metadata(metadata: Metadata) -> str:
    if not metadata:
        return "{}"
    return json.dumps(dict(metadata), separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def decode_metadata(text: str) -> Metadata:
    if text == "{}":
        return ()
    loaded: dict[str, str] = json.loads(text)
    return tuple(sorted(loaded.items()))


def encode_legs(legs: tuple[Leg, ...]) -> str:
    """'D account amount CUR,C account amount CUR': ids never hold spaces or commas."""
    return ",".join(
        f"{'D' if leg.is_debit else 'C'} {leg.account_id} {leg.amount} {leg.currency}"
        for leg in legs
    )


def decode_legs(text: str) -> tuple[Leg, ...]:
    if not text:
        return ()
    legs = []
    for part in text.split(","):
        side, account_id, amount, currency = part.split(" ")
        legs.append(Leg(account_id, side == "D", int(amount), currency))
    return tuple(legs)


def account_line(account: AccountState) -> str:
    spec = account.spec
    return (
        f"A|{spec.id}|{spec.currency}|{spec.code}|{account_flags(spec)}|"
        f"{encode_metadata(spec.metadata)}|{account.created_at_ns}"
    )


def legs_texts(state: TransactionState) -> tuple[str, str]:
    """The encoded legs as submitted and as applied (most often the same tuple: encode once)."""
    legs_text = encode_legs(state.spec.legs)
    if state.applied_legs is state.spec.legs:
        return legs_text, legs_text
    return legs_text, encode_legs(state.applied_legs)


def transaction_line(state: TransactionState, legs_text: str, applied_legs_text: str) -> str:
    spec = state.spec
    return (
        f"T|{spec.id}|{int(spec.kind)}|{spec.code}|{encode_metadata(spec.metadata)}|"
        f"{spec.value_date}|{spec.timeout_seconds}|{spec.target_id}|{legs_text}|"
        f"{applied_legs_text}|{state.timestamp_ns}"
    )


def posting_line(posting: Posting) -> str:
    return (
        f"P|{posting.sequence}|{posting.transaction_id}|{posting.account_id}|"
        f"{'D' if posting.is_debit else 'C'}|{posting.posted_amount}|{posting.pending_delta}|"
        f"{posting.timestamp_ns}|{posting.debits_posted_after}|{posting.credits_posted_after}|"
        f"{posting.debits_pending_after}|{posting.credits_pending_after}"
    )


def closure_line(account_id: str, closed_at_ns: int) -> str:
    return f"X|{account_id}|{closed_at_ns}"


def block_hash(previous_hash: bytes, sequence: int, lines: list[str]) -> bytes:
    digest = hashlib.sha256(previous_hash)
    digest.update(f"block|{sequence}\n".encode())
    digest.update("\n".join(lines).encode())
    return digest.digest()


@dataclass(frozen=True, slots=True)
class BlockHeader:
    sequence: int
    previous_hash: bytes
    hash: bytes
    epoch: int
    created_at_ns: int
    next_posting_sequence: int
    last_timestamp_ns: int
    # The writer's signature over the head (core.signing.head_message); "" and b"": unsigned.
    key_id: str = ""
    signature: bytes = b""
