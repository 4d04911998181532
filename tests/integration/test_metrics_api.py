"""GET /api/factory/metrics on SQLite and PostgreSQL: every metricType and timeRange compared, whole payload and
JSON types, with a reference computed here from the raw events and calls the test posted and inserted (never
by calling the code under test); defaults, the seed errors, roles, and tenant isolation.

The reference follows docs/metrics.md line by line; the data is built so each definition's edge is crossed
(rework before the window, an entry and completion at one instant, a completion with no entry, a decision
without a request, an issue created 40 days before it completed, spend outside every window, ...)."""

from __future__ import annotations

import asyncio
import math
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

import pytest

from proxy.store.config import StoreConfig
from proxy.store.db import Store
from proxy.store.records import CallRecord
from tests.error_shapes import assert_seed_error
from tests.harness import ADMIN, AGENT, OTHER, ROOT, VIEWER, Proxy

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC).replace(microsecond=0)
RATE_NANO_PER_HOUR = 80_000_000  # pricing.compute_hourly_rate_usd default, 0.08
SDLC = ("research", "development", "security", "qa", "acceptance", "deploy")
METRIC_TYPES = ("aggregate", "station", "cost", "provider", "handoff", "phase", "devops")
RANGES = {"7d": 7, "30d": 30, "90d": 90}


def ago(hours: float) -> datetime:
    return NOW - timedelta(hours=hours)


DAY = 24


# --- the data -------------------------------------------------------------------------------------------

def acme_events() -> list[dict[str, Any]]:
    """Events as posted (ts as datetimes here; sent as ISO with assorted offsets)."""
    ev: list[dict[str, Any]] = []

    def add(type_: str, ts: datetime, **fields: Any) -> None:
        ev.append({"id": f"e{len(ev)}", "type": type_, "ts": ts, **fields})

    def stay(issue: str, station: str, entered: float, done: float, outcome: str = "passed", **extra: Any) -> None:
        add("station.entered", ago(entered), issue=issue, station=station)
        add("station.completed", ago(done), issue=issue, station=station, outcome=outcome, **extra)

    # I-1: through research, a rework at development, qa; completed 4 days ago, 24 h after creation.
    add("issue.created", ago(120), issue="I-1")
    stay("I-1", "research", 119, 117, provider="anthropic")
    stay("I-1", "development", 116, 113, "rework", provider="anthropic")
    stay("I-1", "development", 112, 108, provider="openai")
    stay("I-1", "qa", 107, 100)
    add("issue.completed", ago(96), issue="I-1")
    # I-2: research passed first time; now sitting in development.
    add("issue.created", ago(80), issue="I-2")
    stay("I-2", "research", 79, 78, provider="anthropic")
    add("station.entered", ago(77), issue="I-2", station="development")
    # I-3: created 40 days ago, completed two days ago.
    add("issue.created", ago(40 * DAY), issue="I-3")
    stay("I-3", "qa", 60, 50)
    add("issue.completed", ago(48), issue="I-3")
    # I-4 and I-7: completed without an issue.created; I-7 entered development first (not WIP after completing).
    add("issue.completed", ago(30), issue="I-4")
    add("station.entered", ago(30), issue="I-7", station="development")
    add("issue.completed", ago(20), issue="I-7")
    # I-5: 30-day window only, rework at development.
    add("issue.created", ago(25 * DAY), issue="I-5")
    stay("I-5", "development", 22 * DAY, 21 * DAY, "rework", provider="openai")
    stay("I-5", "development", 21 * DAY - 1, 20 * DAY, provider="openai")
    add("issue.completed", ago(20 * DAY), issue="I-5")
    # I-6: entered research 100 days ago, never left: WIP whatever the window.
    add("station.entered", ago(100 * DAY), issue="I-6", station="research")
    # I-8: entry and completion at one instant (0 ms, not WIP).
    stay("I-8", "security", 10, 10)
    # I-9: stations beyond the six, listed alphabetically after them.
    stay("I-9", "alpha", 6, 4)
    add("station.entered", ago(5), issue="I-9", station="zeta")
    # I-10: rework at qa before the 7-day window, passed inside it (not first pass).
    stay("I-10", "qa", 200, 190, "rework")
    stay("I-10", "qa", 180, 40)
    # I-11: a completion with no entry (throughput, no cycle time).
    add("station.completed", ago(12), issue="I-11", station="deploy", outcome="passed")

    # Handoffs.
    add("handoff.requested", ago(100), issue="I-1", station="qa", handoffId="H1")
    add("handoff.decided", ago(99), issue="I-1", handoffId="H1", decision="approved", actor="human")
    add("handoff.requested", ago(70), issue="I-3", station="qa")
    add("handoff.requested", ago(50), issue="I-3", station="qa", strategy="auto_escalate")
    add("handoff.decided", ago(48), issue="I-3", station="qa", decision="rejected", overridden=True, actor="human")
    add("handoff.decided", ago(30), issue="I-4", handoffId="H-none", decision="approved", overridden=True)
    add("handoff.requested", ago(300), issue="I-5", handoffId="H4", strategy="auto_escalate")
    add("handoff.decided", ago(299), issue="I-5", handoffId="H4", decision="approved", actor="human")

    # Spend carried by events.
    add("session.completed", ago(100), issue="I-1", station="development", provider="anthropic", model="m",
        metered=False, costUsd=0.75, durationMs=1_800_000, inputTokens=1000, outputTokens=200)
    add("session.completed", ago(60), issue="I-3", station="qa", provider="openai", durationMs=3_600_000,
        actor="human")
    add("execution", ago(40), issue="I-3", station="qa", kind="test_run", durationMs=600_000, costUsd=0.05)
    add("execution", ago(20 * DAY), issue="I-5", station="development", kind="container_build", durationMs=900_000)
    add("session.completed", ago(100 * DAY), issue="I-6", station="research", provider="anthropic",
        metered=False, costUsd=5.0, durationMs=60_000)

    # DevOps.
    add("pipeline.run", ago(40), name="main", status="failed", durationMs=45_000, trigger="push", branch="main",
        commit="c1")
    add("pipeline.run", ago(30), name="main", status="success", durationMs=720_000, trigger="push",
        branch="main", commit="c1")
    add("pipeline.run", ago(10), name="feature", status="success", durationMs=5_400_000, trigger="pr",
        branch="feat/x", commit="c2")
    add("pipeline.run", ago(15 * DAY), name="main", status="success", durationMs=200_000_000, commit="c3")
    add("deployment", ago(36), version="v1", environment="production", status="success", commit="c1",
        deployedBy="agent-x")
    add("deployment", ago(8), version="v2", environment="production", status="failed", commit="c2")
    add("deployment", ago(6), version="v1", environment="production", status="success", isRollback=True)
    add("deployment", ago(7), version="v2", environment="staging", status="success", commit="c2",
        deployedBy="ci")
    add("deployment", ago(15 * DAY), version="v0", environment="staging", status="success", commit="c3")
    add("incident.opened", ago(50), incidentId="INC-1", title="API down", severity="sev1")
    add("incident.resolved", ago(49.75), incidentId="INC-1")
    add("incident.opened", ago(3), incidentId="INC-2", title="Slow", severity="sev2")
    add("incident.opened", ago(15 * DAY), incidentId="INC-3", title="Disk")
    add("incident.resolved", ago(15 * DAY - 2), incidentId="INC-3")
    return ev


