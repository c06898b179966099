"""Amounts in minor units, from and to decimal strings per currency.

The ledger stores integers of a currency's minor unit (cents for USD, yen for JPY). These
helpers convert exactly (Decimal, never float) and refuse what does not fit: more decimal
places than the currency has, a negative or non-finite amount. The exponents are ISO 4217's
for the currencies that are not 2; pass `digits` for anything else (a token, a unit of weight).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Final

# ISO 4217 minor-unit exponents other than 2.
_DIGITS: Final[dict[str, int]] = {
    **dict.fromkeys(
        ["BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI"], 0
    ),
    **dict.fromkeys(["VND", "VUV", "XAF", "XOF", "XPF"], 0),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
    **dict.fromkeys(["CLF", "UYW"], 4),
}
AMOUNT_MAX: Final = 2**63 - 1  # the ledger's counters are signed 64-bit


def minor_digits(currency: str) -> int:
    """How many decimal places the currency's minor unit has (2 unless ISO 4217 says else)."""
    return _DIGITS.get(currency.upper(), 2)


def to_minor(amount: str | Decimal | int, currency: str, digits: int | None = None) -> int:
    """ "12.34" USD -> 1234. ValueError for more places than the currency has, a negative,
    non-finite or too large amount; floats are refused (TypeError): they are not exact."""
    if isinstance(amount, float) or isinstance(amount, bool):
        raise TypeError("give amounts as str, Decimal or int, not float: floats are not exact")
    places = minor_digits(currency) if digits is None else digits
    try:
        value = Decimal(amount)
    except InvalidOperation:
        raise ValueError(f"not a decimal amount: {amount!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"amount must be finite and not negative: {amount!r}")
    scaled = value.scaleb(places)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount!r} has more than {places} decimal places for {currency}")
    minor = int(scaled)
    if minor > AMOUNT_MAX:
        raise ValueError(f"{amount!r} {currency} is beyond the ledger's 64-bit amounts")
    return minor


def from_minor(minor: int, currency: str, digits: int | None = None) -> str:
    """1234 USD -> "12.34"; 5 JPY -> "5"."""
    places = minor_digits(currency) if digits is None else digits
    if places == 0:
        return str(minor)
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), 10**places)
    return f"{sign}{whole}.{fraction:0{places}d}"
