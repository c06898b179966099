"""The reserved ids of the ledger: every id and metadata key the cluster writes itself.

A shard records some transactions no client submits (a hold's expiry, the records of the
cross-shard protocol), and the gateway keeps one clearing account per currency. Their ids live
in namespaces no client id can enter: transaction ids and metadata keys starting with "~" (client
ids start with a letter or digit, after an optional "@": core.validation), and the clearing
accounts under "@clearing/", which the gateway and every node refuse to clients. This module
spells all of them; nothing else writes these prefixes by hand.

Conventions: a builder returns the id; parse_* returns its parts and raises ValueError for an id
not of its form. Parsers are pure and check the grammar (prefix, attempt, non-empty parts), not
whether the id they wrap is a valid client id (core.validation decides that). is_* answer
whether an id is of a form, never raising.

The forms (T: a client's transaction id; A: an attempt; P: a participant's piece id):

    ~piece/A/T       a participant's piece of attempt A of cross-shard transaction T
    ~abort/A/T       the coordinator's abort marker of attempt A of T
    ~expired/H       the expiry of hold H (H a client's hold, or a piece P of a hold)
    ~commit/P        a participant's piece posted as its coordinator decided
    ~void/P          a participant's piece voided as its coordinator decided
    ~reversal/T      the coordinator's mark that cross-shard transaction T was reversed
    ~deadline/P      a request to give held piece P another deadline (as submitted)
    ~deadline/N/P    that request as recorded, N its timestamp in ns
    @clearing/CUR    the inter-shard clearing account of currency CUR (a spread account)
    ~moveout/M/X     slot move M's move-out of account X at its source shard
    ~movein/M/X      slot move M's move-in of account X at its target shard
    ~moveout/M/~hold/H  move M's release, at the source, of open hold H (it left with the move)
    ~movein/M/~hold/H   move M's raise, at the target, of the pending amounts of open hold H
    @moves/CUR       the account a slot move's entries balance on (a spread account)
"""

from __future__ import annotations

import re
from typing import Final

RESERVED_MARK: Final = "~"
"""The first character of every reserved transaction id and metadata key."""

_PIECE: Final = "~piece/"
_ABORT: Final = "~abort/"
_EXPIRED: Final = "~expired/"
_COMMIT: Final = "~commit/"
_VOID: Final = "~void/"
_REVERSAL: Final = "~reversal/"
_DEADLINE: Final = "~deadline/"

CLEARING_PREFIX: Final = "@clearing/"
"""Each currency's inter-shard clearing account: a spread account, one piece per shard."""

MOVES_PREFIX: Final = "@moves/"
"""Each currency's slot-move account: a spread account whose pieces balance the move-out at a
source and the move-in at a target (docs/design.md, "Moving slots"); refused to clients as the
clearing accounts are."""

CLUSTER_ACCOUNT_PREFIXES: Final = (CLEARING_PREFIX, MOVES_PREFIX)
"""Every prefix of the accounts the cluster keeps itself (str.startswith takes the tuple)."""

_MOVE_OUT: Final = "~moveout/"
_MOVE_IN: Final = "~movein/"

# ---- metadata keys of a participant's piece (clients' keys cannot start with "~") ----

REVERSES_KEY: Final = "~reverses"
"""The transaction recorded here that the piece reverses (see core.pieces.reversed_by_piece)."""
DECIDES_KEY: Final = "~decides"
"""The hold recorded here whose post or void the piece decides (core.pieces.fate_piece)."""
FATE_KEY: Final = "~fate"
"""That hold's fate: "post" or "void"."""
FATE_LEGS_KEY: Final = "~legs"
"""The post's legs (core.pieces.encode_legs)."""
REVERSAL_OF_KEY: Final = "~of"
"""On a coordinator's piece of a reversal: the transaction it reverses (core.pieces
with_digest). Shown to clients as the record's reverses_id, never as metadata."""
SHARDS_KEY: Final = "~shards"
"""On a coordinator's piece: the other shards holding pieces of its attempt, as comma-separated
shard ids (core.pieces.with_digest). Never shown to clients as metadata."""
DIGEST_KEY: Final = "~digest"
"""On a coordinator's piece: the digest of the client's legs on every shard
(core.pieces.legs_digest), which the transaction's replays are compared by. Never shown to
clients."""


def is_reserved(identifier: str) -> bool:
    """An id in the namespace the cluster writes itself, which no client id can take."""
    return identifier.startswith(RESERVED_MARK)


def is_reserved_key(key: str) -> bool:
    """A metadata key the cluster adds to a piece, which no client key can be."""
    return key.startswith(RESERVED_MARK)


