"""The query parameters of `GET /api/factory/cost-per-issue`: the window (whole UTC days, from `timeRange` or
`from`/`to`), the sort order, the page size and the opaque keyset cursor. Pure parsing, no SQL."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import orjson

from proxy.errors import InvalidRequest, SeedError
from proxy.metrics.timerange import TimeRange
from proxy.requests import parse_limit as parse_limit_of

MAX_SPAN_DAYS = 366  # a from/to window longer than a year is refused (the list stays a bounded scan)
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
SORT_KEYS = ("cost", "issue", "lastSeen")
DEFAULT_SORT = "-cost"


def _bad_range(message: str) -> SeedError:
    return SeedError(400, "INVALID_TIME_RANGE", message)


@dataclass(frozen=True, slots=True)
class DayWindow:
    """UTC calendar days `first` .. `last`, both included; `start` / `end` are the midnights around them."""

    first: date
    last: date

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first, time.min, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """Exclusive: midnight after `last`."""
        return datetime.combine(self.last + timedelta(days=1), time.min, tzinfo=UTC)

    @classmethod
    def parse(cls, params: Mapping[str, str], now: datetime | None = None) -> DayWindow:
        """`timeRange` (7d | 30d | 90d, default 30d: the last N UTC days, today included) or `from` / `to`
        (ISO dates, both included; `to` defaults to today, `from` to 29 days before `to`). Never both."""
        raw_from, raw_to = params.get("from"), params.get("to")
        if raw_from is None and raw_to is None:
            tr = TimeRange.parse(params.get("timeRange"), now)
            return cls(tr.start.date(), tr.end.date())
        if params.get("timeRange") is not None:
            raise _bad_range("Give either timeRange or from/to, not both")
        today = (now or datetime.now(UTC)).astimezone(UTC).date()
        last = parse_day(raw_to, "to") if raw_to is not None else today
        first = parse_day(raw_from, "from") if raw_from is not None else last - timedelta(days=29)
        if first > last:
            raise _bad_range(f"`from` ({first.isoformat()}) is after `to` ({last.isoformat()})")
        if (last - first).days + 1 > MAX_SPAN_DAYS:
            raise _bad_range(f"The window from/to spans more than {MAX_SPAN_DAYS} days")
        return cls(first, last)


def parse_day(raw: str, name: str) -> date:
    """An ISO date (2026-05-09) or date-time (2026-05-09T10:00:00Z; naive means UTC) -> its UTC date."""
    text = raw.strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _bad_range(f"`{name}` must be an ISO 8601 date such as 2026-05-09 (got {raw[:40]!r})") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).date()


@dataclass(frozen=True, slots=True)
class Sort:
    """One of SORT_KEYS, ascending or descending (the `-` prefix); ties are broken by issue, ascending."""

    key: str
    descending: bool

    @classmethod
    def parse(cls, raw: str | None) -> Sort:
        text = DEFAULT_SORT if raw is None else raw
        key = text[1:] if text.startswith("-") else text
        if key not in SORT_KEYS:
            allowed = ", ".join(f"{k}, -{k}" for k in SORT_KEYS)
            raise InvalidRequest(f"`sort` must be one of {allowed} (got {text[:40]!r})", param="sort")
        return cls(key, text.startswith("-"))

    @property
    def name(self) -> str:
        return ("-" if self.descending else "") + self.key


def parse_limit(raw: str | None) -> int:
    return parse_limit_of(raw, default=DEFAULT_LIMIT, maximum=MAX_LIMIT)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the previous page ended: the last row's sort value (nano-USD int for cost, issue id, or aware
    datetime for lastSeen) and its issue id. Valid only with the sort it was issued for."""

    sort: str
    value: Any
    issue: str

    def encode(self) -> str:
        value = self.value.astimezone(UTC).isoformat() if isinstance(self.value, datetime) else self.value
        raw = orjson.dumps([self.sort, value, self.issue])
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str, sort: Sort) -> Cursor:
        """The cursor of a previous page of the same sort; anything else is a 400 INVALID_REQUEST."""
        bad = InvalidRequest("`cursor` is not valid for this sort; pass the next_cursor of the previous page",
                             param="cursor")
        try:
            name, value, issue = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError):
            raise bad from None
        if name != sort.name or not isinstance(issue, str):
            raise bad
        if sort.key == "cost" and type(value) is int:
            return cls(name, value, issue)
        if sort.key == "issue" and value == issue:
            return cls(name, value, issue)
        if sort.key == "lastSeen" and isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                raise bad from None
            if moment.tzinfo is not None:
                return cls(name, moment.astimezone(UTC), issue)
        raise bad
