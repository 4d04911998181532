"""The webhook outbox and the alerts table on SQLite and PostgreSQL: claims, attempts, once-only alerts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from proxy.store import alerts, outbox
from proxy.store.db import Store

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
BODY = '{"type":"budget.threshold","timestamp":"2026-05-01T12:00:00.000Z","data":{"név":"ü"}}'.encode()


async def test_enqueue_stores_the_exact_body_and_claims_it_once(store: Store) -> None:
    ids = await outbox.enqueue(store, [("ops", "budget.threshold", BODY), ("slack", "budget.threshold", BODY)],
                               NOW)
    assert len(ids) == 2 and all(i.startswith("msg_") for i in ids) and ids[0] != ids[1]
    assert await outbox.pending_count(store) == 2

    claimed = await outbox.claim_due(store, NOW, lease_s=30)
    assert sorted(item.id for item in claimed) == sorted(ids)
    assert {item.webhook for item in claimed} == {"ops", "slack"}
    assert all(item.body == BODY and item.attempts == 0 and item.status == "pending" for item in claimed)
    assert claimed[0].next_attempt_at == NOW + timedelta(seconds=30)
    # Leased: nobody else gets them until the lease runs out, then they are due again.
    assert await outbox.claim_due(store, NOW + timedelta(seconds=29)) == []
    assert len(await outbox.claim_due(store, NOW + timedelta(seconds=30))) == 2


async def test_claim_respects_due_time_and_limit(store: Store) -> None:
    await outbox.enqueue(store, [("ops", "budget.exceeded", BODY)] * 3, NOW)
    assert await outbox.claim_due(store, NOW - timedelta(seconds=1)) == []
    assert len(await outbox.claim_due(store, NOW, limit=2)) == 2
    assert len(await outbox.claim_due(store, NOW, limit=2)) == 1
    assert await outbox.enqueue(store, [], NOW) == []


async def test_record_attempt_updates_the_row_and_appends_the_log(store: Store) -> None:
    [msg_id] = await outbox.enqueue(store, [("ops", "budget.threshold", BODY)], NOW)
    [item] = await outbox.claim_due(store, NOW)
    retry_at = NOW + timedelta(seconds=5)
    n = await outbox.record_attempt(store, item, status=503, error="receiver answered 503", duration_ms=12,
                                    now=NOW, next_attempt_at=retry_at, final_status="pending")
    assert n == 1
    again = await outbox.get(store, msg_id)
    assert again is not None and again.status == "pending" and again.attempts == 1
    assert again.next_attempt_at == retry_at and again.last_status == 503
    assert await outbox.claim_due(store, NOW + timedelta(seconds=4)) == []

    [item] = await outbox.claim_due(store, retry_at)
    assert item.attempts == 1
    later = retry_at + timedelta(seconds=1)
    assert await outbox.record_attempt(store, item, status=200, error=None, duration_ms=3, now=later,
                                       next_attempt_at=None, final_status="delivered") == 2
    done = await outbox.get(store, msg_id)
    assert done is not None and done.status == "delivered" and done.delivered_at == later
    assert await outbox.pending_count(store) == 0
    assert await outbox.claim_due(store, later + timedelta(days=1)) == []
    log = await outbox.list_deliveries(store, msg_id)
    assert [(d.attempt, d.status, d.error, d.duration_ms) for d in log] == [
        (1, 503, "receiver answered 503", 12), (2, 200, None, 3)]
    assert await outbox.get(store, "msg_missing") is None


async def test_failed_items_are_never_claimed_again(store: Store) -> None:
    await outbox.enqueue(store, [("ops", "budget.threshold", BODY)], NOW)
    [item] = await outbox.claim_due(store, NOW)
    await outbox.record_attempt(store, item, status=None, error="egress refused: x" * 200, duration_ms=0,
                                now=NOW, next_attempt_at=None, final_status="failed")
    failed = await outbox.get(store, item.id)
    assert failed is not None and failed.status == "failed" and len(failed.last_error or "") == 500
    assert await outbox.claim_due(store, NOW + timedelta(days=1)) == []
    assert await outbox.pending_count(store) == 0


async def test_concurrent_claims_are_disjoint(store: Store) -> None:
    await outbox.enqueue(store, [("ops", "budget.threshold", BODY)] * 40, NOW)
    batches = await asyncio.gather(*(outbox.claim_due(store, NOW, limit=7) for _ in range(8)))
    ids = [item.id for batch in batches for item in batch]
    assert len(ids) == len(set(ids)) > 0  # never the same item twice
    # On SQLite concurrent claimers may pick the same rows and one gets none; the rest stay due.
    while rest := await outbox.claim_due(store, NOW, limit=7):
        ids += [item.id for item in rest]
    assert len(ids) == len(set(ids)) == 40


async def test_record_alert_fires_once_per_counter_window_threshold(store: Store) -> None:
    fields: dict[str, Any] = {"org": "acme", "budget": "org-monthly", "counter_key": "sg:{acme}:b:org-monthly",
              "action": "webhook", "spent_nano": 400 * 10**9, "limit_nano": 500 * 10**9, "now": NOW}
    assert await alerts.record_alert(store, window_id="2026-05", at_pct=80, **fields) is True
    assert await alerts.record_alert(store, window_id="2026-05", at_pct=80, **fields) is False
    # Another threshold, or the next window, fires again.
    assert await alerts.record_alert(store, window_id="2026-05", at_pct=100, **fields) is True
    assert await alerts.record_alert(store, window_id="2026-06", at_pct=80, **fields) is True
    results = await asyncio.gather(*(alerts.record_alert(store, window_id="2026-07", at_pct=80, **fields)
                                     for _ in range(10)))
    assert results.count(True) == 1

    listed = await alerts.list_alerts(store, "acme", limit=10)
    assert len(listed) == 4 and listed[0]["spent_usd"] == 400.0 and listed[0]["limit_usd"] == 500.0
    assert await alerts.list_alerts(store, "other", limit=10) == []
    assert len(await alerts.list_alerts(store, None, limit=2)) == 2
