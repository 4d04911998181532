"""Synthetic factory data for `make bench-metrics`: issues moving through the six SDLC stations over the last
90 days, the proxied calls made on them (`usage` rows) and the lifecycle events posted about them
(`factory_events` rows), plus CI pipelines, deployments and incidents. Deterministic for a given seed and
`now`, so runs are comparable.

Events go through the real parser and `event_row` (the very columns and payload `POST /api/factory/events`
stores); calls are built as `usage` tuples directly. Both are written with COPY (asyncpg
`copy_records_to_table`), in chunks, never through the proxy: the rollups are built afterwards by
`proxy.metrics.rollups.rebuild`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from proxy.metrics.events import MAX_BATCH, event_row, parse_events
from proxy.store.models import factory_events, usage

DAYS = 90
COMPUTE_RATE = 0.08  # pricing.compute_hourly_rate_usd (the default)
CATALOG = "litellm-1.77.0+bench0000000"
UNPRICED = "unpriced"
CHUNK = 50_000
ORGS = {"acme": (0.70, "ACME"), "globex": (0.20, "GLX"), "initech": (0.10, "INI")}
PROJECTS = {"web": 0.40, "api": 0.30, "mobile": 0.20, "infra": 0.10}
STATIONS = ("research", "development", "security", "qa", "acceptance", "deploy")
# Per station: its two agents, median stay (hours), P(rework), share of the issue's calls, execution kind.
STATION_PLAN: dict[str, tuple[tuple[str, str], float, float, float, str | None]] = {
    "research": (("researcher", "analyst"), 2.0, 0.05, 0.15, None),
    "development": (("coder", "refactorer"), 6.0, 0.08, 0.35, "container_build"),
    "security": (("sec-scanner", "threat-modeler"), 1.0, 0.12, 0.10, "security_scan"),
    "qa": (("tester", "qa-reviewer"), 3.0, 0.20, 0.20, "test_run"),
    "acceptance": (("acceptor", "ux-reviewer"), 1.5, 0.10, 0.10, None),
    "deploy": (("deployer", "release-bot"), 0.7, 0.05, 0.10, "iac_validation"),
}
# model: (provider, USD per 1M input tokens, per 1M output tokens)
MODELS: dict[str, tuple[str, float, float]] = {
    "gpt-4o": ("openai", 2.5, 10.0), "gpt-4o-mini": ("openai", 0.15, 0.6), "o3-mini": ("openai", 1.1, 4.4),
    "claude-sonnet-4-5": ("anthropic", 3.0, 15.0), "claude-haiku-4-5": ("anthropic", 1.0, 5.0),
    "claude-opus-4-1": ("anthropic", 15.0, 75.0),
    "gemini-2.5-pro": ("gemini", 1.25, 10.0), "gemini-2.5-flash": ("gemini", 0.3, 2.5),
}
UNPRICED_MODEL = ("anthropic", "claude-experimental-0")  # the few calls whose model had no price
USAGE_COLUMNS = tuple(c.name for c in usage.columns)
EVENT_COLUMNS = tuple(c.name for c in factory_events.columns)


@dataclass(slots=True)
class Visit:
    """One stay of an issue at a station (a rework starts another)."""

    station: str
    agent: str
    run: str
    start: datetime
    end: datetime


@dataclass(slots=True)
class Issue:
    org: str
    project: str
    id: str
    visits: list[Visit] = field(default_factory=list)
    weight: float = 1.0  # relative number of calls


@dataclass(slots=True)
class Plan:
    """Everything generated before writing: issues (for the calls) and event bodies (camelCase, as posted)."""

    now: datetime
    issues: list[Issue] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (org, body)
    runs: set[str] = field(default_factory=set)
    agent_models: dict[str, list[str]] = field(default_factory=dict)


class Gen:
    """The seeded random source and the counters behind every id."""

    def __init__(self, seed: int, now: datetime) -> None:
        self.rng = random.Random(seed)
        self.now = now
        self.start = now - timedelta(days=DAYS)
        self.counter = 0

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter:07d}"

    def pick(self, weights: dict[str, Any]) -> str:
        names = list(weights)
        vals = [w[0] if isinstance(w, tuple) else w for w in weights.values()]
        return self.rng.choices(names, vals)[0]

    def lognormal_h(self, median_h: float, sigma: float = 0.9) -> timedelta:
        return timedelta(hours=median_h * math.exp(self.rng.gauss(0, sigma)))

    def moment(self) -> datetime:
        return self.start + timedelta(seconds=self.rng.uniform(0, DAYS * 86400 - 3600))


def _iso(ts: datetime) -> str:
    return ts.isoformat(timespec="milliseconds")


# --- issues and their events -----------------------------------------------------------------------------

def plan(seed: int, now: datetime, events: int) -> Plan:
    """Issues and their events until 97% of `events` (the rest: pipelines, deployments, incidents)."""
    gen = Gen(seed, now)
    out = Plan(now=now)
    for agents, *_rest in STATION_PLAN.values():
        for agent in agents:
            out.agent_models[agent] = gen.rng.sample(sorted(MODELS), 3)
    issue_budget = events - max(1, round(events * 0.03))
    numbers = {org: 1000 for org in ORGS}
    while len(out.events) < issue_budget:
        org = gen.pick(ORGS)
        numbers[org] += 1
        issue = Issue(org, gen.pick(PROJECTS), f"{ORGS[org][1]}-{numbers[org]}",
                      weight=math.exp(gen.rng.gauss(0, 0.8)))
        out.events += [(org, body) for body in _issue_events(gen, issue, out)]
        out.issues.append(issue)
    del out.events[issue_budget:]
    while len(out.events) < events:
        out.events += _devops_events(gen)
    del out.events[events:]
    return out


def _issue_events(gen: Gen, issue: Issue, out: Plan) -> list[dict[str, Any]]:
    rng, t = gen.rng, gen.moment()
    base = {"project": issue.project, "issue": issue.id}
    evs: list[dict[str, Any]] = [{"type": "issue.created", "ts": t, **base, "title": f"Work item {issue.id}"}]
    run = ""
    for station in STATIONS:
        agents, median_h, p_rework, _share, exec_kind = STATION_PLAN[station]
        t += gen.lognormal_h(0.3)
        for attempt in range(3):
            if t >= gen.now:
                return evs
            if not run or rng.random() < 0.6:
                run = gen.next_id(f"run-{issue.org}")
                out.runs.add(run)
            agent = agents[0] if rng.random() < 0.75 else agents[1]
            end = min(t + gen.lognormal_h(median_h), gen.now)
            visit = Visit(station, agent, run, t, end)
            issue.visits.append(visit)
            tags = {**base, "station": station, "run": run, "agent": agent}
            evs.append({"type": "station.entered", "ts": t, **tags})
            evs += _work_events(gen, visit, tags, exec_kind, out)
            if end >= gen.now:
                return evs
            rework = attempt < 2 and rng.random() < p_rework
            model = rng.choice(out.agent_models[agent])
            evs.append({"type": "station.completed", "ts": end, **tags, "outcome": "rework" if rework else "passed",
                        "provider": MODELS[model][0], "model": model})
            t = end + gen.lognormal_h(0.5 if rework else 0.05)
            if not rework:
                break
        t = _handoff(gen, evs, base, station, t)
    if t < gen.now:
        evs.append({"type": "issue.completed", "ts": t, **base})
    return evs


def _work_events(gen: Gen, visit: Visit, tags: dict[str, Any], exec_kind: str | None,
                 out: Plan) -> list[dict[str, Any]]:
    """A session (40% of visits) and an execution (20% of visits at stations that build, test or scan)."""
    rng, evs = gen.rng, []
    span = (visit.end - visit.start).total_seconds()
    if rng.random() < 0.4:
        model = rng.choice(out.agent_models[visit.agent])
        human = rng.random() < 0.15
        tokens_in, tokens_out = int(rng.lognormvariate(10, 1)), int(rng.lognormvariate(8, 1))
        _, pin, pout = MODELS[model]
        evs.append({"type": "session.completed", "ts": visit.end, **tags, "actor": "human" if human else "agent",
                    "provider": MODELS[model][0], "model": model, "sessionId": gen.next_id("sess"),
                    "durationMs": int(span * 1000 * rng.uniform(0.3, 0.9)), "inputTokens": tokens_in,
                    "outputTokens": tokens_out, "costUsd": round((tokens_in * pin + tokens_out * pout) / 1e6, 6),
                    "metered": rng.random() < 0.85})
    if exec_kind and rng.random() < 0.2:
        at = visit.start + timedelta(seconds=span * rng.uniform(0.2, 0.9))
        body = {"type": "execution", "ts": at, **tags, "kind": exec_kind,
                "durationMs": int(rng.lognormvariate(12.5, 0.8))}
        if rng.random() < 0.3:
            body["costUsd"] = round(rng.uniform(0.001, 0.2), 6)
        evs.append(body)
    return evs


def _handoff(gen: Gen, evs: list[dict[str, Any]], base: dict[str, Any], station: str, t: datetime) -> datetime:
    """Between stations, sometimes a handoff (at acceptance half the time, elsewhere 15%): requested, then decided."""
    rng = gen.rng
    if t >= gen.now or rng.random() >= (0.5 if station == "acceptance" else 0.15):
        return t
    handoff = gen.next_id("ho")
    strategy = "human_review" if rng.random() < 0.75 else "auto_escalate"
    evs.append({"type": "handoff.requested", "ts": t, **base, "station": station, "handoffId": handoff,
                "strategy": strategy})
    decided = t + gen.lognormal_h(0.4 if strategy == "human_review" else 0.05, 1.2)
    if decided >= gen.now:
        return decided
    evs.append({"type": "handoff.decided", "ts": decided, **base, "station": station, "handoffId": handoff,
                "decision": "approved" if rng.random() < 0.85 else "rejected", "overridden": rng.random() < 0.1})
    return decided + timedelta(seconds=rng.uniform(1, 120))


def _devops_events(gen: Gen) -> list[tuple[str, dict[str, Any]]]:
    """One CI pipeline run; after some successful main-branch runs a deployment of that commit; after some
    failed deployments (and at random) an incident, resolved later."""
    rng, org = gen.rng, gen.pick(ORGS)
    t, commit = gen.moment(), f"{rng.getrandbits(160):040x}"
    duration = int(rng.lognormvariate(13.2, 0.5))
    branch = "main" if rng.random() < 0.6 else f"feature/{rng.randint(1, 400)}"
    ok = rng.random() < 0.85
    project = gen.pick(PROJECTS)
    evs = [{"type": "pipeline.run", "ts": t, "project": project, "name": "ci", "status": "success" if ok else "failed",
            "durationMs": duration, "trigger": rng.choice(("push", "pull_request", "schedule")), "branch": branch,
            "commit": commit}]
    deployed = t + timedelta(milliseconds=duration) + gen.lognormal_h(0.5)
    if ok and branch == "main" and rng.random() < 0.45 and deployed < gen.now:
        roll = rng.random()
        status, rollback = ("failed", False) if roll < 0.08 else ("success", roll < 0.12)
        evs.append({"type": "deployment", "ts": deployed, "project": project,
                    "version": f"v1.{rng.randint(0, 400)}.{rng.randint(0, 20)}", "environment": "production",
                    "status": status, "isRollback": rollback, "deployedBy": rng.choice(("ci-bot", "alice", "bob")),
                    "commit": commit})
        if (status == "failed" or rollback) and rng.random() < 0.6:
            evs += _incident(gen, project, deployed + timedelta(minutes=rng.uniform(2, 30)))
    if rng.random() < 0.01:
        evs += _incident(gen, project, gen.moment())
    return [(org, body) for body in evs]


def _incident(gen: Gen, project: str, opened: datetime) -> list[dict[str, Any]]:
    if opened >= gen.now:
        return []
    ref = gen.next_id("inc")
    evs: list[dict[str, Any]] = [{"type": "incident.opened", "ts": opened, "project": project, "incidentId": ref,
                                  "title": "Error rate above SLO", "severity": gen.rng.choice(("sev1", "sev2", "sev3"))}]
    resolved = opened + gen.lognormal_h(1.5, 1.0)
    if resolved < gen.now:
        evs.append({"type": "incident.resolved", "ts": resolved, "project": project, "incidentId": ref})
    return evs


def event_rows(gen_plan: Plan, seed: int) -> Iterator[list[tuple[Any, ...]]]:
    """The events as `factory_events` tuples (through the ingest parser), in chunks of MAX_BATCH."""
    rng = random.Random(seed + 1)
    for i in range(0, len(gen_plan.events), MAX_BATCH):
        part = gen_plan.events[i: i + MAX_BATCH]
        bodies = [{"id": f"ev-{i + j:08d}", **{k: _iso(v) if isinstance(v, datetime) else v for k, v in b.items()}}
                  for j, (_org, b) in enumerate(part)]
        rows = []
        for (org, body), event in zip(part, parse_events({"events": bodies}), strict=True):
            received = body["ts"] + timedelta(seconds=rng.uniform(0.05, 5))
            row = event_row(event, org, rate_usd_per_hour=COMPUTE_RATE, received_at=received)
            rows.append(tuple(row[c] for c in EVENT_COLUMNS))
        yield rows


# --- calls -----------------------------------------------------------------------------------------------

def _allocate(rng: random.Random, weights: list[float], total: int) -> list[int]:
    """`total` split in proportion to `weights` (floors, then the remainder drawn by weight)."""
    mass = sum(weights)
    if total <= 0 or mass <= 0:
        return [0] * len(weights)
    counts = [int(total * w / mass) for w in weights]
    for i in rng.choices(range(len(weights)), weights, k=total - sum(counts)):
        counts[i] += 1
    return counts


class Calls:
    """Builds `usage` tuples: calls spread over each issue's station visits, plus 10% ad-hoc calls."""

    def __init__(self, the_plan: Plan, seed: int) -> None:
        self.plan = the_plan
        self.gen = Gen(seed + 2, the_plan.now)
        self.adhoc_runs = 0

    def chunks(self, total: int) -> Iterator[list[tuple[Any, ...]]]:
        rng, adhoc = self.gen.rng, total // 10
        issues = self.plan.issues
        counts = _allocate(rng, [i.weight * len(i.visits) for i in issues], total - adhoc)
        chunk: list[tuple[Any, ...]] = []
        for issue, n in zip(issues, counts, strict=True):
            shares = [STATION_PLAN[v.station][3] for v in issue.visits]
            for visit, k in zip(issue.visits, _allocate(rng, shares, n), strict=True):
                chunk += self._visit_calls(issue.org, issue.project, issue.id, visit, k)
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
        while adhoc > 0:
            k = min(adhoc, rng.randint(10, 70))
            adhoc -= k
            chunk += self._visit_calls(*self._adhoc_visit(), k)
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def _adhoc_visit(self) -> tuple[str, str | None, None, Visit]:
        """Calls not tied to an issue: an org's run of a few dozen calls within an hour or so."""
        gen = self.gen
        org = gen.pick(ORGS)
        project = None if gen.rng.random() < 0.05 else gen.pick(PROJECTS)
        station = gen.rng.choice(STATIONS)
        agent = gen.rng.choice(STATION_PLAN[station][0])
        start = gen.moment()
        self.adhoc_runs += 1
        run = gen.next_id(f"adhoc-{org}")
        return org, project, None, Visit(station if gen.rng.random() < 0.5 else "", agent, run, start,
                                         min(start + gen.lognormal_h(0.7), gen.now))

    def _visit_calls(self, org: str, project: str | None, issue: str | None, visit: Visit,
                     n: int) -> list[tuple[Any, ...]]:
        rng = self.gen.rng
        span = max((visit.end - visit.start).total_seconds() - 60, 1.0)
        starts = sorted(rng.uniform(0, span) for _ in range(n))
        models = self.plan.agent_models[visit.agent]
        rows, previous = [], None
        for offset in starts:
            retry_of = None
            if previous is not None and ((previous[1] != "ok" and rng.random() < 0.8) or rng.random() < 0.01):
                retry_of = previous[0]
            model = rng.choices(models, (0.6, 0.3, 0.1))[0]
            row = self._call(org, project, issue, visit, model, visit.start + timedelta(seconds=offset), retry_of)
            previous = (row["request_id"], row["status"])
            rows.append(tuple(row[c] for c in USAGE_COLUMNS))
        return rows

    def _call(self, org: str, project: str | None, issue: str | None, visit: Visit, model: str, started: datetime,
              retry_of: str | None) -> dict[str, Any]:
        rng = self.gen.rng
        provider, pin, pout = MODELS[model]
        catalog = CATALOG
        if rng.random() < 0.003:
            (provider, model), catalog, pin, pout = UNPRICED_MODEL, UNPRICED, 0.0, 0.0
        tokens_in, tokens_out = min(int(rng.lognormvariate(8.0, 0.9)), 190_000), int(rng.lognormvariate(6.0, 0.8))
        cached = int(tokens_in * rng.uniform(0.2, 0.8)) if provider == "anthropic" and rng.random() < 0.4 else 0
        roll = rng.random()
        status, http, error = ("ok", 200, None) if roll < 0.955 else ("error", rng.choice((500, 502, 429)),
                                                                       "upstream error") if roll < 0.985 else \
            ("cancelled", 499, "client disconnected") if roll < 0.99 else ("refused", 402, "budget_exceeded")
        if status == "cancelled":
            tokens_out = int(tokens_out * rng.random())
        elif status != "ok":
            tokens_in = tokens_out = cached = 0
        ms = {"ok": 300 + tokens_out * 15, "cancelled": 200 + tokens_out * 15, "error": 800,
              "refused": 2}[status] * rng.uniform(0.5, 1.5)
        # nano-USD: USD per 1M tokens x 1000 per token; cached input at a tenth; rounded up as the proxy does.
        cost = math.ceil((tokens_in - cached) * pin * 1000 + cached * pin * 100 + tokens_out * pout * 1000)
        human = rng.random() < 0.05
        return {
            "request_id": f"sg-{rng.getrandbits(128):032x}", "started_at": started,
            "ended_at": started + timedelta(milliseconds=ms), "duration_ms": int(ms), "status": status,
            "http_status": http, "org": org, "project": project, "agent": visit.agent, "station": visit.station or None,
            "run": visit.run if rng.random() < 0.97 else None, "issue": issue, "actor": "human" if human else "agent",
            "retry_of": retry_of, "key_name": f"{org}-dev" if human else f"{org}-agents",
            "endpoint": "/v1/messages" if provider == "anthropic" else "/v1/chat/completions",
            "provider": provider, "model": model, "upstream_model": model, "input_tokens": tokens_in,
            "cached_input_tokens": cached, "cache_write_tokens": 0, "output_tokens": tokens_out,
            "reasoning_tokens": tokens_out // 3 if model == "o3-mini" else 0, "cost_nano": cost,
            "usage_source": "estimated" if status == "cancelled" else "provider", "stream": rng.random() < 0.4,
            "catalog_version": catalog, "error": error, "enforcement": None,
        }


# --- writing ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Seeded:
    usage_rows: int
    events: int
    issues: int
    runs: int


async def write(dsn: str, the_plan: Plan, usage_rows: int, seed: int) -> Seeded:
    """COPY the calls and the events into an empty, migrated database (asyncpg dsn)."""
    calls = Calls(the_plan, seed)
    written = events = 0
    conn = await asyncpg.connect(dsn)
    try:
        for chunk in calls.chunks(usage_rows):
            await conn.copy_records_to_table("usage", records=chunk, columns=USAGE_COLUMNS)
            written += len(chunk)
        for rows in event_rows(the_plan, seed):
            await conn.copy_records_to_table("factory_events", records=rows, columns=EVENT_COLUMNS)
            events += len(rows)
    finally:
        await conn.close()
    return Seeded(written, events, len(the_plan.issues), len(the_plan.runs) + calls.adhoc_runs)


def now_minute() -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0)
