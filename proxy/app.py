"""create_app: builds every service in the lifespan and keeps it on `app.state` (no module globals)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from sqlalchemy import exc as sa_exc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from policies.errors import LedgerUnavailable
from pricing.catalog import Catalog
from pricing.errors import PricingError
from pricing.tokens import TokenCounter
from proxy.approvals import ApprovalDesk
from proxy.auth import KeyRing
from proxy.budgeting import Alerts, CounterSeeder, build_engine, open_ledger, redis_client
from proxy.errors import (
    MethodNotAllowed,
    NotFound,
    ProxyError,
    ServiceUnavailable,
    error_response,
    family_for_path,
)
from proxy.idempotency_store import open_store
from proxy.prometheus import Metrics, watch_services
from proxy.ratelimit import open_rate_limits
from proxy.reload import watch
from proxy.routes import (
    anthropic,
    api,
    budgets,
    costs,
    dashboard,
    events,
    health,
    issues,
    metrics,
    openai,
    prom,
)
from proxy.routes import approvals as approval_routes
from proxy.routing import Router, check_prices
from proxy.services import Services
from proxy.settings import ConfigError, Settings, line_of, load_settings
from proxy.store.db import Store
from proxy.store.journal import Journal
from proxy.store.runtime_limits import apply_limits
from proxy.store.writer import UsageWriter
from proxy.upstreams.http import HttpUpstream
from proxy.upstreams.mock import MockUpstream
from proxy.upstreams.translated import TranslatedUpstream
from proxy.webhooks import WebhookDispatcher

log = logging.getLogger(__name__)


def load_catalog(settings: Settings, source: str = "config.yaml", text: str | None = None) -> Catalog:
    """The price catalog with overrides; every fixed model route must be priced (or unpriced: allow).

    With the config's `text`, each problem names its line like every other config error."""
    catalog = Catalog.load(settings.pricing.overrides)
    allow = settings.pricing.unpriced == "allow"
    problems = check_prices(settings.models, catalog, allow_unpriced=allow)
    if problems:
        raise ConfigError([
            f"{source}:{line_of(text, loc) if text is not None else 1} {loc[0]}[{loc[1]}].{loc[2]}: {message}"
            for loc, message in problems])
    return catalog


def load_config(path: Path) -> tuple[Settings, Catalog]:
    """config.yaml validated whole, and the price catalog built for it (ConfigError lists every problem)."""
    settings = load_settings(path)
    try:
        catalog = load_catalog(settings, str(path), path.read_text(encoding="utf-8"))
    except PricingError as exc:  # the bundled catalog is missing or broken: one line, not a traceback
        raise ConfigError([f"{path}: {exc}"]) from None
    return settings, catalog


@contextlib.asynccontextmanager
async def _services(settings: Settings, catalog: Catalog) -> AsyncIterator[Services]:
    server = settings.server
    async with contextlib.AsyncExitStack() as stack:
        # Closed in reverse order: the writer flushes everything journaled into SQL before the store closes.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        # Bytes are relayed and scanned as they come, so ask providers for uncompressed bodies
        # (`accept-encoding: identity`, set per request) instead of aiohttp's default gzip.
        session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                        skip_auto_headers=("User-Agent", "Accept-Encoding"))
        stack.push_async_callback(session.close)
        store = await Store.open(settings.store)
        stack.push_async_callback(store.close)
        journal = Journal(settings.store.effective_journal_path, fsync=settings.store.fsync)
        stack.push_async_callback(journal.close)
        writer = UsageWriter(store, journal, batch_max=settings.store.batch_max,
                             flush_interval=settings.store.flush_interval_ms / 1000)
        await writer.start()
        stack.push_async_callback(writer.close, 15.0)  # SQL down at exit: the rest stays in the journal
        counter = TokenCounter()  # encodings load on first need (~100 MB for o200k + cl100k), off the loop
        redis = redis_client(settings.ledger)  # one pool for counters, rate limits and idempotency answers
        if redis is not None:
            stack.push_async_callback(redis.aclose)  # closed after its users
        ledger = open_ledger(settings.ledger, redis)
        stack.push_async_callback(ledger.aclose)
        idempotency = open_store(settings.ledger, redis)  # Idempotency-Key answers live where the ledger does
        stack.push_async_callback(idempotency.aclose)
        engine = build_engine(settings, ledger)
        engine.budgets = await apply_limits(store, engine.budgets)  # runtime limits set with PUT .../limit
        dispatcher: WebhookDispatcher | None = None
        if settings.webhooks:  # no receivers configured: no delivery task polling the outbox
            dispatcher = WebhookDispatcher(store, settings.webhooks, session)
            await dispatcher.start()
            stack.push_async_callback(dispatcher.close)
        approvals = ApprovalDesk(store, grant_usd=settings.approvals.grant_usd,
                                 wait_seconds=settings.approvals.wait_seconds,
                                 notify=dispatcher.emit if dispatcher else None)
        engine.extra_limits = approvals.extra_limits
        seeder = CounterSeeder(ledger, store, writer, lambda: engine.budgets)
        if engine.budgets:
            try:
                await seeder.ensure()
            except LedgerUnavailable as exc:  # start anyway, not ready: calls are refused until it succeeds
                log.error("budget counters not rebuilt at start; no call is admitted until they are",
                          extra={"error": str(exc)})
        metrics = Metrics()  # a registry per app: apps in one process never share series
        limiter = open_rate_limits(settings, metrics, redis)  # on the ledger's Redis when it has one
        stack.push_async_callback(limiter.aclose)
        services = Services(
            settings=settings, keys=KeyRing(settings.keys),
            router=Router(settings.models, catalog, allow_unpriced=settings.pricing.unpriced == "allow"),
            catalog=catalog, counter=counter, store=store, writer=writer,
            http=HttpUpstream(session, connect_timeout=server.upstream_connect_timeout_s,
                              read_timeout=server.upstream_read_timeout_s),
            mock=MockUpstream(counter), translated=TranslatedUpstream(), engine=engine,
            approvals=approvals, alerts=Alerts(store, dispatcher), seeder=seeder,
            idempotency=idempotency,
            limiter=limiter, metrics=metrics, journal=journal,
        )
        watch_services(services)
        retrier = asyncio.create_task(_retry_settles(services), name="settle-retry")
        stack.callback(retrier.cancel)
        yield services


