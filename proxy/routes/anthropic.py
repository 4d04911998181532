"""Anthropic wire-format routes (Claude Code and the anthropic SDK point here)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from proxy.relay import Reply, handle


async def messages(request: Request) -> Reply:
    return await handle(request, "messages")


async def count_tokens(request: Request) -> Reply:
    return await handle(request, "count_tokens")


routes = [
    Route("/v1/messages", messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
]
