"""Factory lifecycle events in (`POST /api/factory/events`) and the rollup rebuild (`POST /api/factory/aggregate`).

An event's org comes from the key; an event naming another org is refused (403). An org-"*" admin names the
org with X-Org-ID or the events' `org` field.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.routing import Route

from proxy.errors import Forbidden, InvalidRequest
from proxy.metrics.eventlist import FILTERS, EventFilter, list_events
from proxy.metrics.events import FactoryEvent, parse_events
from proxy.metrics.ingest import ingest_events
from proxy.metrics.rollups import rebuild
from proxy.requests import parse_limit, read_body
from proxy.routes.seed import ADMIN_ROLES, READ_ROLES, WRITE_ROLES, Caller, seed_endpoint
from proxy.store.queries import InvalidCursor

log = logging.getLogger(__name__)


async def post_events(caller: Caller) -> dict[str, Any]:
    request = caller.request
    raw = await read_body(request, caller.services.settings.server.max_body_bytes,
                          request.headers.get("content-length"))
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
    events = parse_events(body)
    accepted = duplicates = 0
    for org, group in _by_org(caller, events).items():
        a, d = await ingest_events(caller.services.store, org, group,
                                   compute_rate_usd_per_hour=caller.services.settings.pricing.compute_hourly_rate_usd)
        accepted, duplicates = accepted + a, duplicates + d
    return {"accepted": accepted, "duplicates": duplicates}


def _by_org(caller: Caller, events: list[FactoryEvent]) -> dict[str, list[FactoryEvent]]:
    groups: dict[str, list[FactoryEvent]] = {}
    for event in events:
        if caller.org is not None and event.org is not None and event.org != caller.org:
            raise Forbidden(f"event {event.id!r} names org {event.org!r}; this key posts for org {caller.org!r}")
        org = event.org or caller.org
        if org is None:
            raise InvalidRequest(f"event {event.id!r} has no org: an org-\"*\" key names it with X-Org-ID or the "
                                 "event's `org`", param="org")
        groups.setdefault(org, []).append(event)
    return groups


async def get_events(caller: Caller) -> dict[str, Any]:
    """Events as posted, newest first: `?type=&issue=&station=&run=&project=&agent=&limit=&cursor=`."""
    q = caller.request.query_params
    limit = parse_limit(q.get("limit"), default=100, maximum=500)
    try:
        events, cursor = await list_events(caller.services.store, org=caller.org,
                                           filters=EventFilter(**{k: q.get(k) for k in FILTERS}),
                                           limit=limit, cursor=q.get("cursor"))
    except InvalidCursor:
        raise InvalidRequest("`cursor` is not valid; pass the next_cursor of a previous page", param="cursor") from None
    return {"events": events, "next_cursor": cursor}


async def aggregate(caller: Caller) -> dict[str, Any]:
    """Rebuild the caller's org (every org for an org-"*" admin without X-Org-ID) from the raw rows."""
    result = await rebuild(caller.services.store, caller.org)
    log.info("rollups rebuilt", extra={"org": caller.org or "*", **result})
    return {"rebuilt": result, "org": caller.org}


routes = [
    Route("/api/factory/events", seed_endpoint(post_events, roles=WRITE_ROLES), methods=["POST"]),
    Route("/api/factory/events", seed_endpoint(get_events, roles=READ_ROLES), methods=["GET"]),
    Route("/api/factory/aggregate", seed_endpoint(aggregate, roles=ADMIN_ROLES), methods=["POST"]),
]
