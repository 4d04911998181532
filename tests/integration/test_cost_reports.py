"""The cost reports on SQLite and PostgreSQL: `GET /api/v1/admin/metrics/cost-optimization` and the AI cost
API (`/api/ai-cost/*`), their budgets (runtime limits included), roles and tenant isolation.

Data goes in through the store's own insert (calls with chosen times over past days and months) and
`POST /api/factory/events`; every expected figure is computed here from the `Spend` list the test built,
never by the code under test."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.error_shapes import assert_seed_error
from tests.fakes.upstream import FakeUpstream
from tests.harness import ADMIN, AGENT, OTHER, ROOT, VIEWER, Proxy, make_settings
from tests.spend_data import Spend, SpendData, insert

pytestmark = pytest.mark.integration
OPT = "/api/v1/admin/metrics/cost-optimization"
AI = "/api/ai-cost"
USD_TOL = 2e-6
BUDGETS = [
    {"name": "acme-month", "scope": {"org": "acme"}, "window": "month", "limit_usd": 1.0,
     "alerts": [{"at_pct": 90, "action": "warn"}, {"at_pct": 75, "action": "warn"}]},
    {"name": "per-org", "scope": {"org": "*"}, "window": "month", "limit_usd": 0.2, "alerts": []},
    {"name": "acme-day", "scope": {"org": "acme"}, "window": "day", "limit_usd": 0.01},
    {"name": "web-month", "scope": {"org": "acme", "project": "web"}, "window": "month", "limit_usd": 0.5},
    {"name": "web-day", "scope": {"org": "acme", "project": "web"}, "window": "day", "limit_usd": 0.05},
    {"name": "globex-web", "scope": {"org": "globex", "project": "web"}, "window": "month", "limit_usd": 0.3},
    {"name": "api-any-org", "scope": {"org": "*", "project": "api"}, "window": "month", "limit_usd": 0.4},
]


# --- what the reports should count ------------------------------------------------------------------------

class Data(SpendData):
    """SpendData plus the events only the cost reports need."""

    def session(self, ts: datetime, cost_usd: float, *, agent: str, provider: str, project: str,
                inp: int, out: int, run: str = "") -> None:
        """An unmetered session without duration: exactly its costUsd, tokens, one job."""
        self.seq += 1
        event = {"id": f"s{self.seq}", "type": "session.completed", "ts": ts.isoformat(), "project": project,
                 "agent": agent, "provider": provider, "model": "claude-x", "metered": False, "costUsd": cost_usd,
                 "inputTokens": inp, "outputTokens": out, "durationMs": 0}
        if run:
            event["run"] = run
        self.events["acme"].append(event)
        self.spends.append(Spend(ts, "acme", project, agent, provider, round(cost_usd * 1e9), 1, 0, inp, out, run))

    def execution(self, ts: datetime, cost_usd: float, *, agent: str, project: str) -> None:
        """Compute work: cost, no provider, no job."""
        self.seq += 1
        self.events["acme"].append({"id": f"x{self.seq}", "type": "execution", "kind": "test_run",
                                    "ts": ts.isoformat(), "agent": agent, "project": project, "durationMs": 1000,
                                    "costUsd": cost_usd})
        self.spends.append(Spend(ts, "acme", project, agent, "", round(cost_usd * 1e9), calls=0))

    def pipeline(self, ts: datetime, run: str, status: str, trigger: str) -> None:
        self.seq += 1
        self.events["acme"].append({"id": f"p{self.seq}", "type": "pipeline.run", "ts": ts.isoformat(),
                                    "run": run, "project": "web", "name": "ci", "status": status,
                                    "trigger": trigger, "durationMs": 60_000})


def midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def first_of_month(day: date, back: int = 0) -> date:
    index = day.year * 12 + day.month - 1 - back
    return date(index // 12, index % 12 + 1, 1)


def build(now: datetime) -> Data:
    """~40 days of acme and globex spend, runs, retries, errors, sessions, executions and pipeline events."""
    d = Data(now)
    today = now.date()
    today_slots = iter(midnight(today) + (now - midnight(today)) * (k + 1) / 60 for k in range(58))
    for back in range(1, 41):
        day = today - timedelta(days=back)
        noon = midnight(day) + timedelta(hours=12)
        run = f"r-d{back:02d}"
        d.call(noon, (1000 + 400 * (40 - back)) * 1000, run=run, out=100 + back)  # coder: rising
        if day.weekday() == 0:
            d.call(noon + timedelta(minutes=5), 4_000_000, run=run, status="error")  # Mondays cost more
        d.call(noon + timedelta(minutes=1), (500 + 100 * back) * 1000, project="api", agent="planner",
               provider="anthropic", run=run, out=50)  # planner: falling
        if back % 5 == 0:
            first = d.records[-1].request_id
            d.call(noon + timedelta(minutes=2), 300_000, project="api", agent="planner", provider="anthropic",
                   run=run, retry_of=first, out=10)
        d.call(noon + timedelta(minutes=3), 700_000, project="", agent="", out=0)  # untagged, steady
        d.call(noon + timedelta(minutes=4), 9_000_000, org="globex", agent="coder", run=run)
    # A run across the month boundary: its first part last month, the rest today.
    last_month_end = first_of_month(today) - timedelta(days=1)
    d.call(midnight(last_month_end) + timedelta(hours=20), 2_500_000, run="r-span")
    # Today: a costly run with a pipeline event and a retry, a failed run, a plain costly run, small runs.
    for i in range(22):
        d.call(next(today_slots), 10_000 + i * 1000, run=f"r-t{i:02d}", agent="tester", out=5)
    slot = next(today_slots)
    d.pipeline(slot - timedelta(minutes=1), "r-today", "success", "push")
    first = d.call(slot, 30_000_000, run="r-today", out=300)
    d.call(next(today_slots), 3_000_000, run="r-today", retry_of=first, out=200)
    d.call(next(today_slots), 1_500_000, run="r-today", agent="planner", project="web", provider="anthropic")
    d.call(next(today_slots), 40_000_000, run="r-err", status="error")
    d.call(next(today_slots), 35_000_000, run="r-big")
    d.session(next(today_slots), 0.002, agent="reviewer", provider="anthropic", project="web", inp=300, out=40,
              run="r-t00")
    d.execution(next(today_slots), 0.003, agent="coder", project="web")
    d.call(next(today_slots), 700_000, project="", agent="", out=0)
    d.call(next(today_slots), 800_000, project="api", agent="planner", provider="anthropic",
           run="r-span")  # the boundary run's today part, its latest activity
    d.call(next(today_slots), 9_999_000, status="refused")  # never counts, nor lists
    for back in range(2, 7):  # one call mid-month in each of the five months before last, and one older
        day = first_of_month(today, back) + timedelta(days=14)
        d.call(midnight(day) + timedelta(hours=9), 1_000_000 * back, out=7 * back)
    return d


@pytest.fixture
def reports(upstream: FakeUpstream, tmp_path: Path, closed_port: int, store_url: str) -> Iterator[tuple[Proxy, Data]]:
    upstream.clear()
    with Proxy(make_settings(upstream, tmp_path, closed_port, store_url=store_url, budgets=BUDGETS)) as proxy:
        data = build(datetime.now(UTC))
        insert(store_url, data, proxy)
        yield proxy, data


def get(proxy: Proxy, path: str, key: str = VIEWER, headers: dict[str, str] | None = None,
        **params: Any) -> httpx.Response:
    with proxy.client(key) as c:
        return c.get(path, params=params, headers=headers)


def ok(proxy: Proxy, path: str, key: str = VIEWER, headers: dict[str, str] | None = None, **params: Any) -> Any:
    r = get(proxy, path, key, headers, **params)
    assert r.status_code == 200, r.text
    return r.json()


def usd(nano: float) -> float:
    return nano / 1e9


def close(got: float | None, want: float, tol: float = USD_TOL) -> None:
    assert got is not None and abs(got - want) <= tol, (got, want)


def same_day(*moments: datetime) -> None:
    if len({m.date() for m in moments}) > 1:
        pytest.skip("the UTC day changed while the test ran")


def sums(spends: Iterable[Spend]) -> dict[str, int]:
    spends = list(spends)
    return {"cost": sum(s.cost for s in spends), "calls": sum(s.calls for s in spends),
            "errors": sum(s.errors for s in spends), "inp": sum(s.inp for s in spends),
            "out": sum(s.out for s in spends), "retry": sum(s.retry for s in spends)}


def group(spends: Iterable[Spend], key: str) -> dict[str, list[Spend]]:
    found: dict[str, list[Spend]] = {}
    for s in spends:
        found.setdefault(getattr(s, key), []).append(s)
    return found


# --- cost optimisation ------------------------------------------------------------------------------------

def daily_costs(data: Data, org: str = "acme") -> dict[date, int]:
    found: dict[date, int] = {}
    for s in data.of(org):
        found[s.ts.date()] = found.get(s.ts.date(), 0) + s.cost
    return found


def expected_monthly(daily: dict[date, int], today: date, at: datetime) -> float:
    """The documented method, written out: month-to-date + (unelapsed part of today + each later day of the
    month) x (30-day least-squares line at that day x weekday mean / overall mean), never below 0."""
    first = today - timedelta(days=30)
    days = [first + timedelta(days=i) for i in range(30)]
    values = [float(daily.get(day, 0)) for day in days]
    slope, intercept = statistics.linear_regression(list(range(30)), values)
    mean = sum(values) / 30
    factor = {w: (statistics.mean(v for day, v in zip(days, values, strict=True) if day.weekday() == w) / mean
                  if mean else 1.0) for w in range(7)}

    def forecast(day: date) -> float:
        return max(0.0, intercept + slope * (day - first).days) * factor[day.weekday()]

    elapsed = max((at - midnight(today)).total_seconds(), 1) / 86400
    total = sum(v for day, v in daily.items() if day >= today.replace(day=1) and day <= today)
    total += (1 - elapsed) * forecast(today)
    day = today + timedelta(days=1)
    while day.month == today.month:
        total += forecast(day)
        day += timedelta(days=1)
    return usd(total)


def expected_trend(spends: Sequence[Spend], today: date) -> str:
    per_day = {today - timedelta(days=14 - i): 0.0 for i in range(14)}
    for s in spends:
        if s.ts.date() in per_day:
            per_day[s.ts.date()] += s.cost
    values = list(per_day.values())
    mean = statistics.mean(values)
    if mean == 0:
        return "stable"
    change = statistics.linear_regression(list(range(14)), values).slope * 7 / mean
    return "increasing" if change > 0.1 else "decreasing" if change < -0.1 else "stable"


def test_cost_optimization_figures(reports: tuple[Proxy, Data]) -> None:
    proxy, data = reports
    before = datetime.now(UTC)
    body = ok(proxy, OPT)
    after = datetime.now(UTC)
    same_day(data.now, before, after)
    today, first = before.date(), before.date().replace(day=1)
    month = data.of(since=first)
    daily = daily_costs(data)
    assert set(body) == {"total_cost_today", "total_cost_month", "projected_monthly", "by_provider", "by_agent",
                         "budget", "today_vs_yesterday", "projections", "pipeline_runs"}
    close(body["total_cost_today"], usd(daily[today]))
    close(body["total_cost_month"], usd(sums(month)["cost"]))
    providers = {p or "unattributed": usd(sums(s)["cost"]) for p, s in group(month, "provider").items()}
    assert body["by_provider"].keys() == providers.keys()
    for name, cost in providers.items():
        close(body["by_provider"][name], cost)
    assert "unattributed" in providers and "anthropic" in providers  # the execution; sessions keep theirs

    agents = group(month, "agent")
    assert [a["agent_id"] for a in body["by_agent"]] == [
        a or "unattributed" for a in sorted(agents, key=lambda a: (-sums(agents[a])["cost"], a))]
    for entry in body["by_agent"]:
        mine = agents["" if entry["agent_id"] == "unattributed" else entry["agent_id"]]
        total = sums(mine)
        close(entry["cost"], usd(total["cost"]))
        assert entry["executions"] == total["calls"]
        if total["calls"]:
            close(entry["avg_cost_per_run"], usd(total["cost"]) / total["calls"])
        else:
            assert entry["avg_cost_per_run"] is None
        if total["out"]:
            close(entry["token_efficiency"], usd(total["cost"]) / total["out"] * 1000)
        else:
            assert entry["token_efficiency"] is None
        assert entry["trend"] == expected_trend([s for s in data.of() if s.agent == mine[0].agent], today)
    trends = {e["agent_id"]: e["trend"] for e in body["by_agent"]}
    assert trends["coder"] == "increasing" and trends["planner"] == "decreasing"
    assert trends["unattributed"] == "stable"
    reviewer = next(e for e in body["by_agent"] if e["agent_id"] == "reviewer")
    assert reviewer["executions"] == 1  # an unmetered session is a job; an execution record is not

    month_spent = sums(month)["cost"]
    assert body["budget"] == {"monthly_limit": 1.0, "utilization_pct": pytest.approx(
        month_spent * 100 / 1e9 / 1.0, abs=0.006), "alert_threshold_pct": 75}

    yesterday = daily.get(today - timedelta(days=1), 0)
    tvy = body["today_vs_yesterday"]
    close(tvy["today"], usd(daily[today]))
    close(tvy["yesterday"], usd(yesterday))
    assert tvy["change_pct"] == pytest.approx((daily[today] - yesterday) * 100 / yesterday, abs=0.006)

    proj = body["projections"]
    assert {k: v["method"] for k, v in proj.items()} == {
        "daily": "current_day_rate", "weekly": "7_day_rolling_average",
        "monthly": "30_day_trend_with_day_of_week_seasonality"}
    elapsed = [max((t - midnight(today)).total_seconds(), 1) / 86400 for t in (before, after)]
    low, high = usd(daily[today]) / elapsed[1], usd(daily[today]) / elapsed[0]
    assert low - USD_TOL <= proj["daily"]["value"] <= high + USD_TOL
    week = sum(daily.get(today - timedelta(days=i), 0) for i in range(1, 8))
    close(proj["weekly"]["value"], usd(week))
    low, high = sorted(expected_monthly(daily, today, t) for t in (before, after))
    assert low - USD_TOL <= proj["monthly"]["value"] <= high + USD_TOL
    assert body["projected_monthly"] == proj["monthly"]["value"]
    check_pipeline_runs(body["pipeline_runs"], data, first)


def check_pipeline_runs(got: dict[str, Any], data: Data, first: date) -> None:
    runs = group((s for s in data.of() if s.run), "run")
    active = {run: spends for run, spends in runs.items() if max(s.ts for s in spends).date() >= first}
    assert "r-span" in active and any(s.ts.date() < first for s in active["r-span"])
    close(got["avg_cost_per_run"], usd(sum(sums(s)["cost"] for s in active.values())) / len(active))
    recent = sorted(active, key=lambda run: (max(s.ts for s in active[run]), run), reverse=True)[:20]
    assert [r["run_id"] for r in got["runs"]] == recent
    for entry in got["runs"]:
        spends = active[entry["run_id"]]
        total = sums(spends)
        close(entry["cost"], usd(total["cost"]))
        assert entry["calls"] == total["calls"]
        close(entry["retry_cost"], usd(total["retry"]))
        per_agent = {a or "unattributed": sums(s)["cost"] for a, s in group(spends, "agent").items()}
        assert [a["agent_id"] for a in entry["agents"]] == sorted(per_agent, key=lambda a: (-per_agent[a], a))
        for agent in entry["agents"]:
            close(agent["cost"], usd(per_agent[agent["agent_id"]]))
            assert agent["pct"] == pytest.approx(per_agent[agent["agent_id"]] * 100 / total["cost"], abs=0.006)
    span = next(r for r in got["runs"] if r["run_id"] == "r-span")
    close(span["cost"], usd(2_500_000 + 800_000))  # the whole run, last month's part included
    today_run = next(r for r in got["runs"] if r["run_id"] == "r-today")
    close(today_run["retry_cost"], usd(3_000_000))


def test_cost_optimization_tenants_roles_and_errors(reports: tuple[Proxy, Data]) -> None:
    proxy, data = reports
    today = datetime.now(UTC).date()
    acme = ok(proxy, OPT)
    globex = ok(proxy, OPT, OTHER)
    globex_month = sums(data.of("globex", since=today.replace(day=1)))["cost"]
    close(globex["total_cost_month"], usd(globex_month))
    assert globex["total_cost_month"] != acme["total_cost_month"]
    assert [a["agent_id"] for a in globex["by_agent"]] == ["coder"]
    # globex has no budget naming it: the `org: "*"` one (its own counter), without alerts -> 80.
    assert globex["budget"]["monthly_limit"] == 0.2 and globex["budget"]["alert_threshold_pct"] == 80
    assert globex["pipeline_runs"]["runs"] == [] or all(
        r["run_id"].startswith("r-d") for r in globex["pipeline_runs"]["runs"])
    for key in (VIEWER, ADMIN):
        assert_seed_error(get(proxy, OPT, key, {"X-Org-ID": "globex"}), 403, "FORBIDDEN")
    assert_seed_error(get(proxy, OPT, OTHER, {"X-Org-ID": "acme"}), 403, "FORBIDDEN")
    assert ok(proxy, OPT, ADMIN, {"X-Org-ID": "acme"})["total_cost_month"] == acme["total_cost_month"]
    root = ok(proxy, OPT, ROOT, {"X-Org-ID": "acme"})
    assert root["total_cost_month"] == acme["total_cost_month"] and root["budget"] == acme["budget"]
    assert ok(proxy, OPT, ROOT, {"X-Org-ID": "globex"})["total_cost_month"] == globex["total_cost_month"]
    err = assert_seed_error(get(proxy, OPT, ROOT), 400, "INVALID_REQUEST")
    assert "X-Org-ID" in err["message"]
    assert_seed_error(get(proxy, OPT, AGENT), 403, "FORBIDDEN")
    assert_seed_error(get(proxy, OPT, "sk-nope"), 401, "UNAUTHORIZED")



# --- AI cost ----------------------------------------------------------------------------------------------

def parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def expected_top_runs(data: Data, org: str, project: str, first: date) -> list[tuple[str, list[Spend]]]:
    """Runs with activity this month (any of their agents), summed over their rows of `project`."""
    runs = group((s for s in data.of(org) if s.run), "run")
    picked = {run: [s for s in spends if s.project == project] for run, spends in runs.items()
              if max(s.ts for s in spends).date() >= first}
    picked = {run: spends for run, spends in picked.items() if spends}
    order = sorted(picked, key=lambda run: (-sums(picked[run])["cost"], run))[:5]
    return [(run, picked[run]) for run in order]


def test_monthly_summary(reports: tuple[Proxy, Data]) -> None:
    proxy, data = reports
    body = ok(proxy, f"{AI}/monthly-summary", projectId="web")
    today = datetime.now(UTC).date()
    same_day(data.now, datetime.now(UTC))
    first = today.replace(day=1)
    web = data.of(since=first, project="web")
    total = sums(web)
    close(body["totalCost"], usd(total["cost"]))
    assert body["totalTokens"] == total["inp"] + total["out"] and body["totalJobs"] == total["calls"]
    agents = group(web, "agent")
    assert [a["agentType"] for a in body["agentBreakdown"]] == sorted(agents, key=lambda a: (-sums(agents[a])["cost"], a))
    for entry in body["agentBreakdown"]:
        mine = sums(agents[entry["agentType"]])
        close(entry["cost"], usd(mine["cost"]))
        assert entry["totalJobs"] == mine["calls"]
        assert (entry["inputTokens"], entry["outputTokens"]) == (mine["inp"], mine["out"])
        assert entry["pctOfTotal"] == pytest.approx(mine["cost"] * 100 / total["cost"], abs=0.006)
        if mine["calls"]:
            assert entry["successRate"] == pytest.approx((mine["calls"] - mine["errors"]) * 100 / mine["calls"],
                                                         abs=0.006)
        else:
            assert entry["successRate"] is None
    coder = next(a for a in body["agentBreakdown"] if a["agentType"] == "coder")
    assert coder["successRate"] < 100  # r-err failed (and Monday errors, when this month has one)

    expected = expected_top_runs(data, "acme", "web", first)
    assert [r["runId"] for r in body["topRuns"]] == [run for run, _ in expected]
    events = {e["run"]: e for e in data.events["acme"] if e["type"] == "pipeline.run"}
    for entry, (run, spends) in zip(body["topRuns"], expected, strict=True):
        mine = sums(spends)
        close(entry["cost"], usd(mine["cost"]))
        assert entry["jobCount"] == mine["calls"] and entry["totalTokens"] == mine["inp"] + mine["out"]
        if run in events:
            assert (entry["status"], entry["trigger"]) == (events[run]["status"], events[run]["trigger"])
            assert parse_ts(entry["startedAt"]) == datetime.fromisoformat(events[run]["ts"])
        else:
            assert entry["status"] == ("failed" if mine["errors"] else "completed") and entry["trigger"] is None
            assert parse_ts(entry["startedAt"]) == min(s.ts for s in spends)
    statuses = {r["runId"]: r["status"] for r in body["topRuns"]}
    assert statuses["r-today"] == "success" and statuses["r-err"] == "failed" and statuses["r-big"] == "completed"
    assert body["budgetLimit"] == 0.5
    assert body["budgetPct"] == pytest.approx(total["cost"] * 100 / 0.5e9, abs=0.006)


def test_monthly_trend_cross_project_and_recent_transactions(reports: tuple[Proxy, Data]) -> None:
    proxy, data = reports
    today = datetime.now(UTC).date()
    same_day(data.now, datetime.now(UTC))
    first = today.replace(day=1)
    trend = ok(proxy, f"{AI}/monthly-trend", projectId="web")
    months = [first_of_month(today, back) for back in range(5, -1, -1)]
    assert [m["month"] for m in trend] == [f"{m.year:04d}-{m.month:02d}" for m in months]
    for entry, start in zip(trend, months, strict=True):
        mine = sums(s for s in data.of(project="web") if first_of_month(s.ts.date()) == start)
        close(entry["cost"], usd(mine["cost"]))
        assert entry["totalTokens"] == mine["inp"] + mine["out"] and entry["jobCount"] == mine["calls"]
    assert all(m["cost"] > 0 for m in trend)  # a call in every month; the one six months back is left out

    cross = ok(proxy, f"{AI}/cross-project-summary")
    month = data.of(since=first)
    projects = group(month, "project")
    assert [p["projectId"] for p in cross["projects"]] == [
        p or None for p in sorted(projects, key=lambda p: (-sums(projects[p])["cost"], p))]
    limits = {"web": 0.5, "api": 0.4}
    for entry in cross["projects"]:
        mine = sums(projects[entry["projectId"] or ""])
        close(entry["totalCost"], usd(mine["cost"]))
        assert entry["totalTokens"] == mine["inp"] + mine["out"] and entry["totalJobs"] == mine["calls"]
        limit = limits.get(entry["projectId"] or "")
        assert entry["budgetLimit"] == limit
        if limit is None:
            assert entry["budgetPct"] is None
        else:
            assert entry["budgetPct"] == pytest.approx(mine["cost"] * 100 / (limit * 1e9), abs=0.006)
    whole = sums(month)
    close(cross["totalCost"], usd(whole["cost"]))
    assert (cross["totalTokens"], cross["totalJobs"]) == (whole["inp"] + whole["out"], whole["calls"])

    recent = ok(proxy, f"{AI}/recent-transactions", projectId="web")
    rows = sorted((r for r in data.records if r.org == "acme" and r.project == "web" and r.status != "refused"),
                  key=lambda r: (r.started_at, r.request_id), reverse=True)[:50]
    assert len(recent) == 50 and [t["id"] for t in recent] == [r.request_id for r in rows]
    for got, rec in zip(recent, rows, strict=True):
        assert got == {"id": rec.request_id, "agentType": rec.agent or "unattributed", "runId": rec.run,
                       "model": rec.model, "provider": rec.provider, "inputTokens": rec.input_tokens,
                       "outputTokens": rec.output_tokens, "cost": pytest.approx(usd(rec.cost_nano), abs=1e-9),
                       "createdAt": got["createdAt"]}
        assert parse_ts(got["createdAt"]) == rec.started_at


def test_ai_cost_tenants_roles_and_errors(reports: tuple[Proxy, Data]) -> None:
    proxy, data = reports
    first = datetime.now(UTC).date().replace(day=1)
    globex = ok(proxy, f"{AI}/monthly-summary", OTHER, projectId="web")
    close(globex["totalCost"], usd(sums(data.of("globex", since=first))["cost"]))
    assert [a["agentType"] for a in globex["agentBreakdown"]] == ["coder"] and globex["budgetLimit"] == 0.3
    cross = ok(proxy, f"{AI}/cross-project-summary", OTHER)
    assert [p["projectId"] for p in cross["projects"]] == ["web"]
    ids = {t["id"] for t in ok(proxy, f"{AI}/recent-transactions", OTHER, projectId="web")}
    assert ids and all(i.startswith("globex-") for i in ids)
    paths = [("monthly-summary", {"projectId": "web"}), ("monthly-trend", {"projectId": "web"}),
             ("cross-project-summary", {}), ("recent-transactions", {"projectId": "web"})]
    for path, params in paths:
        url = f"{AI}/{path}"
        for key in (VIEWER, ADMIN):
            assert_seed_error(get(proxy, url, key, {"X-Org-ID": "globex"}, **params), 403, "FORBIDDEN")
        assert_seed_error(get(proxy, url, OTHER, {"X-Org-ID": "acme"}, **params), 403, "FORBIDDEN")
        assert ok(proxy, url, ROOT, {"X-Org-ID": "acme"}, **params) == ok(proxy, url, VIEWER, **params)
        assert ok(proxy, url, ROOT, {"X-Org-ID": "globex"}, **params) == ok(proxy, url, OTHER, **params)
        assert_seed_error(get(proxy, url, ROOT, **params), 400, "INVALID_REQUEST")
        assert_seed_error(get(proxy, url, AGENT, **params), 403, "FORBIDDEN")
        if params:
            err = assert_seed_error(get(proxy, url, VIEWER), 400, "INVALID_REQUEST")
            assert "projectId" in err["message"]


def put_limit(proxy: Proxy, key: str, body: Any, headers: dict[str, str] | None = None,
              **params: str) -> httpx.Response:
    with proxy.client(key) as c:
        return c.put(f"{AI}/budget-limit", params=params, json=body, headers=headers)


def limits(proxy: Proxy, key: str = ADMIN) -> dict[str, float]:
    with proxy.client(key) as c:
        r = c.get("/api/budgets")
    assert r.status_code == 200, r.text
    return {b["name"]: b["limit_usd"] for b in r.json()["budgets"]}


def test_budget_limit_sets_the_runtime_limit_of_the_project_budget(reports: tuple[Proxy, Data]) -> None:
    proxy, data = reports
    r = put_limit(proxy, ADMIN, {"limitDollars": 0.75}, projectId="web")
    assert r.status_code == 200, r.text
    assert r.json() == {"projectId": "web", "budget": "web-month", "limitDollars": 0.75, "configLimitDollars": 0.5}
    after = limits(proxy)
    assert after["web-month"] == 0.75 and after["web-day"] == 0.05 and after["acme-month"] == 1.0
    summary = ok(proxy, f"{AI}/monthly-summary", projectId="web")
    assert summary["budgetLimit"] == 0.75
    assert summary["budgetPct"] == pytest.approx(summary["totalCost"] * 100 / 0.75, abs=0.006)

    for bad in ({"limitDollars": -1}, {"limitDollars": "5"}, {"limitDollars": True}, {}, {"limitDollars": 2e9}):
        assert_seed_error(put_limit(proxy, ADMIN, bad, projectId="web"), 400, "INVALID_REQUEST")
    with proxy.client(ADMIN) as c:
        bad_json = c.put(f"{AI}/budget-limit", params={"projectId": "web"}, content=b"{nope")
    assert_seed_error(bad_json, 400, "INVALID_REQUEST")
    assert_seed_error(put_limit(proxy, ADMIN, {"limitDollars": 1}), 400, "INVALID_REQUEST")
    assert_seed_error(put_limit(proxy, ADMIN, {"limitDollars": 1}, projectId="nope"), 404, "NOT_FOUND")
    # `org: "*"` budgets span orgs: only an org-"*" admin changes them.
    assert_seed_error(put_limit(proxy, ADMIN, {"limitDollars": 1}, projectId="api"), 404, "NOT_FOUND")
    for key in (VIEWER, AGENT):
        assert_seed_error(put_limit(proxy, key, {"limitDollars": 1}, projectId="web"), 403, "FORBIDDEN")
    assert_seed_error(put_limit(proxy, ROOT, {"limitDollars": 1}, projectId="web"), 400, "INVALID_REQUEST")
    assert_seed_error(put_limit(proxy, ADMIN, {"limitDollars": 1}, {"X-Org-ID": "globex"}, projectId="web"),
                      403, "FORBIDDEN")
    assert limits(proxy)["web-month"] == 0.75  # nothing above changed it

    r = put_limit(proxy, OTHER, {"limitDollars": 0.9}, projectId="web")
    assert r.status_code == 200 and r.json()["budget"] == "globex-web", r.text
    assert limits(proxy, OTHER)["globex-web"] == 0.9 and limits(proxy)["web-month"] == 0.75
    r = put_limit(proxy, ROOT, {"limitDollars": 0}, {"X-Org-ID": "acme"}, projectId="api")
    assert r.status_code == 200 and r.json()["budget"] == "api-any-org", r.text
    assert limits(proxy, ROOT)["api-any-org"] == 0.0
    assert ok(proxy, f"{AI}/monthly-summary", projectId="api")["budgetPct"] is None  # a zero limit: no percent


def test_cost_reports_without_data_or_budget(any_store_proxy: Proxy) -> None:
    proxy = any_store_proxy
    body = ok(proxy, OPT)
    assert body["total_cost_today"] == 0 and body["total_cost_month"] == 0 and body["projected_monthly"] == 0
    assert body["by_provider"] == {} and body["by_agent"] == []
    assert body["budget"] == {"monthly_limit": None, "utilization_pct": None, "alert_threshold_pct": 80}
    assert body["today_vs_yesterday"] == {"today": 0, "yesterday": 0, "change_pct": None}
    assert {k: v["value"] for k, v in body["projections"].items()} == {"daily": 0, "weekly": 0, "monthly": 0}
    assert body["pipeline_runs"] == {"avg_cost_per_run": None, "runs": []}
    assert ok(proxy, f"{AI}/monthly-summary", projectId="web") == {
        "totalCost": 0, "totalTokens": 0, "totalJobs": 0, "agentBreakdown": [], "topRuns": [],
        "budgetLimit": None, "budgetPct": None}
    today = datetime.now(UTC).date()
    trend = ok(proxy, f"{AI}/monthly-trend", projectId="web")
    assert [m["month"] for m in trend] == [
        f"{m.year:04d}-{m.month:02d}" for m in (first_of_month(today, back) for back in range(5, -1, -1))]
    assert all((m["cost"], m["totalTokens"], m["jobCount"]) == (0, 0, 0) for m in trend)
    assert ok(proxy, f"{AI}/cross-project-summary") == {"projects": [], "totalCost": 0, "totalTokens": 0,
                                                         "totalJobs": 0}
    assert ok(proxy, f"{AI}/recent-transactions", projectId="web") == []
    assert_seed_error(put_limit(proxy, ADMIN, {"limitDollars": 1}, projectId="web"), 404, "NOT_FOUND")
