"""The station_visits rollup on SQLite and PostgreSQL: whatever order the station events arrive in (a
completion before its entry, one event per request, duplicates, concurrent posts of one issue's events), the
rows equal the visits written out by hand here from docs/metrics.md's pairing, and a rebuild gives them back."""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select

from proxy.store.config import StoreConfig
from proxy.store.db import Store
from proxy.store.models import station_visits
from tests.harness import ADMIN, OTHER, ROOT, Proxy

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC).replace(microsecond=0)


def ago(hours: float) -> datetime:
    return NOW - timedelta(hours=hours)


def scenario() -> list[dict[str, Any]]:
    """Events (ts as datetimes), chronological within each issue."""
    ev: list[dict[str, Any]] = []

    def add(id_: str, type_: str, hours: float, issue: str, station: str | None = None, **fields: Any) -> None:
        ev.append({"id": id_, "type": type_, "ts": ago(hours), "issue": issue,
                   **({"station": station} if station else {}), **fields})

    # V-1: rework then pass at development (re-entered); sits in qa until the issue completes.
    add("v1-1", "station.entered", 10, "V-1", "development")
    add("v1-2", "station.completed", 9, "V-1", "development", outcome="rework")
    add("v1-3", "station.entered", 8, "V-1", "development")
    add("v1-4", "station.completed", 7, "V-1", "development", outcome="passed")
    add("v1-5", "station.entered", 6, "V-1", "qa")
    add("v1-6", "issue.completed", 5, "V-1")
    # V-2: a completion with no entry before it, then an entry still open.
    add("v2-1", "station.completed", 4, "V-2", "qa", outcome="passed")
    add("v2-2", "station.entered", 3, "V-2", "qa")
    # V-3: entry and completion at one instant.
    add("v3-1", "station.entered", 2, "V-3", "security")
    add("v3-2", "station.completed", 2, "V-3", "security", outcome="passed")
    # V-4: an entry superseded by a later one; two completions pairing with the later entry.
    add("v4-1", "station.entered", 20, "V-4", "research")
    add("v4-2", "station.entered", 12, "V-4", "research")
    add("v4-3", "station.completed", 11, "V-4", "research", outcome="rework")
    add("v4-4", "station.completed", 10, "V-4", "research", outcome="passed")
    # V-5: a rework and a pass at the same instant: the rework is not before the pass.
    add("v5-1", "station.entered", 6, "V-5", "deploy")
    add("v5-a", "station.completed", 5, "V-5", "deploy", outcome="rework")
    add("v5-b", "station.completed", 5, "V-5", "deploy", outcome="passed")
    # V-6: completed, then reopened into qa: in progress again.
    add("v6-1", "issue.completed", 9, "V-6")
    add("v6-2", "station.entered", 1, "V-6", "qa")
    return ev


# (issue, station, seq, entered h ago, completed h ago, outcome, reworks_before, previous completion h ago,
# previous pass h ago, issue_done), from the pairing rules: a completion pairs with the latest entry at or
# before it; an open row when the latest entry has no completion at or after it; reworks_before counts rework
# outcomes strictly earlier.
EXPECTED = [
    ("V-1", "development", 0, 10, 9, "rework", 0, None, None, False),
    ("V-1", "development", 1, 8, 7, "passed", 1, 9, None, False),
    ("V-1", "qa", 0, 6, None, None, 0, None, None, True),
    ("V-2", "qa", 0, None, 4, "passed", 0, None, None, False),
    ("V-2", "qa", 1, 3, None, None, 0, 4, 4, False),
    ("V-3", "security", 0, 2, 2, "passed", 0, None, None, False),
    ("V-4", "research", 0, 12, 11, "rework", 0, None, None, False),
    ("V-4", "research", 1, 12, 10, "passed", 1, 11, None, False),
    ("V-5", "deploy", 0, 6, 5, "rework", 0, None, None, False),
    ("V-5", "deploy", 1, 6, 5, "passed", 0, 5, None, False),
    ("V-6", "qa", 0, 1, None, None, 0, None, None, False),
]


def expected_rows() -> list[tuple[Any, ...]]:
    """As read back: times as datetimes, and the stay (completed - entered) in microseconds."""
    def at(hours: float | None) -> datetime | None:
        return None if hours is None else ago(hours)

    return [(i, s, n, at(e), at(c), o, None if e is None or c is None else (e - c) * 3_600_000_000, r, at(pc),
             at(pp), d) for i, s, n, e, c, o, r, pc, pp, d in EXPECTED]


