"""Budgets through the real proxy: caps hold under concurrency, streams settle to real usage, clamp, warn,
thresholds once, approvals end to end with a signed webhook receiver, runtime limits, the ledger down."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from policies.webhooks import secret_bytes, verify
from tests.fakes.servers import ThreadedServer
from tests.fakes.upstream import FakeUpstream
from tests.harness import ADMIN, OTHER, ROOT, Proxy, expected_nano, make_settings

pytestmark = pytest.mark.integration
MSGS = [{"role": "user", "content": "Summarise the design document in three bullet points."}]
AUTH = {"authorization": f"Bearer {ADMIN}"}
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def start(upstream: FakeUpstream, tmp_path: Path, closed_port: int, budgets: list[dict[str, Any]],
          **extra: Any) -> Proxy:
    proxy = Proxy(make_settings(upstream, tmp_path, closed_port, budgets=budgets, **extra))
    return proxy.__enter__()


@pytest.fixture
def stop() -> Iterator[list[Proxy]]:
    running: list[Proxy] = []
    yield running
    for p in running:
        p.__exit__()


def budgets_of(proxy: Proxy, key: str = ADMIN) -> dict[str, dict[str, Any]]:
    r = httpx.get(proxy.url + "/api/budgets", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return {f"{b['name']}:{sorted(b['scope'].items())}": b for b in r.json()["budgets"]}


def post(proxy: Proxy, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(proxy.base + "/chat/completions", json=body, headers={**AUTH, **headers}, timeout=30)


def total_cost(proxy: Proxy) -> int:
    return sum(r["cost_nano"] for r in proxy.calls(limit=1000))


def test_cap_holds_under_concurrency_and_ledger_equals_the_store(upstream: FakeUpstream, tmp_path: Path,
                                                                 closed_port: int, stop: list[Proxy]) -> None:
    proxy = start(upstream, tmp_path, closed_port, [{"name": "cap", "scope": {"org": "acme"}, "window": "day",
                                                      "limit_usd": 0.002}])
    stop.append(proxy)
    body = {"model": "fake-out40-slow100", "messages": MSGS, "max_tokens": 40}
    statuses: list[int] = []

    async def run() -> None:
        async with httpx.AsyncClient(timeout=30, headers=AUTH) as client:
            sem = asyncio.Semaphore(64)

            async def one() -> None:
                async with sem:
                    r = await client.post(proxy.base + "/chat/completions", json=body)
                    statuses.append(r.status_code)
                    if r.status_code == 402:
                        assert r.json()["error"]["code"] == "budget_exceeded"
                        assert r.json()["error"]["budget"]["name"] == "cap"

            await asyncio.gather(*(one() for _ in range(300)))

    asyncio.run(run())
    assert set(statuses) <= {200, 402} and 402 in statuses and 200 in statuses
    budget = budgets_of(proxy)["cap:[('org', 'acme')]"]
    spent = round(budget["spent_usd"] * 1e9)
    assert budget["reserved_usd"] == 0  # no reservation left open
    assert spent <= 2_000_000  # the cap held
    rows = [r for r in proxy.calls(limit=1000) if r["status"] == "ok"]
    assert len(rows) == statuses.count(200) and sum(r["cost_nano"] for r in rows) == spent  # ledger == store
    refused = [r for r in proxy.calls(limit=1000) if r["status"] == "refused"]
    assert len(refused) == statuses.count(402) and all(r["http_status"] == 402 for r in refused)
    # Calls one at a time now fill what the burst's reservations left; the cap still holds at the end.
    for _ in range(50):
        last = post(proxy, {**body, "model": "fake-out40"})
        if last.status_code == 402:
            break
    assert last.status_code == 402
    final = budgets_of(proxy)["cap:[('org', 'acme')]"]
    assert final["reserved_usd"] == 0 and round(final["spent_usd"] * 1e9) <= 2_000_000


def test_counters_are_rebuilt_from_the_store_after_a_restart(upstream: FakeUpstream, tmp_path: Path,
                                                             closed_port: int) -> None:
    caps = [{"name": "cap", "scope": {"org": "acme"}, "window": "month", "limit_usd": 1}]
    with Proxy(make_settings(upstream, tmp_path, closed_port, budgets=caps)) as proxy:
        for _ in range(3):
            assert post(proxy, {"model": "fake-out20", "messages": MSGS, "max_tokens": 20}).status_code == 200
        before = budgets_of(proxy)["cap:[('org', 'acme')]"]["spent_usd"]
    with Proxy(make_settings(upstream, tmp_path, closed_port, budgets=caps)) as proxy:
        assert budgets_of(proxy)["cap:[('org', 'acme')]"]["spent_usd"] == before > 0


def test_streams_settle_to_real_usage_and_a_hang_up_pays_for_what_was_generated(
        upstream: FakeUpstream, tmp_path: Path, closed_port: int, stop: list[Proxy]) -> None:
    proxy = start(upstream, tmp_path, closed_port, [{"name": "per-run", "scope": {"run": "*"}, "window": "run",
                                                      "limit_usd": 1}])
    stop.append(proxy)
    client = openai.OpenAI(base_url=proxy.base, api_key=ADMIN, max_retries=0,
                           default_headers={"X-Spendgate-Run": "r-stream"})
    assert list(client.chat.completions.create(model="fake-out30", messages=MSGS, stream=True, max_tokens=64))
    with httpx.Client(timeout=30) as c, c.stream("POST", proxy.base + "/chat/completions", headers={
            **AUTH, "x-spendgate-run": "r-stream"},
            json={"model": "fake-out300-gap10", "messages": MSGS, "stream": True, "max_tokens": 400}) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 20:
                break
    time.sleep(0.5)
    rows = proxy.calls(run="r-stream")
    assert {r["status"] for r in rows} == {"ok", "cancelled"}
    budget = budgets_of(proxy, ROOT)["per-run:[('run', 'r-stream')]"]  # org-less: for org-"*" admins
    assert "per-run:[('run', 'r-stream')]" not in budgets_of(proxy)
    assert round(budget["spent_usd"] * 1e9) == sum(r["cost_nano"] for r in rows) > 0
    assert budget["reserved_usd"] == 0


def test_max_tokens_is_written_when_absent_and_clamped_to_what_remains(
        upstream: FakeUpstream, tmp_path: Path, closed_port: int, stop: list[Proxy]) -> None:
    proxy = start(upstream, tmp_path, closed_port, [{
        "name": "tight", "scope": {"org": "acme"}, "window": "day", "limit_usd": 0.0002,
        "clamp_max_tokens": True, "min_output_tokens": 16}])
    stop.append(proxy)
    r = post(proxy, {"model": "fake-out5", "messages": MSGS, "max_tokens": 10_000})
    assert r.status_code == 200, r.text
    clamped = int(r.headers["x-spendgate-max-tokens-clamped"])
    assert 16 <= clamped < 10_000 and upstream.last.body["max_tokens"] == clamped
    # $0.0002 = 200,000 nano; output at $0.6/M = 600 nano per token: at most 333 tokens can fit.
    assert clamped <= 333


def test_soft_budget_warns_and_threshold_webhook_fires_once(upstream: FakeUpstream, tmp_path: Path,
                                                            closed_port: int, stop: list[Proxy]) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: Request) -> Response:
        received.append((dict(request.headers), await request.body()))
        return Response(status_code=204)

    with ThreadedServer(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as receiver:
        proxy = start(upstream, tmp_path, closed_port, [{
            "name": "soft", "scope": {"org": "acme"}, "window": "day", "limit_usd": 0.0002, "on_exceed": "warn",
            "alerts": [{"at_pct": 50, "action": "webhook"}]}],
            webhooks=[{"name": "ops", "url": receiver.url + "/hook", "secret": "env:SG_TEST_WEBHOOK_SECRET",
                       "allow_private_network": True}])
        stop.append(proxy)
        warned = []
        for _ in range(8):
            r = post(proxy, {"model": "fake-in100-out50", "messages": [{"role": "user", "content": "x"}],
                             "max_tokens": 50})
            assert r.status_code == 200
            warned.append("x-spendgate-budget-warning" in r.headers)
        assert warned[-1] and not warned[0]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len({b for _, b in received}) < 2:
            time.sleep(0.1)
    types = sorted(orjson_loads(b)["type"] for _, b in received)
    assert types == ["budget.exceeded", "budget.threshold"]  # each once, however many calls crossed
    for headers, body in received:
        assert verify(secret_bytes(SECRET), headers, body)


def orjson_loads(body: bytes) -> dict[str, Any]:
    import orjson

    return dict(orjson.loads(body))


@pytest.fixture(autouse=True)
def _webhook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SG_TEST_WEBHOOK_SECRET", SECRET)


def test_approval_end_to_end(upstream: FakeUpstream, tmp_path: Path, closed_port: int,
                             stop: list[Proxy]) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: Request) -> Response:
        received.append((dict(request.headers), await request.body()))
        return Response(status_code=200)

    with ThreadedServer(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as receiver:
        proxy = start(upstream, tmp_path, closed_port, [{
            "name": "gated", "scope": {"org": "acme"}, "window": "day", "limit_usd": 0.00003,
            "on_exceed": "approve"}],
            webhooks=[{"name": "ops", "url": receiver.url + "/hook", "secret": "env:SG_TEST_WEBHOOK_SECRET",
                       "allow_private_network": True}],
            approvals={"wait_seconds": 0, "grant_usd": 0.01})
        stop.append(proxy)
        body = {"model": "fake-out20", "messages": MSGS, "max_tokens": 40}
        held = post(proxy, body)
        assert held.status_code == 402 and held.json()["error"]["code"] == "approval_required"
        approval_id = held.json()["error"]["approval_id"]
        again = post(proxy, body)  # a parallel call shares the pending approval
        assert again.json()["error"]["approval_id"] == approval_id
        other_org = httpx.post(proxy.url + f"/api/approvals/{approval_id}/approve",
                               headers={"authorization": f"Bearer {OTHER}"})
        assert other_org.status_code == 404
        ok = httpx.post(proxy.url + f"/api/approvals/{approval_id}/approve", headers=AUTH, json={})
        assert ok.status_code == 200 and ok.json()["status"] == "approved"
        passed = post(proxy, body, **{"X-Spendgate-Approval": approval_id})
        assert passed.status_code == 200, passed.text
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(received) < 3:
            time.sleep(0.1)
        time.sleep(0.3)  # nothing more may arrive
    events = [orjson_loads(b) for _, b in received]
    assert sorted(e["type"] for e in events) == ["approval.decided", "approval.requested", "budget.exceeded"]
    decided = next(e for e in events if e["type"] == "approval.decided")
    assert decided["data"]["id"] == approval_id and decided["data"]["status"] == "approved"
    assert all(verify(secret_bytes(SECRET), h, b) for h, b in received)


def test_held_call_resumes_the_moment_an_admin_approves(upstream: FakeUpstream, tmp_path: Path,
                                                         closed_port: int, stop: list[Proxy]) -> None:
    proxy = start(upstream, tmp_path, closed_port, [{
        "name": "gated", "scope": {"org": "acme"}, "window": "day", "limit_usd": 0.00003, "on_exceed": "approve"}],
        approvals={"wait_seconds": 20, "grant_usd": 0.01})
    stop.append(proxy)
    result: list[httpx.Response] = []
    caller = threading.Thread(target=lambda: result.append(
        post(proxy, {"model": "fake-out20", "messages": MSGS, "max_tokens": 40})))
    started = time.monotonic()
    caller.start()
    pending: list[dict[str, Any]] = []
    while time.monotonic() - started < 10 and not pending:
        pending = httpx.get(proxy.url + "/api/approvals?status=pending", headers=AUTH).json()["approvals"]
        time.sleep(0.05)
    assert pending
    httpx.post(proxy.url + f"/api/approvals/{pending[0]['id']}/approve", headers=AUTH, json={"grant_usd": 0.02})
    caller.join(20)
    assert result and result[0].status_code == 200, result[0].text
    assert time.monotonic() - started < 15


def test_runtime_limit_change_applies_at_once_and_survives_a_restart(
        upstream: FakeUpstream, tmp_path: Path, closed_port: int) -> None:
    caps = [{"name": "cap", "scope": {"org": "acme"}, "window": "day", "limit_usd": 1}]
    with Proxy(make_settings(upstream, tmp_path, closed_port, budgets=caps)) as proxy:
        r = httpx.put(proxy.url + "/api/budgets/cap/limit", headers=AUTH, json={"limit_usd": 0})
        assert r.status_code == 200 and r.json()["limit_usd"] == 0
        assert post(proxy, {"model": "fake-out5", "messages": MSGS, "max_tokens": 5}).status_code == 402
        viewer = httpx.put(proxy.url + "/api/budgets/cap/limit", headers={"authorization": f"Bearer {OTHER}"},
                           json={"limit_usd": 5})
        assert viewer.status_code == 404  # another org's budget
    with Proxy(make_settings(upstream, tmp_path, closed_port, budgets=caps)) as proxy:
        assert post(proxy, {"model": "fake-out5", "messages": MSGS, "max_tokens": 5}).status_code == 402
    caps[0]["limit_usd"] = 2  # the file changed: its limit wins again
    with Proxy(make_settings(upstream, tmp_path, closed_port, budgets=caps)) as proxy:
        assert post(proxy, {"model": "fake-out5", "messages": MSGS, "max_tokens": 5}).status_code == 200


def test_estimate_answers_without_calling_the_provider(upstream: FakeUpstream, tmp_path: Path,
                                                      closed_port: int, stop: list[Proxy]) -> None:
    proxy = start(upstream, tmp_path, closed_port, [{"name": "cap", "scope": {"org": "acme"}, "window": "day",
                                                      "limit_usd": 0.00001}])
    stop.append(proxy)
    upstream.clear()
    r = httpx.post(proxy.url + "/api/estimate", headers=AUTH,
                   json={"model": "fake-x", "messages": MSGS, "max_tokens": 1000})
    assert r.status_code == 200, r.text
    est = r.json()
    assert est["min_usd"] <= est["expected_usd"] <= est["max_usd"] and est["decision"] == "block"
    assert est["expected_output_tokens_from_history"] is None
    assert upstream.requests == []
    httpx.put(proxy.url + "/api/budgets/cap/limit", headers=AUTH, json={"limit_usd": 1})
    for _ in range(3):
        assert post(proxy, {"model": "fake-x-out12", "messages": MSGS, "max_tokens": 1000}).status_code == 200
    r = httpx.post(proxy.url + "/api/estimate", headers=AUTH,
                   json={"model": "fake-x-out12", "messages": MSGS, "max_tokens": 1000})
    assert r.json()["expected_output_tokens_from_history"] == 12 and r.json()["decision"] == "allow"


def test_unpriced_model_cannot_pass_a_budget(upstream: FakeUpstream, tmp_path: Path, closed_port: int,
                                             stop: list[Proxy]) -> None:
    from tests.harness import test_models

    models = [*test_models(upstream, closed_port),
              {"name": "no-price-*", "provider": "openai", "api_base": upstream.openai_base,
               "api_key": "env:SG_TEST_OPENAI_KEY"}]
    proxy = start(upstream, tmp_path, closed_port, [{"name": "cap", "scope": {"org": "acme"}, "window": "day",
                                                      "limit_usd": 1}],
                  pricing={"unpriced": "allow"}, models=models)
    stop.append(proxy)
    upstream.clear()
    r = post(proxy, {"model": "no-price-model", "messages": MSGS, "max_tokens": 5})
    assert r.status_code == 400 and "no known price" in r.json()["error"]["message"]
    assert upstream.requests == []  # never counted as free: not sent at all


def test_a_fallback_to_another_provider_books_that_providers_budget(upstream: FakeUpstream, tmp_path: Path,
                                                                    closed_port: int, stop: list[Proxy]) -> None:
    """The first deployment (openai) is down; the call runs on the second (azure). A provider-scoped budget must
    see the spend where it was made, and the first provider's reservation must be given back."""
    from tests.harness import test_models

    models = [*test_models(upstream, closed_port),
              {"name": "x-provider", "provider": "openai", "api_base": f"http://127.0.0.1:{closed_port}/v1",
               "price_as": "gpt-4o-mini"},
              {"name": "x-provider", "provider": "azure", "api_version": "2024-10-21", "api_base": upstream.openai_base,
               "api_key": "env:SG_TEST_OPENAI_KEY", "upstream_model": "fake-in30-out6", "price_as": "gpt-4o-mini"},
              {"name": "x-blocked", "provider": "openai", "api_base": f"http://127.0.0.1:{closed_port}/v1",
               "price_as": "gpt-4o-mini"},
              {"name": "x-blocked", "provider": "azure", "api_version": "2024-10-21", "api_base": upstream.openai_base,
               "api_key": "env:SG_TEST_OPENAI_KEY", "upstream_model": "fake-in30-out6", "price_as": "gpt-4o"}]
    caps = [{"name": "openai-day", "scope": {"org": "acme", "provider": "openai"}, "window": "day", "limit_usd": 1},
            {"name": "azure-day", "scope": {"org": "acme", "provider": "azure"}, "window": "day",
             "limit_usd": 0.0004}]
    proxy = start(upstream, tmp_path, closed_port, caps, models=models)
    stop.append(proxy)
    AZURE = "azure-day:[('org', 'acme'), ('provider', 'azure')]"  # noqa: N806
    r = post(proxy, {"model": "x-provider", "messages": MSGS, "max_tokens": 6})
    assert r.status_code == 200, r.text
    spent = proxy.call_row(r.headers["x-spendgate-request-id"])["cost_nano"]
    assert spent == expected_nano("gpt-4o-mini", input=30, output=6)
    found = budgets_of(proxy)
    azure, openai_ = found[AZURE], found["openai-day:[('org', 'acme'), ('provider', 'openai')]"]
    assert round(azure["spent_usd"] * 1e9) == spent and azure["reserved_usd"] == 0
    assert openai_["spent_usd"] == 0 and openai_["reserved_usd"] == 0  # the failed attempt holds nothing
    # The fallback is admitted on its own provider's budget: gpt-4o's worst case does not fit azure's cap.
    r = post(proxy, {"model": "x-blocked", "messages": MSGS, "max_tokens": 2000})
    assert r.status_code == 402 and r.json()["error"]["budget"]["name"] == "azure-day", r.text
    found = budgets_of(proxy)
    assert all(b["reserved_usd"] == 0 for b in found.values())
    assert round(found[AZURE]["spent_usd"] * 1e9) == spent


