"""Budgets at run time: the ledger named in config, the engine over the configured budgets, counters rebuilt
from the store at start, and alerts for thresholds crossed."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from policies.budgets import Budget, Counter, counter_key, scope_dict
from policies.config import LedgerConfig
from policies.decisions import pct
from policies.engine import Crossing, Engine
from policies.errors import LedgerUnavailable, LedgerUnseeded
from policies.ledger.base import CounterSpec, Ledger
from policies.ledger.memory import MemoryLedger
from policies.ledger.redis import RedisClient, RedisLedger, connect
from policies.windows import counter_ttl_s, window_of
from pricing.money import nano_to_usd
from proxy.settings import Settings
from proxy.store.alerts import record_alert
from proxy.store.db import Store
from proxy.store.queries import iso_utc
from proxy.store.spend import counter_spend
from proxy.store.writer import UsageWriter
from proxy.webhooks import WebhookDispatcher

log = logging.getLogger(__name__)


def open_ledger(config: LedgerConfig, client: RedisClient | None = None) -> Ledger:
    """The ledger the config names; a Redis one on `client` when given (the proxy's one Redis client, shared
    with rate limits and Idempotency-Key, closed by its owner)."""
    if config.url.startswith("memory://"):
        return MemoryLedger()
    # guard: a reservation on counters this Redis never had rebuilt (it restarted empty) is refused, not made
    # against zeros; the seeder rebuilds them and admission resumes.
    return RedisLedger(config.url, cluster=config.cluster, socket_timeout=config.timeout_s, guard=True,
                       client=client)


def redis_client(config: LedgerConfig) -> RedisClient | None:
    """One Redis client (one connection pool) for everything of a replica that lives in the ledger's Redis:
    budget counters, rate limits, Idempotency-Key answers. None with a memory ledger."""
    if config.url.startswith("memory://"):
        return None
    return connect(config.url, cluster=config.cluster, timeout_s=config.timeout_s)


def build_engine(settings: Settings, ledger: Ledger) -> Engine:
    budgets = [Budget.from_config(b) for b in settings.budgets]
    return Engine(ledger, budgets, reservation_ttl_s=settings.ledger.reservation_ttl_s)


async def seed_from_store(ledger: Ledger, budgets: Sequence[Budget], store: Store, version: str,
                          now: datetime | None = None, *, keep_live: bool = False) -> int:
    """Set every counter's spent to the store's total for its current window (SET keyed by `version`, never an
    increment: seeding twice, or from three replicas at once, gives the same totals). Returns counters set."""
    now = now or datetime.now(UTC)
    seeded = 0
    for budget in budgets:
        window = window_of(budget.window, now, budget.tz)
        for scope, spent in await counter_spend(store, budget, window):
            spec = CounterSpec(counter_key(budget.name, scope, window.id), budget.limit_nano,
                               counter_ttl_s(window, now))
            seeded += await ledger.seed(spec, spent, version, keep_live=keep_live)
    return seeded


class CounterSeeder:
    """Budget counters are rebuilt from the store before anything is admitted against them: at start, after a
    config reload (new budgets), and whenever the Redis ledger says it forgot them (it restarted empty, or was
    flushed: `LedgerUnseeded`). Until a rebuild has succeeded nothing is admitted: callers get
    `LedgerUnavailable` (fail closed, or pass unenforced under `on_unavailable: allow`), never counters of 0.

    The version a rebuild seeds with is the Redis run id (one per Redis lifetime; a memory ledger: one per
    process), and seeding is SET-unless-already-seeded-with-that-version: replicas rebuilding at once, or one
    replica twice, agree on one total, and counters already rebuilt keep the spend settled since. (A call
    admitted before a Redis restart that settles after it but before the rebuild is counted by its row if the
    row reached the store first; otherwise `spendgate reconcile` finds and repairs the difference.)"""

    FLUSH_TIMEOUT_S = 1.0  # rows journaled before a rebuild must be in the store; SQL down: no rebuild

    def __init__(self, ledger: Ledger, store: Store, writer: UsageWriter | None,
                 budgets: Callable[[], Sequence[Budget]]) -> None:
        self.ledger = ledger
        self.store = store
        self.writer = writer
        self.budgets = budgets
        self.ready = False
        self.version: str | None = None  # the version of the last successful rebuild
        self._process_version = start_version()
        self._attempt: asyncio.Future[None] | None = None
        self._generation = 0  # bumped by forget(): a rebuild that began before it does not count

    async def ensure(self, counters: Sequence[CounterSpec] = ()) -> None:
        """Return once counters are rebuilt (at once when they are); raise LedgerUnavailable when they cannot
        be (the ledger or the store is unreachable). Calls arriving during an attempt share its outcome, so a
        hung Redis costs each of them one attempt's time, not one each in turn."""
        for _ in range(3):  # an attempt overtaken by forget() (a reload mid-rebuild) is followed by a fresh one
            if self.ready:
                return
            if self._attempt is None:
                self._attempt = asyncio.ensure_future(self._rebuild(counters, self._generation))
                self._attempt.add_done_callback(self._attempt_done)
            await asyncio.shield(self._attempt)
        if not self.ready:
            raise LedgerUnavailable("budget counters are being rebuilt; retry shortly")

    def _attempt_done(self, attempt: asyncio.Future[None]) -> None:
        self._attempt = None
        if not attempt.cancelled():
            attempt.exception()  # retrieved: its callers heard it

    def forget(self) -> None:
        """The counters must be rebuilt before the next admission (new budgets, or Redis forgot them)."""
        self.ready = False
        self._generation += 1

    async def admit_again(self, exc: LedgerUnseeded, counters: Sequence[CounterSpec]) -> None:
        """A reservation met counters Redis forgot: rebuild them (once, whoever asks first)."""
        log.warning("the budget ledger forgot its counters; rebuilding them from the store",
                    extra={"error": str(exc)})
        self.forget()
        await self.ensure(counters)

    async def current_version(self) -> str:
        """The ledger's lifetime: the Redis run id (changes when Redis restarts), or this process's."""
        return await self.ledger.version() if isinstance(self.ledger, RedisLedger) else self._process_version

    async def _rebuild(self, counters: Sequence[CounterSpec], generation: int) -> None:
        if self.writer is not None:
            try:  # every row journaled so far is in the store first, so the rebuild counts it
                await asyncio.wait_for(self.writer.flush(), self.FLUSH_TIMEOUT_S)
            except TimeoutError:
                raise LedgerUnavailable("budget counters cannot be rebuilt: the store is not taking rows") from None
        ledger = self.ledger
        version = await self.current_version()
        try:
            # A memory ledger seeded before in this process, or a Redis whose slot marker names this version,
            # keeps its live counters: only counters it does not hold yet (new budgets) are set from the store.
            keep_live = isinstance(ledger, RedisLedger) or self.version == version
            seeded = await seed_from_store(self.ledger, self.budgets(), self.store, version, keep_live=keep_live)
        except LedgerUnavailable:
            raise
        except Exception as exc:  # the store is down: without its totals no counter can be trusted
            raise LedgerUnavailable(f"budget counters cannot be rebuilt: the store is unreachable "
                                    f"({type(exc).__name__})") from None
        if isinstance(ledger, RedisLedger):
            await ledger.mark_seeded(version, counters)
        self.version = version
        self.ready = generation == self._generation
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
