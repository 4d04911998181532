"""`/api/approvals`: list approvals (viewer, admin) and approve or deny a pending one (admin), per org."""

from __future__ import annotations

import math

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.approvals import ApprovalDesk
from proxy.errors import InvalidRequest, NotFound, ProxyError, error_response
from proxy.requests import parse_limit
from proxy.routes.api import caller, json_response, org_scope
from proxy.store.approvals import STATUSES


class Conflict(ProxyError):
    """The approval exists but is no longer pending (already decided, or expired)."""

    status, code, type = 409, "conflict", "invalid_request_error"


def _desk(request: Request) -> ApprovalDesk:
    desk: ApprovalDesk = request.app.state.services.approvals
    return desk


def _limit(raw: str | None) -> int:
    return parse_limit(raw, default=50, maximum=1000)


def _status(raw: str | None) -> str | None:
    if raw is None or raw == "all":
        return None
    if raw not in STATUSES:
        raise InvalidRequest(f"`status` must be one of {', '.join(STATUSES)}, or all", param="status")
    return raw


async def list_approvals(request: Request) -> Response:
    try:
        _, principal = caller(request)
        principal.require("viewer", "admin")
        q = request.query_params
        rows = await _desk(request).list_approvals(org_scope(principal, request), _status(q.get("status")),
                                                   _limit(q.get("limit")))
        return json_response({"approvals": rows})
    except ProxyError as err:
        return error_response(err)


async def _grant_usd(request: Request) -> float | None:
    """The optional body of an approve: nothing, `{}`, or `{"grant_usd": <number > 0>}`."""
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = sorted(set(body) - {"grant_usd"})
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}; only `grant_usd` is accepted", param=unknown[0])
    grant = body.get("grant_usd")
    if grant is None:
        return None
    if isinstance(grant, bool) or not isinstance(grant, int | float) or not math.isfinite(grant) or grant <= 0:
        raise InvalidRequest("`grant_usd` must be a number greater than 0", param="grant_usd")
    return float(grant)


async def _decide(request: Request, *, approve: bool) -> Response:
    try:
        _, principal = caller(request)
        principal.require("admin")
        grant = await _grant_usd(request) if approve else None
        desk = _desk(request)
        org = org_scope(principal, request)
        approval_id = request.path_params["approval_id"]
        decided = await desk.decide(approval_id, org, approve=approve, grant_usd=grant,
                                    decided_by=principal.key_name)
        if decided is not None:
            return json_response(decided)
        current = await desk.get(approval_id, org)
        if current is None:
            raise NotFound("no approval with that id is visible to this key")
        status = current["status"]
        if status == "pending":  # pending in the table, but its window has ended
            status = "expired"
        raise Conflict(f"approval {approval_id} is {status}, not pending; only a pending approval can be decided")
    except ProxyError as err:
        return error_response(err)


async def approve(request: Request) -> Response:
    return await _decide(request, approve=True)


async def deny(request: Request) -> Response:
    return await _decide(request, approve=False)


routes = [
    Route("/api/approvals", list_approvals, methods=["GET"]),
    Route("/api/approvals/{approval_id}/approve", approve, methods=["POST"]),
    Route("/api/approvals/{approval_id}/deny", deny, methods=["POST"]),
]
