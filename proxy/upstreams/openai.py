"""OpenAI's wire format: where usage sits in a response or a stream event, and what text was generated."""

from __future__ import annotations

from typing import Any

from pricing.usage import Usage


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def usage_fields(usage: Any) -> dict[str, int] | None:
    """Normalise an OpenAI `usage` object (chat, completions, embeddings or responses) to Usage fields."""
    if not isinstance(usage, dict):
        return None
    if "input_tokens" in usage:  # Responses API
        in_details = usage.get("input_tokens_details") or {}
        out_details = usage.get("output_tokens_details") or {}
        return {
            "input_tokens": _int(usage.get("input_tokens")),
            "output_tokens": _int(usage.get("output_tokens")),
            "cached_input_tokens": _int(in_details.get("cached_tokens")),
            "reasoning_tokens": _int(out_details.get("reasoning_tokens")),
        }
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    # DeepSeek reports cache hits as prompt_cache_hit_tokens instead of prompt_tokens_details.
    cached = _int(prompt_details.get("cached_tokens")) or _int(usage.get("prompt_cache_hit_tokens"))
    return {
        "input_tokens": _int(usage.get("prompt_tokens")),
        "output_tokens": _int(usage.get("completion_tokens")),
        "cached_input_tokens": cached,
        "cache_write_tokens": _int(prompt_details.get("cache_write_tokens")),
        "reasoning_tokens": _int(completion_details.get("reasoning_tokens")),
    }


def usage_from_body(body: Any) -> Usage | None:
    fields = usage_fields(body.get("usage")) if isinstance(body, dict) else None
    return Usage(**fields) if fields is not None else None


def usage_from_event(event: Any) -> dict[str, int] | None:
    """Usage carried by one stream event: the include_usage chunk, or response.completed / failed / incomplete."""
    if not isinstance(event, dict):
        return None
    if "usage" in event:
        return usage_fields(event["usage"])
    response = event.get("response")
    if isinstance(response, dict):
        return usage_fields(response.get("usage"))
    return None


def is_usage_only(event: Any) -> bool:
    """The extra chunk `stream_options.include_usage` adds: no choices, only usage."""
    return isinstance(event, dict) and event.get("choices") == [] and isinstance(event.get("usage"), dict)


def text_from_event(event: Any) -> str:
    """Generated text in one stream event (for estimating a stream that ended without usage)."""
    if not isinstance(event, dict):
        return ""
    kind = event.get("type")
    if isinstance(kind, str) and kind.endswith(".delta") and isinstance(event.get("delta"), str):
        return str(event["delta"])  # Responses API: output_text / reasoning / function_call_arguments deltas
    parts: list[str] = []
    for choice in event.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):  # legacy completions
            parts.append(choice["text"])
        delta = choice.get("delta")
        if isinstance(delta, dict):
            for key in ("content", "reasoning_content", "refusal"):
                if isinstance(delta.get(key), str):
                    parts.append(delta[key])
            for call in delta.get("tool_calls") or ():
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    parts.extend(v for v in (fn.get("name"), fn.get("arguments")) if isinstance(v, str))
    return "".join(parts)


def is_terminal(name: str | None, data: bytes) -> bool:
    return data == b"[DONE]" or name in ("response.completed", "response.failed", "response.incomplete")
