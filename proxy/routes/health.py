"""Liveness and readiness probes for load balancers, and the OpenAPI document."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from policies.errors import LedgerUnavailable
from proxy.openapi import build_openapi
from proxy.services import Services


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    """Ready when the store answers, budget counters are rebuilt on a reachable ledger (when budgets are
    configured) and nothing is draining; the body says which check failed. Under `ledger.on_unavailable:
    allow` the ledger check is reported but does not make the replica unready (calls pass unenforced)."""
    services: Services | None = getattr(request.app.state, "services", None)
    checks = {"store": False, "accepting": False}
    required = set(checks)
    if services is not None:
        checks["accepting"] = not (services.draining or services.leaving)
        checks["store"] = await services.store.ping()
        if services.engine.budgets:
            checks["ledger"] = await _ledger_ready(services)
            if services.settings.ledger.on_unavailable == "block":
                required.add("ledger")
    ready = all(checks[name] for name in required)
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json")


async def _ledger_ready(services: Services) -> bool:
    try:
        await services.seeder.ensure()
    except LedgerUnavailable:
        return False
    return await services.engine.ledger.ping()


async def openapi(request: Request) -> Response:
    document = getattr(request.app.state, "openapi", None)
    if document is None:
        document = request.app.state.openapi = orjson.dumps(build_openapi())
    return Response(document, media_type="application/json")


routes = [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"]),
          Route("/openapi.json", openapi, methods=["GET"])]
