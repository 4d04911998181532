"""GET /api/calls and /api/calls/{id}: what was recorded, scoped to the caller's org and pins, on SQLite and
PostgreSQL; a clean shutdown flushes every row."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import ADMIN, AGENT, OTHER, ROOT, VIEWER, Proxy, expected_nano, make_settings
from tests.pg import fresh_pg_database, service_unavailable

pytestmark = pytest.mark.integration
MSGS = [{"role": "user", "content": "hi"}]


def chat(proxy: Proxy, key: str, model: str = "fake-in10-out2", **headers: str) -> str:
    client = openai.OpenAI(base_url=proxy.base, api_key=key, max_retries=0, default_headers=headers or None)
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MSGS)
    return str(raw.headers["x-spendgate-request-id"])


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_store_proxy(request: pytest.FixtureRequest, upstream: FakeUpstream, tmp_path: Path,
                    closed_port: int) -> Iterator[Proxy]:
    drop = None
    url = None
    if request.param == "postgresql":
        try:
            url, drop = asyncio.run(fresh_pg_database())
        except ConnectionError as exc:
            service_unavailable(str(exc))
    try:
        with Proxy(make_settings(upstream, tmp_path, closed_port, store_url=url)) as p:
            yield p
    finally:
        if drop is not None:
            asyncio.run(drop())


def test_calls_are_recorded_and_filtered_on_both_stores(any_store_proxy: Proxy) -> None:
    proxy = any_store_proxy
    first = chat(proxy, ADMIN, "fake-in100-out20", **{"X-Spendgate-Run": "run-a", "X-Spendgate-Issue": "I-1"})
    chat(proxy, ADMIN, "fake-in5-out1", **{"X-Spendgate-Run": "run-b", "X-Spendgate-Station": "qa"})
    stream = openai.OpenAI(base_url=proxy.base, api_key=ADMIN, max_retries=0).chat.completions.create(
        model="fake-in30-out4", messages=MSGS, stream=True, extra_headers={"X-Spendgate-Run": "run-a"})
    assert len(list(stream)) > 4
    row = proxy.call_row(first)
    assert row["cost_nano"] == expected_nano("gpt-4o-mini", input=100, output=20)
    assert row["started_at"].endswith("Z") and row["duration_ms"] >= 0
    for _ in range(100):
        if len(proxy.calls(run="run-a")) == 2:
            break
    run_a = proxy.calls(run="run-a")
    assert len(run_a) == 2 and {r["output_tokens"] for r in run_a} == {20, 4}
    assert [r["station"] for r in proxy.calls(station="qa")] == ["qa"]
    assert [r["issue"] for r in proxy.calls(issue="I-1")] == ["I-1"]


def test_orgs_never_see_each_other(proxy: Proxy) -> None:
    mine = chat(proxy, ADMIN)
    theirs = chat(proxy, OTHER)
    proxy.call_row(mine)
    proxy.call_row(theirs, key=OTHER)
    assert {r["org"] for r in proxy.calls(ADMIN)} == {"acme"}
    assert {r["org"] for r in proxy.calls(OTHER)} == {"globex"}
    with proxy.client(ADMIN) as c:
        assert c.get(f"/api/calls/{theirs}").status_code == 404
        # X-Org-ID is honoured only for org-"*" admins; for anyone else it changes nothing.
        assert {r["org"] for r in c.get("/api/calls", headers={"x-org-id": "globex"}).json()["calls"]} == {"acme"}
    with proxy.client(ROOT) as c:
        assert {r["org"] for r in c.get("/api/calls").json()["calls"]} == {"acme", "globex"}
        assert {r["org"] for r in c.get("/api/calls", headers={"x-org-id": "globex"}).json()["calls"]} == {"globex"}


def test_agent_keys_see_only_their_pins_and_pins_win_over_headers(proxy: Proxy) -> None:
    own = chat(proxy, AGENT, **{"X-Spendgate-Project": "other", "X-Spendgate-Agent": "sneaky"})
    admin_call = chat(proxy, ADMIN, **{"X-Spendgate-Project": "mobile"})
    row = proxy.call_row(own, key=AGENT)
    assert (row["project"], row["agent"]) == ("web", "planner")
    proxy.call_row(admin_call)
    assert [r["request_id"] for r in proxy.calls(AGENT)] == [own]
    assert len(proxy.calls(VIEWER)) == 2


def test_pagination_covers_every_call_once(proxy: Proxy) -> None:
    ids = {chat(proxy, ADMIN, f"fake-in{i + 1}-out1") for i in range(7)}
    for rid in ids:
        proxy.call_row(rid)
    seen: list[str] = []
    cursor = None
    with proxy.client() as c:
        while True:
            page = c.get("/api/calls", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
            seen += [r["request_id"] for r in page["calls"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert sorted(seen) == sorted(ids) and len(seen) == 7


def test_clean_shutdown_flushes_every_row(upstream: FakeUpstream, tmp_path: Path, closed_port: int) -> None:
    settings = make_settings(upstream, tmp_path, closed_port)
    # A long flush interval: rows would sit in the batch queue, only the shutdown flush can write them.
    settings = settings.model_copy(update={"store": settings.store.model_copy(update={"flush_interval_ms": 60_000})})
    with Proxy(settings) as proxy:
        ids = {chat(proxy, ADMIN, f"fake-in{i + 1}-out1") for i in range(5)}
    db = sqlite3.connect(tmp_path / "spendgate.db")
    stored = {row[0] for row in db.execute("select request_id from usage")}
    assert ids <= stored


def test_openapi_document_matches_what_the_api_returns(proxy: Proxy) -> None:
    import httpx

    doc = httpx.get(proxy.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in ("/v1/chat/completions", "/v1/messages", "/api/calls", "/api/calls/{request_id}"):
        assert path in doc["paths"]
    rid = chat(proxy, ADMIN)
    row = proxy.call_row(rid)
    assert set(doc["components"]["schemas"]["Call"]["properties"]) == set(row)


def test_probes(proxy: Proxy) -> None:
    import httpx

    assert httpx.get(proxy.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(proxy.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"store": True, "accepting": True}


def test_call_cancelled_by_shutdown_is_recorded_with_its_prompt(upstream: FakeUpstream, tmp_path: Path,
                                                               closed_port: int) -> None:
    import threading
    import time

    import httpx

    errors: list[BaseException] = []

    def hanging_call(url: str) -> None:
        try:
            httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {ADMIN}"}, timeout=30,
                       json={"model": "fake-hang", "messages": [{"role": "user", "content": "a b c d e f g"}]})
        except httpx.HTTPError as exc:
            errors.append(exc)

    with Proxy(make_settings(upstream, tmp_path, closed_port)) as proxy:
        caller = threading.Thread(target=hanging_call, args=(proxy.url,))
        caller.start()
        for _ in range(200):
            if any(r.body and r.body.get("model") == "fake-hang" for r in upstream.requests):
                break
            time.sleep(0.02)
    caller.join(10)
    db = sqlite3.connect(tmp_path / "spendgate.db")
    rows = db.execute("select status, usage_source, input_tokens, output_tokens, cost_nano from usage").fetchall()
    assert len(rows) == 1
    status, source, input_tokens, output_tokens, cost = rows[0]
    assert (status, source, output_tokens) == ("cancelled", "estimated", 0)
    assert input_tokens > 0 and cost > 0  # the provider had the prompt: never recorded as $0
