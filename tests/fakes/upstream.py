"""A fake OpenAI + Anthropic provider on loopback whose behaviour and exact usage come from the model name.

See tests/fakes/model_options.py for the model-name grammar. `python -m tests.fakes.upstream --port N`
serves it in the foreground (for the bench).
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.fakes import wire_anthropic, wire_openai
from tests.fakes.model_options import Options, Plan, PlanError, make_plan, parse_options, prompt_counter
from tests.fakes.servers import ThreadedServer

OPENAI_KEY = "sk-fake-upstream"
ANTHROPIC_KEY = "sk-ant-fake-upstream"
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]

# Set while the fake deliberately breaks a connection, so uvicorn's "returned without completing
# response" error for that request is not logged (a real app error still is).
_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("fake_upstream_quiet", default=False)


class _QuietFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _QUIET.get()


@dataclass(frozen=True, slots=True)
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    raw_body: bytes


class Recorder:
    """The requests an app received, appended from the server thread and read from the test's."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self._items: list[Recorded] = []

    def add(self, request: Request, raw: bytes, body: Any) -> None:
        if not self.enabled:
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.scope["headers"]}
        query = request.scope["query_string"].decode("latin-1")
        item = Recorded(request.method, request.url.path, query, headers, body, raw)
        with self._lock:
            self._items.append(item)

    def snapshot(self) -> list[Recorded]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class SSEStream:
    """Sends prepared SSE events; sleeps gap_s between them; drop_after cuts the connection abruptly."""

    def __init__(self, events: list[tuple[bytes, bool]], plan: Plan, headers: list[tuple[bytes, bytes]]):
        self.events, self.gap_s, self.drop_after = events, plan.gap_s, plan.drop_after
        self.headers = SSE_HEADERS + headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        events, cut = self.events, False
        if self.drop_after is not None:
            content = [i for i, (_, is_content) in enumerate(self.events) if is_content]
            if len(content) >= self.drop_after:
                last = content[self.drop_after - 1] if self.drop_after > 0 else -1
                events, cut = events[: last + 1], True
        if self.gap_s <= 0:
            await send({"type": "http.response.body", "body": b"".join(e for e, _ in events), "more_body": True})
        else:
            # Like a real provider, stop generating the moment the client (the proxy) goes away.
            gone = asyncio.Event()

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                gone.set()

            watcher = asyncio.ensure_future(watch())
            try:
                for i, (event, _) in enumerate(events):
                    if i:
                        await asyncio.sleep(self.gap_s)
                    if gone.is_set():
                        state = scope["app"].state
                        state.aborted_streams = getattr(state, "aborted_streams", 0) + 1
                        _QUIET.set(True)
                        return
                    await send({"type": "http.response.body", "body": event, "more_body": True})
            finally:
                watcher.cancel()
        if cut:
            _QUIET.set(True)
            return  # uvicorn closes the transport: no final chunk, no [DONE] or message_stop
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class Hang:
    """Never answers; returns once the client has gone away (or the server cancels it at shutdown)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        _QUIET.set(True)
        while (await receive())["type"] != "http.disconnect":
            pass


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status, headers, media_type="application/json")


class _Fake:
    """Route handlers; one instance per app holds the keys, the recorder and the id counter."""

    def __init__(self, openai_key: str, anthropic_key: str, recorder: Recorder) -> None:
        self.openai_key, self.anthropic_key, self.recorder = openai_key, anthropic_key, recorder
        self._ids = itertools.count(1)

    # --- shared prelude: record, authenticate, parse, apply slow / hang / err -------------------------

    async def _prelude(self, request: Request, provider: str) -> tuple[dict[str, Any], Options, str] | Response:
        raw = await request.body()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        self.recorder.add(request, raw, body)
        if provider == "openai":
            azure = request.headers.get("api-key") == self.openai_key  # Azure OpenAI's header
            if request.headers.get("authorization") != f"Bearer {self.openai_key}" and not azure:
                return self._error(provider, 401, "Incorrect API key provided.")
        else:
            bearer = request.headers.get("authorization") == f"Bearer {self.anthropic_key}"
            if request.headers.get("x-api-key") != self.anthropic_key and not bearer:
                return self._error(provider, 401, "invalid x-api-key")
            if "anthropic-version" not in request.headers:
                return self._error(provider, 400, "anthropic-version: header is required")
        if not isinstance(body, dict):
            return self._error(provider, 400, "We could not parse the JSON body of your request.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._error(provider, 400, "you must provide a model parameter", "model")
        opts = parse_options(model)
        if opts.hang:
            return Hang()  # type: ignore[return-value]
        if opts.slow_ms:
            await asyncio.sleep(opts.slow_ms / 1000)
        if opts.error_status is not None:
            message = f"fake upstream: simulated error {opts.error_status} for model {model}"
            return self._error(provider, opts.error_status, message)
        return body, opts, model

    def _error(self, provider: str, status: int, message: str, param: str | None = None) -> Response:
        if provider == "openai":
            return _json(wire_openai.error_body(status, message, param), status, self._headers(provider))
        return _json(wire_anthropic.error_body(status, message), status, self._headers(provider))

    def _headers(self, provider: str) -> dict[str, str]:
        return {("x-request-id" if provider == "openai" else "request-id"): f"req_{next(self._ids)}"}

    def _plan(self, provider: str, opts: Options, body: dict, kind: str, max_key: str) -> Plan | Response:
        max_tokens = body.get(max_key)
        if kind == "chat" and max_tokens is None:
            max_tokens = body.get("max_tokens")
        try:
            return make_plan(opts, prompt_counter(body, kind), max_tokens)
        except PlanError as exc:
            return self._error(provider, 400, f"fake upstream: {exc}")

    def _stream(self, events: list[tuple[bytes, bool]], plan: Plan, provider: str) -> Any:
        headers = [(k.encode(), v.encode()) for k, v in self._headers(provider).items()]
        return SSEStream(events, plan, headers)

    # --- OpenAI --------------------------------------------------------------------------------------

    async def chat(self, request: Request) -> Any:
        pre = await self._prelude(request, "openai")
        if not isinstance(pre, tuple):
            return pre
        body, opts, model = pre
        plan = self._plan("openai", opts, body, "chat", "max_completion_tokens")
        if not isinstance(plan, Plan):
            return plan
        n = body.get("n") or 1
        tool = _tool_name(body, "openai") if opts.tool else None
        ids = {"cid": f"chatcmpl-{next(self._ids)}", "model": model, "created": int(time.time()), "n": n}
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            events = wire_openai.chat_stream(plan, tool=tool, include_usage=include, **ids)
            return self._stream(events, plan, "openai")
        return _json(wire_openai.chat_completion(plan, tool=tool, **ids), headers=self._headers("openai"))

    async def completions(self, request: Request) -> Any:
        pre = await self._prelude(request, "openai")
        if not isinstance(pre, tuple):
            return pre
        body, opts, model = pre
        plan = self._plan("openai", opts, body, "completions", "max_tokens")
        if not isinstance(plan, Plan):
            return plan
        ids = {"cid": f"cmpl-{next(self._ids)}", "model": model, "created": int(time.time())}
        n = body.get("n") or 1
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            events = wire_openai.completion_stream(plan, n=n, include_usage=include, **ids)
            return self._stream(events, plan, "openai")
        return _json(wire_openai.completion(plan, n=n, **ids), headers=self._headers("openai"))

    async def embeddings(self, request: Request) -> Any:
        pre = await self._prelude(request, "openai")
        if not isinstance(pre, tuple):
            return pre
        body, opts, model = pre
        plan = self._plan("openai", opts, body, "embeddings", "")
        if not isinstance(plan, Plan):
            return plan
        raw = body.get("input")
        flat = isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int))
        inputs = 1 if flat else len(raw or [])
        fmt = body.get("encoding_format")
        obj = wire_openai.embeddings(plan, model=model, inputs=inputs, encoding_format=fmt)
        return _json(obj, headers=self._headers("openai"))

    async def responses(self, request: Request) -> Any:
        pre = await self._prelude(request, "openai")
        if not isinstance(pre, tuple):
            return pre
        body, opts, model = pre
        plan = self._plan("openai", opts, body, "responses", "max_output_tokens")
        if not isinstance(plan, Plan):
            return plan
        ids = {"rid": f"resp_{next(self._ids):08d}", "model": model, "created": int(time.time()), "body": body}
        if body.get("stream"):
            return self._stream(wire_openai.response_stream(plan, **ids), plan, "openai")
        return _json(wire_openai.response_object(plan, done=True, **ids), headers=self._headers("openai"))

    async def models(self, request: Request) -> Response:
        self.recorder.add(request, b"", None)
        if request.headers.get("authorization") != f"Bearer {self.openai_key}":
            return self._error("openai", 401, "Incorrect API key provided.")
        return _json(wire_openai.MODELS, headers=self._headers("openai"))

    # --- Anthropic -----------------------------------------------------------------------------------

    async def messages(self, request: Request) -> Any:
        pre = await self._prelude(request, "anthropic")
        if not isinstance(pre, tuple):
            return pre
        body, opts, model = pre
        if not isinstance(body.get("max_tokens"), int):
            return self._error("anthropic", 400, "max_tokens: Field required")
        plan = self._plan("anthropic", opts, body, "messages", "max_tokens")
        if not isinstance(plan, Plan):
            return plan
        tool = _tool_name(body, "anthropic") if opts.tool else None
        mid = f"msg_{next(self._ids):08d}"
        if body.get("stream"):
            events = wire_anthropic.message_stream(plan, mid=mid, model=model, tool=tool)
            return self._stream(events, plan, "anthropic")
        obj = wire_anthropic.message(plan, mid=mid, model=model, tool=tool)
        return _json(obj, headers=self._headers("anthropic"))

    async def count_tokens(self, request: Request) -> Any:
        pre = await self._prelude(request, "anthropic")
        if not isinstance(pre, tuple):
            return pre
        body, opts, _ = pre
        plan = self._plan("anthropic", opts, body, "messages", "")
        if not isinstance(plan, Plan):
            return plan
        return _json({"input_tokens": plan.input_tokens}, headers=self._headers("anthropic"))


def _tool_name(body: dict[str, Any], provider: str) -> str:
    tools = body.get("tools")
    if isinstance(tools, list) and tools and isinstance(tools[0], dict):
        name = (tools[0].get("function") or {}).get("name") if provider == "openai" else tools[0].get("name")
        if isinstance(name, str):
            return name
    return "fake_tool"


def create_app(
    *, openai_key: str = OPENAI_KEY, anthropic_key: str = ANTHROPIC_KEY, record: bool = True
) -> Starlette:
    """The fake provider as a Starlette app; `app.state.recorder` holds what it received."""
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietFilter) for f in uvicorn_errors.filters):
        uvicorn_errors.addFilter(_QuietFilter())
    recorder = Recorder(record)
    fake = _Fake(openai_key, anthropic_key, recorder)
    post: list[tuple[str, Callable[[Request], Awaitable[Any]]]] = [
        ("/v1/chat/completions", fake.chat),
        ("/v1/completions", fake.completions),
        ("/v1/embeddings", fake.embeddings),
        ("/v1/responses", fake.responses),
        ("/v1/messages", fake.messages),
        ("/v1/messages/count_tokens", fake.count_tokens),
    ]
    routes = [Route(path, handler, methods=["POST"]) for path, handler in post]
    routes.append(Route("/v1/models", fake.models, methods=["GET"]))
    app = Starlette(routes=routes)
    app.state.recorder = recorder
    return app


class FakeUpstream:
    """The fake provider served on 127.0.0.1:<free port>: `with FakeUpstream() as up: ... up.openai_base`."""

    def __init__(
        self, *, openai_key: str = OPENAI_KEY, anthropic_key: str = ANTHROPIC_KEY, record: bool = True
    ) -> None:
        self.openai_key, self.anthropic_key = openai_key, anthropic_key
        self.app = create_app(openai_key=openai_key, anthropic_key=anthropic_key, record=record)
        self._recorder: Recorder = self.app.state.recorder
        self.server = ThreadedServer(self.app)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def openai_base(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base(self) -> str:
        return self.url

    @property
    def requests(self) -> list[Recorded]:
        """A copy of the requests received so far, oldest first."""
        return self._recorder.snapshot()

    @property
    def last(self) -> Recorded:
        items = self._recorder.snapshot()
        if not items:
            raise AssertionError("the fake upstream has received no request")
        return items[-1]

    def clear(self) -> None:
        self._recorder.clear()

    def start(self) -> FakeUpstream:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the fake upstream in the foreground.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    args = parser.parse_args()
    import uvicorn

    app = create_app(record=False)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
