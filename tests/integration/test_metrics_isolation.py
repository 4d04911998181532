"""Tenant isolation across every read endpoint of the metrics family: a key of one org never sees another org's
numbers, through no endpoint, filter or header; only an org-"*" admin picks an org with X-Org-ID.

Each org's data carries markers (ids, names and a cost) that appear nowhere else, so "never sees" is checked
on the raw response text, whatever the endpoint's shape."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from proxy.store.config import StoreConfig
from proxy.store.db import Store
from proxy.store.records import CallRecord
from tests.error_shapes import assert_seed_error
from tests.harness import ADMIN, OTHER, ROOT, VIEWER, Proxy

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC).replace(microsecond=0)
# A cost no other number in a response can equal by accident: 1.234567 USD and 7.654321 USD.
MARK_COST = {"acme": 1_234_567_000, "globex": 7_654_321_000}


def marker(org: str) -> str:
    return f"zz{org}mark"


def _records(org: str) -> list[CallRecord]:
    m = marker(org)
    start = NOW - timedelta(minutes=5)
    return [CallRecord(request_id=f"{m}-call-{i}", started_at=start, ended_at=start + timedelta(seconds=1),
                       status="ok", http_status=200, org=org, endpoint="/v1/chat/completions",
                       provider=f"{m}-prov", model=f"{m}-model", project=f"{m}-proj", agent=f"{m}-agent",
                       station=f"{m}-station", run=f"{m}-run", issue=f"{m}-issue", input_tokens=1000 + i,
                       output_tokens=100, cost_nano=MARK_COST[org] if i == 0 else 1)
            for i in range(2)]


def _events(org: str) -> list[dict[str, Any]]:
    m = marker(org)
    ts = (NOW - timedelta(minutes=4)).isoformat()
    later = (NOW - timedelta(minutes=3)).isoformat()
    return [
        {"id": f"{m}-1", "type": "issue.created", "ts": ts, "issue": f"{m}-issue", "project": f"{m}-proj"},
        {"id": f"{m}-2", "type": "station.entered", "ts": ts, "issue": f"{m}-issue", "station": f"{m}-station"},
        {"id": f"{m}-3", "type": "station.completed", "ts": later, "issue": f"{m}-issue",
         "station": f"{m}-station", "outcome": "passed", "provider": f"{m}-prov"},
        {"id": f"{m}-4", "type": "handoff.requested", "ts": ts, "issue": f"{m}-issue", "handoffId": f"{m}-h",
         "strategy": f"{m}-strategy"},
        {"id": f"{m}-5", "type": "handoff.decided", "ts": later, "issue": f"{m}-issue", "handoffId": f"{m}-h",
         "decision": "approved", "overridden": True},
        {"id": f"{m}-6", "type": "issue.completed", "ts": later, "issue": f"{m}-issue"},
        {"id": f"{m}-7", "type": "pipeline.run", "ts": ts, "run": f"{m}-run", "name": f"{m}-pipe",
         "status": "success", "commit": f"{m}-sha", "branch": f"{m}-branch", "trigger": "push"},
        {"id": f"{m}-8", "type": "deployment", "ts": later, "version": f"{m}-v1", "environment": f"{m}-env",
         "status": "success", "deployedBy": f"{m}-bot", "commit": f"{m}-sha"},
        {"id": f"{m}-9", "type": "incident.opened", "ts": ts, "incidentId": f"{m}-inc", "title": f"{m}-title"},
        {"id": f"{m}-10", "type": "session.completed", "ts": later, "issue": f"{m}-issue", "run": f"{m}-run",
         "agent": f"{m}-agent", "provider": f"{m}-prov", "project": f"{m}-proj", "durationMs": 60_000},
    ]


async def _insert(url: str) -> None:
    store = await Store.open(StoreConfig(url=url))
    try:
        await store.insert_new_calls(_records("acme") + _records("globex"))
    finally:
        await store.close()


def _reads(org: str) -> list[str]:
    """Every read path of the family, with the other org's filters where a filter exists."""
    m = marker(org)
    paths = [f"/api/factory/metrics?metricType={t}&timeRange=7d"
             for t in ("aggregate", "station", "cost", "provider", "handoff", "phase", "devops")]
    return paths + [
        "/api/factory/cost-per-issue", f"/api/factory/cost-per-issue?project={m}-proj",
        f"/api/factory/cost-per-issue/{m}-issue",
        "/api/v1/admin/metrics/cost-optimization",
        f"/api/ai-cost/monthly-summary?projectId={m}-proj", f"/api/ai-cost/monthly-trend?projectId={m}-proj",
        "/api/ai-cost/cross-project-summary", f"/api/ai-cost/recent-transactions?projectId={m}-proj",
    ]


@pytest.fixture
def loaded(any_store_proxy: Proxy) -> Proxy:
    proxy = any_store_proxy
    for org, key in (("acme", ADMIN), ("globex", OTHER)):
        with proxy.client(key) as c:
            r = c.post("/api/factory/events", json={"events": _events(org)})
            assert r.status_code == 200 and r.json()["accepted"] == 10, r.text
    asyncio.run(_insert(proxy.settings.store.url))
    return proxy


def _visible(text: str, org: str) -> bool:
    return marker(org) in text or str(MARK_COST[org] / 1e9) in text


def test_no_key_reads_another_orgs_numbers_through_any_endpoint_or_filter(loaded: Proxy) -> None:
    proxy = loaded
    seen_own = 0
    for key, own, other in ((ADMIN, "acme", "globex"), (VIEWER, "acme", "globex"), (OTHER, "globex", "acme")):
        with proxy.client(key) as c:
            for path in _reads(own) + _reads(other):
                r = c.get(path)
                if r.status_code == 404:  # the other org's issue does not exist for this key (404 may echo its id)
                    assert path.startswith("/api/factory/cost-per-issue/") and marker(other) in path, path
                    assert str(MARK_COST[other] / 1e9) not in r.text
                    continue
                assert r.status_code == 200, (path, r.status_code, r.text)
                assert not _visible(r.text, other), (key, path, r.text)
                seen_own += _visible(r.text, own)
            # Naming the other org is refused outright, on every path.
            for path in _reads(other):
                assert_seed_error(c.get(path, headers={"X-Org-ID": other}), 403, "FORBIDDEN")
    assert seen_own >= 30  # the checks above looked at real answers, not empty ones


def test_an_org_star_admin_reads_the_org_it_names(loaded: Proxy) -> None:
    proxy = loaded
    with proxy.client(ROOT) as c:
        for own, other in (("acme", "globex"), ("globex", "acme")):
            shown = 0
            for path in _reads(own):
                r = c.get(path, headers={"X-Org-ID": own})
                assert r.status_code == 200, (path, r.text)
                assert not _visible(r.text, other), (path, r.text)
                shown += _visible(r.text, own)
            assert shown >= 10
