"""Budgets as domain values: which budgets match a call, the counters it touches, and their ledger keys."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo

from policies.attribution import Attribution
from policies.config import DIMENSIONS, AlertRule, BudgetConfig
from policies.windows import WindowSpan, counter_ttl_s, window_of
from pricing.money import usd_to_nano

Scope = tuple[tuple[str, str], ...]  # sorted (dimension, value) pairs
CallTags = Mapping[str, str | None]  # dimension -> the call's value (None or missing = untagged)
WILDCARD = "*"
_UTC = ZoneInfo("UTC")


@dataclass(frozen=True, slots=True)
class Budget:
    """A validated budget. `scope` is the configured scope, sorted; `limit_nano` may be a runtime override
    of `config_limit_nano` (the file's limit, kept so the engine can drop the override when it changes)."""

    name: str
    scope: Scope
    window: str
    limit_nano: int
    config_limit_nano: int
    tz: ZoneInfo
    alerts: tuple[AlertRule, ...]
    on_exceed: Literal["block", "approve", "warn", "webhook"]
    clamp_max_tokens: bool
    min_output_tokens: int
    mode: Literal["enforce", "shadow"]

    @classmethod
    def from_config(cls, cfg: BudgetConfig) -> Budget:
        # usd_to_nano rounds up; for a limit that only matters below a nano-dollar, and limit_usd > 0
        # guarantees a limit of at least 1 nano-USD.
        limit = usd_to_nano(cfg.limit_usd)
        return cls(
            name=cfg.name,
            scope=tuple(sorted(cfg.scope.items())),
            window=cfg.window,
            limit_nano=limit,
            config_limit_nano=limit,
            tz=ZoneInfo(cfg.timezone) if cfg.timezone else _UTC,
            alerts=tuple(sorted(cfg.alerts, key=lambda a: a.at_pct)),
            on_exceed=cfg.on_exceed,
            clamp_max_tokens=cfg.clamp_max_tokens,
            min_output_tokens=cfg.min_output_tokens,
            mode=cfg.mode,
        )

    def with_limit(self, limit_nano: int) -> Budget:
        """This budget with a runtime limit (`PUT /api/budgets/{name}/limit`); 0 stops all spend."""
        if limit_nano < 0:
            raise ValueError("a limit cannot be negative")
        return dataclasses.replace(self, limit_nano=limit_nano)

    @property
    def overridden(self) -> bool:
        return self.limit_nano != self.config_limit_nano

    @property
    def enforced(self) -> bool:
        """Shadow budgets are computed and recorded but never block, hold or clamp."""
        return self.mode == "enforce"


@dataclass(frozen=True, slots=True)
class Counter:
    """One ledger counter a call touches: a budget, the scope values of this call, and the window."""

    budget: Budget
    scope: Scope
    window: WindowSpan
    key: str
    limit_nano: int
    ttl_s: int


def call_tags(attribution: Attribution, *, model: str, provider: str) -> dict[str, str | None]:
    """The dimension values of one call, from its attribution and the route it takes."""
    return {
        "org": attribution.org, "project": attribution.project, "agent": attribution.agent,
        "station": attribution.station, "run": attribution.run, "issue": attribution.issue,
        "model": model, "provider": provider, "key": attribution.key,
    }


def matched_scope(budget: Budget, tags: CallTags) -> Scope | None:
    """The counter scope of `budget` for a call with `tags`, or None when the budget does not match.

    A literal matches only that value; "*" matches any value but only calls that carry the tag (an
    untagged call must not pool into one shared counter, nor slip past: keys can `require_tags`)."""
    values: list[tuple[str, str]] = []
    for dim, wanted in budget.scope:
        got = tags.get(dim)
        if not got or (wanted != WILDCARD and got != wanted):
            return None
        values.append((dim, got))
    return tuple(values)


def counters_for(budgets: Sequence[Budget], tags: CallTags, now: datetime) -> list[Counter]:
    """Every counter a call with `tags`, admitted at `now`, touches: one per matching budget, in order."""
    counters: list[Counter] = []
    spans: dict[tuple[str, str], WindowSpan] = {}  # budgets often share a window and zone
    for budget in budgets:
        scope = matched_scope(budget, tags)
        if scope is None:
            continue
        cache_key = (budget.window, budget.tz.key)
        span = spans.get(cache_key)
        if span is None:
            span = spans[cache_key] = window_of(budget.window, now, budget.tz)
        counters.append(Counter(
            budget=budget, scope=scope, window=span,
            key=counter_key(budget.name, scope, span.id),
            limit_nano=budget.limit_nano, ttl_s=counter_ttl_s(span, now),
        ))
    return counters


def _enc(part: str) -> str:
    # quote(safe="") leaves only [A-Za-z0-9_.~-]: every separator below (: , = { } |) and '%' itself
    # are encoded, so the parts can be read back and distinct scopes never share a key.
    return quote(part, safe="")


def counter_key(budget_name: str, scope: Scope | Mapping[str, str], window_id: str) -> str:
    """The ledger key of one counter. STABLE ACROSS RELEASES: the Redis ledger keeps counters under these
    keys, so changing the format orphans every live counter and reservation. Do not change it.

        sg:{<org>}:b:<budget>:<window id>:<dim>=<value>,<dim>=<value>...

    `{<org>}` is the Redis Cluster hash tag (all of an org's counters share one slot; `_` when the
    scope has no org). Scope parts are sorted by dimension; every variable part is percent-encoded."""
    pairs = sorted(scope.items() if isinstance(scope, Mapping) else scope)
    org = dict(pairs).get("org")
    tag = _enc(org) if org else "_"
    parts = ",".join(f"{_enc(dim)}={_enc(value)}" for dim, value in pairs)
    return f"sg:{{{tag}}}:b:{_enc(budget_name)}:{_enc(window_id)}:{parts}"


def scope_dict(scope: Scope) -> dict[str, str]:
    """The scope as the API shows it (`GET /api/budgets`, 402 bodies), in the canonical dimension order."""
    found = dict(scope)
    return {dim: found[dim] for dim in DIMENSIONS if dim in found}
