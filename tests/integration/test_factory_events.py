"""POST /api/factory/events and POST /api/factory/aggregate on SQLite and PostgreSQL: validation, idempotency,
org scoping, rollups at ingest (checked against sums computed here from the raw rows posted), and a rebuild
that gives back exactly the incremental buckets."""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest
from sqlalchemy import select

from proxy.store.config import StoreConfig
from proxy.store.db import Store
from proxy.store.models import issue_days, metric_buckets, run_agents, station_visits
from proxy.store.records import CallRecord
from tests.error_shapes import assert_seed_error
from tests.harness import ADMIN, AGENT, OTHER, ROOT, VIEWER, Proxy, expected_nano, make_settings

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC).replace(microsecond=0)
RATE_NANO_PER_HOUR = 80_000_000  # the default compute_hourly_rate_usd, 0.08


def iso(ts: datetime) -> str:
    return ts.isoformat()


def post(proxy: Proxy, body: Any, key: str = ADMIN, **headers: str) -> Any:
    with proxy.client(key) as c:
        return c.post("/api/factory/events", json=body, headers=headers)


def sessions(n: int, *, org_days: int = 3) -> list[dict[str, Any]]:
    """Sessions and executions spread over a few days, stations, agents and providers."""
    events: list[dict[str, Any]] = []
    for i in range(n):
        ts = NOW - timedelta(days=i % org_days, hours=i % 5, minutes=i)
        events.append({"id": f"s-{i}", "type": "session.completed", "ts": iso(ts), "issue": f"I-{i % 4}",
                       "station": ("development", "qa")[i % 2], "agent": f"agent-{i % 3}", "run": f"run-{i % 2}",
                       "provider": ("anthropic", "openai")[i % 2], "model": "m", "costUsd": 0.125 * (i + 1),
                       "inputTokens": 100 * i, "outputTokens": 10 * i, "durationMs": 60_000 * (i + 1),
                       "metered": i % 3 != 0})
        events.append({"id": f"x-{i}", "type": "execution", "ts": iso(ts), "issue": f"I-{i % 4}",
                       "kind": "test_run", "durationMs": 90_000 * (i + 1),
                       **({"costUsd": 0.01} if i % 2 else {})})
    return events


def station_moves() -> list[dict[str, Any]]:
    """Issues I-0..I-3 through development and qa: a rework and re-entry on even issues, I-3 left in qa."""
    events: list[dict[str, Any]] = []
    for i in range(4):
        for s, station in enumerate(("development", "qa")):
            t = NOW - timedelta(hours=10 * i + 3 * s + 5)
            base = {"issue": f"I-{i}", "station": station}
            events.append({"id": f"m-{i}-{s}-in", "type": "station.entered", "ts": iso(t), **base})
            if i % 2 == 0:
                events += [{"id": f"m-{i}-{s}-rw", "type": "station.completed", "ts": iso(t + timedelta(hours=1)),
                            "outcome": "rework", **base},
                           {"id": f"m-{i}-{s}-in2", "type": "station.entered",
                            "ts": iso(t + timedelta(minutes=90)), **base}]
            if (i, station) != (3, "qa"):
                events.append({"id": f"m-{i}-{s}-ok", "type": "station.completed", "ts": iso(t + timedelta(hours=2)),
                               "outcome": "passed", **base})
    return events


def expected_visits(events: list[dict[str, Any]]) -> int:
    """One visit per completion, plus one per (issue, station) whose latest entry no completion follows."""
    open_ = 0
    for key in {(e["issue"], e["station"]) for e in events}:
        at = [(datetime.fromisoformat(e["ts"]), e["type"]) for e in events if (e["issue"], e["station"]) == key]
        entered = [ts for ts, kind in at if kind == "station.entered"]
        done = [ts for ts, kind in at if kind == "station.completed"]
        open_ += bool(entered) and (not done or max(entered) > max(done))
    return sum(e["type"] == "station.completed" for e in events) + open_