def wire(event: dict[str, Any], i: int) -> dict[str, Any]:
    """The event as JSON, its ts in one of several UTC offsets."""
    offset = timezone((timedelta(0), timedelta(hours=5, minutes=30), timedelta(hours=-7))[i % 3])
    return {**event, "ts": event["ts"].astimezone(offset).isoformat()}


def post(proxy: Proxy, events: list[dict[str, Any]], key: str = ADMIN, **headers: str) -> dict[str, int]:
    with proxy.client(key) as c:
        r = c.post("/api/factory/events", json={"events": [wire(e, i) for i, e in enumerate(events)]},
                   headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def _visits(url: str) -> dict[str, list[tuple[Any, ...]]]:
    store = await Store.open(StoreConfig(url=url))
    try:
        async with store.engine.connect() as conn:
            rows = (await conn.execute(select(station_visits))).mappings().all()
    finally:
        await store.close()
    by_org: dict[str, list[tuple[Any, ...]]] = {}
    for r in rows:
        by_org.setdefault(r["org"], []).append((r["issue"], r["station"], r["seq"], r["entered_at"],
                                                r["completed_at"], r["outcome"], r["stay_us"],
                                                r["reworks_before"], r["prev_completed_at"],
                                                r["prev_passed_at"], bool(r["issue_done"])))
    return {org: sorted(found, key=lambda t: (t[0], t[1], t[2])) for org, found in by_org.items()}


def visits(proxy: Proxy) -> dict[str, list[tuple[Any, ...]]]:
    return asyncio.run(_visits(proxy.settings.store.url))


def test_visits_do_not_depend_on_arrival_order_and_a_rebuild_gives_them_back(any_store_proxy: Proxy) -> None:
    proxy = any_store_proxy
    events = scenario()
    # acme: one batch, in time order.
    assert post(proxy, events) == {"accepted": len(events), "duplicates": 0}
    # globex: newest first (every completion before its entry), one event per request, each posted twice.
    for event in reversed(events):
        assert post(proxy, [event], OTHER) == {"accepted": 1, "duplicates": 0}
        assert post(proxy, [event], OTHER) == {"accepted": 0, "duplicates": 1}
    # initech: shuffled batches of three, each batch carrying a duplicate of an earlier event.
    shuffled = random.Random(4).sample(events, len(events))
    for i in range(0, len(shuffled), 3):
        batch = shuffled[i: i + 3] + shuffled[max(0, i - 1): i]
        assert post(proxy, batch, ROOT, **{"X-Org-ID": "initech"})["accepted"] == len(shuffled[i: i + 3])
    want = expected_rows()
    assert visits(proxy) == {"acme": want, "globex": want, "initech": want}
    with proxy.client(ADMIN) as c:  # acme only
        r = c.post("/api/factory/aggregate")
    assert r.status_code == 200 and r.json()["rebuilt"]["stationVisits"] == len(want), r.text
    with proxy.client(ROOT) as c:  # every org
        assert c.post("/api/factory/aggregate").json()["rebuilt"]["stationVisits"] == 3 * len(want)
    assert visits(proxy) == {"acme": want, "globex": want, "initech": want}


def test_concurrent_posts_of_one_issues_events_leave_its_visits_complete(any_store_proxy: Proxy) -> None:
    """Each request recomputes the issue from the events it can see; the issue lock orders the recomputes,
    so the last one sees every event (without it, two batches could each miss the other's events)."""
    proxy = any_store_proxy
    events = scenario()
    order = random.Random(9).sample(events, len(events))
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda e: post(proxy, [e]), order))
    assert sum(a["accepted"] for a in answers) == len(events)
    assert visits(proxy) == {"acme": expected_rows()}


def test_a_full_batch_touching_hundreds_of_issues_and_stations(any_store_proxy: Proxy) -> None:
    """999 keys are recomputed in chunks; an issue whose stations fall on both sides of a chunk's edge is
    still written once per station."""
    stations = ("research", "development", "qa")
    events = [{"id": f"b-{i}-{s}", "type": "station.entered", "ts": ago(i / 100), "issue": f"B-{i:03d}",
               "station": s} for i in range(333) for s in stations]
    done = [{"id": f"d-{i}", "type": "issue.completed", "ts": ago(0), "issue": f"B-{i:03d}"} for i in range(0, 333, 2)]
    assert post(proxy := any_store_proxy, events) == {"accepted": 999, "duplicates": 0}
    assert post(proxy, done)["accepted"] == len(done)
    want = sorted((f"B-{i:03d}", s, 0, ago(i / 100), None, None, None, 0, None, None, i % 2 == 0)
                  for i in range(333) for s in stations)
    assert visits(proxy) == {"acme": want}
