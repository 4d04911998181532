"""ApprovalDesk (holds, waits woken in process or by polling, grants) and the /api/approvals routes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from starlette.applications import Starlette

from policies.budgets import Budget, Counter, counters_for
from policies.config import BudgetConfig
from pricing.money import usd_to_nano
from proxy.approvals import ApprovalDesk
from proxy.auth import KeyRing, hash_key
from proxy.routes.approvals import routes
from proxy.settings import KeyConfig
from proxy.store import approvals as table
from proxy.store.config import StoreConfig
from proxy.store.db import Store
from tests.error_shapes import assert_openai_error

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
CAP = Budget.from_config(BudgetConfig(name="org-monthly", scope={"org": "*"}, window="month", limit_usd=10,
                                      on_exceed="approve"))
BLOCK = Budget.from_config(BudgetConfig(name="hard", scope={"org": "*"}, window="month", limit_usd=10))


def _counter(org: str = "acme", budget: Budget = CAP, now: datetime = NOW) -> Counter:
    return counters_for([budget], {"org": org}, now)[0]


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, event_type: str, data: Mapping[str, Any]) -> None:
        self.events.append((event_type, dict(data)))


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(StoreConfig(url=f"sqlite+aiosqlite:///{tmp_path / 'sg.db'}",
                                          journal_path=str(tmp_path / "usage.journal")))
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def notify() -> Recorder:
    return Recorder()


@pytest.fixture
def desk(store: Store, notify: Recorder) -> ApprovalDesk:
    return ApprovalDesk(store, grant_usd=5, wait_seconds=2, notify=notify, clock=lambda: NOW, poll_s=0.05)


async def test_parallel_holds_share_one_approval_and_notify_once(desk: ApprovalDesk, notify: Recorder) -> None:
    ids = await asyncio.gather(*(desk.hold(_counter(), usd_to_nano(i + 1), org="acme", requested_by="bot")
                                 for i in range(5)))
    assert len(set(ids)) == 1
    assert [e for e, _ in notify.events] == ["approval.requested"]
    data = notify.events[0][1]
    assert data["id"] == ids[0] and data["status"] == "pending" and data["scope"] == {"org": "acme"}
    assert data["budget"] == "org-monthly" and data["window_id"] == "2026-05" and data["grant_usd"] is None
    assert data["expires_at"] == "2026-06-01T00:00:00Z" and data["requested_at"] == "2026-05-01T12:00:00Z"
    assert data["worst_case_usd"] in {1.0, 2.0, 3.0, 4.0, 5.0}  # the first holder's worst case


async def test_wait_wakes_on_in_process_decide(desk: ApprovalDesk, notify: Recorder) -> None:
    approval_id = await desk.hold(_counter(), usd_to_nano(7), org="acme", requested_by="bot")
    desk.poll_s = 10  # only the event can wake the waiter in time
    waiter = asyncio.create_task(desk.wait(approval_id, 5))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    decided = await desk.decide(approval_id, "acme", approve=True, decided_by="boss")
    assert await waiter == "approved"
    assert time.monotonic() - started < 1
    assert decided is not None and decided["grant_usd"] == 7.0 and decided["decided_by"] == "boss"
    assert [e for e, _ in notify.events] == ["approval.requested", "approval.decided"]
    assert notify.events[1][1] == decided


async def test_wait_sees_a_decision_of_another_replica(desk: ApprovalDesk, store: Store) -> None:
    approval_id = await desk.hold(_counter(), usd_to_nano(1), org="acme", requested_by="bot")
    waiter = asyncio.create_task(desk.wait(approval_id, 5))
    await asyncio.sleep(0.05)
    # The other replica writes to the shared store; no event in this process is set.
    await table.decide(store, approval_id, None, approve=False, grant_nano=None, decided_by="x", now=NOW)
    assert await asyncio.wait_for(waiter, 1) == "denied"


async def test_wait_times_out_pending(desk: ApprovalDesk) -> None:
    approval_id = await desk.hold(_counter(), 1, org="acme", requested_by="bot")
    started = time.monotonic()
    assert await desk.wait(approval_id, 0.15) == "pending"
    assert 0.1 < time.monotonic() - started < 1
    assert await desk.wait(approval_id, 0) == "pending"
    assert await desk.wait("ap_unknown", 0.1) == "expired"


async def test_extra_limits_reflect_grants(desk: ApprovalDesk) -> None:
    acme, beta, hard = _counter("acme"), _counter("beta"), _counter("acme", BLOCK)
    assert await desk.extra_limits([acme, beta, hard]) == {}
    first = await desk.hold(acme, usd_to_nano(1), org="acme", requested_by="bot")
    await desk.decide(first, None, approve=True, grant_usd=2, decided_by="boss")
    assert await desk.extra_limits([acme, beta, hard]) == {acme.key: usd_to_nano(2)}
    second = await desk.hold(acme, usd_to_nano(9), org="acme", requested_by="bot")
    assert second != first
    await desk.decide(second, "acme", approve=True, decided_by="boss")  # configured 5 < worst 9
    assert await desk.extra_limits([acme]) == {acme.key: usd_to_nano(11)}
    # Next month is another window: nothing granted there.
    assert await desk.extra_limits([_counter("acme", now=NOW + timedelta(days=31))]) == {}


async def test_status_and_decide_scoping(desk: ApprovalDesk, store: Store) -> None:
    approval_id = await desk.hold(_counter("beta"), 1, org="beta", requested_by="bot")
    assert await desk.status(approval_id, "acme") is None
    assert await desk.status(approval_id, "beta") == "pending"
    assert await desk.decide(approval_id, "acme", approve=True, decided_by="x") is None
    assert await desk.decide(approval_id, "beta", approve=False, decided_by="x") is not None
    assert await desk.decide(approval_id, "beta", approve=True, decided_by="x") is None
    assert await desk.status(approval_id, None) == "denied"
    late = ApprovalDesk(store, grant_usd=5, wait_seconds=0, clock=lambda: NOW + timedelta(days=40))
    pending = await desk.hold(_counter("acme"), 1, org="acme", requested_by="bot")
    assert await late.status(pending, "acme") == "expired"


# --- routes -------------------------------------------------------------------------------------------

KEYS = {"admin": ("acme", "admin"), "viewer": ("acme", "viewer"), "agent": ("acme", "agent"),
        "root": ("*", "admin"), "beta-admin": ("beta", "admin")}


@dataclass
class FakeServices:
    keys: KeyRing
    approvals: ApprovalDesk


@pytest_asyncio.fixture
async def client(desk: ApprovalDesk) -> AsyncIterator[httpx.AsyncClient]:
    ring = KeyRing(KeyConfig(name=name, key_sha256=hash_key(f"sk-{name}"), org=org, role=role)
                   for name, (org, role) in KEYS.items())
    app = Starlette(routes=routes)
    app.state.services = FakeServices(ring, desk)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sg") as http:
        yield http


def _as(name: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer sk-{name}", **extra}


async def test_list_is_scoped_and_role_checked(client: httpx.AsyncClient, desk: ApprovalDesk) -> None:
    mine = await desk.hold(_counter("acme"), 1, org="acme", requested_by="bot")
    theirs = await desk.hold(_counter("beta"), 1, org="beta", requested_by="bot")
    for who in ("admin", "viewer"):
        r = await client.get("/api/approvals?status=pending", headers=_as(who))
        assert r.status_code == 200 and [a["id"] for a in r.json()["approvals"]] == [mine]
    r = await client.get("/api/approvals", headers=_as("root"))
    assert {a["id"] for a in r.json()["approvals"]} == {mine, theirs}
    r = await client.get("/api/approvals", headers=_as("root", **{"x-org-id": "beta"}))
    assert [a["id"] for a in r.json()["approvals"]] == [theirs]
    assert_openai_error(await client.get("/api/approvals", headers=_as("agent")), 403, "forbidden")
    assert_openai_error(await client.get("/api/approvals"), 401, "invalid_api_key")
    assert_openai_error(await client.get("/api/approvals?status=maybe", headers=_as("admin")), 400,
                        "invalid_request")
    assert_openai_error(await client.get("/api/approvals?limit=0", headers=_as("admin")), 400, "invalid_request")
    r = await client.get("/api/approvals?status=approved", headers=_as("admin"))
    assert r.json() == {"approvals": []}


async def test_approve_and_deny(client: httpx.AsyncClient, desk: ApprovalDesk) -> None:
    approval_id = await desk.hold(_counter("acme"), usd_to_nano(1), org="acme", requested_by="bot")
    url = f"/api/approvals/{approval_id}/approve"
    assert_openai_error(await client.post(url, headers=_as("viewer")), 403, "forbidden")
    assert_openai_error(await client.post(url, headers=_as("beta-admin")), 404, "not_found")
    for bad in (b"{", b"[]", b'{"grant_usd": 0}', b'{"grant_usd": -1}', b'{"grant_usd": true}',
                b'{"grant_usd": "5"}', b'{"grant": 5}'):
        assert_openai_error(await client.post(url, headers=_as("admin"), content=bad), 400, "invalid_request")
    r = await client.post(url, headers=_as("admin"), json={"grant_usd": 2.5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "approved" and body["grant_usd"] == 2.5 and body["decided_by"] == "admin"
    assert_openai_error(await client.post(url, headers=_as("admin")), 409, "conflict")
    assert_openai_error(await client.post("/api/approvals/ap_nope/deny", headers=_as("admin")), 404, "not_found")
    other = await desk.hold(_counter("beta"), 1, org="beta", requested_by="bot")
    r = await client.post(f"/api/approvals/{other}/deny", headers=_as("root"))
    assert r.status_code == 200 and r.json()["status"] == "denied" and r.json()["grant_usd"] is None
    third = await desk.hold(_counter("acme"), usd_to_nano(1), org="acme", requested_by="bot")
    r = await client.post(f"/api/approvals/{third}/approve", headers=_as("admin"))  # no body: configured grant
    assert r.status_code == 200 and r.json()["grant_usd"] == 5.0
