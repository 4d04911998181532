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


async def recent_output_tokens(store: Store, *, org: str, agent: str | None, model: str,
                               last: int = 50) -> int | None:
    """Average output tokens of the `last` completed calls of this agent and model (None without history):
    what `POST /api/estimate` expects a new call to produce."""
    recent = (select(usage.c.output_tokens)
              .where(usage.c.org == org, usage.c.model == model, usage.c.status == "ok",
                     usage.c.agent.is_(None) if agent is None else usage.c.agent == agent)
              .order_by(usage.c.started_at.desc()).limit(last).subquery())
    async with store.engine.connect() as conn:
        average = (await conn.execute(select(func.avg(recent.c.output_tokens)))).scalar()
    return None if average is None else round(float(average))
