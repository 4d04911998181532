"""The OpenAI wire format through spendgate with the official openai SDK: every token and nano-dollar checked."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
import tiktoken

from tests.fakes.upstream import OPENAI_KEY, FakeUpstream
from tests.harness import ADMIN, Proxy, expected_nano, usd

pytestmark = pytest.mark.integration

MSGS = [{"role": "user", "content": "Write a haiku about budgets."}]


def sdk(proxy: Proxy, key: str = ADMIN, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base, api_key=key, max_retries=0, default_headers=headers or None)


def test_chat_non_stream_is_priced_attributed_and_recorded(proxy: Proxy, upstream: FakeUpstream) -> None:
    client = sdk(proxy, **{"X-Spendgate-Run": "run-7", "X-Spendgate-Station": "qa"})
    raw = client.chat.completions.with_raw_response.create(
        model="fake-in120-out30-cached20-reason8", messages=MSGS,
        metadata={"issue": "ISS-1", "agent": "coder", "user_id": "keep-me"},
    )
    completion = raw.parse()
    assert completion.usage.prompt_tokens == 120 and completion.usage.completion_tokens == 30
    want = expected_nano("gpt-4o-mini", input=120, output=30, cached=20, reasoning=8)
    assert raw.headers["x-spendgate-cost-usd"] == format(usd(want), ".9f").rstrip("0")
    row = proxy.call_row(raw.headers["x-spendgate-request-id"])
    assert (row["input_tokens"], row["cached_input_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (
        120, 20, 30, 8)
    assert row["cost_nano"] == want and row["cost_usd"] == usd(want)
    assert (row["org"], row["run"], row["station"], row["issue"], row["agent"]) == (
        "acme", "run-7", "qa", "ISS-1", "coder")
    assert row["status"] == "ok" and row["usage_source"] == "provider" and row["provider"] == "openai"
    sent = upstream.last
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"  # the client's key never crosses
    assert not any(h.startswith("x-spendgate") for h in sent.headers)
    assert sent.body["metadata"] == {"user_id": "keep-me"}  # only spendgate's own keys are removed


def test_stream_asks_for_usage_and_strips_it_again(proxy: Proxy, upstream: FakeUpstream) -> None:
    stream = sdk(proxy).chat.completions.create(model="fake-in50-out12", messages=MSGS, stream=True)
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage: it gets none
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).count("hello") == 12
    assert upstream.last.body["stream_options"] == {"include_usage": True}
    rows = proxy.calls(limit=1)
    assert rows[0]["output_tokens"] == 12 and rows[0]["input_tokens"] == 50
    assert rows[0]["cost_nano"] == expected_nano("gpt-4o-mini", input=50, output=12)


def test_stream_with_usage_requested_keeps_it_and_ends_with_cost_comment(proxy: Proxy) -> None:
    body = {"model": "fake-in40-out6", "messages": MSGS, "stream": True, "stream_options": {"include_usage": True}}
    with proxy.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        text = "".join(r.iter_text())
    want = expected_nano("gpt-4o-mini", input=40, output=6)
    assert '"prompt_tokens":40' in text.replace(" ", "")
    comment = f": spendgate cost_usd={format(usd(want), '.9f').rstrip('0')} request_id={r.headers['x-spendgate-request-id']}"
    assert comment in text and text.index(comment) < text.index("data: [DONE]")
    assert proxy.call_row(r.headers["x-spendgate-request-id"])["cost_nano"] == want


def test_legacy_completions_json_and_stream(proxy: Proxy) -> None:
    client = sdk(proxy)
    done = client.completions.with_raw_response.create(model="fake-in9-out4", prompt="Say hi")
    assert proxy.call_row(done.headers["x-spendgate-request-id"])["cost_nano"] == expected_nano(
        "gpt-4o-mini", input=9, output=4)
    chunks = list(client.completions.create(model="fake-in9-out7", prompt="Say hi", stream=True))
    assert sum(len(c.choices) for c in chunks) >= 7
    assert proxy.calls(limit=1)[0]["output_tokens"] == 7


def test_embeddings_with_the_sdk_default_base64(proxy: Proxy) -> None:
    raw = sdk(proxy).embeddings.with_raw_response.create(model="fake-in33", input=["a", "b"])
    assert len(raw.parse().data) == 2
    row = proxy.call_row(raw.headers["x-spendgate-request-id"])
    assert row["input_tokens"] == 33 and row["output_tokens"] == 0
    assert row["cost_nano"] == expected_nano("gpt-4o-mini", input=33, output=0)


def test_responses_api_json_and_stream(proxy: Proxy) -> None:
    client = sdk(proxy)
    raw = client.responses.with_raw_response.create(model="fake-in70-out20-reason5-cached10", input="hi")
    row = proxy.call_row(raw.headers["x-spendgate-request-id"])
    assert row["cost_nano"] == expected_nano("gpt-4o-mini", input=70, output=20, reasoning=5, cached=10)
    events = list(client.responses.create(model="fake-in30-out9", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    assert proxy.calls(limit=1)[0]["cost_nano"] == expected_nano("gpt-4o-mini", input=30, output=9)


def test_alias_route_rewrites_the_model_sent_upstream(proxy: Proxy, upstream: FakeUpstream) -> None:
    raw = sdk(proxy).chat.completions.with_raw_response.create(model="alias-mini", messages=MSGS)
    assert upstream.last.body["model"] == "fake-in11-out3"
    row = proxy.call_row(raw.headers["x-spendgate-request-id"])
    assert (row["model"], row["input_tokens"], row["output_tokens"]) == ("alias-mini", 11, 3)


def test_stream_without_usage_is_estimated_with_tiktoken(proxy: Proxy) -> None:
    chunks = list(sdk(proxy).chat.completions.create(model="fake-nousage-out25", messages=MSGS, stream=True))
    assert chunks
    row = proxy.calls(limit=1)[0]
    enc = tiktoken.get_encoding("cl100k_base")
    prompt = 3 + len(enc.encode("user")) + len(enc.encode(MSGS[0]["content"])) + 3  # OpenAI chat framing
    assert row["usage_source"] == "estimated" and row["status"] == "ok"
    assert (row["input_tokens"], row["output_tokens"]) == (prompt, 25)
    assert row["cost_nano"] == expected_nano("gpt-4o-mini", input=prompt, output=25) > 0


def test_client_hang_up_mid_stream_records_what_was_generated(proxy: Proxy, upstream: FakeUpstream) -> None:
    aborted_before = getattr(upstream.app.state, "aborted_streams", 0)
    body = {"model": "fake-in60-out400-gap10", "messages": MSGS, "stream": True}
    with proxy.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        request_id = r.headers["x-spendgate-request-id"]
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data:")
            if seen >= 10:
                break
    row = proxy.call_row(request_id)
    assert row["status"] == "cancelled" and row["usage_source"] == "estimated"
    assert row["input_tokens"] > 0 and 8 <= row["output_tokens"] < 400  # the provider call was cut short
    assert row["duration_ms"] < 3000 and row["cost_nano"] > 0
    for _ in range(100):  # the provider saw its call aborted (that is what stops the spend)
        if getattr(upstream.app.state, "aborted_streams", 0) > aborted_before:
            break
        time.sleep(0.02)
    assert upstream.app.state.aborted_streams > aborted_before


def test_codex_style_hang_up_right_after_completion_is_exact(proxy: Proxy) -> None:
    body = {"model": "fake-in44-out6", "input": "hi", "stream": True}
    with proxy.client() as c, c.stream("POST", "/v1/responses", json=body) as r:
        request_id = r.headers["x-spendgate-request-id"]
        for line in r.iter_lines():
            if "response.completed" in line:
                break  # hang up at once, before the stream closes
    row = proxy.call_row(request_id)
    assert row["usage_source"] == "provider" and row["status"] == "ok"
    assert row["cost_nano"] == expected_nano("gpt-4o-mini", input=44, output=6)


def test_provider_drops_the_stream(proxy: Proxy) -> None:
    with pytest.raises(openai.APIError):
        list(sdk(proxy).chat.completions.create(model="fake-in20-out50-drop5", messages=MSGS, stream=True))
    row = proxy.calls(limit=1)[0]
    assert row["status"] == "error" and row["usage_source"] == "estimated"
    assert row["output_tokens"] == 5 and row["cost_nano"] > 0


@pytest.mark.parametrize("status, exc", [(400, openai.BadRequestError), (429, openai.RateLimitError),
                                         (500, openai.InternalServerError)])
def test_provider_errors_pass_through_with_status_and_body(proxy: Proxy, status: int, exc: type) -> None:
    with pytest.raises(exc) as info:
        sdk(proxy).chat.completions.create(model=f"fake-err{status}", messages=MSGS)
    assert info.value.status_code == status
    assert "fake" in str(info.value.body).lower()  # the provider's own message
    row = proxy.calls(limit=1)[0]
    assert (row["status"], row["http_status"], row["cost_nano"]) == ("error", status, 0)


def test_unreachable_provider_is_502_and_timeout_is_504(proxy: Proxy) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        sdk(proxy).chat.completions.create(model="dead-model", messages=MSGS)
    assert info.value.status_code == 502 and info.value.body["code"] == "upstream_error"
    with pytest.raises(openai.APIStatusError) as info:
        sdk(proxy).chat.completions.create(model="fast-timeout-hang", messages=MSGS)
    assert info.value.status_code == 504 and info.value.body["code"] == "upstream_timeout"
    assert [r["http_status"] for r in proxy.calls(limit=2)] == [504, 502]


def test_mock_provider_answers_every_openai_endpoint(proxy: Proxy) -> None:
    client = sdk(proxy)
    reply = client.chat.completions.create(model="mock", messages=MSGS)
    assert reply.usage.completion_tokens == 12
    assert list(client.chat.completions.create(model="mock", messages=MSGS, stream=True))
    assert client.embeddings.create(model="mock", input="x").data
    assert client.responses.create(model="mock", input="hi").usage.output_tokens == 12
    assert "mock" in [m.id for m in client.models.list()]
    rows = proxy.calls(limit=4)
    assert all(r["provider"] == "mock" and r["usage_source"] == "provider" for r in rows)


def test_async_sdk_concurrent_calls_each_recorded_once(proxy: Proxy) -> None:
    import asyncio

    async def go() -> list[str]:
        client = openai.AsyncOpenAI(base_url=proxy.base, api_key=ADMIN, max_retries=0)
        results = await asyncio.gather(*(
            client.chat.completions.with_raw_response.create(model=f"fake-in{10 + i}-out3", messages=MSGS,
                                                             stream=False)
            for i in range(40)))
        await client.close()
        return [r.headers["x-spendgate-request-id"] for r in results]

    ids = asyncio.run(go())
    assert len(set(ids)) == 40
    rows = {r["request_id"]: r for r in proxy.calls(limit=100)}
    for _ in range(100):
        if len(rows) >= 40:
            break
        rows = {r["request_id"]: r for r in proxy.calls(limit=100)}
    assert set(ids) <= set(rows)
    assert sum(r["cost_nano"] for r in rows.values()) == sum(
        expected_nano("gpt-4o-mini", input=10 + i, output=3) for i in range(40))


def test_no_packet_leaves_loopback(proxy: Proxy) -> None:
    # Every configured api_base in the test config is loopback; spendgate never reads one from a client.
    for model in proxy.settings.models:
        assert model.api_base is None or model.api_base.startswith("http://127.0.0.1:")
    r = httpx.post(proxy.base + "/chat/completions", headers={"authorization": f"Bearer {ADMIN}"},
                   json={"model": "fake-x", "messages": MSGS, "api_base": "http://169.254.169.254/v1"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "api_base"


def test_provider_is_asked_for_uncompressed_bytes(proxy: Proxy, upstream: FakeUpstream) -> None:
    # spendgate scans and relays the body as it comes: a gzipped answer could be neither read nor relayed.
    with proxy.client() as c:
        r = c.post("/v1/chat/completions", headers={"accept-encoding": "gzip"},
                   json={"model": "fake-in5-out1", "messages": MSGS})
    assert r.status_code == 200
    assert upstream.last.headers["accept-encoding"] == "identity"
