"""DevOps / DORA figures over a window from pipeline.run, deployment and incident events: deployment
frequency, change failure rate, lead time for changes, time to recovery, uptime, and the latest pipelines,
deployments and incidents as the seed lists them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from proxy.metrics.eventlog import EVENTS, of_type
from proxy.metrics.figures import duration, iso, mean, median, ms_between, percent
from proxy.metrics.timerange import TimeRange

LATEST = 20  # pipelines and deployments listed
MAX_INCIDENTS = 50
CHUNK = 500  # commits per IN list (SQLite's bound-parameter limit)
UPTIME_PLACES = 2  # 99.95 must not print as 100.0
SUCCESS = frozenset({"success", "succeeded"})
FAILED = frozenset({"failed", "failure", "error"})


@dataclass(frozen=True, slots=True)
class DeploymentRow:
    org: str
    id: str
    ts: datetime
    status: str
    is_rollback: bool
    commit: str | None
    payload: dict[str, Any]

    @property
    def succeeded(self) -> bool:
        return self.status.lower() in SUCCESS

    @property
    def failed(self) -> bool:
        return self.status.lower() in FAILED or self.is_rollback


async def deployments(conn: AsyncConnection, org: str | None, window: TimeRange) -> list[DeploymentRow]:
    """Every deployment in the window, newest first."""
    stmt = (select(EVENTS.c.org, EVENTS.c.id, EVENTS.c.ts, EVENTS.c.status, EVENTS.c.is_rollback, EVENTS.c.ref,
                   EVENTS.c.payload)
            .where(*of_type(EVENTS, org, "deployment", window=window))
            .order_by(EVENTS.c.ts.desc(), EVENTS.c.id.desc()))
    return [DeploymentRow(str(o), str(id_), ts, status or "", bool(rollback), ref, orjson.loads(payload))
            for o, id_, ts, status, rollback, ref, payload in await conn.execute(stmt)]


async def lead_time(conn: AsyncConnection, org: str | None, deployed: list[DeploymentRow]) -> float:
    """Median over successful deployments naming a commit of (deployment - the earliest pipeline.run of that
    commit), when that run started at or before the deployment (others are left out); 0 with none."""
    commits = sorted({(dep.org, dep.commit) for dep in deployed if dep.succeeded and dep.commit})
    built: dict[tuple[str, str], datetime] = {}
    for i in range(0, len(commits), CHUNK):
        chunk = commits[i: i + CHUNK]
        stmt = (select(EVENTS.c.org, EVENTS.c.ref, func.min(EVENTS.c.ts))
                .where(*of_type(EVENTS, org, "pipeline.run"), EVENTS.c.ref.in_({ref for _, ref in chunk}))
                .group_by(EVENTS.c.org, EVENTS.c.ref))
        built.update(((str(o), str(ref)), ts) for o, ref, ts in await conn.execute(stmt))
    leads = [ms_between(dep.ts, built[(dep.org, dep.commit)]) for dep in deployed
             if dep.succeeded and dep.commit and (dep.org, dep.commit) in built
             and built[(dep.org, dep.commit)] <= dep.ts]
    return median(leads)


async def pipelines(conn: AsyncConnection, org: str | None, window: TimeRange) -> list[dict[str, Any]]:
    """The latest pipeline.run events of the window: (ts, status, duration_ms, payload) newest first."""
    stmt = (select(EVENTS.c.ts, EVENTS.c.status, EVENTS.c.duration_ms, EVENTS.c.payload)
            .where(*of_type(EVENTS, org, "pipeline.run", window=window))
            .order_by(EVENTS.c.ts.desc(), EVENTS.c.id.desc()).limit(LATEST))
    return [{"ts": ts, "status": status or "", "duration_ms": ms or 0, "payload": orjson.loads(payload)}
            for ts, status, ms, payload in await conn.execute(stmt)]


@dataclass(slots=True)
class Incident:
    """One incident (by incidentId): opened at its first incident.opened, resolved at its first
    incident.resolved (None: still open)."""

    id: str
    opened_at: datetime
    resolved_at: datetime | None
    title: str
    severity: str


async def incidents(conn: AsyncConnection, org: str | None, window: TimeRange) -> list[Incident]:
    """Every incident opened before the window's end (resolutions after it are not known yet)."""
    stmt = (select(EVENTS.c.org, EVENTS.c.ref, EVENTS.c.type, EVENTS.c.ts, EVENTS.c.payload)
            .where(*of_type(EVENTS, org, "incident.opened", "incident.resolved"), EVENTS.c.ts < window.end)
            .order_by(EVENTS.c.ts))
    found: dict[tuple[str, str], Incident] = {}
    resolved: dict[tuple[str, str], datetime] = {}
    for org_, ref, type_, ts, payload in await conn.execute(stmt):
        key = (str(org_), str(ref))
        if type_ == "incident.resolved":
            resolved.setdefault(key, ts)
        elif key not in found:
            body = orjson.loads(payload)
            found[key] = Incident(str(ref), ts, None, str(body.get("title", "")), str(body.get("severity", "")))
    for key, incident in found.items():
        incident.resolved_at = resolved.get(key)
    return list(found.values())


