"""Sums of spend, tokens and jobs from `metric_buckets`, grouped by any bucket dimension: every window total
of the cost reports comes from here (never from `usage`), so a month costs one indexed range of buckets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from proxy.store.models import metric_buckets

DIMENSIONS = ("bucket_start", "project", "station", "agent", "provider", "model")
UNATTRIBUTED = "unattributed"  # the label of spend whose dimension was not tagged ('' in the buckets)


@dataclass(frozen=True, slots=True)
class Totals:
    """What a set of buckets adds up to. `calls` counts jobs: proxied calls and unmetered sessions; `errors`
    those that failed. Money is nano-USD."""

    cost_nano: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    errors: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Totals) -> Totals:
        return Totals(self.cost_nano + other.cost_nano, self.input_tokens + other.input_tokens,
                      self.output_tokens + other.output_tokens, self.calls + other.calls, self.errors + other.errors)


_AMOUNTS = ("cost_nano", "input_tokens", "output_tokens", "calls", "errors")


async def totals_by(conn: AsyncConnection, org: str, by: Sequence[str], *, start: datetime,
                    end: datetime | None = None, project: str | None = None,
                    grain: str = "day") -> dict[tuple[Any, ...], Totals]:
    """Totals of one org's buckets of `grain` starting in [start, end), grouped by the `by` dimensions
    (keys are tuples in that order; no dimension: one key `()`). `project` restricts to one project."""
    mb = metric_buckets.c
    groups = [mb[name] for name in by]
    sums = [func.coalesce(func.sum(mb[name]), 0) for name in _AMOUNTS]
    stmt = select(*groups, *sums).where(mb.org == org, mb.grain == grain, mb.bucket_start >= start)
    if end is not None:
        stmt = stmt.where(mb.bucket_start < end)
    if project is not None:
        stmt = stmt.where(mb.project == project)
    if groups:
        stmt = stmt.group_by(*groups)
    found: dict[tuple[Any, ...], Totals] = {}
    for row in (await conn.execute(stmt)).all():
        key, amounts = tuple(row[:len(groups)]), [int(v) for v in row[len(groups):]]
        if groups or any(amounts):
            found[key] = Totals(*amounts)
    return found


async def total(conn: AsyncConnection, org: str, *, start: datetime, end: datetime | None = None,
                project: str | None = None, grain: str = "day") -> Totals:
    """One org's (or one project's) totals over buckets starting in [start, end)."""
    return (await totals_by(conn, org, (), start=start, end=end, project=project, grain=grain)).get((), Totals())


def label(value: str | None) -> str:
    """A dimension value as the reports show it: untagged spend is `unattributed`."""
    return value or UNATTRIBUTED


def usd(nano: float) -> float:
    """nano-USD -> USD rounded to 6 decimals (the cost reports' unit)."""
    return round(nano / 1e9, 6)


def ratio_pct(part: float, whole: float) -> float | None:
    """part / whole in percent, 2 decimals; None when the whole is 0 (a ratio over nothing)."""
    return round(part * 100 / whole, 2) if whole else None
