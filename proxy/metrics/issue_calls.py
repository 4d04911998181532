"""The `calls` list of an issue's drill-down: its latest calls, newest first, with a null cost for a model
that had no price (never a silent 0)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncConnection

from pricing.money import nano_to_usd
from proxy.store.models import usage
from proxy.store.queries import iso_utc

MAX_CALLS = 200
UNPRICED = "unpriced"  # usage.catalog_version of a call whose model had no price (proxy/call.py)
_COLUMNS = ("request_id", "started_at", "station", "agent", "model", "provider", "input_tokens",
            "output_tokens", "cost_nano", "catalog_version", "status", "retry_of")


async def recent_calls(conn: AsyncConnection, where: Sequence[ColumnElement[bool]],
                       limit: int = MAX_CALLS) -> tuple[list[dict[str, Any]], bool]:
    """At most `limit` calls matching `where`, newest first; True when more exist."""
    u = usage.c
    stmt = (select(*(u[name] for name in _COLUMNS)).where(*where)
            .order_by(u.started_at.desc(), u.request_id.desc()).limit(limit + 1))
    rows = (await conn.execute(stmt)).mappings().all()
    return [call_item(row) for row in rows[:limit]], len(rows) > limit


def call_item(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "request_id": row["request_id"],
        "startedAt": iso_utc(row["started_at"]),
        "station": row["station"],
        "agent": row["agent"],
        "model": row["model"],
        "provider": row["provider"],
        "inputTokens": int(row["input_tokens"]),
        "outputTokens": int(row["output_tokens"]),
        "costUsd": None if row["catalog_version"] == UNPRICED else nano_to_usd(int(row["cost_nano"])),
        "status": row["status"],
        "retryOf": row["retry_of"],
    }
