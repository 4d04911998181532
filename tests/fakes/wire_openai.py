"""OpenAI wire format of the fake upstream: JSON bodies and SSE events, shaped as the real API sends them.

Stream builders return a list of (bytes, is_content) events; is_content marks the per-token events that
drop<K> counts.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson

from tests.fakes.model_options import Plan

Event = tuple[bytes, bool]
FINGERPRINT = "fp_fake"
DONE = b"data: [DONE]\n\n"

_ERROR_KIND = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", "service_unavailable"),
}


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    etype, code = _ERROR_KIND.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": etype, "param": param, "code": code}}


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _named_sse(obj: dict[str, Any]) -> bytes:
    return b"event: " + obj["type"].encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


# --- usage --------------------------------------------------------------------------------------------


def chat_usage(plan: Plan, n: int = 1) -> dict[str, Any]:
    out = plan.output_tokens * n
    return {
        "prompt_tokens": plan.input_tokens,
        "completion_tokens": out,
        "total_tokens": plan.input_tokens + out,
        "prompt_tokens_details": {"cached_tokens": plan.cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": plan.reasoning * n,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def responses_usage(plan: Plan) -> dict[str, Any]:
    return {
        "input_tokens": plan.input_tokens,
        "input_tokens_details": {"cached_tokens": plan.cached},
        "output_tokens": plan.output_tokens,
        "output_tokens_details": {"reasoning_tokens": plan.reasoning},
        "total_tokens": plan.input_tokens + plan.output_tokens,
    }


# --- chat completions ---------------------------------------------------------------------------------


def _tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_arguments(plan: Plan) -> list[str]:
    return ['{"text": "', *plan.pieces, '"}']


def chat_completion(plan: Plan, *, cid: str, model: str, created: int, n: int, tool: str | None) -> dict:
    finish = "length" if plan.truncated else ("tool_calls" if tool else "stop")
    choices = []
    for i in range(n):
        message: dict[str, Any] = {"role": "assistant", "content": plan.text, "refusal": None, "annotations": []}
        if tool:
            message["content"] = None
            message["tool_calls"] = [_tool_call(f"call_{cid}_{i}", tool, "".join(_tool_arguments(plan)))]
        choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": finish})
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }
    if plan.usage:
        body["usage"] = chat_usage(plan, n)
    return body


def chat_stream(
    plan: Plan, *, cid: str, model: str, created: int, n: int, tool: str | None, include_usage: bool
) -> list[Event]:
    with_usage = include_usage and plan.usage
    base: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
    base["service_tier"] = "default"
    base["system_fingerprint"] = FINGERPRINT

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        obj = {**base, "choices": [choice]}
        if with_usage:
            obj["usage"] = None
        return _sse(obj)

    events: list[Event] = []
    for i in range(n):
        if tool:
            call = {"index": 0, **_tool_call(f"call_{cid}_{i}", tool, "")}
            events.append((chunk(i, {"role": "assistant", "content": None, "tool_calls": [call]}), False))
        else:
            events.append((chunk(i, {"role": "assistant", "content": "", "refusal": None}), False))
    pieces = _tool_arguments(plan) if tool else plan.pieces
    for piece in pieces:
        for i in range(n):
            if tool:
                delta: dict[str, Any] = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
            else:
                delta = {"content": piece}
            events.append((chunk(i, delta), True))
    finish = "length" if plan.truncated else ("tool_calls" if tool else "stop")
    events.extend((chunk(i, {}, finish), False) for i in range(n))
    if with_usage:
        events.append((_sse({**base, "choices": [], "usage": chat_usage(plan, n)}), False))
    events.append((DONE, False))
    return events


# --- legacy completions --------------------------------------------------------------------------------


def _completion_usage(plan: Plan, n: int) -> dict[str, Any]:
    out = plan.output_tokens * n
    return {"prompt_tokens": plan.input_tokens, "completion_tokens": out, "total_tokens": plan.input_tokens + out}


def completion(plan: Plan, *, cid: str, model: str, created: int, n: int) -> dict[str, Any]:
    finish = "length" if plan.truncated else "stop"
    choices = [{"text": plan.text, "index": i, "logprobs": None, "finish_reason": finish} for i in range(n)]
    body: dict[str, Any] = {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "system_fingerprint": FINGERPRINT,
    }
    if plan.usage:
        body["usage"] = _completion_usage(plan, n)
    return body


def completion_stream(
    plan: Plan, *, cid: str, model: str, created: int, n: int, include_usage: bool
) -> list[Event]:
    with_usage = include_usage and plan.usage
    base = {"id": cid, "object": "text_completion", "created": created, "model": model}
    base["system_fingerprint"] = FINGERPRINT

    def chunk(index: int, text: str, finish: str | None = None) -> bytes:
        obj: dict[str, Any] = {
            **base,
            "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish}],
        }
        if with_usage:
            obj["usage"] = None
        return _sse(obj)

    events: list[Event] = [(chunk(i, piece), True) for piece in plan.pieces for i in range(n)]
    finish = "length" if plan.truncated else "stop"
    events.extend((chunk(i, "", finish), False) for i in range(n))
    if with_usage:
        events.append((_sse({**base, "choices": [], "usage": _completion_usage(plan, n)}), False))
    events.append((DONE, False))
    return events


# --- embeddings and models -----------------------------------------------------------------------------


def embeddings(plan: Plan, *, model: str, inputs: int, encoding_format: str | None) -> dict[str, Any]:
    data = []
    for i in range(inputs):
        vector = [round(0.125 * (j + 1) + 0.001 * i, 6) for j in range(8)]
        emb: Any = vector
        if encoding_format == "base64":
            emb = base64.b64encode(struct.pack("<8f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    body: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if plan.usage:
        body["usage"] = {"prompt_tokens": plan.input_tokens, "total_tokens": plan.input_tokens}
    return body


MODELS = {"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}]}


# --- responses API -------------------------------------------------------------------------------------


def response_object(plan: Plan, *, rid: str, model: str, created: int, body: dict, done: bool) -> dict:
    """The response resource; done=False gives the in-progress snapshot sent by response.created."""
    status = ("incomplete" if plan.truncated else "completed") if done else "in_progress"
    obj: dict[str, Any] = {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if done and plan.truncated else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": [_message_item(plan, rid, done=True)] if done else [],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "user": None,
        "metadata": body.get("metadata") or {},
    }
    if done and plan.usage:
        obj["usage"] = responses_usage(plan)
    elif not done:
        obj["usage"] = None
    return obj


def _message_item(plan: Plan, rid: str, *, done: bool) -> dict[str, Any]:
    content = [_text_part(plan.text)] if done else []
    status = "completed" if done else "in_progress"
    return {"id": "msg_" + rid[5:], "type": "message", "status": status, "content": content, "role": "assistant"}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def response_stream(plan: Plan, *, rid: str, model: str, created: int, body: dict) -> list[Event]:
    item_id = "msg_" + rid[5:]
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    snapshot = response_object(plan, rid=rid, model=model, created=created, body=body, done=False)
    final = response_object(plan, rid=rid, model=model, created=created, body=body, done=True)
    raw: list[tuple[dict[str, Any], bool]] = [
        ({"type": "response.created", "response": snapshot}, False),
        ({"type": "response.in_progress", "response": snapshot}, False),
        (
            {"type": "response.output_item.added", "output_index": 0, "item": _message_item(plan, rid, done=False)},
            False,
        ),
        ({"type": "response.content_part.added", **where, "part": _text_part("")}, False),
    ]
    raw.extend(
        ({"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}, True)
        for piece in plan.pieces
    )
    raw.append(({"type": "response.output_text.done", **where, "text": plan.text, "logprobs": []}, False))
    raw.append(({"type": "response.content_part.done", **where, "part": _text_part(plan.text)}, False))
    done_item = {"type": "response.output_item.done", "output_index": 0, "item": final["output"][0]}
    raw.append((done_item, False))
    last = "response.incomplete" if plan.truncated else "response.completed"
    raw.append(({"type": last, "response": final}, False))
    return [(_named_sse({**obj, "sequence_number": seq}), content) for seq, (obj, content) in enumerate(raw)]