def expected_event_cost(event: dict[str, Any]) -> tuple[int, int]:
    """(cost, compute) nano-USD an event adds, computed from the posted JSON."""
    compute = math.ceil(event["durationMs"] * RATE_NANO_PER_HOUR / 3_600_000)
    if event["type"] == "execution":
        compute = round(event["costUsd"] * 1e9) if "costUsd" in event else compute
        return compute, compute
    tokens = round(event["costUsd"] * 1e9) if event["metered"] is False else 0
    return compute + tokens, compute


async def _table(url: str, table: Any) -> list[dict[str, Any]]:
    store = await Store.open(StoreConfig(url=url))
    try:
        async with store.engine.connect() as conn:
            rows = (await conn.execute(select(table))).mappings().all()
        return sorted((dict(r) for r in rows), key=lambda r: tuple(str(r[c.name]) for c in table.primary_key))
    finally:
        await store.close()


def table(proxy: Proxy, t: Any) -> list[dict[str, Any]]:
    return asyncio.run(_table(proxy.settings.store.url, t))


def test_events_are_accepted_once_and_duplicates_counted(any_store_proxy: Proxy) -> None:
    proxy = any_store_proxy
    one = {"id": "e-1", "type": "issue.created", "ts": iso(NOW), "issue": "I-1"}
    r = post(proxy, one)
    assert r.status_code == 200 and r.json() == {"accepted": 1, "duplicates": 0}
    batch = {"events": [one, {"id": "e-2", "type": "issue.completed", "ts": iso(NOW), "issue": "I-1"},
                        {"id": "e-2", "type": "issue.completed", "ts": iso(NOW), "issue": "I-1"}]}
    assert post(proxy, batch).json() == {"accepted": 1, "duplicates": 2}
    # The same id in another org is another event.
    assert post(proxy, one, key=OTHER).json() == {"accepted": 1, "duplicates": 0}
    # An agent key of the org may post (the factory's orchestrator); the event's org is the key's.
    assert post(proxy, {**one, "id": "e-3"}, key=AGENT).json() == {"accepted": 1, "duplicates": 0}


def test_concurrent_posts_of_one_event_store_it_once(any_store_proxy: Proxy) -> None:
    proxy = any_store_proxy
    event = {"id": "dup", "type": "session.completed", "ts": iso(NOW), "provider": "openai", "costUsd": 1.0,
             "durationMs": 1000, "metered": False, "issue": "I-9"}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(proxy, event).json(), range(16)))
    assert sum(a["accepted"] for a in answers) == 1 and sum(a["duplicates"] for a in answers) == 15
    day = [b for b in table(proxy, metric_buckets) if b["grain"] == "day"]
    assert sum(b["cost_nano"] for b in day) == expected_event_cost(event)[0]


@pytest.mark.parametrize("event, field", [
    ({"type": "issue.created", "ts": iso(NOW), "issue": "I"}, "event.id"),
    ({"id": "a", "type": "issue.created", "ts": "2026-01-01T10:00:00", "issue": "I"}, "event.ts"),
    ({"id": "a", "type": "issue.created", "ts": iso(NOW + timedelta(days=3)), "issue": "I"}, "event.ts"),
    ({"id": "a", "type": "issue.shipped", "ts": iso(NOW)}, "event.type"),
    ({"id": "a", "type": "station.completed", "ts": iso(NOW), "issue": "I", "station": "qa", "outcome": "meh"},
     "event.outcome"),
    ({"id": "a", "type": "session.completed", "ts": iso(NOW), "provider": "p", "costUSD": 3}, "event.costUSD"),
    ({"id": "a", "type": "session.completed", "ts": iso(NOW), "provider": "p", "costUsd": -1}, "event.costUsd"),
    ({"id": "a", "type": "execution", "ts": iso(NOW), "kind": "test_run", "durationMs": "5"}, "event.durationMs"),
    ({"id": "a", "type": "handoff.decided", "ts": iso(NOW), "issue": "I", "decision": "approved",
      "overridden": "yes"}, "event.overridden"),
    ({"id": "a" * 129, "type": "issue.created", "ts": iso(NOW), "issue": "I"}, "event.id"),
])
def test_bad_events_get_a_400_naming_the_field(proxy: Proxy, event: dict[str, Any], field: str) -> None:
    err = assert_seed_error(post(proxy, event), 400, "INVALID_REQUEST")
    assert field in err["message"], err
    err = assert_seed_error(post(proxy, {"events": [{"id": "ok", "type": "issue.created", "ts": iso(NOW),
                                                     "issue": "I"}, event]}), 400, "INVALID_REQUEST")
    assert field.replace("event", "events[1]") in err["message"], err
    with proxy.client() as c:  # nothing of a refused batch is stored
        assert c.get("/api/calls").status_code == 200
    assert post(proxy, {"id": "ok", "type": "issue.created", "ts": iso(NOW), "issue": "I"}).json()["accepted"] == 1


