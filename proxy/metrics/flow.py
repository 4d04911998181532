"""Issue flow over a window: which issues completed, how long they took from creation, how many went through
without rework, and how many rework outcomes the stations reported (aggregate and phase metrics)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from proxy.metrics.eventlog import EVENTS, of_type
from proxy.metrics.figures import mean, median, ms_between
from proxy.metrics.timerange import TimeRange


@dataclass(frozen=True, slots=True)
class IssueFlow:
    """Issues completed in the window (each once), how many of them first pass, their cycle times (ms)."""

    completed: int
    first_pass: int
    cycle_median_ms: float
    cycle_mean_ms: float


async def issue_flow(conn: AsyncConnection, org: str | None, window: TimeRange) -> IssueFlow:
    """Each issue with an issue.completed in the window counts once, at its latest completion there.
    First pass: no station.completed outcome=rework for that issue before that completion (any station,
    any time). Cycle time: completion - the issue's earliest issue.created (issues without one, or created
    after completing, are left out of the median)."""
    done = (select(EVENTS.c.org, EVENTS.c.issue, func.max(EVENTS.c.ts).label("at"))
            .where(*of_type(EVENTS, org, "issue.completed", window=window))
            .group_by(EVENTS.c.org, EVENTS.c.issue).subquery("done"))
    rework = (select(EVENTS.c.org, EVENTS.c.issue, func.min(EVENTS.c.ts).label("at"))
              .where(*of_type(EVENTS, org, "station.completed"), EVENTS.c.outcome == "rework",
                     EVENTS.c.ts < window.end)
              .group_by(EVENTS.c.org, EVENTS.c.issue).subquery("rework"))
    created = (select(EVENTS.c.org, EVENTS.c.issue, func.min(EVENTS.c.ts).label("at"))
               .where(*of_type(EVENTS, org, "issue.created"), EVENTS.c.ts < window.end)
               .group_by(EVENTS.c.org, EVENTS.c.issue).subquery("created"))
    stmt = (select(done.c.at, rework.c.at, created.c.at)
            .select_from(done.outerjoin(rework, and_(rework.c.org == done.c.org, rework.c.issue == done.c.issue))
                         .outerjoin(created, and_(created.c.org == done.c.org, created.c.issue == done.c.issue))))
    completed = first_pass = 0
    cycles: list[float] = []
    for done_at, reworked_at, created_at in await conn.execute(stmt):
        completed += 1
        first_pass += reworked_at is None or reworked_at >= done_at
        if created_at is not None and created_at <= done_at:
            cycles.append(ms_between(done_at, created_at))
    return IssueFlow(completed, first_pass, median(cycles), mean(cycles))



async def completed_issues(conn: AsyncConnection, org: str | None, window: TimeRange) -> int:
    """Distinct issues with an issue.completed in the window (what issue_flow counts, without the joins)."""
    done = (select(EVENTS.c.org, EVENTS.c.issue).distinct()
            .where(*of_type(EVENTS, org, "issue.completed", window=window)).subquery())
    return int((await conn.execute(select(func.count()).select_from(done))).scalar_one())
