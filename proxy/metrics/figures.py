"""How the Metrics API writes its numbers: USD floats, percentages and ratios, medians and means rounded the
same way on every store, duration strings ("45s", "15m", "4.5h", "2.1d") and ISO times.

Every helper answers 0 (or "0s") for an empty input, never None: the seed's fields are never null."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from pricing.money import NANO_PER_USD
from proxy.store.queries import iso_utc

USD_PLACES = 6  # a hundredth of a cent is below any dashboard's resolution; nano-USD stays inside
PCT_PLACES = 1  # percentages (0-100) as the seed prints them: 92.1
RATIO_PLACES = 4  # rates (0-1): acceptanceRate, overrideFrequency, handoffFrictionScore

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


def usd(nano: int | float) -> float:
    """nano-USD as a USD float, 6 decimals."""
    return round(nano / NANO_PER_USD, USD_PLACES)


def half_up(value: float) -> int:
    """Round to the nearest int, halves up (Python's round() rounds halves to even)."""
    return math.floor(value + 0.5)


def int_div(total: int, count: int) -> int:
    """total / count rounded half up, in integers (0 when count is 0)."""
    return (2 * total + count) // (2 * count) if count else 0


def percent(part: float, whole: float) -> float:
    """100 x part / whole, 1 decimal (0.0 when whole is 0)."""
    return round(100.0 * part / whole, PCT_PLACES) if whole else 0.0


def ratio(part: float, whole: float) -> float:
    """part / whole in 0-1, 4 decimals (0.0 when whole is 0)."""
    return round(part / whole, RATIO_PLACES) if whole else 0.0


def median(values: Sequence[float]) -> float:
    """The middle value; the mean of the two middle ones for an even count (as percentile_cont(0.5))."""
    if not values:
        return 0.0
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[mid])
    return (ordered[mid - 1] + ordered[mid]) / 2


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def ms_between(later: datetime, earlier: datetime) -> float:
    """Milliseconds from `earlier` to `later` (microseconds kept as the fraction)."""
    delta = later - earlier
    return (delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds) / 1000


def duration(ms: float) -> str:
    """A duration as the seed writes them: whole seconds below a minute ("45s"), whole minutes below an hour
    ("15m"), hours with one decimal below a day ("4.5h"), else days with one decimal ("2.1d")."""
    ms = max(0.0, ms)
    if half_up(ms / SECOND_MS) < 60:
        return f"{half_up(ms / SECOND_MS)}s"
    if half_up(ms / MINUTE_MS) < 60:
        return f"{half_up(ms / MINUTE_MS)}m"
    if half_up(10 * ms / HOUR_MS) < 240:
        return f"{half_up(10 * ms / HOUR_MS) / 10:.1f}h"
    return f"{half_up(10 * ms / DAY_MS) / 10:.1f}d"


def iso(value: datetime) -> str:
    """ISO 8601 UTC with a "Z" (microseconds only when there are some)."""
    return iso_utc(value)
