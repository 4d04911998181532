"""`spendgate reconcile`: the Redis ledger's counters of every budget's current window against the store's truth.

The store (one row per call) is the record; the ledger's `spent` is a cache of it that can drift (a settle lost
while Redis was unreachable, a proxy killed between journaling a call and settling it, a hand edit). Repairs
are SETs of the store's total, compare-and-set on the counter's version (never an increment), so any number
of reconcilers may run at once and give the same counters. A reading is trusted only when it is consistent:
the counter's last settle is at least `lag_s` old when the store is read (the replicas' writers have put every
settled call in SQL by then) and its version did not move while the store was read; a counter that never
goes quiet for that long is reported `busy` and left alone.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import unquote

from policies.budgets import WILDCARD, Budget, Scope, counter_key, scope_dict
from policies.ledger.audit import CounterAudit
from policies.ledger.base import CounterSpec
from policies.ledger.redis import RedisLedger
from policies.windows import WindowSpan, counter_ttl_s, window_of
from proxy.settings import Settings
from proxy.store.db import Store
from proxy.store.spend import counter_spend

DEFAULT_LAG_S = 2.0  # > the writers' flush interval (default 0.2 s) plus a batch insert, with room to spare
DEFAULT_ROUNDS = 5
MEMORY_LEDGER_NOTE = ("ledger memory://: the counters live inside the serving process and are rebuilt from the "
                      "store at every start; nothing to reconcile")


@dataclass(frozen=True, slots=True)
class Target:
    """One counter to check: its budget, scope and window, and the spec the ledger needs."""

    budget: Budget
    scope: Scope
    window: WindowSpan
    spec: CounterSpec


@dataclass(frozen=True, slots=True)
class CounterReport:
    """One counter's drift and what was done. `outcome`: in_sync | repaired | drift (dry run) | busy."""

    target: Target
    audit: CounterAudit
    store_spent_nano: int
    outcome: str

    @property
    def spent_drift_nano(self) -> int:
        return self.audit.spent_nano - self.store_spent_nano

    @property
    def drifted(self) -> bool:
        return self.spent_drift_nano != 0 or self.audit.reserved_drift_nano != 0


@dataclass(slots=True)
class Report:
    ledger: str
    store: str
    dry_run: bool
    counters: list[CounterReport] = field(default_factory=list)
    memory: bool = False

    @property
    def exit_code(self) -> int:
        """0: every counter agrees with the store (now); 2: drift is left (dry run, or busy counters)."""
        left = [c for c in self.counters if c.outcome in ("drift", "busy")]
        return 2 if left else 0


