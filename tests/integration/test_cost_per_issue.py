"""Cost per issue (GET /api/factory/cost-per-issue and /{issue}) on SQLite and PostgreSQL: two legs (tokens and
compute), retries, rework, unpriced models, windows, sorting, keyset pages, roles and tenant isolation.

Every expected figure is computed here from the raw amounts the test put in (catalog prices read by the
harness, compute hours x the configured rate), never by the code under test."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy.store.config import StoreConfig
from proxy.store.db import Store
from proxy.store.records import CallRecord
from tests.error_shapes import assert_seed_error
from tests.fakes.upstream import FakeUpstream
from tests.harness import ADMIN, AGENT, OTHER, ROOT, VIEWER, Proxy, expected_nano, make_settings, usd
from tests.harness import test_models as harness_models

pytestmark = pytest.mark.integration
RATE_USD = 0.5  # pricing.compute_hourly_rate_usd of these tests (not the default, to see it is used)
LIST = "/api/factory/cost-per-issue"
MSGS: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture
def issue_proxy(upstream: FakeUpstream, tmp_path: Path, closed_port: int, store_url: str) -> Iterator[Proxy]:
    """A proxy on SQLite or PostgreSQL with `unpriced: allow` and a route (`nopr-*`) whose model has no price."""
    upstream.clear()
    models = harness_models(upstream, closed_port) + [
        {"name": "nopr-*", "provider": "openai", "api_base": upstream.openai_base,
         "api_key": "env:SG_TEST_OPENAI_KEY", "price_as": "no-such-model-in-any-catalog"}]
    settings = make_settings(upstream, tmp_path, closed_port, store_url=store_url, models=models,
                             pricing={"unpriced": "allow", "compute_hourly_rate_usd": RATE_USD})
    with Proxy(settings) as p:
        yield p


def compute_nano(duration_ms: int) -> int:
    """durationMs x the hourly rate, in nano-USD rounded up (the rule DESIGN §3 states)."""
    return math.ceil(Decimal(duration_ms) * Decimal(str(RATE_USD)) * 10**9 / 3_600_000)


def chat(proxy: Proxy, model: str, **tags: str) -> str:
    headers = {f"X-Spendgate-{name}": value for name, value in tags.items()}
    client = openai.OpenAI(base_url=proxy.base, api_key=ADMIN, max_retries=0, default_headers=headers)
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MSGS)
    return str(raw.headers["x-spendgate-request-id"])


def post_events(proxy: Proxy, events: list[dict[str, Any]], key: str = ADMIN) -> None:
    with proxy.client(key) as c:
        r = c.post("/api/factory/events", json={"events": events})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == len(events), r.text


def get(proxy: Proxy, path: str, key: str = VIEWER, headers: dict[str, str] | None = None,
        **params: Any) -> Any:
    with proxy.client(key) as c:
        return c.get(path, params=params, headers=headers)


def ok(proxy: Proxy, path: str, key: str = VIEWER, **params: Any) -> Any:
    r = get(proxy, path, key, **params)
    assert r.status_code == 200, r.text
    return r.json()


def insert(store_url: str, records: Sequence[CallRecord]) -> None:
    """Rows with chosen times, written through the store's own insert (which also rolls them up), next to the
    running proxy (the same database: `store_url` is the fixture the proxy was built on)."""
    async def run() -> None:
        store = await Store.open(StoreConfig(url=store_url))
        try:
            assert len(await store.insert_new_calls(records)) == len(records)
        finally:
            await store.close()
    asyncio.run(run())


# --- the drill-down: both legs, retries, rework, unpriced ----------------------------------------------------

def _eng1(p: Proxy) -> tuple[list[str], dict[str, dict[str, Any]], str]:
    """Issue ENG-1: four calls (one a retry, one of an unpriced model), sessions, executions, a rework verdict
    at development and then one more development call (the redo). Returns ids c1..c5, stored rows, the ts."""
    dev = {"Issue": "ENG-1", "Project": "web", "Station": "development", "Agent": "coder"}
    qa = {"Issue": "ENG-1", "Project": "web", "Station": "qa", "Agent": "tester"}
    c1 = chat(p, "fake-in200-out50", **dev)
    c2 = chat(p, "fake-in300-out20", **dev, **{"Retry-Of": c1})
    c3 = chat(p, "fake-in100-out10", **qa)
    c4 = chat(p, "nopr-in40-out7", **qa)
    for rid in (c1, c2, c3, c4):
        p.call_row(rid)
    now = datetime.now(UTC).isoformat()
    base = {"ts": now, "issue": "ENG-1", "project": "web"}
    post_events(p, [
        {**base, "id": "s1", "type": "session.completed", "station": "development", "agent": "coder",
         "provider": "openai", "model": "fake-in200-out50", "durationMs": 1_800_000, "costUsd": 0.77},
        {**base, "id": "s2", "type": "session.completed", "station": "review", "agent": "reviewer",
         "actor": "human", "provider": "anthropic", "model": "claude-x", "durationMs": 600_000,
         "metered": False, "costUsd": 0.125, "inputTokens": 1000, "outputTokens": 200},
        {**base, "id": "x1", "type": "execution", "kind": "test_run", "station": "qa", "agent": "tester",
         "durationMs": 900_000},
        {**base, "id": "x2", "type": "execution", "kind": "container_build", "station": "deploy",
         "durationMs": 1000, "costUsd": 0.0042},
        {**base, "id": "r1", "type": "station.completed", "station": "development", "outcome": "rework"},
        {**base, "id": "q1", "type": "station.completed", "station": "qa", "outcome": "passed"},
        {**base, "id": "o1", "type": "session.completed", "issue": "ENG-OTHER", "provider": "openai",
         "durationMs": 3_600_000},
    ])
    c5 = chat(p, "fake-in120-out30", **dev)  # the redo after development's rework verdict
    ids = [c1, c2, c3, c4, c5]
    return ids, {rid: p.call_row(rid) for rid in ids}, now


# Independent figures of ENG-1: catalog prices of the four priced calls, compute legs at RATE_USD.
A, B, C, D = (expected_nano("gpt-4o-mini", input=i, output=o) for i, o in ((200, 50), (300, 20), (100, 10), (120, 30)))
S1, S2, X1, X2 = compute_nano(1_800_000), compute_nano(600_000), compute_nano(900_000), 4_200_000
UNMETERED = 125_000_000  # s2's costUsd: the only session whose own cost counts
TOKEN, COMPUTE = A + B + C + D + UNMETERED, S1 + S2 + X1 + X2


def test_drill_down_two_legs_retry_rework_and_unpriced(issue_proxy: Proxy) -> None:
    p = issue_proxy
    ids, rows, now = _eng1(p)
    body = ok(p, f"{LIST}/ENG-1")
    assert {k: v for k, v in body.items() if k not in ("byStation", "byAgent", "byModel", "calls")} == {
        "issue": "ENG-1", "tokenCostUsd": usd(TOKEN), "computeCostUsd": usd(COMPUTE),
        "totalCostUsd": usd(TOKEN + COMPUTE), "computeHours": round((1_800_000 + 600_000) / 3_600_000, 6),
        "retryCostUsd": usd(B), "reworkCostUsd": usd(D), "unpricedCalls": 1, "callsTruncated": False}
    assert body["byStation"] == [
        {"station": "development", "costUsd": usd(A + B + D + S1), "calls": 3},
        {"station": "review", "costUsd": usd(UNMETERED + S2), "calls": 1},
        {"station": "qa", "costUsd": usd(C + X1), "calls": 2},
        {"station": "deploy", "costUsd": usd(X2), "calls": 0},
    ]
    assert body["byAgent"] == [
        {"agent": "coder", "costUsd": usd(A + B + D + S1), "calls": 3},
        {"agent": "reviewer", "costUsd": usd(UNMETERED + S2), "calls": 1},
        {"agent": "tester", "costUsd": usd(C + X1), "calls": 2},
        {"agent": None, "costUsd": usd(X2), "calls": 0},
    ]
    _check_by_model(body["byModel"])
    _check_calls(body["calls"], ids, rows)
    _check_list_entries(p, ids, rows)

    # An issue known only from an event still has a (zero) drill-down; an unknown one is a 404.
    post_events(p, [{"id": "e1", "type": "issue.created", "ts": now, "issue": "ENG-EMPTY"}])
    empty = ok(p, f"{LIST}/ENG-EMPTY")
    assert empty["totalCostUsd"] == 0 and empty["calls"] == [] and empty["byStation"] == []
    assert_seed_error(get(p, f"{LIST}/NOPE-404"), 404, "NOT_FOUND")


def _check_by_model(by_model: list[dict[str, Any]]) -> None:
    assert {m["model"]: m for m in by_model} == {
        "claude-x": {"model": "claude-x", "provider": "anthropic", "costUsd": usd(UNMETERED), "calls": 1,
                     "inputTokens": 1000, "outputTokens": 200, "unpriced": False},
        **{f"fake-in{i}-out{o}": {"model": f"fake-in{i}-out{o}", "provider": "openai", "costUsd": usd(cost),
                                  "calls": 1, "inputTokens": i, "outputTokens": o, "unpriced": False}
           for i, o, cost in ((200, 50, A), (300, 20, B), (100, 10, C), (120, 30, D))},
        "nopr-in40-out7": {"model": "nopr-in40-out7", "provider": "openai", "costUsd": None, "calls": 1,
                           "inputTokens": 40, "outputTokens": 7, "unpriced": True},
    }
    priced = [m["costUsd"] for m in by_model if not m["unpriced"]]
    assert priced == sorted(priced, reverse=True)


def _check_calls(calls: list[dict[str, Any]], ids: list[str], rows: dict[str, dict[str, Any]]) -> None:
    c1, c2, _c3, c4, c5 = ids
    assert [call["request_id"] for call in calls] == ids[::-1]
    by_id = {call["request_id"]: call for call in calls}
    assert by_id[c4]["costUsd"] is None and by_id[c4]["status"] == "ok"
    assert by_id[c2] == {
        "request_id": c2, "startedAt": rows[c2]["started_at"], "station": "development", "agent": "coder",
        "model": "fake-in300-out20", "provider": "openai", "inputTokens": 300, "outputTokens": 20,
        "costUsd": usd(B), "status": "ok", "retryOf": c1}
    assert by_id[c5]["costUsd"] == usd(D) and by_id[c5]["retryOf"] is None


def _check_list_entries(p: Proxy, ids: list[str], rows: dict[str, dict[str, Any]]) -> None:
    """The list (from the issue_days rollup) agrees with the raw figures."""
    listed = {i["issue"]: i for i in ok(p, LIST)["issues"]}
    assert listed["ENG-1"] == {
        "issue": "ENG-1", "project": "web", "totalCostUsd": usd(TOKEN + COMPUTE), "tokenCostUsd": usd(TOKEN),
        "computeCostUsd": usd(COMPUTE), "computeHours": round(2_400_000 / 3_600_000, 6), "retryCostUsd": usd(B),
        "calls": 6, "unpricedCalls": 1, "firstSeen": rows[ids[0]]["started_at"],
        "lastSeen": rows[ids[-1]]["started_at"]}
    assert listed["ENG-OTHER"]["computeCostUsd"] == usd(compute_nano(3_600_000))
    assert listed["ENG-OTHER"]["tokenCostUsd"] == 0 and listed["ENG-OTHER"]["calls"] == 0
    assert listed["ENG-OTHER"]["computeHours"] == 1.0 and listed["ENG-OTHER"]["project"] == "web"


def test_drill_down_truncates_calls_at_200(issue_proxy: Proxy, store_url: str) -> None:
    start = datetime.now(UTC) - timedelta(hours=1)
    records = [_record(f"t-{i:03d}", "acme", "team/BIG-1", start + timedelta(seconds=i), 1_000 + i, project=None)
               for i in range(205)]
    insert(store_url, records)
    body = ok(issue_proxy, f"{LIST}/team%2FBIG-1")  # an issue id with a slash, URL-encoded
    assert body["issue"] == "team/BIG-1"
    assert body["callsTruncated"] is True and len(body["calls"]) == 200
    assert [c["request_id"] for c in body["calls"]] == [f"t-{i:03d}" for i in range(204, 4, -1)]
    total = sum(1_000 + i for i in range(205))
    assert body["tokenCostUsd"] == usd(total) and body["totalCostUsd"] == usd(total)
    assert body["byStation"] == [{"station": None, "costUsd": usd(total), "calls": 205}]
    listed = ok(issue_proxy, LIST)["issues"]
    assert [(i["issue"], i["project"], i["calls"], i["totalCostUsd"]) for i in listed] == [
        ("team/BIG-1", None, 205, usd(total))]


# --- the list: windows, sorting, pages ----------------------------------------------------------------------

@dataclass(frozen=True)
class Raw:
    """One raw call the list test inserts, kept to compute the expected list independently."""

    org: str
    issue: str
    day: int  # days before today (UTC)
    cost: int
    project: str = "web"
    retry: bool = False
    unpriced: bool = False

    @property
    def at(self) -> datetime:
        return datetime.combine(_today() - timedelta(days=self.day), time(12), tzinfo=UTC)


def _today() -> date:
    return datetime.now(UTC).date()


def _record(rid: str, org: str, issue: str, at: datetime, cost: int, *, project: str | None = "web",
            retry_of: str | None = None, unpriced: bool = False) -> CallRecord:
    return CallRecord(request_id=rid, started_at=at, ended_at=at + timedelta(milliseconds=250), status="ok",
                      http_status=200, org=org, endpoint="/v1/chat/completions", provider="openai",
                      model="gpt-4o-mini", project=project, issue=issue, retry_of=retry_of, input_tokens=10,
                      output_tokens=2, cost_nano=cost, catalog_version="unpriced" if unpriced else "test")


RAWS = [
    Raw("acme", "L-2", 2, 5_000),
    Raw("acme", "L-3", 10, 9_000_000_000, project="api"),  # over 2**31 nano: cursors carry big ints
    Raw("acme", "L-4", 40, 7_000),
    Raw("acme", "L-5", 1, 3_000),
    Raw("acme", "L-5", 3, 4_000),
    Raw("acme", "L-5", 1, 1_500, retry=True),
    Raw("acme", "L-6", 5, 5_000, project="api"),
    Raw("acme", "L-7", 100, 1),
    Raw("acme", "L-8", 2, 0, unpriced=True),
    Raw("globex", "L-2", 2, 123_456_789),
    Raw("globex", "G-1", 0, 42),
]
SESSION_L6_MS = 7_200_000  # a 2-hour session on L-6, posted as an event 5 days ago


def _insert_raws(p: Proxy, store_url: str) -> None:
    insert(store_url, [_record(f"r-{i}", r.org, r.issue, r.at, r.cost, project=r.project,
                       retry_of="r-0" if r.retry else None, unpriced=r.unpriced) for i, r in enumerate(RAWS)])
    at = datetime.combine(_today() - timedelta(days=5), time(13), tzinfo=UTC)
    post_events(p, [{"id": "sess-l6", "type": "session.completed", "ts": at.isoformat(), "issue": "L-6",
                     "project": "api", "provider": "openai", "durationMs": SESSION_L6_MS}])


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def expected_list(org: str, first: date, last: date, project: str | None = None) -> dict[str, dict[str, Any]]:
    """The list entries as the raw rows define them, over days `first`..`last`."""
    out: dict[str, dict[str, Any]] = {}
    for r in RAWS:
        if r.org != org or not first <= r.at.date() <= last or (project and r.project != project):
            continue
        e = out.setdefault(r.issue, {"issue": r.issue, "project": r.project, "cost": 0, "compute": 0, "retry": 0,
                                     "calls": 0, "unpriced": 0, "ms": 0, "first": r.at, "last": r.at})
        e["cost"] += r.cost
        e["retry"] += r.cost if r.retry else 0
        e["calls"] += 1
        e["unpriced"] += int(r.unpriced)
        e["first"], e["last"] = min(e["first"], r.at), max(e["last"], r.at)
    session_at = datetime.combine(_today() - timedelta(days=5), time(13), tzinfo=UTC)
    if org == "acme" and "L-6" in out:
        e = out["L-6"]
        e["cost"] += compute_nano(SESSION_L6_MS)
        e["compute"] += compute_nano(SESSION_L6_MS)
        e["ms"] += SESSION_L6_MS
        e["last"] = max(e["last"], session_at)
    return {k: {"issue": k, "project": e["project"], "totalCostUsd": usd(e["cost"]),
                "tokenCostUsd": usd(e["cost"] - e["compute"]), "computeCostUsd": usd(e["compute"]),
                "computeHours": round(e["ms"] / 3_600_000, 6), "retryCostUsd": usd(e["retry"]),
                "calls": e["calls"], "unpricedCalls": e["unpriced"], "firstSeen": _iso(e["first"]),
                "lastSeen": _iso(e["last"]), "_cost": e["cost"], "_last": e["last"]}
            for k, e in out.items()}


def ordered(entries: dict[str, dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    key = sort.lstrip("-")
    desc = sort.startswith("-")
    values = list(entries.values())
    values.sort(key=lambda e: e["issue"])  # the tie-break: issue ascending
    if key == "issue":
        values.sort(key=lambda e: e["issue"], reverse=desc)
    else:
        field = "_cost" if key == "cost" else "_last"
        values.sort(key=lambda e: e[field], reverse=desc)  # stable: ties keep issue order
    return [{k: v for k, v in e.items() if not k.startswith("_")} for e in values]


def all_pages(p: Proxy, key: str = VIEWER, limit: int = 2, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(50):
        body = ok(p, LIST, key, limit=limit, **params, **({"cursor": cursor} if cursor else {}))
        assert len(body["issues"]) <= limit
        items += body["issues"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


def test_list_windows_sorting_and_pages(issue_proxy: Proxy, store_url: str) -> None:
    p = issue_proxy
    _insert_raws(p, store_url)
    today = _today()
    last30, last7, last90 = (today - timedelta(days=n - 1) for n in (30, 7, 90))

    body = ok(p, LIST)  # default: 30d, -cost
    assert body == {"issues": ordered(expected_list("acme", last30, today), "-cost"), "next_cursor": None}
    assert [i["issue"] for i in body["issues"]] == ["L-3", "L-6", "L-5", "L-2", "L-8"]
    for time_range, first in (("7d", last7), ("90d", last90)):
        assert ok(p, LIST, timeRange=time_range)["issues"] == ordered(expected_list("acme", first, today), "-cost")
    frm, to = today - timedelta(days=100), today - timedelta(days=40)
    assert ok(p, LIST, **{"from": frm.isoformat(), "to": to.isoformat()})["issues"] == ordered(
        expected_list("acme", frm, to), "-cost")
    assert [i["issue"] for i in ok(p, LIST, **{"from": frm.isoformat(), "to": to.isoformat()})["issues"]] == [
        "L-4", "L-7"]
    assert ok(p, LIST, project="api")["issues"] == ordered(expected_list("acme", last30, today, "api"), "-cost")

    for sort in ("cost", "-cost", "issue", "-issue", "lastSeen", "-lastSeen"):
        want = ordered(expected_list("acme", last90, today), sort)
        assert ok(p, LIST, sort=sort, timeRange="90d")["issues"] == want, sort
        for limit in (1, 2, 4):
            assert all_pages(p, limit=limit, sort=sort, timeRange="90d") == want, (sort, limit)

    first_page = ok(p, LIST, limit=2, sort="cost")
    assert first_page["next_cursor"]
    assert_seed_error(get(p, LIST, cursor=first_page["next_cursor"], sort="-cost"), 400, "INVALID_REQUEST")
    assert_seed_error(get(p, LIST, cursor="not-a-cursor"), 400, "INVALID_REQUEST")
    assert_seed_error(get(p, LIST, cursor="WyJ4Il0"), 400, "INVALID_REQUEST")  # base64 of ["x"]


def test_list_and_drill_down_are_scoped_to_the_org(issue_proxy: Proxy, store_url: str) -> None:
    p = issue_proxy
    _insert_raws(p, store_url)
    today = _today()
    first = today - timedelta(days=29)
    acme = ordered(expected_list("acme", first, today), "-cost")
    globex = ordered(expected_list("globex", first, today), "-cost")
    assert ok(p, LIST, ADMIN)["issues"] == acme
    assert ok(p, LIST, OTHER)["issues"] == globex
    assert {i["issue"] for i in globex} == {"L-2", "G-1"}
    # A non-root key naming another org gets nothing of it; the root admin naming acme sees acme's numbers.
    for key in (OTHER, VIEWER, ADMIN):
        other_org = "acme" if key == OTHER else "globex"
        assert_seed_error(get(p, LIST, key, headers={"X-Org-ID": other_org}), 403, "FORBIDDEN")
        assert_seed_error(get(p, f"{LIST}/L-2", key, headers={"X-Org-ID": other_org}), 403, "FORBIDDEN")
    r = get(p, LIST, ROOT, headers={"X-Org-ID": "acme"})
    assert r.status_code == 200 and r.json()["issues"] == acme
    r = get(p, f"{LIST}/L-2", ROOT, headers={"X-Org-ID": "globex"})
    assert r.status_code == 200 and r.json()["totalCostUsd"] == usd(123_456_789)
    # The same issue id in two orgs: each org sees only its own calls.
    assert ok(p, f"{LIST}/L-2", OTHER)["totalCostUsd"] == usd(123_456_789)
    mine = ok(p, f"{LIST}/L-2", VIEWER)
    assert mine["totalCostUsd"] == usd(5_000) and [c["request_id"] for c in mine["calls"]] == ["r-0"]
    assert_seed_error(get(p, f"{LIST}/L-3", OTHER), 404, "NOT_FOUND")
    assert_seed_error(get(p, f"{LIST}/G-1", VIEWER), 404, "NOT_FOUND")
    assert ok(p, LIST, OTHER, project="api")["issues"] == []
    # The root admin without X-Org-ID reads every org: one issue id used in two orgs is one line (documented).
    merged = {i["issue"]: i for i in ok(p, LIST, ROOT)["issues"]}
    assert merged["L-2"]["totalCostUsd"] == usd(5_000 + 123_456_789) and merged["L-2"]["calls"] == 2
    assert set(merged) == {i["issue"] for i in acme + globex}


def test_roles_and_bad_parameters(issue_proxy: Proxy) -> None:
    p = issue_proxy
    assert_seed_error(get(p, LIST, AGENT), 403, "FORBIDDEN")
    assert_seed_error(get(p, f"{LIST}/ENG-1", AGENT), 403, "FORBIDDEN")
    with p.client("sk-not-a-key") as c:
        assert_seed_error(c.get(LIST), 401, "UNAUTHORIZED")
    bad_windows: list[dict[str, Any]] = [
        {"timeRange": "14d"}, {"from": "yesterday"}, {"to": "2026-13-01"}, {"from": "2026-05-09", "to": "2026-05-01"},
        {"timeRange": "7d", "from": "2026-05-01"}, {"from": "2024-01-01", "to": "2026-01-01"}]
    for params in bad_windows:
        assert_seed_error(get(p, LIST, **params), 400, "INVALID_TIME_RANGE")
    bad_params: list[dict[str, Any]] = [
        {"sort": "price"}, {"sort": "--cost"}, {"limit": "0"}, {"limit": "501"}, {"limit": "ten"},
        {"project": "x" * 200}]
    for params in bad_params:
        assert_seed_error(get(p, LIST, **params), 400, "INVALID_REQUEST")
    assert ok(p, LIST, limit=500, sort="lastSeen") == {"issues": [], "next_cursor": None}
    since = (_today() - timedelta(days=300)).isoformat()
    assert ok(p, LIST, **{"from": since})["issues"] == []
