"""spendgate's own JSON API (OpenAI error shape): reading back recorded calls, scoped to the caller's org."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.auth import Principal
from proxy.errors import InvalidRequest, NotFound, ProxyError, error_response
from proxy.requests import parse_limit
from proxy.services import Services
from proxy.store.queries import CallFilter, InvalidCursor, get_call, list_calls


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def caller(request: Request) -> tuple[Services, Principal]:
    services: Services = request.app.state.services
    return services, services.keys.authenticate(request.headers)


def org_scope(principal: Principal, request: Request) -> str | None:
    """The org a read is scoped to: the key's own, or for an org-"*" admin the X-Org-ID it names (or all)."""
    if principal.all_orgs:
        return request.headers.get("x-org-id") or None
    return principal.org


def pins_of(principal: Principal) -> dict[str, str]:
    """An agent-role key reads only rows matching its own pins (its project / agent)."""
    if principal.role != "agent":
        return {}
    pins = {k: v for k, v in (("project", principal.project), ("agent", principal.agent)) if v}
    return pins or {"key_name": principal.key_name}


def _limit(raw: str | None) -> int:
    return parse_limit(raw, default=50, maximum=1000)


async def calls(request: Request) -> Response:
    try:
        services, principal = caller(request)
        q = request.query_params
        filters = CallFilter(**{k: q.get(k) for k in ("run", "issue", "agent", "station", "project")})
        try:
            rows, cursor = await list_calls(services.store, org=org_scope(principal, request), filters=filters,
                                            limit=_limit(q.get("limit")), cursor=q.get("cursor"),
                                            pins=pins_of(principal))
        except InvalidCursor:
            raise InvalidRequest("`cursor` is not valid; pass the next_cursor of a previous page",
                                 param="cursor") from None
        return json_response({"calls": rows, "next_cursor": cursor})
    except ProxyError as err:
        return error_response(err)


async def call_detail(request: Request) -> Response:
    try:
        services, principal = caller(request)
        row = await get_call(services.store, org=org_scope(principal, request),
                             request_id=request.path_params["request_id"], pins=pins_of(principal))
        if row is None:
            raise NotFound("no call with that request id is visible to this key")
        return json_response(row)
    except ProxyError as err:
        return error_response(err)


routes = [
    Route("/api/calls", calls, methods=["GET"]),
    Route("/api/calls/{request_id}", call_detail, methods=["GET"]),
]
