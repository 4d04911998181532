"""The fault matrix: PostgreSQL down and back (mid-load, and across a proxy killed meanwhile), upstream timeouts,
connection resets, streams dropped mid-way, slow clients, client disconnects (before the answer and mid-stream)
and abandoned approval waits. After every fault `assert_settled` checks the same things: each call made is
stored exactly once, no reservation is left open, every budget counter equals the sum of its stored rows, and
no answer was a 500 (the only 5xx are 502 / 503 / 504 for provider and ledger faults).

PostgreSQL is cut through a loopback TcpProxy (never the shared server itself); the Redis ledger runs on a
private redis-server (the ledger's keys carry no test prefix, so the shared Redis is not used here).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from sqlalchemy import make_url, text

from proxy.store.config import StoreConfig
from proxy.store.db import Store
from tests import harness, pg, redis_helpers
from tests.fakes.faults import PgCut, RawUpstream
from tests.fakes.proxy_process import ProxyProcess, stored_calls
from tests.fakes.upstream import FakeUpstream
from tests.fakes.workers import Workers
from tests.harness import ADMIN, Proxy, expected_nano, make_settings
from tests.redis_helpers import PrivateRedis

pg_url = pg.pg_url
private_redis = redis_helpers.private_redis
pytestmark = pytest.mark.integration
MSGS: list[Any] = [{"role": "user", "content": "Name three failure modes of a proxy."}]
# A fixed-scope counter (always listed, so a leaked reservation shows) and one counter per call (a call settled
# twice, or on the wrong counter, shows as that counter's drift from its one row).
BUDGETS: list[dict[str, Any]] = [
    {"name": "acme-day", "scope": {"org": "acme"}, "window": "day", "limit_usd": 1000},
    {"name": "per-issue", "scope": {"org": "acme", "issue": "*"}, "window": "total", "limit_usd": 100},
]
DOCUMENTED_5XX = {502, 503, 504}


# --- the calls a test makes, and the checker run after every fault ------------------------------------------


class Calls:
    """Every call a test makes gets its own issue tag, so its row is found even when the client never saw a
    request id (it hung up first); `saw` keeps the status the client got (None: no answer)."""

    def __init__(self) -> None:
        self.seen: dict[str, int | None] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def new(self) -> str:
        with self._lock:
            issue = f"fault-{next(self._ids)}"
            self.seen[issue] = None
        return issue

    def headers(self, issue: str, key: str = ADMIN) -> dict[str, str]:
        return {"authorization": f"Bearer {key}", "x-spendgate-issue": issue}

    def saw(self, issue: str, status: int | None) -> None:
        with self._lock:
            self.seen[issue] = status


def _problems(url: str, calls: Calls) -> tuple[list[str], dict[str, dict[str, Any]]]:
    rows = list(stored_calls(url).values())
    per_issue = Counter(r["issue"] for r in rows)
    problems = [f"call {i} stored {per_issue[i]} times" for i in calls.seen if per_issue[i] != 1]
    problems += [f"row of no call made here: {r['request_id']} issue={r['issue']}" for r in rows
                 if r["issue"] not in calls.seen]
    with httpx.Client(headers={"authorization": f"Bearer {ADMIN}"}, timeout=10) as client:
        r = client.get(url + "/api/budgets")
    if r.status_code != 200:
        return problems + [f"GET /api/budgets answered {r.status_code}: {r.text[:200]}"], {}
    for b in r.json()["budgets"]:
        label = f"{b['name']} {b['scope']}"
        if b["reserved_usd"] != 0:
            problems.append(f"{label}: reservation left open ({b['reserved_usd']} USD)")
        stored = sum(row["cost_nano"] for row in rows if all(row[k] == v for k, v in b["scope"].items()))
        if round(b["spent_usd"] * 1e9) != stored:
            problems.append(f"{label}: ledger spent {round(b['spent_usd'] * 1e9)} != store {stored} nano-USD")
    return problems, {row["issue"]: row for row in rows}


def assert_settled(url: str, calls: Calls, timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """Wait (at most `timeout`) until every call made is stored exactly once, no reservation is open and every
    counter equals the store; then check no client saw a 500 nor an undocumented 5xx. Returns rows by issue."""
    deadline = time.monotonic() + timeout
    while True:
        problems, rows = _problems(url, calls)
        if not problems:
            break
        if time.monotonic() > deadline:
            raise AssertionError("not settled after the fault:\n  " + "\n  ".join(problems))
        time.sleep(0.05)
    statuses = [s for s in calls.seen.values() if s is not None]
    assert 500 not in statuses and {s for s in statuses if s >= 500} <= DOCUMENTED_5XX, Counter(statuses)
    assert all(r["http_status"] != 500 for r in rows.values())
    return rows


@pytest.fixture(autouse=True)
def no_unexpected_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No request of the in-thread proxies reached the app's catch-all handler (an answer of 500)."""
    caplog.set_level(logging.WARNING)
    yield
    bad = [r.getMessage() for r in caplog.records
           if r.getMessage() in ("unexpected error", "Exception in ASGI application")]
    assert not bad, bad


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# --- rigs ------------------------------------------------------------------------------------------------