def test_malformed_bodies_and_access(proxy: Proxy) -> None:
    with proxy.client() as c:
        assert_seed_error(c.post("/api/factory/events", content=b"{nope"), 400, "INVALID_REQUEST")
        assert_seed_error(c.post("/api/factory/events", json=[1, 2]), 400, "INVALID_REQUEST")
        assert_seed_error(c.post("/api/factory/events", json={"events": []}), 400, "INVALID_REQUEST")
        too_many = {"events": [{"id": str(i), "type": "issue.created", "ts": iso(NOW), "issue": "I"}
                               for i in range(1001)]}
        assert_seed_error(c.post("/api/factory/events", json=too_many), 400, "INVALID_REQUEST")
        assert_seed_error(c.post("/api/factory/events", content=b"x" * 300_000), 413, "REQUEST_TOO_LARGE")
    event = {"id": "a", "type": "issue.created", "ts": iso(NOW), "issue": "I"}
    assert_seed_error(post(proxy, event, key="sk-nobody"), 401, "UNAUTHORIZED")
    assert_seed_error(post(proxy, event, key=VIEWER), 403, "FORBIDDEN")  # viewers read, they do not write
    assert_seed_error(post(proxy, {**event, "org": "globex"}), 403, "FORBIDDEN")
    assert_seed_error(post(proxy, event, **{"X-Org-ID": "globex"}), 403, "FORBIDDEN")
    assert_seed_error(post(proxy, event, key=ROOT), 400, "INVALID_REQUEST")  # an org-"*" key must name one
    assert post(proxy, event, key=ROOT, **{"X-Org-ID": "initech"}).json()["accepted"] == 1
    assert post(proxy, {**event, "id": "b", "org": "initech"}, key=ROOT).json()["accepted"] == 1
    with proxy.client(AGENT) as c:  # only admins rebuild
        assert_seed_error(c.post("/api/factory/aggregate"), 403, "FORBIDDEN")


def _calls(n: int) -> list[CallRecord]:
    records = []
    for i in range(n):
        start = NOW - timedelta(days=i % 3, hours=i % 7, minutes=2 * i)
        records.append(CallRecord(
            request_id=f"call-{i}", started_at=start, ended_at=start + timedelta(milliseconds=100 + i),
            status=("ok", "ok", "error", "refused")[i % 4], http_status=200, org=("acme", "globex")[i % 5 == 0],
            endpoint="/v1/chat/completions", provider=("openai", "anthropic")[i % 2], model=f"m{i % 3}",
            project="web" if i % 2 else None, agent=f"agent-{i % 3}", station=("qa", None)[i % 3 == 0],
            run=f"run-{i % 2}", issue=f"I-{i % 4}" if i % 5 else None, retry_of="call-0" if i % 6 == 5 else None,
            input_tokens=10 * i, output_tokens=i, cost_nano=1000 * i + 7,
            catalog_version="unpriced" if i % 7 == 3 else "v1"))
    return records


async def _insert(url: str, records: list[CallRecord]) -> None:
    store = await Store.open(StoreConfig(url=url))
    try:
        await store.insert_new_calls(records)
        await store.insert_new_calls(records[:10])  # a replay adds nothing
    finally:
        await store.close()


