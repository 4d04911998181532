"""Reads of individual calls for `GET /api/calls` and `GET /api/calls/{request_id}`.

Scoping is the caller's decision, applied here without exception: `org=None` means every org (only an
org-"*" admin may ask for it) and `pins` narrow further (an agent-role key sees only its own pins).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Select, String, literal, select, tuple_

from pricing.money import nano_to_usd
from proxy.store.db import Store
from proxy.store.models import UTCDateTime, usage

MAX_LIMIT = 1000
# Dimensions a pin may fix: columns a key or filter narrows by equality, nothing else.
PINNABLE = ("org", "key_name", "project", "agent", "station", "run", "issue", "actor", "provider", "model")

_COLUMNS = (
    "request_id", "started_at", "ended_at", "duration_ms", "status", "http_status", "org", "project",
    "agent", "station", "run", "issue", "actor", "retry_of", "endpoint", "provider", "model",
    "upstream_model", "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
    "reasoning_tokens", "cost_nano", "usage_source", "enforcement",
)  # fmt: skip


class InvalidCursor(ValueError):
    """The cursor was not one this module issued (the API answers 400)."""


@dataclass(frozen=True, slots=True)
class CallFilter:
    """Optional equality filters of `GET /api/calls`."""

    run: str | None = None
    issue: str | None = None
    agent: str | None = None
    station: str | None = None
    project: str | None = None


async def list_calls(
    store: Store,
    *,
    org: str | None,
    filters: CallFilter,
    limit: int = 50,
    cursor: str | None = None,
    pins: Mapping[str, str] | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Calls newest first, one page; returns (calls, next_cursor), next_cursor None on the last page.

    Keyset pagination on (started_at, request_id): rows written while paging never shift a page.
    """
    limit = max(1, min(int(limit), MAX_LIMIT))
    stmt = _scoped(select(*(usage.c[name] for name in _COLUMNS)), org, pins)
    for name in ("run", "issue", "agent", "station", "project"):
        value = getattr(filters, name)
        if value is not None:
            stmt = stmt.where(usage.c[name] == value)
    if cursor is not None:
        started_at, request_id = decode_cursor(cursor)
        after: ColumnElement[bool] = tuple_(usage.c.started_at, usage.c.request_id) < tuple_(
            literal(started_at, UTCDateTime()), literal(request_id, String())
        )
        stmt = stmt.where(after)
    stmt = stmt.order_by(usage.c.started_at.desc(), usage.c.request_id.desc()).limit(limit + 1)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    calls = [call_to_dict(row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(last["started_at"], last["request_id"])
    return calls, next_cursor


async def get_call(
    store: Store, *, org: str | None, request_id: str, pins: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """One call, or None if it does not exist *or* lies outside the caller's org and pins."""
    stmt = _scoped(select(*(usage.c[name] for name in _COLUMNS)), org, pins)
    stmt = stmt.where(usage.c.request_id == request_id)
    async with store.engine.connect() as conn:
        row = (await conn.execute(stmt)).mappings().first()
    return None if row is None else call_to_dict(row)


def _scoped(stmt: Select[Any], org: str | None, pins: Mapping[str, str] | None) -> Select[Any]:
    if org is not None:
        stmt = stmt.where(usage.c.org == org)
    for name, value in (pins or {}).items():
        if name not in PINNABLE:
            raise ValueError(f"cannot pin on {name!r}; pinnable: {', '.join(PINNABLE)}")
        stmt = stmt.where(usage.c[name] == value)
    return stmt


def call_to_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as DESIGN §12 "A call" (plus cost_nano and upstream_model): ISO times, USD float."""
    call = {name: row[name] for name in _COLUMNS}
    call["started_at"] = iso_utc(row["started_at"])
    call["ended_at"] = iso_utc(row["ended_at"])
    call["cost_usd"] = nano_to_usd(row["cost_nano"])
    return call


def iso_utc(value: datetime) -> str:
    """ISO 8601 in UTC with a "Z", e.g. 2026-05-09T12:00:00.123456Z."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def encode_cursor(started_at: datetime, request_id: str) -> str:
    raw = orjson.dumps([iso_utc(started_at), request_id])
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of `encode_cursor`; anything else raises InvalidCursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        iso, request_id = orjson.loads(raw)
        started_at = datetime.fromisoformat(iso)
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError):
        raise InvalidCursor("invalid cursor") from None
    if not isinstance(request_id, str) or started_at.tzinfo is None:
        raise InvalidCursor("invalid cursor")
    return started_at, request_id
