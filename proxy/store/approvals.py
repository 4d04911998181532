"""The `approvals` table: requests to spend past an `approve` budget, and what was granted.

Contract: at most one *pending* approval per (counter_key, window_id) — the partial unique index
`uq_approvals_pending` enforces it across replicas, and `request` leans on it. Only a pending approval
can be decided or expire; an approved one adds `grant_nano` to its counter's limit for that window.
Every statement is parameterised SQLAlchemy Core and runs on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import RowMapping, and_, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from proxy.store.db import Store
from proxy.store.models import approvals

STATUSES = ("pending", "approved", "denied", "expired")
_REQUEST_ATTEMPTS = 5  # each failed attempt means another replica changed the row in between


def new_approval_id() -> str:
    return "ap_" + secrets.token_hex(12)


async def request(store: Store, *, org: str, budget: str, counter_key: str, window_id: str,
                  scope: Mapping[str, str], worst_nano: int, requested_by: str | None,
                  expires_at: datetime | None, now: datetime) -> tuple[str, bool]:
    """The pending approval of this counter and window, created if there is none: (id, created).

    Joining an existing one raises its `worst_nano` to the larger worst case. Safe under concurrency:
    the UPDATE comes first (on SQLite it takes the write lock at once, so no stale read snapshot can be
    upgraded), and an INSERT that loses a race to the unique index is retried as a join."""
    c = approvals.c
    pending = and_(c.counter_key == counter_key, c.window_id == window_id, c.status == "pending")
    for _ in range(_REQUEST_ATTEMPTS):
        async with store.engine.begin() as conn:
            # UPDATE ... RETURNING, not UPDATE then SELECT: under READ COMMITTED a SELECT could see a row the
            # UPDATE did not (committed in between), and the join would lose this call's worst case.
            found = (await conn.execute(update(approvals).where(pending).values(
                worst_nano=case((c.worst_nano < worst_nano, worst_nano), else_=c.worst_nano))
                .returning(c.id))).scalar_one_or_none()
        if found is not None:
            return str(found), False
        approval_id = new_approval_id()
        try:
            async with store.engine.begin() as conn:
                await conn.execute(approvals.insert().values(
                    id=approval_id, org=org, budget=budget, counter_key=counter_key, window_id=window_id,
                    scope=orjson.dumps(dict(sorted(scope.items()))).decode(), status="pending",
                    worst_nano=worst_nano, grant_nano=None, requested_at=now, requested_by=requested_by,
                    decided_at=None, decided_by=None, expires_at=expires_at))
        except IntegrityError:
            continue  # another caller created the pending row first: join it
        return approval_id, True
    raise RuntimeError(f"could not create or join the pending approval of {counter_key!r} {window_id!r}")


async def get(store: Store, approval_id: str, org: str | None) -> dict[str, Any] | None:
    """One approval, or None when it does not exist or belongs to another org (`org=None`: any org)."""
    stmt = select(approvals).where(approvals.c.id == approval_id)
    if org is not None:
        stmt = stmt.where(approvals.c.org == org)
    async with store.engine.connect() as conn:
        row = (await conn.execute(stmt)).mappings().first()
    return _row(row) if row is not None else None


async def list_approvals(store: Store, org: str | None, status: str | None, limit: int) -> list[dict[str, Any]]:
    """Approvals newest first, optionally of one org and one status."""
    stmt = select(approvals).order_by(approvals.c.requested_at.desc(), approvals.c.id.desc()).limit(limit)
    if org is not None:
        stmt = stmt.where(approvals.c.org == org)
    if status is not None:
        stmt = stmt.where(approvals.c.status == status)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    return [_row(r) for r in rows]


async def decide(store: Store, approval_id: str, org: str | None, *, approve: bool, grant_nano: int | None,
                 decided_by: str | None, now: datetime) -> dict[str, Any] | None:
    """Approve or deny a pending, unexpired approval; None when there is no such approval to decide.

    An approval grants max(grant_nano, worst_nano), computed in the UPDATE itself so a held call that
    joined a moment before is still covered."""
    c = approvals.c
    where = and_(c.id == approval_id, c.status == "pending", or_(c.expires_at.is_(None), c.expires_at > now))
    if org is not None:
        where = and_(where, c.org == org)
    values: dict[str, Any] = {"status": "approved" if approve else "denied", "decided_at": now,
                              "decided_by": decided_by}
    if approve:
        floor = grant_nano or 0
        values["grant_nano"] = case((c.worst_nano > floor, c.worst_nano), else_=floor)
    async with store.engine.begin() as conn:
        result = await conn.execute(update(approvals).where(where).values(**values))
        if result.rowcount != 1:
            return None
        row = (await conn.execute(select(approvals).where(c.id == approval_id))).mappings().one()
    return _row(row)


async def grants(store: Store, counter_keys_and_windows: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Sum of approved `grant_nano` per (counter_key, window_id) asked for; pairs with none are absent."""
    wanted = set(counter_keys_and_windows)
    if not wanted:
        return {}
    c = approvals.c
    stmt = (select(c.counter_key, c.window_id, func.sum(c.grant_nano))
            .where(c.status == "approved", c.counter_key.in_(sorted({k for k, _ in wanted})))
            .group_by(c.counter_key, c.window_id))
    async with store.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return {(k, w): int(total) for k, w, total in rows if (k, w) in wanted and total}


async def expire(store: Store, now: datetime) -> int:
    """Mark pending approvals whose window has ended as expired; returns how many."""
    c = approvals.c
    stmt = (update(approvals)
            .where(c.status == "pending", c.expires_at.is_not(None), c.expires_at <= now)
            .values(status="expired", decided_at=now))
    async with store.engine.begin() as conn:
        result = await conn.execute(stmt)
    return int(result.rowcount)


def _row(row: RowMapping) -> dict[str, Any]:
    out: dict[str, Any] = dict(row)
    out["scope"] = orjson.loads(out["scope"])
    return out
