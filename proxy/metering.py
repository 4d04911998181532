"""Reads usage out of a relayed response without rebuilding it, and estimates it when the provider is silent."""

from __future__ import annotations

import re
from typing import Any

import orjson

from pricing.tokens import TokenCounter
from pricing.usage import Usage
from proxy.sse import EventSplitter, iter_events, parse_event
from proxy.upstreams import anthropic as anthropic_wire
from proxy.upstreams import openai as openai_wire

_USAGE = re.compile(rb'"usage"\s*:\s*\{')
# Event names (or `type`s) that end a stream; OpenAI chat streams end with `data: [DONE]` instead.
_OPENAI_TERMINAL = frozenset({"response.completed", "response.failed", "response.incomplete"})
_ANTHROPIC_TERMINAL = frozenset({"message_stop"})
_OPENAI_MARKERS = (b"data: [DONE]", b"data:[DONE]", *(b"event: " + n.encode() for n in sorted(_OPENAI_TERMINAL)))
_ANTHROPIC_MARKERS = (b"event: message_stop",)
_LINE_END = (b"\n", b"\r", b"")


def _line_start(block: bytes, marker: bytes) -> int:
    """Last offset where `marker` is a whole line of `block`, or -1."""
    end = len(block)
    while (i := block.rfind(marker, 0, end)) >= 0:
        if (i == 0 or block[i - 1] in b"\r\n") and block[i + len(marker): i + len(marker) + 1] in _LINE_END:
            return i
        end = i
    return -1


def _event_end(block: bytes, pos: int) -> int:
    """End of the event holding offset `pos` (just after its blank line), or the end of the block."""
    ends = [i + n for i, n in ((block.find(b"\n\n", pos), 2), (block.find(b"\r\n\r\n", pos), 4)) if i >= 0]
    return min(ends) if ends else len(block)


def _event_start(block: bytes, line: int) -> int:
    """Start of the event holding the line at `line` (just after the blank line before it)."""
    lf, crlf = block.rfind(b"\n\n", 0, line), block.rfind(b"\r\n\r\n", 0, line)
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def usage_from_json(body: bytes, anthropic: bool) -> Usage | None:
    """Usage of a non-streamed response body (None when the provider did not report any)."""
    parsed = _loads(body)
    wire = anthropic_wire if anthropic else openai_wire
    return wire.usage_from_body(parsed)