def start_proxy(upstream: FakeUpstream, tmp_path: Path, closed_port: int, stack: list[Any], *,
                extra_models: Sequence[dict[str, Any]] = (), **overrides: Any) -> Proxy:
    upstream.clear()
    overrides.setdefault("budgets", BUDGETS)
    models = [*extra_models, *harness.test_models(upstream, closed_port)]
    proxy = Proxy(make_settings(upstream, tmp_path, closed_port, models=models, **overrides))
    stack.append(proxy.__enter__())
    return proxy


@pytest.fixture
def stack() -> Iterator[list[Any]]:
    """Things to close after the test, last opened first (proxies before the servers they use)."""
    items: list[Any] = []
    yield items
    for item in reversed(items):
        item.__exit__(None, None, None)


def openai_route(name: str, base: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "provider": "openai", "api_base": base, "api_key": "env:SG_TEST_OPENAI_KEY",
            "price_as": "gpt-4o-mini", **extra}


def chat(url: str, calls: Calls, model: str, *, stream: bool = False, timeout: float = 10.0,
         **extra: Any) -> tuple[str, httpx.Response | None]:
    """One chat call; its status is noted (None when the client gave up first). Streams are read whole."""
    issue = calls.new()
    body = {"model": model, "messages": MSGS, "stream": stream, **extra}
    try:
        with httpx.Client(timeout=timeout) as client, client.stream(
                "POST", url + "/v1/chat/completions", json=body, headers=calls.headers(issue)) as r:
            r.read()
    except httpx.TimeoutException:
        return issue, None
    calls.saw(issue, r.status_code)
    return issue, r


def status_of(answer: tuple[str, httpx.Response | None]) -> int | None:
    return answer[1].status_code if answer[1] is not None else None


# --- PostgreSQL down and back --------------------------------------------------------------------------


def pg_through(url: str, cut: PgCut) -> str:
    return make_url(url).set(port=cut.port).render_as_string(hide_password=False)


async def pg_totals(url: str) -> tuple[int, int, int]:
    """(usage rows, distinct request ids, calls in the hourly rollup): a row stored or rolled up twice shows."""
    store = await Store.open(StoreConfig(url=url))
    try:
        async with store.engine.connect() as conn:
            rows, distinct = (await conn.execute(text(
                "SELECT count(*), count(DISTINCT request_id) FROM usage"))).one()
            rolled = (await conn.execute(text(
                "SELECT coalesce(sum(calls), 0) FROM metric_buckets WHERE grain = 'hour'"))).scalar_one()
    finally:
        await store.close()
    return int(rows), int(distinct), int(rolled)


class Load(Workers):
    """Client threads making calls (plain and streamed, alternately) until stopped."""

    def __init__(self, url: str, calls: Calls, threads: int = 4) -> None:
        self.url, self.calls = url, calls
        self.answered: list[tuple[float, int]] = []  # (when, status)
        super().__init__(threads)

    def answered_since(self, since: float) -> list[int]:
        return [status for when, status in list(self.answered) if when >= since]

    def work(self, seed: int) -> None:
        for i in itertools.count():
            if self.stopped:
                return
            model = f"fake-in{10 + seed}-out{3 + i % 7}-slow20"
            _, r = chat(self.url, self.calls, model, stream=bool((seed + i) % 2))
            self.answered.append((time.monotonic(), r.status_code if r is not None else 0))


