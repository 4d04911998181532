"""Calendar windows of a budget: which window an instant falls in, its stable id, and when it resets.

Windows follow the wall clock of the budget's time zone (a Berlin day is 23 or 25 hours at a DST change);
the instants returned are always UTC. A call counts in the window where it was admitted."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo

# Counters outlive their window by this margin so a late settle (long stream, clock skew between
# replicas) still finds its counter; the store is the record, the ledger only needs the live windows.
TTL_MARGIN_S = 2 * 24 * 3600
# `run` and `total` counters never reset; an idle one expires and is reseeded from the store if needed.
IDLE_TTL_S = 30 * 24 * 3600
CALENDAR_WINDOWS = ("hour", "day", "week", "month")


@dataclass(frozen=True, slots=True)
class WindowSpan:
    """One window: `id` is part of ledger keys (stable, human-readable); times are UTC, None = never."""

    id: str
    starts_at: datetime | None
    resets_at: datetime | None


def window_of(window: str, now: datetime, tz: tzinfo) -> WindowSpan:
    """The window of kind `window` (run | hour | day | week | month | total) that contains `now`.

    Ids: hour `2026-11-25T02`, day `2026-11-25`, ISO week `2026-W48` (weeks start Monday), month
    `2026-11`, and the constants `run` and `total`. The hour repeated when clocks go back carries its
    UTC offset (`2026-10-25T02+02:00`, then `2026-10-25T02+01:00`) so the two hours stay apart."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if window in ("run", "total"):
        return WindowSpan(window, None, None)
    local = now.astimezone(tz)
    if window == "hour":
        return _hour(local)
    today = local.date()
    if window == "day":
        start, end = today, today + timedelta(days=1)
        wid = today.isoformat()
    elif window == "week":
        start = today - timedelta(days=today.weekday())
        end = start + timedelta(days=7)
        iso = today.isocalendar()
        wid = f"{iso.year}-W{iso.week:02d}"
    elif window == "month":
        start = today.replace(day=1)
        end = date(start.year + start.month // 12, start.month % 12 + 1, 1)
        wid = f"{start.year:04d}-{start.month:02d}"
    else:
        raise ValueError(f"unknown window {window!r}")
    return WindowSpan(wid, _first_instant(start, tz), _first_instant(end, tz))


def counter_ttl_s(span: WindowSpan, now: datetime) -> int:
    """Seconds a ledger counter of `span` should live: until the reset plus a margin, or the idle expiry."""
    if span.resets_at is None:
        return IDLE_TTL_S
    left = math.ceil((span.resets_at - now).total_seconds())
    return max(left, 0) + TTL_MARGIN_S


def _hour(local: datetime) -> WindowSpan:
    # `local` came from astimezone(), so its `fold` already tells the two occurrences of a repeated hour
    # apart, and truncating to the hour keeps it. Zones whose offset changes off the hour (Lord Howe's
    # 30-minute DST) get a short or long hour at the change; nothing else does.
    start = local.replace(minute=0, second=0, microsecond=0)
    ambiguous = start.replace(fold=0).utcoffset() != start.replace(fold=1).utcoffset()
    wid = start.isoformat(timespec="hours") if ambiguous else start.strftime("%Y-%m-%dT%H")
    starts_at = start.astimezone(UTC)
    return WindowSpan(wid, starts_at, starts_at + timedelta(hours=1))


def _first_instant(day: date, tz: tzinfo) -> datetime:
    """The first UTC instant at which the local date in `tz` is `day` (or later).

    Midnight may occur twice (fold=0 is the first) or not at all, when a zone skips it at a DST change
    (America/Santiago); then the day begins at the transition itself, found by bisection."""
    wall = datetime(day.year, day.month, day.day)
    early = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if early.astimezone(tz).replace(tzinfo=None) == wall:
        return early
    # In a gap, fold=0 reads the wall time with the offset from before the jump (an instant after the
    # transition) and fold=1 with the offset after it (an instant before): the transition lies between.
    lo = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    hi = early
    lo, hi = min(lo, hi), max(lo, hi)
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0)
