"""The records of the cross-shard protocol as the state machine applies them.

A cross-shard transaction is recorded on each shard it touches as ordinary-looking records of
its own kinds (core.model.Kind: PREPARED, COMMIT, ABORT, HOLD, REVERSAL_MARK, DEADLINE) under
reserved ids (core.ids). This module builds those records and reads them back: a participant's
piece and what it locks (a transaction it reverses, a hold whose fate it decides), a piece's
settlement, a held piece's deadline, and a shard's share of a cross-shard hold's post. No I/O,
no protobuf: the gateway's driver and the participant's sweep (shards.crossshard) build their
records here, and core.state applies them.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence

from core import ids
from core.journal import decode_legs, encode_legs
from core.model import AccountSpec, Kind, Leg, TransactionSpec, TransactionState, expires_at

CLEARING_CODE = 9999
"""The account code of every clearing account."""


def clearing_account_spec(currency: str) -> AccountSpec:
    """A shard's piece of the clearing account of `currency` (core.ids.clearing_account)."""
    return AccountSpec(ids.clearing_account(currency), currency, CLEARING_CODE, False, False, ())


def legs_digest(legs: tuple[Leg, ...]) -> str:
    """What a coordinator's piece records of the client's legs on every shard (core.ids
    DIGEST_KEY): 32 hex digits of SHA-256 over their canonical encoding, in the client's order,
    as a single shard compares a replay's legs."""
    return hashlib.sha256(encode_legs(legs).encode()).hexdigest()[:32]


def with_digest(
    spec: TransactionSpec, digest: str, shards: Sequence[int] = (), reversal_of: str = ""
) -> TransactionSpec:
    """A coordinator's piece carrying the digest of the client's legs, the shards of its
    attempt's other pieces and, for a reversal, what it reverses (none: as it is)."""
    added = [(ids.DIGEST_KEY, digest)] if digest else []
    if reversal_of:
        added.append((ids.REVERSAL_OF_KEY, reversal_of))
    if shards:
        added.append((ids.SHARDS_KEY, ",".join(str(s) for s in sorted(set(shards)))))
    if not added:
        return spec
    metadata = tuple(sorted((*spec.metadata, *added)))
    return spec._replace(metadata=metadata)


def reversal_of(spec: TransactionSpec) -> str:
    """What a coordinator's piece of a reversal reverses ("" if none is recorded)."""
    return dict(spec.metadata).get(ids.REVERSAL_OF_KEY, "")


def participant_shards(spec: TransactionSpec) -> tuple[int, ...]:
    """The shards a coordinator's piece records for its attempt's other pieces (() if none)."""
    text = dict(spec.metadata).get(ids.SHARDS_KEY, "")
    return tuple(int(s) for s in text.split(",")) if text else ()


def share_of_post(held: tuple[Leg, ...], post: tuple[Leg, ...]) -> tuple[Leg, ...]:
    """What one shard posts of its piece of a cross-shard hold when the client posts `post`
    (its legs over all shards; empty: the whole hold): the amounts of its own held keys
    (account, side, currency) but the clearing legs, balanced per currency by a clearing leg.
    The coordinator and every participant compute their share from their own piece."""
    if not post:
        return held
    wanted: dict[tuple[str, bool, str], int] = {}
    for leg in post:
        key = (leg.account_id, leg.is_debit, leg.currency)
        wanted[key] = wanted.get(key, 0) + leg.amount
    share: list[Leg] = []
    net: dict[str, int] = {}
    seen: set[tuple[str, bool, str]] = set()
    for leg in held:
        key = (leg.account_id, leg.is_debit, leg.currency)
        if key in seen or ids.is_clearing(leg.account_id):
            continue
        seen.add(key)
        amount = wanted.get(key, 0)
        if amount:
            share.append(Leg(leg.account_id, leg.is_debit, amount, leg.currency))
            net[leg.currency] = net.get(leg.currency, 0) + (amount if leg.is_debit else -amount)
    for currency, difference in sorted(net.items()):
        if difference:
            clearing = ids.clearing_account(currency)
            share.append(Leg(clearing, difference < 0, abs(difference), currency))
    return tuple(share)


def _piece_field(spec: TransactionSpec, wanted: str) -> str:
    """A cluster metadata key of a participant's piece ("": not one, or not set)."""
    if spec.kind is not Kind.PREPARED or not spec.metadata:
        return ""
    for key, value in spec.metadata:
        if key == wanted:
            return value
    return ""


def reversed_by_piece(spec: TransactionSpec) -> str:
    """The transaction a participant's piece reverses ("": none)."""
    return _piece_field(spec, ids.REVERSES_KEY)


def decided_by_piece(spec: TransactionSpec) -> str:
    """The hold a participant's piece decides ("": none)."""
    return _piece_field(spec, ids.DECIDES_KEY)


def fate_piece(
    piece_id_: str, coordinator: int, deadline_s: int, fate: TransactionSpec
) -> TransactionSpec:
    """The piece deciding the client's post or void `fate` of a hold recorded here."""
    metadata = (
        *fate.metadata,
        (ids.DECIDES_KEY, fate.target_id),
        (ids.FATE_KEY, "post" if fate.kind is Kind.POST_PENDING else "void"),
        (ids.FATE_LEGS_KEY, encode_legs(fate.legs)),
    )
    return TransactionSpec(
        piece_id_,
        Kind.PREPARED,
        (),
        fate.code,
        tuple(sorted(metadata)),
        fate.value_date,
        deadline_s,
        str(coordinator),
        fate.linked,
    )


