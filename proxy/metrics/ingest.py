"""Stores factory events idempotently and rolls each new one up in the same transaction.

Contract: `ingest_events` inserts every event not yet stored for (org, id) and returns (accepted, duplicates);
an event id seen before (in this batch or earlier, by any replica) is a duplicate, stored and rolled up once
(INSERT ... ON CONFLICT DO NOTHING RETURNING decides, so concurrent posts of one event cannot both count).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite

from proxy.metrics.events import FactoryEvent, event_row
from proxy.metrics.rollups import Rollup
from proxy.store.db import Store
from proxy.store.models import factory_events

_CHUNK = 500


async def ingest_events(store: Store, org: str, events: Sequence[FactoryEvent], *,
                        compute_rate_usd_per_hour: float, now: datetime | None = None) -> tuple[int, int]:
    """Store `events` for `org`; returns (accepted, duplicates)."""
    received = now or datetime.now(UTC)
    unique: dict[str, dict[str, Any]] = {}
    for event in events:
        unique.setdefault(event.id, event_row(event, org, rate_usd_per_hour=compute_rate_usd_per_hour,
                                              received_at=received))
    rows = list(unique.values())
    accepted = 0
    async with store.engine.begin() as conn:
        insert = postgresql.insert(factory_events) if store.dialect == "postgresql" else sqlite.insert(factory_events)
        stmt = insert.on_conflict_do_nothing(index_elements=["org", "id"]).returning(factory_events.c.id)
        new_ids: set[str] = set()
        for i in range(0, len(rows), _CHUNK):
            result = await conn.execute(stmt, rows[i: i + _CHUNK])
            new_ids.update(r[0] for r in result)
        rollup = Rollup()
        for row in rows:
            if row["id"] in new_ids:
                rollup.add_event(row)
                accepted += 1
        await rollup.upsert(conn)
    return accepted, len(events) - accepted
