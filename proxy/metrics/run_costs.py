"""Cost per pipeline run from the (org, run, agent) rollup `run_agents`: the runs of a month, the most recent
and the costliest, each with its per-agent split and retry cost.

A run belongs to a month when any of its agents was active in it (`last_at` in the month, indexed); its
figures are the whole run's (the rollup is not split by day), so a run spanning a month end counts whole."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, distinct, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from proxy.store.models import run_agents

_AMOUNTS = ("cost_nano", "retry_nano", "input_tokens", "output_tokens", "calls", "errors")


@dataclass(frozen=True, slots=True)
class RunCost:
    """One run's totals (nano-USD, tokens, jobs) and its agents' costs, costliest first ('' = untagged)."""

    run: str
    cost_nano: int
    retry_nano: int
    input_tokens: int
    output_tokens: int
    calls: int
    errors: int
    first_at: datetime
    last_at: datetime
    agents: tuple[tuple[str, int], ...] = ()


def _active(org: str, since: datetime) -> Select[Any]:
    """Ids of the runs with activity (of any agent) since `since`."""
    ra = run_agents.c
    return select(ra.run).where(ra.org == org, ra.last_at >= since)


async def runs_total(conn: AsyncConnection, org: str, since: datetime) -> tuple[int, int]:
    """(number of runs active since `since`, their whole cost in nano-USD)."""
    ra = run_agents.c
    stmt = (select(func.count(distinct(ra.run)), func.coalesce(func.sum(ra.cost_nano), 0))
            .where(ra.org == org, ra.run.in_(_active(org, since))))
    count, cost = (await conn.execute(stmt)).one()
    return int(count), int(cost)


async def recent_runs(conn: AsyncConnection, org: str, since: datetime, limit: int) -> list[RunCost]:
    """The `limit` runs active since `since` whose latest activity is newest, newest first."""
    ra = run_agents.c
    latest = func.max(ra.last_at)
    stmt = (select(ra.run).where(ra.org == org, ra.last_at >= since).group_by(ra.run)
            .order_by(latest.desc(), ra.run.desc()).limit(limit))
    ids = [row[0] for row in (await conn.execute(stmt)).all()]
    runs = await _runs_with_agents(conn, org, ids)
    return [runs[run] for run in ids]


async def costliest_runs(conn: AsyncConnection, org: str, since: datetime, project: str | None,
                         limit: int) -> list[RunCost]:
    """The `limit` costliest runs active since `since` that have rows of `project`, summed over those rows
    (a run shared by projects shows each its own part; `project=None`: whole runs), costliest first, ties by
    run id."""
    ra = run_agents.c
    cost = func.sum(ra.cost_nano)
    stmt = (select(ra.run, *(func.sum(ra[a]) for a in _AMOUNTS), func.min(ra.first_at), func.max(ra.last_at))
            .where(ra.org == org, ra.run.in_(_active(org, since))))
    if project is not None:
        stmt = stmt.where(ra.project == project)
    stmt = stmt.group_by(ra.run).order_by(cost.desc(), ra.run).limit(limit)
    rows = (await conn.execute(stmt)).all()
    return [RunCost(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]), r[7], r[8])
            for r in rows]


async def _runs_with_agents(conn: AsyncConnection, org: str, ids: Sequence[str]) -> dict[str, RunCost]:
    if not ids:
        return {}
    ra = run_agents.c
    stmt = select(ra.run, ra.agent, *(ra[a] for a in _AMOUNTS), ra.first_at, ra.last_at).where(
        ra.org == org, ra.run.in_(list(ids)))
    parts: dict[str, list[Any]] = {}
    for row in (await conn.execute(stmt)).all():
        parts.setdefault(row.run, []).append(row)
    return {run: _combine(run, rows) for run, rows in parts.items()}


def _combine(run: str, rows: Sequence[Any]) -> RunCost:
    cost, retry, tokens_in, tokens_out, calls, errors = (sum(int(getattr(r, a)) for r in rows) for a in _AMOUNTS)
    agents = tuple(sorted(((r.agent, int(r.cost_nano)) for r in rows), key=lambda a: (-a[1], a[0])))
    return RunCost(run, cost, retry, tokens_in, tokens_out, calls, errors, min(r.first_at for r in rows),
                   max(r.last_at for r in rows), agents)