# ---- cross-shard attempts ----
#
# Each time a gateway runs a cross-shard transaction T it picks a fresh attempt name (a few hex
# digits). Participants hold their piece under piece_id(T, attempt); the coordinator records
# the commit as T itself (target_id: the attempt's abort marker) or the attempt's abort marker.
# So at most one attempt of T ever commits, and an attempt that was refused or aborted leaves
# the id free for the client's retry, as on a single shard.

ATTEMPT_LENGTH_MAX: Final = 32
_ATTEMPT_PATTERN: Final = re.compile(f"[0-9a-f]{{1,{ATTEMPT_LENGTH_MAX}}}")


def is_attempt(text: str) -> bool:
    """An attempt name: 1..ATTEMPT_LENGTH_MAX characters 0-9 a-f."""
    return _ATTEMPT_PATTERN.fullmatch(text) is not None


def piece_id(transaction_id: str, attempt: str) -> str:
    return f"{_PIECE}{attempt}/{transaction_id}"


def parse_piece_id(identifier: str) -> tuple[str, str]:
    """(transaction id, attempt) of a participant's piece id."""
    return _parse_attempt_id(identifier, _PIECE, "a cross-shard piece id")


def is_piece_id(identifier: str) -> bool:
    return _is_attempt_id(identifier, _PIECE)


def abort_marker_id(transaction_id: str, attempt: str) -> str:
    return f"{_ABORT}{attempt}/{transaction_id}"


def parse_abort_marker(identifier: str) -> tuple[str, str]:
    """(transaction id, attempt) of a coordinator's abort marker id."""
    return _parse_attempt_id(identifier, _ABORT, "an abort marker id")


def is_abort_marker(identifier: str) -> bool:
    return _is_attempt_id(identifier, _ABORT)


def _is_attempt_id(identifier: str, prefix: str) -> bool:
    try:
        _parse_attempt_id(identifier, prefix, "")
    except ValueError:
        return False
    return True


def _parse_attempt_id(identifier: str, prefix: str, what: str) -> tuple[str, str]:
    attempt, _, transaction_id = identifier.removeprefix(prefix).partition("/")
    if not identifier.startswith(prefix) or not is_attempt(attempt) or not transaction_id:
        raise ValueError(f"{identifier[:80]!r} is not {what}")
    return transaction_id, attempt


# ---- records a shard writes around another id ----


def expiry_id(hold_id: str) -> str:
    """The record written when a hold (or a participant's piece of a hold) expires."""
    return _EXPIRED + hold_id


def parse_expiry_id(identifier: str) -> str:
    """The hold an expiry id names."""
    return _parse_wrapped(identifier, _EXPIRED, "an expiry id")


def settlement_id(piece: str, posted: bool) -> str:
    """The record that posts (commit) or voids (abort) a participant's piece as decided."""
    return (_COMMIT if posted else _VOID) + piece


def parse_settlement_id(identifier: str) -> tuple[str, bool]:
    """(piece, posted) of a settlement id."""
    if identifier.startswith(_COMMIT):
        return _parse_wrapped(identifier, _COMMIT, "a settlement id"), True
    return _parse_wrapped(identifier, _VOID, "a settlement id"), False


def reversal_mark_id(transaction_id: str) -> str:
    """The coordinator's mark that a committed cross-shard transaction was reversed: one id
    per transaction, so it is reversed at most once."""
    return _REVERSAL + transaction_id


def parse_reversal_mark_id(identifier: str) -> str:
    """The transaction a reversal mark names."""
    return _parse_wrapped(identifier, _REVERSAL, "a reversal mark id")


def deadline_request_id(piece: str) -> str:
    """A request's id to give a held piece another deadline; idempotent by effect, not by
    this id: the state machine records it under deadline_record_id."""
    return _DEADLINE + piece


def parse_deadline_request_id(identifier: str) -> str:
    """The piece a deadline request names."""
    return _parse_wrapped(identifier, _DEADLINE, "a deadline request id")


def deadline_record_id(piece: str, timestamp_ns: int) -> str:
    return f"{_DEADLINE}{timestamp_ns}/{piece}"


def parse_deadline_record_id(identifier: str) -> tuple[str, int]:
    """(piece, timestamp in ns) of a recorded deadline."""
    timestamp, _, piece = identifier.removeprefix(_DEADLINE).partition("/")
    if not identifier.startswith(_DEADLINE) or not timestamp.isdigit() or not piece:
        raise ValueError(f"{identifier[:80]!r} is not a deadline record id")
    return piece, int(timestamp)


def _parse_wrapped(identifier: str, prefix: str, what: str) -> str:
    wrapped = identifier.removeprefix(prefix)
    if not identifier.startswith(prefix) or not wrapped:
        raise ValueError(f"{identifier[:80]!r} is not {what}")
    return wrapped


