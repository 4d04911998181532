"""The `timeRange` of the metrics API (7d | 30d | 90d) as UTC days: the window is the last N calendar days,
today included, from midnight UTC N-1 days ago up to now; daily series have exactly N points."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from proxy.errors import SeedError

TIME_RANGES = {"7d": 7, "30d": 30, "90d": 90}
DEFAULT_TIME_RANGE = "30d"


@dataclass(frozen=True, slots=True)
class TimeRange:
    """[start, end) in UTC; `days` is the number of calendar days (today counts as one)."""

    name: str
    days: int
    start: datetime
    end: datetime

    @classmethod
    def last_days(cls, days: int, now: datetime | None = None, name: str | None = None) -> TimeRange:
        now = (now or datetime.now(UTC)).astimezone(UTC)
        start = datetime.combine(now.date() - timedelta(days=days - 1), time.min, tzinfo=UTC)
        return cls(name or f"{days}d", days, start, now)

    @classmethod
    def parse(cls, raw: str | None, now: datetime | None = None) -> TimeRange:
        """`raw` from the query string (None: the default); INVALID_TIME_RANGE for anything else."""
        name = DEFAULT_TIME_RANGE if raw is None else raw
        if name not in TIME_RANGES:
            raise SeedError(400, "INVALID_TIME_RANGE", "Invalid timeRange. Must be one of: 7d, 30d, 90d")
        return cls.last_days(TIME_RANGES[name], now, name)

    def dates(self) -> list[date]:
        """Every UTC day of the window, oldest first (the x axis of daily series)."""
        first = self.start.date()
        return [first + timedelta(days=i) for i in range(self.days)]
