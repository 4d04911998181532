"""The projection and trend arithmetic of the cost-optimisation report, checked against values computed here
(statistics.linear_regression for every fitted line)."""

from __future__ import annotations

import random
import statistics
from datetime import date, timedelta

import pytest

from proxy.metrics.projections import (
    daily_projection,
    linear_fit,
    monthly_projection,
    trend_of,
    weekday_factors,
    weekly_projection,
)


def test_linear_fit_recovers_an_exact_line_and_matches_least_squares() -> None:
    assert linear_fit([2 + 3 * i for i in range(10)]) == pytest.approx((2.0, 3.0))
    rng = random.Random(7)
    values = [rng.uniform(0, 1000) for _ in range(30)]
    slope, intercept = statistics.linear_regression(list(range(30)), values)
    assert linear_fit(values) == pytest.approx((intercept, slope))


def test_linear_fit_of_one_point_or_none_is_flat() -> None:
    assert linear_fit([5.0]) == (5.0, 0.0)
    assert linear_fit([]) == (0.0, 0.0)


def test_daily_projection_extrapolates_the_rate_so_far() -> None:
    assert daily_projection(10.0, 0.25) == pytest.approx(40.0)
    assert daily_projection(7.0, 1.0) == pytest.approx(7.0)


def test_weekly_projection_is_seven_times_the_mean_of_the_last_seven_days() -> None:
    days = [100.0, 1, 2, 3, 4, 5, 6, 7]  # the first is older than seven days
    assert weekly_projection(days) == pytest.approx(sum(days[1:]) / 7 * 7)
    assert weekly_projection([3.0, 5.0]) == pytest.approx(4.0 * 7)
    assert weekly_projection([]) == 0.0


def test_weekday_factors_are_weekday_mean_over_overall_mean() -> None:
    first = date(2026, 3, 2)  # a Monday
    days = [first + timedelta(days=i) for i in range(14)]
    values = [20.0 if d.weekday() == 0 else 10.0 for d in days]
    overall = (2 * 20 + 12 * 10) / 14
    factors = weekday_factors(days, values)
    assert factors[0] == pytest.approx(20 / overall)
    assert all(factors[w] == pytest.approx(10 / overall) for w in range(1, 7))


def test_weekday_factors_without_spend_are_one() -> None:
    days = [date(2026, 3, 1) + timedelta(days=i) for i in range(30)]
    assert weekday_factors(days, [0.0] * 30) == {w: 1.0 for w in range(7)}


def test_monthly_projection_of_a_flat_history() -> None:
    today = date(2026, 3, 10)
    value = monthly_projection([100.0] * 30, today, 500.0, 0.5, date(2026, 3, 31))
    assert value == pytest.approx(500 + 0.5 * 100 + 21 * 100)


def _expected_monthly(history: list[float], today: date, mtd: float, fraction: float, last: date) -> float:
    """The method as docs/cost-reports.md states it, written out independently."""
    first = today - timedelta(days=len(history))
    slope, intercept = statistics.linear_regression(list(range(len(history))), history)
    mean = sum(history) / len(history)
    by_weekday: dict[int, list[float]] = {}
    for i, v in enumerate(history):
        by_weekday.setdefault((first + timedelta(days=i)).weekday(), []).append(v)
    factor = {w: (sum(v) / len(v)) / mean for w, v in by_weekday.items()}

    def forecast(day: date) -> float:
        return max(0.0, intercept + slope * (day - first).days) * factor[day.weekday()]

    total = mtd + (1 - fraction) * forecast(today)
    day = today + timedelta(days=1)
    while day <= last:
        total += forecast(day)
        day += timedelta(days=1)
    return total


def test_monthly_projection_follows_trend_and_weekday_seasonality() -> None:
    today = date(2026, 2, 11)  # a Wednesday; February 2026 has 28 days
    first = today - timedelta(days=30)
    history = [(0.0 if (first + timedelta(days=i)).weekday() >= 5 else 100.0 + 4 * i) for i in range(30)]
    got = monthly_projection(history, today, 1234.0, 0.3, date(2026, 2, 28))
    assert got == pytest.approx(_expected_monthly(history, today, 1234.0, 0.3, date(2026, 2, 28)))
    # Weekends forecast nothing: the projection equals the sum over remaining weekdays only.
    assert got > 1234.0


def test_monthly_projection_never_forecasts_negative_days() -> None:
    history = [float(300 - 10 * i) for i in range(30)]  # falls to 10, the line continues below 0
    today = date(2026, 1, 31)
    value = monthly_projection(history, today, 50.0, 0.0, date(2026, 1, 31))
    assert value >= 50.0
    later = monthly_projection(history + [0.0] * 20, date(2026, 1, 20), 0.0, 0.0, date(2026, 1, 31))
    assert later == 0.0  # only the last 30 days count; their line is below 0 from here on


def test_monthly_projection_without_history_is_month_to_date() -> None:
    assert monthly_projection([], date(2026, 5, 3), 42.0, 0.5, date(2026, 5, 31)) == 42.0


@pytest.mark.parametrize("values, expected", [
    ([10.0 + i for i in range(14)], "increasing"),
    ([30.0 - i for i in range(14)], "decreasing"),
    ([5.0] * 14, "stable"),
    ([0.0] * 14, "stable"),
    ([], "stable"),
])
def test_trend_of(values: list[float], expected: str) -> None:
    assert trend_of(values) == expected


def test_trend_threshold_is_ten_percent_of_the_mean_per_week() -> None:
    # Slope s per day over 14 days around a mean of 100: weekly change 7 s / 100.
    def series(slope: float) -> list[float]:
        return [100 + slope * (i - 6.5) for i in range(14)]

    assert trend_of(series(1.5)) == "increasing"  # 10.5 % a week
    assert trend_of(series(1.3)) == "stable"  # 9.1 %
    assert trend_of(series(-1.5)) == "decreasing"
    assert trend_of(series(-1.3)) == "stable"
