"""GET /metrics through the real proxy: exact counters after calls made with the openai SDK (ok, stream, provider
error, budget refusal, warning, clamp), access for org-"*" admins only, no secret in any sample, one registry
per app, and the request id on every log line of a call."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request

from proxy.logs import JsonFormatter
from proxy.routes.prom import from_private_network
from tests.error_shapes import assert_openai_error
from tests.fakes.upstream import ANTHROPIC_KEY, OPENAI_KEY, FakeUpstream
from tests.harness import ADMIN, AGENT, KEYS, OTHER, ROOT, VIEWER, Proxy, expected_nano, make_settings

pytestmark = pytest.mark.integration
MSGS = [{"role": "user", "content": "Count the budgets."}]
CHAT = "/v1/chat/completions"
BUDGETS: list[dict[str, Any]] = [
    {"name": "org-day", "scope": {"org": "acme"}, "window": "day", "limit_usd": 100},
    {"name": "run-cap", "scope": {"org": "acme", "run": "*"}, "window": "run", "limit_usd": 0.000001},
    {"name": "qa-soft", "scope": {"org": "acme", "station": "qa"}, "window": "day", "limit_usd": 0.000001,
     "on_exceed": "warn"},
    {"name": "research-approve", "scope": {"org": "acme", "station": "research"}, "window": "day",
     "limit_usd": 0.000001, "on_exceed": "approve"},
    {"name": "issue-clamp", "scope": {"org": "acme", "issue": "*"}, "window": "total", "limit_usd": 0.001,
     "clamp_max_tokens": True, "min_output_tokens": 16},
]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def budgeted(upstream: FakeUpstream, tmp_path: Path, closed_port: int) -> Iterator[Proxy]:
    upstream.clear()
    with Proxy(make_settings(upstream, tmp_path, closed_port, budgets=BUDGETS)) as p:
        yield p


def sdk(proxy: Proxy, key: str = ADMIN, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base, api_key=key, max_retries=0, default_headers=headers or None)


def scrape(proxy: Proxy, key: str = ROOT) -> str:
    r = httpx.get(proxy.url + "/metrics", headers={"x-api-key": key})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


def samples(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_are_exact_after_ok_stream_error_refusal_hold_warning_and_clamp(budgeted: Proxy) -> None:
    client = sdk(budgeted)
    client.chat.completions.create(model="fake-in120-out30", messages=MSGS)
    assert len(list(client.chat.completions.create(model="fake-in50-out12", messages=MSGS, stream=True))) > 1
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fake-err500", messages=MSGS)
    with pytest.raises(openai.APIStatusError) as refused:
        sdk(budgeted, **{"X-Spendgate-Run": "run-1"}).chat.completions.create(model="fake-in9-out3", messages=MSGS)
    assert refused.value.status_code == 402
    with pytest.raises(openai.APIStatusError) as held:
        sdk(budgeted, **{"X-Spendgate-Station": "research"}).chat.completions.create(model="fake-in9-out3",
                                                                                    messages=MSGS)
    assert held.value.status_code == 402 and held.value.body["code"] == "approval_required"
    warned = sdk(budgeted, **{"X-Spendgate-Station": "qa"}).chat.completions.with_raw_response.create(
        model="fake-in11-out4", messages=MSGS)
    assert "x-spendgate-budget-warning" in warned.headers
    clamped = sdk(budgeted, **{"X-Spendgate-Issue": "ISS-1"}).chat.completions.with_raw_response.create(
        model="fake-in13-out6", messages=MSGS, max_tokens=100_000)
    assert "x-spendgate-max-tokens-clamped" in clamped.headers
    with pytest.raises(openai.AuthenticationError):
        sdk(budgeted, key="sk-not-a-key-at-all").chat.completions.create(model="fake-in1-out1", messages=MSGS)

    found = samples(scrape(budgeted))
    route = {"endpoint": CHAT, "route": "fake-*", "provider": "openai"}
    assert value(found, "spendgate_requests_total", status_class="2xx", **route) == 4
    assert value(found, "spendgate_requests_total", status_class="5xx", **route) == 1
    assert value(found, "spendgate_requests_total", status_class="4xx", **route) == 2  # the two 402s
    assert value(found, "spendgate_requests_total", endpoint=CHAT, status_class="4xx", route="", provider="") == 1
    assert sum(v for (name, _), v in found.items() if name == "spendgate_requests_total") == 8
    for status, n in (("ok", 4), ("error", 1), ("refused", 2)):
        assert value(found, "spendgate_calls_total", status=status, **route) == n

    model = {"provider": "openai", "model": "gpt-4o-mini"}  # fake-* is priced as gpt-4o-mini
    assert value(found, "spendgate_tokens_total", type="input", **model) == 120 + 50 + 11 + 13
    assert value(found, "spendgate_tokens_total", type="output", **model) == 30 + 12 + 4 + 6
    want_nano = sum(expected_nano("gpt-4o-mini", input=i, output=o) for i, o in ((120, 30), (50, 12), (11, 4),
                                                                                 (13, 6)))
    assert value(found, "spendgate_cost_usd_total", org="acme", **model) == want_nano / 10**9
    assert want_nano == sum(r["cost_nano"] for r in budgeted.calls(limit=100))  # the store agrees

    decisions = {labels: v for (name, labels), v in found.items() if name == "spendgate_budget_decisions_total"}
    assert decisions == {
        (("action", "allowed"), ("budget", "org-day")): 5,  # ok, stream, provider error, warned, clamped
        (("action", "denied"), ("budget", "run-cap")): 1,
        (("action", "held"), ("budget", "research-approve")): 1,
        (("action", "warned"), ("budget", "qa-soft")): 1,
        (("action", "clamped"), ("budget", "issue-clamp")): 1,
    }
    # Histograms: every answered request, the stream's first byte, each ledger step (each refusal asked twice:
    # on the byte bound, then on the counted prompt).
    assert value(found, "spendgate_request_duration_seconds_count", status_class="2xx", **route) == 4
    assert value(found, "spendgate_request_duration_seconds_bucket", status_class="2xx", le="+Inf", **route) == 4
    assert value(found, "spendgate_stream_first_byte_seconds_count", **route) == 1
    assert value(found, "spendgate_ledger_operation_duration_seconds_count", operation="admit") == 9
    assert value(found, "spendgate_ledger_operation_duration_seconds_count", operation="settle") == 5
    assert value(found, "spendgate_inflight_calls") == 0
    assert value(found, "spendgate_webhook_outbox_depth") == 0
    for gauge in ("spendgate_writer_queue_depth", "spendgate_journal_pending", "process_cpu_seconds_total",
                  "process_resident_memory_bytes"):
        assert any(name == gauge for name, _ in found), gauge


def test_only_org_star_admins_may_scrape(budgeted: Proxy) -> None:
    url = budgeted.url + "/metrics"
    assert_openai_error(httpx.get(url), 401, "invalid_api_key")
    assert_openai_error(httpx.get(url, headers={"authorization": "Bearer sk-nope-nope-nope"}), 401,
                        "invalid_api_key")
    for key in (ADMIN, VIEWER, AGENT, OTHER):  # an admin of one org may not see every org's spend
        assert_openai_error(httpx.get(url, headers={"authorization": f"Bearer {key}"}), 403, "forbidden")
    assert httpx.get(url, headers={"authorization": f"Bearer {ROOT}"}).status_code == 200
    assert httpx.get(url, headers={"x-api-key": ROOT}).status_code == 200
    openmetrics = httpx.get(url, headers={"x-api-key": ROOT, "accept": "application/openmetrics-text"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")


def test_no_key_or_provider_address_in_any_sample(budgeted: Proxy, upstream: FakeUpstream) -> None:
    sdk(budgeted, key=AGENT).chat.completions.create(model="fake-in5-out2", messages=MSGS)
    with pytest.raises(openai.APIStatusError):
        sdk(budgeted).chat.completions.create(model="dead-model", messages=MSGS)
    text = scrape(budgeted)
    assert 'route="fake-*"' in text and 'route="dead-*"' in text
    secrets = [OPENAI_KEY, ANTHROPIC_KEY, ADMIN, AGENT, VIEWER, OTHER, ROOT, upstream.url, upstream.openai_base,
               str(upstream.url.rsplit(":", 1)[1]), *(k["key_sha256"] for k in KEYS), *(k["name"] for k in KEYS)]
    for secret in secrets:
        assert secret not in text, secret


def test_public_scraping_is_for_private_networks_only(upstream: FakeUpstream, tmp_path: Path,
                                                       closed_port: int) -> None:
    settings = make_settings(upstream, tmp_path, closed_port, server={"metrics_public": True})
    with Proxy(settings) as proxy:
        assert httpx.get(proxy.url + "/metrics").status_code == 200  # from 127.0.0.1
    for host, private in (("127.0.0.1", True), ("10.1.2.3", True), ("192.168.0.9", True), ("::1", True),
                          ("fd00::1", True), ("::ffff:10.0.0.1", True), ("1.1.1.1", False), ("2606:4700::1111", False),
                          ("8.8.8.8", False), ("testclient", False)):
        scope = {"type": "http", "method": "GET", "path": "/metrics", "headers": [], "client": (host, 5000)}
        assert from_private_network(Request(scope)) is private, host


def test_each_app_keeps_its_own_registry(upstream: FakeUpstream, tmp_path: Path, closed_port: int) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with Proxy(make_settings(upstream, tmp_path / "one", closed_port)) as one, \
            Proxy(make_settings(upstream, tmp_path / "two", closed_port)) as two:
        sdk(one).chat.completions.create(model="fake-in7-out2", messages=MSGS)
        route = {"endpoint": CHAT, "status_class": "2xx", "route": "fake-*", "provider": "openai"}
        assert value(samples(scrape(one)), "spendgate_requests_total", **route) == 1
        assert value(samples(scrape(two)), "spendgate_requests_total", **route) == 0


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The proxy's JSON log sink on the root logger (the proxy runs in this process, on its own thread)."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_every_log_line_of_a_call_carries_its_request_id(budgeted: Proxy, json_logs: io.StringIO) -> None:
    # Lines logged by modules that were not handed the request id: the upstream adapter (connection refused)
    # and the budget alerts (a refusal), plus one the gate logs itself.
    with pytest.raises(openai.APIStatusError) as dead:
        sdk(budgeted).chat.completions.create(model="dead-model", messages=MSGS)
    with pytest.raises(openai.APIStatusError) as refused:
        sdk(budgeted, **{"X-Spendgate-Run": "run-9"}).chat.completions.create(model="fake-in9-out3",
                                                                              messages=MSGS)
    ids = {dead.value.response.headers["x-spendgate-request-id"]: "upstream connection failed",
           refused.value.response.headers["x-spendgate-request-id"]: "budget exceeded"}
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    by_message = {entry["msg"]: entry for entry in lines if entry["logger"].startswith(("proxy.", "policies."))}
    for request_id, message in ids.items():
        assert by_message[message].get("request_id") == request_id, by_message[message]
    # Lines of the background writer belong to no call and carry no request id.
    assert all("request_id" not in e for e in lines if e["logger"] in ("proxy.store.writer", "proxy.store.journal"))
