"""Reading posted factory events back (`GET /api/factory/events`), newest first, keyset-paginated on (ts, id)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import String, literal, select, tuple_

from proxy.store.db import Store
from proxy.store.models import UTCDateTime, factory_events
from proxy.store.queries import decode_cursor, encode_cursor, iso_utc

FILTERS = ("type", "issue", "station", "run", "project", "agent")


@dataclass(frozen=True, slots=True)
class EventFilter:
    type: str | None = None
    issue: str | None = None
    station: str | None = None
    run: str | None = None
    project: str | None = None
    agent: str | None = None


async def list_events(store: Store, *, org: str | None, filters: EventFilter, limit: int,
                      cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """One page of events as posted (plus `org` and `receivedAt`); InvalidCursor on a cursor not ours."""
    t = factory_events
    stmt = select(t.c.org, t.c.id, t.c.ts, t.c.received_at, t.c.payload)
    if org is not None:
        stmt = stmt.where(t.c.org == org)
    for name in FILTERS:
        value = getattr(filters, name)
        if value is not None:
            stmt = stmt.where(t.c[name] == value)
    if cursor is not None:
        ts, event_id = decode_cursor(cursor)
        stmt = stmt.where(tuple_(t.c.ts, t.c.id) < tuple_(literal(ts, UTCDateTime()), literal(event_id, String())))
    stmt = stmt.order_by(t.c.ts.desc(), t.c.id.desc()).limit(limit + 1)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    events = [orjson.loads(r["payload"]) | {"org": r["org"], "receivedAt": iso_utc(r["received_at"])}
              for r in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    return events, None if last is None else encode_cursor(last["ts"], last["id"])
