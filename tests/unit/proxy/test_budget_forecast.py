"""When a budget runs out at its current rate (GET /api/budgets `forecast_exhausted_at`)."""

from __future__ import annotations

from datetime import UTC, datetime

from policies.budgets import Budget, Counter
from policies.config import BudgetConfig
from policies.windows import window_of
from proxy.routes.budgets import forecast

USD = 10**9


def counter(window: str, limit_usd: float) -> tuple[Counter, datetime]:
    now = datetime(2026, 11, 11, 0, 0, tzinfo=UTC)  # 10 days into November
    budget = Budget.from_config(BudgetConfig.model_validate(
        {"name": "b", "scope": {"org": "acme"}, "window": window, "limit_usd": limit_usd}))
    span = window_of(window, now, budget.tz)
    return Counter(budget, (("org", "acme"),), span, "k", budget.limit_nano, 60), now


def test_forecast_extrapolates_the_average_rate_of_the_window() -> None:
    c, now = counter("month", 30)
    # $10 in 10 days = $1/day: the remaining $20 last 20 more days, Dec 1: at the reset itself -> None.
    assert forecast(c, 10 * USD, now) is None
    # $15 in 10 days = $1.5/day: the remaining $15 last 10 more days.
    assert forecast(c, 15 * USD, now) == "2026-11-21T00:00:00Z"


def test_no_forecast_without_spend_or_once_exhausted_or_for_run_windows() -> None:
    c, now = counter("month", 30)
    assert forecast(c, 0, now) is None and forecast(c, 30 * USD, now) is None
    assert forecast(c, 1, now) is None  # one nano-dollar in ten days: runs out long after the reset
    budget = Budget.from_config(BudgetConfig.model_validate(
        {"name": "r", "scope": {"run": "*"}, "window": "run", "limit_usd": 1}))
    span = window_of("run", now, budget.tz)
    assert forecast(Counter(budget, (("run", "x"),), span, "k", USD, 60), USD // 2, now) is None
