"""tally.client's amounts in minor units and its ids (no server needed)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.slots import SlotMap
from tally.client import Leg, Side, from_minor, minor_digits, new_id, partition_key, to_minor


def test_minor_units_follow_each_currency() -> None:
    assert to_minor("12.34", "USD") == 1234
    assert to_minor("5", "JPY") == 5
    assert to_minor("1.234", "KWD") == 1234
    assert to_minor(Decimal("0.10"), "EUR") == 10
    assert from_minor(1234, "USD") == "12.34"
    assert from_minor(5, "JPY") == "5"
    assert from_minor(7, "KWD") == "0.007"
    assert from_minor(-250, "USD") == "-2.50"
    assert minor_digits("usd") == 2


@pytest.mark.parametrize(
    ("amount", "currency", "problem"),
    [
        ("12.345", "USD", "more than 2 decimal places"),
        ("0.5", "JPY", "more than 0 decimal places"),
        ("-1", "USD", "not negative"),
        ("NaN", "USD", "finite"),
        ("ten", "USD", "not a decimal amount"),
        (str(2**63), "JPY", "64-bit"),
    ],
)
def test_amounts_that_do_not_fit_are_refused(amount: str, currency: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        to_minor(amount, currency)


def test_floats_are_refused_as_amounts() -> None:
    with pytest.raises(TypeError, match="not float"):
        to_minor(0.1, "USD")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="minor units"):
        Leg("cust-1/dep", Side.DEBIT, 12.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"1\.\.2"):
        Leg("cust-1/dep", Side.DEBIT, 0, "USD")


@given(
    st.integers(min_value=0, max_value=2**63 - 1),
    st.sampled_from(["USD", "JPY", "KWD", "CLF"]),
)
def test_minor_units_round_trip_exactly(minor: int, currency: str) -> None:
    assert to_minor(from_minor(minor, currency), currency) == minor


def test_an_id_is_homed_where_its_customers_accounts_are() -> None:
    slot_map = SlotMap.even(4)
    for n in range(200):
        key = f"cust-{n}"
        made = new_id(key, "repay")
        assert partition_key(made) == key
        assert made.startswith(f"{key}/repay-")
        assert slot_map.home_of(made) == slot_map.shard_of_account(f"{key}/dep")
    assert len({new_id("cust-1") for _ in range(1000)}) == 1000


@pytest.mark.parametrize("key", ["", "a/b"])
def test_a_partition_key_is_checked(key: str) -> None:
    with pytest.raises(ValueError, match="partition key"):
        new_id(key)