def fate_of_piece(piece: TransactionSpec) -> TransactionSpec:
    """The client's post or void a fate piece decides, as the client sent it."""
    fields = dict(piece.metadata)
    return TransactionSpec(
        ids.parse_piece_id(piece.id)[0],
        Kind.POST_PENDING if fields[ids.FATE_KEY] == "post" else Kind.VOID_PENDING,
        decode_legs(fields[ids.FATE_LEGS_KEY]),
        piece.code,
        tuple((k, v) for k, v in piece.metadata if not ids.is_reserved_key(k)),
        piece.value_date,
        0,
        fields[ids.DECIDES_KEY],
    )


def reversal_mark_spec(reversal_id: str, target_id: str, code: int) -> TransactionSpec:
    """Marks target_id reversed by reversal_id; linked to the reversal's own piece."""
    return TransactionSpec(
        ids.reversal_mark_id(target_id),
        Kind.REVERSAL_MARK,
        (),
        code,
        (("reversal", reversal_id),),
        "",
        0,
        target_id,
        True,
    )


def attempt_of_commit(commit: TransactionSpec) -> str:
    """The attempt that a coordinator's COMMIT record committed (from its abort marker id)."""
    return ids.parse_abort_marker(commit.target_id)[1]


class DeadlineMode(enum.Enum):
    """Why a held cross-shard piece gets another deadline, which decides whether it may:
    a participant must never stop waiting for an answer a gateway may still be deciding."""

    # The hold committed: keep the piece until the hold's expiry, unless a decision has
    # re-armed it since (only while it still has its prepare deadline).
    CONFIRM = "confirm"
    # A gateway is about to decide the hold's fate: ask by then. A deadline already short
    # (another decision's, at most two prepare deadlines away) is only ever made later; a
    # long one (the hold's expiry, or none) earlier.
    DECISION = "decision"
    # The participant asked at its deadline and the hold is open: back to the hold's expiry,
    # unless a decision re-armed the piece meanwhile (only if it still has the deadline seen).
    ASKED = "asked"


def deadline_spec(
    piece: str, expires_at_ns: int, mode: DeadlineMode, seen_ns: int = 0
) -> TransactionSpec:
    """Re-arms a held cross-shard piece's deadline (0: none) as `mode` allows; for ASKED,
    seen_ns is the deadline that made the participant ask. Idempotent by effect, not id: the
    state machine records it as core.ids.deadline_record_id(piece, its timestamp), with the
    deadline it set, or not at all if the piece keeps its deadline."""
    metadata = [("expires_at_ns", str(expires_at_ns)), ("mode", mode.value)]
    if mode is DeadlineMode.ASKED:
        metadata.append(("seen_ns", str(seen_ns)))
    return TransactionSpec(
        ids.deadline_request_id(piece), Kind.DEADLINE, (), 1, tuple(metadata), "", 0, piece
    )


def deadline_of(spec: TransactionSpec) -> int:
    return int(dict(spec.metadata)["expires_at_ns"])


def next_deadline(spec: TransactionSpec, piece: TransactionState, now_ns: int) -> int:
    """The deadline a DEADLINE spec gives a held piece (see DeadlineMode)."""
    fields = dict(spec.metadata)
    wanted = int(fields["expires_at_ns"])
    current = piece.expires_at_ns
    mode = DeadlineMode(fields.get("mode", DeadlineMode.DECISION.value))
    if mode is DeadlineMode.CONFIRM:
        prepared_until = expires_at(piece.timestamp_ns, piece.spec.timeout_seconds)
        return wanted if current == prepared_until else current
    if mode is DeadlineMode.ASKED:
        return wanted if current == int(fields.get("seen_ns", "0")) else current
    # Another decision's deadline is at most one prepare deadline away (two, for clock skew
    # between machines); a hold's expiry that near is kept too (asking then is as good).
    short = 0 < current <= now_ns + 2 * piece.spec.timeout_seconds * 1_000_000_000
    return max(current, wanted) if short else wanted


def hold_settlement_spec(
    piece: str, kind: Kind, resolution_id_: str, legs: tuple[Leg, ...] = ()
) -> TransactionSpec:
    """A participant's piece of a cross-shard hold, settled as its coordinator decided: posted
    (kind POST_PENDING, legs: the client's post legs, empty for the whole hold), voided or
    expired. metadata names the client's resolution (the post's or void's id)."""
    posted = kind is Kind.POST_PENDING
    settled_id = ids.expiry_id(piece) if kind is Kind.EXPIRY else ids.settlement_id(piece, posted)
    return TransactionSpec(
        settled_id,
        kind,
        legs,
        1,
        (("resolution", resolution_id_),) if resolution_id_ else (),
        "",
        0,
        piece,
    )


def resolution_spec(transaction_id: str, commit: bool) -> TransactionSpec:
    """A cross-shard piece's resolution here: post it (commit) or void it (abort)."""
    return TransactionSpec(
        ids.settlement_id(transaction_id, commit),
        Kind.POST_PENDING if commit else Kind.VOID_PENDING,
        (),
        1,
        (),
        "",
        0,
        transaction_id,
    )