def readable_parts(identifier: str) -> tuple[str | None, str] | None:
    """How a record a shard writes itself that clients may read by id wraps another id, its
    parts as written (for the reader to judge): (None, the wrapped id) for an expiry or a
    settlement, whose wrapped id may be such a record too; (attempt, transaction id) for a
    piece or an abort marker. None for any other id (a client's, or a record not readable by
    id: reversal marks and deadlines are read with the records they name)."""
    if not is_reserved(identifier):  # the common case: a client's id
        return None
    for prefix in (_EXPIRED, _COMMIT, _VOID):
        if identifier.startswith(prefix):
            return None, identifier[len(prefix) :]
    for prefix in (_PIECE, _ABORT):
        if identifier.startswith(prefix):
            attempt, _, transaction_id = identifier[len(prefix) :].partition("/")
            return attempt, transaction_id
    return None


# ---- slot moves ----

MOVE_ID_LENGTH_MAX: Final = 32
_MOVE_ID_PATTERN: Final = re.compile(f"[0-9a-f]{{1,{MOVE_ID_LENGTH_MAX}}}")


def is_move_id(text: str) -> bool:
    """A slot move's name: 1..MOVE_ID_LENGTH_MAX characters 0-9 a-f."""
    return _MOVE_ID_PATTERN.fullmatch(text) is not None


def move_out_id(move_id: str, account_id: str) -> str:
    return f"{_MOVE_OUT}{move_id}/{account_id}"


def move_in_id(move_id: str, account_id: str) -> str:
    return f"{_MOVE_IN}{move_id}/{account_id}"


def is_move_out_id(identifier: str) -> bool:
    return identifier.startswith(_MOVE_OUT)


def is_move_entry(identifier: str) -> bool:
    """A slot move's own transaction, out or in: the move's, never the account holder's
    activity (reads across moves leave it out: docs/design.md, "Reads across the move")."""
    return identifier.startswith((_MOVE_OUT, _MOVE_IN))


_HOLD_PART: Final = "~hold/"
# Account ids never start with "~" (core.validation), so a hold's entries of a move cannot
# take the id of an account's.


def move_out_hold_id(move_id: str, hold_id: str) -> str:
    """The source's release of open hold `hold_id`'s pending amounts, as it leaves with move
    `move_id` (a VOID_PENDING of the hold: docs/design.md, "Moving slots")."""
    return f"{_MOVE_OUT}{move_id}/{_HOLD_PART}{hold_id}"


def move_in_hold_id(move_id: str, hold_id: str) -> str:
    """The target's entry raising the pending amounts of open hold `hold_id` moved in."""
    return f"{_MOVE_IN}{move_id}/{_HOLD_PART}{hold_id}"


def moved_out_by(resolved_by_id: str, record_id: str) -> str:
    """The move whose move-out released record `record_id` here, if `resolved_by_id` (what
    resolved it) is that release ("": it is not): the record left with the move, and this
    shard's copy is as it left."""
    if not resolved_by_id.startswith(_MOVE_OUT) or not resolved_by_id.endswith(record_id):
        return ""
    move_id, _, rest = resolved_by_id[len(_MOVE_OUT) :].partition("/")
    return move_id if rest == _HOLD_PART + record_id and is_move_id(move_id) else ""


def parse_move_out_id(identifier: str) -> tuple[str, str]:
    """(move id, account id) of a move-out transaction's id."""
    return _parse_move(identifier, _MOVE_OUT, "a move-out id")


def parse_move_in_id(identifier: str) -> tuple[str, str]:
    return _parse_move(identifier, _MOVE_IN, "a move-in id")


def _parse_move(identifier: str, prefix: str, what: str) -> tuple[str, str]:
    move_id, _, account_id = _parse_wrapped(identifier, prefix, what).partition("/")
    if not is_move_id(move_id) or not account_id:
        raise ValueError(f"{identifier[:80]!r} is not {what}")
    return move_id, account_id


def moves_account(currency: str) -> str:
    return MOVES_PREFIX + currency


def is_moves_account(account_id: str) -> bool:
    return account_id.startswith(MOVES_PREFIX)


def is_cluster_account(account_id: str) -> bool:
    """A clearing or slot-move account: the cluster's own, never a client's."""
    return account_id.startswith(CLUSTER_ACCOUNT_PREFIXES)


# ---- clearing accounts ----


def clearing_account(currency: str) -> str:
    return CLEARING_PREFIX + currency


def is_clearing(account_id: str) -> bool:
    return account_id.startswith(CLEARING_PREFIX)


def parse_clearing_account(account_id: str) -> str:
    """The currency of a clearing account id."""
    return _parse_wrapped(account_id, CLEARING_PREFIX, "a clearing account id")
