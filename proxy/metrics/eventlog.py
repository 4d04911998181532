"""Reads of the factory event log shared by the metric modules: events of one type in one org (or every org)
and window, through the (org, type, ts) index, and the median / mean of time spans grouped by a key.

Medians: PostgreSQL computes them in SQL (percentile_cont); SQLite has no percentile, so the spans are
fetched and reduced in Python with the same definition (the mean of the two middle values for an even count)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Float, FromClause, Select, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from proxy.metrics.figures import mean, median, ms_between
from proxy.metrics.timerange import TimeRange
from proxy.store.models import factory_events

EVENTS = factory_events


def of_type(table: FromClause, org: str | None, *types: str, window: TimeRange | None = None) -> list[ColumnElement[bool]]:
    """WHERE terms: `table` (factory_events or an alias) rows of these types, in `org` unless None, and in
    `window` ([start, end)) when given."""
    terms: list[ColumnElement[bool]] = [table.c.type == types[0] if len(types) == 1 else table.c.type.in_(types)]
    if org is not None:
        terms.append(table.c.org == org)
    if window is not None:
        terms += [table.c.ts >= window.start, table.c.ts < window.end]
    return terms


def same_org(a: FromClause, b: FromClause) -> ColumnElement[bool]:
    return a.c.org == b.c.org


@dataclass(frozen=True, slots=True)
class Spans:
    """Time spans of one group, in milliseconds."""

    count: int
    median_ms: float
    mean_ms: float


NO_SPANS = Spans(0, 0.0, 0.0)


async def spans_by(conn: AsyncConnection, pairs: Select[Any]) -> dict[Hashable, Spans]:
    """`pairs` selects (key, later, earlier); per key, the count, median and mean of later - earlier over the
    rows where earlier is known and not after later."""
    sub = pairs.subquery()
    key, later, earlier = list(sub.c)[:3]
    valid = [earlier.is_not(None), later >= earlier]
    if conn.dialect.name == "postgresql":
        ms = cast(func.extract("epoch", later - earlier) * 1000, Float)
        stmt = (select(key, func.count(), func.percentile_cont(0.5).within_group(ms), func.avg(ms))
                .where(*valid).group_by(key))
        rows = (await conn.execute(stmt)).all()
        return {row[0]: Spans(int(row[1]), float(row[2]), float(row[3])) for row in rows}
    grouped: dict[Hashable, list[float]] = defaultdict(list)
    for k, done, begun in (await conn.execute(select(key, later, earlier).where(*valid))).all():
        grouped[k].append(ms_between(done, begun))
    return {k: Spans(len(v), median(v), mean(v)) for k, v in grouped.items()}
