"""The approval desk: holds calls over an `approve` budget, lets admins decide, and tells waiters at once.

A held call holds no reservation. It may wait (up to `approvals.wait_seconds`) for a decision; on
approval the engine runs admission again with the grant added to the counter's limit (`extra_limits`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from policies.budgets import Counter
from pricing.money import nano_to_usd, usd_to_nano
from proxy.store import approvals as table
from proxy.store.db import Store
from proxy.store.queries import iso_utc

log = logging.getLogger(__name__)

Notify = Callable[[str, Mapping[str, Any]], Awaitable[object]]
POLL_S = 0.5
GRANTS_CACHE_S = 1.0


def approval_to_api(row: Mapping[str, Any]) -> dict[str, Any]:
    """An approval as the API and webhooks show it: USD floats, ISO 8601 UTC times."""
    grant = row["grant_nano"]
    return {
        "id": row["id"], "org": row["org"], "budget": row["budget"], "scope": dict(row["scope"]),
        "window_id": row["window_id"], "status": row["status"],
        "worst_case_usd": nano_to_usd(row["worst_nano"]),
        "grant_usd": nano_to_usd(grant) if grant is not None else None,
        "requested_at": _iso(row["requested_at"]), "requested_by": row["requested_by"],
        "decided_at": _iso(row["decided_at"]), "decided_by": row["decided_by"],
        "expires_at": _iso(row["expires_at"]),
    }


def _iso(value: datetime | None) -> str | None:
    return iso_utc(value) if value is not None else None


class ApprovalDesk:
    """Approvals of one process, over the shared store.

    Waiters are woken in process by an asyncio.Event per approval id (set by `decide`), and poll the
    store every `poll_s` so a decision taken on another replica is seen within that delay. Redis
    pub/sub would make that instant too; left for the replicas issue.
    """

    def __init__(self, store: Store, *, grant_usd: float, wait_seconds: float, notify: Notify | None = None,
                 clock: Callable[[], datetime] | None = None, poll_s: float = POLL_S,
                 cache_s: float = GRANTS_CACHE_S) -> None:
        self.store = store
        self.grant_usd = grant_usd
        self.wait_seconds = wait_seconds
        self.notify = notify
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self.poll_s = poll_s
        self.cache_s = cache_s
        self._events: dict[str, asyncio.Event] = {}
        self._waiters: dict[str, int] = {}
        self._grants: dict[tuple[str, str], tuple[float, int]] = {}  # (key, window) -> (fetched at, nano)

    def configure(self, *, grant_usd: float, wait_seconds: float) -> None:
        """New settings from a config reload (pending approvals keep their ids)."""
        self.grant_usd = grant_usd
        self.wait_seconds = wait_seconds

    async def hold(self, counter: Counter, worst_nano: int, *, org: str, requested_by: str | None) -> str:
        """Hold a call over `counter`: the pending approval of its counter and window (created if none).

        Fits `Engine.on_hold` as `functools.partial(desk.hold, org=..., requested_by=...)`."""
        approval_id, created = await table.request(
            self.store, org=org, budget=counter.budget.name, counter_key=counter.key,
            window_id=counter.window.id, scope=dict(counter.scope), worst_nano=worst_nano,
            requested_by=requested_by, expires_at=counter.window.resets_at, now=self.clock())
        if created:
            row = await table.get(self.store, approval_id, None)
            if row is not None:
                await self._emit("approval.requested", row)
        return approval_id

    async def wait(self, approval_id: str, timeout_s: float | None = None) -> str:
        """Wait until the approval is decided (or expires), at most `timeout_s` (default `wait_seconds`);
        returns its status then: "approved", "denied", "expired", or "pending" on timeout."""
        timeout = self.wait_seconds if timeout_s is None else timeout_s
        deadline = time.monotonic() + max(timeout, 0.0)
        event = self._events.setdefault(approval_id, asyncio.Event())
        self._waiters[approval_id] = self._waiters.get(approval_id, 0) + 1
        try:
            while True:
                status = await self.status(approval_id, None)
                if status is None:
                    return "expired"  # the row is gone: nothing can approve it any more
                left = deadline - time.monotonic()
                if status != "pending" or left <= 0:
                    return status
                try:
                    await asyncio.wait_for(event.wait(), min(self.poll_s, left))
                except TimeoutError:
                    pass
        finally:
            self._waiters[approval_id] -= 1
            if self._waiters[approval_id] <= 0:
                del self._waiters[approval_id]
                self._events.pop(approval_id, None)

    async def status(self, approval_id: str, org: str | None) -> str | None:
        """Status of an approval visible to `org` (None: unknown); a pending one past its window's end
        reads "expired". For a retry carrying `X-Spendgate-Approval: <id>`."""
        row = await table.get(self.store, approval_id, org)
        if row is None:
            return None
        status = str(row["status"])
        if status == "pending" and row["expires_at"] is not None and row["expires_at"] <= self.clock():
            return "expired"
        if status == "approved":
            # Decided perhaps on another replica: the re-admission that follows must see the grant.
            self._grants.pop((row["counter_key"], row["window_id"]), None)
        return status

    async def decide(self, approval_id: str, org: str | None, *, approve: bool, grant_usd: float | None = None,
                     decided_by: str | None) -> dict[str, Any] | None:
        """Approve (granting max(grant_usd or the configured grant, the held worst case)) or deny a pending
        approval; None when there is none to decide (unknown, other org, or already decided/expired)."""
        grant_nano = usd_to_nano(self.grant_usd if grant_usd is None else grant_usd) if approve else None
        row = await table.decide(self.store, approval_id, org, approve=approve, grant_nano=grant_nano,
                                 decided_by=decided_by, now=self.clock())
        if row is None:
            return None
        self._grants.pop((row["counter_key"], row["window_id"]), None)
        event = self._events.get(approval_id)
        if event is not None:
            event.set()
        await self._emit("approval.decided", row)
        return approval_to_api(row)

    async def get(self, approval_id: str, org: str | None) -> dict[str, Any] | None:
        row = await table.get(self.store, approval_id, org)
        return approval_to_api(row) if row is not None else None

    async def list_approvals(self, org: str | None, status: str | None, limit: int) -> list[dict[str, Any]]:
        """For `GET /api/approvals`; pending approvals whose window has ended are expired first."""
        await self.expire()
        rows = await table.list_approvals(self.store, org, status, limit)
        return [approval_to_api(r) for r in rows]

    async def expire(self) -> int:
        """Expire pending approvals past their window's end (also worth running periodically)."""
        return await table.expire(self.store, self.clock())

    async def extra_limits(self, counters: Iterable[Counter]) -> dict[str, int]:
        """Nano-USD granted to each `approve` counter in its current window (absent: nothing granted).

        Cached ~1 s per counter and window to keep the store off the hot path; `decide` and a waiter that
        sees an approval drop the entry at once."""
        now = time.monotonic()
        wanted = {(c.key, c.window.id) for c in counters if c.budget.on_exceed == "approve"}
        stale = [k for k in wanted if (hit := self._grants.get(k)) is None or now - hit[0] > self.cache_s]
        if stale:
            fetched = await table.grants(self.store, stale)
            for k in stale:
                self._grants[k] = (now, fetched.get(k, 0))
            if len(self._grants) > 10_000:  # forget windows long gone
                self._grants = {k: v for k, v in self._grants.items() if now - v[0] <= self.cache_s}
        extra: dict[str, int] = {}
        for key, window_id in wanted:
            nano = self._grants.get((key, window_id), (0.0, 0))[1]
            if nano:
                extra[key] = nano
        return extra

    async def _emit(self, event_type: str, row: Mapping[str, Any]) -> None:
        if self.notify is None:
            return
        try:
            await self.notify(event_type, approval_to_api(row))
        except Exception:  # a webhook problem must never fail the held call or the admin's decision
            log.exception("could not emit %s", event_type, extra={"approval_id": row["id"]})
