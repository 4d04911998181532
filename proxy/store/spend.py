"""Spend per budget counter, summed from the usage rows: what rebuilds ledger counters at start (a restart
forgets no spend) and which counters `GET /api/budgets` lists (a `"*"` scope: one per value seen)."""

from __future__ import annotations

from sqlalchemy import func, select

from policies.budgets import WILDCARD, Budget, Scope
from policies.windows import WindowSpan
from proxy.store.db import Store
from proxy.store.models import usage

# Budget dimensions -> usage columns.
COLUMN_OF = {"org": "org", "project": "project", "agent": "agent", "station": "station", "run": "run",
             "issue": "issue", "model": "model", "provider": "provider", "key": "key_name"}


async def counter_spend(store: Store, budget: Budget, window: WindowSpan,
                        org: str | None = None) -> list[tuple[Scope, int]]:
    """(scope, spent nano-USD) of every counter of `budget` with spend in `window` (optionally one org's)."""
    grouped = [usage.c[COLUMN_OF[dim]] for dim, value in budget.scope if value == WILDCARD]
    stmt = select(*grouped, func.coalesce(func.sum(usage.c.cost_nano), 0))
    for dim, value in budget.scope:
        column = usage.c[COLUMN_OF[dim]]
        stmt = stmt.where(column.is_not(None) if value == WILDCARD else column == value)
    if window.starts_at is not None:
        stmt = stmt.where(usage.c.started_at >= window.starts_at)
    if org is not None:
        stmt = stmt.where(usage.c.org == org)
    if grouped:
        stmt = stmt.group_by(*grouped)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    found: list[tuple[Scope, int]] = []
    wild = [dim for dim, value in budget.scope if value == WILDCARD]
    literal = [(dim, value) for dim, value in budget.scope if value != WILDCARD]
    for row in rows:
        spent = int(row[-1])
        if not grouped and spent == 0:
            continue
        scope = tuple(sorted(literal + list(zip(wild, (str(v) for v in row[:-1]), strict=True))))
        found.append((scope, spent))
    return found
