"""Handoff quality over a window (handoff metric) and the escalation strategies requested (phase metric).

A decision is paired with its request by handoffId when it names one (the latest request with that id at or
before the decision), else by issue (and station, when the decision names one): the latest request of that
issue at or before the decision. A decision without a request counts in the rates, not in the latency."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from proxy.metrics.eventlog import EVENTS, of_type
from proxy.metrics.figures import ms_between
from proxy.metrics.timerange import TimeRange

DEFAULT_STRATEGY = "human_review"


@dataclass(frozen=True, slots=True)
class Decisions:
    decided: int = 0
    approved: int = 0
    overridden: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    overrides_by_day: dict[date, int] = field(default_factory=dict)


def _requested_at(by_ref: bool, decisions: Select[tuple[str, str]], window: TimeRange) -> Select[tuple[str, str, datetime]]:
    """(org, decision id, the paired request's ts) for decisions with (by_ref) or without a handoffId."""
    d = decisions.subquery("d")
    req = EVENTS.alias("req")
    pair = [req.c.ref == d.c.ref] if by_ref else [
        req.c.issue == d.c.issue, or_(d.c.station.is_(None), req.c.station == d.c.station)]
    on = and_(*of_type(req, None, "handoff.requested"), req.c.org == d.c.org, req.c.ts <= d.c.ts,
              req.c.ts < window.end, *pair)
    return (select(d.c.org, d.c.id, func.max(req.c.ts).label("at")).select_from(d.join(req, on))
            .where(d.c.ref.is_not(None) if by_ref else d.c.ref.is_(None)).group_by(d.c.org, d.c.id))


async def decisions(conn: AsyncConnection, org: str | None, window: TimeRange) -> Decisions:
    """Every handoff.decided in the window, with the latency from its paired request."""
    base = select(EVENTS.c.org, EVENTS.c.id, EVENTS.c.ts, EVENTS.c.ref, EVENTS.c.issue, EVENTS.c.station,
                  EVENTS.c.outcome, EVENTS.c.overridden).where(*of_type(EVENTS, org, "handoff.decided", window=window))
    d = base.subquery("decided")
    by_ref = _requested_at(True, base, window).subquery("by_ref")
    by_issue = _requested_at(False, base, window).subquery("by_issue")
    stmt = (select(d.c.ts, d.c.outcome, d.c.overridden, func.coalesce(by_ref.c.at, by_issue.c.at))
            .select_from(d.outerjoin(by_ref, and_(by_ref.c.org == d.c.org, by_ref.c.id == d.c.id))
                         .outerjoin(by_issue, and_(by_issue.c.org == d.c.org, by_issue.c.id == d.c.id))))
    decided = approved = overridden = 0
    latencies: list[float] = []
    by_day: Counter[date] = Counter()
    for ts, outcome, was_overridden, requested_at in await conn.execute(stmt):
        decided += 1
        approved += outcome == "approved"
        if was_overridden:
            overridden += 1
            by_day[ts.date()] += 1
        if requested_at is not None:
            latencies.append(ms_between(ts, requested_at))
    return Decisions(decided, approved, overridden, latencies, dict(sorted(by_day.items())))


async def strategies(conn: AsyncConnection, org: str | None, window: TimeRange) -> dict[str, int]:
    """handoff.requested events in the window per strategy (none given: human_review)."""
    strategy = func.coalesce(EVENTS.c.kind, DEFAULT_STRATEGY)
    stmt = (select(strategy, func.count())
            .where(*of_type(EVENTS, org, "handoff.requested", window=window)).group_by(strategy))
    return {str(name): int(n) for name, n in await conn.execute(stmt)}