def globex_events() -> list[dict[str, Any]]:
    return [
        {"id": "g1", "type": "issue.created", "ts": ago(10), "issue": "G-1"},
        {"id": "g2", "type": "station.entered", "ts": ago(9), "issue": "G-1", "station": "research"},
        {"id": "g3", "type": "station.completed", "ts": ago(8), "issue": "G-1", "station": "research",
         "outcome": "rework", "provider": "globexai"},
        {"id": "g4", "type": "issue.completed", "ts": ago(5), "issue": "G-1"},
        {"id": "g5", "type": "handoff.decided", "ts": ago(4), "issue": "G-1", "decision": "rejected"},
        {"id": "g6", "type": "deployment", "ts": ago(3), "version": "g", "environment": "production",
         "status": "failed"},
        {"id": "g7", "type": "incident.opened", "ts": ago(2), "incidentId": "G-INC"},
    ]


def call(rid: str, org: str, hours: float, cost: int, provider: str, *, station: str | None = None,
         issue: str | None = None, status: str = "ok", ms: int = 1000) -> CallRecord:
    return CallRecord(request_id=rid, started_at=ago(hours), ended_at=ago(hours) + timedelta(milliseconds=ms),
                      status=status, http_status=200, org=org, endpoint="/v1/chat/completions", provider=provider,
                      model=f"{provider}-m", station=station, issue=issue, input_tokens=10, output_tokens=5,
                      cost_nano=cost, catalog_version="v1")


