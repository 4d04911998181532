"""Canary secrets: a proxy whose provider keys, virtual keys and webhook secret are distinctive strings is
driven through every path (ok calls, streams, provider errors, a provider echoing the key it was sent,
timeouts, bad requests, unknown keys, budget refusals, approvals, webhooks, every read); then no log line,
answer, header, webhook payload or stored row may hold any of them, nor their first 12 characters.
And a client can never choose the upstream or its credentials, at any depth of the body or in a header."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.auth import hash_key
from proxy.logs import JsonFormatter, Redactor
from proxy.settings import Settings
from proxy.store.models import Base
from tests.fakes.servers import ThreadedServer
from tests.fakes.upstream import FakeUpstream
from tests.harness import Proxy

pytestmark = pytest.mark.integration

PROVIDER_OPENAI = "sk-canary-PROVIDER-openai-7f3a9c1e5b2d4a6f8e0c"
PROVIDER_ANTHROPIC = "sk-ant-canary-PROVIDER-anthropic-1d9e7b3f5a2c4e6b"
PROVIDER_WRONG = "sk-canary-PROVIDER-wrong-5c2e8a1f9d3b7e4a6c0f"  # a key the fake upstream refuses
ADMIN = "sg-canary-VIRTUAL-admin-3b8f1e6a9c2d5f7a0e4b"
AGENT = "sg-canary-VIRTUAL-agent-9e4a2c7f1b5d8e3a6c0f"
ROOT = "sg-canary-VIRTUAL-root-4d0b7e2a8f5c1e9b3a6d"  # org "*": may read /metrics and pick an org
UNKNOWN = "sg-canary-UNKNOWN-client-6a1f4c9e2b7d3a8e5f0c"  # presented, never configured
WEBHOOK_SECRET = "sg-canary-WEBHOOK-secret-2f7c4a9e1d6b3f8a5c0e"
CANARIES = (PROVIDER_OPENAI, PROVIDER_ANTHROPIC, PROVIDER_WRONG, ADMIN, AGENT, ROOT, UNKNOWN, WEBHOOK_SECRET)
NEEDLES = sorted({*CANARIES, *(c[:12] for c in CANARIES)}, key=len, reverse=True)
PROVIDER_KEYS = (PROVIDER_OPENAI, PROVIDER_ANTHROPIC, PROVIDER_WRONG)
ENV = {"SG_CANARY_OPENAI_KEY": PROVIDER_OPENAI, "SG_CANARY_ANTHROPIC_KEY": PROVIDER_ANTHROPIC,
       "SG_CANARY_WRONG_KEY": PROVIDER_WRONG, "SG_CANARY_WEBHOOK_SECRET": WEBHOOK_SECRET}
MSGS = [{"role": "user", "content": "hi"}]
ATTACKER_URL = "http://203.0.113.7/v1"  # TEST-NET-3: the loopback guard refuses and records any connect


# --- no packet leaves loopback ------------------------------------------------------------------------------

class _LoopbackGuard:
    """Records every socket connect of this process to an address outside 127.0.0.0/8 and ::1 while armed
    (an audit hook sees each connect, asyncio's non-blocking ones included), and refuses it."""

    def __init__(self) -> None:
        self.armed = 0
        self.lock = threading.Lock()
        self.outside: list[Any] = []
        sys.addaudithook(self._hook)  # audit hooks cannot be removed: one per process, idle while unarmed

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event != "socket.connect" or not self.armed:
            return
        address = args[1]
        if not isinstance(address, tuple):
            return  # a Unix socket
        try:
            loopback = ip_address(str(address[0]).split("%")[0]).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            with self.lock:
                self.outside.append(address)
            raise OSError(f"test guard: no connection outside loopback ({address[0]})")


_GUARD: list[_LoopbackGuard] = []


@contextmanager
def loopback_only() -> Iterator[list[Any]]:
    """While inside, no socket of this process connects outside loopback; yields the refused addresses."""
    if not _GUARD:
        _GUARD.append(_LoopbackGuard())
    guard = _GUARD[0]
    guard.armed += 1
    try:
        yield guard.outside
    finally:
        guard.armed -= 1


# --- receivers: a provider that echoes the credential it got, and a webhook sink -------------------------

@dataclass
class Sink:
    """Everything a loopback server received, appended from its thread."""

    items: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def take(self, request: Request) -> tuple[dict[str, str], bytes]:
        item = (dict(request.headers), await request.body())
        with self.lock:
            self.items.append(item)
        return item

    def snapshot(self) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return list(self.items)


def echo_app(sink: Sink) -> Starlette:
    """A provider that refuses every call and quotes the credential it was sent, in its body and a header
    (older OpenAI answers, and many self-hosted servers, do this; a model name with `masked` gets the
    key's first 12 and last 4 characters only)."""

    async def refuse(request: Request) -> Response:
        headers, raw = await sink.take(request)
        presented = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        if b"masked" in raw:  # as OpenAI does today: the start and the end of the key
            presented = presented[:12] + "*" * 24 + presented[-4:]
        body = {"error": {"message": f"Incorrect API key provided: {presented}.", "type": "invalid_request_error",
                          "code": "invalid_api_key", "param": None}}
        if request.url.path.endswith("/messages"):
            body = {"type": "error", "error": {"type": "authentication_error",
                                               "message": f"invalid x-api-key {presented}"}}
        return JSONResponse(body, status_code=401, headers={"x-echo-key": presented})

    paths = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages")
    return Starlette(routes=[Route(p, refuse, methods=["POST"]) for p in paths])


def webhook_app(sink: Sink) -> Starlette:
    async def hook(request: Request) -> Response:
        await sink.take(request)
        return Response(status_code=204)

    return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


@dataclass
class Rig:
    upstream: FakeUpstream
    echo: Sink
    echo_url: str
    hooks: Sink
    hook_url: str
    closed_port: int


@pytest.fixture(scope="module")
def rig(closed_port: int) -> Iterator[Rig]:
    for name, value in ENV.items():
        os.environ[name] = value
    echo, hooks = Sink(), Sink()
    with (FakeUpstream(openai_key=PROVIDER_OPENAI, anthropic_key=PROVIDER_ANTHROPIC) as up,
          ThreadedServer(echo_app(echo)) as echo_server, ThreadedServer(webhook_app(hooks)) as hook_server):
        yield Rig(up, echo, echo_server.url, hooks, f"{hook_server.url}/hook", closed_port)
    for name in ENV:
        os.environ.pop(name, None)


def canary_settings(rig: Rig, tmp_path: Path, store_url: str) -> Settings:
    up = rig.upstream
    openai = {"provider": "openai", "api_base": up.openai_base, "api_key": "env:SG_CANARY_OPENAI_KEY"}
    anthropic = {"provider": "anthropic", "api_base": up.url, "api_key": "env:SG_CANARY_ANTHROPIC_KEY"}
    models = [
        {"name": "fake-*", "price_as": "gpt-4o-mini", **openai},
        {"name": "fast-timeout-*", "price_as": "gpt-4o-mini", "timeout_s": 0.5, **openai},
        {"name": "claude-fake-*", "price_as": "claude-sonnet-4-5", **anthropic},
        {"name": "wrongkey-*", "upstream_model": "fake-in5-out2", "price_as": "gpt-4o-mini",
         **openai, "api_key": "env:SG_CANARY_WRONG_KEY"},
        {"name": "echo-*", "price_as": "gpt-4o-mini", **openai, "api_base": rig.echo_url + "/v1"},
        {"name": "claude-echo-*", "price_as": "claude-sonnet-4-5", **anthropic, "api_base": rig.echo_url},
        {"name": "dead-*", "provider": "openai", "api_base": f"http://127.0.0.1:{rig.closed_port}/v1",
         "api_key": "env:SG_CANARY_OPENAI_KEY", "price_as": "gpt-4o-mini"},
        {"name": "mock", "provider": "mock", "price_as": "gpt-4o-mini"},
    ]
    keys = [
        {"name": "admin", "key_sha256": hash_key(ADMIN), "org": "acme", "role": "admin"},
        {"name": "planner", "key_sha256": hash_key(AGENT), "org": "acme", "role": "agent", "project": "web"},
        {"name": "root", "key_sha256": hash_key(ROOT), "org": "*", "role": "admin"},
    ]
    budgets = [
        {"name": "run-cap", "scope": {"org": "acme", "run": "*"}, "window": "run", "limit_usd": 0.00005,
         "alerts": [{"at_pct": 1, "action": "webhook"}]},
        {"name": "research", "scope": {"org": "acme", "station": "research"}, "window": "day",
         "limit_usd": 0.000001, "on_exceed": "approve"},
        {"name": "acme-day", "scope": {"org": "acme"}, "window": "day", "limit_usd": 100},
    ]
    webhooks = [{"name": "ops", "url": rig.hook_url, "secret": "env:SG_CANARY_WEBHOOK_SECRET",
                 "allow_private_network": True}]
    return Settings.model_validate({
        "server": {"max_body_bytes": 50_000, "log_level": "debug"},
        "store": {"url": store_url, "journal_path": str(tmp_path / "canary.journal"), "flush_interval_ms": 10},
        "models": models, "keys": keys, "budgets": budgets, "webhooks": webhooks,
    })


# --- capture ----------------------------------------------------------------------------------------------

@dataclass
class Capture:
    """Every answer the clients saw, as text: status, headers and body."""

    answers: list[str] = field(default_factory=list)

    def add(self, r: httpx.Response) -> httpx.Response:
        self.answers.append(f"{r.request.method} {r.request.url.path} -> {r.status_code}\n"
                            f"{json.dumps(dict(r.headers))}\n{r.text}")
        return r


@pytest.fixture
def json_sink() -> Iterator[io.StringIO]:
    """The production log sink (proxy/logs.py: JSON lines, redacting provider keys as `spendgate serve`
    configures it) added next to pytest's handlers, at DEBUG."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(Redactor(PROVIDER_KEYS))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}


def drive_calls(c: httpx.Client, cap: Capture) -> None:
    """Calls that succeed, stream, fail at the provider, time out, or never get that far."""
    for path, body in [
        ("/v1/chat/completions", {"model": "fake-in5-out2", "messages": MSGS}),
        ("/v1/chat/completions", {"model": "fake-in5-out2", "messages": MSGS, "stream": True}),
        ("/v1/completions", {"model": "fake-in5-out2", "prompt": "hi"}),
        ("/v1/embeddings", {"model": "fake-in5", "input": "hi"}),
        ("/v1/responses", {"model": "fake-in5-out2", "input": "hi"}),
        ("/v1/responses", {"model": "fake-in5-out2", "input": "hi", "stream": True}),
        ("/v1/messages", {"model": "claude-fake-in5-out2", "max_tokens": 5, "messages": MSGS}),
        ("/v1/messages", {"model": "claude-fake-in5-out2", "max_tokens": 5, "messages": MSGS, "stream": True}),
        ("/v1/messages/count_tokens", {"model": "claude-fake-in5-out2", "messages": MSGS}),
        ("/v1/chat/completions", {"model": "mock", "messages": MSGS}),
        # the provider fails, times out, breaks off, refuses our key, or quotes it back
        ("/v1/chat/completions", {"model": "fake-err500", "messages": MSGS}),
        ("/v1/chat/completions", {"model": "fake-err429", "messages": MSGS}),
        ("/v1/chat/completions", {"model": "fake-err401", "messages": MSGS}),
        ("/v1/messages", {"model": "claude-fake-err401", "max_tokens": 5, "messages": MSGS}),
        ("/v1/messages", {"model": "claude-fake-err529", "max_tokens": 5, "messages": MSGS}),
        ("/v1/chat/completions", {"model": "fast-timeout-hang", "messages": MSGS}),
        ("/v1/chat/completions", {"model": "fake-in5-out50-drop3", "messages": MSGS, "stream": True}),
        ("/v1/chat/completions", {"model": "dead-x", "messages": MSGS}),
        ("/v1/chat/completions", {"model": "wrongkey-x", "messages": MSGS}),
        ("/v1/chat/completions", {"model": "echo-x", "messages": MSGS}),
        ("/v1/chat/completions", {"model": "echo-x", "messages": MSGS, "stream": True}),
        ("/v1/embeddings", {"model": "echo-x", "input": "hi"}),
        ("/v1/messages", {"model": "claude-echo-x", "max_tokens": 5, "messages": MSGS}),
        ("/v1/messages", {"model": "claude-echo-x", "max_tokens": 5, "messages": MSGS, "stream": True}),
        ("/v1/chat/completions", {"model": "echo-masked", "messages": MSGS}),
        ("/v1/messages", {"model": "claude-echo-masked", "max_tokens": 5, "messages": MSGS}),
        ("/v1/chat/completions", {"model": "claude-echo-x", "messages": MSGS}),  # translated by litellm
        ("/v1/chat/completions", {"model": "claude-echo-masked", "messages": MSGS}),
        # refused before any provider is asked
        ("/v1/chat/completions", {"model": "no-such-model", "messages": MSGS}),
        ("/v1/chat/completions", {"model": "fake-in5-out2", "messages": "not a list"}),
        ("/v1/chat/completions", {"model": "fake-in5-out2", "messages": MSGS, "n": 100000}),
        ("/v1/chat/completions", {"model": "fake-in5-out2", "messages": MSGS, "api_key": PROVIDER_WRONG}),
        ("/v1/chat/completions", {"model": "fake-in5-out2", "messages": MSGS, "metadata": {"run": "x" * 500}}),
        ("/v1/chat/completions", {"model": "fake-in5-out2", "messages": [{"role": "user", "content": "x" * 60_000}]}),
    ]:
        cap.add(c.post(path, json=body, headers=_auth(ADMIN)))
    cap.add(c.post("/v1/chat/completions", json={"model": "fake-in5-out2", "messages": MSGS}, headers=_auth(AGENT)))
    for raw in (b"{not json", b"", b"[]", b'{"model": 5}'):
        cap.add(c.post("/v1/chat/completions", content=raw, headers=_auth(ADMIN)))
    # unknown, missing, malformed keys; a provider key sent to spendgate by mistake
    for headers in ({"authorization": f"Bearer {UNKNOWN}"}, {"x-api-key": UNKNOWN},
                    {"authorization": f"Basic {UNKNOWN}"}, {"authorization": f"Bearer {PROVIDER_OPENAI}"},
                    {"x-api-key": PROVIDER_ANTHROPIC, "anthropic-version": "2023-06-01"}, {}):
        cap.add(c.post("/v1/chat/completions", json={"model": "fake-in5-out2", "messages": MSGS}, headers=headers))
        cap.add(c.post("/v1/messages", json={"model": "claude-fake-in5-out2", "max_tokens": 5, "messages": MSGS},
                       headers=headers))
        cap.add(c.get("/api/calls", headers=headers))
        cap.add(c.get("/api/factory/metrics?metricType=cost&timeRange=7d", headers=headers))


def drive_budgets(c: httpx.Client, cap: Capture) -> None:
    """Threshold and exceeded webhooks on a run cap; an approval requested, granted and used."""
    run = {"x-spendgate-run": "canary-run"}
    statuses: list[int] = []
    while 402 not in statuses and len(statuses) < 40:
        statuses.append(cap.add(c.post("/v1/chat/completions", headers=_auth(ADMIN) | run, json={
            "model": "fake-in5-out2", "messages": MSGS, "max_tokens": 2})).status_code)
    assert statuses[0] == 200 and statuses[-1] == 402, statuses
    research = {"x-spendgate-station": "research"}
    held = cap.add(c.post("/v1/chat/completions", headers=_auth(ADMIN) | research,
                          json={"model": "fake-in5-out2", "messages": MSGS, "max_tokens": 2}))
    assert held.status_code == 402, held.text
    approval = held.json()["error"]["approval_id"]
    cap.add(c.get("/api/approvals?status=pending", headers=_auth(ADMIN)))
    assert cap.add(c.post(f"/api/approvals/{approval}/approve", headers=_auth(AGENT))).status_code == 403
    assert cap.add(c.post(f"/api/approvals/{approval}/approve", headers=_auth(ADMIN))).status_code == 200
    ok = cap.add(c.post("/v1/chat/completions", headers=_auth(ADMIN) | research | {"x-spendgate-approval": approval},
                        json={"model": "fake-in5-out2", "messages": MSGS, "max_tokens": 2}))
    assert ok.status_code == 200, ok.text
    cap.add(c.post(f"/api/approvals/{approval}/deny", headers=_auth(ADMIN)))
    cap.add(c.post("/api/approvals/nope/approve", headers=_auth(ADMIN)))


def drive_reads(c: httpx.Client, cap: Capture) -> None:
    """Every read, with each key: the API, the probes, the document, the dashboard and its data, /metrics."""
    event = {"id": "canary-e1", "type": "issue.created", "ts": "2026-01-05T09:00:00Z", "issue": "CAN-1"}
    cap.add(c.post("/api/factory/events", json=event, headers=_auth(ADMIN)))
    cap.add(c.post("/api/factory/aggregate", headers=_auth(ADMIN)))
    cap.add(c.put("/api/budgets/acme-day/limit", json={"limit_usd": 200}, headers=_auth(ADMIN)))
    cap.add(c.post("/api/estimate", json={"model": "fake-in5-out2", "messages": MSGS}, headers=_auth(ADMIN)))
    document = c.get("/openapi.json").json()
    reads = [p for p, ops in document["paths"].items() if "get" in ops]
    calls = c.get("/api/calls?limit=1000", headers=_auth(ADMIN)).json()["calls"]
    assert calls, "no call was recorded"
    for key in (ADMIN, AGENT, ROOT):
        for path in reads:
            path = path.replace("{request_id}", calls[0]["request_id"]).replace("{issue}", "CAN-1")
            path = path.replace("{name}", "app.js")
            cap.add(c.get(path, params={"projectId": "web", "timeRange": "7d"},
                          headers=_auth(key) | {"x-org-id": "acme"}))
        for path in ("/metrics", "/api/calls?limit=1000", "/api/approvals?status=all", "/dashboard#key=" + key,
                     "/v1/models", "/api/factory/events"):
            cap.add(c.get(path, headers=_auth(key)))
    assert cap.add(c.get("/metrics", headers=_auth(ROOT))).status_code == 200
    for call in calls:
        cap.add(c.get(f"/api/calls/{call['request_id']}", headers=_auth(ADMIN)))
    cap.add(c.get("/openapi.json"))
    cap.add(c.get("/readyz"))
    cap.add(c.get("/healthz"))


def wait_for_webhooks(rig: Rig, types: set[str], timeout: float = 15.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        seen = [json.loads(body) for _, body in rig.hooks.snapshot()]
        if types <= {event["type"] for event in seen} or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


async def dump_store(url: str) -> str:
    """SELECT * of every table the store defines, as text."""
    engine = create_async_engine(url)
    lines: list[str] = []
    try:
        async with engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                rows = (await conn.execute(select(table))).all()
                lines.append(f"## {table.name}: {len(rows)} rows")
                lines.extend(" | ".join(map(str, row)) for row in rows)
    finally:
        await engine.dispose()
    return "\n".join(lines)


def leaks(where: str, text: str) -> list[str]:
    return [f"{needle!r} in {where}" for needle in NEEDLES if needle in text]


def test_no_canary_anywhere(rig: Rig, store_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                            json_sink: io.StringIO) -> None:
    caplog.set_level(logging.DEBUG)
    rig.upstream.clear()
    cap = Capture()
    with loopback_only() as outside:
        proxy = Proxy(canary_settings(rig, tmp_path, store_url))
        with proxy, httpx.Client(base_url=proxy.url, timeout=30) as c:
            drive_calls(c, cap)
            drive_budgets(c, cap)
            hooks = wait_for_webhooks(rig, {"budget.threshold", "budget.exceeded", "approval.requested",
                                            "approval.decided"})
            drive_reads(c, cap)
        stored = asyncio.run(dump_store(store_url))  # the proxy has stopped: every row is flushed
    assert not outside, f"connections outside loopback: {outside}"
    assert {"budget.threshold", "budget.exceeded", "approval.requested", "approval.decided"} <= {
        h["type"] for h in hooks}, hooks
    assert "## usage: 0 rows" not in stored and "acme" in stored
    webhook_text = "\n".join(f"{json.dumps(h)}\n{b.decode(errors='replace')}" for h, b in rig.hooks.snapshot())
    found = (leaks("the logs (caplog)", caplog.text) + leaks("the JSON log sink", json_sink.getvalue())
             + [f for a in cap.answers for f in leaks(f"the answer to {a.splitlines()[0]}", a)]
             + leaks("a webhook", webhook_text)
             + leaks("the store", stored)
             + [f for path in tmp_path.rglob("*") if path.is_file()  # the journal, the SQLite file
                for f in leaks(str(path.relative_to(tmp_path)), path.read_bytes().decode("latin-1"))])
    assert not found, "\n".join(found)
    assert len(json_sink.getvalue().splitlines()) > 10 and len(cap.answers) > 100
    # The fake provider saw only its own keys, and never a virtual key.
    for seen in rig.upstream.requests:
        credential = seen.headers.get("authorization") or seen.headers.get("x-api-key")
        assert credential in (f"Bearer {PROVIDER_OPENAI}", PROVIDER_ANTHROPIC, f"Bearer {PROVIDER_WRONG}"), seen
        everything = json.dumps(seen.headers) + seen.raw_body.decode(errors="replace")
        assert not [n for n in (ADMIN, AGENT, ROOT, UNKNOWN, WEBHOOK_SECRET) if n[:12] in everything], seen


# --- the client never chooses the upstream ------------------------------------------------------------------

STEERING = {"api_base": ATTACKER_URL, "base_url": ATTACKER_URL, "api_key": UNKNOWN,
            "litellm_params": {"api_base": ATTACKER_URL, "api_key": UNKNOWN},
            "extra_headers": {"authorization": f"Bearer {UNKNOWN}"}, "custom_llm_provider": "openai",
            "user_config": {"model_list": [{"litellm_params": {"api_base": ATTACKER_URL}}]}}


def _planted(base: dict[str, Any], key: str, value: Any) -> list[tuple[str, dict[str, Any]]]:
    """`key: value` planted at several depths of a valid body: (where, body)."""
    msgs = [{"role": "user", "content": "hi"}]
    return [
        ("top level", {**base, "messages": msgs, key: value}),
        ("metadata", {**base, "messages": msgs, "metadata": {key: value}}),
        ("metadata, deep", {**base, "messages": msgs, "metadata": {"a": [{"b": {key: value}}]}}),
        ("a message", {**base, "messages": [{"role": "user", "content": "hi", key: value}]}),
        ("a content part", {**base, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi", key: value}]}]}),
        ("extra_body", {**base, "messages": msgs, "extra_body": {key: value}}),
        ("extra_body, deep", {**base, "messages": msgs, "extra_body": {"litellm": {"params": {key: value}}}}),
    ]


STEERED = [(path, model, where, key, body)
           for path, model, extra in [("/v1/chat/completions", "fake-in5-out2", {}),
                                      ("/v1/messages", "claude-fake-in5-out2", {"max_tokens": 5}),
                                      ("/v1/chat/completions", "mock", {})]
           for key, value in STEERING.items()
           for where, body in _planted({"model": model, **extra}, key, value)]


@pytest.fixture(scope="module")
def steer_proxy(rig: Rig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("steer")
    with loopback_only() as outside, Proxy(canary_settings(rig, tmp, f"sqlite+aiosqlite:///{tmp / 's.db'}")) as p:
        yield p
        assert not outside, f"connections outside loopback: {outside}"


def test_clients_never_choose_the_upstream(rig: Rig, steer_proxy: Proxy) -> None:
    """Every planted upstream URL or credential is refused with 400, or never reaches the provider."""
    rig.upstream.clear()
    answers: list[tuple[str, int]] = []
    with httpx.Client(base_url=steer_proxy.url, timeout=30) as c:
        for path, model, where, key, body in STEERED:
            r = c.post(path, json=body, headers=_auth(ADMIN))
            assert r.status_code in (200, 400), f"{key} in {where} ({model}): {r.status_code} {r.text}"
            answers.append((f"{key} in {where} ({model})", r.status_code))
        # Headers that name an upstream or a credential are not forwarded either.
        sneaky = {"x-api-key": UNKNOWN, "api-key": UNKNOWN, "x-api-base": ATTACKER_URL, "x-base-url": ATTACKER_URL,
                  "openai-organization": "org-attacker", "x-forwarded-host": "203.0.113.7", "host": "203.0.113.7"}
        r = c.post("/v1/chat/completions", json={"model": "fake-in5-out2", "messages": MSGS},
                   headers=_auth(ADMIN) | sneaky)
        assert r.status_code == 200, r.text
    seen = rig.upstream.requests
    assert seen, "no request reached the fake upstream"
    for request in seen:
        credential = request.headers.get("authorization") or request.headers.get("x-api-key")
        assert credential in (f"Bearer {PROVIDER_OPENAI}", PROVIDER_ANTHROPIC), request.headers
        text = json.dumps(request.headers) + request.raw_body.decode(errors="replace")
        planted = [k for k in (*STEERING, ATTACKER_URL, "203.0.113.7", UNKNOWN[:12], "org-attacker") if k in text]
        assert not planted, f"{planted} reached the upstream: {request.path} {text}"
    refused = [a for a, status in answers if status == 400]
    assert len(refused) == len(answers), [a for a, status in answers if status != 400]


def test_upstream_words_as_data_pass(rig: Rig, steer_proxy: Proxy) -> None:
    """The same words inside a tool's JSON schema, a structured-output schema or a tool call's own input are
    what the model reads, not options: those calls are served (and reach the provider unchanged)."""
    schema = {"type": "object", "properties": {"api_key": {"type": "string"}, "base_url": {"type": "string"}}}
    chat_tools = [{"type": "function", "function": {"name": "configure", "parameters": schema}}]
    tool_use = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "configure",
                                                  "input": {"api_key": "placeholder", "base_url": "x"}}]}
    tool_result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}
    bodies = [
        ("/v1/chat/completions", {"model": "fake-in5-out2", "messages": MSGS, "tools": chat_tools}),
        ("/v1/chat/completions", {"model": "fake-in5-out2", "messages": MSGS, "response_format": {
            "type": "json_schema", "json_schema": {"name": "cfg", "schema": schema}}}),
        ("/v1/responses", {"model": "fake-in5-out2", "input": "hi", "text": {"format": {
            "type": "json_schema", "name": "cfg", "schema": schema}}}),
        ("/v1/messages", {"model": "claude-fake-in5-out2", "max_tokens": 5, "tools": [
            {"name": "configure", "input_schema": schema}], "messages": [*MSGS, tool_use, tool_result]}),
    ]
    with httpx.Client(base_url=steer_proxy.url, timeout=30) as c:
        for path, body in bodies:
            rig.upstream.clear()
            r = c.post(path, json=body, headers=_auth(ADMIN))
            assert r.status_code == 200, f"{path}: {r.status_code} {r.text}"
            sent = rig.upstream.last.body
            assert {k: sent.get(k) for k in body} == body  # spendgate may add max tokens; it changes nothing