def test_postgresql_down_mid_load_keeps_answering_and_loses_or_duplicates_nothing(
        upstream: FakeUpstream, tmp_path: Path, closed_port: int, pg_url: str,
        private_redis: PrivateRedis, stack: list[Any]) -> None:
    cut = PgCut()
    stack.append(cut)
    url = pg_through(pg_url, cut)
    proxy = start_proxy(upstream, tmp_path, closed_port, stack, store_url=url, ledger={"url": private_redis.url})
    services = proxy.server.app.state.services
    calls = Calls()
    with Load(proxy.url, calls) as load:
        wait_for(lambda: len(load.answered) >= 8, "calls before the outage")
        cut.cut()
        down = time.monotonic()

        def not_ready() -> bool:
            r = httpx.get(proxy.url + "/readyz")
            return r.status_code == 503 and r.json()["checks"]["store"] is False

        wait_for(not_ready, "/readyz to report the store down")
        wait_for(lambda: len(load.answered_since(down)) >= 12, "calls answered during the outage")
        assert services.journal.unconfirmed > 0  # the outage's rows wait in the journal, not lost
        assert httpx.get(proxy.url + "/readyz").json()["checks"]["accepting"] is True
        # Reads need SQL: a clear 503 in each family's shape, never a 500.
        for path in ("/api/calls", "/api/budgets"):
            r = httpx.get(proxy.url + path, headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)
            assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable", (path, r.text)
        r = httpx.get(proxy.url + "/api/factory/metrics?metricType=aggregate", headers={"authorization": f"Bearer {ADMIN}"},
                      timeout=30)
        assert r.status_code == 500 and r.json()["error"]["code"] == "DATABASE_ERROR", r.text  # the seed's shape
        cut.restore()
        wait_for(lambda: httpx.get(proxy.url + "/readyz").status_code == 200, "/readyz after the outage")
        wait_for(lambda: len(load.answered) >= 30, "calls after the outage")
    assert set(load.answered_since(0)) == {200}  # the outage cost no call
    assert_settled(proxy.url, calls, timeout=15)
    rows, distinct, rolled = asyncio.run(pg_totals(pg_url))
    assert rows == distinct == rolled == len(calls.seen)
    assert services.journal.unconfirmed == 0


def test_proxy_killed_while_postgresql_is_down_replays_its_journal_once_it_is_back(
        upstream: FakeUpstream, tmp_path: Path, closed_port: int, pg_url: str,
        stack: list[Any]) -> None:
    cut = PgCut()
    stack.append(cut)
    proxy = ProxyProcess(upstream, tmp_path, closed_port, pg_through(pg_url, cut), flush_interval_ms=10,
                         budgets=BUDGETS)
    calls = Calls()
    try:
        proxy.start()
        for i in range(3):
            assert status_of(chat(proxy.url, calls, f"fake-in{20 + i}-out4", stream=bool(i % 2))) == 200
        cut.cut()
        for i in range(4):  # answered while PostgreSQL is down: journaled only
            assert status_of(chat(proxy.url, calls, f"fake-in{30 + i}-out5", stream=bool(i % 2))) == 200
        proxy.signal(9)
        proxy.wait()
        assert proxy.journal_records() >= 4
        cut.restore()
        proxy.start()  # replays before it answers /readyz
        assert "journal replay" in proxy.log.read_text()
        assert proxy.journal_records() == 0
        rows = assert_settled(proxy.url, calls)
        assert all(r["status"] == "ok" and r["usage_source"] == "provider" for r in rows.values())
        rows_n, distinct, rolled = asyncio.run(pg_totals(pg_url))
        assert rows_n == distinct == rolled == 7
        assert "unexpected error" not in proxy.log.read_text()
    finally:
        proxy.stop()


# --- the provider fails ----------------------------------------------------------------------------------


def test_upstream_timeouts_answer_504_and_release_the_reservation(
        upstream: FakeUpstream, tmp_path: Path, closed_port: int, stack: list[Any]) -> None:
    claude_timeout = {"name": "claude-timeout-*", "provider": "anthropic", "api_base": upstream.url,
                      "api_key": "env:SG_TEST_ANTHROPIC_KEY", "price_as": "claude-sonnet-4-5", "timeout_s": 0.5}
    proxy = start_proxy(upstream, tmp_path, closed_port, stack, extra_models=[claude_timeout])
    calls = Calls()
    hang, r = chat(proxy.url, calls, "fast-timeout-hang")
    assert r is not None and r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    slow, r = chat(proxy.url, calls, "fast-timeout-slow2000", stream=True)
    assert r is not None and r.status_code == 504
    # Headers came, then the provider went quiet for longer than the read timeout.
    stalled, r = chat(proxy.url, calls, "fast-timeout-in20-out6-gap1500", stream=True)
    assert r is not None and r.status_code == 200 and "upstream_timeout" in r.text and "[DONE]" not in r.text
    issue = calls.new()
    r = httpx.post(proxy.url + "/v1/messages", headers=calls.headers(issue), timeout=10,
                   json={"model": "claude-timeout-hang", "max_tokens": 50, "messages": MSGS})
    calls.saw(issue, r.status_code)
    assert r.status_code == 504 and r.json()["type"] == "error"
    rows = assert_settled(proxy.url, calls)
    for i in (hang, slow, issue):
        assert (rows[i]["status"], rows[i]["http_status"], rows[i]["cost_nano"]) == ("error", 504, 0)
    cut_short = rows[stalled]
    assert cut_short["status"] == "error" and cut_short["usage_source"] == "estimated"
    assert cut_short["output_tokens"] == 0 and cut_short["cost_nano"] > 0  # the prompt was sent: it is charged


