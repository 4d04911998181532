"""The webhook outbox: events waiting for delivery, claimed by one replica at a time, and the attempt log.

Contract: `enqueue` stores each body exactly as it will be signed. `claim_due` hands an item to one caller
only: the claimed rows' `next_attempt_at` moves `lease_s` ahead in the claiming transaction, so no other
replica (or a later poll) sees them until the lease runs out; a claimer that dies leaves the item to be
claimed again after the lease (delivery is at least once; receivers dedupe on the `webhook-id`).
`record_attempt` updates the row and appends the delivery log in one transaction.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, insert, select, update

from proxy.store.db import Store
from proxy.store.models import webhook_deliveries, webhook_outbox

FinalStatus = Literal["delivered", "pending", "failed"]
MAX_ERROR_CHARS = 500


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One outbox row; `id` is the Standard Webhooks `webhook-id`, `body` the exact bytes to sign."""

    id: str
    webhook: str
    event_type: str
    body: bytes
    created_at: datetime
    next_attempt_at: datetime
    attempts: int
    status: str
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One attempt from the delivery log."""

    outbox_id: str
    attempt: int
    at: datetime
    status: int | None
    error: str | None
    duration_ms: int


def new_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


async def enqueue(store: Store, items: Sequence[tuple[str, str, bytes]], now: datetime) -> list[str]:
    """Store (webhook name, event type, body) items as pending and due now; returns their ids in order."""
    rows: list[dict[str, Any]] = [
        {"id": new_id(), "webhook": name, "event_type": event_type, "body": body.decode("utf-8"),
         "created_at": now, "next_attempt_at": now, "attempts": 0, "status": "pending"}
        for name, event_type, body in items
    ]
    if rows:
        async with store.engine.begin() as conn:
            await conn.execute(insert(webhook_outbox), rows)
    return [str(row["id"]) for row in rows]


async def claim_due(store: Store, now: datetime, limit: int = 50, lease_s: float = 30) -> list[OutboxItem]:
    """Claim up to `limit` pending items due at `now`, oldest due first, for `lease_s` seconds."""
    t = webhook_outbox
    due = (t.c.status == "pending") & (t.c.next_attempt_at <= now)
    pick = select(t.c.id).where(due).order_by(t.c.next_attempt_at, t.c.id).limit(limit)
    if store.dialect == "postgresql":
        # Rows another replica is claiming right now are skipped, not waited for: the two claims are
        # disjoint, and neither blocks the other.
        pick = pick.with_for_update(skip_locked=True)
    async with store.engine.begin() as conn:
        ids = list((await conn.execute(pick)).scalars())
        if not ids:
            return []
        # `due` again in the UPDATE: on SQLite (no row locks) a row another claimer took in between
        # no longer matches, and RETURNING gives back only what this statement really claimed.
        claimed = (
            await conn.execute(
                update(t).where(t.c.id.in_(ids) & due)
                .values(next_attempt_at=now + timedelta(seconds=lease_s))
                .returning(*t.c)
            )
        ).mappings().all()
    items = [_item(row) for row in claimed]
    return sorted(items, key=lambda item: ids.index(item.id))


async def record_attempt(
    store: Store,
    item: OutboxItem,
    *,
    status: int | None,
    error: str | None,
    duration_ms: int,
    now: datetime,
    next_attempt_at: datetime | None,
    final_status: FinalStatus,
) -> int:
    """Record one attempt (row update + log line, one transaction); returns the attempt's number."""
    attempt = item.attempts + 1
    error = error[:MAX_ERROR_CHARS] if error else error
    values: dict[str, Any] = {"attempts": attempt, "status": final_status, "last_status": status,
                              "last_error": error}
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    if final_status == "delivered":
        values["delivered_at"] = now
    async with store.engine.begin() as conn:
        await conn.execute(update(webhook_outbox).where(webhook_outbox.c.id == item.id).values(**values))
        await conn.execute(insert(webhook_deliveries).values(
            outbox_id=item.id, attempt=attempt, at=now, status=status, error=error,
            duration_ms=max(0, int(duration_ms))))
    return attempt


async def pending_count(store: Store) -> int:
    """Items not yet delivered nor given up on (for metrics)."""
    stmt = select(func.count()).select_from(webhook_outbox).where(webhook_outbox.c.status == "pending")
    async with store.engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


async def get(store: Store, outbox_id: str) -> OutboxItem | None:
    """One outbox row by id, or None."""
    async with store.engine.connect() as conn:
        row = (await conn.execute(select(webhook_outbox).where(webhook_outbox.c.id == outbox_id))).mappings().first()
    return _item(row) if row is not None else None


async def list_deliveries(store: Store, outbox_id: str) -> list[Delivery]:
    """The attempts made for one item, first attempt first."""
    d = webhook_deliveries
    stmt = select(d).where(d.c.outbox_id == outbox_id).order_by(d.c.attempt, d.c.id)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    return [Delivery(outbox_id=r["outbox_id"], attempt=r["attempt"], at=r["at"], status=r["status"],
                     error=r["error"], duration_ms=r["duration_ms"]) for r in rows]


def _item(row: Any) -> OutboxItem:
    return OutboxItem(
        id=row["id"], webhook=row["webhook"], event_type=row["event_type"], body=row["body"].encode("utf-8"),
        created_at=row["created_at"], next_attempt_at=row["next_attempt_at"], attempts=row["attempts"],
        status=row["status"], last_status=row["last_status"], last_error=row["last_error"],
        delivered_at=row["delivered_at"],
    )
