"""OpenAI wire-format routes: every billable one goes through `relay.handle`, the one metering choke point."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.errors import NotMetered, ProxyError, error_response
from proxy.relay import Reply, handle, new_request_id
from proxy.services import Services


async def chat_completions(request: Request) -> Reply:
    return await handle(request, "chat")


async def completions(request: Request) -> Reply:
    return await handle(request, "completions")


async def embeddings(request: Request) -> Reply:
    return await handle(request, "embeddings")


async def responses(request: Request) -> Reply:
    return await handle(request, "responses")


async def list_models(request: Request) -> Response:
    """The configured model names this key may call, in OpenAI's list format, or Anthropic's when the client
    is an Anthropic one (it sends `anthropic-version`)."""
    services: Services = request.app.state.services
    anthropic = "anthropic-version" in request.headers
    try:
        principal = services.keys.authenticate(request.headers)
    except ProxyError as err:
        return error_response(err, "anthropic" if anthropic else "openai")
    names = [name for name in services.router.model_names() if principal.may_use(name)]
    if anthropic:
        body = {"data": [{"type": "model", "id": n, "display_name": n, "created_at": "1970-01-01T00:00:00Z"}
                         for n in names],
                "has_more": False, "first_id": names[0] if names else None, "last_id": names[-1] if names else None}
    else:
        body = {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "spendgate"}
                                           for n in names]}
    return Response(orjson.dumps(body), media_type="application/json")


async def not_metered(request: Request) -> Response:
    err = NotMetered(f"{request.method} {request.url.path} is not supported: spendgate cannot meter it, and "
                     "nothing is forwarded unmetered")
    return error_response(err, "openai", new_request_id())


_UNMETERED = ["/v1/batches{rest:path}", "/v1/files{rest:path}", "/v1/images/{rest:path}", "/v1/audio/{rest:path}",
              "/v1/realtime{rest:path}", "/v1/fine_tuning/{rest:path}", "/v1/moderations", "/v1/uploads{rest:path}",
              "/v1/vector_stores{rest:path}", "/v1/assistants{rest:path}", "/v1/threads{rest:path}",
              "/v1/messages/batches{rest:path}"]

routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/responses", responses, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    *(Route(path, not_metered, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]) for path in _UNMETERED),
]
