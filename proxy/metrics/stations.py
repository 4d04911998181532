"""Per-station flow (station and phase metrics): work in progress now, issues passed in the window, time in
station, first-pass yield, issues worked, rework outcomes; stations in SDLC order, then others alphabetically.

Read from the station_visits rollup (proxy/metrics/visits.py: the station events already paired into stays
at ingest): the visits completed since the window's start through the (org, completed_at) index, plus the
open ones through their partial index, in one grouped pass; never the whole station event history.
Medians: percentile_cont on PostgreSQL; on SQLite the stays are fetched and reduced in Python."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Float, Subquery, and_, case, cast, func, literal, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from proxy.metrics.eventlog import NO_SPANS, Spans
from proxy.metrics.figures import mean, median
from proxy.metrics.timerange import TimeRange
from proxy.store.models import station_visits

SDLC_ORDER = ("research", "development", "security", "qa", "acceptance", "deploy")
VISITS = station_visits


@dataclass(frozen=True, slots=True)
class StationFlow:
    station: str
    wip: int
    passed: int  # distinct issues with outcome=passed in the window
    first_pass: int  # of those, issues with no rework at this station before passing
    worked: int  # distinct issues with a station.entered or station.completed there in the window
    reworks: int  # station.completed outcome=rework events in the window
    stays: Spans  # station.completed in the window - the latest station.entered before it


def station_order(names: Iterable[str]) -> list[str]:
    """The six SDLC stations first, in flow order, then the others alphabetically."""
    rank = {name: i for i, name in enumerate(SDLC_ORDER)}
    return sorted(set(names), key=lambda name: (rank.get(name, len(rank)), name))


def _in(column: Any, window: TimeRange) -> ColumnElement[bool]:
    return and_(column >= window.start, column < window.end)


def _scope(org: str | None, window: TimeRange) -> Subquery:
    """The visits that can count: completed since the window's start (later ones only through an entry in
    the window), and the open ones (any time)."""
    v = VISITS.c
    columns = (v.station, v.entered_at, v.completed_at, v.outcome, v.stay_us, v.reworks_before,
               v.prev_completed_at, v.prev_passed_at, v.issue_done)
    org_terms = [] if org is None else [v.org == org]
    return union_all(select(*columns).where(*org_terms, v.completed_at >= window.start),
                     select(*columns).where(*org_terms, v.completed_at.is_(None))).subquery("scope")


def _count(condition: ColumnElement[bool]) -> Any:
    return func.count().filter(condition)


async def station_flows(conn: AsyncConnection, org: str | None, window: TimeRange, *,
                        medians: bool = True) -> list[StationFlow]:
    """Every station seen in the window (a station.entered or station.completed there) or holding work now.
    Without `medians`, `stays.median_ms` is 0 (on PostgreSQL that spares the percentile's sorts).

    - wip: issues whose latest station.entered there (any time) has no station.completed there at or after
      it, and no issue.completed at or after it (the open visits not closed by an issue.completed);
    - passed: issues with an outcome=passed there in the window; first pass: no outcome=rework there before
      their earliest pass in the window (rework any time);
    - stays: each station.completed in the window (any outcome) minus the latest station.entered of the same
      issue and station at or before it (completions with none are left out).

    One grouped pass over the window's visits and the open ones: each issue counts once per station from the
    first of its visits in the window (its previous completion, or pass, is before the window)."""
    postgres = conn.dialect.name == "postgresql"
    v = _scope(org, window).c
    done = _in(v.completed_at, window)
    passed = and_(done, v.outcome == "passed", or_(v.prev_passed_at.is_(None), v.prev_passed_at < window.start))
    first_seen = or_(v.prev_completed_at.is_(None), v.prev_completed_at < window.start)
    columns = [_count(and_(v.completed_at.is_(None), ~v.issue_done)), _count(passed),
               _count(and_(passed, v.reworks_before == 0)),
               _count(and_(or_(done, _in(v.entered_at, window)), first_seen)),
               _count(and_(done, v.outcome == "rework"))]
    if postgres:  # medians in SQL; SQLite's are computed from the fetched stays below
        stay = cast(case((done, v.stay_us)), Float)  # NULL (not counted) outside the window or without entry
        middle = func.percentile_cont(0.5).within_group(stay) if medians else literal(0.0)
        columns += [func.count(stay), middle, func.avg(stay)]
    rows = (await conn.execute(select(v.station, *columns).group_by(v.station))).all()
    if postgres:
        stays = {str(row[0]): Spans(int(row[6]), float(row[7] or 0) / 1000, float(row[8] or 0) / 1000)
                 for row in rows}
    else:
        stays = await _fetched_stays(conn, org, window)
    found = {str(row[0]): [int(n) for n in row[1:6]] for row in rows}
    names = station_order(name for name, counts in found.items() if counts[0] or counts[3])
    return [StationFlow(name, wip, passes, first, worked, reworks, stays.get(name, NO_SPANS))
            for name in names for wip, passes, first, worked, reworks in [found[name]]]


async def _fetched_stays(conn: AsyncConnection, org: str | None, window: TimeRange) -> dict[str, Spans]:
    """Per station, the count, median and mean (ms) of the stays completed in the window, reduced here."""
    v = VISITS.c
    org_terms = [] if org is None else [v.org == org]
    grouped: dict[str, list[float]] = defaultdict(list)
    stmt = select(v.station, v.stay_us).where(*org_terms, _in(v.completed_at, window), v.stay_us.is_not(None))
    for station, stay_us in await conn.execute(stmt):
        grouped[str(station)].append(stay_us / 1000)
    return {name: Spans(len(ms), median(ms), mean(ms)) for name, ms in grouped.items()}
