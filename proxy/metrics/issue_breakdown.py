"""The drill-down of one issue's cost, assembled from grouped rows (pure: no SQL here).

Two legs. Token leg: the issue's proxied calls (usage rows, priced at call time) plus the costUsd of
sessions that say `metered: false` (work the proxy did not see). Compute leg: every session's wall-clock
hours x the compute hourly rate, plus execution records (both stored per event as `compute_nano`).
Calls of a model with no price carry no cost: they are counted in `unpricedCalls`, shown with
`unpriced: true` / `costUsd: null`, and excluded from every total (never counted as 0 silently).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pricing.money import nano_to_usd

MS_PER_HOUR = 3_600_000
SESSION = "session.completed"


@dataclass(frozen=True, slots=True)
class CallGroup:
    """Usage rows of the issue sharing station, agent, model, provider, pricing and retry-ness."""

    station: str | None
    agent: str | None
    model: str
    provider: str
    unpriced: bool
    retry: bool
    cost_nano: int
    calls: int
    input_tokens: int
    output_tokens: int

    @property
    def priced_nano(self) -> int:
        """What the calls count toward totals: nothing when the model had no price."""
        return 0 if self.unpriced else self.cost_nano


@dataclass(frozen=True, slots=True)
class EventGroup:
    """session.completed or execution events of the issue sharing type and dimensions."""

    type: str
    station: str | None
    agent: str | None
    provider: str | None
    model: str | None
    metered: bool | None
    cost_nano: int
    compute_nano: int
    duration_ms: int
    input_tokens: int
    output_tokens: int
    count: int

    @property
    def unmetered_session(self) -> bool:
        return self.type == SESSION and self.metered is False

    @property
    def token_nano(self) -> int:
        """The token leg an event adds: an unmetered session's own costUsd (0 for anything else)."""
        return self.cost_nano - self.compute_nano


@dataclass(slots=True)
class _Tally:
    cost_nano: int = 0
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


def _ranked(tallies: dict[Any, _Tally]) -> list[tuple[Any, _Tally]]:
    """Most expensive first, then by name (None last) so equal costs keep a stable order."""
    return sorted(tallies.items(), key=lambda kv: (-kv[1].cost_nano, kv[0] is None, str(kv[0])))


def _by_dimension(calls: Iterable[CallGroup], events: Iterable[EventGroup], dim: str) -> list[tuple[Any, _Tally]]:
    """Both legs per station (or agent): calls, sessions and executions; `calls` counts proxied calls and
    unmetered sessions, as every rollup does."""
    tallies: dict[Any, _Tally] = {}
    for c in calls:
        t = tallies.setdefault(getattr(c, dim), _Tally())
        t.cost_nano += c.priced_nano
        t.calls += c.calls
    for e in events:
        t = tallies.setdefault(getattr(e, dim), _Tally())
        t.cost_nano += e.cost_nano
        t.calls += e.count if e.unmetered_session else 0
    return _ranked(tallies)


def by_model(calls: Iterable[CallGroup], events: Iterable[EventGroup]) -> list[dict[str, Any]]:
    """The token leg per (model, provider); priced and unpriced calls of one model are listed apart."""
    tallies: dict[tuple[str | None, str | None, bool], _Tally] = {}
    for c in calls:
        t = tallies.setdefault((c.model, c.provider, c.unpriced), _Tally())
        t.cost_nano += c.priced_nano
        t.calls += c.calls
        t.input_tokens += c.input_tokens
        t.output_tokens += c.output_tokens
    for e in events:
        if e.unmetered_session:
            t = tallies.setdefault((e.model, e.provider, False), _Tally())
            t.cost_nano += e.token_nano
            t.calls += e.count
            t.input_tokens += e.input_tokens
            t.output_tokens += e.output_tokens
    return [{"model": model, "provider": provider, "costUsd": None if unpriced else nano_to_usd(t.cost_nano),
             "calls": t.calls, "inputTokens": t.input_tokens, "outputTokens": t.output_tokens,
             "unpriced": unpriced}
            for (model, provider, unpriced), t in _ranked(tallies)]


@dataclass(frozen=True, slots=True)
class Totals:
    token_nano: int
    compute_nano: int
    retry_nano: int
    session_ms: int
    unpriced_calls: int

    @classmethod
    def of(cls, calls: Iterable[CallGroup], events: Iterable[EventGroup]) -> Totals:
        calls, events = list(calls), list(events)
        return cls(
            token_nano=sum(c.priced_nano for c in calls) + sum(e.token_nano for e in events if e.unmetered_session),
            compute_nano=sum(e.compute_nano for e in events),
            retry_nano=sum(c.priced_nano for c in calls if c.retry),
            session_ms=sum(e.duration_ms for e in events if e.type == SESSION),
            unpriced_calls=sum(c.calls for c in calls if c.unpriced),
        )


def breakdown(issue: str, calls: list[CallGroup], events: list[EventGroup], *, rework_nano: int,
              call_list: list[dict[str, Any]], truncated: bool) -> dict[str, Any]:
    """The drill-down payload of `GET /api/factory/cost-per-issue/{issue}`."""
    totals = Totals.of(calls, events)
    return {
        "issue": issue,
        "totalCostUsd": nano_to_usd(totals.token_nano + totals.compute_nano),
        "tokenCostUsd": nano_to_usd(totals.token_nano),
        "computeCostUsd": nano_to_usd(totals.compute_nano),
        "computeHours": round(totals.session_ms / MS_PER_HOUR, 6),
        "retryCostUsd": nano_to_usd(totals.retry_nano),
        "reworkCostUsd": nano_to_usd(rework_nano),
        "unpricedCalls": totals.unpriced_calls,
        "byStation": [{"station": k, "costUsd": nano_to_usd(t.cost_nano), "calls": t.calls}
                      for k, t in _by_dimension(calls, events, "station")],
        "byAgent": [{"agent": k, "costUsd": nano_to_usd(t.cost_nano), "calls": t.calls}
                    for k, t in _by_dimension(calls, events, "agent")],
        "byModel": by_model(calls, events),
        "calls": call_list,
        "callsTruncated": truncated,
    }
