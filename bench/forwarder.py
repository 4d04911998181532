"""The bare forwarder `make bench` compares spendgate against: no auth, no parsing, no metering.

A Starlette app with one shared HTTP client that relays `POST /v1/{path}` to the upstream with the upstream
key and sends back the status and the body (whole, or chunk by chunk for a stream). Two client variants:
aiohttp (the reference for spendgate's CPU target, DESIGN.md section 13) and httpx (for comparison).

    python -m bench.forwarder --client aiohttp|httpx --port N --upstream http://127.0.0.1:M/v1

It runs under uvicorn exactly as `spendgate serve` does (uvloop + httptools when installed, no access log,
no server header, log level warning), so the two differ only in what the application does per call.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

DEFAULT_KEY_ENV = "BENCH_UPSTREAM_KEY"


def _is_stream(content_type: str) -> bool:
    return content_type.startswith("text/event-stream")


def aiohttp_app(upstream: str, key: str) -> Starlette:
    """The forwarder over one aiohttp.ClientSession (unlimited keep-alive pool), as spendgate forwards."""
    import aiohttp

    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                         skip_auto_headers=("User-Agent",)) as session:
            state["session"] = session
            yield

    async def forward(request: Request) -> Response:
        session: aiohttp.ClientSession = state["session"]
        body = await request.body()
        headers = {"content-type": "application/json", "authorization": "Bearer " + key,
                   "accept": request.headers.get("accept", "*/*")}
        resp = await session.post(f"{upstream}/{request.path_params['path']}", data=body, headers=headers,
                                  allow_redirects=False)
        content_type = resp.headers.get("content-type", "application/json")
        if not _is_stream(content_type):
            data = await resp.read()
            resp.release()
            return Response(data, status_code=resp.status, media_type=content_type)
        return StreamingResponse(resp.content.iter_any(), status_code=resp.status, media_type=content_type,
                                 background=BackgroundTask(_release_aiohttp, resp))

    return _app(forward, lifespan)


def _release_aiohttp(resp: Any) -> None:
    resp.release() if resp.content.at_eof() else resp.close()


def httpx_app(upstream: str, key: str) -> Starlette:
    """The same forwarder over one httpx.AsyncClient with high connection limits (reference only)."""
    import httpx

    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=10_000, max_keepalive_connections=10_000)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600.0)) as client:
            state["client"] = client
            yield

    async def forward(request: Request) -> Response:
        client: httpx.AsyncClient = state["client"]
        body = await request.body()
        headers = {"content-type": "application/json", "authorization": "Bearer " + key,
                   "accept": request.headers.get("accept", "*/*")}
        req = client.build_request("POST", f"{upstream}/{request.path_params['path']}", content=body,
                                   headers=headers)
        resp = await client.send(req, stream=True)
        content_type = resp.headers.get("content-type", "application/json")
        if not _is_stream(content_type):
            data = await resp.aread()
            await resp.aclose()
            return Response(data, status_code=resp.status_code, media_type=content_type)
        return StreamingResponse(resp.aiter_raw(), status_code=resp.status_code, media_type=content_type,
                                 background=BackgroundTask(resp.aclose))

    return _app(forward, lifespan)


def _app(forward: Callable[[Request], Any], lifespan: Any) -> Starlette:
    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    routes = [Route("/v1/{path:path}", forward, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan)


def create_app(client: str, upstream: str, key: str) -> Starlette:
    """The forwarder app for `client` ("aiohttp" or "httpx")."""
    upstream = upstream.rstrip("/")
    if client == "aiohttp":
        return aiohttp_app(upstream, key)
    if client == "httpx":
        return httpx_app(upstream, key)
    raise ValueError(f"unknown client {client!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Bare Starlette forwarder (no metering) for benchmarks.")
    parser.add_argument("--client", choices=("aiohttp", "httpx"), default="aiohttp")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="OpenAI-style base URL including /v1")
    parser.add_argument("--key-env", default=DEFAULT_KEY_ENV, help="environment variable holding the upstream key")
    args = parser.parse_args(argv)
    import uvicorn

    app = create_app(args.client, args.upstream, os.environ.get(args.key_env, ""))
    # The same server settings as `spendgate serve` (proxy/cli.py), log level warning as in the bench config.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                server_header=False)


if __name__ == "__main__":
    main()
