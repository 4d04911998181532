"""The dashboard's "All projects" view: the AI cost monthly summary and six-month trend of a whole org (the
seed's per-project `monthly-summary` and `monthly-trend`, with spend that names no project included). Sums
come from the day buckets and the run rollup, as in proxy/metrics/ai_cost.py; the budget is the org's
monthly budget, chosen as the cost-optimisation report chooses it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from policies.budgets import Budget
from proxy.metrics.ai_cost import pipeline_events
from proxy.metrics.cost_totals import Totals, label, ratio_pct, totals_by, usd
from proxy.metrics.month_budgets import month_spend, org_budget
from proxy.metrics.months import midnight, month_label, month_start, shift_months
from proxy.store.db import Store
from proxy.store.models import run_agents
from proxy.store.queries import iso_utc

TOP_RUNS = 5
TREND_MONTHS = 6
_RUN_AMOUNTS = ("cost_nano", "input_tokens", "output_tokens", "calls", "errors")


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
        runs = await _top_runs(conn, org, start)
        chosen = org_budget(budgets, org, orgless=orgless)
        spent = await month_spend(conn, org, chosen.budget, now) if chosen else 0
    whole = sum(agents.values(), Totals())
    per_month = {month_label(m): Totals() for m in months}
    for (day,), t in days.items():
        per_month[month_label(day.date())] += t
    return {
        "totalCost": usd(whole.cost_nano),
        "totalTokens": whole.tokens,
        "totalJobs": whole.calls,
        "agentBreakdown": [_agent(agent, t, whole) for (agent,), t in
                           sorted(agents.items(), key=lambda kv: (-kv[1].cost_nano, kv[0]))],
        "topRuns": runs,
        "budgetName": chosen.budget.name if chosen else None,
        "budgetLimit": usd(chosen.budget.limit_nano) if chosen else None,
        "budgetPct": ratio_pct(spent, chosen.budget.limit_nano) if chosen else None,
        "monthlyTrend": [{"month": month, "cost": usd(t.cost_nano), "totalTokens": t.tokens, "jobCount": t.calls}
                         for month, t in per_month.items()],
    }


def _agent(agent: str, t: Totals, whole: Totals) -> dict[str, Any]:
    """The same fields as the per-project summary's `agentBreakdown`."""
    return {"agentType": label(agent), "totalJobs": t.calls, "cost": usd(t.cost_nano),
            "pctOfTotal": ratio_pct(t.cost_nano, whole.cost_nano) or 0.0, "inputTokens": t.input_tokens,
            "outputTokens": t.output_tokens, "successRate": ratio_pct(t.calls - t.errors, t.calls)}


async def _top_runs(conn: AsyncConnection, org: str, since: datetime) -> list[dict[str, Any]]:
    """The TOP_RUNS costliest runs active since `since` (any agent's `last_at`), whole, costliest first; status,
    trigger and start from the run's `pipeline.run` event when there is one (the last received)."""
    ra = run_agents.c
    active = select(ra.run).where(ra.org == org, ra.last_at >= since)
    cost = func.sum(ra.cost_nano)
    stmt = (select(ra.run, *(func.sum(ra[a]) for a in _RUN_AMOUNTS), func.min(ra.first_at))
            .where(ra.org == org, ra.run.in_(active)).group_by(ra.run).order_by(cost.desc(), ra.run).limit(TOP_RUNS))
    rows = (await conn.execute(stmt)).all()
    events = await pipeline_events(conn, org, [r[0] for r in rows])
    runs = []
    for row in rows:
        run, cost_nano, tokens_in, tokens_out, calls, errors, first_at = tuple(row)
        event = events.get(run)
        status = event["status"] if event else ("failed" if errors else "completed")
        runs.append({"runId": run, "status": status, "trigger": event["trigger"] if event else None,
                     "startedAt": iso_utc(event["ts"] if event else first_at), "jobCount": int(calls),
                     "totalTokens": int(tokens_in) + int(tokens_out), "cost": usd(int(cost_nano))})
    return runs
