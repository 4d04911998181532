"""The cost-per-issue list's parameters: window of UTC days, sort, limit and the keyset cursor."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from proxy.errors import InvalidRequest, SeedError
from proxy.metrics.issue_window import Cursor, DayWindow, Sort, parse_day, parse_limit

NOW = datetime(2026, 5, 9, 15, 30, tzinfo=UTC)


def test_time_range_is_the_last_n_utc_days_today_included() -> None:
    assert DayWindow.parse({}, NOW) == DayWindow(date(2026, 4, 10), date(2026, 5, 9))
    w = DayWindow.parse({"timeRange": "7d"}, NOW)
    assert (w.first, w.last) == (date(2026, 5, 3), date(2026, 5, 9))
    assert w.start == datetime(2026, 5, 3, tzinfo=UTC) and w.end == datetime(2026, 5, 10, tzinfo=UTC)
    assert DayWindow.parse({"timeRange": "90d"}, NOW).first == date(2026, 2, 9)


def test_from_to_are_inclusive_days_with_defaults() -> None:
    assert DayWindow.parse({"from": "2026-01-01", "to": "2026-01-31"}, NOW) == DayWindow(date(2026, 1, 1),
                                                                                         date(2026, 1, 31))
    assert DayWindow.parse({"from": "2026-05-01"}, NOW) == DayWindow(date(2026, 5, 1), date(2026, 5, 9))
    assert DayWindow.parse({"to": "2026-03-30"}, NOW) == DayWindow(date(2026, 3, 1), date(2026, 3, 30))
    # A date-time counts as its UTC date (naive = UTC).
    assert parse_day("2026-05-09T23:30:00-02:00", "to") == date(2026, 5, 10)
    assert parse_day("2026-05-09T10:00:00", "to") == date(2026, 5, 9)
    assert parse_day("2026-05-09T10:00:00Z", "to") == date(2026, 5, 9)


@pytest.mark.parametrize("params", [
    {"timeRange": "14d"}, {"timeRange": ""}, {"from": "yesterday"}, {"to": "2026-02-30"},
    {"from": "2026-05-02", "to": "2026-05-01"}, {"timeRange": "7d", "to": "2026-05-01"},
    {"from": "2025-01-01", "to": "2026-01-02"},
])
def test_bad_windows_are_invalid_time_range(params: dict[str, str]) -> None:
    with pytest.raises(SeedError) as info:
        DayWindow.parse(params, NOW)
    assert (info.value.status, info.value.seed_code) == (400, "INVALID_TIME_RANGE")


def test_a_year_is_the_longest_window() -> None:
    w = DayWindow.parse({"from": "2025-05-10", "to": "2026-05-09"}, NOW)
    assert (w.last - w.first).days + 1 == 365


def test_sort_and_limit() -> None:
    assert Sort.parse(None) == Sort("cost", True)
    assert Sort.parse("lastSeen") == Sort("lastSeen", False) and Sort.parse("-issue").name == "-issue"
    for bad in ("price", "--cost", "", "Cost"):
        with pytest.raises(InvalidRequest):
            Sort.parse(bad)
    assert parse_limit(None) == 50 and parse_limit("500") == 500 and parse_limit("1") == 1
    for bad in ("0", "501", "-1", "1.5", "x"):
        with pytest.raises(InvalidRequest):
            parse_limit(bad)


def test_cursor_round_trips_for_its_own_sort_only() -> None:
    by_cost, by_seen, by_issue = Sort.parse("-cost"), Sort.parse("lastSeen"), Sort.parse("issue")
    c = Cursor("-cost", 12_345, "ENG-7")
    assert Cursor.decode(c.encode(), by_cost) == c
    seen = Cursor("lastSeen", datetime(2026, 5, 9, 12, 0, 0, 123456, tzinfo=UTC), "ENG-7")
    assert Cursor.decode(seen.encode(), by_seen) == seen
    assert Cursor.decode(Cursor("issue", "ENG-7", "ENG-7").encode(), by_issue).issue == "ENG-7"
    for text, sort in ((c.encode(), Sort.parse("cost")), (c.encode(), by_seen), (seen.encode(), by_cost),
                       ("!!", by_cost), ("WyJ4Il0", by_cost), (Cursor("-cost", "12", "x").encode(), by_cost),
                       (Cursor("-cost", True, "x").encode(), by_cost),
                       (Cursor("lastSeen", "2026-05-09T12:00:00", "x").encode(), by_seen),
                       (Cursor("issue", "A", "B").encode(), by_issue)):
        with pytest.raises(InvalidRequest):
            Cursor.decode(text, sort)
