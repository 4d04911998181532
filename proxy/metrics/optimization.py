"""The cost-optimisation report (seed "Cost Tracking"): today and this month, by provider and agent, the
org's monthly budget, projections, per-agent efficiency and trend, and cost per pipeline run. One org,
read from the day buckets and the run rollup only."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from policies.budgets import Budget
from proxy.metrics import projections as proj
from proxy.metrics.cost_totals import Totals, label, ratio_pct, totals_by, usd
from proxy.metrics.month_budgets import DEFAULT_ALERT_PCT, month_spend, org_budget
from proxy.metrics.months import elapsed_fraction, midnight, month_end, month_start
from proxy.metrics.run_costs import RunCost, recent_runs, runs_total
from proxy.store.db import Store

RECENT_RUNS = 20
HISTORY_DAYS = max(proj.SEASON_DAYS, proj.TREND_DAYS, proj.WEEK_DAYS)


async def cost_optimization(store: Store, org: str, budgets: Sequence[Budget], now: datetime, *,
                            orgless: bool = False) -> dict[str, Any]:
    now = now.astimezone(UTC)
    today = now.date()
    first = month_start(today)
    since = min(first, today - timedelta(days=HISTORY_DAYS))
    start, end = midnight(first), midnight(today + timedelta(days=1))  # this month to date
    async with store.engine.connect() as conn:
        days = await totals_by(conn, org, ("bucket_start",), start=midnight(since), end=end)
        daily = {key[0].date(): t.cost_nano for key, t in days.items()}
        providers = await totals_by(conn, org, ("provider",), start=start, end=end)
        agents = await totals_by(conn, org, ("agent",), start=start, end=end)
        trend_days = await totals_by(conn, org, ("agent", "bucket_start"),
                                     start=midnight(today - timedelta(days=proj.TREND_DAYS)), end=midnight(today))
        budget = await _budget(conn, org, budgets, now, orgless=orgless)
        runs = await _pipeline_runs(conn, org, start)
    month_cost = sum(v for d, v in daily.items() if d >= first)
    projections = _projections(daily, today, month_cost, now)
    return {
        "total_cost_today": usd(daily.get(today, 0)),
        "total_cost_month": usd(month_cost),
        "projected_monthly": projections["monthly"]["value"],
        "by_provider": {label(key[0]): usd(t.cost_nano)
                        for key, t in sorted(providers.items(), key=lambda kv: (-kv[1].cost_nano, kv[0]))},
        "by_agent": _by_agent(agents, trend_days, today),
        "budget": budget,
        "today_vs_yesterday": _today_vs_yesterday(daily, today),
        "projections": projections,
        "pipeline_runs": runs,
    }


def _series(daily: dict[date, int], last: date, days: int) -> list[float]:
    """`days` daily values ending on `last`, oldest first, 0 for days without spend."""
    return [float(daily.get(last - timedelta(days=days - 1 - i), 0)) for i in range(days)]


def _projections(daily: dict[date, int], today: date, month_cost: int, now: datetime) -> dict[str, Any]:
    fraction = elapsed_fraction(now)
    yesterday = today - timedelta(days=1)
    monthly = proj.monthly_projection(_series(daily, yesterday, proj.SEASON_DAYS), today, float(month_cost),
                                      fraction, month_end(today))
    return {
        "daily": {"value": usd(proj.daily_projection(float(daily.get(today, 0)), fraction)),
                  "method": proj.DAILY_METHOD},
        "weekly": {"value": usd(proj.weekly_projection(_series(daily, yesterday, proj.WEEK_DAYS))),
                   "method": proj.WEEKLY_METHOD},
        "monthly": {"value": usd(monthly), "method": proj.MONTHLY_METHOD},
    }


def _today_vs_yesterday(daily: dict[date, int], today: date) -> dict[str, Any]:
    now_cost, before = daily.get(today, 0), daily.get(today - timedelta(days=1), 0)
    return {"today": usd(now_cost), "yesterday": usd(before), "change_pct": ratio_pct(now_cost - before, before)}


def _by_agent(agents: dict[tuple[Any, ...], Totals], trend_days: dict[tuple[Any, ...], Totals],
              today: date) -> list[dict[str, Any]]:
    per_day: dict[str, dict[date, int]] = {}
    for (agent, start), t in trend_days.items():
        per_day.setdefault(agent, {})[start.date()] = t.cost_nano
    entries = []
    for (agent,), t in sorted(agents.items(), key=lambda kv: (-kv[1].cost_nano, kv[0])):
        series = _series(per_day.get(agent, {}), today - timedelta(days=1), proj.TREND_DAYS)
        entries.append({
            "agent_id": label(agent),
            "cost": usd(t.cost_nano),
            "executions": t.calls,
            "avg_cost_per_run": usd(t.cost_nano / t.calls) if t.calls else None,
            "token_efficiency": usd(t.cost_nano * 1000 / t.output_tokens) if t.output_tokens else None,
            "trend": proj.trend_of(series),
        })
    return entries


async def _budget(conn: AsyncConnection, org: str, budgets: Sequence[Budget], now: datetime, *,
                  orgless: bool) -> dict[str, Any]:
    chosen = org_budget(budgets, org, orgless=orgless)
    if chosen is None:
        return {"monthly_limit": None, "utilization_pct": None, "alert_threshold_pct": _number(DEFAULT_ALERT_PCT)}
    spent = await month_spend(conn, org, chosen.budget, now)
    return {"monthly_limit": usd(chosen.budget.limit_nano),
            "utilization_pct": ratio_pct(spent, chosen.budget.limit_nano),
            "alert_threshold_pct": _number(chosen.alert_pct)}


def _number(value: float) -> float | int:
    """A whole number as an int (the seed shows `80`), anything else as is."""
    return int(value) if value == int(value) else value


async def _pipeline_runs(conn: AsyncConnection, org: str, since: datetime) -> dict[str, Any]:
    count, cost = await runs_total(conn, org, since)
    runs = await recent_runs(conn, org, since, RECENT_RUNS)
    return {"avg_cost_per_run": usd(cost / count) if count else None, "runs": [_run(r) for r in runs]}


def _run(run: RunCost) -> dict[str, Any]:
    return {"run_id": run.run, "cost": usd(run.cost_nano), "calls": run.calls, "retry_cost": usd(run.retry_nano),
            "agents": [{"agent_id": label(agent), "cost": usd(cost), "pct": ratio_pct(cost, run.cost_nano) or 0.0}
                       for agent, cost in run.agents]}
