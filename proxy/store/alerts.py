"""Fired alerts: one row per (counter, window, threshold), so a threshold fires once across replicas.

The unique constraint `uq_alerts_once` does the deciding: every replica that sees a crossing inserts, the
first insert wins, and the others learn they lost from an empty RETURNING (ON CONFLICT DO NOTHING).
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from pricing.money import nano_to_usd
from proxy.store.db import Store
from proxy.store.models import alerts
from proxy.store.queries import iso_utc

MAX_LIMIT = 1000


async def record_alert(
    store: Store,
    *,
    org: str,
    budget: str,
    counter_key: str,
    window_id: str,
    at_pct: float,
    action: str,
    spent_nano: int,
    limit_nano: int,
    now: datetime,
) -> bool:
    """Insert the alert; True only for the first insert of (counter_key, window_id, at_pct)."""
    values = {"id": f"alt_{secrets.token_hex(12)}", "org": org, "budget": budget, "counter_key": counter_key,
              "window_id": window_id, "at_pct": float(at_pct), "action": action, "spent_nano": spent_nano,
              "limit_nano": limit_nano, "fired_at": now}
    make = pg_insert if store.dialect == "postgresql" else sqlite_insert
    stmt = make(alerts).values(**values).on_conflict_do_nothing(
        index_elements=["counter_key", "window_id", "at_pct"]).returning(alerts.c.id)
    async with store.engine.begin() as conn:
        inserted = (await conn.execute(stmt)).first()
    return inserted is not None


async def list_alerts(store: Store, org: str | None, limit: int = 100) -> list[dict[str, Any]]:
    """Alerts newest first; `org=None` means every org (the caller decides who may ask for that)."""
    limit = max(1, min(int(limit), MAX_LIMIT))
    stmt = select(alerts)
    if org is not None:
        stmt = stmt.where(alerts.c.org == org)
    stmt = stmt.order_by(alerts.c.fired_at.desc(), alerts.c.id.desc()).limit(limit)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    return [
        {"id": r["id"], "org": r["org"], "budget": r["budget"], "counter_key": r["counter_key"],
         "window_id": r["window_id"], "at_pct": r["at_pct"], "action": r["action"],
         "spent_usd": nano_to_usd(r["spent_nano"]), "limit_usd": nano_to_usd(r["limit_nano"]),
         "fired_at": iso_utc(r["fired_at"])}
        for r in rows
    ]
