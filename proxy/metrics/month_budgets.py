"""Which monthly budget the cost reports show for an org or a project, and what it has spent this month.

The budgets are the engine's (runtime limits of `PUT /api/budgets/{name}/limit` already applied). Spent is
read from the metric buckets over the budget's current month window, so it includes the compute leg and
unmetered sessions (what the reports call cost), not only the proxied calls the ledger counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time

from sqlalchemy.ext.asyncio import AsyncConnection

from policies.budgets import WILDCARD, Budget
from policies.windows import window_of
from proxy.metrics.cost_totals import total

DEFAULT_ALERT_PCT = 80.0


@dataclass(frozen=True, slots=True)
class Chosen:
    """A budget and its position in the engine's list (what a runtime limit replaces)."""

    index: int
    budget: Budget

    @property
    def alert_pct(self) -> float:
        """The lowest alert threshold of the budget (80 when it has none)."""
        return min((a.at_pct for a in self.budget.alerts), default=DEFAULT_ALERT_PCT)


def _org_rank(budget: Budget, org: str, *, orgless: bool) -> int | None:
    """0 for a scope naming `org`, 1 for `org: "*"` (its own counter), 2 for no org dimension (only when
    `orgless` allows it); None when the budget is another org's."""
    scoped = dict(budget.scope).get("org")
    if scoped == org:
        return 0
    if scoped == WILDCARD:
        return 1
    if scoped is None and orgless:
        return 2
    return None


def _pick(budgets: Sequence[Budget], org: str, dims: set[str], *, orgless: bool,
          project: str | None = None) -> Chosen | None:
    """The month budget whose scope uses only `dims`, matching `org` (and `project` literally, if given):
    the most specific org match first, then the tightest limit, then the file's order."""
    ranked: list[tuple[int, int, int, Budget]] = []
    for index, budget in enumerate(budgets):
        scope = dict(budget.scope)
        if budget.window != "month" or not set(scope) <= dims:
            continue
        if project is not None and scope.get("project") != project:
            continue
        rank = _org_rank(budget, org, orgless=orgless)
        if rank is not None:
            ranked.append((rank, budget.limit_nano, index, budget))
    if not ranked:
        return None
    _, _, index, budget = min(ranked, key=lambda r: r[:3])
    return Chosen(index, budget)


def org_budget(budgets: Sequence[Budget], org: str, *, orgless: bool) -> Chosen | None:
    """The org's monthly cap: a month budget scoped to this org or to `org: "*"` (its own counter), with no
    other dimension. A budget with no org dimension caps every org together: only an org-"*" admin's view
    (`orgless`) shows it (DESIGN §14, who sees what), against this org's spend."""
    return _pick(budgets, org, {"org"}, orgless=orgless)


def project_budget(budgets: Sequence[Budget], org: str, project: str, *, orgless: bool) -> Chosen | None:
    """The month budget scoped to `project` by name (not `project: "*"`), with at most an org dimension that
    admits `org`. Budgets without an org dimension count only when `orgless` (an org-"*" admin's view)."""
    return _pick(budgets, org, {"org", "project"}, orgless=orgless, project=project)


async def month_spend(conn: AsyncConnection, org: str, budget: Budget, now: datetime,
                      project: str | None = None) -> int:
    """Nano-USD the org (or its project) spent in the budget's current month window. A window in another
    time zone starts mid-day in UTC: hourly buckets then cover it (exact for whole-hour offsets)."""
    span = window_of("month", now, budget.tz)
    assert span.starts_at is not None and span.resets_at is not None  # a month always has both
    grain = "day" if span.starts_at.time() == time.min else "hour"
    spent = await total(conn, org, start=span.starts_at, end=span.resets_at, project=project, grain=grain)
    return spent.cost_nano