def all_calls() -> list[CallRecord]:
    return [
        call("c1", "acme", 110, 2_000_000, "openai", station="development", issue="I-1", ms=1500),
        call("c2", "acme", 90, 3_000_000, "anthropic", station="research", issue="I-2", ms=2500),
        call("c3", "acme", 70, 1_000_000, "google", status="error", ms=500),
        call("c4", "acme", 26, 4_000_000, "google", station="qa", issue="I-3"),
        call("c5", "acme", 15 * DAY, 5_000_000, "openai", station="development", issue="I-5"),
        call("c6", "acme", 50 * DAY, 7_000_000, "anthropic", station="security"),
        call("c7", "acme", 20, 9_000_000, "openai", status="refused"),
        call("c8", "acme", 100 * DAY, 11_000_000, "openai", station="research", issue="I-6"),
        call("c9", "acme", 5, 500_000, "google", status="cancelled", ms=300),
        call("g-c1", "globex", 6, 999_000_000, "globexai", station="research", issue="G-1", ms=9000),
    ]


def wire(event: dict[str, Any], i: int) -> dict[str, Any]:
    """The event as JSON, its ts in one of several UTC offsets (all must mean the same instant)."""
    offset = timezone(timedelta(hours=(0, 5, -7, 9)[i % 4], minutes=(0, 30, 0, 0)[i % 4]))
    return {**event, "ts": event["ts"].astimezone(offset).isoformat()}


async def _insert(url: str, records: list[CallRecord]) -> None:
    store = await Store.open(StoreConfig(url=url))
    try:
        await store.insert_new_calls(records)
    finally:
        await store.close()


def populate(proxy: Proxy) -> None:
    for key, events in ((ADMIN, acme_events()), (OTHER, globex_events())):
        with proxy.client(key) as c:
            r = c.post("/api/factory/events", json={"events": [wire(e, i) for i, e in enumerate(events)]})
        assert r.status_code == 200 and r.json() == {"accepted": len(events), "duplicates": 0}, r.text
    asyncio.run(_insert(proxy.settings.store.url, all_calls()))


def get(proxy: Proxy, key: str = ADMIN, headers: dict[str, str] | None = None, **params: str) -> Any:
    with proxy.client(key) as c:
        return c.get("/api/factory/metrics", params=params, headers=headers)


def metrics(proxy: Proxy, metric_type: str, time_range: str, key: str = ADMIN, **headers: str) -> Any:
    r = get(proxy, key, headers, metricType=metric_type, timeRange=time_range)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"metrics"}
    return r.json()["metrics"]


# --- the reference: docs/metrics.md, computed from the raw rows ------------------------------------------

def half_up(x: float) -> int:
    return math.floor(x + 0.5)