def downtime_ms(found: list[Incident], window: TimeRange) -> float:
    """Milliseconds of the window during which at least one incident was open (overlaps counted once)."""
    spans = sorted((max(i.opened_at, window.start), min(i.resolved_at or window.end, window.end)) for i in found)
    total = 0.0
    current: tuple[datetime, datetime] | None = None
    for begin, end in spans:
        if end <= begin:
            continue
        if current is not None and begin <= current[1]:
            current = (current[0], max(current[1], end))
            continue
        if current is not None:
            total += (current[1] - current[0]).total_seconds() * 1000
        current = (begin, end)
    if current is not None:
        total += (current[1] - current[0]).total_seconds() * 1000
    return total


async def devops_metrics(conn: AsyncConnection, org: str | None, window: TimeRange) -> dict[str, Any]:
    """The seed's devops object: infra (DORA figures), pipelines, deployments, incidents."""
    deployed = await deployments(conn, org, window)
    found = await incidents(conn, org, window)
    lead = await lead_time(conn, org, deployed)
    window_ms = ms_between(window.end, window.start)
    recoveries = [ms_between(i.resolved_at, i.opened_at) for i in found
                  if i.resolved_at is not None and window.start <= i.resolved_at < window.end
                  and i.resolved_at >= i.opened_at]
    latest_env: dict[str, DeploymentRow] = {}
    for dep in deployed:  # newest first: the first seen per environment is its latest
        latest_env.setdefault(str(dep.payload.get("environment", "")), dep)
    infra = {
        "uptimePct": round(100.0 * (1 - downtime_ms(found, window) / window_ms), UPTIME_PLACES) if window_ms else 100.0,
        "activeDeployments": sum(1 for dep in latest_env.values() if dep.succeeded),
        "openIncidents": sum(1 for i in found if i.resolved_at is None),
        "deploymentFrequency": f"{sum(dep.succeeded for dep in deployed) / window.days:.1f}/day",
        "changeFailureRate": f"{percent(sum(dep.failed for dep in deployed), len(deployed)):.1f}%",
        "leadTimeForChanges": duration(lead),
        "meanTimeToRecovery": duration(mean(recoveries)),
    }
    listed = sorted((i for i in found if i.resolved_at is None or window.start <= i.resolved_at < window.end),
                    key=lambda i: (i.opened_at, i.id), reverse=True)[:MAX_INCIDENTS]
    return {
        "infra": infra,
        "pipelines": [_pipeline(run) for run in await pipelines(conn, org, window)],
        "deployments": [_deployment(dep) for dep in deployed[:LATEST]],
        "incidents": [_incident(i) for i in listed],
    }


def _pipeline(run: dict[str, Any]) -> dict[str, Any]:
    body = run["payload"]
    return {"name": str(body.get("name", "")), "status": run["status"], "duration": duration(run["duration_ms"]),
            "trigger": str(body.get("trigger", "")), "branch": str(body.get("branch", "")),
            "commit": str(body.get("commit", "")), "startedAt": iso(run["ts"])}


def _deployment(dep: DeploymentRow) -> dict[str, Any]:
    body = dep.payload
    return {"id": dep.id, "version": str(body.get("version", "")), "environment": str(body.get("environment", "")),
            "status": dep.status, "deployedAt": iso(dep.ts), "deployedBy": str(body.get("deployedBy", "")),
            "isRollback": dep.is_rollback}


def _incident(incident: Incident) -> dict[str, Any]:
    return {"id": incident.id, "title": incident.title, "severity": incident.severity,
            "status": "open" if incident.resolved_at is None else "resolved", "openedAt": iso(incident.opened_at),
            "resolvedAt": None if incident.resolved_at is None else iso(incident.resolved_at)}
