"""check_body and the small request helpers: what spendgate refuses before anything is forwarded."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.errors import InvalidRequest
from proxy.requests import MAX_N, MAX_TOKENS_CAP, check_body, forwarded_headers, parse_json_object

CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def refused(endpoint: str, body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        check_body(endpoint, body)
    assert info.value.status == 400 and info.value.code == "invalid_request"
    return info.value


@pytest.mark.parametrize("endpoint, body", [
    ("chat", CHAT),
    ("chat", {**CHAT, "stream": True, "stream_options": {"include_usage": True}, "n": 2, "max_tokens": 1}),
    ("chat", {**CHAT, "stream": None, "max_completion_tokens": MAX_TOKENS_CAP, "n": MAX_N, "metadata": {"a": "b"}}),
    ("completions", {"model": "m", "prompt": "x"}),
    ("responses", {"model": "m", "input": "x", "max_output_tokens": 10}),
    ("messages", {**CHAT, "max_tokens": 1024}),
    ("count_tokens", CHAT),
    ("embeddings", {"model": "m", "input": ["a", "b"]}),
])
def test_valid_bodies_pass(endpoint: str, body: dict[str, Any]) -> None:
    check_body(endpoint, body)


@pytest.mark.parametrize("model", [None, "", "   ", 5, ["gpt-4o"], {"name": "x"}])
def test_model_must_be_a_non_empty_string(model: Any) -> None:
    body = {k: v for k, v in CHAT.items() if k != "model"}
    if model is not None:
        body["model"] = model
    error = refused("chat", body)
    assert error.param == "model" and "`model` is required" in error.message


@pytest.mark.parametrize("key", ["api_base", "base_url", "api_key", "api_version", "custom_llm_provider",
                                 "litellm_params", "aws_secret_access_key", "vertex_credentials", "extra_headers",
                                 "headers", "mock_response", "organization"])
def test_steering_keys_are_refused_naming_the_key(key: str) -> None:
    error = refused("chat", {**CHAT, key: "http://attacker.example"})
    assert error.param == key
    assert error.message.startswith(f"`{key}` cannot be set by a client")
    assert "attacker" not in error.message


def test_several_steering_keys_name_the_first_in_order() -> None:
    assert refused("embeddings", {"model": "m", "input": "x", "base_url": "u", "api_key": "k"}).param == "api_key"


@pytest.mark.parametrize("stream", ["true", 1, 0, {}, []])
def test_stream_must_be_a_boolean(stream: Any) -> None:
    error = refused("chat", {**CHAT, "stream": stream})
    assert error.param == "stream" and "boolean" in error.message


@pytest.mark.parametrize("key", ["metadata", "stream_options"])
def test_metadata_and_stream_options_must_be_objects(key: str) -> None:
    assert refused("chat", {**CHAT, key: ["x"]}).param == key


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "max_output_tokens"])
@pytest.mark.parametrize("value", [0, -1, True, False, 1.5, 100.0, "100", MAX_TOKENS_CAP + 1])
def test_max_tokens_fields_must_be_sane_integers(field: str, value: Any) -> None:
    error = refused("chat", {**CHAT, field: value})
    assert error.param == field and f"from 1 to {MAX_TOKENS_CAP}" in error.message


@pytest.mark.parametrize("n", [0, -3, MAX_N + 1, True, 2.0, "2"])
def test_n_must_be_within_bounds(n: Any) -> None:
    error = refused("chat", {**CHAT, "n": n})
    assert error.param == "n" and f"from 1 to {MAX_N}" in error.message


@pytest.mark.parametrize("endpoint", ["chat", "messages", "count_tokens"])
@pytest.mark.parametrize("messages", [None, [], "hi", {"role": "user"}])
def test_messages_are_required_for_chat_and_messages(endpoint: str, messages: Any) -> None:
    body: dict[str, Any] = {"model": "m"}
    if messages is not None:
        body["messages"] = messages
    error = refused(endpoint, body)
    assert error.param == "messages" and "non-empty array" in error.message


def test_every_message_must_be_an_object() -> None:
    error = refused("chat", {"model": "m", "messages": [{"role": "user", "content": "a"}, "b"]})
    assert error.param == "messages" and "every item" in error.message


def test_messages_are_not_required_elsewhere() -> None:
    check_body("responses", {"model": "m", "input": "x"})
    check_body("completions", {"model": "m", "prompt": "x"})


@pytest.mark.parametrize("body", [{"model": "m"}, {"model": "m", "input": None}])
def test_embeddings_need_input(body: dict[str, Any]) -> None:
    error = refused("embeddings", body)
    assert error.param == "input" and "`input` is required" in error.message


def test_parse_json_object() -> None:
    assert parse_json_object(b'{"model": "m"}') == {"model": "m"}
    for raw, expected in [(b"", "empty"), (b"{", "not valid JSON"), (b"[1]", "must be a JSON object"),
                          (b'"x"', "must be a JSON object")]:
        with pytest.raises(InvalidRequest, match=expected):
            parse_json_object(raw)


def test_only_the_providers_own_headers_are_forwarded() -> None:
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "x", "openai-beta": "assistants=v2",
               "accept": "text/event-stream", "authorization": "Bearer sg-1", "x-api-key": "sg-1",
               "x-spendgate-run": "r", "connection": "keep-alive", "cookie": "c"}
    assert forwarded_headers(headers) == {"anthropic-version": "2023-06-01", "anthropic-beta": "x",
                                          "openai-beta": "assistants=v2", "accept": "text/event-stream"}
