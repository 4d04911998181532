"""The approvals table on SQLite and PostgreSQL: one pending per counter and window, decisions, grants, expiry."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from proxy.store import approvals as ap
from proxy.store.db import Store

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
MONTH_END = datetime(2026, 6, 1, tzinfo=UTC)
KEY_A = "sg:{acme}:b:org-monthly:2026-05:org=acme"
KEY_B = "sg:{beta}:b:org-monthly:2026-05:org=beta"


async def _request(store: Store, *, org: str = "acme", key: str = KEY_A, window: str = "2026-05",
                   worst: int = 1_000, expires_at: datetime | None = MONTH_END,
                   now: datetime = NOW) -> tuple[str, bool]:
    return await ap.request(store, org=org, budget="org-monthly", counter_key=key, window_id=window,
                            scope={"org": org}, worst_nano=worst, requested_by="agent-1",
                            expires_at=expires_at, now=now)


async def _approve(store: Store, approval_id: str, grant: int | None = None,
                   org: str | None = None) -> dict[str, Any] | None:
    return await ap.decide(store, approval_id, org, approve=True, grant_nano=grant, decided_by="boss",
                           now=NOW + timedelta(minutes=1))


async def test_request_creates_then_joins_and_raises_worst(store: Store) -> None:
    first, created = await _request(store, worst=1_000)
    again, created_again = await _request(store, worst=5_000)
    smaller, _ = await _request(store, worst=10)
    assert created and not created_again
    assert first == again == smaller and first.startswith("ap_")
    row = await ap.get(store, first, "acme")
    assert row is not None
    assert row["status"] == "pending" and row["worst_nano"] == 5_000
    assert row["scope"] == {"org": "acme"} and row["requested_by"] == "agent-1"
    assert row["requested_at"] == NOW and row["expires_at"] == MONTH_END


async def test_concurrent_requests_share_one_id(store: Store) -> None:
    results = await asyncio.gather(*(_request(store, worst=100 * (i + 1)) for i in range(8)))
    assert len({approval_id for approval_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    rows = await ap.list_approvals(store, "acme", "pending", 10)
    assert len(rows) == 1 and rows[0]["worst_nano"] == 800


async def test_other_window_or_counter_gets_its_own(store: Store) -> None:
    a, _ = await _request(store)
    b, _ = await _request(store, window="2026-06")
    c, _ = await _request(store, org="beta", key=KEY_B)
    assert len({a, b, c}) == 3


async def test_approve_grants_max_of_grant_and_worst_and_grants_add_up(store: Store) -> None:
    first, _ = await _request(store, worst=7_000)
    row = await _approve(store, first, grant=5_000)
    assert row is not None and row["status"] == "approved" and row["grant_nano"] == 7_000
    assert row["decided_by"] == "boss" and row["decided_at"] == NOW + timedelta(minutes=1)
    # A new hold in the same window after the approval is a NEW pending approval.
    second, created = await _request(store, worst=1_000)
    assert created and second != first
    row = await _approve(store, second, grant=5_000)
    assert row is not None and row["grant_nano"] == 5_000
    got = await ap.grants(store, [(KEY_A, "2026-05"), (KEY_A, "2026-06"), (KEY_B, "2026-05")])
    assert got == {(KEY_A, "2026-05"): 12_000}
    assert await ap.grants(store, []) == {}


async def test_approve_without_grant_grants_the_worst_case(store: Store) -> None:
    approval_id, _ = await _request(store, worst=3_000)
    row = await _approve(store, approval_id, grant=None)
    assert row is not None and row["grant_nano"] == 3_000


async def test_deny_grants_nothing_and_only_pending_can_be_decided(store: Store) -> None:
    approval_id, _ = await _request(store)
    row = await ap.decide(store, approval_id, None, approve=False, grant_nano=None, decided_by="boss", now=NOW)
    assert row is not None and row["status"] == "denied" and row["grant_nano"] is None
    assert await _approve(store, approval_id, grant=5_000) is None
    assert await _approve(store, "ap_missing") is None
    assert await ap.grants(store, [(KEY_A, "2026-05")]) == {}


async def test_expire_marks_pending_past_window_end(store: Store) -> None:
    ended, _ = await _request(store, window="2026-04", expires_at=NOW - timedelta(hours=1),
                              now=NOW - timedelta(days=3))
    live, _ = await _request(store)
    run, _ = await _request(store, key="sg:{acme}:b:run-cap:run:run=r1", window="run", expires_at=None)
    assert await ap.expire(store, NOW) == 1
    assert await ap.expire(store, NOW) == 0
    statuses = {r["id"]: r["status"] for r in await ap.list_approvals(store, None, None, 10)}
    assert statuses == {ended: "expired", live: "pending", run: "pending"}
    # Run windows never expire; an expired approval cannot be decided.
    assert await ap.expire(store, NOW + timedelta(days=3650)) == 1
    assert await _approve(store, ended) is None
    assert await _approve(store, live) is None
    assert await _approve(store, run) is not None


async def test_decide_refuses_a_pending_approval_past_its_end(store: Store) -> None:
    approval_id, _ = await _request(store, expires_at=NOW)
    assert await _approve(store, approval_id) is None  # decided at NOW + 1 min, after its window ended


async def test_org_scoping(store: Store) -> None:
    mine, _ = await _request(store, org="acme", key=KEY_A)
    theirs, _ = await _request(store, org="beta", key=KEY_B)
    assert await ap.get(store, theirs, "acme") is None
    assert await ap.get(store, theirs, None) is not None
    assert [r["id"] for r in await ap.list_approvals(store, "acme", None, 10)] == [mine]
    assert {r["id"] for r in await ap.list_approvals(store, None, None, 10)} == {mine, theirs}
    assert await _approve(store, theirs, org="acme") is None
    row = await ap.get(store, theirs, "beta")
    assert row is not None and row["status"] == "pending"
    assert await _approve(store, theirs, org="beta") is not None


async def test_list_filters_by_status_newest_first_with_limit(store: Store) -> None:
    ids = []
    for i in range(3):
        approval_id, _ = await _request(store, key=f"{KEY_A}-{i}", now=NOW + timedelta(seconds=i))
        ids.append(approval_id)
    await _approve(store, ids[0])
    assert [r["id"] for r in await ap.list_approvals(store, "acme", None, 10)] == ids[::-1]
    assert [r["id"] for r in await ap.list_approvals(store, "acme", "pending", 1)] == [ids[2]]
    assert [r["id"] for r in await ap.list_approvals(store, "acme", "approved", 10)] == [ids[0]]
