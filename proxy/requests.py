"""Reading and checking an incoming proxied request before anything is forwarded."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request

from proxy.errors import InvalidRequest, RequestTooLarge

# Request headers the provider may see (its own API options); nothing else of the client's crosses.
FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta", "openai-beta", "accept")
# Body keys that would let a client steer where a call goes or with which credentials (litellm honours
# them as keyword arguments); refused wherever they appear at the top level.
_STEERING_KEYS = frozenset({
    "api_base", "base_url", "api_key", "api_version", "custom_llm_provider", "litellm_params",
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "aws_region_name",
    "vertex_credentials", "vertex_project", "vertex_location", "azure_ad_token", "organization",
    "extra_headers", "headers", "mock_response",
})
# Of those, the ones that only ever name an upstream or a credential are refused at any depth too (inside
# `metadata`, a message, `extra_body`, ...: a gateway behind us, or litellm, may honour them there). Not
# looked into: JSON schemas and a tool call's own input, which are data the model reads, not options.
_NESTED_STEERING = frozenset({
    "api_base", "base_url", "api_key", "custom_llm_provider", "litellm_params", "user_config", "extra_headers",
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "vertex_credentials", "azure_ad_token",
})
_SCHEMA_KEYS = frozenset({"parameters", "input_schema", "schema", "json_schema", "properties"})
_CONTAINERS = (dict, list)
_MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
MAX_TOKENS_CAP = 10_000_000
MAX_N = 128


async def read_body(request: Request, limit: int, declared: str | None) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` (before parsing anything).

    `declared` is the Content-Length header, if any."""
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("Content-Length must be a number")
        if int(declared) > limit:
            raise RequestTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def check_body(endpoint: str, body: Mapping[str, Any]) -> None:
    """Type checks spendgate relies on; everything else is the provider's to judge."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("`model` is required and must be a non-empty string", param="model")
    steering = sorted(_STEERING_KEYS.intersection(body))
    if steering:
        raise InvalidRequest(f"`{steering[0]}` cannot be set by a client: upstreams and credentials come from "
                             "spendgate's config only", param=steering[0])
    nested = _nested_steering(body)
    if nested:
        raise InvalidRequest(f"`{nested[1]}` (inside `{nested[0]}`) cannot be set by a client: upstreams and "
                             "credentials come from spendgate's config only", param=nested[0])
    if "stream" in body and not isinstance(body["stream"], bool) and body["stream"] is not None:
        raise InvalidRequest("`stream` must be a boolean", param="stream")
    for key in ("metadata", "stream_options"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise InvalidRequest(f"`{key}` must be an object", param=key)
    for key in _MAX_TOKENS_FIELDS:
        value = body.get(key)
        if value is not None and (not _is_int(value) or not 1 <= value <= MAX_TOKENS_CAP):
            raise InvalidRequest(f"`{key}` must be an integer from 1 to {MAX_TOKENS_CAP}", param=key)
    n = body.get("n")
    if n is not None and (not _is_int(n) or not 1 <= n <= MAX_N):
        raise InvalidRequest(f"`n` must be an integer from 1 to {MAX_N}", param="n")
    if endpoint in ("chat", "messages", "count_tokens"):
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("`messages` is required and must be a non-empty array", param="messages")
        if not all(isinstance(m, dict) for m in messages):
            raise InvalidRequest("every item of `messages` must be an object", param="messages")
    if endpoint == "embeddings" and body.get("input") is None:
        raise InvalidRequest("`input` is required", param="input")


def _nested_steering(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(top-level field, key) of the first upstream or credential key below the top level, if any.
    Iterative, so a deeply nested body cannot exhaust the stack."""
    stack: list[tuple[str, Any]] = [(k, v) for k, v in body.items() if isinstance(v, _CONTAINERS)]
    while stack:
        top, value = stack.pop()
        if isinstance(value, list):
            stack.extend([(top, v) for v in value if isinstance(v, _CONTAINERS)])
            continue
        if not _NESTED_STEERING.isdisjoint(value):
            return top, next(k for k in value if k in _NESTED_STEERING)
        kind = value.get("type")
        tool_call = isinstance(kind, str) and kind.endswith("tool_use")
        for key, item in value.items():
            if isinstance(item, _CONTAINERS) and key not in _SCHEMA_KEYS and not (tool_call and key == "input"):
                stack.append((top, item))
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: headers[name] for name in FORWARDED_HEADERS if name in headers}


def parse_limit(raw: str | None, *, default: int, maximum: int) -> int:
    """A page size from the query string: `default` when absent, else an integer from 1 to `maximum` (400)."""
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise InvalidRequest(f"`limit` must be an integer from 1 to {maximum}", param="limit")
    return int(raw)
