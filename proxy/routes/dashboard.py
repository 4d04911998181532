"""The dashboard (`GET /dashboard`, one static page and its assets from proxy/static/, under a strict
Content-Security-Policy) and the small APIs only it needed: who the key is (`GET /api/me`), the model price
table (`GET /api/prices`), daily spend by provider (`GET /api/factory/daily-spend`) and the org-wide month
(`GET /api/ai-cost/org-summary`). Amounts are USD; the page alone converts to `pricing.currency`."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pricing.prices import ModelPrice
from proxy.errors import InvalidRequest, ProxyError, SeedError, error_response
from proxy.metrics.daily import WINDOWS, daily_spend
from proxy.metrics.org_month import org_summary
from proxy.routes.api import caller, json_response
from proxy.routes.seed import Caller, seed_endpoint
from proxy.settings import ModelConfig

STATIC = Path(__file__).resolve().parent.parent / "static"
_ASSET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(js|css|svg)$")
_TYPES = {"html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8",
          "css": "text/css; charset=utf-8", "svg": "image/svg+xml"}
# Everything the page loads comes from this origin: no inline script or style, no other host, no framing.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "referrer-policy": "no-referrer",  # the page never puts the key in a URL; nothing else leaks either
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cache-control": "no-cache",
}
PER_MTOK = Decimal(1_000_000)


def _static(name: str) -> Response:
    kind = name.rsplit(".", 1)[1]
    try:
        body = (STATIC / name).read_bytes()
    except OSError:
        return Response(b"not found", status_code=404, media_type="text/plain", headers=SECURITY_HEADERS)
    return Response(body, media_type=_TYPES[kind], headers=SECURITY_HEADERS)


async def page(request: Request) -> Response:
    return _static("index.html")


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if not _ASSET_NAME.match(name):  # a fixed shape of file name: no path ever leaves proxy/static
        return Response(b"not found", status_code=404, media_type="text/plain", headers=SECURITY_HEADERS)
    return _static(name)


async def me(request: Request) -> Response:
    """Who the presented key is, and how the dashboard shows money (any valid key)."""
    try:
        services, principal = caller(request)
        pricing = services.settings.pricing
        fx_rate = pricing.fx_rate if pricing.fx_rate is not None else (1.0 if pricing.currency == "USD" else None)
        return json_response({"key_name": principal.key_name, "org": principal.org, "role": principal.role,
                              "project": principal.project, "agent": principal.agent,
                              "currency": pricing.currency, "fx_rate": fx_rate})
    except ProxyError as err:
        return error_response(err)


def _per_mtok(rate: Decimal | None) -> float | None:
    return float(rate * PER_MTOK) if rate is not None else None


def _price_entry(m: ModelConfig, position: int, target: str | None, price: ModelPrice | None) -> dict[str, Any]:
    """One model route and its prices in USD per 1M tokens; a cache rate the catalog omits is billed at the
    input rate, so that is what it shows. Never the route's api_base or key."""
    entry: dict[str, Any] = {"model": m.name, "provider": m.provider, "position": position, "priced_as": target,
                             "priced_by_request": target is None, "unpriced": target is not None and price is None,
                             "source": price.source if price else None, "input_per_mtok": None,
                             "cached_input_per_mtok": None, "cache_write_per_mtok": None, "output_per_mtok": None,
                             "max_input_tokens": price.max_input_tokens if price else None}
    if price is not None:
        entry.update(input_per_mtok=_per_mtok(price.input), output_per_mtok=_per_mtok(price.output),
                     cached_input_per_mtok=_per_mtok(price.cached_input or price.input),
                     cache_write_per_mtok=_per_mtok(price.cache_write or price.input))
    return entry


async def prices(request: Request) -> Response:
    """The configured model routes in config order (entries sharing a name are a fallback chain:
    `position` 0 is tried first) with the price each is billed at."""
    try:
        services, _ = caller(request)
        seen: dict[str, int] = {}
        models = []
        for m in services.router.configs:
            position = seen[m.name] = seen.get(m.name, -1) + 1
            # The router's rule: a wildcard route without `price_as` is priced by the model each call names.
            target = m.price_as or (None if m.is_wildcard else (m.upstream_model or m.name))
            price = services.catalog.find(target) if target is not None else None
            models.append(_price_entry(m, position, target, price))
        return json_response({"models": models, "catalog_version": services.catalog.version})
    except ProxyError as err:
        return error_response(err)


async def daily(caller: Caller) -> dict[str, Any]:
    raw = caller.request.query_params.get("days", "30")
    if not raw.isdigit() or int(raw) not in WINDOWS:
        raise SeedError(400, "INVALID_TIME_RANGE",
                        f"Invalid days. Must be one of: {', '.join(str(d) for d in WINDOWS)}")
    return await daily_spend(caller.services.store, caller.org, int(raw), datetime.now(UTC))


async def month_of_org(caller: Caller) -> dict[str, Any]:
    if caller.org is None:
        raise InvalidRequest("this key may read every org: name the org to report on in the X-Org-ID header")
    return await org_summary(caller.services.store, caller.org, caller.services.engine.budgets,
                             datetime.now(UTC), orgless=caller.principal.all_orgs)


routes = [
    Route("/dashboard", page, methods=["GET"]),
    Route("/dashboard/assets/{name}", asset, methods=["GET"]),
    Route("/api/me", me, methods=["GET"]),
    Route("/api/prices", prices, methods=["GET"]),
    Route("/api/factory/daily-spend", seed_endpoint(daily), methods=["GET"]),
    Route("/api/ai-cost/org-summary", seed_endpoint(month_of_org), methods=["GET"]),
]
