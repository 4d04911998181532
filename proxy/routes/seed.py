"""The seed-API family (`/api/factory/*`, `/api/ai-cost/*`, `/api/v1/admin/*`): one wrapper that authenticates,
checks the role, applies the per-key rate limit, resolves the org a request may read, and answers every error
in the seed shape `{"error": {"code", "message", "status"}}` (a store failure is 500 DATABASE_ERROR)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response

from proxy.auth import Principal
from proxy.errors import DatabaseError, Forbidden, ProxyError, RateLimited, error_response
from proxy.services import Services

log = logging.getLogger(__name__)

READ_ROLES = ("viewer", "admin")
WRITE_ROLES = ("agent", "admin")  # the factory's orchestrator posts events with an agent or admin key
ADMIN_ROLES = ("admin",)


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated request of the seed family. `org` is the one org it may see; None only for an
    org-"*" admin that named no X-Org-ID (it sees every org)."""

    services: Services
    principal: Principal
    org: str | None
    request: Request


Handler = Callable[[Caller], Awaitable[Any]]


def org_for(principal: Principal, request: Request) -> str | None:
    """The key's own org; an org-"*" admin may name any org with X-Org-ID (none: every org). Any other key
    naming another org is refused: a key never reads another org's numbers."""
    named = (request.headers.get("x-org-id") or "").strip() or None
    if principal.all_orgs:
        return named
    if named is not None and named != principal.org:
        raise Forbidden(f"this key belongs to org {principal.org!r} and may not read org {named!r}")
    return principal.org


def seed_endpoint(handler: Handler, *, roles: tuple[str, ...] = READ_ROLES) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint around `handler`, which returns a JSON-able payload (or a Response)."""

    async def endpoint(request: Request) -> Response:
        try:
            services: Services = request.app.state.services
            principal = services.keys.authenticate(request.headers)
            wait = await services.limiter.check_api(principal.org, principal.key_name)
            if wait is not None:
                raise RateLimited(f"rate limit of {services.limiter.per_minute} requests per minute for this "
                                  "key exceeded; retry after the Retry-After seconds",
                                  headers={"retry-after": str(int(wait))})
            principal.require(*roles)
            result = await handler(Caller(services, principal, org_for(principal, request), request))
        except ProxyError as err:
            return error_response(err, "seed")
        except (SQLAlchemyError, OSError) as exc:
            log.error("metrics store query failed: %s", type(exc).__name__, extra={"path": request.url.path})
            return error_response(DatabaseError("the metrics store failed to answer; retry shortly"), "seed")
        if isinstance(result, Response):
            return result
        return Response(orjson.dumps(result), media_type="application/json")

    return endpoint
