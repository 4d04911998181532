"""`GET /metrics` (Prometheus text): for admin keys of org "*", or without a key from a loopback or private
address when `server.metrics_public` is on. The series are described in docs/observability.md."""

from __future__ import annotations

import ipaddress

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.errors import Forbidden, ProxyError, error_response
from proxy.services import Services


def from_private_network(request: Request) -> bool:
    """The peer is loopback, private (RFC 1918, fc00::/7) or link-local. uvicorn puts the X-Forwarded-For
    client here only for a trusted proxy (default: 127.0.0.1), so a forwarded public client stays public."""
    client = request.client
    if client is None:
        return False
    try:
        ip = ipaddress.ip_address(client.host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_private or ip.is_loopback or ip.is_link_local


async def prometheus_metrics(request: Request) -> Response:
    services: Services = request.app.state.services
    if not (services.settings.server.metrics_public and from_private_network(request)):
        try:
            principal = services.keys.authenticate(request.headers)
            if not principal.all_orgs:
                raise Forbidden('GET /metrics needs an admin key of org "*" (it shows every org\'s spend)')
        except ProxyError as err:
            return error_response(err)
    body, content_type = await services.metrics.exposition(request.headers.get("accept"))
    return Response(body, headers={"content-type": content_type})


routes = [Route("/metrics", prometheus_metrics, methods=["GET"])]
