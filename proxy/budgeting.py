"""Budgets at run time: the ledger named in config, the engine over the configured budgets, counters rebuilt
from the store at start, and alerts for thresholds crossed."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

from policies.budgets import Budget, counter_key
from policies.config import LedgerConfig
from policies.engine import Crossing, Engine
from policies.ledger.base import CounterSpec, Ledger
from policies.ledger.memory import MemoryLedger
from policies.ledger.redis import RedisLedger
from policies.windows import counter_ttl_s, window_of
from proxy.settings import Settings
from proxy.store.db import Store
from proxy.store.spend import counter_spend

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


def start_version() -> str:
    """A memory ledger is new with every process: any fresh version makes its first seed apply."""
    return "start-" + secrets.token_hex(6)


async def log_crossings(crossings: list[Crossing]) -> None:
    """The `warn` action's alert (webhooks and the alerts table are added by the webhook dispatcher)."""
    for crossing in crossings:
        log.warning("budget threshold crossed", extra={
            "budget": crossing.counter.budget.name, "counter": crossing.counter.key,
            "at_pct": crossing.alert.at_pct, "action": crossing.alert.action,
            "spent_nano": crossing.spent_nano, "limit_nano": crossing.counter.limit_nano})