@pytest.mark.parametrize("mode", ["reset_on_accept", "reset_after_request", "reset_mid_headers"])
def test_connection_reset_before_headers_is_502_and_charges_nothing(
        upstream: FakeUpstream, tmp_path: Path, closed_port: int, stack: list[Any], mode: str) -> None:
    raw = RawUpstream(mode)  # type: ignore[arg-type]
    stack.append(raw)
    proxy = start_proxy(upstream, tmp_path, closed_port, stack,
                        extra_models=[openai_route("reset-*", raw.base + "/v1")])
    calls = Calls()
    for stream in (False, True):
        _, r = chat(proxy.url, calls, "reset-in30-out5", stream=stream)
        assert r is not None and r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    assert raw.accepted >= 2
    rows = assert_settled(proxy.url, calls)
    assert {(r["status"], r["http_status"], r["cost_nano"]) for r in rows.values()} == {("error", 502, 0)}
    _, r = chat(proxy.url, calls, "fake-in9-out2")  # the proxy serves on
    assert r is not None and r.status_code == 200


def test_stream_dropped_midway_charges_what_was_generated(
        upstream: FakeUpstream, tmp_path: Path, closed_port: int, stack: list[Any]) -> None:
    proxy = start_proxy(upstream, tmp_path, closed_port, stack)
    calls = Calls()
    oai_issue = calls.new()
    oai = openai.OpenAI(base_url=proxy.base, api_key=ADMIN, max_retries=0, timeout=10,
                        default_headers={"x-spendgate-issue": oai_issue})
    seen = []
    with pytest.raises(openai.APIError):
        for chunk in oai.chat.completions.create(model="fake-in20-out50-drop3", messages=MSGS, stream=True):
            seen += [c.delta.content for c in chunk.choices if c.delta.content]
    calls.saw(oai_issue, 200)
    assert len(seen) == 3
    ant_issue = calls.new()
    ant = anthropic.Anthropic(base_url=proxy.url, api_key=ADMIN, max_retries=0, timeout=10,
                              default_headers={"x-spendgate-issue": ant_issue})
    text_seen = []
    with pytest.raises(anthropic.APIError):
        with ant.messages.stream(model="claude-fake-in30-out40-drop3", max_tokens=64, messages=MSGS) as s:
            for piece in s.text_stream:
                text_seen.append(piece)
    calls.saw(ant_issue, 200)
    assert "".join(text_seen).count("hello") == 3
    rows = assert_settled(proxy.url, calls)
    for issue, model, price in ((oai_issue, "fake", "gpt-4o-mini"), (ant_issue, "claude", "claude-sonnet-4-5")):
        row = rows[issue]
        assert row["status"] == "error" and row["usage_source"] == "estimated", (model, row)
        assert row["output_tokens"] == 3 and row["input_tokens"] > 0
        assert row["cost_nano"] == expected_nano(price, input=row["input_tokens"], output=3)
    assert rows[ant_issue]["input_tokens"] == 30  # reported by message_start before the drop


# --- the client is slow, or goes away --------------------------------------------------------------------


