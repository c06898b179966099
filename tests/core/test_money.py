"""core.money: minor units <-> decimal text, round trips for every currency and edge cases."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.currencies import minor_unit_scale
from core.money import AmountTextError, format_minor_units, parse_minor_units

CURRENCIES = st.sampled_from(sorted(minor_unit_scale))
# Counters are up to 2^63 - 1 (README); sums and differences of them reach further.
AMOUNTS_MINOR = st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.integers(
    min_value=-(10**40), max_value=10**40
)


@given(CURRENCIES, AMOUNTS_MINOR, st.booleans())
def test_parse_of_format_is_the_amount(currency: str, amount_minor: int, plus_sign: bool) -> None:
    text = format_minor_units(amount_minor, currency, plus_sign=plus_sign)
    assert parse_minor_units(text, currency) == amount_minor


@given(CURRENCIES, AMOUNTS_MINOR)
def test_grouping_only_inserts_separators(currency: str, amount_minor: int) -> None:
    grouped = format_minor_units(amount_minor, currency, grouped=True)
    assert grouped.replace(",", "") == format_minor_units(amount_minor, currency)
    whole = grouped.lstrip("-").split(".")[0]
    assert all(len(group) == 3 for group in whole.split(",")[1:])


@given(CURRENCIES, st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_format_is_the_decimal_text_the_callers_printed(currency: str, amount_minor: int) -> None:
    # What the terminal, statements and reconciliation printed before core.money.
    scale = minor_unit_scale[currency]
    value = Decimal(amount_minor).scaleb(-scale)
    assert format_minor_units(amount_minor, currency) == f"{value:.{scale}f}"
    assert format_minor_units(amount_minor, currency, grouped=True) == f"{value:,.{scale}f}"


@given(
    CURRENCIES,
    st.sampled_from(["", "+", "-"]),
    st.text("0123456789", min_size=1, max_size=20),
    st.text("0123456789", max_size=6),
)
def test_parse_is_exact_decimal_arithmetic(
    currency: str, sign: str, whole: str, decimals: str
) -> None:
    text = sign + whole + ("." + decimals if decimals else "")
    exact = Decimal(text).scaleb(minor_unit_scale[currency])
    if exact == exact.to_integral_value():
        assert parse_minor_units(text, currency) == int(exact)
    else:
        with pytest.raises(AmountTextError, match="decimals for"):
            parse_minor_units(text, currency)


def test_scale_zero_currency_has_no_point() -> None:
    assert format_minor_units(1_500_000, "JPY", grouped=True) == "1,500,000"
    assert format_minor_units(-7, "JPY") == "-7"
    assert parse_minor_units("7", "JPY") == 7
    assert parse_minor_units("7.0", "JPY") == 7  # zeros beyond the scale change nothing
    with pytest.raises(AmountTextError, match=r"amount 7\.5 has more than 0 decimals for JPY"):
        parse_minor_units("7.5", "JPY")


def test_scale_three_currency() -> None:
    assert format_minor_units(1_500, "KWD") == "1.500"
    assert format_minor_units(1_234_567_891, "KWD", grouped=True) == "1,234,567.891"
    assert format_minor_units(5, "KWD") == "0.005"
    assert parse_minor_units("0.005", "KWD") == 5
    assert parse_minor_units("1.5", "KWD") == 1_500
    with pytest.raises(AmountTextError, match=r"amount 0\.0005 has more than 3 decimals for KWD"):
        parse_minor_units("0.0005", "KWD")


def test_negative_amounts() -> None:
    assert format_minor_units(-5, "USD") == "-0.05"
    assert format_minor_units(-120_000_000, "USD", grouped=True) == "-1,200,000.00"
    assert format_minor_units(-5, "USD", plus_sign=True) == "-0.05"
    assert parse_minor_units("-0.05", "USD") == -5
    assert parse_minor_units("-1500.5", "USD") == -150_050


def test_plus_sign_for_positive_amounts_only() -> None:
    assert format_minor_units(150_000, "USD", grouped=True, plus_sign=True) == "+1,500.00"
    assert format_minor_units(0, "USD", plus_sign=True) == "0.00"
    assert parse_minor_units("+1500.00", "USD") == 150_000


def test_too_many_decimals_are_refused_not_rounded() -> None:
    with pytest.raises(AmountTextError, match=r"amount 1\.001 has more than 2 decimals for USD"):
        parse_minor_units("1.001", "USD")
    assert parse_minor_units("1.000", "USD") == 100


@pytest.mark.parametrize(
    "text",
    ["", "-", "+", "1,5", "1,500.00", "1e3", ".5", "5.", "1_000", "NaN", "Infinity", "--1", "1 0"],
)
def test_text_that_is_not_a_plain_decimal_is_refused(text: str) -> None:
    with pytest.raises(AmountTextError, match=r"is not a decimal like -1500\.00"):
        parse_minor_units(text, "USD")


def test_surrounding_whitespace_is_ignored() -> None:
    assert parse_minor_units(" 12.34\n", "USD") == 1_234


def test_unknown_currency() -> None:
    with pytest.raises(AmountTextError, match="unknown currency 'XXX'"):
        parse_minor_units("1.00", "XXX")
    # Shown rather than refused: a newer ledger may hold a currency this build lacks.
    assert format_minor_units(150, "XXX") == "150"


def test_error_is_a_value_error() -> None:
    # Statement parsing and the audit commands report ValueErrors as format errors.
    assert issubclass(AmountTextError, ValueError)