def med(values: list[float]) -> float:
    s = sorted(values)
    if not s:
        return 0.0
    return float(s[len(s) // 2]) if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def pct(a: float, b: float) -> float:
    return round(100 * a / b, 1) if b else 0.0


def ms(later: datetime, earlier: datetime) -> float:
    return (later - earlier) / timedelta(milliseconds=1)


def usd(nano: float) -> float:
    return round(nano / 1e9, 6)


def span(later: datetime, earlier: datetime) -> str:
    m = ms(later, earlier)
    return text_duration(m)


def text_duration(m: float) -> str:
    if half_up(m / 1000) < 60:
        return f"{half_up(m / 1000)}s"
    if half_up(m / 60_000) < 60:
        return f"{half_up(m / 60_000)}m"
    if half_up(m / 360_000) < 240:
        return f"{half_up(m / 360_000) / 10:.1f}h"
    return f"{half_up(m / 8_640_000) / 10:.1f}d"


@dataclass
class Spend:
    ts: datetime
    cost: int
    provider: str = ""
    station: str = ""
    issue: str | None = None
    calls: int = 0
    errors: int = 0
    duration: int = 0


@dataclass
class World:
    """The raw rows of one org, and the window being checked."""

    events: list[dict[str, Any]]
    calls: list[CallRecord]
    days: int
    start: datetime = field(init=False)
    end: datetime = field(init=False)

    def __post_init__(self) -> None:
        self.end = datetime.now(UTC)
        self.start = datetime.combine(self.end.date() - timedelta(days=self.days - 1), time.min, tzinfo=UTC)

    def inw(self, ts: datetime) -> bool:
        return self.start <= ts < self.end

    def of(self, *types: str, window: bool = False) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] in types and (not window or self.inw(e["ts"]))]

    def dates(self) -> list[date]:
        return [self.start.date() + timedelta(days=i) for i in range(self.days)]

    def spend(self) -> list[Spend]:
        out = [Spend(c.started_at, c.cost_nano, c.provider, c.station or "", c.issue, 1,
                     int(c.status in ("error", "cancelled")), c.duration_ms)
               for c in self.calls if c.status != "refused"]
        for e in self.of("session.completed", "execution"):
            compute = math.ceil(e["durationMs"] * RATE_NANO_PER_HOUR / 3_600_000)
            if e["type"] == "execution":
                cost = round(e["costUsd"] * 1e9) if "costUsd" in e else compute
                out.append(Spend(e["ts"], cost, "", e.get("station", ""), e.get("issue")))
                continue
            unmetered = e.get("metered", True) is False
            out.append(Spend(e["ts"], compute + (round(e["costUsd"] * 1e9) if unmetered else 0), e["provider"],
                             e.get("station", ""), e.get("issue"), int(unmetered), 0,
                             e["durationMs"] if unmetered else 0))
        return [s for s in out if self.inw(s.ts)]

    def daily(self) -> list[int]:
        by_day: dict[date, int] = defaultdict(int)
        for s in self.spend():
            by_day[s.ts.date()] += s.cost
        return [by_day[d] for d in self.dates()]

    # flow
    def done(self) -> dict[str, datetime]:
        found: dict[str, datetime] = {}
        for e in self.of("issue.completed", window=True):
            found[e["issue"]] = max(found.get(e["issue"], e["ts"]), e["ts"])
        return found

    def stations(self) -> list[str]:
        seen = {e["station"] for e in self.of("station.entered", "station.completed", window=True)}
        seen |= {s for s, n in self.wip().items() if n}
        return sorted(seen, key=lambda s: (SDLC.index(s) if s in SDLC else len(SDLC), s))

    def wip(self) -> Counter[str]:
        last: dict[tuple[str, str], datetime] = {}
        for e in self.of("station.entered"):
            key = (e["issue"], e["station"])
            last[key] = max(last.get(key, e["ts"]), e["ts"])
        out: Counter[str] = Counter()
        for (issue, station), t in last.items():
            closed = any(c["issue"] == issue and c["station"] == station and c["ts"] >= t
                         for c in self.of("station.completed"))
            finished = any(c["issue"] == issue and c["ts"] >= t for c in self.of("issue.completed"))
            if not closed and not finished:
                out[station] += 1
        return out

    def stays(self, station: str) -> list[float]:
        out = []
        for c in self.of("station.completed", window=True):
            if c["station"] != station:
                continue
            entries = [e["ts"] for e in self.of("station.entered")
                       if e["issue"] == c["issue"] and e["station"] == station and e["ts"] <= c["ts"]]
            if entries:
                out.append(ms(c["ts"], max(entries)))
        return out

    def passes(self, station: str) -> tuple[int, int]:
        first_pass_at: dict[str, datetime] = {}
        for c in self.of("station.completed", window=True):
            if c["station"] == station and c["outcome"] == "passed":
                first_pass_at[c["issue"]] = min(first_pass_at.get(c["issue"], c["ts"]), c["ts"])
        clean = sum(1 for issue, t in first_pass_at.items()
                    if not any(r["issue"] == issue and r["station"] == station and r["outcome"] == "rework"
                               and r["ts"] < t for r in self.of("station.completed")))
        return len(first_pass_at), clean

    # the seven payloads
    def aggregate(self) -> dict[str, Any]:
        done = self.done()
        cycles = []
        for issue, t in done.items():
            created = [e["ts"] for e in self.of("issue.created") if e["issue"] == issue]
            if created and min(created) <= t:
                cycles.append(ms(t, min(created)))
        clean = sum(1 for issue, t in done.items()
                    if not any(r["issue"] == issue and r["outcome"] == "rework" and r["ts"] < t
                               for r in self.of("station.completed")))
        daily = self.daily()
        return {"totalIssues": len(done), "totalCost": usd(sum(daily)), "avgCycleTimeMs": half_up(med(cycles)),
                "avgYield": pct(clean, len(done)), "throughputPerDay": round(len(done) / self.days, 2),
                "costTrend": [usd(d) for d in daily]}

    def station(self) -> list[dict[str, Any]]:
        wip = self.wip()
        return [{"station": s, "wipCount": wip[s], "throughput": self.passes(s)[0],
                 "cycleTimeMs": half_up(med(self.stays(s))), "yield": pct(self.passes(s)[1], self.passes(s)[0])}
                for s in self.stations()]

    def cost(self) -> dict[str, Any]:
        per_issue: dict[str, int] = defaultdict(int)
        per_station: dict[str, int] = defaultdict(int)
        for s in self.spend():
            if s.issue:
                per_issue[s.issue] += s.cost
            if s.station:
                per_station[s.station] += s.cost
        actors = Counter(e.get("actor", "agent") for e in self.events if self.inw(e["ts"]))
        acted = actors["human"] + actors["agent"]
        return {"avgCostPerIssue": usd(sum(per_issue.values()) / len(per_issue)) if per_issue else 0.0,
                "costPerStation": [{"station": k, "cost": usd(v)}
                                   for k, v in sorted(per_station.items(), key=lambda kv: (-kv[1], kv[0]))],
                "costTrend": [{"date": d.isoformat(), "cost": usd(c)} for d, c in zip(self.dates(), self.daily(),
                                                                                       strict=True)],
                "humanTimePct": pct(actors["human"], acted), "agentTimePct": pct(actors["agent"], acted)}

    def provider(self) -> list[dict[str, Any]]:
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for s in self.spend():
            if s.provider:
                for i, v in enumerate((s.cost, s.calls, s.errors, s.duration)):
                    totals[s.provider][i] += v
        rows = []
        for p, (cost, runs, errors, duration) in totals.items():
            outcomes = Counter(c["outcome"] for c in self.of("station.completed", window=True)
                               if c.get("provider") == p)
            judged = outcomes["passed"] + outcomes["rework"]
            success = pct(outcomes["passed"], judged) if judged else pct(runs - errors, runs)
            avg = cost / runs / 1e9 if runs else 0.0
            rows.append({"provider": p, "successRate": success, "avgCost": round(avg, 6),
                         "avgDurationMs": half_up(duration / runs) if runs else 0, "totalRuns": runs,
                         "costEfficiency": round(success / avg, 2) if avg else 0.0})
        return sorted(rows, key=lambda r: (-r["totalRuns"], r["provider"]))

    def handoff(self) -> dict[str, Any]:
        decided = self.of("handoff.decided", window=True)
        latencies = []
        for d in decided:
            requests = [r["ts"] for r in self.of("handoff.requested") if r["ts"] <= d["ts"] and (
                r.get("handoffId") == d["handoffId"] if "handoffId" in d else
                r["issue"] == d["issue"] and ("station" not in d or r.get("station") == d["station"]))]
            if requests:
                latencies.append(ms(d["ts"], max(requests)))
        n = len(decided)
        accepted = sum(d["decision"] == "approved" for d in decided) / n if n else 0.0
        overridden = sum(bool(d.get("overridden")) for d in decided) / n if n else 0.0
        timeline = Counter(d["ts"].astimezone(UTC).date() for d in decided if d.get("overridden"))
        return {"avgReviewLatencyMs": half_up(sum(latencies) / len(latencies)) if latencies else 0,
                "acceptanceRate": round(accepted, 4), "overrideFrequency": round(overridden, 4),
                "handoffFrictionScore": round((1 - accepted) * (1 - overridden), 4) if n else 0.0,
                "overrideTimeline": [{"date": d.isoformat(), "count": c} for d, c in sorted(timeline.items())]}

    def phase(self) -> dict[str, Any]:
        per_station: dict[str, int] = defaultdict(int)
        for s in self.spend():
            per_station[s.station] += s.cost
        phases = []
        for st in self.stations():
            worked = {e["issue"] for e in self.of("station.entered", "station.completed", window=True)
                      if e["station"] == st}
            stays = self.stays(st)
            phases.append({"phase": st, "avgCycleTimeMs": half_up(sum(stays) / len(stays)) if stays else 0,
                           "avgCostUsd": usd(per_station[st] / len(worked)) if worked else 0.0,
                           "throughput": self.passes(st)[0]})
        completed = len(self.done())
        reworks = sum(1 for c in self.of("station.completed", window=True) if c["outcome"] == "rework")
        asked = Counter(r.get("strategy", "human_review") for r in self.of("handoff.requested", window=True))
        total = sum(asked.values())
        return {"phases": phases,
                "reworkLoops": {"avgCyclesPerIssue": round((completed + reworks) / completed, 2) if completed else 0.0,
                                "totalReworks": reworks, "totalCompleted": completed},
                "escalationDistribution": [{"strategy": k, "count": v, "percentage": pct(v, total)}
                                           for k, v in sorted(asked.items())]}

    def devops(self) -> dict[str, Any]:
        deps = sorted(self.of("deployment", window=True), key=lambda e: (e["ts"], e["id"]), reverse=True)
        ok = [d for d in deps if d["status"] == "success"]
        failed = [d for d in deps if d["status"] == "failed" or d.get("isRollback", False)]
        latest: dict[str, dict[str, Any]] = {}
        for d in deps:
            latest.setdefault(d["environment"], d)
        leads = []
        for d in ok:
            runs = [p["ts"] for p in self.of("pipeline.run") if d.get("commit") and p.get("commit") == d["commit"]]
            if runs and min(runs) <= d["ts"]:
                leads.append(ms(d["ts"], min(runs)))
        incidents: dict[str, dict[str, Any]] = {}
        for e in self.of("incident.opened"):
            incidents.setdefault(e["incidentId"], {"opened": e, "resolved": None})
        for e in sorted(self.of("incident.resolved"), key=lambda e: e["ts"], reverse=True):
            incidents[e["incidentId"]]["resolved"] = e["ts"]
        down, reach = 0.0, self.start  # open time, overlaps once: walk the spans by start
        for begin, finish in sorted((max(i["opened"]["ts"], self.start), min(i["resolved"] or self.end, self.end))
                                    for i in incidents.values()):
            if finish > max(begin, reach):
                down += ms(finish, max(begin, reach))
                reach = finish
        resolved_in = [i for i in incidents.values() if i["resolved"] and self.inw(i["resolved"])]
        listed = [i for i in incidents.values() if i["resolved"] is None or self.inw(i["resolved"])]
        listed.sort(key=lambda i: (i["opened"]["ts"], i["opened"]["incidentId"]), reverse=True)
        runs = sorted(self.of("pipeline.run", window=True), key=lambda e: (e["ts"], e["id"]), reverse=True)[:20]
        return {
            "infra": {
                "uptimePct": round(100 * (1 - down / ms(self.end, self.start)), 2),
                "activeDeployments": sum(1 for d in latest.values() if d["status"] == "success"),
                "openIncidents": sum(1 for i in incidents.values() if i["resolved"] is None),
                "deploymentFrequency": f"{len(ok) / self.days:.1f}/day",
                "changeFailureRate": f"{pct(len(failed), len(deps)):.1f}%",
                "leadTimeForChanges": text_duration(med(leads)),
                "meanTimeToRecovery": text_duration(sum(ms(i["resolved"], i["opened"]["ts"]) for i in resolved_in)
                                                    / len(resolved_in) if resolved_in else 0),
            },
            "pipelines": [{"name": p["name"], "status": p["status"], "duration": text_duration(p["durationMs"]),
                           "trigger": p.get("trigger", ""), "branch": p.get("branch", ""), "commit": p["commit"],
                           "startedAt": zulu(p["ts"])} for p in runs],
            "deployments": [{"id": d["id"], "version": d["version"], "environment": d["environment"],
                             "status": d["status"], "deployedAt": zulu(d["ts"]), "deployedBy": d.get("deployedBy", ""),
                             "isRollback": d.get("isRollback", False)} for d in deps[:20]],
            "incidents": [{"id": i["opened"]["incidentId"], "title": i["opened"].get("title", ""),
                           "severity": i["opened"].get("severity", ""),
                           "status": "open" if i["resolved"] is None else "resolved",
                           "openedAt": zulu(i["opened"]["ts"]),
                           "resolvedAt": None if i["resolved"] is None else zulu(i["resolved"])} for i in listed],
        }

    def payload(self, metric_type: str) -> Any:
        return getattr(self, metric_type)()


