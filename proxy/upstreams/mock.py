"""The built-in `mock` provider: deterministic replies in the endpoint's wire format, usage counted with
tiktoken, optional latency and streaming. For demos, the README quickstart and benchmarks."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson

from pricing.tokens import TokenCounter
from proxy.upstreams.base import UpstreamRequest

_WORD = " mock"


def _sse(data: Any, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + (data if isinstance(data, bytes) else orjson.dumps(data)) + b"\n\n"


class MockResponse:
    def __init__(self, status: int, body: bytes | None, events: list[bytes] | None, gap: float) -> None:
        self.status = status
        self.headers = {"content-type": "text/event-stream" if events is not None else "application/json"}
        self._body = body
        self._events = events
        self._gap = gap

    async def read(self) -> bytes:
        return self._body or b""

    async def chunks(self) -> AsyncIterator[bytes]:
        for i, event in enumerate(self._events or ()):
            if self._gap and i:
                await asyncio.sleep(self._gap)
            yield event

    def close(self) -> None:
        return None


class MockUpstream:
    def __init__(self, counter: TokenCounter) -> None:
        self._counter = counter
        self._seq = 0

    async def aclose(self) -> None:
        return None

    async def open(self, request: UpstreamRequest) -> MockResponse:
        dep = request.deployment
        if dep.mock.latency_ms:
            await asyncio.sleep(dep.mock.latency_ms / 1000)
        self._seq += 1
        if not self._counter.is_loaded(dep.upstream_model):  # first call: load the encoding off the loop
            await asyncio.to_thread(self._counter.count_text, "", dep.upstream_model)
        reply = _Reply(self, request)
        gap = dep.mock.chunk_gap_ms / 1000
        if request.endpoint == "count_tokens":
            return MockResponse(200, orjson.dumps({"input_tokens": reply.prompt_tokens}), None, 0)
        if request.endpoint == "embeddings":
            return MockResponse(200, reply.embeddings(), None, 0)
        build = {"chat": reply.chat, "completions": reply.completions, "responses": reply.responses,
                 "messages": reply.messages}[request.endpoint]
        if request.stream:
            return MockResponse(200, None, list(build(stream=True)), gap)
        return MockResponse(200, next(build(stream=False)), None, 0)


class _Reply:
    """One mock answer: the same text and usage rendered in whichever wire format was asked for."""

    def __init__(self, mock: MockUpstream, request: UpstreamRequest) -> None:
        body, dep = request.body, request.deployment
        self.body = body
        self.model = str(body.get("model") or dep.upstream_model)
        self.id = f"mock-{mock._seq}"
        self.created = int(time.time())
        kind = "messages" if request.endpoint == "count_tokens" else request.endpoint  # same prompt shape
        self.prompt_tokens = mock._counter.count_request(kind, body, dep.upstream_model)
        limit = next((body[k] for k in ("max_tokens", "max_completion_tokens", "max_output_tokens")
                      if isinstance(body.get(k), int) and body[k] > 0), None)
        n_words = min(dep.mock.output_tokens, limit) if limit else dep.mock.output_tokens
        self.words = ["mock" if i == 0 else _WORD for i in range(n_words)]
        self.text = "".join(self.words)
        self.output_tokens = mock._counter.count_text(self.text, dep.upstream_model)
        n = body.get("n")
        self.n = n if isinstance(n, int) and 1 <= n <= 128 else 1
        opts = body.get("stream_options")
        self.include_usage = isinstance(opts, dict) and opts.get("include_usage") is True

    def _openai_usage(self) -> dict[str, Any]:
        out = self.output_tokens * self.n
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": out,
                "total_tokens": self.prompt_tokens + out,
                "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}

    def chat(self, stream: bool) -> Iterator[bytes]:
        base = {"id": "chatcmpl-" + self.id, "created": self.created, "model": self.model}
        if not stream:
            choices = [{"index": i, "message": {"role": "assistant", "content": self.text},
                        "finish_reason": "stop", "logprobs": None} for i in range(self.n)]
            yield orjson.dumps({**base, "object": "chat.completion", "choices": choices,
                                "usage": self._openai_usage()})
            return
        chunk = {**base, "object": "chat.completion.chunk"}
        extra = {"usage": None} if self.include_usage else {}
        for i in range(self.n):
            yield _sse({**chunk, **extra, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                        "finish_reason": None}]})
            for word in self.words:
                yield _sse({**chunk, **extra, "choices": [{"index": i, "delta": {"content": word},
                                                            "finish_reason": None}]})
            yield _sse({**chunk, **extra, "choices": [{"index": i, "delta": {}, "finish_reason": "stop"}]})
        if self.include_usage:
            yield _sse({**chunk, "choices": [], "usage": self._openai_usage()})
        yield _sse(b"[DONE]")

    def completions(self, stream: bool) -> Iterator[bytes]:
        base = {"id": "cmpl-" + self.id, "object": "text_completion", "created": self.created, "model": self.model}
        if not stream:
            choices = [{"index": i, "text": self.text, "finish_reason": "stop", "logprobs": None}
                       for i in range(self.n)]
            yield orjson.dumps({**base, "choices": choices, "usage": self._openai_usage()})
            return
        for i in range(self.n):
            for word in self.words:
                yield _sse({**base, "choices": [{"index": i, "text": word, "finish_reason": None}]})
        if self.include_usage:
            yield _sse({**base, "choices": [], "usage": self._openai_usage()})
        yield _sse(b"[DONE]")

    def embeddings(self) -> bytes:
        inputs = self.body.get("input")
        count = len(inputs) if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else 1
        vector = [0.1 * (i + 1) for i in range(8)]
        as_b64 = self.body.get("encoding_format") == "base64"
        packed = base64.b64encode(struct.pack("<8f", *vector)).decode() if as_b64 else vector
        data = [{"object": "embedding", "index": i, "embedding": packed} for i in range(count)]
        return orjson.dumps({"object": "list", "data": data, "model": self.model,
                             "usage": {"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens}})

    def _response(self, status: str, with_output: bool) -> dict[str, Any]:
        usage = {"input_tokens": self.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": self.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": self.prompt_tokens + self.output_tokens}
        output = [{"type": "message", "id": "msg_" + self.id, "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": self.text, "annotations": []}]}]
        return {"id": "resp_" + self.id, "object": "response", "created_at": self.created, "status": status,
                "model": self.model, "output": output if with_output else [],
                "usage": usage if with_output else None}

    def responses(self, stream: bool) -> Iterator[bytes]:
        if not stream:
            yield orjson.dumps(self._response("completed", True))
            return
        seq = iter(range(1_000_000))
        yield _sse({"type": "response.created", "sequence_number": next(seq),
                    "response": self._response("in_progress", False)}, "response.created")
        item = {"type": "message", "id": "msg_" + self.id, "status": "in_progress", "role": "assistant",
                "content": []}
        yield _sse({"type": "response.output_item.added", "sequence_number": next(seq), "output_index": 0,
                    "item": item}, "response.output_item.added")
        for word in self.words:
            yield _sse({"type": "response.output_text.delta", "sequence_number": next(seq), "item_id": item["id"],
                        "output_index": 0, "content_index": 0, "delta": word}, "response.output_text.delta")
        yield _sse({"type": "response.completed", "sequence_number": next(seq),
                    "response": self._response("completed", True)}, "response.completed")

    def messages(self, stream: bool) -> Iterator[bytes]:
        usage = {"input_tokens": self.prompt_tokens, "cache_read_input_tokens": 0,
                 "cache_creation_input_tokens": 0, "output_tokens": self.output_tokens}
        message = {"id": "msg_" + self.id, "type": "message", "role": "assistant", "model": self.model,
                   "content": [{"type": "text", "text": self.text}], "stop_reason": "end_turn",
                   "stop_sequence": None, "usage": usage}
        if not stream:
            yield orjson.dumps(message)
            return
        start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
        yield _sse({"type": "message_start", "message": start}, "message_start")
        yield _sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                   "content_block_start")
        for word in self.words:
            yield _sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}},
                       "content_block_delta")
        yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
        yield _sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": self.output_tokens}}, "message_delta")
        yield _sse({"type": "message_stop"}, "message_stop")