async def _retry_settles(services: Services, every_s: float = 0.5) -> None:
    """Settles the ledger could not take while it was down, booked once it answers again."""
    while True:
        await asyncio.sleep(every_s)
        if services.deferred_settles:
            try:
                await services.retry_settles()
            except Exception:  # never let the task die
                log.exception("retrying deferred settles failed")


def create_app(settings: Settings, *, catalog: Catalog | None = None, config_path: Path | None = None) -> Starlette:
    """The app. With `config_path`, edits to that file apply live (see proxy/reload.py)."""
    catalog = catalog or load_catalog(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with _services(settings, catalog) as services:
            app.state.services = services
            watcher = asyncio.create_task(watch(services, config_path)) if config_path else None
            log.info("spendgate ready", extra={"models": len(settings.models), "keys": len(settings.keys),
                                               "store": settings.store.redacted_url})
            try:
                yield
            finally:
                services.draining = True
                if watcher is not None:
                    watcher.cancel()
                if not await services.wait_idle(grace_s=10.0):
                    log.error("shutdown with calls still in flight", extra={"inflight": services.inflight})

    app = Starlette(routes=[*openai.routes, *anthropic.routes, *api.routes, *approval_routes.routes,
                            *budgets.routes, *events.routes, *metrics.routes, *issues.routes,
                            *costs.routes, *dashboard.routes, *health.routes, *prom.routes], lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _unexpected})
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    family = family_for_path(request.url.path)
    err: ProxyError
    if exc.status_code == 405:
        err = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
    elif exc.status_code == 404:
        err = NotFound(f"no route {request.method} {request.url.path}")
    else:
        err = ProxyError(str(exc.detail))
        err.status = exc.status_code
    return error_response(err, family)


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Never a traceback in the answer; the log line goes through the redacting sink.
    family = family_for_path(request.url.path)
    if _store_unreachable(exc):  # a read while SQL is down: expected in an outage, and worth a retry
        log.warning("store unreachable", extra={"path": request.url.path, "error": type(exc).__name__})
        return error_response(ServiceUnavailable("the store is unreachable; retry shortly"), family)
    log.error("unexpected error", exc_info=exc, extra={"path": request.url.path})
    return error_response(ProxyError("spendgate hit an unexpected error; it has been logged"), family)


_LOCAL_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def _store_unreachable(exc: BaseException) -> bool:
    """True for connection failures to SQL (refused, reset, timed out, pool exhausted), however SQLAlchemy and
    the driver wrapped them; never for bad SQL or bad data."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TimeoutError | sa_exc.TimeoutError | ConnectionError):
            return True
        if isinstance(current, OSError) and not isinstance(current, _LOCAL_OS_ERRORS):  # e.g. asyncpg's
            return True  # "Multiple exceptions: [Errno 111] Connect call failed ..."
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sa_exc.InterfaceError | sa_exc.OperationalError) and "connect" in str(current).lower():
            return True
        current = current.__cause__ or current.__context__
    return False
