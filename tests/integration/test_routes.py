"""Model routes: fallback chains (entries sharing a name), and which models a key may call."""

from __future__ import annotations

import openai
import pytest

from tests.error_shapes import assert_openai_error
from tests.fakes.upstream import FakeUpstream
from tests.harness import ADMIN, LIMITED, Proxy, expected_nano

pytestmark = pytest.mark.integration
MSGS = [{"role": "user", "content": "hi"}]


def sdk(proxy: Proxy, key: str = ADMIN) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base, api_key=key, max_retries=0)


def test_unreachable_first_choice_falls_back_and_records_the_retry(proxy: Proxy) -> None:
    raw = sdk(proxy).chat.completions.with_raw_response.create(model="chain-down", messages=MSGS,
                                                               extra_headers={"X-Spendgate-Run": "r-fb"})
    assert raw.parse().usage.completion_tokens == 4
    final = proxy.call_row(raw.headers["x-spendgate-request-id"])
    failed = proxy.call_row(final["retry_of"])
    assert (failed["status"], failed["http_status"], failed["cost_nano"]) == ("error", 502, 0)
    assert final["status"] == "ok" and final["cost_nano"] == expected_nano("gpt-4o-mini", input=21, output=4)
    assert failed["run"] == final["run"] == "r-fb"  # both attempts keep the call's tags
    assert failed["retry_of"] is None


def test_provider_5xx_falls_back_to_the_next_deployment_priced_as_itself(proxy: Proxy,
                                                                        upstream: FakeUpstream) -> None:
    chunks = list(sdk(proxy).chat.completions.create(model="chain-503", messages=MSGS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).count("hello") == 5
    assert [r.body["model"] for r in upstream.requests[-2:]] == ["fake-err503", "fake-in22-out5"]
    rows = proxy.calls(limit=2)
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert rows[0]["retry_of"] == rows[1]["request_id"] and rows[1]["http_status"] == 503
    assert rows[0]["cost_nano"] == expected_nano("gpt-4o", input=22, output=5)


def test_client_errors_are_not_retried_elsewhere(proxy: Proxy, upstream: FakeUpstream) -> None:
    upstream.clear()
    with pytest.raises(openai.BadRequestError):
        sdk(proxy).chat.completions.create(model="chain-400", messages=MSGS)
    assert [r.body["model"] for r in upstream.requests] == ["fake-err400"]


def test_allowed_models_limit_what_a_key_may_call(proxy: Proxy) -> None:
    import httpx

    assert sdk(proxy, LIMITED).chat.completions.create(model="fake-in5-out1", messages=MSGS).usage
    r = httpx.post(proxy.base + "/chat/completions", headers={"authorization": f"Bearer {LIMITED}"},
                   json={"model": "mock", "messages": MSGS})
    assert_openai_error(r, 403, "forbidden")
    assert [m.id for m in sdk(proxy, LIMITED).models.list()] == ["fake-*"]


def test_azure_deployment_uses_api_key_header_and_api_version(proxy: Proxy, upstream: FakeUpstream) -> None:
    from tests.fakes.upstream import OPENAI_KEY

    raw = sdk(proxy).chat.completions.with_raw_response.create(model="azure-in15-out2", messages=MSGS)
    sent = upstream.last
    assert sent.headers["api-key"] == OPENAI_KEY and "authorization" not in sent.headers
    assert sent.query == "api-version=2024-10-21"
    assert proxy.call_row(raw.headers["x-spendgate-request-id"])["cost_nano"] == expected_nano(
        "gpt-4o-mini", input=15, output=2)
