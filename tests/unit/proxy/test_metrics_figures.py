"""How the Metrics API writes numbers (rounding, medians, duration strings), the station order, the uptime
arithmetic and the metricType check: pure functions, no store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from proxy.errors import SeedError
from proxy.metrics.devops import Incident, downtime_ms
from proxy.metrics.figures import (
    duration,
    half_up,
    int_div,
    iso,
    mean,
    median,
    ms_between,
    percent,
    ratio,
    usd,
)
from proxy.metrics.report import METRIC_TYPES, builder_for
from proxy.metrics.stations import station_order
from proxy.metrics.timerange import TimeRange

T0 = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("ms", "text"), [
    (0, "0s"), (-5, "0s"), (499, "0s"), (500, "1s"), (45_000, "45s"), (59_499, "59s"),
    (59_500, "1m"),  # 59.5 s rounds to 60 s: shown as a minute, never "60s"
    (15 * 60_000, "15m"), (59 * 60_000 + 29_999, "59m"),
    (59 * 60_000 + 30_000, "1.0h"),  # 59.5 min rounds to 60 min
    (4.5 * 3_600_000, "4.5h"), (2 * 3_600_000, "2.0h"), (23.94 * 3_600_000, "23.9h"),
    (23.95 * 3_600_000, "1.0d"),  # 23.95 h rounds to 24.0 h
    (2.1 * 86_400_000, "2.1d"), (45 * 86_400_000, "45.0d"),
])
def test_durations_read_as_the_seed_writes_them(ms: float, text: str) -> None:
    assert duration(ms) == text


def test_medians_means_and_rounding() -> None:
    assert median([]) == 0.0 and mean([]) == 0.0
    assert median([5, 1, 3]) == 3.0
    assert median([4, 1, 3, 2]) == 2.5  # the two middle values' mean, as percentile_cont(0.5)
    assert mean([1, 2, 4]) == pytest.approx(7 / 3)
    assert [half_up(x) for x in (0.5, 1.5, 2.5, 2.4999, -0.5)] == [1, 2, 3, 2, 0]  # halves up, not to even
    assert [int_div(t, n) for t, n in ((5, 2), (7, 2), (4, 3), (5, 3), (9, 0))] == [3, 4, 1, 2, 0]


def test_percentages_ratios_and_usd_are_floats_and_zero_without_a_whole() -> None:
    assert percent(2, 3) == 66.7 and percent(0, 0) == 0.0 and isinstance(percent(1, 1), float)
    assert ratio(2, 3) == 0.6667 and ratio(1, 0) == 0.0
    assert usd(1_234_567_890) == 1.234568 and usd(0) == 0.0 and isinstance(usd(0), float)


def test_milliseconds_keep_microseconds_and_iso_is_utc_z() -> None:
    assert ms_between(T0 + timedelta(days=1, microseconds=1500), T0) == 86_400_001.5
    assert iso(T0) == "2026-05-10T12:00:00Z"


def test_stations_in_sdlc_order_then_alphabetical() -> None:
    names = ["zeta", "qa", "deploy", "alpha", "research", "development", "acceptance", "security", "qa"]
    assert station_order(names) == ["research", "development", "security", "qa", "acceptance", "deploy",
                                    "alpha", "zeta"]


def test_downtime_counts_overlaps_once_and_clips_to_the_window() -> None:
    window = TimeRange("1d", 1, T0, T0 + timedelta(hours=10))
    hour = timedelta(hours=1)
    found = [
        Incident("a", T0 - hour, T0 + hour, "", ""),  # began before the window: 1 h inside
        Incident("b", T0 + 2 * hour, T0 + 4 * hour, "", ""),  # overlaps c: 2-5 h counted once
        Incident("c", T0 + 3 * hour, T0 + 5 * hour, "", ""),
        Incident("d", T0 + 9 * hour, None, "", ""),  # still open: up to the window's end
        Incident("e", T0 - 3 * hour, T0 - 2 * hour, "", ""),  # before the window: nothing
    ]
    assert downtime_ms(found, window) == (1 + 3 + 1) * 3_600_000
    assert downtime_ms([], window) == 0


def test_metric_types_and_the_invalid_one() -> None:
    assert METRIC_TYPES == ("aggregate", "station", "cost", "provider", "handoff", "phase", "devops")
    assert builder_for(None) is builder_for("aggregate")
    with pytest.raises(SeedError) as err:
        builder_for("aggregates")
    assert (err.value.status, err.value.seed_code, err.value.message) == (
        400, "INVALID_METRIC_TYPE",
        "Invalid metricType. Must be one of: aggregate, station, cost, provider, handoff, phase, devops")
