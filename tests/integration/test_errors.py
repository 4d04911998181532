"""Bad input on every endpoint: a clear 4xx in the endpoint's wire format, never a 500 or a traceback."""

from __future__ import annotations

import httpx
import pytest

from tests.error_shapes import assert_anthropic_error, assert_openai_error
from tests.fakes.upstream import FakeUpstream
from tests.harness import ADMIN, Proxy

pytestmark = pytest.mark.integration

OPENAI_ENDPOINTS = {
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"prompt": "hi"},
    "/v1/embeddings": {"input": "hi"},
    "/v1/responses": {"input": "hi"},
}
ANTHROPIC_ENDPOINTS = {
    "/v1/messages": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
    "/v1/messages/count_tokens": {"messages": [{"role": "user", "content": "hi"}]},
}
AUTH = {"authorization": f"Bearer {ADMIN}"}

# (headers, body or raw bytes, status, openai code, anthropic type)
CASES = [
    ({}, {"model": "fake-x"}, 401, "invalid_api_key", "authentication_error"),
    ({"authorization": "Bearer sk-unknown-key"}, {"model": "fake-x"}, 401, "invalid_api_key", "authentication_error"),
    ({"x-api-key": "sk-unknown-key"}, {"model": "fake-x"}, 401, "invalid_api_key", "authentication_error"),
    (AUTH, b"{not json", 400, "invalid_request", "invalid_request_error"),
    (AUTH, b"[1, 2]", 400, "invalid_request", "invalid_request_error"),
    (AUTH, b"", 400, "invalid_request", "invalid_request_error"),
    (AUTH, {"model": 42}, 400, "invalid_request", "invalid_request_error"),
    (AUTH, {"model": "no-such-model"}, 404, "model_not_found", "not_found_error"),
    (AUTH, {"model": "fake-x", "stream": "yes"}, 400, "invalid_request", "invalid_request_error"),
    (AUTH, {"model": "fake-x", "max_tokens": -1}, 400, "invalid_request", "invalid_request_error"),
    (AUTH, {"model": "fake-x", "metadata": "run-1"}, 400, "invalid_request", "invalid_request_error"),
    (AUTH, {"model": "fake-x", "metadata": {"run": 7}}, 400, "invalid_request", "invalid_request_error"),
    (AUTH, {"model": "fake-x", "base_url": "http://10.0.0.1"}, 400, "invalid_request", "invalid_request_error"),
    ({**AUTH, "x-spendgate-run": "r" * 129}, {"model": "fake-x"}, 400, "invalid_request", "invalid_request_error"),
    ({**AUTH, "x-spendgate-actor": "robot"}, {"model": "fake-x"}, 400, "invalid_request", "invalid_request_error"),
    (AUTH, b'{"model": "fake-x", "pad": "' + b"x" * 300_000 + b'"}', 413, "request_too_large", "request_too_large"),
]


def _send(proxy: Proxy, path: str, headers: dict[str, str], body: dict | bytes, base: dict) -> httpx.Response:
    content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json={**base, **body}).content
    return httpx.post(proxy.url + path, headers={"content-type": "application/json", **headers}, content=content,
                      timeout=10)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_every_endpoint_answers_bad_input_in_its_family_shape(proxy: Proxy, case: int) -> None:
    headers, body, status, code, anthropic_type = CASES[case]
    for path, base in OPENAI_ENDPOINTS.items():
        err = assert_openai_error(_send(proxy, path, headers, body, base), status, code)
        assert "sk-unknown-key" not in err["message"]
    for path, base in ANTHROPIC_ENDPOINTS.items():
        assert_anthropic_error(_send(proxy, path, {"anthropic-version": "2023-06-01", **headers}, body, base),
                               status, anthropic_type)


def test_nothing_is_recorded_for_refused_input(proxy: Proxy) -> None:
    for case in range(len(CASES)):
        headers, body, *_ = CASES[case]
        _send(proxy, "/v1/chat/completions", headers, body, OPENAI_ENDPOINTS["/v1/chat/completions"])
    assert proxy.calls() == []


def test_api_and_unknown_routes_use_the_openai_shape(proxy: Proxy) -> None:
    assert_openai_error(httpx.get(proxy.url + "/api/calls"), 401, "invalid_api_key")
    assert_openai_error(httpx.get(proxy.url + "/api/calls", headers=AUTH, params={"limit": "0"}), 400,
                        "invalid_request")
    assert_openai_error(httpx.get(proxy.url + "/api/calls", headers=AUTH, params={"cursor": "!!"}), 400,
                        "invalid_request")
    assert_openai_error(httpx.get(proxy.url + "/api/calls/sg-nope", headers=AUTH), 404, "not_found")
    assert_openai_error(httpx.get(proxy.url + "/v1/nothing-here"), 404, "not_found")
    assert_openai_error(httpx.get(proxy.url + "/v1/chat/completions"), 405, "method_not_allowed")
    assert_anthropic_error(httpx.get(proxy.url + "/v1/messages"), 405, "invalid_request_error")
    assert_openai_error(httpx.get(proxy.url + "/v1/models"), 401, "invalid_api_key")


@pytest.mark.parametrize("path", ["/v1/batches", "/v1/files", "/v1/images/generations", "/v1/audio/speech",
                                  "/v1/realtime", "/v1/messages/batches"])
def test_routes_spendgate_cannot_meter_are_refused_not_forwarded(proxy: Proxy, upstream: FakeUpstream,
                                                                path: str) -> None:
    upstream.clear()
    r = httpx.post(proxy.url + path, headers=AUTH, json={"model": "fake-x"})
    assert_openai_error(r, 501, "not_supported")
    assert "cannot meter" in r.json()["error"]["message"]
    assert upstream.requests == []


def test_translation_refuses_endpoints_it_cannot_serve(proxy: Proxy) -> None:
    r = httpx.post(proxy.url + "/v1/messages", headers={**AUTH, "anthropic-version": "2023-06-01"},
                   json={"model": "fake-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert_anthropic_error(r, 400, "invalid_request_error")
