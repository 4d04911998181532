"""Live config: a changed config.yaml applies within a second, without a restart; a bad edit is refused
with its errors logged and the last good config stays in force.

Applied live: keys, models and prices, budgets (runtime limits re-applied), approvals and webhook receivers.
`server`, `store` and `ledger` need a restart (a warning says so).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from policies.budgets import Budget
from pricing.catalog import Catalog
from proxy.auth import KeyRing
from proxy.routing import Router
from proxy.services import Services
from proxy.settings import ConfigError, Settings
from proxy.store.runtime_limits import apply_limits

log = logging.getLogger(__name__)
POLL_S = 0.25


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


async def apply(services: Services, settings: Settings, catalog: Catalog) -> None:
    """Swap in a validated config and its catalog. In-flight calls keep what they started with."""
    old = services.settings
    for section in ("server", "store", "ledger"):
        if getattr(old, section) != getattr(settings, section):
            log.warning("config section changed; it applies after a restart", extra={"section": section})
    budgets = await apply_limits(services.store, [Budget.from_config(b) for b in settings.budgets])
    services.catalog = catalog
    services.router = Router(settings.models, catalog, allow_unpriced=settings.pricing.unpriced == "allow")
    services.keys = KeyRing(settings.keys)
    services.engine.budgets = budgets
    if old.budgets != settings.budgets:  # a new budget's counters start from the store's totals, not from 0
        services.seeder.forget()
    services.approvals.configure(grant_usd=settings.approvals.grant_usd,
                                 wait_seconds=settings.approvals.wait_seconds)
    if services.alerts.dispatcher is not None:
        services.alerts.dispatcher.configure(settings.webhooks)
    elif settings.webhooks:
        log.warning("webhooks were added; their delivery starts after a restart")
    services.settings = settings.model_copy(update={s: getattr(old, s) for s in ("server", "store", "ledger")})
    log.info("config reloaded", extra={"models": len(settings.models), "keys": len(settings.keys),
                                       "budgets": len(budgets)})


async def watch(services: Services, path: Path, poll_s: float = POLL_S) -> None:
    """Poll the file (no extra dependency, works on every filesystem) and apply each good version."""
    seen = _stamp(path)
    while True:
        await asyncio.sleep(poll_s)
        stamp = _stamp(path)
        if stamp is None or stamp == seen:
            continue
        seen = stamp
        from proxy.app import load_config  # proxy.app imports this module

        try:
            settings, catalog = await asyncio.to_thread(load_config, path)
        except ConfigError as exc:
            for line in exc.lines:
                log.error("config edit refused; the last good config stays in force", extra={"problem": line})
            continue
        try:
            await apply(services, settings, catalog)
        except Exception:
            log.exception("config reload failed; the last good config stays in force")