def zulu(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def same(got: Any, want: Any, path: str = "metrics") -> None:
    """Equal, and of the same JSON type all the way down (an int field is an int, a float a float)."""
    if path.endswith("uptimePct"):  # the window ends at the server's "now", a moment after the test's
        assert isinstance(got, float) and abs(got - want) <= 0.01, (path, got, want)
        return
    assert type(got) is type(want), (path, got, want)
    if isinstance(want, dict):
        assert list(got) == list(want), (path, list(got), list(want))
        for k in want:
            same(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), (path, got, want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            same(g, w, f"{path}[{i}]")
    else:
        assert got == want, (path, got, want)


def no_nulls(value: Any, path: str = "metrics") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k != "resolvedAt":
                no_nulls(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            no_nulls(v, f"{path}[{i}]")
    else:
        assert value is not None, path


# --- the tests -------------------------------------------------------------------------------------------

@pytest.fixture
def populated(any_store_proxy: Proxy) -> Iterator[Proxy]:
    populate(any_store_proxy)
    yield any_store_proxy


def acme(days: int) -> World:
    return World(acme_events(), [c for c in all_calls() if c.org == "acme"], days)


def test_every_metric_matches_the_figures_computed_from_the_raw_rows(populated: Proxy) -> None:
    for time_range, days in RANGES.items():
        for metric_type in METRIC_TYPES:
            got = metrics(populated, metric_type, time_range, VIEWER)
            same(got, acme(days).payload(metric_type), f"{metric_type}/{time_range}")
            no_nulls(got)


def test_the_data_crosses_each_definitions_edge(populated: Proxy) -> None:
    """Spot checks that the reference above is not vacuous: the figures the data was built to produce."""
    week = {m: metrics(populated, m, "7d") for m in METRIC_TYPES}
    agg = week["aggregate"]
    assert agg["totalIssues"] == 4 and agg["avgYield"] == 75.0  # I-1 had rework; I-3, I-4, I-7 did not
    assert agg["avgCycleTimeMs"] == half_up(med([24 * 3_600_000, (40 * 24 - 48) * 3_600_000]))
    assert len(agg["costTrend"]) == 7 and len(metrics(populated, "aggregate", "90d")["costTrend"]) == 90
    stations = {s["station"]: s for s in week["station"]}
    assert list(stations) == ["research", "development", "security", "qa", "deploy", "alpha", "zeta"]
    assert stations["research"]["wipCount"] == 1  # I-6, entered 100 days ago
    assert stations["development"]["wipCount"] == 1  # I-2 (I-7 completed)
    assert stations["security"] == {"station": "security", "wipCount": 0, "throughput": 1, "cycleTimeMs": 0,
                                    "yield": 100.0}
    assert stations["qa"]["throughput"] == 3 and stations["qa"]["yield"] == 66.7  # I-10 reworked before the window
    assert stations["deploy"]["cycleTimeMs"] == 0 and stations["deploy"]["throughput"] == 1
    handoff = week["handoff"]
    assert handoff["avgReviewLatencyMs"] == 5_400_000  # 1 h by handoffId, 2 h by issue and station
    assert (handoff["acceptanceRate"], handoff["overrideFrequency"], handoff["handoffFrictionScore"]) == (
        0.6667, 0.6667, 0.1111)
    infra = week["devops"]["infra"]
    assert infra["leadTimeForChanges"] == "3.5h" and infra["meanTimeToRecovery"] == "15m"
    assert (infra["deploymentFrequency"], infra["changeFailureRate"]) == ("0.4/day", "50.0%")
    assert infra["activeDeployments"] == 2 and infra["openIncidents"] == 1
    assert [p["duration"] for p in week["devops"]["pipelines"]] == ["1.5h", "12m", "45s"]
    assert [i["status"] for i in week["devops"]["incidents"]] == ["open", "resolved"]
    providers = {p["provider"]: p for p in week["provider"]}
    assert providers["anthropic"]["successRate"] == 66.7  # 2 passed, 1 rework naming it
    assert providers["google"]["successRate"] == 33.3  # no station events: 1 of 3 calls did not fail
    assert week["cost"]["costPerStation"][0]["station"] == "development"  # the unmetered session
    assert week["phase"]["reworkLoops"] == {"avgCyclesPerIssue": 1.25, "totalReworks": 1, "totalCompleted": 4}


def test_orgs_never_see_each_others_numbers(populated: Proxy) -> None:
    proxy = populated
    for metric_type in METRIC_TYPES:
        globex = World(globex_events(), [c for c in all_calls() if c.org == "globex"], 30)
        same(metrics(proxy, metric_type, "30d", OTHER), globex.payload(metric_type), f"globex {metric_type}")
        mine = metrics(proxy, metric_type, "30d", ADMIN)
        same(mine, acme(30).payload(metric_type), f"acme {metric_type}")
        # An org-"*" admin names the org; the numbers are that org's alone.
        same(metrics(proxy, metric_type, "30d", ROOT, **{"X-Org-ID": "acme"}), acme(30).payload(metric_type))
        same(metrics(proxy, metric_type, "30d", ROOT, **{"X-Org-ID": "globex"}), globex.payload(metric_type))
    for key in (ADMIN, VIEWER, OTHER):  # any other key naming another org is refused
        other = "acme" if key == OTHER else "globex"
        assert_seed_error(get(proxy, key, {"X-Org-ID": other}), 403, "FORBIDDEN")
    everyone = metrics(proxy, "aggregate", "30d", ROOT)
    assert everyone["totalIssues"] == acme(30).aggregate()["totalIssues"] + 1
    assert everyone["totalCost"] == usd(sum(acme(30).daily()) + 999_000_000)


def test_an_all_orgs_admin_without_x_org_id_sees_every_org_summed(populated: Proxy) -> None:
    """The two orgs' issue, handoff and incident ids do not collide, so the sum is one World of both."""
    for metric_type in METRIC_TYPES:
        both = World(acme_events() + globex_events(), all_calls(), 30)
        same(metrics(populated, metric_type, "30d", ROOT), both.payload(metric_type), f"all orgs {metric_type}")


def test_defaults_errors_and_roles(proxy: Proxy) -> None:
    populate(proxy)
    same(get(proxy).json()["metrics"], acme(30).aggregate())  # metricType=aggregate, timeRange=30d
    same(get(proxy, metricType="station").json()["metrics"], acme(30).station())
    same(get(proxy, timeRange="7d").json()["metrics"], acme(7).aggregate())
    msg = "Invalid metricType. Must be one of: aggregate, station, cost, provider, handoff, phase, devops"
    for bad in ("nope", "", "Aggregate"):
        err = assert_seed_error(get(proxy, metricType=bad), 400, "INVALID_METRIC_TYPE")
        assert err["message"] == msg
    for bad in ("1d", "", "30D", "365d"):
        err = assert_seed_error(get(proxy, timeRange=bad), 400, "INVALID_TIME_RANGE")
        assert err["message"] == "Invalid timeRange. Must be one of: 7d, 30d, 90d"
    assert_seed_error(get(proxy, metricType="x", timeRange="x"), 400, "INVALID_METRIC_TYPE")
    assert_seed_error(get(proxy, AGENT, metricType="cost"), 403, "FORBIDDEN")  # agent keys do not read
    assert_seed_error(get(proxy, "sk-unknown", metricType="cost"), 401, "UNAUTHORIZED")
    with proxy.client() as c:
        assert_seed_error(c.get("/api/factory/metrics", headers={"authorization": ""}), 401, "UNAUTHORIZED")


def test_station_figures_do_not_depend_on_arrival_order(any_store_proxy: Proxy) -> None:
    """The station and phase figures come from visits paired at ingest: events posted newest first (each
    completion before its entry), in overlapping batches (duplicates), give the reference's figures, and so
    does a rebuild of the visits afterwards."""
    proxy = any_store_proxy
    events = [wire(e, i) for i, e in enumerate(acme_events())][::-1]
    with proxy.client(ADMIN) as c:
        for i in range(0, len(events), 7):
            batch = events[max(0, i - 3): i + 7]
            r = c.post("/api/factory/events", json={"events": batch})
            assert r.status_code == 200 and r.json()["duplicates"] == min(i, 3), r.text
    asyncio.run(_insert(proxy.settings.store.url, [c for c in all_calls() if c.org == "acme"]))
    for rebuilt in (False, True):
        if rebuilt:
            with proxy.client(ADMIN) as c:
                assert c.post("/api/factory/aggregate").status_code == 200
        for time_range, days in RANGES.items():
            for metric_type in ("station", "phase", "aggregate"):
                same(metrics(proxy, metric_type, time_range), acme(days).payload(metric_type),
                     f"{metric_type}/{time_range} rebuilt={rebuilt}")


def test_an_org_without_data_gets_zeros_and_empty_lists(any_store_proxy: Proxy) -> None:
    empty: dict[str, Any] = {
        "aggregate": {"totalIssues": 0, "totalCost": 0.0, "avgCycleTimeMs": 0, "avgYield": 0.0,
                      "throughputPerDay": 0.0, "costTrend": [0.0] * 7},
        "station": [], "provider": [],
        "cost": {"avgCostPerIssue": 0.0, "costPerStation": [],
                 "costTrend": [{"date": d.isoformat(), "cost": 0.0} for d in acme(7).dates()],
                 "humanTimePct": 0.0, "agentTimePct": 0.0},
        "handoff": {"avgReviewLatencyMs": 0, "acceptanceRate": 0.0, "overrideFrequency": 0.0,
                    "handoffFrictionScore": 0.0, "overrideTimeline": []},
        "phase": {"phases": [], "reworkLoops": {"avgCyclesPerIssue": 0.0, "totalReworks": 0, "totalCompleted": 0},
                  "escalationDistribution": []},
        "devops": {"infra": {"uptimePct": 100.0, "activeDeployments": 0, "openIncidents": 0,
                             "deploymentFrequency": "0.0/day", "changeFailureRate": "0.0%",
                             "leadTimeForChanges": "0s", "meanTimeToRecovery": "0s"},
                   "pipelines": [], "deployments": [], "incidents": []},
    }
    for metric_type, want in empty.items():
        same(metrics(any_store_proxy, metric_type, "7d"), want, metric_type)
