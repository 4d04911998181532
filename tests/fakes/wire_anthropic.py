"""Anthropic Messages wire format of the fake upstream: JSON bodies and named SSE events.

Anthropic's usage has its own semantics: input_tokens excludes cache reads and cache writes.
"""

from __future__ import annotations

from typing import Any

import orjson

from tests.fakes.model_options import Plan

Event = tuple[bytes, bool]

_ERROR_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    etype = _ERROR_TYPE.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": etype, "message": message}}


def _sse(obj: dict[str, Any]) -> bytes:
    return b"event: " + obj["type"].encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def usage(plan: Plan, output_tokens: int | None = None) -> dict[str, Any]:
    return {
        "input_tokens": plan.input_tokens - plan.cached - plan.cache_write,
        "cache_creation_input_tokens": plan.cache_write,
        "cache_read_input_tokens": plan.cached,
        "cache_creation": {"ephemeral_5m_input_tokens": plan.cache_write, "ephemeral_1h_input_tokens": 0},
        "output_tokens": plan.output_tokens if output_tokens is None else output_tokens,
        "service_tier": "standard",
    }


def _stop_reason(plan: Plan, tool: str | None) -> str:
    return "max_tokens" if plan.truncated else ("tool_use" if tool else "end_turn")


def message(plan: Plan, *, mid: str, model: str, tool: str | None) -> dict[str, Any]:
    if tool:
        block: dict[str, Any] = {"type": "tool_use", "id": "toolu_" + mid[4:], "name": tool}
        block["input"] = {"text": plan.text}
    else:
        block = {"type": "text", "text": plan.text}
    body: dict[str, Any] = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [block],
        "stop_reason": _stop_reason(plan, tool),
        "stop_sequence": None,
    }
    if plan.usage:
        body["usage"] = usage(plan)
    return body


def message_stream(plan: Plan, *, mid: str, model: str, tool: str | None) -> list[Event]:
    """message_start .. message_stop; with nousage the stream ends after content_block_stop."""
    start = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage(plan, output_tokens=1),
    }
    if tool:
        block: dict[str, Any] = {"type": "tool_use", "id": "toolu_" + mid[4:], "name": tool, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in ('{"text": "', *plan.pieces, '"}')]
    else:
        block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in plan.pieces]
    events: list[Event] = [
        (_sse({"type": "message_start", "message": start}), False),
        (_sse({"type": "content_block_start", "index": 0, "content_block": block}), False),
        (_sse({"type": "ping"}), False),
    ]
    events.extend((_sse({"type": "content_block_delta", "index": 0, "delta": d}), True) for d in deltas)
    events.append((_sse({"type": "content_block_stop", "index": 0}), False))
    if not plan.usage:
        return events
    delta = {"stop_reason": _stop_reason(plan, tool), "stop_sequence": None}
    events.append(
        (_sse({"type": "message_delta", "delta": delta, "usage": {"output_tokens": plan.output_tokens}}), False)
    )
    events.append((_sse({"type": "message_stop"}), False))
    return events