async def reconcile(ledger: RedisLedger, store: Store, budgets: Sequence[Budget], *, dry_run: bool,
                    lag_s: float = DEFAULT_LAG_S, rounds: int = DEFAULT_ROUNDS, now: datetime | None = None,
                    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> list[CounterReport]:
    """Compare (and unless `dry_run`, repair) every counter of every budget's current window."""
    now = now or datetime.now(UTC)
    targets = await _targets(ledger, store, budgets, now)
    done: dict[str, CounterReport] = {}
    pending = list(targets)
    last: dict[str, tuple[CounterAudit, int]] = {}
    for _ in range(rounds):
        if not pending:
            break
        before = {a.key: a for a in await ledger.audit([targets[k].spec for k in pending])}
        young = [lag_s * 1000 - a.settled_age_ms for a in before.values()
                 if a.settled_age_ms is not None and a.settled_age_ms < lag_s * 1000]
        if young:  # let the writers put every call settled before this reading into SQL
            await sleep(max(young) / 1000)
        truth = await _store_spent(store, [targets[k] for k in pending])
        after = {a.key: a for a in await ledger.audit([targets[k].spec for k in pending])}
        retry = []
        for key in pending:
            audit, spent = before[key], truth.get(key, 0)
            last[key] = (after[key], spent)
            if after[key].version != audit.version:
                retry.append(key)  # spend was booked while the store was read: read again
                continue
            outcome = await _decide(ledger, targets[key], audit, spent, dry_run)
            if outcome is None:
                retry.append(key)
            else:
                done[key] = CounterReport(targets[key], audit, spent, outcome)
        pending = retry
    for key in pending:
        audit, spent = last[key]
        done[key] = CounterReport(targets[key], audit, spent, "busy")
    return [done[k] for k in targets]


async def _decide(ledger: RedisLedger, target: Target, audit: CounterAudit, store_spent: int,
                          dry_run: bool) -> str | None:
    """The outcome for a consistent reading; None when the compare-and-set lost (read again)."""
    spent_off = audit.spent_nano != store_spent
    if not spent_off and audit.reserved_drift_nano == 0:
        return "in_sync"
    if dry_run:
        return "drift"
    repair = await ledger.repair(target.spec, audit.version, store_spent if spent_off else None)
    if spent_off and not repair.applied:
        return None
    return "repaired"


async def _targets(ledger: RedisLedger, store: Store, budgets: Sequence[Budget], now: datetime) -> dict[str, Target]:
    """Every counter of the current windows: those the store has spend for, and those the ledger holds."""
    found: dict[str, Target] = {}
    for budget in budgets:
        window = window_of(budget.window, now, budget.tz)
        scopes = [scope for scope, _ in await counter_spend(store, budget, window)]
        for key in await ledger.counter_keys(_pattern(budget, window)):
            scope = _scope_of(key, budget, window)
            if scope is not None:
                scopes.append(scope)
        for scope in scopes:
            key = counter_key(budget.name, scope, window.id)
            spec = CounterSpec(key, budget.limit_nano, counter_ttl_s(window, now))
            found.setdefault(key, Target(budget, scope, window, spec))
    return found


async def _store_spent(store: Store, targets: Sequence[Target]) -> dict[str, int]:
    spent: dict[str, int] = {}
    seen: set[str] = set()
    for target in targets:
        if target.budget.name in seen:
            continue
        seen.add(target.budget.name)
        for scope, total in await counter_spend(store, target.budget, target.window):
            spent[counter_key(target.budget.name, scope, target.window.id)] = total
    return spent


def _pattern(budget: Budget, window: WindowSpan) -> str:
    """SCAN glob of the budget's counters in `window` (percent-encoded parts hold no glob character)."""
    bare = counter_key(budget.name, (), window.id)  # sg:{_}:b:<budget>:<window>:
    return bare.replace("{_}", "{*}", 1) + "*"


_KEY = re.compile(r"^sg:\{[^}]*\}:b:[^:]*:[^:]*:(?P<parts>.*)$")


def _scope_of(key: str, budget: Budget, window: WindowSpan) -> Scope | None:
    """The scope a ledger key stands for, if it is a counter of this budget's current scope shape."""
    match = _KEY.match(key)
    if match is None:
        return None
    pairs = []
    for part in filter(None, match.group("parts").split(",")):
        dim, sep, value = part.partition("=")
        if not sep:
            return None
        pairs.append((unquote(dim), unquote(value)))
    scope = tuple(sorted(pairs))
    found = dict(scope)
    if set(found) != {dim for dim, _ in budget.scope}:
        return None  # the budget's scope changed since: not a counter anything enforces now
    if any(value != WILDCARD and found[dim] != value for dim, value in budget.scope):
        return None
    return scope if counter_key(budget.name, scope, window.id) == key else None


def default_lag_s(settings: Settings) -> float:
    """Long enough for a writer with this config's flush interval to have put a settled call in SQL."""
    return max(DEFAULT_LAG_S, 2 * settings.store.flush_interval_ms / 1000 + 1)


async def reconcile_settings(settings: Settings, *, dry_run: bool, lag_s: float | None = None) -> Report:
    """Open the config's store and ledger, reconcile, close. A memory ledger has nothing to reconcile."""
    lag_s = default_lag_s(settings) if lag_s is None else lag_s
    report = Report(ledger=settings.ledger.redacted_url, store=settings.store.redacted_url, dry_run=dry_run)
    if settings.ledger.is_memory:
        report.memory = True
        return report
    budgets = [Budget.from_config(b) for b in settings.budgets]
    store = await Store.open(settings.store)
    ledger = RedisLedger(settings.ledger.url, cluster=settings.ledger.cluster)
    try:
        report.counters = await reconcile(ledger, store, budgets, dry_run=dry_run, lag_s=lag_s)
    finally:
        await ledger.aclose()
        await store.close()
    return report


def _usd(nano: int, sign: bool = False) -> str:
    return f"{Decimal(nano).scaleb(-9):{'+' if sign else ''}.9f}"


def format_report(report: Report) -> list[str]:
    """The lines `spendgate reconcile` prints: a header, one row per counter, a summary."""
    if report.memory:
        return [MEMORY_LEDGER_NOTE]
    mode = "dry run, nothing written" if report.dry_run else "repairing"
    lines = [f"ledger {report.ledger} vs store {report.store} ({mode}; current windows)"]
    header = ("budget", "window", "scope", "ledger_spent", "store_spent", "drift", "reserved", "live",
              "stale_reserved (holds)", "outcome")
    rows = [header]
    for c in report.counters:
        a = c.audit
        scope = ",".join(f"{k}={v}" for k, v in scope_dict(c.target.scope).items()) or "-"
        rows.append((c.target.budget.name, c.target.window.id, scope, _usd(a.spent_nano), _usd(c.store_spent_nano),
                     _usd(c.spent_drift_nano, sign=True), _usd(a.reserved_nano), _usd(a.live_nano),
                     f"{_usd(a.stale_nano + a.unbacked_nano)} ({a.stale_holds})", c.outcome))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    counts = {o: sum(c.outcome == o for c in report.counters) for o in ("in_sync", "repaired", "drift", "busy")}
    lines.append(f"{len(report.counters)} counter(s): " + ", ".join(f"{n} {o}" for o, n in counts.items()))
    if counts["busy"]:
        lines.append("busy: spend was booked on these counters during every check; run reconcile again")
    return lines
