"""`spendgate demo --backfill Nd`: the simulated factory's history of the N days before today (UTC) written
into the store of a config through the store's own write paths: `Store.insert_new_calls` for calls (their
rollups happen inside it) and `ingest_events` for events. Ids are deterministic, so running it again adds
nothing; it needs no running proxy (and may run beside one: each batch is its own short transaction)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pricing.catalog import Catalog
from proxy.demo.history import Models, issue_history, issues_on
from proxy.demo.lifecycle import Event
from proxy.errors import ModelNotFound, ProxyError
from proxy.metrics.events import MAX_BATCH, parse_events
from proxy.metrics.ingest import ingest_events
from proxy.routing import Router
from proxy.settings import Settings
from proxy.store.db import Store
from proxy.store.records import CallRecord

CALL_BATCH = 2000


class BackfillError(Exception):
    """The backfill cannot run with this config (a model it prices history with is missing)."""


@dataclass(slots=True)
class BackfillReport:
    org: str
    store: str  # the store URL, password masked
    first: date
    last: date
    days: int
    issues: int = 0
    calls_written: int = 0
    calls_skipped: int = 0
    cost_nano_written: int = 0
    events_written: int = 0
    events_skipped: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"org": self.org, "store": self.store, "first": self.first.isoformat(),
                "last": self.last.isoformat(), "days": self.days, "issues": self.issues,
                "calls": {"written": self.calls_written, "skipped": self.calls_skipped,
                          "cost_usd": round(self.cost_nano_written / 1e9, 9)},
                "events": {"written": self.events_written, "skipped": self.events_skipped}}

    def as_text(self) -> str:
        lines = [
            f"backfill: {self.days} days, {self.first} .. {self.last} (UTC), org {self.org}, store {self.store}",
            f"  wrote    {self.calls_written:,} calls (${self.cost_nano_written / 1e9:,.6f}) and "
            f"{self.events_written:,} events, from {self.issues:,} issues",
            f"  skipped  {self.calls_skipped:,} calls and {self.events_skipped:,} events already there "
            "(ids are deterministic: running it again adds nothing)",
        ]
        if self.calls_written:
            lines.append("  budgets  a spendgate already running counts backfilled spend of the current month or "
                         "week against its budgets from its next start")
        return "\n".join(lines)


def models_of(settings: Settings, catalog: Catalog, heavy: str, light: str) -> Models:
    router = Router(settings.models, catalog, allow_unpriced=settings.pricing.unpriced == "allow")
    try:
        return Models(router.resolve(heavy)[0], router.resolve(light)[0], catalog.version)
    except (ModelNotFound, ProxyError) as exc:
        raise BackfillError(f"{exc}; the history is priced with the models {heavy} and {light} of the config "
                            "(config.yaml has both), or pass --model NAME") from None


async def backfill(settings: Settings, catalog: Catalog, *, days: int, org: str, seed: int, heavy: str,
                   light: str, today: date | None = None) -> BackfillReport:
    """Writes the `days` days before `today` (default: today, UTC), oldest first."""
    models = models_of(settings, catalog, heavy, light)
    today = today or datetime.now(UTC).date()
    first = today - timedelta(days=days)
    report = BackfillReport(org, settings.store.redacted_url, first, today - timedelta(days=1), days)
    store = await Store.open(settings.store)
    try:
        calls: list[CallRecord] = []
        events: list[Event] = []
        for ago in range(days, 0, -1):
            day = today - timedelta(days=ago)
            for j in range(issues_on(day, ago, seed=seed, org=org)):
                story = issue_history(day, j, seed=seed, org=org, models=models)
                calls += story.calls
                events += story.events
                report.issues += 1
            if len(calls) >= CALL_BATCH or ago == 1:
                await _write_calls(store, calls, report)
                await _write_events(store, settings, org, events, report)
                calls, events = [], []
    finally:
        await store.close()
    return report


async def _write_calls(store: Store, calls: list[CallRecord], report: BackfillReport) -> None:
    for i in range(0, len(calls), CALL_BATCH):
        batch = calls[i: i + CALL_BATCH]
        new = await store.insert_new_calls(batch)
        report.calls_written += len(new)
        report.calls_skipped += len(batch) - len(new)
        report.cost_nano_written += sum(rec.cost_nano for rec in new)


async def _write_events(store: Store, settings: Settings, org: str, events: list[Event],
                        report: BackfillReport) -> None:
    for i in range(0, len(events), MAX_BATCH):
        parsed = parse_events({"events": events[i: i + MAX_BATCH]})
        accepted, duplicates = await ingest_events(
            store, org, parsed, compute_rate_usd_per_hour=settings.pricing.compute_hourly_rate_usd)
        report.events_written += accepted
        report.events_skipped += duplicates
