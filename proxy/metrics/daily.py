"""Daily spend for the dashboard's chart: the last N UTC days (today included), each with its cost, tokens,
jobs and cost per provider, read from the day buckets of `metric_buckets` only. Every day of the window is
present (a day without spend is zeros), oldest first."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from proxy.metrics.cost_totals import label, usd
from proxy.metrics.months import midnight
from proxy.store.db import Store
from proxy.store.models import metric_buckets

WINDOWS = (7, 14, 30, 90)


@dataclass(slots=True)
class Day:
    """One UTC day's sums (nano-USD, tokens, jobs) and its cost per provider ('' = untagged)."""

    day: date
    cost_nano: int = 0
    tokens: int = 0
    jobs: int = 0
    providers: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        by_provider = sorted(self.providers.items(), key=lambda kv: (-kv[1], kv[0]))
        return {"date": self.day.isoformat(), "cost": usd(self.cost_nano), "tokens": self.tokens, "jobs": self.jobs,
                "byProvider": {label(name): usd(nano) for name, nano in by_provider}}


async def daily_spend(store: Store, org: str | None, days: int, now: datetime) -> dict[str, Any]:
    """`days` UTC days ending today: `{"days": [...], "providers": [...]}`; `providers` lists every provider
    of the window, costliest first (the chart's legend order). `org` None sums every org (org-"*" admins)."""
    today = now.astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    series = {first + timedelta(days=i): Day(first + timedelta(days=i)) for i in range(days)}
    mb = metric_buckets.c
    stmt = (select(mb.bucket_start, mb.provider, func.sum(mb.cost_nano), func.sum(mb.input_tokens + mb.output_tokens),
                   func.sum(mb.calls))
            .where(mb.grain == "day", mb.bucket_start >= midnight(first),
                   mb.bucket_start < midnight(today + timedelta(days=1)))
            .group_by(mb.bucket_start, mb.provider))
    if org is not None:
        stmt = stmt.where(mb.org == org)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    totals: dict[str, int] = {}
    for start, provider, cost, tokens, jobs in rows:
        entry = series[start.astimezone(UTC).date()]
        entry.cost_nano += int(cost)
        entry.tokens += int(tokens)
        entry.jobs += int(jobs)
        if cost:  # work that cost nothing (an unpriced model) adds no segment to the stacked bar
            entry.providers[provider] = entry.providers.get(provider, 0) + int(cost)
            totals[provider] = totals.get(provider, 0) + int(cost)
    legend = [label(name) for name, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))]
    return {"days": [entry.as_json() for entry in series.values()], "providers": legend}