class StreamMeter:
    """Watches a relayed SSE stream: takes the usage event(s), drops the usage chunk the client did not ask
    for, and keeps the raw events so that a stream ending without usage can still be estimated.

    `feed()` returns the bytes to send to the client: whole events only.
    """

    def __init__(self, *, anthropic: bool, strip_usage_chunk: bool) -> None:
        self._wire = anthropic_wire if anthropic else openai_wire
        self._anthropic = anthropic
        self._strip = strip_usage_chunk
        self._splitter = EventSplitter()
        self._events: list[bytes] = []
        self.fields: dict[str, int] = {}
        self.usage_final = False
        self.finished = False
        self.terminal_offset = -1  # where the terminal event starts in the block that carried it

    def feed(self, chunk: bytes) -> bytes:
        block = self._splitter.feed(chunk)
        return self._take(block) if block else b""

    def tail(self) -> bytes:
        """What is left after the last complete event when the stream ends (a final event without its blank
        line, or one cut short), metered like any other event."""
        rest = self._splitter.tail()
        return self._take(rest) if rest.strip() else rest

    def _take(self, block: bytes) -> bytes:
        self._events.append(block)
        out = self._take_usage(block) if _USAGE.search(block) else block
        if not self.finished:
            at = self.terminal_start(out)
            if at >= 0:
                self.finished, self.terminal_offset = True, at
        return out

    def _take_usage(self, block: bytes) -> bytes:
        """Read the events that carry usage (found by regex; the others are not even split) and drop the
        usage-only chunk the client did not ask for. Every other byte passes as received."""
        kept: list[bytes] = []
        keep_from = scanned_to = 0
        for match in _USAGE.finditer(block):
            if match.start() < scanned_to:
                continue
            start, end = _event_start(block, match.start()), _event_end(block, match.end())
            scanned_to = end
            _name, data = parse_event(block[start:end])
            event = _loads(data)
            found = self._wire.usage_from_event(event)
            if found:
                self.fields.update(found)
                if not self._anthropic or (isinstance(event, dict) and event.get("type") == "message_delta"):
                    self.usage_final = True
            if self._strip and openai_wire.is_usage_only(event):
                kept.append(block[keep_from:start])
                keep_from = end
        kept.append(block[keep_from:])
        return b"".join(kept)

    def terminal_start(self, block: bytes) -> int:
        """Offset in `block` where the stream's terminal event starts, or -1.

        A marker only counts at the start of a line: inside an event's JSON a newline is escaped, so text a
        model generates ("[DONE]", "message_stop") can never look like one. Events sent without their
        `event:` line are recognised by their `type`, parsing only blocks that mention a terminal name.
        """
        markers = _ANTHROPIC_MARKERS if self._anthropic else _OPENAI_MARKERS
        found = max((_line_start(block, m) for m in markers), default=-1)
        if found >= 0:
            return _event_start(block, found)
        names = _ANTHROPIC_TERMINAL if self._anthropic else _OPENAI_TERMINAL
        if not any(n.encode() in block for n in names):
            return -1
        offset = 0
        for raw, _name, data in iter_events(block):
            start = block.find(raw, offset)
            offset = start + len(raw)
            event = _loads(data)
            if isinstance(event, dict) and event.get("type") in names:
                return start
        return -1

    @property
    def usage(self) -> Usage | None:
        """The provider's usage, when it reported a complete one."""
        if not self.usage_final:
            return None
        return Usage(**self.fields)

    def generated_text(self) -> str:
        """Every generated token the stream carried (only computed on the rare estimation path)."""
        parts: list[str] = []
        for block in self._events:
            for _raw, _name, data in iter_events(block):
                if data and data != b"[DONE]":
                    parts.append(self._wire.text_from_event(_loads(data)))
        return "".join(parts)


def estimate_usage(
    counter: TokenCounter, *, endpoint: str, body: dict[str, Any], model: str, generated: str,
    reported: dict[str, int] | None = None,
) -> Usage:
    """Usage counted with tiktoken when the provider did not report it (stream cut, client gone).

    Whatever the provider did report (Anthropic's input side arrives in message_start) is kept.
    """
    reported = reported or {}
    input_tokens = reported.get("input_tokens") or counter.count_request(endpoint, body, model)
    output_tokens = max(reported.get("output_tokens", 0), counter.count_text(generated, model) if generated else 0)
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=reported.get("cached_input_tokens", 0),
        cache_write_tokens=reported.get("cache_write_tokens", 0),
        reasoning_tokens=min(reported.get("reasoning_tokens", 0), output_tokens),
    )


def generated_text_from_json(body: bytes, anthropic: bool) -> str:
    """The generated text of a non-streamed response (to estimate when the provider reported no usage)."""
    parsed = _loads(body)
    if not isinstance(parsed, dict):
        return ""
    parts: list[str] = []
    if anthropic:
        for block in parsed.get("content") or ():
            if not isinstance(block, dict):
                continue
            value = block.get("text") or block.get("thinking")
            if isinstance(value, str):
                parts.append(value)
            elif "input" in block:  # tool_use: the generated arguments
                parts.append(orjson.dumps(block["input"]).decode())
        return "".join(parts)
    for choice in parsed.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        message = message if isinstance(message, dict) else {}
        for value in (choice.get("text"), message.get("content"), message.get("reasoning_content")):
            if isinstance(value, str):
                parts.append(value)
        for call in message.get("tool_calls") or ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                parts.append(fn["arguments"])
    for item in parsed.get("output") or ():  # Responses API
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("arguments"), str):  # function_call
            parts.append(item["arguments"])
        for part in item.get("content") or ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
    return "".join(parts)
