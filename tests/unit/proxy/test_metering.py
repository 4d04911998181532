"""StreamMeter and the body readers on provider bytes built as the real APIs send them."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from pricing.usage import Usage
from proxy.metering import StreamMeter, estimate_usage, generated_text_from_json, usage_from_json


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def data_event(obj: Any, name: str | None = None) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + (obj if isinstance(obj, bytes) else compact(obj)) + b"\n\n"


# --- OpenAI chat completions, stream_options.include_usage (chunks carry "usage": null, then a usage chunk) --

def chat_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "gpt-4o-mini-2024-07-18", "service_tier": "default", "system_fingerprint": "fp_1",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], "usage": None}


CHAT_USAGE = {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49,
              "prompt_tokens_details": {"cached_tokens": 32, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
CHAT_USAGE_EVENT = data_event({**chat_chunk({}), "choices": [], "usage": CHAT_USAGE})
CHAT_EVENTS = [
    data_event(chat_chunk({"role": "assistant", "content": "", "refusal": None})),
    data_event(chat_chunk({"content": "Hello"})),
    data_event(chat_chunk({"content": ", wörld"})),
    data_event(chat_chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                           "function": {"name": "get_weather", "arguments": ""}}]})),
    data_event(chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]})),
    data_event(chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]})),
    data_event(chat_chunk({}, finish="tool_calls")),
    CHAT_USAGE_EVENT,
    b"data: [DONE]\n\n",
]
CHAT_STREAM = b"".join(CHAT_EVENTS)

# --- OpenAI Responses API --------------------------------------------------------------------------------

RESPONSES_USAGE = {"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 1024}, "output_tokens": 300,
                   "output_tokens_details": {"reasoning_tokens": 256}, "total_tokens": 1500}
RESPONSES_EVENTS = [
    data_event({"type": "response.created", "sequence_number": 0,
                "response": {"id": "resp_1", "object": "response", "status": "in_progress", "usage": None}},
               "response.created"),
    data_event({"type": "response.output_text.delta", "sequence_number": 4, "item_id": "msg_1",
                "output_index": 1, "content_index": 0, "delta": "Hi "}, "response.output_text.delta"),
    data_event({"type": "response.output_text.delta", "sequence_number": 5, "item_id": "msg_1",
                "output_index": 1, "content_index": 0, "delta": "there"}, "response.output_text.delta"),
    data_event({"type": "response.function_call_arguments.delta", "sequence_number": 6, "item_id": "fc_1",
                "output_index": 2, "delta": "{\"q\":1}"}, "response.function_call_arguments.delta"),
    data_event({"type": "response.completed", "sequence_number": 9,
                "response": {"id": "resp_1", "object": "response", "status": "completed",
                             "usage": RESPONSES_USAGE}}, "response.completed"),
]
RESPONSES_STREAM = b"".join(RESPONSES_EVENTS)

# --- Anthropic Messages ----------------------------------------------------------------------------------

ANTHROPIC_EVENTS = [
    data_event({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5",
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 10, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000,
                  "output_tokens": 1}}}, "message_start"),
    data_event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
               "content_block_start"),
    b'event: ping\ndata: {"type": "ping"}\n\n',
    data_event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Bonjour"}},
               "content_block_delta"),
    data_event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " le monde"}},
               "content_block_delta"),
    data_event({"type": "content_block_stop", "index": 0}, "content_block_stop"),
    data_event({"type": "content_block_start", "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "calc", "input": {}}},
               "content_block_start"),
    data_event({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": "{\"x\": 2}"}}, "content_block_delta"),
    data_event({"type": "content_block_stop", "index": 1}, "content_block_stop"),
    data_event({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 15}}, "message_delta"),
    data_event({"type": "message_stop"}, "message_stop"),
]
ANTHROPIC_STREAM = b"".join(ANTHROPIC_EVENTS)
ANTHROPIC_USAGE = Usage(input_tokens=1110, output_tokens=15, cached_input_tokens=1000, cache_write_tokens=100)


def run(stream: bytes, *, anthropic: bool = False, strip: bool = False,
        chunks: list[bytes] | None = None) -> tuple[StreamMeter, bytes]:
    meter = StreamMeter(anthropic=anthropic, strip_usage_chunk=strip)
    out = b"".join(meter.feed(c) for c in (chunks if chunks is not None else [stream])) + meter.tail()
    return meter, out


def random_chunks(data: bytes, rng: random.Random) -> list[bytes]:
    chunks, i = [], 0
    while i < len(data):
        size = rng.choice((1, 2, 3, 7, 64, 500))
        chunks.append(data[i:i + size])
        i += size
    return chunks


# --- OpenAI chat -----------------------------------------------------------------------------------------


def test_chat_stream_usage_is_extracted() -> None:
    meter, _ = run(CHAT_STREAM)
    assert meter.usage == Usage(input_tokens=42, output_tokens=7, cached_input_tokens=32)
    assert meter.finished and meter.usage_final


def test_strip_removes_only_the_usage_chunk_and_keeps_every_other_byte() -> None:
    meter, out = run(CHAT_STREAM, strip=True)
    assert out == CHAT_STREAM.replace(CHAT_USAGE_EVENT, b"")
    assert b'"usage":{' not in out and out.count(b'"usage":null') == 7
    assert meter.usage == Usage(input_tokens=42, output_tokens=7, cached_input_tokens=32)


def test_without_strip_the_stream_is_byte_identical() -> None:
    _, out = run(CHAT_STREAM, strip=False)
    assert out == CHAT_STREAM


def test_crlf_streams_stay_byte_identical_and_strip_only_the_usage_chunk() -> None:
    crlf = CHAT_STREAM.replace(b"\n", b"\r\n")
    meter, out = run(crlf, strip=False)
    assert out == crlf and meter.usage is not None
    _, stripped = run(crlf, strip=True)
    assert stripped == crlf.replace(CHAT_USAGE_EVENT.replace(b"\n", b"\r\n"), b"")


def test_usage_null_chunks_alone_give_no_usage() -> None:
    meter, out = run(b"".join(CHAT_EVENTS[:7]) + b"data: [DONE]\n\n", strip=True)
    assert meter.usage is None and meter.fields == {} and not meter.usage_final
    assert meter.finished  # the stream ended properly, without usage: the caller estimates
    assert out == b"".join(CHAT_EVENTS[:7]) + b"data: [DONE]\n\n"


def test_chat_generated_text_has_content_and_tool_call_name_and_arguments() -> None:
    meter, _ = run(CHAT_STREAM)
    assert meter.generated_text() == 'Hello, wörldget_weather{"city":"Oslo"}'


def test_generated_text_that_says_done_does_not_end_the_stream() -> None:
    tricky = [data_event(chat_chunk({"content": "data: [DONE]"})),
              data_event(chat_chunk({"content": "response.completed"}))]
    meter = StreamMeter(anthropic=False, strip_usage_chunk=False)
    for event in tricky:
        meter.feed(event)
    assert not meter.finished  # a false end would record the call before its usage arrives
    meter.feed(CHAT_USAGE_EVENT + b"data: [DONE]\n\n")
    assert meter.finished and meter.usage is not None


def test_a_final_event_without_its_blank_line_is_metered_by_tail() -> None:
    body = b"".join(CHAT_EVENTS[:7])
    meter = StreamMeter(anthropic=False, strip_usage_chunk=True)
    out = meter.feed(body + CHAT_USAGE_EVENT + b"data: [DONE]\n")
    assert out == body and not meter.finished
    assert meter.tail() == b"data: [DONE]\n"
    assert meter.finished and meter.usage == Usage(input_tokens=42, output_tokens=7, cached_input_tokens=32)
    cut = StreamMeter(anthropic=False, strip_usage_chunk=True)
    cut.feed(body + CHAT_USAGE_EVENT[:-1])  # the usage chunk itself arrives without its blank line
    assert cut.tail() == b"" and cut.usage is not None and not cut.finished


# --- Responses API and Anthropic -------------------------------------------------------------------------


def test_responses_stream_usage_comes_from_response_completed() -> None:
    meter, out = run(RESPONSES_STREAM, strip=True)
    assert out == RESPONSES_STREAM  # nothing is stripped from a Responses stream
    assert meter.finished
    assert meter.usage == Usage(input_tokens=1200, output_tokens=300, cached_input_tokens=1024,
                                reasoning_tokens=256)
    assert meter.generated_text() == 'Hi there{"q":1}'


def test_responses_stream_without_event_lines_still_ends() -> None:
    stripped = b"".join(e.split(b"\n", 1)[1] for e in RESPONSES_EVENTS)
    meter, _ = run(stripped)
    assert meter.finished and meter.usage is not None and meter.usage.reasoning_tokens == 256


def test_anthropic_usage_is_normalised_and_final_only_after_message_delta() -> None:
    meter = StreamMeter(anthropic=True, strip_usage_chunk=False)
    out = meter.feed(b"".join(ANTHROPIC_EVENTS[:-2]))
    assert meter.usage is None and not meter.usage_final  # message_start alone is not a final usage
    assert meter.fields == {"input_tokens": 1110, "cached_input_tokens": 1000, "cache_write_tokens": 100,
                            "output_tokens": 1}
    out += meter.feed(ANTHROPIC_EVENTS[-2])
    assert meter.usage == ANTHROPIC_USAGE and not meter.finished
    out += meter.feed(ANTHROPIC_EVENTS[-1])
    assert meter.finished and out == ANTHROPIC_STREAM


def test_anthropic_generated_text_has_text_and_tool_input() -> None:
    meter, _ = run(ANTHROPIC_STREAM, anthropic=True)
    assert meter.generated_text() == 'Bonjour le monde{"x": 2}'


def test_anthropic_text_saying_message_stop_does_not_end_the_stream() -> None:
    meter = StreamMeter(anthropic=True, strip_usage_chunk=False)
    meter.feed(data_event({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "text_delta", "text": "event: message_stop"}}, "content_block_delta"))
    assert not meter.finished
    meter.feed(b'data: {"type":"message_stop"}\n\n')  # without its event line
    assert meter.finished


@pytest.mark.parametrize("stream, anthropic, strip", [
    (CHAT_STREAM, False, True), (CHAT_STREAM, False, False), (RESPONSES_STREAM, False, False),
    (ANTHROPIC_STREAM, True, False), (CHAT_STREAM.replace(b"\n", b"\r\n"), False, True),
], ids=["chat-strip", "chat", "responses", "anthropic", "chat-crlf-strip"])
def test_any_chunking_gives_the_same_bytes_and_usage(stream: bytes, anthropic: bool, strip: bool) -> None:
    whole, whole_out = run(stream, anthropic=anthropic, strip=strip)
    rng = random.Random(7)
    chunkings = [[stream[i:i + 1] for i in range(len(stream))]] + [random_chunks(stream, rng) for _ in range(40)]
    for chunks in chunkings:
        meter, out = run(stream, anthropic=anthropic, strip=strip, chunks=chunks)
        assert out == whole_out
        assert (meter.usage, meter.fields, meter.finished) == (whole.usage, whole.fields, whole.finished)
        assert meter.generated_text() == whole.generated_text()


# --- non-streamed bodies ---------------------------------------------------------------------------------


def test_usage_from_json_for_each_body_shape() -> None:
    chat = {"id": "c", "object": "chat.completion", "choices": [], "usage": CHAT_USAGE}
    assert usage_from_json(compact(chat), anthropic=False) == Usage(42, 7, 32)
    embeddings = {"object": "list", "data": [], "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    assert usage_from_json(compact(embeddings), anthropic=False) == Usage(input_tokens=8)
    responses = {"id": "resp_1", "object": "response", "output": [], "usage": RESPONSES_USAGE}
    assert usage_from_json(compact(responses), anthropic=False) == Usage(
        input_tokens=1200, output_tokens=300, cached_input_tokens=1024, reasoning_tokens=256)
    reasoning = {**chat, "usage": {**CHAT_USAGE, "completion_tokens_details": {"reasoning_tokens": 5}}}
    assert usage_from_json(compact(reasoning), anthropic=False).reasoning_tokens == 5  # type: ignore[union-attr]
    message = {"type": "message", "content": [], "usage": {
        "input_tokens": 10, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000, "output_tokens": 15}}
    assert usage_from_json(compact(message), anthropic=True) == ANTHROPIC_USAGE


def test_deepseek_cache_hits_count_as_cached_input() -> None:
    body = {"choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110,
                                     "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36}}
    assert usage_from_json(compact(body), anthropic=False) == Usage(100, 10, cached_input_tokens=64)


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"choices": []}', b'{"usage": null}'])
def test_no_usage_gives_none(body: bytes) -> None:
    assert usage_from_json(body, anthropic=False) is None
    assert usage_from_json(body, anthropic=True) is None


def test_generated_text_from_json_for_each_body_shape() -> None:
    chat = {"choices": [{"index": 0, "message": {
        "role": "assistant", "content": "Sure.", "reasoning_content": "think",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}},
        {"index": 1, "text": "legacy"}]}
    assert generated_text_from_json(compact(chat), anthropic=False) == 'Sure.think{"a":1}legacy'
    responses = {"output": [
        {"type": "reasoning", "summary": []},
        {"type": "message", "content": [{"type": "output_text", "text": "Answer"}]},
        {"type": "function_call", "name": "f", "call_id": "c", "arguments": "{\"b\":2}"}]}
    assert generated_text_from_json(compact(responses), anthropic=False) == 'Answer{"b":2}'
    message = {"content": [{"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "Hi"},
                           {"type": "text", "text": ""}, {"type": "redacted_thinking", "data": "xx"},
                           {"type": "tool_use", "id": "t", "name": "calc", "input": {"x": 2}}]}
    assert generated_text_from_json(compact(message), anthropic=True) == 'hmmHi{"x":2}'
    assert generated_text_from_json(b"nope", anthropic=True) == ""
    assert generated_text_from_json(b'{"choices": [{"message": "odd"}]}', anthropic=False) == ""


# --- estimation ------------------------------------------------------------------------------------------


class StubCounter:
    """Counts one token per character, so expected numbers are obvious."""

    def count_request(self, endpoint: str, body: dict[str, Any], model: str) -> int:
        return 100

    def count_text(self, text: str, model: str) -> int:
        return len(text)


def test_estimate_usage_counts_when_nothing_was_reported() -> None:
    usage = estimate_usage(StubCounter(), endpoint="chat", body={}, model="gpt-4o", generated="abcde")  # type: ignore[arg-type]
    assert usage == Usage(input_tokens=100, output_tokens=5)


def test_estimate_usage_keeps_what_the_provider_reported() -> None:
    reported = {"input_tokens": 1110, "cached_input_tokens": 1000, "cache_write_tokens": 100, "output_tokens": 1,
                "reasoning_tokens": 1}
    usage = estimate_usage(StubCounter(), endpoint="messages", body={}, model="m", generated="abc",  # type: ignore[arg-type]
                           reported=reported)
    assert usage == Usage(input_tokens=1110, output_tokens=3, cached_input_tokens=1000, cache_write_tokens=100,
                          reasoning_tokens=1)
    more = estimate_usage(StubCounter(), endpoint="messages", body={}, model="m", generated="ab",  # type: ignore[arg-type]
                          reported={"output_tokens": 50})
    assert (more.input_tokens, more.output_tokens) == (100, 50)  # reported output above the count is kept
