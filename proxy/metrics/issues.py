"""The cost-per-issue list (`GET /api/factory/cost-per-issue`): one row per issue over a window of UTC days,
summed from the `issue_days` rollup (never from `usage`), sorted and paged by keyset on the sums.

Scoping: `org=None` (an org-"*" admin that named no org) reads every org, and the same issue id in two orgs
is then one entry; any other caller's org is filtered in SQL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Select, String, and_, func, literal, or_, select

from pricing.money import nano_to_usd
from proxy.metrics.issue_window import Cursor, DayWindow, Sort
from proxy.store.db import Store
from proxy.store.models import UTCDateTime, issue_days
from proxy.store.queries import iso_utc

MS_PER_HOUR = 3_600_000
d = issue_days.c


@dataclass(frozen=True, slots=True)
class IssueQuery:
    """What the caller asked for; `org` None means every org."""

    org: str | None
    window: DayWindow
    sort: Sort
    limit: int
    cursor: Cursor | None = None
    project: str | None = None


_SUMS = {
    "cost": func.sum(d.cost_nano), "compute": func.sum(d.compute_nano), "retry": func.sum(d.retry_nano),
    "calls": func.sum(d.calls), "unpriced": func.sum(d.unpriced), "session_ms": func.sum(d.session_ms),
}
# issue_days keeps one project per day (the greatest name seen, order-free); over a window, the same rule.
_PROJECT = func.max(d.project)
_FIRST_AT = func.min(d.first_at)
_LAST_AT = func.max(d.last_at)


def _sort_column(key: str) -> ColumnElement[Any]:
    return {"cost": _SUMS["cost"], "issue": d.issue, "lastSeen": _LAST_AT}[key]


def _where(q: IssueQuery) -> list[ColumnElement[bool]]:
    conds = [d.day >= q.window.start, d.day < q.window.end]
    if q.org is not None:
        conds.append(d.org == q.org)
    if q.project is not None:
        conds.append(d.project == q.project)
    return conds


def _after(sort: Sort, cursor: Cursor) -> ColumnElement[bool]:
    """Rows strictly after the cursor in (sort value, issue ascending) order."""
    issue_after = d.issue > literal(cursor.issue, String())
    if sort.key == "issue":
        return d.issue < literal(cursor.issue, String()) if sort.descending else issue_after
    column = _sort_column(sort.key)
    value = literal(cursor.value, UTCDateTime() if sort.key == "lastSeen" else BigInteger())
    beyond = column < value if sort.descending else column > value
    return or_(beyond, and_(column == value, issue_after))


def rank_statement(q: IssueQuery) -> Select[Any]:
    """Which issues are on the page, in order: only the sort value is aggregated (the window may hold
    hundreds of thousands of issue-days); one more row than the page says whether another follows."""
    column = _sort_column(q.sort.key)
    stmt = select(d.issue, column.label("value")).where(*_where(q)).group_by(d.issue)
    if q.cursor is not None:
        stmt = stmt.having(_after(q.sort, q.cursor))
    order = [column.desc() if q.sort.descending else column.asc()]
    if q.sort.key != "issue":
        order.append(d.issue.asc())
    return stmt.order_by(*order).limit(q.limit + 1)


def figures_statement(q: IssueQuery, issues: Sequence[str]) -> Select[Any]:
    """Every figure of the page's issues over the window (primary-key lookups per issue)."""
    return (select(d.issue, _PROJECT.label("project"), *(col.label(name) for name, col in _SUMS.items()),
                   _FIRST_AT.label("first_at"), _LAST_AT.label("last_at"))
            .where(*_where(q), d.issue.in_(issues)).group_by(d.issue))


async def list_issues(store: Store, q: IssueQuery) -> tuple[list[dict[str, Any]], str | None]:
    """One page of issues and the cursor of the next page (None on the last)."""
    async with store.engine.connect() as conn:
        ranked = (await conn.execute(rank_statement(q))).all()
        page = ranked[: q.limit]
        figures: dict[str, Mapping[Any, Any]] = {}
        if page:
            result = await conn.execute(figures_statement(q, [issue for issue, _ in page]))
            figures = {row["issue"]: row for row in result.mappings().all()}
    items = [issue_item(figures[issue]) for issue, _ in page]
    next_cursor = None
    if len(ranked) > q.limit:
        issue, value = page[-1]
        value = int(value or 0) if q.sort.key == "cost" else value
        next_cursor = Cursor(q.sort.name, value, issue).encode()
    return items, next_cursor


def issue_item(row: Mapping[Any, Any]) -> dict[str, Any]:
    """One list entry: USD floats (9 places), compute hours, ISO times; token cost = total - compute."""
    cost, compute = int(row["cost"] or 0), int(row["compute"] or 0)
    first_at: datetime = row["first_at"]
    last_at: datetime = row["last_at"]
    return {
        "issue": row["issue"],
        "project": row["project"] or None,
        "totalCostUsd": nano_to_usd(cost),
        "tokenCostUsd": nano_to_usd(cost - compute),
        "computeCostUsd": nano_to_usd(compute),
        "computeHours": round(int(row["session_ms"] or 0) / MS_PER_HOUR, 6),
        "retryCostUsd": nano_to_usd(int(row["retry"] or 0)),
        "calls": int(row["calls"] or 0),
        "unpricedCalls": int(row["unpriced"] or 0),
        "firstSeen": iso_utc(first_at),
        "lastSeen": iso_utc(last_at),
    }
