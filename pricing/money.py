"""Money as an integer of nano-USD (1 USD = 10**9); conversions only at the edges."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

NANO_PER_USD = 10**9
_NANO = Decimal(NANO_PER_USD)


def usd_to_nano(usd: Decimal | str | int | float) -> int:
    """Convert a USD amount to nano-USD, rounding up (we never under-charge or under-reserve).

    Floats go through `str()` so that 0.1 means one tenth, not its binary neighbour.
    """
    value = Decimal(str(usd)) if isinstance(usd, float) else Decimal(usd)
    return int((value * _NANO).to_integral_value(rounding=ROUND_CEILING))


def nano_to_usd(nano: int) -> float:
    """The API edge's float: USD, rounded to 9 places (exact for any int below 2**53)."""
    return round(nano / NANO_PER_USD, 9)


def format_usd(nano: int) -> str:
    """Exact decimal text of a nano-USD amount, e.g. 1500 -> '0.0000015' (for headers and logs)."""
    text = format(Decimal(nano) / _NANO, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"
