"""The arithmetic of spend projections and cost trends (pure: no store, no clock). Amounts are nano-USD as
floats; callers round at the edge. Every series is one value per UTC day, oldest first, days without spend
as 0. docs/cost-reports.md states each method."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Literal

Trend = Literal["increasing", "stable", "decreasing"]

WEEK_DAYS = 7
TREND_DAYS = 14  # the window of an agent's cost trend
SEASON_DAYS = 30  # the window of the monthly projection's trend and weekday factors
TREND_THRESHOLD = 0.10  # relative change per week beyond which a trend is increasing / decreasing

DAILY_METHOD = "current_day_rate"
WEEKLY_METHOD = "7_day_rolling_average"
MONTHLY_METHOD = "30_day_trend_with_day_of_week_seasonality"


def linear_fit(values: Sequence[float]) -> tuple[float, float]:
    """Least-squares line through (i, values[i]) for i = 0..n-1, as (intercept, slope per step).
    One point (or none) gives a flat line through it (or through 0)."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    spread = sum((i - mean_x) ** 2 for i in range(n))
    if spread == 0:
        return mean_y, 0.0
    slope = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(values)) / spread
    return mean_y - slope * mean_x, slope


def daily_projection(today: float, elapsed_fraction: float) -> float:
    """Today's spend extrapolated to the whole day at today's rate so far."""
    return today / elapsed_fraction if elapsed_fraction > 0 else today


def weekly_projection(last_days: Sequence[float]) -> float:
    """Seven days at the mean of the last seven complete days (fewer given: the mean of those)."""
    recent = list(last_days)[-WEEK_DAYS:]
    return sum(recent) / len(recent) * WEEK_DAYS if recent else 0.0


def weekday_factors(days: Sequence[date], values: Sequence[float]) -> dict[int, float]:
    """Per weekday (Monday 0): the mean spend of that weekday over `days` / the mean of every day. 1.0 for
    every weekday when there is no spend (or no day of that weekday)."""
    overall = sum(values) / len(values) if values else 0.0
    factors: dict[int, float] = {}
    for weekday in range(7):
        picked = [v for d, v in zip(days, values, strict=True) if d.weekday() == weekday]
        factors[weekday] = (sum(picked) / len(picked)) / overall if picked and overall > 0 else 1.0
    return factors


def day_forecast(history: Sequence[float], first_day: date, day: date, factors: dict[int, float],
                 fit: tuple[float, float]) -> float:
    """The trend line of `history` (day i is first_day + i) evaluated at `day`, times that weekday's factor;
    never below 0 (spend cannot be negative)."""
    intercept, slope = fit
    x = (day - first_day).days
    return max(0.0, intercept + slope * x) * factors[day.weekday()]


def monthly_projection(history: Sequence[float], today: date, month_to_date: float, elapsed_fraction: float,
                       last_day: date) -> float:
    """Month-to-date plus a forecast of what remains of the month: the unelapsed part of today and every day
    after it up to `last_day`. `history` is the complete days before today (the last SEASON_DAYS are used)."""
    recent = list(history)[-SEASON_DAYS:]
    first_day = today - timedelta(days=len(recent))
    days = [first_day + timedelta(days=i) for i in range(len(recent))]
    factors = weekday_factors(days, recent)
    fit = linear_fit(recent)
    total = month_to_date
    total += (1.0 - elapsed_fraction) * day_forecast(recent, first_day, today, factors, fit)
    day = today + timedelta(days=1)
    while day <= last_day:
        total += day_forecast(recent, first_day, day, factors, fit)
        day += timedelta(days=1)
    return total


def trend_of(values: Sequence[float]) -> Trend:
    """Increasing / decreasing when the least-squares slope of the daily series, per week, is more than
    TREND_THRESHOLD of the series' mean; otherwise (or with no spend) stable."""
    mean = sum(values) / len(values) if values else 0.0
    if mean <= 0:
        return "stable"
    weekly_change = linear_fit(values)[1] * WEEK_DAYS / mean
    if weekly_change > TREND_THRESHOLD:
        return "increasing"
    if weekly_change < -TREND_THRESHOLD:
        return "decreasing"
    return "stable"
