"""Calendar months and days in UTC, as the cost reports count them: a month starts at midnight UTC on its
first day; "today" is the UTC day holding `now`."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta


def midnight(day: date) -> datetime:
    """The first instant of a UTC day."""
    return datetime.combine(day, time.min, tzinfo=UTC)


def month_start(day: date) -> date:
    return day.replace(day=1)


def shift_months(first: date, months: int) -> date:
    """The first day of the month `months` after (or before, if negative) the month starting on `first`."""
    index = first.year * 12 + first.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def month_end(day: date) -> date:
    """The last day of the month holding `day`."""
    return shift_months(month_start(day), 1) - timedelta(days=1)


def month_label(day: date) -> str:
    """`YYYY-MM` of the month holding `day`."""
    return f"{day.year:04d}-{day.month:02d}"


def elapsed_fraction(now: datetime) -> float:
    """How much of the UTC day holding `now` has passed, in (0, 1]: at least one second counts as elapsed,
    so a rate extrapolated from it stays finite."""
    now = now.astimezone(UTC)
    seconds = (now - midnight(now.date())).total_seconds()
    return max(seconds, 1.0) / 86_400