def test_rollups_at_ingest_match_the_raw_rows_and_a_rebuild_gives_them_back(any_store_proxy: Proxy) -> None:
    proxy = any_store_proxy
    events = sessions(12)
    assert post(proxy, {"events": events}).json() == {"accepted": 24, "duplicates": 0}
    records = _calls(40)
    asyncio.run(_insert(proxy.settings.store.url, records))
    # Station events newest first (completions before their entries), in overlapping batches (duplicates).
    moves = station_moves()[::-1]
    for key in (ADMIN, OTHER):
        for i in range(0, len(moves), 5):
            assert post(proxy, {"events": moves[max(0, i - 2): i + 5]}, key=key).status_code == 200
    visit_rows = table(proxy, station_visits)
    assert sum(v["org"] == "acme" for v in visit_rows) == expected_visits(moves) == 12

    # Independent sums, per org and day, from what was posted and inserted.
    want: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])  # cost, compute, calls, err, unpriced
    for e in events:
        cost, compute = expected_event_cost(e)
        calls = int(e["type"] == "session.completed" and e["metered"] is False)
        key = ("acme", datetime.fromisoformat(e["ts"]).date().isoformat())
        for i, v in enumerate((cost, compute, calls, 0, 0)):
            want[key][i] += v
    for rec in records:
        if rec.status == "refused":
            continue
        key = (rec.org, rec.started_at.date().isoformat())
        for i, v in enumerate((rec.cost_nano, 0, 1, int(rec.status == "error"), int(rec.catalog_version == "unpriced"))):
            want[key][i] += v
    got: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for b in table(proxy, metric_buckets):
        if b["grain"] == "day":
            for i, col in enumerate(("cost_nano", "compute_nano", "calls", "errors", "unpriced")):
                got[(b["org"], b["bucket_start"].date().isoformat())][i] += b[col]
    assert dict(got) == dict(want)
    hours = [b for b in table(proxy, metric_buckets) if b["grain"] == "hour"]
    assert sum(b["cost_nano"] for b in hours) == sum(v[0] for v in want.values())

    # Issue and run rollups: totals per issue / per (run, agent).
    issue_want: dict[str, int] = defaultdict(int)
    retry_want: dict[str, int] = defaultdict(int)
    for e in events:
        issue_want[e["issue"]] += expected_event_cost(e)[0]
    for rec in records:
        if rec.status != "refused" and rec.issue and rec.org == "acme":
            issue_want[rec.issue] += rec.cost_nano
            retry_want[rec.issue] += rec.cost_nano if rec.retry_of else 0
    issue_got: dict[str, int] = defaultdict(int)
    retry_got: dict[str, int] = defaultdict(int)
    for row in table(proxy, issue_days):
        if row["org"] == "acme":
            issue_got[row["issue"]] += row["cost_nano"]
            retry_got[row["issue"]] += row["retry_nano"]
    assert issue_got == issue_want and {k: v for k, v in retry_got.items() if v} == {
        k: v for k, v in retry_want.items() if v}
    run_want: dict[tuple[str, str], int] = defaultdict(int)
    for e in events:
        if e["type"] == "session.completed":
            run_want[(e["run"], e["agent"])] += expected_event_cost(e)[0]
    for rec in records:
        if rec.status != "refused" and rec.org == "acme":
            run_want[(rec.run or "", rec.agent or "")] += rec.cost_nano
    run_got = {(r["run"], r["agent"]): r["cost_nano"] for r in table(proxy, run_agents) if r["org"] == "acme"}
    assert run_got == dict(run_want)

    rolled = (metric_buckets, issue_days, run_agents, station_visits)
    snapshot = {t.name: table(proxy, t) for t in rolled}
    with proxy.client() as c:  # acme's admin rebuilds acme only; globex's rows are left as they were
        r = c.post("/api/factory/aggregate")
    assert r.status_code == 200, r.text
    assert r.json()["rebuilt"]["calls"] == sum(1 for rec in records if rec.org == "acme")
    assert r.json()["rebuilt"]["stationVisits"] == 12
    assert {t.name: table(proxy, t) for t in rolled} == snapshot
    with proxy.client(ROOT) as c:  # every org
        assert c.post("/api/factory/aggregate").status_code == 200
    assert {t.name: table(proxy, t) for t in rolled} == snapshot


