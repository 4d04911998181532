"""The APIs the dashboard added, on SQLite and PostgreSQL: `GET /api/me`, `GET /api/prices`,
`GET /api/factory/daily-spend` and `GET /api/ai-cost/org-summary`; and `GET /dashboard` itself (its
Content-Security-Policy and assets). Calls go in through the store's own insert with chosen times, events
through `POST /api/factory/events`; every expected figure is computed here from the rows the test wrote."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.error_shapes import assert_openai_error, assert_seed_error
from tests.fakes.upstream import ANTHROPIC_KEY, OPENAI_KEY, FakeUpstream
from tests.harness import ADMIN, AGENT, KEYS, OTHER, ROOT, VIEWER, Proxy, make_settings, rate
from tests.spend_data import Spend, SpendData, insert

pytestmark = pytest.mark.integration
DAILY = "/api/factory/daily-spend"
ORG_SUMMARY = "/api/ai-cost/org-summary"
USD_PER_HOUR_NANO = 80_000_000  # pricing.compute_hourly_rate_usd default, 0.08 USD


def get(proxy: Proxy, path: str, key: str | None = VIEWER, **headers: str) -> httpx.Response:
    auth = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(proxy.url + path, headers={**auth, **headers}, timeout=30)


def midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def usd(nano: int) -> float:
    return round(nano / 1e9, 6)


# --- GET /api/me ------------------------------------------------------------------------------------------

def test_me_tells_each_key_who_it_is(any_store_proxy: Proxy) -> None:
    for key, name in ((ADMIN, "admin"), (VIEWER, "viewer"), (AGENT, "planner"), (ROOT, "root"), (OTHER, "globex")):
        r = get(any_store_proxy, "/api/me", key)
        assert r.status_code == 200, r.text
        conf = next(k for k in KEYS if k["name"] == name)
        assert r.json() == {"key_name": name, "org": conf["org"], "role": conf["role"],
                            "project": conf.get("project"), "agent": conf.get("agent"),
                            "currency": "USD", "fx_rate": 1.0}
    assert_openai_error(get(any_store_proxy, "/api/me", None), 401, "invalid_api_key")
    assert_openai_error(get(any_store_proxy, "/api/me", "sk-not-a-key"), 401, "invalid_api_key")


def test_me_gives_the_display_currency_and_prices_show_overrides(upstream: FakeUpstream, tmp_path: Path,
                                                                 closed_port: int) -> None:
    pricing = {"currency": "EUR", "fx_rate": 0.92,
               "overrides": {"house-model": {"input_per_mtok": 3.0, "output_per_mtok": 12.0,
                                             "cached_input_per_mtok": 0.3}}}
    models = [{"name": "house", "provider": "openai", "api_base": upstream.openai_base,
               "api_key": "env:SG_TEST_OPENAI_KEY", "price_as": "house-model"}]
    with Proxy(make_settings(upstream, tmp_path, closed_port, pricing=pricing, models=models)) as proxy:
        me = get(proxy, "/api/me", ADMIN).json()
        assert (me["currency"], me["fx_rate"]) == ("EUR", 0.92)
        (house,) = get(proxy, "/api/prices", AGENT).json()["models"]
    assert house == {"model": "house", "provider": "openai", "position": 0, "priced_as": "house-model",
                     "priced_by_request": False, "unpriced": False, "source": "override",
                     "input_per_mtok": 3.0, "cached_input_per_mtok": 0.3, "cache_write_per_mtok": 3.0,
                     "output_per_mtok": 12.0, "max_input_tokens": None}


# --- GET /api/prices --------------------------------------------------------------------------------------

def per_mtok(model: str, key: str, fallback: str | None = None) -> float:
    value = rate(model, key) or (rate(model, fallback) if fallback else Decimal(0))
    return float(value * 1_000_000)


def test_prices_lists_every_route_with_its_catalog_price_and_never_a_secret(any_store_proxy: Proxy) -> None:
    r = get(any_store_proxy, "/api/prices", AGENT)  # any valid key reads the price table
    assert r.status_code == 200, r.text
    body = r.json()
    configs = any_store_proxy.settings.models
    assert [(m["model"], m["provider"]) for m in body["models"]] == [(m.name, m.provider) for m in configs]
    by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in body["models"]:
        by_name[m["model"]].append(m)
    for name, entries in by_name.items():
        assert [e["position"] for e in entries] == list(range(len(entries))), name
    fake = by_name["fake-*"][0]
    assert fake["priced_as"] == "gpt-4o-mini" and fake["source"] == "catalog" and not fake["priced_by_request"]
    assert fake["input_per_mtok"] == per_mtok("gpt-4o-mini", "input_cost_per_token")
    assert fake["output_per_mtok"] == per_mtok("gpt-4o-mini", "output_cost_per_token")
    assert fake["cached_input_per_mtok"] == per_mtok("gpt-4o-mini", "cache_read_input_token_cost",
                                                     "input_cost_per_token")
    assert [e["priced_as"] for e in by_name["chain-503"]] == ["gpt-4o-mini", "gpt-4o"]
    assert by_name["chain-503"][1]["output_per_mtok"] == per_mtok("gpt-4o", "output_cost_per_token")
    wildcard = by_name["claude-sonnet-4-5*"][0]  # no price_as: each call is priced by the model it names
    assert wildcard["priced_by_request"] and wildcard["priced_as"] is None and wildcard["input_per_mtok"] is None
    claude = by_name["claude-fake-*"][0]
    assert claude["cache_write_per_mtok"] == per_mtok("claude-sonnet-4-5", "cache_creation_input_token_cost")
    for secret in (OPENAI_KEY, ANTHROPIC_KEY, "127.0.0.1", "api_base", "api_key", "http"):
        assert secret not in r.text
    assert_openai_error(get(any_store_proxy, "/api/prices", None), 401, "invalid_api_key")


# --- what the spend APIs should count --------------------------------------------------------------------

def build(now: datetime) -> SpendData:
    """91 days of acme spend (the 90-day window and one day before it), a globex call on every tenth day,
    today's spend before now, a refused call, an unmetered session, a metered session and an execution."""
    d = SpendData(now)
    today = now.date()
    for back in range(0, 92):
        day = today - timedelta(days=back)
        noon = midnight(day) + (timedelta(hours=12) if back else (now - midnight(today)) / 2)
        if back % 3 != 1:  # days without spend stay in the series as zeros
            d.call(noon, 1_000_000 + 37_000 * back, provider="openai", agent="coder", project="web",
                   run=f"r{back % 5}", inp=1000 + back, out=100 + back)
        if back % 4 == 0:
            d.call(noon + timedelta(seconds=1), 2_500_000 + back, provider="anthropic", agent="reviewer",
                   project="api", status="error" if back % 8 == 0 else "ok", run="r-big" if back < 3 else "",
                   inp=300, out=50)
        if back % 10 == 0:
            d.call(noon, 9_000_000, org="globex", provider="google", agent="coder", inp=7, out=3)
        if back % 6 == 0:
            d.call(noon + timedelta(seconds=2), 555_000, provider="openai", agent="", project="", inp=10, out=1)
    noon = midnight(today) + (now - midnight(today)) / 3
    d.call(noon, 77_000_000, status="refused")
    d.event(noon, Spend(noon, "acme", "web", "reviewer", "anthropic", 250_000_000 + USD_PER_HOUR_NANO // 2, 1, 0,
                        400, 60), type="session.completed", project="web", agent="reviewer",
            provider="anthropic", model="claude-x", metered=False, costUsd=0.25, inputTokens=400, outputTokens=60,
            durationMs=1_800_000)
    d.event(noon, Spend(noon, "acme", "web", "coder", "openai", USD_PER_HOUR_NANO // 4, 0),
            type="session.completed", project="web", agent="coder", provider="openai", durationMs=900_000)
    d.event(noon, Spend(noon, "acme", "api", "tester", "", 3_000_000, 0), type="execution", kind="test_run",
            project="api", agent="tester", durationMs=1000, costUsd=0.003)
    return d


@pytest.fixture
def spend_proxy(any_store_proxy: Proxy, store_url: str) -> tuple[Proxy, SpendData]:
    data = build(datetime.now(UTC))
    insert(store_url, data, any_store_proxy)
    return any_store_proxy, data


# --- GET /api/factory/daily-spend -------------------------------------------------------------------------

def expected_days(spends: list[Spend], today: date, days: int) -> list[dict[str, Any]]:
    out = []
    for i in range(days):
        day = today - timedelta(days=days - 1 - i)
        of_day = [s for s in spends if s.ts.date() == day]
        providers: dict[str, int] = defaultdict(int)
        for s in of_day:
            if s.cost:
                providers[s.provider or "unattributed"] += s.cost
        out.append({"date": day.isoformat(), "cost": usd(sum(s.cost for s in of_day)),
                    "tokens": sum(s.inp + s.out for s in of_day), "jobs": sum(s.calls for s in of_day),
                    "byProvider": {p: usd(c) for p, c in providers.items()}})
    return out


def test_daily_spend_has_every_day_of_the_window_by_provider(spend_proxy: tuple[Proxy, SpendData]) -> None:
    proxy, data = spend_proxy
    today = datetime.now(UTC).date()
    for days in (7, 14, 30, 90):
        r = get(proxy, f"{DAILY}?days={days}")
        assert r.status_code == 200, r.text
        body = r.json()
        expected = expected_days(data.of("acme"), today, days)
        assert [d["date"] for d in body["days"]] == [e["date"] for e in expected]
        for got, want in zip(body["days"], expected, strict=True):
            assert {**got, "byProvider": dict(got["byProvider"])} == want, got["date"]
            costs = list(got["byProvider"].values())
            assert costs == sorted(costs, reverse=True)  # costliest provider first within a day
        window = {p for e in expected for p in e["byProvider"]}
        assert set(body["providers"]) == window
    assert get(proxy, DAILY).json()["days"] == get(proxy, f"{DAILY}?days=30").json()["days"]  # the default
    assert any(d["byProvider"].get("unattributed") for d in get(proxy, f"{DAILY}?days=7").json()["days"])


def test_daily_spend_orgs_roles_and_errors(spend_proxy: tuple[Proxy, SpendData]) -> None:
    proxy, data = spend_proxy
    today = datetime.now(UTC).date()
    globex = get(proxy, f"{DAILY}?days=14", OTHER).json()["days"]
    assert globex == expected_days(data.of("globex"), today, 14)
    assert get(proxy, f"{DAILY}?days=14", ROOT, **{"X-Org-ID": "globex"}).json()["days"] == globex
    everything = get(proxy, f"{DAILY}?days=14", ROOT).json()["days"]  # org-"*" admin, no X-Org-ID: all orgs
    assert [d["cost"] for d in everything] == [e["cost"] for e in expected_days(data.of(None), today, 14)]
    assert_seed_error(get(proxy, f"{DAILY}?days=14", AGENT), 403, "FORBIDDEN")
    assert_seed_error(get(proxy, f"{DAILY}?days=14", VIEWER, **{"X-Org-ID": "globex"}), 403, "FORBIDDEN")
    assert_seed_error(get(proxy, f"{DAILY}?days=14", None), 401, "UNAUTHORIZED")
    for bad in ("8", "0", "-7", "7d", "", "1e1", "90.0"):
        err = assert_seed_error(get(proxy, f"{DAILY}?days={bad}"), 400, "INVALID_TIME_RANGE")
        assert err["message"] == "Invalid days. Must be one of: 7, 14, 30, 90"


# --- GET /api/ai-cost/org-summary -------------------------------------------------------------------------

BUDGETS = [{"name": "acme-month", "scope": {"org": "acme"}, "window": "month", "limit_usd": 2.0},
           {"name": "any-org", "scope": {"org": "*"}, "window": "month", "limit_usd": 5.0},
           {"name": "web-month", "scope": {"org": "acme", "project": "web"}, "window": "month", "limit_usd": 0.5}]


def shift_month(first: date, back: int) -> date:
    index = first.year * 12 + first.month - 1 - back
    return date(index // 12, index % 12 + 1, 1)


def test_org_summary_is_the_whole_org_this_month(upstream: FakeUpstream, tmp_path: Path, closed_port: int,
                                                 store_url: str) -> None:
    now = datetime.now(UTC)
    data = build(now)
    first = now.date().replace(day=1)
    for back in range(1, 8):  # one call mid-month in each of the seven months before this one
        day = shift_month(first, back) + timedelta(days=14)
        data.call(midnight(day) + timedelta(hours=9), 1_000_000 * back, project="mobile", inp=5 * back, out=back)
    with Proxy(make_settings(upstream, tmp_path, closed_port, store_url=store_url, budgets=BUDGETS)) as proxy:
        insert(store_url, data, proxy)
        body = get(proxy, ORG_SUMMARY).json()
        root = get(proxy, ORG_SUMMARY, ROOT, **{"X-Org-ID": "acme"}).json()
        globex = get(proxy, ORG_SUMMARY, OTHER).json()
        assert_seed_error(get(proxy, ORG_SUMMARY, AGENT), 403, "FORBIDDEN")
        assert_seed_error(get(proxy, ORG_SUMMARY, ROOT), 400, "INVALID_REQUEST")  # names no org
        assert_seed_error(get(proxy, ORG_SUMMARY, None), 401, "UNAUTHORIZED")
    month = data.of("acme", since=first)
    cost = sum(s.cost for s in month)
    assert (body["totalCost"], body["totalTokens"], body["totalJobs"]) == (
        usd(cost), sum(s.inp + s.out for s in month), sum(s.calls for s in month))
    agents: dict[str, list[Spend]] = defaultdict(list)
    for s in month:
        agents[s.agent or "unattributed"].append(s)
    want = sorted(({"agentType": a, "totalJobs": sum(s.calls for s in ss), "cost": usd(sum(s.cost for s in ss)),
                    "pctOfTotal": round(sum(s.cost for s in ss) * 100 / cost, 2),
                    "inputTokens": sum(s.inp for s in ss), "outputTokens": sum(s.out for s in ss),
                    "successRate": round((sum(s.calls for s in ss) - sum(s.errors for s in ss)) * 100
                                         / sum(s.calls for s in ss), 2) if sum(s.calls for s in ss) else None}
                   for a, ss in agents.items()), key=lambda a: (-a["cost"], a["agentType"]))
    assert body["agentBreakdown"] == want
    # The org's month budget: named org beats "*"; web-month has a project dimension, so it is not the org's.
    assert (body["budgetName"], body["budgetLimit"], body["budgetPct"]) == ("acme-month", 2.0,
                                                                           round(cost * 100 / 2e9, 2))
    assert globex["budgetName"] == "any-org" and globex["totalCost"] == usd(sum(s.cost for s in data.of("globex", first)))
    assert root == body
    runs: dict[str, list[Spend]] = defaultdict(list)
    for s in data.of("acme"):
        if s.run:
            runs[s.run].append(s)
    active = {r: ss for r, ss in runs.items() if any(s.ts.date() >= first for s in ss)}
    top = sorted(active.items(), key=lambda kv: (-sum(s.cost for s in kv[1]), kv[0]))[:5]
    assert [(r["runId"], r["cost"], r["jobCount"], r["totalTokens"]) for r in body["topRuns"]] == [
        (run, usd(sum(s.cost for s in ss)), len(ss), sum(s.inp + s.out for s in ss)) for run, ss in top]
    assert all(r["status"] in ("completed", "failed") and r["trigger"] is None for r in body["topRuns"])
    months = [shift_month(first, back) for back in range(5, -1, -1)]
    trend = []
    for m in months:
        of_month = [s for s in data.of("acme") if (s.ts.year, s.ts.month) == (m.year, m.month)]
        trend.append({"month": f"{m:%Y-%m}", "cost": usd(sum(s.cost for s in of_month)),
                      "totalTokens": sum(s.inp + s.out for s in of_month), "jobCount": sum(s.calls for s in of_month)})
    assert body["monthlyTrend"] == trend


# --- GET /dashboard -------------------------------------------------------------------------------------

def test_the_page_and_its_assets_are_served_under_a_strict_policy(proxy: Proxy) -> None:
    r = httpx.get(proxy.url + "/dashboard")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
    assert r.headers["referrer-policy"] == "no-referrer" and r.headers["x-frame-options"] == "DENY"
    scripts = re.findall(r"<script([^>]*)>", r.text)
    assert scripts and all('src="/dashboard/assets/' in s for s in scripts)  # no inline script
    assert " style=" not in r.text and "<style" not in r.text and "http://" not in r.text and "https://" not in r.text
    assets = set(re.findall(r'(?:src|href)="(/dashboard/assets/[^"]+)"', r.text))
    assert {"/dashboard/assets/app.js", "/dashboard/assets/app.css", "/dashboard/assets/favicon.svg"} <= assets
    static = Path(__file__).resolve().parents[2] / "proxy" / "static"
    for name in sorted(p.name for p in static.iterdir() if p.suffix in (".js", ".css", ".svg")):
        a = httpx.get(f"{proxy.url}/dashboard/assets/{name}")
        assert a.status_code == 200 and a.headers["content-security-policy"] == csp, name
        assert a.headers["content-type"].split(";")[0] == {
            ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}[Path(name).suffix]
        if name.endswith(".js"):  # nothing that fetches from another host, builds HTML from strings or evals
            for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "new Function", "localStorage.set",
                           "document.write"):
                assert banned not in a.text, (name, banned)
            assert re.findall(r"https?://[^\s\"'`]+", a.text) in ([], ["http://www.w3.org/2000/svg"]), name
    for bad in ("index.html", "../app.py", "..%2Fapp.py", "nope.js", "APP.JS", "app.js.map"):
        assert httpx.get(f"{proxy.url}/dashboard/assets/{bad}").status_code == 404, bad
