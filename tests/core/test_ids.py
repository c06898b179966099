"""The reserved-id grammar (core.ids): each builder's id parses back; malformed ids raise."""

import pytest

from core import ids


def test_builders_parse_back() -> None:
    assert ids.parse_piece_id(ids.piece_id("c1/T", "a1")) == ("c1/T", "a1")
    assert ids.parse_abort_marker(ids.abort_marker_id("c1/T", "ff")) == ("c1/T", "ff")
    assert ids.parse_expiry_id(ids.expiry_id("h")) == "h"
    piece = ids.piece_id("H", "a2")
    assert ids.parse_settlement_id(ids.settlement_id(piece, True)) == (piece, True)
    assert ids.parse_settlement_id(ids.settlement_id(piece, False)) == (piece, False)
    assert ids.parse_reversal_mark_id(ids.reversal_mark_id("T")) == "T"
    assert ids.parse_deadline_request_id(ids.deadline_request_id(piece)) == piece
    assert ids.parse_deadline_record_id(ids.deadline_record_id(piece, 17)) == (piece, 17)
    assert ids.parse_clearing_account(ids.clearing_account("EUR")) == "EUR"
    assert ids.is_clearing(ids.clearing_account("USD")) and not ids.is_clearing("@cash")


def test_the_forms_as_spelled() -> None:
    # Stored in every shard's journal: the grammar must never change.
    assert ids.piece_id("T", "a1") == "~piece/a1/T"
    assert ids.abort_marker_id("T", "a1") == "~abort/a1/T"
    assert ids.expiry_id("~piece/a1/T") == "~expired/~piece/a1/T"
    assert ids.settlement_id("P", True) == "~commit/P"
    assert ids.settlement_id("P", False) == "~void/P"
    assert ids.reversal_mark_id("T") == "~reversal/T"
    assert ids.deadline_request_id("P") == "~deadline/P"
    assert ids.deadline_record_id("P", 5) == "~deadline/5/P"
    assert ids.clearing_account("USD") == "@clearing/USD"


@pytest.mark.parametrize(
    "identifier",
    ["T", "~piece/", "~piece/a1", "~piece/a1/", "~piece//T", "~piece/xy/T", "~abort/a1/T"],
)
def test_malformed_piece_ids_raise(identifier: str) -> None:
    with pytest.raises(ValueError):
        ids.parse_piece_id(identifier)
    assert not ids.is_piece_id(identifier)


@pytest.mark.parametrize(
    ("parse", "identifier"),
    [
        (ids.parse_expiry_id, "~expired/"),
        (ids.parse_settlement_id, "~commit/"),
        (ids.parse_settlement_id, "~other/P"),
        (ids.parse_reversal_mark_id, "T"),
        (ids.parse_deadline_record_id, "~deadline/P"),
        (ids.parse_deadline_record_id, "~deadline/5/"),
        (ids.parse_abort_marker, "~abort/A1/T"),
        (ids.parse_clearing_account, "@clearing/"),
    ],
)
def test_malformed_ids_raise(parse: object, identifier: str) -> None:
    assert callable(parse)
    with pytest.raises(ValueError):
        parse(identifier)


def test_readable_parts() -> None:
    assert ids.readable_parts("T") is None
    assert ids.readable_parts("~reversal/T") is None
    assert ids.readable_parts("~expired/~piece/a1/T") == (None, "~piece/a1/T")
    assert ids.readable_parts("~void/x") == (None, "x")
    assert ids.readable_parts("~abort/zz/T") == ("zz", "T")
    assert ids.readable_parts("~piece/a1") == ("a1", "")


def test_reserved() -> None:
    assert ids.is_reserved("~anything") and not ids.is_reserved("@clearing/USD")
    assert ids.is_reserved_key(ids.REVERSES_KEY) and not ids.is_reserved_key("reason")
    assert ids.is_attempt("0af") and not ids.is_attempt("") and not ids.is_attempt("g")
    assert not ids.is_attempt("a" * (ids.ATTEMPT_LENGTH_MAX + 1))


def test_a_record_released_by_its_move_out_names_the_move() -> None:
    piece = ids.piece_id("k/h", "ab")
    assert ids.moved_out_by(ids.move_out_hold_id("0f1e", piece), piece) == "0f1e"
    assert ids.moved_out_by(ids.move_out_hold_id("0f1e", "k/h"), "k/h") == "0f1e"
    # Another record's release, a void, a move-in, a bad move id: not moved out by a move.
    assert ids.moved_out_by(ids.move_out_hold_id("0f1e", "x/k/h"), "k/h") == ""
    assert ids.moved_out_by(ids.settlement_id(piece, False), piece) == ""
    assert ids.moved_out_by(ids.move_in_hold_id("0f1e", piece), piece) == ""
    assert ids.moved_out_by(f"~moveout/XYZ/~hold/{piece}", piece) == ""
    assert ids.moved_out_by("", piece) == ""
