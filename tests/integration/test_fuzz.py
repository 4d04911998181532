"""Schemathesis fuzzes the OpenAPI document a running proxy serves at /openapi.json: every operation, a
bounded number of generated requests each, all sent with an admin key. No answer may be a 5xx, and every
answer must match the content type and schema documented for its status (4xx refusals are fine)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from proxy.openapi import build_openapi
from tests.fakes.upstream import FakeUpstream
from tests.harness import ADMIN, ROOT, Proxy, make_settings
from tests.integration.test_canaries import loopback_only

pytestmark = pytest.mark.integration

# 20 generated examples per operation keep the module near 40 s on two shared cores (about 35 operations);
# the coverage phase adds its boundary and negative cases on top of these.
MAX_EXAMPLES = 20
# Requests alternate between an admin of one org and an admin of org "*" (who reads /metrics and picks an
# org with the generated X-Org-ID). A cycle, not a Hypothesis strategy: `given` would turn off the coverage
# phase's boundary and negative cases.
KEYS = itertools.cycle([ADMIN, ROOT])
_OPENAI_LIVE = ["fake-in5-out2", "mock", "alias-mini", "chain-down"]
# Models whose calls succeed (the fake's err* and hang models answer a deliberate 5xx: not fuzzed).
LIVE_MODELS = {**{p: _OPENAI_LIVE for p in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                                             "/v1/responses", "/api/estimate")},
               "/v1/messages": ["claude-fake-in5-out2", "mock"],
               "/v1/messages/count_tokens": ["claude-fake-in5-out2", "mock"]}
BUDGETS = [
    {"name": "acme-day", "scope": {"org": "acme"}, "window": "day", "limit_usd": 50.0},
    {"name": "per-run", "scope": {"org": "acme", "run": "*"}, "window": "run", "limit_usd": 0.000002},
    {"name": "research", "scope": {"org": "acme", "station": "research"}, "window": "day",
     "limit_usd": 0.000001, "on_exceed": "approve"},
]


@pytest.fixture(scope="module")
def fuzzed(upstream: FakeUpstream, closed_port: int, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[Proxy]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    settings_ = make_settings(upstream, tmp, closed_port, budgets=BUDGETS,
                              server={"max_body_bytes": 200_000, "metrics_rate_limit_per_minute": 100_000})
    with loopback_only() as outside, Proxy(settings_) as proxy:
        served = httpx.get(f"{proxy.url}/openapi.json", timeout=10)
        assert served.headers["content-type"] == "application/json"
        assert served.json() == orjson.loads(orjson.dumps(build_openapi()))
        _seed(proxy)
        yield proxy
        assert not outside, f"something connected outside loopback: {outside}"


def _seed(proxy: Proxy) -> None:
    """A few recorded calls, a pending approval and an event, so the reads answer real rows."""
    msgs = [{"role": "user", "content": "hi"}]
    with proxy.client() as c:
        for body, headers in [
            ({"model": "fake-in5-out2", "messages": msgs}, {"x-spendgate-run": "r1", "x-spendgate-issue": "I-1"}),
            ({"model": "fake-in5-out2", "messages": msgs, "stream": True}, {"x-spendgate-project": "web"}),
            ({"model": "fake-err500", "messages": msgs}, {}),
            ({"model": "fake-in5-out2", "messages": msgs}, {"x-spendgate-station": "research"}),
        ]:
            c.post("/v1/chat/completions", json=body, headers=headers)
        event = {"id": "fuzz-e1", "type": "issue.created", "ts": "2026-01-05T09:00:00Z", "issue": "I-1"}
        assert c.post("/api/factory/events", json=event).status_code == 200
    proxy.calls()


# Operations are known at collection time, so the schema is the generated document itself; the module
# fixture checks that the running proxy serves exactly this document at /openapi.json.
schema = schemathesis.openapi.from_dict(build_openapi())
schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True)


@schema.hook("flatmap_body")
def _live_models(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """Random model names only reach 404: mix in routed ones so generated bodies reach the fake upstream."""
    path = context.operation.path if context.operation is not None else ""
    live = LIVE_MODELS.get(path)
    if not live or not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return st.just(body)
    return st.sampled_from([body["model"], *live]).map(lambda model: {**body, "model": model})


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_document_holds(case: schemathesis.Case, fuzzed: Proxy) -> None:
    headers = {"authorization": f"Bearer {next(KEYS)}", "anthropic-version": "2023-06-01"}
    case.call_and_validate(base_url=fuzzed.url, headers=headers, timeout=30,
                           checks=[not_a_server_error, response_schema_conformance, content_type_conformance])


def test_mock_counts_tokens(fuzzed: Proxy) -> None:
    """Found by the fuzzer: /v1/messages/count_tokens on the built-in mock answered 500."""
    with fuzzed.client() as c:
        r = c.post("/v1/messages/count_tokens", json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]},
                   headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 200, r.text
    assert r.json()["input_tokens"] > 0
