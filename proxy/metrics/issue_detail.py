"""Reads one issue's cost drill-down (`GET /api/factory/cost-per-issue/{issue}`) from the raw rows: its calls
through the usage index (org, issue) and its events through (org, issue, ts), grouped in SQL.

Refused calls (never forwarded, cost 0) are left out, as in every rollup. `org=None` reads every org.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from proxy.metrics.issue_breakdown import SESSION, CallGroup, EventGroup, breakdown
from proxy.metrics.issue_calls import UNPRICED, recent_calls
from proxy.store.db import Store
from proxy.store.models import factory_events, usage

EXECUTION = "execution"
u, e = usage.c, factory_events.c


def calls_of(org: str | None, issue: str) -> list[ColumnElement[bool]]:
    """The issue's counted calls (every status but refused), within the caller's org."""
    conds = [u.issue == issue, u.status != "refused"]
    if org is not None:
        conds.insert(0, u.org == org)
    return conds


def events_of(org: str | None, issue: str) -> list[ColumnElement[bool]]:
    conds = [e.issue == issue]
    if org is not None:
        conds.insert(0, e.org == org)
    return conds


async def call_groups(conn: AsyncConnection, org: str | None, issue: str) -> list[CallGroup]:
    # Grouped on the raw catalog_version and `retry_of IS NULL` (no bound parameters in GROUP BY: PostgreSQL
    # would not match a parameterised expression in SELECT to its copy in GROUP BY).
    no_retry = u.retry_of.is_(None)
    dims = (u.station, u.agent, u.model, u.provider, u.catalog_version, no_retry)
    stmt = (select(*dims, func.sum(u.cost_nano), func.count(), func.sum(u.input_tokens),
                   func.sum(u.output_tokens))
            .where(*calls_of(org, issue)).group_by(*dims))
    return [CallGroup(station=r[0], agent=r[1], model=r[2], provider=r[3], unpriced=r[4] == UNPRICED,
                      retry=not r[5], cost_nano=int(r[6] or 0), calls=int(r[7]), input_tokens=int(r[8] or 0),
                      output_tokens=int(r[9] or 0))
            for r in (await conn.execute(stmt)).all()]


async def event_groups(conn: AsyncConnection, org: str | None, issue: str) -> list[EventGroup]:
    dims = (e.type, e.station, e.agent, e.provider, e.model, e.metered)
    stmt = (select(*dims, func.sum(e.cost_nano), func.sum(e.compute_nano), func.sum(e.duration_ms),
                   func.sum(e.input_tokens), func.sum(e.output_tokens), func.count())
            .where(*events_of(org, issue), e.type.in_((SESSION, EXECUTION))).group_by(*dims))
    return [EventGroup(type=r[0], station=r[1], agent=r[2], provider=r[3], model=r[4], metered=r[5],
                       cost_nano=int(r[6] or 0), compute_nano=int(r[7] or 0), duration_ms=int(r[8] or 0),
                       input_tokens=int(r[9] or 0), output_tokens=int(r[10] or 0), count=int(r[11]))
            for r in (await conn.execute(stmt)).all()]


async def first_reworks(conn: AsyncConnection, org: str | None, issue: str) -> dict[str, datetime]:
    """Per station, when the issue first came back from it: its first station.completed outcome=rework."""
    stmt = (select(e.station, func.min(e.ts))
            .where(*events_of(org, issue), e.type == "station.completed", e.outcome == "rework")
            .group_by(e.station))
    return {station: ts for station, ts in (await conn.execute(stmt)).all() if station is not None}


async def rework_nano(conn: AsyncConnection, org: str | None, issue: str, reworks: dict[str, datetime]) -> int:
    """Cost of the priced calls made at a station after that station's first rework verdict: the redo."""
    if not reworks:
        return 0
    after = or_(*(and_(u.station == station, u.started_at > ts) for station, ts in reworks.items()))
    stmt = select(func.sum(u.cost_nano)).where(*calls_of(org, issue), u.catalog_version != UNPRICED, after)
    return int((await conn.execute(stmt)).scalar() or 0)


async def _exists(conn: AsyncConnection, org: str | None, issue: str) -> bool:
    """Any call (refused ones too) or any event of the issue at all."""
    usage_conds = [u.issue == issue] + ([u.org == org] if org is not None else [])
    for stmt in (select(literal(1)).where(*usage_conds).limit(1),
                 select(literal(1)).where(*events_of(org, issue)).limit(1)):
        if (await conn.execute(stmt)).first() is not None:
            return True
    return False


async def issue_detail(store: Store, org: str | None, issue: str) -> dict[str, Any] | None:
    """The drill-down, or None when the issue has neither calls nor events visible to the caller."""
    async with store.engine.connect() as conn:
        calls = await call_groups(conn, org, issue)
        events = await event_groups(conn, org, issue)
        if not calls and not events and not await _exists(conn, org, issue):
            return None
        rework = await rework_nano(conn, org, issue, await first_reworks(conn, org, issue))
        call_list, truncated = await recent_calls(conn, calls_of(org, issue))
    return breakdown(issue, calls, events, rework_nano=rework, call_list=call_list, truncated=truncated)
