"""The AI cost read models (seed "AI Cost & Token Usage Dashboard"), per project of one org: this month's
summary by agent type with the top runs and the project's monthly budget, a six-month trend, every project
side by side, and the last 50 calls. Sums come from the day buckets and the run rollup; only the recent
calls read `usage` (index (org, started_at), newest first)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from policies.budgets import Budget
from proxy.metrics.cost_totals import Totals, label, ratio_pct, totals_by, usd
from proxy.metrics.month_budgets import month_spend, project_budget
from proxy.metrics.months import midnight, month_label, month_start, shift_months
from proxy.metrics.run_costs import RunCost, costliest_runs
from proxy.store.db import Store
from proxy.store.models import factory_events, usage
from proxy.store.queries import iso_utc

TOP_RUNS = 5
TREND_MONTHS = 6
RECENT_CALLS = 50


def _month_to_date(now: datetime) -> tuple[datetime, datetime]:
    """[first midnight of this UTC month, the end of today)."""
    today = now.astimezone(UTC).date()
    return midnight(month_start(today)), midnight(today + timedelta(days=1))


async def monthly_summary(store: Store, org: str, project: str, budgets: Sequence[Budget], now: datetime,
                          *, orgless: bool) -> dict[str, Any]:
    start, end = _month_to_date(now)
    async with store.engine.connect() as conn:
        agents = await totals_by(conn, org, ("agent",), start=start, end=end, project=project)
        runs = await costliest_runs(conn, org, start, project, TOP_RUNS)
        pipelines = await pipeline_events(conn, org, [r.run for r in runs])
        limit, pct = await _budget(conn, org, project, budgets, now, orgless=orgless)
    return {**month_figures(agents, runs, pipelines), "budgetLimit": limit, "budgetPct": pct}


def month_figures(agents: Mapping[tuple[Any, ...], Totals], runs: Sequence[RunCost],
                  pipelines: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """Totals, the per-agent breakdown and the costliest runs of a month: the part the monthly summary and
    the dashboard's org summary share."""
    whole = sum(agents.values(), Totals())
    return {
        "totalCost": usd(whole.cost_nano),
        "totalTokens": whole.tokens,
        "totalJobs": whole.calls,
        "agentBreakdown": [agent_entry(agent, t, whole) for (agent,), t in
                           sorted(agents.items(), key=lambda kv: (-kv[1].cost_nano, kv[0]))],
        "topRuns": [top_run(r, pipelines.get(r.run)) for r in runs],
    }


def agent_entry(agent: str, t: Totals, whole: Totals) -> dict[str, Any]:
    return {"agentType": label(agent), "totalJobs": t.calls, "cost": usd(t.cost_nano),
            "pctOfTotal": ratio_pct(t.cost_nano, whole.cost_nano) or 0.0, "inputTokens": t.input_tokens,
            "outputTokens": t.output_tokens, "successRate": ratio_pct(t.calls - t.errors, t.calls)}


def top_run(run: RunCost, event: dict[str, Any] | None) -> dict[str, Any]:
    if event is None:
        status, trigger, started = ("failed" if run.errors else "completed"), None, run.first_at
    else:
        status, trigger, started = event["status"], event["trigger"], event["ts"]
    return {"runId": run.run, "status": status, "trigger": trigger, "startedAt": iso_utc(started),
            "jobCount": run.calls, "totalTokens": run.input_tokens + run.output_tokens, "cost": usd(run.cost_nano)}


async def pipeline_events(conn: AsyncConnection, org: str, runs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The `pipeline.run` event of each run (the last received when several name it)."""
    if not runs:
        return {}
    fe = factory_events.c
    stmt = (select(fe.run, fe.status, fe.ts, fe.payload)
            .where(fe.org == org, fe.type == "pipeline.run", fe.run.in_(list(runs)))
            .order_by(fe.received_at, fe.id))
    found: dict[str, dict[str, Any]] = {}
    for row in (await conn.execute(stmt)).all():
        trigger = orjson.loads(row.payload).get("trigger")
        found[row.run] = {"status": row.status, "trigger": trigger, "ts": row.ts}
    return found


async def _budget(conn: AsyncConnection, org: str, project: str, budgets: Sequence[Budget], now: datetime,
                  *, orgless: bool) -> tuple[float | None, float | None]:
    """(limit in USD, percent spent) of the project's monthly budget, or (None, None) without one."""
    chosen = project_budget(budgets, org, project, orgless=orgless)
    if chosen is None:
        return None, None
    spent = await month_spend(conn, org, chosen.budget, now, project=project)
    return usd(chosen.budget.limit_nano), ratio_pct(spent, chosen.budget.limit_nano)


async def monthly_trend(store: Store, org: str, project: str, now: datetime) -> list[dict[str, Any]]:
    """The last TREND_MONTHS calendar months (this one to date), oldest first, months without spend as 0."""
    first = month_start(now.astimezone(UTC).date())
    months = [shift_months(first, -i) for i in range(TREND_MONTHS - 1, -1, -1)]
    async with store.engine.connect() as conn:
        days = await totals_by(conn, org, ("bucket_start",), start=midnight(months[0]),
                               end=_month_to_date(now)[1], project=project)
    per_month = {month_label(m): Totals() for m in months}
    for (start,), t in days.items():
        per_month[month_label(start.date())] += t
    return [{"month": month, "cost": usd(t.cost_nano), "totalTokens": t.tokens, "jobCount": t.calls}
            for month, t in per_month.items()]


async def cross_project_summary(store: Store, org: str, budgets: Sequence[Budget], now: datetime,
                                *, orgless: bool) -> dict[str, Any]:
    """This month per project of the org, costliest first; spend with no project has `projectId` null."""
    start, end = _month_to_date(now)
    async with store.engine.connect() as conn:
        projects = await totals_by(conn, org, ("project",), start=start, end=end)
        entries = []
        for (project,), t in sorted(projects.items(), key=lambda kv: (-kv[1].cost_nano, kv[0])):
            limit, pct = (await _budget(conn, org, project, budgets, now, orgless=orgless)) if project else (
                None, None)
            entries.append({"projectId": project or None, "totalCost": usd(t.cost_nano), "totalTokens": t.tokens,
                            "totalJobs": t.calls, "budgetLimit": limit, "budgetPct": pct})
    whole = sum(projects.values(), Totals())
    return {"projects": entries, "totalCost": usd(whole.cost_nano), "totalTokens": whole.tokens,
            "totalJobs": whole.calls}


async def recent_transactions(store: Store, org: str, project: str) -> list[dict[str, Any]]:
    """The project's last RECENT_CALLS proxied calls (refused ones never cost anything), newest first."""
    u = usage.c
    stmt = (select(u.request_id, u.agent, u.run, u.model, u.provider, u.input_tokens, u.output_tokens,
                   u.cost_nano, u.started_at)
            .where(u.org == org, u.project == project, u.status != "refused")
            .order_by(u.started_at.desc(), u.request_id.desc()).limit(RECENT_CALLS))
    async with store.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [{"id": r.request_id, "agentType": label(r.agent), "runId": r.run, "model": r.model,
             "provider": r.provider, "inputTokens": int(r.input_tokens), "outputTokens": int(r.output_tokens),
             "cost": usd(r.cost_nano), "createdAt": iso_utc(r.started_at)} for r in rows]
