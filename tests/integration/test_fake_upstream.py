"""The fake upstream, driven directly by the official OpenAI and Anthropic SDKs (no proxy in between)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager

import anthropic
import httpx
import openai
import pytest
from starlette.applications import Starlette

from tests.fakes.model_options import hello_text, parse_options, tiktoken_encoding
from tests.fakes.servers import ThreadedServer, free_port
from tests.fakes.upstream import ANTHROPIC_KEY, OPENAI_KEY, FakeUpstream

pytestmark = pytest.mark.integration

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def module_up() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture
def up(module_up: FakeUpstream) -> FakeUpstream:
    module_up.clear()
    return module_up


@pytest.fixture
def oai(up: FakeUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=up.openai_base, api_key=OPENAI_KEY, max_retries=0)


@pytest.fixture
def ant(up: FakeUpstream) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=up.url, api_key=ANTHROPIC_KEY, max_retries=0)


def raw_post(up: FakeUpstream, path: str, body: object, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(up.url + path, content=content, headers=headers, timeout=10)


def sse_data(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


# --- grammar and text ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1000])
def test_hello_text_has_exactly_n_tokens_in_cl100k_and_o200k(n: int) -> None:
    text = hello_text(n)
    assert text == "hello" + " hello" * (n - 1)
    for name in ("cl100k_base", "o200k_base"):
        assert len(tiktoken_encoding(name).encode(text)) == n, name


def test_model_name_grammar() -> None:
    opts = parse_options("gpt-4o-mini-in100-out20-cached10-cw5-reason3-err429-slow50-gap5-drop2-chunks3-nousage-hang-tool")
    assert (opts.input_tokens, opts.output_tokens, opts.cached, opts.cache_write, opts.reasoning) == (100, 20, 10, 5, 3)
    assert (opts.error_status, opts.slow_ms, opts.gap_ms, opts.drop_after, opts.chunks) == (429, 50, 5, 2, 3)
    assert opts.nousage and opts.hang and opts.tool
    plain = parse_options("claude-3-5-sonnet-20241022")
    assert plain.input_tokens is None and plain.output_tokens is None and plain.error_status is None


# --- OpenAI chat -----------------------------------------------------------------------------------------


def test_chat_non_stream_usage(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model="gpt-x-in120-out7-cached100-reason2", messages=USER, n=2)
    assert r.model == "gpt-x-in120-out7-cached100-reason2" and r.id.startswith("chatcmpl-")
    assert r.system_fingerprint and r.object == "chat.completion"
    u = r.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (120, 14, 134)
    assert u.prompt_tokens_details.cached_tokens == 100
    assert u.completion_tokens_details.reasoning_tokens == 4
    assert [c.message.content for c in r.choices] == [hello_text(5)] * 2
    assert r.choices[0].finish_reason == "stop"


def test_chat_default_prompt_count(oai: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]
    r = oai.chat.completions.create(model="fake", messages=messages)
    enc = tiktoken_encoding("cl100k_base")
    expected = len(enc.encode("be brief")) + len(enc.encode("hello world")) + 3 * 2 + 3
    assert r.usage.prompt_tokens == expected and r.usage.completion_tokens == 5


def test_chat_stream_with_include_usage(up: FakeUpstream, oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="fake-in50-out4", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == hello_text(4)
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 50
    assert chunks[-1].usage.completion_tokens == 4 and chunks[-1].usage.total_tokens == 54
    # the wire: every earlier chunk carries "usage": null, and the stream ends with [DONE]
    body = {"model": "fake-in50-out4", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    resp = raw_post(up, "/v1/chat/completions", body, authorization=f"Bearer {OPENAI_KEY}")
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_data(resp.text)
    assert all("usage" in e and e["usage"] is None for e in events[:-1]) and events[-1]["usage"]
    assert len(events) == 1 + 4 + 1 + 1 and resp.text.endswith("data: [DONE]\n\n")


def test_chat_stream_without_include_usage_has_none(up: FakeUpstream, oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(model="fake-out3-chunks2", messages=USER, stream=True))
    assert all(c.usage is None and c.choices for c in chunks)
    assert sum(1 for c in chunks if c.choices[0].delta.content) == 2  # chunks2: two content events
    resp = raw_post(up, "/v1/chat/completions", {"model": "fake", "messages": USER, "stream": True},
                    authorization=f"Bearer {OPENAI_KEY}")
    assert '"usage"' not in resp.text


def test_nousage_and_max_tokens(oai: openai.OpenAI) -> None:
    assert oai.chat.completions.create(model="fake-nousage", messages=USER).usage is None
    chunks = list(oai.chat.completions.create(
        model="fake-nousage", messages=USER, stream=True, stream_options={"include_usage": True}))
    assert all(c.usage is None and c.choices for c in chunks)
    r = oai.chat.completions.create(model="fake-out50", messages=USER, max_completion_tokens=10)
    assert r.usage.completion_tokens == 10 and r.choices[0].finish_reason == "length"


def test_chat_tool_call(oai: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    r = oai.chat.completions.create(model="fake-tool-out3", messages=USER, tools=tools)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {"text": hello_text(3)}
    chunks = list(oai.chat.completions.create(model="fake-tool-out3", messages=USER, tools=tools, stream=True))
    args = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""
                   for c in chunks if c.choices[0].delta.tool_calls)
    assert json.loads(args) == {"text": hello_text(3)} and chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_async_client_and_completions(up: FakeUpstream) -> None:
    client = openai.AsyncOpenAI(base_url=up.openai_base, api_key=OPENAI_KEY, max_retries=0)
    r = await client.completions.create(model="davinci-in11-out6", prompt="say hello")
    assert r.object == "text_completion" and r.choices[0].text == hello_text(6)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (11, 6)
    stream = await client.completions.create(
        model="davinci-in11-out6", prompt="x", stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == hello_text(6)
    assert chunks[-1].usage.total_tokens == 17
    await client.close()


# --- OpenAI embeddings, models, responses ----------------------------------------------------------------


def test_embeddings_base64_default_and_float(oai: openai.OpenAI) -> None:
    r = oai.embeddings.create(model="emb-in9", input=["a", "b", "c"])  # the SDK asks for base64
    assert len(r.data) == 3 and r.data[1].index == 1 and len(r.data[0].embedding) == 8
    assert r.data[0].embedding[:2] == [0.125, 0.25] and r.usage.prompt_tokens == r.usage.total_tokens == 9
    f = oai.embeddings.create(model="emb-in9", input="a", encoding_format="float")
    assert len(f.data) == 1 and f.data[0].embedding[0] == 0.125


def test_models(oai: openai.OpenAI) -> None:
    assert [m.id for m in oai.models.list()] == ["fake-model"]


def test_responses_non_stream_and_stream(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model="gpt-r-in30-cached10-out6-reason2", input="hi")
    assert r.status == "completed" and r.output_text == hello_text(4) and r.id.startswith("resp_")
    u = r.usage
    assert (u.input_tokens, u.output_tokens, u.total_tokens) == (30, 6, 36)
    assert u.input_tokens_details.cached_tokens == 10 and u.output_tokens_details.reasoning_tokens == 2
    events = list(oai.responses.create(model="gpt-r-in30-out3", input="hi", stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types.count("response.output_text.delta") == 3 and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.usage.input_tokens == 30 and events[-1].response.usage.output_tokens == 3
    with oai.responses.stream(model="gpt-r-in30-out3", input="hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == hello_text(3) and final.usage.total_tokens == 33


# --- Anthropic -------------------------------------------------------------------------------------------


def test_anthropic_message_usage_semantics(ant: anthropic.Anthropic) -> None:
    m = ant.messages.create(model="claude-in100-cached30-cw20-out7", max_tokens=64, messages=USER)
    assert m.type == "message" and m.stop_reason == "end_turn" and m.content[0].text == hello_text(7)
    u = m.usage
    assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens, u.output_tokens) == (
        50, 30, 20, 7)
    assert ant.messages.count_tokens(model="claude-in42", messages=USER).input_tokens == 42


def test_anthropic_stream_final_usage(up: FakeUpstream, ant: anthropic.Anthropic) -> None:
    with ant.messages.stream(model="claude-in100-cached30-out9", max_tokens=64, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == hello_text(9) and final.usage.output_tokens == 9
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens) == (70, 30)
    body = {"model": "claude-out2", "max_tokens": 10, "messages": USER, "stream": True}
    headers = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
    kinds = [e["type"] for e in sse_data(raw_post(up, "/v1/messages", body, **headers).text)]
    assert kinds == ["message_start", "content_block_start", "ping", "content_block_delta",
                     "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    body["model"] = "claude-out2-nousage"
    kinds = [e["type"] for e in sse_data(raw_post(up, "/v1/messages", body, **headers).text)]
    assert kinds[-1] == "content_block_stop"


def test_anthropic_tool_use_and_bearer_and_beta_query(up: FakeUpstream) -> None:
    client = anthropic.Anthropic(base_url=up.url, auth_token=ANTHROPIC_KEY, max_retries=0)  # Bearer
    tools = [{"name": "lookup", "input_schema": {"type": "object"}}]
    m = client.messages.create(model="claude-tool-out2", max_tokens=64, messages=USER, tools=tools)
    assert m.stop_reason == "tool_use" and m.content[0].name == "lookup"
    assert m.content[0].input == {"text": hello_text(2)}
    with client.messages.stream(model="claude-tool-out2", max_tokens=64, messages=USER, tools=tools) as s:
        assert s.get_final_message().content[0].input == {"text": hello_text(2)}
    assert up.requests[0].headers["authorization"] == f"Bearer {ANTHROPIC_KEY}"
    body = {"model": "claude-in3", "max_tokens": 5, "messages": USER}
    headers = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
    assert raw_post(up, "/v1/messages?beta=true", body, **headers).status_code == 200
    assert (up.last.path, up.last.query) == ("/v1/messages", "beta=true")  # as Claude Code calls it


def test_anthropic_requires_version_header(up: FakeUpstream) -> None:
    body = {"model": "claude", "max_tokens": 5, "messages": USER}
    resp = raw_post(up, "/v1/messages", body, **{"x-api-key": ANTHROPIC_KEY})
    assert resp.status_code == 400 and resp.json()["type"] == "error"
    assert resp.json()["error"]["type"] == "invalid_request_error"


# --- errors, failures, timing ----------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "exc"), [
    (400, openai.BadRequestError), (404, openai.NotFoundError), (429, openai.RateLimitError),
    (500, openai.InternalServerError), (529, openai.InternalServerError),
])
def test_openai_errors(oai: openai.OpenAI, status: int, exc: type[Exception]) -> None:
    with pytest.raises(exc) as info:
        oai.chat.completions.create(model=f"fake-err{status}", messages=USER)
    assert info.value.status_code == status
    assert set(info.value.body) == {"message", "type", "param", "code"}  # the SDK unwraps "error"


@pytest.mark.parametrize(("status", "exc"), [
    (400, anthropic.BadRequestError), (429, anthropic.RateLimitError),
    (500, anthropic.InternalServerError), (529, anthropic.OverloadedError),
])
def test_anthropic_errors(ant: anthropic.Anthropic, status: int, exc: type[Exception]) -> None:
    with pytest.raises(exc) as info:
        ant.messages.create(model=f"claude-err{status}", max_tokens=5, messages=USER)
    assert info.value.status_code == status and info.value.body["type"] == "error"


def test_auth_and_bad_json(up: FakeUpstream) -> None:
    bad = openai.OpenAI(base_url=up.openai_base, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="fake", messages=USER)
    bad_ant = anthropic.Anthropic(base_url=up.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad_ant.messages.create(model="claude", max_tokens=5, messages=USER)
    resp = raw_post(up, "/v1/chat/completions", b"{not json", authorization=f"Bearer {OPENAI_KEY}")
    assert resp.status_code == 400 and set(resp.json()["error"]) == {"message", "type", "param", "code"}
    resp = raw_post(up, "/v1/messages", b"{not json", **{"x-api-key": ANTHROPIC_KEY, "anthropic-version": "1"})
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"


def test_drop_breaks_sdk_streams(oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    seen: list[str] = []
    with pytest.raises((openai.APIConnectionError, httpx.RemoteProtocolError)):
        for chunk in oai.chat.completions.create(model="fake-out10-drop3", messages=USER, stream=True):
            seen.extend(c.delta.content for c in chunk.choices if c.delta.content)
    assert seen == ["hello", " hello", " hello"]
    with pytest.raises(Exception) as info:  # noqa: B017 - the anthropic SDK raises httpx2's own error class
        with ant.messages.stream(model="claude-out10-drop2-gap5", max_tokens=64, messages=USER) as stream:
            stream.get_final_message()
    assert isinstance(info.value, anthropic.APIConnectionError) or "RemoteProtocolError" in repr(info.value)


def test_slow_and_gap(oai: openai.OpenAI) -> None:
    start = time.monotonic()
    oai.chat.completions.create(model="fake-slow200", messages=USER)
    assert time.monotonic() - start >= 0.19
    start = time.monotonic()
    chunks = list(oai.chat.completions.create(model="fake-out4-gap50", messages=USER, stream=True))
    assert len(chunks) == 6 and time.monotonic() - start >= 0.24  # 6 events, 5 gaps of 50 ms


def test_hang_times_out_and_server_still_stops(oai: openai.OpenAI) -> None:
    start = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        oai.with_options(timeout=0.3).chat.completions.create(model="fake-hang", messages=USER)
    assert time.monotonic() - start < 5
    # a hang still in flight does not keep a server from stopping
    with FakeUpstream() as other:
        client = openai.OpenAI(base_url=other.openai_base, api_key=OPENAI_KEY, max_retries=0, timeout=30)

        def call() -> None:
            with contextlib.suppress(openai.APIError):  # the server cuts it off at shutdown
                client.chat.completions.create(model="x-hang", messages=USER)

        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        while not other.requests:
            time.sleep(0.01)
        start = time.monotonic()
    assert time.monotonic() - start < 4


def test_requests_are_recorded(up: FakeUpstream, oai: openai.OpenAI) -> None:
    oai.chat.completions.create(model="fake-in5", messages=USER, extra_headers={"X-Trace": "t1"})
    rec = up.last
    assert (rec.method, rec.path, rec.query) == ("POST", "/v1/chat/completions", "")
    assert rec.headers["authorization"] == f"Bearer {OPENAI_KEY}" and rec.headers["x-trace"] == "t1"
    assert rec.body == {"model": "fake-in5", "messages": USER} and json.loads(rec.raw_body) == rec.body
    assert len(up.requests) == 1
    up.clear()
    assert up.requests == []


# --- ThreadedServer --------------------------------------------------------------------------------------


def test_threaded_servers_side_by_side_with_lifespan() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette):  # noqa: ANN202
        events.append("startup")
        yield
        events.append("shutdown")

    with ThreadedServer(Starlette(lifespan=lifespan)) as a, FakeUpstream() as b:
        assert a.port != b.port and a.url == f"http://127.0.0.1:{a.port}"
        assert events == ["startup"] and httpx.get(a.url + "/nothing").status_code == 404
    assert events == ["startup", "shutdown"]
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_threaded_server_reports_failed_startup() -> None:
    @asynccontextmanager
    async def lifespan(app: Starlette):  # noqa: ANN202
        raise RuntimeError("boom")
        yield

    with pytest.raises(RuntimeError, match="exited"):
        ThreadedServer(Starlette(lifespan=lifespan)).start()
