"""Budget limits changed at run time: saved, and applied at start while the file's limit is unchanged."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select

from policies.budgets import Budget
from proxy.store.db import Store
from proxy.store.models import runtime_limits


async def save_limit(store: Store, budget: str, limit_nano: int, config_limit_nano: int, updated_by: str | None,
                     now: datetime) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(delete(runtime_limits).where(runtime_limits.c.budget == budget))
        await conn.execute(runtime_limits.insert().values(
            budget=budget, limit_nano=limit_nano, config_limit_nano=config_limit_nano, updated_at=now,
            updated_by=updated_by))


async def apply_limits(store: Store, budgets: Sequence[Budget]) -> list[Budget]:
    """`budgets` with their saved runtime limits; a saved limit whose budget's file limit has changed since
    is dropped (the file wins once it is edited)."""
    async with store.engine.connect() as conn:
        rows = {r.budget: r for r in (await conn.execute(select(runtime_limits))).all()}
    result, stale = [], []
    for budget in budgets:
        row = rows.get(budget.name)
        if row is None:
            result.append(budget)
        elif row.config_limit_nano != budget.config_limit_nano:
            stale.append(budget.name)
            result.append(budget)
        else:
            result.append(budget.with_limit(row.limit_nano))
    if stale:
        async with store.engine.begin() as conn:
            await conn.execute(delete(runtime_limits).where(runtime_limits.c.budget.in_(stale)))
    return result
