"""Anthropic's wire format: usage in a message or its stream events, normalised to OpenAI's semantics."""

from __future__ import annotations

from typing import Any

from pricing.usage import Usage


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def usage_fields(usage: Any) -> dict[str, int]:
    """Anthropic's input_tokens excludes cache reads and writes; ours includes them (DESIGN §12)."""
    if not isinstance(usage, dict):
        return {}
    fields: dict[str, int] = {}
    if "output_tokens" in usage:
        fields["output_tokens"] = _int(usage.get("output_tokens"))
    if "input_tokens" in usage:
        read = _int(usage.get("cache_read_input_tokens"))
        write = _int(usage.get("cache_creation_input_tokens"))
        fields["input_tokens"] = _int(usage.get("input_tokens")) + read + write
        fields["cached_input_tokens"] = read
        fields["cache_write_tokens"] = write
    return fields


def usage_from_body(body: Any) -> Usage | None:
    if not isinstance(body, dict) or not isinstance(body.get("usage"), dict):
        return None
    fields = usage_fields(body["usage"])
    return Usage(**fields) if fields else None


def usage_from_event(event: Any) -> dict[str, int] | None:
    """message_start carries the input side, message_delta the (cumulative) output side."""
    if not isinstance(event, dict):
        return None
    kind = event.get("type")
    if kind == "message_start" and isinstance(event.get("message"), dict):
        return usage_fields(event["message"].get("usage")) or None
    if kind == "message_delta":
        return usage_fields(event.get("usage")) or None
    return None


def text_from_event(event: Any) -> str:
    if not isinstance(event, dict) or event.get("type") != "content_block_delta":
        return ""
    delta = event.get("delta") or {}
    for key in ("text", "partial_json", "thinking"):
        if isinstance(delta.get(key), str):
            return str(delta[key])
    return ""


def is_terminal(name: str | None, data: bytes) -> bool:
    return name == "message_stop"


def usage_complete(fields: dict[str, int]) -> bool:
    """A stream's usage is final once message_delta has given the output count."""
    return "output_tokens" in fields and "input_tokens" in fields