def test_ledger_down_fails_closed_or_bypasses_as_configured(upstream: FakeUpstream, tmp_path: Path,
                                                            closed_port: int) -> None:
    from tests.redis_helpers import PrivateRedis

    caps = [{"name": "cap", "scope": {"org": "acme"}, "window": "day", "limit_usd": 1}]
    with PrivateRedis(tmp_path) as redis:
        url = f"redis://127.0.0.1:{redis.port}/0"
        for mode, expected in (("block", 503), ("allow", 200)):
            with Proxy(make_settings(upstream, tmp_path / mode if (tmp_path / mode).mkdir() is None else tmp_path,
                                     closed_port, budgets=caps,
                                     ledger={"url": url, "on_unavailable": mode})) as proxy:
                assert post(proxy, {"model": "fake-out5", "messages": MSGS, "max_tokens": 5}).status_code == 200
                redis.stop()
                started = time.monotonic()
                r = post(proxy, {"model": "fake-out5", "messages": MSGS, "max_tokens": 5})
                assert r.status_code == expected, r.text
                assert time.monotonic() - started < 5
                if mode == "allow":
                    assert proxy.call_row(r.headers["x-spendgate-request-id"])["status"] == "ok"
                redis.start()


def test_a_long_stream_keeps_its_reservation_past_the_ttl(upstream: FakeUpstream, tmp_path: Path,
                                                          closed_port: int, stop: list[Proxy]) -> None:
    proxy = start(upstream, tmp_path, closed_port, [{"name": "cap", "scope": {"org": "acme"}, "window": "day",
                                                      "limit_usd": 1}], ledger={"reservation_ttl_s": 1})
    stop.append(proxy)
    seen: list[float] = []

    def watch() -> None:
        time.sleep(2.0)  # past the 1 s TTL: only renewal keeps the reservation alive
        seen.append(budgets_of(proxy)["cap:[('org', 'acme')]"]["reserved_usd"])

    watcher = threading.Thread(target=watch)
    watcher.start()
    chunks = list(openai.OpenAI(base_url=proxy.base, api_key=ADMIN, max_retries=0).chat.completions.create(
        model="fake-out70-gap50", messages=MSGS, stream=True, max_tokens=100))
    watcher.join()
    assert chunks and seen and seen[0] > 0
    assert budgets_of(proxy)["cap:[('org', 'acme')]"]["reserved_usd"] == 0


def test_an_unexpected_failure_gives_the_reservation_back_and_no_traceback(
        upstream: FakeUpstream, tmp_path: Path, closed_port: int, stop: list[Proxy],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.upstreams.http import HttpUpstream

    async def broken(self: HttpUpstream, request: Any) -> Any:
        raise RuntimeError("injected fault")

    proxy = start(upstream, tmp_path, closed_port, [{"name": "cap", "scope": {"org": "acme"}, "window": "day",
                                                      "limit_usd": 1}])
    stop.append(proxy)
    monkeypatch.setattr(HttpUpstream, "open", broken)
    r = post(proxy, {"model": "fake-out5", "messages": MSGS, "max_tokens": 5})
    assert r.status_code == 500 and r.json()["error"]["type"] == "api_error"
    assert "Traceback" not in r.text and "injected fault" not in r.text
    assert budgets_of(proxy)["cap:[('org', 'acme')]"]["reserved_usd"] == 0
