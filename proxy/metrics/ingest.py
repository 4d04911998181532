"""Stores factory events idempotently and rolls each new one up in the same transaction.

Contract: `ingest_events` inserts every event not yet stored for (org, id) and returns (accepted, duplicates);
an event id seen before (in this batch or earlier, by any replica) is a duplicate, stored and rolled up once
(INSERT ... ON CONFLICT DO NOTHING RETURNING decides, so concurrent posts of one event cannot both count).
Each (issue, station) with a new station.entered / station.completed has its station visits recomputed from its
stored events in the same transaction, and a new issue.completed closes the open visits it follows
(proxy/metrics/visits.py), so arrival order and duplicates do not matter.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite

from proxy.metrics import visits
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
    # Inserted in id order: two concurrent batches sharing ids then wait on each other in one order and
    # cannot deadlock on PostgreSQL's unique index.
    rows = [unique[event_id] for event_id in sorted(unique)]
    accepted = 0
    async with store.engine.begin() as conn:
        insert = postgresql.insert(factory_events) if store.dialect == "postgresql" else sqlite.insert(factory_events)
        stmt = insert.on_conflict_do_nothing(index_elements=["org", "id"]).returning(factory_events.c.id)
        new_ids: set[str] = set()
        for i in range(0, len(rows), _CHUNK):
            result = await conn.execute(stmt, rows[i: i + _CHUNK])
            new_ids.update(r[0] for r in result)
        rollup = Rollup()
        stations: set[tuple[str, str]] = set()  # (issue, station) with new station events: visits recomputed
        completed: dict[str, datetime] = {}  # issue -> its latest new issue.completed: open visits closed
        for row in rows:
            if row["id"] in new_ids:
                rollup.add_event(row)
                accepted += 1
                if row["type"] in visits.STATION_TYPES:
                    stations.add((row["issue"], row["station"]))
                elif row["type"] == "issue.completed":
                    completed[row["issue"]] = max(row["ts"], completed.get(row["issue"], row["ts"]))
        # Visits before the buckets: every writer takes its issue locks before any rollup row lock.
        await visits.refresh(conn, org, stations, completed)
        await rollup.upsert(conn)
    return accepted, len(events) - accepted
