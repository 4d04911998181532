"""Budgets at run time: the ledger named in config, the engine over the configured budgets, counters rebuilt
from the store at start, and alerts for thresholds crossed."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from policies.budgets import Budget, Counter, counter_key, scope_dict
from policies.config import LedgerConfig
from policies.decisions import pct
from policies.engine import Crossing, Engine
from policies.errors import LedgerUnavailable
from policies.ledger.base import CounterSpec, Ledger
from policies.ledger.memory import MemoryLedger
from policies.ledger.redis import RedisLedger
from policies.windows import counter_ttl_s, window_of
from pricing.money import nano_to_usd
from proxy.settings import Settings
from proxy.store.alerts import record_alert
from proxy.store.db import Store
from proxy.store.queries import iso_utc
from proxy.store.spend import counter_spend
from proxy.webhooks import WebhookDispatcher

log = logging.getLogger(__name__)


def open_ledger(config: LedgerConfig) -> Ledger:
    if config.url.startswith("memory://"):
        return MemoryLedger()
    return RedisLedger(config.url, cluster=config.cluster)


def build_engine(settings: Settings, ledger: Ledger) -> Engine:
    budgets = [Budget.from_config(b) for b in settings.budgets]
    return Engine(ledger, budgets, reservation_ttl_s=settings.ledger.reservation_ttl_s)


async def seed_from_store(ledger: Ledger, budgets: Sequence[Budget], store: Store, version: str,
                          now: datetime | None = None) -> int:
    """Set every counter's spent to the store's total for its current window (SET keyed by `version`, never an
    increment: seeding twice, or from three replicas at once, gives the same totals). Returns counters set."""
    now = now or datetime.now(UTC)
    seeded = 0
    for budget in budgets:
        window = window_of(budget.window, now, budget.tz)
        for scope, spent in await counter_spend(store, budget, window):
            spec = CounterSpec(counter_key(budget.name, scope, window.id), budget.limit_nano,
                               counter_ttl_s(window, now))
            seeded += await ledger.seed(spec, spent, version)
    return seeded


async def rebuild_counters(ledger: Ledger, budgets: Sequence[Budget], store: Store, on_unavailable: str) -> None:
    """Counters from the store at start: a memory ledger is new with every process; a Redis ledger is seeded
    once per Redis lifetime (keyed by its run id), so a Redis that restarted empty gets its totals back and
    replicas starting together do not add them up."""
    try:
        version = await ledger.version() if isinstance(ledger, RedisLedger) else start_version()
        seeded = await seed_from_store(ledger, budgets, store, version)
    except LedgerUnavailable:
        if on_unavailable != "allow":
            raise
        log.error("ledger unavailable at start; counters not rebuilt (ledger.on_unavailable: allow)")
        return
    log.info("budget counters rebuilt from the store", extra={"counters": seeded, "version": version})


def start_version() -> str:
    """A memory ledger is new with every process: any fresh version makes its first seed apply."""
    return "start-" + secrets.token_hex(6)


EXCEEDED_PCT = 100.0  # the alerts row of "budget exceeded": one per counter and window, like a threshold


class Alerts:
    """Budget alerts: each threshold fires once per counter and window (the store's unique constraint decides,
    across replicas); `warn` is a log line and an alerts row, `webhook` also queues a signed event."""

    def __init__(self, store: Store, dispatcher: WebhookDispatcher | None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.clock = clock

    async def crossed(self, crossings: Sequence[Crossing]) -> None:
        for c in crossings:
            if await self._once(c.counter, c.alert.at_pct, c.alert.action, c.spent_nano):
                data = self._data(c.counter, c.spent_nano) | {"threshold_pct": c.alert.at_pct}
                log.warning("budget threshold crossed", extra={"budget": c.counter.budget.name,
                                                               "counter": c.counter.key, "at_pct": c.alert.at_pct})
                if c.alert.action == "webhook":
                    await self._emit("budget.threshold", data)

    async def exceeded(self, counter: Counter, spent_nano: int | None) -> None:
        """A call met a counter with no room left (refused, held, or let through by a soft budget)."""
        spent = counter.limit_nano if spent_nano is None else spent_nano
        if await self._once(counter, EXCEEDED_PCT, "exceeded", spent):
            log.warning("budget exceeded", extra={"budget": counter.budget.name, "counter": counter.key})
            await self._emit("budget.exceeded", self._data(counter, spent) | {"on_exceed": counter.budget.on_exceed})

    async def _once(self, counter: Counter, pct: float, action: str, spent_nano: int) -> bool:
        try:
            return await record_alert(self.store, org=dict(counter.scope).get("org", "*"),
                                      budget=counter.budget.name, counter_key=counter.key,
                                      window_id=counter.window.id, at_pct=pct, action=action,
                                      spent_nano=spent_nano, limit_nano=counter.limit_nano, now=self.clock())
        except Exception:  # the store is down: an alert must never fail a call
            log.exception("recording a budget alert failed")
            return False

    async def _emit(self, event_type: str, data: dict[str, Any]) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.emit(event_type, data)

    @staticmethod
    def _data(counter: Counter, spent_nano: int) -> dict[str, Any]:
        resets = counter.window.resets_at
        return {"budget": counter.budget.name, "scope": scope_dict(counter.scope), "window": counter.budget.window,
                "window_id": counter.window.id, "limit_usd": nano_to_usd(counter.limit_nano),
                "spent_usd": nano_to_usd(spent_nano), "pct": round(pct(spent_nano, counter.limit_nano), 2),
                "resets_at": iso_utc(resets) if resets else None}