def test_a_proxied_call_lands_in_the_buckets(any_store_proxy: Proxy) -> None:
    proxy = any_store_proxy
    client = openai.OpenAI(base_url=proxy.base, api_key=ADMIN, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="fake-in100-out20", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-Spendgate-Issue": "I-7", "X-Spendgate-Station": "qa", "X-Spendgate-Run": "r-1"})
    proxy.call_row(raw.headers["x-spendgate-request-id"])
    cost = expected_nano("gpt-4o-mini", input=100, output=20)
    day = [b for b in table(proxy, metric_buckets) if b["grain"] == "day"]
    assert [(b["org"], b["station"], b["provider"], b["model"], b["cost_nano"], b["calls"], b["input_tokens"],
             b["output_tokens"]) for b in day] == [("acme", "qa", "openai", "fake-in100-out20", cost, 1, 100, 20)]
    assert [(r["issue"], r["cost_nano"], r["calls"]) for r in table(proxy, issue_days)] == [("I-7", cost, 1)]
    assert [(r["run"], r["cost_nano"]) for r in table(proxy, run_agents)] == [("r-1", cost)]


def test_past_the_rate_limit_a_key_gets_429_with_retry_after(upstream: Any, tmp_path: Any, closed_port: int) -> None:
    settings = make_settings(upstream, tmp_path, closed_port,
                             server={"max_body_bytes": 200_000, "metrics_rate_limit_per_minute": 3})
    event = {"id": "a", "type": "issue.created", "ts": iso(NOW), "issue": "I"}
    with Proxy(settings) as proxy:
        assert [post(proxy, event).status_code for _ in range(3)] == [200, 200, 200]
        r = post(proxy, event)
        assert_seed_error(r, 429, "RATE_LIMITED")
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert post(proxy, event, key=AGENT).status_code == 200  # the limit is per key


def test_posted_events_read_back_newest_first_by_page_and_filter(any_store_proxy: Proxy) -> None:
    proxy = any_store_proxy
    events = [{"id": f"p-{i:02d}", "type": ("issue.created", "issue.completed")[i % 2],
               "ts": iso(NOW - timedelta(minutes=i)), "issue": f"I-{i % 3}", "meta": {"n": i}} for i in range(25)]
    assert post(proxy, {"events": events}).json()["accepted"] == 25
    assert post(proxy, {"id": "g-1", "type": "issue.created", "ts": iso(NOW), "issue": "I-0"}, key=OTHER).status_code == 200
    seen: list[str] = []
    cursor = None
    with proxy.client(VIEWER) as c:
        while True:
            r = c.get("/api/factory/events", params={"limit": 10, **({"cursor": cursor} if cursor else {})})
            assert r.status_code == 200, r.text
            page = r.json()
            seen += [e["id"] for e in page["events"]]
            assert all(e["org"] == "acme" for e in page["events"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [e["id"] for e in events]  # ts descending: p-00 is the newest
        first = c.get("/api/factory/events", params={"limit": 1}).json()["events"][0]
        assert first["meta"] == {"n": 0} and first["issue"] == "I-0" and first["receivedAt"].endswith("Z")
        done = c.get("/api/factory/events", params={"type": "issue.completed", "issue": "I-1"}).json()["events"]
        assert [e["id"] for e in done] == [e["id"] for e in events if e["type"] == "issue.completed"
                                           and e["issue"] == "I-1"]
        assert_seed_error(c.get("/api/factory/events", params={"cursor": "nope"}), 400, "INVALID_REQUEST")
        assert_seed_error(c.get("/api/factory/events", params={"limit": 0}), 400, "INVALID_REQUEST")
    with proxy.client(OTHER) as c:
        assert [e["id"] for e in c.get("/api/factory/events").json()["events"]] == ["g-1"]
    with proxy.client(AGENT) as c:
        assert_seed_error(c.get("/api/factory/events"), 403, "FORBIDDEN")
