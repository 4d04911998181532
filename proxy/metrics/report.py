"""The payload of `GET /api/factory/metrics` for each metricType, in the seed "Metrics API" shapes: names,
JSON types (ints are ints, floats floats) and units exactly as the seed prints them; no data gives 0, 0.0
or [], never null. Definitions: docs/metrics.md."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from pricing.money import NANO_PER_USD
from proxy.errors import SeedError
from proxy.metrics import flow, handoffs, spend, stations
from proxy.metrics.devops import devops_metrics
from proxy.metrics.eventlog import EVENTS, of_type
from proxy.metrics.events import EVENT_TYPES
from proxy.metrics.figures import USD_PLACES, half_up, int_div, mean, percent, ratio, usd
from proxy.metrics.timerange import TimeRange
from proxy.store.db import Store

THROUGHPUT_PLACES = 2
EFFICIENCY_PLACES = 2
ACTORS = ("human", "agent")
WORK_MEM = "32MB"

Builder = Callable[[AsyncConnection, str | None, TimeRange], Awaitable[Any]]


async def aggregate(conn: AsyncConnection, org: str | None, window: TimeRange) -> dict[str, Any]:
    issues = await flow.issue_flow(conn, org, window)
    days = await spend.daily_cost(conn, org, window)
    return {
        "totalIssues": issues.completed,
        "totalCost": usd(sum(cost for _, cost in days)),
        "avgCycleTimeMs": half_up(issues.cycle_median_ms),
        "avgYield": percent(issues.first_pass, issues.completed),
        "throughputPerDay": round(issues.completed / window.days, THROUGHPUT_PLACES),
        "costTrend": [usd(cost) for _, cost in days],
    }


async def station(conn: AsyncConnection, org: str | None, window: TimeRange) -> list[dict[str, Any]]:
    return [{"station": s.station, "wipCount": s.wip, "throughput": s.passed,
             "cycleTimeMs": half_up(s.stays.median_ms), "yield": percent(s.first_pass, s.passed)}
            for s in await stations.station_flows(conn, org, window)]


async def cost(conn: AsyncConnection, org: str | None, window: TimeRange) -> dict[str, Any]:
    issue_cost, issues = await spend.issue_spend(conn, org, window)
    per_station = await spend.station_cost(conn, org, window)
    actors = await actor_counts(conn, org, window)
    acted = sum(actors.values())
    return {
        "avgCostPerIssue": usd(issue_cost / issues) if issues else 0.0,
        "costPerStation": [{"station": name, "cost": usd(nano)}
                           for name, nano in sorted(per_station.items(), key=lambda kv: (-kv[1], kv[0]))],
        "costTrend": [{"date": day.isoformat(), "cost": usd(nano)}
                      for day, nano in await spend.daily_cost(conn, org, window)],
        "humanTimePct": percent(actors.get("human", 0), acted),
        "agentTimePct": percent(actors.get("agent", 0), acted),
    }


async def actor_counts(conn: AsyncConnection, org: str | None, window: TimeRange) -> dict[str, int]:
    """Factory events in the window per actor (human | agent)."""
    stmt = (select(EVENTS.c.actor, func.count())
            .where(*of_type(EVENTS, org, *EVENT_TYPES, window=window), EVENTS.c.actor.in_(ACTORS))
            .group_by(EVENTS.c.actor))
    return {str(actor): int(n) for actor, n in await conn.execute(stmt)}


async def provider(conn: AsyncConnection, org: str | None, window: TimeRange) -> list[dict[str, Any]]:
    outcomes = await provider_outcomes(conn, org, window)
    rows = []
    for p in await spend.provider_spend(conn, org, window):
        passed, rework = outcomes.get(p.provider, (0, 0))
        success = percent(passed, passed + rework) if passed + rework else percent(p.calls - p.errors, p.calls)
        avg_usd = p.cost_nano / p.calls / NANO_PER_USD if p.calls else 0.0
        rows.append({
            "provider": p.provider,
            "successRate": success,
            "avgCost": round(avg_usd, USD_PLACES),
            "avgDurationMs": int_div(p.duration_ms, p.calls),
            "totalRuns": p.calls,
            "costEfficiency": round(success / avg_usd, EFFICIENCY_PLACES) if avg_usd else 0.0,
        })
    return sorted(rows, key=lambda r: (-r["totalRuns"], r["provider"]))


async def provider_outcomes(conn: AsyncConnection, org: str | None, window: TimeRange) -> dict[str, tuple[int, int]]:
    """Per provider, station.completed events in the window that name it: (passed, rework)."""
    stmt = (select(EVENTS.c.provider, EVENTS.c.outcome, func.count())
            .where(*of_type(EVENTS, org, "station.completed", window=window), EVENTS.c.provider.is_not(None))
            .group_by(EVENTS.c.provider, EVENTS.c.outcome))
    found: dict[str, tuple[int, int]] = {}
    for name, outcome, n in await conn.execute(stmt):
        passed, rework = found.get(str(name), (0, 0))
        found[str(name)] = (passed + int(n), rework) if outcome == "passed" else (passed, rework + int(n))
    return found


async def handoff(conn: AsyncConnection, org: str | None, window: TimeRange) -> dict[str, Any]:
    d = await handoffs.decisions(conn, org, window)
    acceptance = d.approved / d.decided if d.decided else 0.0
    override = d.overridden / d.decided if d.decided else 0.0
    return {
        "avgReviewLatencyMs": half_up(mean(d.latencies_ms)),
        "acceptanceRate": ratio(d.approved, d.decided),
        "overrideFrequency": ratio(d.overridden, d.decided),
        "handoffFrictionScore": ratio((1 - acceptance) * (1 - override), 1) if d.decided else 0.0,
        "overrideTimeline": [{"date": day.isoformat(), "count": n} for day, n in d.overrides_by_day.items()],
    }


async def phase(conn: AsyncConnection, org: str | None, window: TimeRange) -> dict[str, Any]:
    flows = await stations.station_flows(conn, org, window, medians=False)  # phases show means
    per_station = await spend.station_cost(conn, org, window)
    completed = await flow.completed_issues(conn, org, window)
    reworks = sum(s.reworks for s in flows)
    asked = await handoffs.strategies(conn, org, window)
    total_asked = sum(asked.values())
    return {
        "phases": [{"phase": s.station, "avgCycleTimeMs": half_up(s.stays.mean_ms),
                    "avgCostUsd": usd(per_station.get(s.station, 0) / s.worked) if s.worked else 0.0,
                    "throughput": s.passed} for s in flows],
        "reworkLoops": {
            "avgCyclesPerIssue": round((completed + reworks) / completed, THROUGHPUT_PLACES) if completed else 0.0,
            "totalReworks": reworks,
            "totalCompleted": completed,
        },
        "escalationDistribution": [{"strategy": name, "count": n, "percentage": percent(n, total_asked)}
                                   for name, n in sorted(asked.items())],
    }


async def tune(conn: AsyncConnection) -> None:
    """Settings for this transaction only. JIT compiling these short queries takes longer than running them
    (0.8 s against 0.2 s measured); the station sorts need more than the default 4 MB to stay in memory; and
    asyncpg's prepared statements switch to a generic plan after five runs, which does not know the window
    (measured: 120 ms, then 340 ms from the sixth request on)."""
    for setting in ("jit = off", f"work_mem = '{WORK_MEM}'", "plan_cache_mode = force_custom_plan"):
        await conn.execute(text(f"SET LOCAL {setting}"))


BUILDERS: dict[str, Builder] = {"aggregate": aggregate, "station": station, "cost": cost, "provider": provider,
                                "handoff": handoff, "phase": phase, "devops": devops_metrics}
METRIC_TYPES = tuple(BUILDERS)
DEFAULT_METRIC_TYPE = "aggregate"


def builder_for(raw: str | None) -> Builder:
    """The builder of `metricType` (None: aggregate); INVALID_METRIC_TYPE for anything else."""
    name = DEFAULT_METRIC_TYPE if raw is None else raw
    if name not in BUILDERS:
        raise SeedError(400, "INVALID_METRIC_TYPE", f"Invalid metricType. Must be one of: {', '.join(METRIC_TYPES)}")
    return BUILDERS[name]


async def metrics(store: Store, org: str | None, metric_type: str | None, window: TimeRange) -> Any:
    """`{"metrics": ...}` for one metricType over `window`, in `org` (None: every org)."""
    build = builder_for(metric_type)
    async with store.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            await tune(conn)
        return {"metrics": await build(conn, org, window)}