def test_slow_client_gets_the_whole_stream_metered_once(
        upstream: FakeUpstream, tmp_path: Path, closed_port: int, stack: list[Any]) -> None:
    proxy = start_proxy(upstream, tmp_path, closed_port, stack)
    calls = Calls()
    issue = calls.new()
    body = (b'{"model": "fake-in40-out3000", "stream": true, "messages": [{"role": "user", "content": "hi"}]}')
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {ADMIN}\r\n"
            f"x-spendgate-issue: {issue}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the proxy must wait on us
    sock.connect(("127.0.0.1", proxy.server.port))
    sock.settimeout(10)
    received = bytearray()
    try:
        sock.sendall(head + body)
        started = time.monotonic()
        other: list[float] = []
        while chunk := sock.recv(2048):
            received += chunk
            if len(received) > 100_000 and not other:  # meanwhile the proxy serves others at full speed
                t0 = time.monotonic()
                _, r = chat(proxy.url, calls, "fake-in9-out2")
                assert r is not None and r.status_code == 200
                other.append(time.monotonic() - t0)
            time.sleep(0.004)
    finally:
        sock.close()
    calls.saw(issue, int(received.split(b" ", 2)[1]))
    assert time.monotonic() - started > 0.5 and other and other[0] < 2.0
    assert received.count(b"hello") == 3000 and b"data: [DONE]" in received
    rows = assert_settled(proxy.url, calls)
    row = rows[issue]
    assert (row["status"], row["usage_source"], row["output_tokens"]) == ("ok", "provider", 3000)
    assert row["cost_nano"] == expected_nano("gpt-4o-mini", input=40, output=3000)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_client_gone_before_the_provider_answers_cancels_the_call(
        upstream: FakeUpstream, tmp_path: Path, closed_port: int, stack: list[Any], stream: bool) -> None:
    silent = RawUpstream("silent")  # takes the request and never answers (read timeout: 600 s)
    stack.append(silent)
    proxy = start_proxy(upstream, tmp_path, closed_port, stack,
                        extra_models=[openai_route("silent-*", silent.base + "/v1")])
    calls = Calls()
    issue, r = chat(proxy.url, calls, "silent-in30", stream=stream, timeout=0.5)
    assert r is None  # the client gave up
    fake, r = chat(proxy.url, calls, "fake-in25-out4-slow2000", stream=stream, timeout=0.3)
    assert r is None
    wait_for(lambda: silent.disconnects == 1, "the provider call to be aborted")
    rows = assert_settled(proxy.url, calls, timeout=5)
    for i in (issue, fake):
        row = rows[i]
        assert (row["status"], row["http_status"], row["usage_source"]) == ("cancelled", 499, "estimated"), row
        assert row["output_tokens"] == 0 and row["cost_nano"] > 0  # the prompt was sent: it is charged
        assert row["duration_ms"] < 1500


@pytest.mark.parametrize("family", ["openai", "anthropic"])
def test_client_gone_mid_stream_aborts_the_provider_and_pays_what_was_generated(
        upstream: FakeUpstream, tmp_path: Path, closed_port: int, stack: list[Any], family: str) -> None:
    proxy = start_proxy(upstream, tmp_path, closed_port, stack)
    calls = Calls()
    aborted_before = getattr(upstream.app.state, "aborted_streams", 0)
    issue = calls.new()
    if family == "openai":
        path, body = "/v1/chat/completions", {"model": "fake-in30-out400-gap10", "messages": MSGS, "stream": True}
    else:
        path, body = "/v1/messages", {"model": "claude-fake-in30-out400-gap10", "messages": MSGS, "stream": True,
                                      "max_tokens": 500}
    with httpx.Client(timeout=10) as c, c.stream("POST", proxy.url + path, json=body,
                                                 headers=calls.headers(issue)) as r:
        calls.saw(issue, r.status_code)
        events = 0
        for line in r.iter_lines():
            events += line.startswith("data:")
            if events >= 8:
                break
    wait_for(lambda: getattr(upstream.app.state, "aborted_streams", 0) > aborted_before,
             "the provider stream to be aborted")
    row = assert_settled(proxy.url, calls)[issue]
    assert (row["status"], row["usage_source"]) == ("cancelled", "estimated")
    assert 3 <= row["output_tokens"] < 400 and row["input_tokens"] > 0 and row["cost_nano"] > 0


def test_abandoned_approval_wait_holds_nothing(
        upstream: FakeUpstream, tmp_path: Path, closed_port: int, stack: list[Any]) -> None:
    gated = {"name": "gated", "scope": {"org": "acme", "station": "gated"}, "window": "day",
             "limit_usd": 0.000001, "on_exceed": "approve"}
    proxy = start_proxy(upstream, tmp_path, closed_port, stack, budgets=[*BUDGETS, gated],
                        approvals={"wait_seconds": 30})
    calls = Calls()
    issue = calls.new()
    with pytest.raises(httpx.TimeoutException):
        httpx.post(proxy.base + "/chat/completions", timeout=0.3,
                   headers={**calls.headers(issue), "x-spendgate-station": "gated"},
                   json={"model": "fake-in20-out5", "messages": MSGS, "max_tokens": 50})
    with httpx.Client(headers={"authorization": f"Bearer {ADMIN}"}) as admin:
        pending = admin.get(proxy.url + "/api/approvals", params={"status": "pending"}).json()
    assert len(pending["approvals"]) == 1  # the call was held, and its client gave up waiting
    # The held call holds no reservation, and the hang-up ends its wait at once (well before the 30 s wait):
    # its row says it was cancelled, at no cost.
    row = assert_settled(proxy.url, calls, timeout=4)[issue]
    assert row["status"] == "cancelled" and row["http_status"] == 499 and row["cost_nano"] == 0
    assert not upstream.requests  # never forwarded
