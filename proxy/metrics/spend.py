"""Spend over a window, summed from the daily metric buckets (never from the raw calls): per day, per station,
per provider, and per issue from the (org, issue, day) rollup. Amounts are nano-USD."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from proxy.metrics.timerange import TimeRange
from proxy.store.models import issue_days, metric_buckets

BUCKETS = metric_buckets


def _day_buckets(org: str | None, window: TimeRange) -> list[ColumnElement[bool]]:
    """Daily buckets of the window's days: bucket_start is a UTC midnight, the window starts on one."""
    terms = [BUCKETS.c.grain == "day", BUCKETS.c.bucket_start >= window.start, BUCKETS.c.bucket_start < window.end]
    if org is not None:
        terms.insert(0, BUCKETS.c.org == org)
    return terms


async def daily_cost(conn: AsyncConnection, org: str | None, window: TimeRange) -> list[tuple[date, int]]:
    """(day, cost) for every day of the window, oldest first, zeros included."""
    stmt = (select(BUCKETS.c.bucket_start, func.sum(BUCKETS.c.cost_nano))
            .where(*_day_buckets(org, window)).group_by(BUCKETS.c.bucket_start))
    by_day: dict[date, int] = {}
    for start, cost in await conn.execute(stmt):
        by_day[start.date()] = by_day.get(start.date(), 0) + int(cost)
    return [(day, by_day.get(day, 0)) for day in window.dates()]


async def station_cost(conn: AsyncConnection, org: str | None, window: TimeRange) -> dict[str, int]:
    """Spend per station tag; spend without a station is not in it."""
    stmt = (select(BUCKETS.c.station, func.sum(BUCKETS.c.cost_nano))
            .where(*_day_buckets(org, window), BUCKETS.c.station != "").group_by(BUCKETS.c.station))
    return {str(station): int(cost) for station, cost in await conn.execute(stmt)}


@dataclass(frozen=True, slots=True)
class ProviderSpend:
    provider: str
    cost_nano: int
    calls: int  # proxied calls and unmetered sessions
    errors: int
    duration_ms: int


async def provider_spend(conn: AsyncConnection, org: str | None, window: TimeRange) -> list[ProviderSpend]:
    """Per provider (buckets with a provider), what it cost, how many calls and errors, how long they took."""
    columns = (func.sum(BUCKETS.c.cost_nano), func.sum(BUCKETS.c.calls), func.sum(BUCKETS.c.errors),
               func.sum(BUCKETS.c.duration_ms))
    stmt = (select(BUCKETS.c.provider, *columns)
            .where(*_day_buckets(org, window), BUCKETS.c.provider != "").group_by(BUCKETS.c.provider))
    return [ProviderSpend(str(p), int(cost), int(calls), int(errors), int(ms))
            for p, cost, calls, errors, ms in await conn.execute(stmt)]


async def issue_spend(conn: AsyncConnection, org: str | None, window: TimeRange) -> tuple[int, int]:
    """(spend tagged with an issue in the window, distinct issues with such spend), from the issue-day rollup."""
    terms = [issue_days.c.day >= window.start, issue_days.c.day < window.end]
    if org is not None:
        terms.insert(0, issue_days.c.org == org)
    per_issue = (select(func.sum(issue_days.c.cost_nano).label("cost")).where(*terms)
                 .group_by(issue_days.c.org, issue_days.c.issue).subquery())
    total, issues = (await conn.execute(select(func.coalesce(func.sum(per_issue.c.cost), 0), func.count()))).one()
    return int(total), int(issues)
