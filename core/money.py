"""Money as text: integer minor units <-> exact decimal text in the currency's scale.

The one formatter and parser of amounts for people (the terminal, statements, reconciliation):
150000 USD <-> "1500.00" (or "1,500.00" grouped), 7 JPY <-> "7", 1500 KWD <-> "1.500". The
scale comes from core.currencies. Integer arithmetic only, never a float and never a Decimal
context, so an amount of any size (a sum over many accounts too) is exact. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Final

from core.currencies import minor_unit_scale

# The documented amount text (docs/audit.md): an optional sign, digits, optionally a point and
# digits; no exponent, no thousands separator, no bare point (".5", "5."), nothing else.
_AMOUNT_TEXT: Final = re.compile(r"([+-]?)([0-9]+)(?:\.([0-9]+))?")


class AmountTextError(ValueError):
    """Text that is not an amount of its currency; the message says what is wrong with it."""


def format_minor_units(
    amount_minor: int, currency: str, *, grouped: bool = False, plus_sign: bool = False
) -> str:
    """Minor units as exact decimal text in major units: 150000 USD -> '1500.00'.

    grouped: thousands separated by ',' ('1,500.00'); plus_sign: a positive amount gets a '+'
    ('+1500.00'; zero gets none), for differences and signed movements. A currency this build
    does not know is shown in minor units (scale 0): showing what a ledger holds must not fail.
    """
    scale = minor_unit_scale.get(currency, 0)
    minor_per_major: int = 10**scale
    whole, fraction = divmod(abs(amount_minor), minor_per_major)
    sign = "-" if amount_minor < 0 else "+" if plus_sign and amount_minor > 0 else ""
    whole_text = f"{whole:,}" if grouped else str(whole)
    fraction_text = f".{fraction:0{scale}d}" if scale else ""
    return sign + whole_text + fraction_text


def parse_minor_units(text: str, currency: str) -> int:
    """Decimal text in major units as minor units: '-1500.5' USD -> -150050.

    Surrounding whitespace is ignored. Decimals beyond the currency's scale are refused unless
    they are zeros ('1.500' USD is 150, '1.501' is refused): an amount is never rounded. An
    unknown currency is refused: its scale would be a guess.
    """
    scale = minor_unit_scale.get(currency)
    if scale is None:
        raise AmountTextError(f"unknown currency {currency!r}")
    stripped = text.strip()
    parsed = _AMOUNT_TEXT.fullmatch(stripped)
    if parsed is None:
        raise AmountTextError(f"amount {stripped!r} is not a decimal like -1500.00")
    sign, whole, decimals = parsed.group(1), parsed.group(2), parsed.group(3) or ""
    significant = decimals.rstrip("0")
    if len(significant) > scale:
        raise AmountTextError(f"amount {stripped} has more than {scale} decimals for {currency}")
    minor_per_major: int = 10**scale
    magnitude = int(whole) * minor_per_major + int(significant.ljust(scale, "0") or "0")
    return -magnitude if sign == "-" else magnitude
