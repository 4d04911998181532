"""Everything a request needs, built once in the app's lifespan and kept on `app.state.services`."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING

from policies.engine import Admission, Engine
from policies.errors import LedgerUnavailable
from pricing.catalog import Catalog
from pricing.tokens import TokenCounter
from proxy.approvals import ApprovalDesk
from proxy.auth import KeyRing
from proxy.budgeting import Alerts, CounterSeeder
from proxy.errors import InvalidRequest
from proxy.prometheus import Metrics
from proxy.ratelimit import MemoryRates, RateLimits
from proxy.routing import Router
from proxy.settings import Settings
from proxy.store.db import Store
from proxy.store.journal import Journal
from proxy.store.writer import UsageWriter
from proxy.upstreams.base import ANTHROPIC_ENDPOINTS, Deployment, Endpoint, Upstream
from proxy.upstreams.http import HttpUpstream
from proxy.upstreams.mock import MockUpstream
from proxy.upstreams.translated import TranslatedUpstream

if TYPE_CHECKING:
    from proxy.idempotency_store import IdempotencyStore

log = logging.getLogger(__name__)

_MAX_DEFERRED = 100_000  # settles kept for a retry while the ledger is down (beyond: reconcile repairs)

# Providers spoken natively, and the endpoints each serves without translation.
OPENAI_COMPATIBLE = frozenset({"openai", "azure", "vllm", "ollama", "deepseek", "groq", "openai_compatible"})


@dataclass(slots=True)
class Services:
    settings: Settings
    keys: KeyRing
    router: Router
    catalog: Catalog
    counter: TokenCounter
    store: Store
    writer: UsageWriter
    http: HttpUpstream
    mock: MockUpstream
    translated: TranslatedUpstream
    engine: Engine
    approvals: ApprovalDesk
    alerts: Alerts
    seeder: CounterSeeder
    idempotency: IdempotencyStore  # Idempotency-Key answers, beside the ledger (proxy/idempotency.py)
    # Per-key rpm / tpm of proxied calls and the metrics APIs' per-key cap (memory, or the ledger's Redis).
    limiter: RateLimits = field(default_factory=lambda: RateLimits(MemoryRates()))
    metrics: Metrics = field(default_factory=Metrics)  # this app's Prometheus registry (GET /metrics)
    journal: Journal | None = None  # the writer's journal, for its pending count
    draining: bool = False  # new calls are refused (503)
    leaving: bool = False  # SIGTERM: /readyz is not ready (calls are still served during server.drain_delay_s)
    deferred_settles: list[tuple[Admission, int, str | None]] = field(default_factory=list)
    inflight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    async def settle(self, admission: Admission, cost_nano: int) -> None:
        """Book a finished call's real cost on its budgets and raise the alerts it crossed. Never fails the
        call: an unreachable ledger is logged (the row is in the store, so counters can be rebuilt)."""
        started = perf_counter()
        try:
            crossings = await self.engine.settle(admission, cost_nano)
        except LedgerUnavailable:
            log.error("ledger unavailable at settle; retried when it answers again",
                      extra={"reservation_id": admission.reservation_id})
            admission.done = False  # settling is idempotent per reservation: trying again is safe
            if len(self.deferred_settles) < _MAX_DEFERRED:
                self.deferred_settles.append((admission, cost_nano, self.seeder.version))
            return
        finally:
            self.metrics.ledger("settle", perf_counter() - started)
        if crossings:
            await self.alerts.crossed(crossings)

    async def retry_settles(self) -> int:
        """Settles the ledger could not take, tried again; returns how many are still waiting. One is dropped,
        not retried, once this replica has rebuilt its counters since it failed: the rebuild flushed this
        replica's rows (that one included) to the store first and counted them. Otherwise it is retried, even
        if Redis restarted meanwhile and another replica rebuilt: counting a call twice (until `spendgate
        reconcile`) errs towards the cap; dropping it would err past it."""
        waiting, self.deferred_settles = self.deferred_settles, []
        for i, (admission, cost_nano, seen) in enumerate(waiting):
            if seen != self.seeder.version:
                continue
            try:
                crossings = await self.engine.settle(admission, cost_nano)
            except LedgerUnavailable:
                admission.done = False
                self.deferred_settles = waiting[i:] + self.deferred_settles
                break
            if crossings:
                await self.alerts.crossed(crossings)
        return len(self.deferred_settles)

    def begin_call(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def end_call(self) -> None:
        self.inflight -= 1
        if self.inflight <= 0:
            self._idle.set()

    async def wait_idle(self, grace_s: float) -> bool:
        """At shutdown: wait until every in-flight call has recorded its row (uvicorn cancels request tasks
        and starts the lifespan shutdown without waiting for them)."""
        if self.inflight <= 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            return False
        return True

    def upstream_for(self, deployment: Deployment, endpoint: Endpoint) -> Upstream:
        """Passthrough when the provider speaks the endpoint's wire format, litellm when it needs translating."""
        provider = deployment.provider
        if provider == "mock":
            return self.mock
        anthropic_call = endpoint in ANTHROPIC_ENDPOINTS
        if provider == "anthropic" and anthropic_call:
            return self.http
        if provider in OPENAI_COMPATIBLE and not anthropic_call:
            return self.http
        if anthropic_call:
            raise InvalidRequest(
                f"model {deployment.requested!r} is served by provider {provider!r}; the Anthropic Messages API "
                "(/v1/messages) needs a deployment with provider `anthropic` (or `mock`)", param="model")
        return self.translated
