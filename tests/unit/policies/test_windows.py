"""window_of / counter_ttl_s: ids, spans across DST changes and year ends, always-UTC instants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from policies.windows import IDLE_TTL_S, TTL_MARGIN_S, WindowSpan, counter_ttl_s, window_of

BERLIN = ZoneInfo("Europe/Berlin")
UTC_ZONE = ZoneInfo("UTC")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def test_ids_and_spans_in_utc() -> None:
    now = utc(2026, 11, 25, 2, 17, 45)
    assert window_of("hour", now, UTC_ZONE) == WindowSpan("2026-11-25T02", utc(2026, 11, 25, 2), utc(2026, 11, 25, 3))
    assert window_of("day", now, UTC_ZONE) == WindowSpan("2026-11-25", utc(2026, 11, 25), utc(2026, 11, 26))
    assert window_of("week", now, UTC_ZONE) == WindowSpan("2026-W48", utc(2026, 11, 23), utc(2026, 11, 30))
    assert window_of("month", now, UTC_ZONE) == WindowSpan("2026-11", utc(2026, 11, 1), utc(2026, 12, 1))
    assert window_of("total", now, UTC_ZONE) == WindowSpan("total", None, None)
    assert window_of("run", now, UTC_ZONE) == WindowSpan("run", None, None)


def test_instants_are_returned_in_utc_whatever_the_zone() -> None:
    span = window_of("day", utc(2026, 11, 25, 2), ZoneInfo("America/New_York"))
    assert span.starts_at is not None and span.resets_at is not None
    assert span.starts_at.tzinfo is UTC and span.resets_at.tzinfo is UTC


def test_local_day_differs_from_the_utc_day() -> None:
    now = utc(2026, 11, 25, 2)  # 21:00 on the 24th in New York (EST, -5)
    ny = ZoneInfo("America/New_York")
    assert window_of("day", now, ny) == WindowSpan("2026-11-24", utc(2026, 11, 24, 5), utc(2026, 11, 25, 5))
    assert window_of("hour", now, ny).id == "2026-11-24T21"
    tokyo_month = window_of("month", utc(2026, 11, 30, 16), ZoneInfo("Asia/Tokyo"))  # Dec 1st, 01:00 JST
    assert tokyo_month == WindowSpan("2026-12", utc(2026, 11, 30, 15), utc(2026, 12, 31, 15))


def test_half_hour_zone_hours_follow_the_local_clock() -> None:
    span = window_of("hour", utc(2026, 11, 25, 2, 10), ZoneInfo("Asia/Kolkata"))  # 07:40 IST
    assert span == WindowSpan("2026-11-25T07", utc(2026, 11, 25, 1, 30), utc(2026, 11, 25, 2, 30))


def test_berlin_spring_forward_day_has_23_hours() -> None:
    span = window_of("day", utc(2026, 3, 29, 12), BERLIN)
    assert span == WindowSpan("2026-03-29", utc(2026, 3, 28, 23), utc(2026, 3, 29, 22))
    assert span.resets_at is not None and span.starts_at is not None
    assert span.resets_at - span.starts_at == timedelta(hours=23)


def test_berlin_fall_back_day_has_25_hours() -> None:
    span = window_of("day", utc(2026, 10, 25, 12), BERLIN)
    assert span == WindowSpan("2026-10-25", utc(2026, 10, 24, 22), utc(2026, 10, 25, 23))


def test_spring_forward_hours_are_contiguous() -> None:
    before = window_of("hour", utc(2026, 3, 29, 0, 30), BERLIN)  # 01:30 CET
    after = window_of("hour", utc(2026, 3, 29, 1, 30), BERLIN)  # 03:30 CEST: 02:xx never happened
    assert before == WindowSpan("2026-03-29T01", utc(2026, 3, 29, 0), utc(2026, 3, 29, 1))
    assert after == WindowSpan("2026-03-29T03", utc(2026, 3, 29, 1), utc(2026, 3, 29, 2))


def test_repeated_hour_at_fall_back_gives_two_windows_with_offsets() -> None:
    first = window_of("hour", utc(2026, 10, 25, 0, 30), BERLIN)  # 02:30 CEST
    second = window_of("hour", utc(2026, 10, 25, 1, 30), BERLIN)  # 02:30 CET, the same wall time
    assert first == WindowSpan("2026-10-25T02+02:00", utc(2026, 10, 25, 0), utc(2026, 10, 25, 1))
    assert second == WindowSpan("2026-10-25T02+01:00", utc(2026, 10, 25, 1), utc(2026, 10, 25, 2))
    assert window_of("hour", utc(2026, 10, 25, 2, 30), BERLIN).id == "2026-10-25T03"


def test_a_day_that_skips_midnight_starts_at_the_transition() -> None:
    # Chile moves its clocks from 00:00 to 01:00 on 2026-09-06 (04:00 UTC): that day has no midnight.
    santiago = ZoneInfo("America/Santiago")
    span = window_of("day", utc(2026, 9, 6, 15), santiago)
    assert span.id == "2026-09-06" and span.starts_at == utc(2026, 9, 6, 4)
    assert span.starts_at is not None
    assert (span.starts_at - timedelta(seconds=1)).astimezone(santiago).date().isoformat() == "2026-09-05"
    assert window_of("day", utc(2026, 9, 6, 3, 59, 59), santiago).id == "2026-09-05"


@pytest.mark.parametrize(("now", "week_id", "start", "end"), [
    (utc(2026, 12, 31, 12), "2026-W53", utc(2026, 12, 28), utc(2027, 1, 4)),  # 2026 has 53 ISO weeks
    (utc(2027, 1, 3, 23, 59), "2026-W53", utc(2026, 12, 28), utc(2027, 1, 4)),
    (utc(2027, 1, 4), "2027-W01", utc(2027, 1, 4), utc(2027, 1, 11)),
    (utc(2024, 12, 30, 8), "2025-W01", utc(2024, 12, 30), utc(2025, 1, 6)),  # ISO year ahead of calendar
    (utc(2021, 1, 3), "2020-W53", utc(2020, 12, 28), utc(2021, 1, 4)),  # ISO year behind calendar
    (utc(2026, 11, 29, 23, 59, 59), "2026-W48", utc(2026, 11, 23), utc(2026, 11, 30)),  # Sunday ends it
])
def test_iso_weeks_across_year_ends(now: datetime, week_id: str, start: datetime, end: datetime) -> None:
    assert window_of("week", now, UTC_ZONE) == WindowSpan(week_id, start, end)


def test_week_in_a_zone_starts_on_local_monday() -> None:
    span = window_of("week", utc(2026, 11, 29, 23, 30), BERLIN)  # already Monday 00:30 in Berlin
    assert span == WindowSpan("2026-W49", utc(2026, 11, 29, 23), utc(2026, 12, 6, 23))


def test_month_and_day_at_year_end() -> None:
    assert window_of("month", utc(2026, 12, 31, 23, 59), UTC_ZONE) == WindowSpan(
        "2026-12", utc(2026, 12, 1), utc(2027, 1, 1))
    assert window_of("day", utc(2026, 12, 31, 23, 30), BERLIN) == WindowSpan(
        "2027-01-01", utc(2026, 12, 31, 23), utc(2027, 1, 1, 23))
    assert window_of("hour", utc(2026, 12, 31, 23, 30), UTC_ZONE).resets_at == utc(2027, 1, 1)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/Santiago", "Asia/Kolkata", "Australia/Sydney"])
@pytest.mark.parametrize("window", ["hour", "day", "week", "month"])
def test_windows_tile_time_without_gaps_or_overlaps(zone: str, window: str) -> None:
    tz = ZoneInfo(zone)
    now, end = utc(2026, 1, 1), utc(2027, 1, 10)
    step = timedelta(hours=1) if window == "hour" else timedelta(hours=7)
    previous: WindowSpan | None = None
    while now < end:
        span = window_of(window, now, tz)
        assert span.starts_at is not None and span.resets_at is not None
        assert span.starts_at <= now < span.resets_at
        if previous is not None and previous.id != span.id:
            assert previous.resets_at == span.starts_at  # each window starts where the last one reset
        previous = span
        now = min(now + step, span.resets_at)


def test_naive_now_and_unknown_window_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        window_of("day", datetime(2026, 11, 25), UTC_ZONE)
    with pytest.raises(ValueError, match="unknown window"):
        window_of("fortnight", utc(2026, 11, 25), UTC_ZONE)


def test_counter_ttl_is_time_to_reset_plus_margin_or_idle_expiry() -> None:
    now = utc(2026, 11, 25, 2)
    day = window_of("day", now, UTC_ZONE)
    assert counter_ttl_s(day, now) == 22 * 3600 + TTL_MARGIN_S == 252_000
    assert counter_ttl_s(day, utc(2026, 11, 25, 23, 59, 59, 500_000)) == 1 + TTL_MARGIN_S  # rounds up
    assert counter_ttl_s(day, utc(2026, 11, 27)) == TTL_MARGIN_S  # late settle: never negative
    assert counter_ttl_s(window_of("run", now, UTC_ZONE), now) == IDLE_TTL_S == 30 * 24 * 3600
    assert counter_ttl_s(window_of("total", now, UTC_ZONE), now) == IDLE_TTL_S
