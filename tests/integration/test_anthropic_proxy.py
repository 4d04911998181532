"""The Anthropic wire format through spendgate with the official anthropic SDK (Claude Code's path)."""

from __future__ import annotations

import anthropic
import pytest

from tests.fakes.upstream import ANTHROPIC_KEY, FakeUpstream
from tests.harness import ADMIN, Proxy, expected_nano

pytestmark = pytest.mark.integration

MSGS = [{"role": "user", "content": "Refactor this function."}]


def sdk(proxy: Proxy, key: str = ADMIN) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key=key, max_retries=0)


def test_messages_with_cache_read_and_write_are_normalised_and_priced(proxy: Proxy, upstream: FakeUpstream) -> None:
    raw = sdk(proxy).messages.with_raw_response.create(
        model="claude-fake-in1000-cached600-cw300-out40", max_tokens=100, messages=MSGS,
        metadata={"user_id": "user_abc_account_123_session_456"},
        extra_headers={"X-Spendgate-Issue": "ISS-9", "anthropic-beta": "prompt-caching-2024-07-31"})
    msg = raw.parse()
    assert msg.usage.input_tokens == 100  # Anthropic's own semantics: excludes cache reads and writes
    row = proxy.call_row(raw.headers["x-spendgate-request-id"])
    assert (row["input_tokens"], row["cached_input_tokens"], row["cache_write_tokens"], row["output_tokens"]) == (
        1000, 600, 300, 40)
    assert row["cost_nano"] == expected_nano("claude-sonnet-4-5", input=1000, cached=600, cache_write=300, output=40)
    assert row["issue"] == "ISS-9" and row["endpoint"] == "/v1/messages"
    sent = upstream.last
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY and "authorization" not in sent.headers
    assert sent.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert sent.body["metadata"] == {"user_id": "user_abc_account_123_session_456"}


def test_messages_stream_records_final_usage(proxy: Proxy) -> None:
    with sdk(proxy).messages.stream(model="claude-fake-in300-cached100-out25", max_tokens=200,
                                    messages=MSGS) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens == 25
    row = proxy.calls(limit=1)[0]
    assert row["usage_source"] == "provider" and row["status"] == "ok"
    assert row["cost_nano"] == expected_nano("claude-sonnet-4-5", input=300, cached=100, output=25)


def test_query_string_crosses_as_sent(proxy: Proxy, upstream: FakeUpstream) -> None:
    with proxy.client() as c:
        r = c.post("/v1/messages?beta=true", headers={"anthropic-version": "2023-06-01"},
                   json={"model": "claude-fake-in10-out2", "max_tokens": 5, "messages": MSGS})
    assert r.status_code == 200, r.text
    assert upstream.last.query == "beta=true"


def test_dated_claude_id_is_priced_by_the_requested_model(proxy: Proxy) -> None:
    raw = sdk(proxy).messages.with_raw_response.create(model="claude-sonnet-4-5-20250929", max_tokens=50,
                                                       messages=MSGS)
    usage = raw.parse().usage
    row = proxy.call_row(raw.headers["x-spendgate-request-id"])
    assert row["model"] == "claude-sonnet-4-5-20250929"
    assert row["cost_nano"] == expected_nano("claude-sonnet-4-5", input=usage.input_tokens,
                                             output=usage.output_tokens) > 0


def test_stream_cut_before_message_delta_keeps_reported_input(proxy: Proxy) -> None:
    with sdk(proxy).messages.stream(model="claude-fake-in77-out9-nousage", max_tokens=50, messages=MSGS) as s:
        text = "".join(s.text_stream)
    assert text.count("hello") == 9
    row = proxy.calls(limit=1)[0]
    assert row["usage_source"] == "estimated"
    assert (row["input_tokens"], row["output_tokens"]) == (77, 9)  # input from message_start, output counted


def test_count_tokens_is_forwarded_and_free(proxy: Proxy) -> None:
    count = sdk(proxy).messages.count_tokens(model="claude-fake-in42", messages=MSGS)
    assert count.input_tokens == 42
    row = proxy.calls(limit=1)[0]
    assert row["endpoint"] == "/v1/messages/count_tokens" and row["cost_nano"] == 0


def test_provider_error_passes_through_in_anthropic_shape(proxy: Proxy) -> None:
    with pytest.raises(anthropic.InternalServerError) as info:
        sdk(proxy).messages.create(model="claude-fake-err529", max_tokens=10, messages=MSGS)
    assert info.value.status_code == 529
    with pytest.raises(anthropic.AuthenticationError) as info2:
        sdk(proxy, key="sk-nope").messages.create(model="claude-fake-x", max_tokens=10, messages=MSGS)
    assert info2.value.body["type"] == "error" and info2.value.body["error"]["type"] == "authentication_error"


def test_mock_provider_speaks_anthropic_too(proxy: Proxy) -> None:
    msg = sdk(proxy).messages.create(model="mock", max_tokens=100, messages=MSGS)
    assert msg.usage.output_tokens == 12
    with sdk(proxy).messages.stream(model="mock", max_tokens=100, messages=MSGS) as s:
        assert s.get_final_message().usage.output_tokens == 12


def test_openai_format_to_anthropic_is_translated_by_litellm(proxy: Proxy, upstream: FakeUpstream) -> None:
    import openai

    client = openai.OpenAI(base_url=proxy.base, api_key=ADMIN, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="claude-fake-in64-out7", messages=MSGS, max_tokens=30)
    assert raw.parse().choices[0].message.content.count("hello") == 7
    assert upstream.last.path == "/v1/messages"
    row = proxy.call_row(raw.headers["x-spendgate-request-id"])
    assert (row["input_tokens"], row["output_tokens"]) == (64, 7)
    assert row["cost_nano"] == expected_nano("claude-sonnet-4-5", input=64, output=7)


def test_models_list_in_anthropic_format(proxy: Proxy) -> None:
    page = sdk(proxy).models.list()
    ids = [m.id for m in page.data]
    assert "mock" in ids and "claude-fake-*" in ids
    assert all(m.type == "model" for m in page.data)
