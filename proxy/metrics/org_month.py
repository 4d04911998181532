"""The dashboard's "All projects" view: the AI cost monthly summary and six-month trend of a whole org (the
seed's per-project `monthly-summary` and `monthly-trend`, with spend that names no project included). Sums
come from the day buckets and the run rollup, as in proxy/metrics/ai_cost.py; the budget is the org's
monthly budget, chosen as the cost-optimisation report chooses it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from policies.budgets import Budget
from proxy.metrics.ai_cost import TOP_RUNS, TREND_MONTHS, month_figures, pipeline_events
from proxy.metrics.cost_totals import Totals, ratio_pct, totals_by, usd
from proxy.metrics.month_budgets import month_spend, org_budget
from proxy.metrics.months import midnight, month_label, month_start, shift_months
from proxy.metrics.run_costs import costliest_runs
from proxy.store.db import Store


async def org_summary(store: Store, org: str, budgets: Sequence[Budget], now: datetime, *,
                      orgless: bool) -> dict[str, Any]:
    """This month to date for every project of `org` together, plus `monthlyTrend` (the last six calendar
    months, this one included, oldest first, months without spend as zeros)."""
    today = now.astimezone(UTC).date()
    first = month_start(today)
    start, end = midnight(first), midnight(today + timedelta(days=1))
    months = [shift_months(first, -i) for i in range(TREND_MONTHS - 1, -1, -1)]
    async with store.engine.connect() as conn:
        agents = await totals_by(conn, org, ("agent",), start=start, end=end)
        days = await totals_by(conn, org, ("bucket_start",), start=midnight(months[0]), end=end)
        runs = await costliest_runs(conn, org, start, None, TOP_RUNS)
        pipelines = await pipeline_events(conn, org, [r.run for r in runs])
        chosen = org_budget(budgets, org, orgless=orgless)
        spent = await month_spend(conn, org, chosen.budget, now) if chosen else 0
    per_month = {month_label(m): Totals() for m in months}
    for (day,), t in days.items():
        per_month[month_label(day.date())] += t
    return {
        **month_figures(agents, runs, pipelines),
        "budgetName": chosen.budget.name if chosen else None,
        "budgetLimit": usd(chosen.budget.limit_nano) if chosen else None,
        "budgetPct": ratio_pct(spent, chosen.budget.limit_nano) if chosen else None,
        "monthlyTrend": [{"month": month, "cost": usd(t.cost_nano), "totalTokens": t.tokens, "jobCount": t.calls}
                         for month, t in per_month.items()],
    }


