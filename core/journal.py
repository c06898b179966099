"""Canonical encodings of what a batch records, and the journal block hash chain.

A committed batch is a journal block. Its hash covers the previous block's hash and a canonical
line for every account created, transaction recorded, posting written and account closed, so
an auditor can recompute the chain from the stored rows alone (see verify_chain in core.audit).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from core.model import (
    AccountSpec,
    AccountState,
    Kind,
    Leg,
    Metadata,
    Posting,
    TransactionSpec,
    TransactionState,
)

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
    return created_account_line(account.spec, account.created_at_ns)


def created_account_line(spec: AccountSpec, created_at_ns: int) -> str:
    return (
        f"A|{spec.id}|{spec.currency}|{spec.code}|{account_flags(spec)}|"
        f"{encode_metadata(spec.metadata)}|{created_at_ns}"
    )


def legs_texts(state: TransactionState) -> tuple[str, str]:
    """The encoded legs as submitted and as applied (most often the same tuple: encode once)."""
    legs_text = encode_legs(state.spec.legs)
    if state.applied_legs is state.spec.legs:
        return legs_text, legs_text
    return legs_text, encode_legs(state.applied_legs)


def stored_applied_legs(legs_text: str, applied_text: str) -> str | None:
    """The applied legs as stored (a shard's applied_legs column, shard migration 11, and a
    cold segment's): None when they are the legs as submitted, as most are."""
    return None if applied_text == legs_text else applied_text


def applied_legs_of(legs: tuple[Leg, ...], stored: str | None) -> tuple[Leg, ...]:
    """A record's applied legs from what is stored of them (None: its legs, `legs`)."""
    return legs if stored is None else decode_legs(stored)


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


def block_lines(
    accounts: Iterable[tuple[AccountSpec, int]],
    transactions: Iterable[tuple[TransactionState, tuple[str, str]]],
    postings: Iterable[Posting],
    closures: Iterable[tuple[str, int]],
) -> list[str]:
    """A block's canonical lines, in the order its hash covers: the accounts it creates (spec,
    creation time), its transactions (each with its legs_texts, which the writer keeps for its
    rows), its postings, its closures (account, time)."""
    lines = [created_account_line(spec, at) for spec, at in accounts]
    lines.extend(transaction_line(state, *texts) for state, texts in transactions)
    lines.extend(posting_line(posting) for posting in postings)
    lines.extend(closure_line(account_id, at) for account_id, at in closures)
    return lines


def block_body(lines: list[str]) -> bytes:
    """A block's canonical lines as the bytes its hash covers (and the change stream's LINES
    encoding sends)."""
    return "\n".join(lines).encode()


def block_hash(previous_hash: bytes, sequence: int, lines: list[str]) -> bytes:
    return body_hash(previous_hash, sequence, block_body(lines))


def body_hash(previous_hash: bytes, sequence: int, body: bytes) -> bytes:
    digest = hashlib.sha256(previous_hash)
    digest.update(f"block|{sequence}\n".encode())
    digest.update(body)
    return digest.digest()


class LineError(ValueError):
    """A block's lines that are not canonical lines."""


@dataclass(frozen=True, slots=True)
class ParsedBlock:
    """What a block's canonical lines record, in their order: the accounts created (with their
    creation time), the transactions created (spec, legs as applied, timestamp: their state as
    created follows from those), the postings and the closures (account, time)."""

    accounts: list[tuple[AccountSpec, int]]
    transactions: list[tuple[TransactionSpec, tuple[Leg, ...], int]]
    postings: list[Posting]
    closures: list[tuple[str, int]]


def parse_lines(body: bytes) -> ParsedBlock:
    """The records of a block's canonical lines (block_body's bytes): the inverse of
    account_line, transaction_line, posting_line and closure_line. Ids and every other field
    but metadata never hold '|'; metadata (JSON, which escapes line breaks) may, so it is what
    lies between the fields counted from either end. LineError for anything else."""
    parsed = ParsedBlock([], [], [], [])
    if not body:
        return parsed
    for number, raw in enumerate(body.split(b"\n"), 1):
        try:
            _parse_line(raw.decode(), parsed)
        except (ValueError, KeyError, IndexError) as error:
            raise LineError(f"line {number} is not a canonical line: {error}") from None
    return parsed


def _parse_line(line: str, parsed: ParsedBlock) -> None:
    parts = line.split("|")
    kind = parts[0]
    if kind == "A" and len(parts) >= 7:
        _, account_id, currency, code, flags, *metadata, created = parts
        bits = int(flags)
        spec = AccountSpec(
            account_id,
            currency,
            int(code),
            bool(bits & FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS),
            bool(bits & FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS),
            decode_metadata("|".join(metadata)),
        )
        parsed.accounts.append((spec, int(created)))
    elif kind == "T" and len(parts) >= 11:
        _, transaction_id, kind_number, code, *metadata = parts[:-6]
        value_date, timeout, target_id, legs, applied, timestamp = parts[-6:]
        transaction = TransactionSpec(
            transaction_id,
            Kind(int(kind_number)),
            decode_legs(legs),
            int(code),
            decode_metadata("|".join(metadata)),
            value_date,
            int(timeout),
            target_id,
        )
        applied_legs = transaction.legs if applied == legs else decode_legs(applied)
        parsed.transactions.append((transaction, applied_legs, int(timestamp)))
    elif kind == "P" and len(parts) == 12:
        _, sequence, transaction_id, account_id, side, *numbers = parts
        if side not in ("D", "C"):
            raise ValueError(f"side {side!r}")
        posted, pending, at, debits, credits, debits_pending, credits_pending = map(int, numbers)
        parsed.postings.append(
            Posting(
                int(sequence), transaction_id, account_id, side == "D", posted, pending, at,
                debits, credits, debits_pending, credits_pending,
            )
        )  # fmt: skip
    elif kind == "X" and len(parts) == 3:
        parsed.closures.append((parts[1], int(parts[2])))
    else:
        raise ValueError(f"{kind!r} with {len(parts)} fields")


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
