"""Rollups at ingest: what one call or event adds to the hourly / daily metric buckets, the (org, issue, day)
and the (org, run, agent) rollups, upserted additively in the transaction that stores the raw row, and
`rebuild`, which recomputes all three from the raw rows with the very same accumulator (and the station
visits with the very same pairing, proxy/metrics/visits.py).

Contract: `Rollup.add_call` / `add_event` take rows exactly as stored (column dicts); `upsert(conn)` adds the
accumulated amounts with one statement per table, keys sorted (concurrent writers lock rows in one order, so
they cannot deadlock). Adding is commutative, so buckets filled incrementally equal buckets rebuilt.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from proxy.metrics.visits import rebuild_visits
from proxy.store.models import factory_events, issue_days, metric_buckets, run_agents, sqlite_value, usage

GRAINS = ("hour", "day")
# Amount columns of each table, in the order the accumulators keep them.
BUCKET_AMOUNTS = ("cost_nano", "compute_nano", "input_tokens", "output_tokens", "calls", "errors", "unpriced",
                  "duration_ms")
ISSUE_AMOUNTS = ("cost_nano", "compute_nano", "retry_nano", "input_tokens", "output_tokens", "calls", "unpriced",
                 "session_ms")
RUN_AMOUNTS = ("cost_nano", "retry_nano", "input_tokens", "output_tokens", "calls", "errors")
FAILED = ("error", "cancelled")
_REBUILD_CHUNK = 5000

if TYPE_CHECKING:  # proxy.store.db imports this module to roll up each batch it inserts
    from proxy.store.db import Store


def truncate(ts: datetime, grain: str) -> datetime:
    """Start of the UTC hour or day holding `ts`."""
    hour = ts.replace(minute=0, second=0, microsecond=0)
    return hour if grain == "hour" else hour.replace(hour=0)


@dataclass(slots=True)
class _Span:
    """Amounts of one rollup row plus the times and project it has seen."""

    amounts: list[int]
    first_at: datetime
    last_at: datetime
    project: str


class Rollup:
    """Accumulates contributions in memory, then upserts them."""

    def __init__(self) -> None:
        self.buckets: dict[tuple[Any, ...], list[int]] = {}
        self.issues: dict[tuple[Any, ...], _Span] = {}
        self.runs: dict[tuple[Any, ...], _Span] = {}

    def __bool__(self) -> bool:
        return bool(self.buckets or self.issues or self.runs)

    def add_call(self, row: Mapping[str, Any]) -> None:
        """A `usage` row. Refused calls never reached a provider and add nothing."""
        if row["status"] == "refused":
            return
        cost, failed = row["cost_nano"], int(row["status"] in FAILED)
        unpriced = int(row["catalog_version"] == "unpriced")
        retry = cost if row["retry_of"] else 0
        tokens_in, tokens_out = row["input_tokens"], row["output_tokens"]
        duration = row.get("duration_ms")
        if duration is None:
            duration = max(0, int((row["ended_at"] - row["started_at"]).total_seconds() * 1000))
        self._bucket(row, row["started_at"], (cost, 0, tokens_in, tokens_out, 1, failed, unpriced, duration))
        self._issue(row, row["started_at"], (cost, 0, retry, tokens_in, tokens_out, 1, unpriced, 0))
        self._run(row, row["started_at"], (cost, retry, tokens_in, tokens_out, 1, failed))

    def add_event(self, row: Mapping[str, Any]) -> None:
        """A `factory_events` row: sessions and executions carry spend; other events add nothing."""
        kind = row["type"]
        if kind not in ("session.completed", "execution"):
            return
        cost, compute = row["cost_nano"], row["compute_nano"]
        unmetered = kind == "session.completed" and row["metered"] is False
        tokens_in = row["input_tokens"] if unmetered else 0
        tokens_out = row["output_tokens"] if unmetered else 0
        calls = int(unmetered)
        duration = (row["duration_ms"] or 0) if unmetered else 0
        session_ms = (row["duration_ms"] or 0) if kind == "session.completed" else 0
        ts = row["ts"]
        self._bucket(row, ts, (cost, compute, tokens_in, tokens_out, calls, 0, 0, duration))
        self._issue(row, ts, (cost, compute, 0, tokens_in, tokens_out, calls, 0, session_ms))
        self._run(row, ts, (cost, 0, tokens_in, tokens_out, calls, 0))

    def _bucket(self, row: Mapping[str, Any], ts: datetime, amounts: tuple[int, ...]) -> None:
        dims = tuple(row.get(d) or "" for d in ("org", "project", "station", "agent", "provider", "model"))
        for grain in GRAINS:
            _add(self.buckets.setdefault((grain, truncate(ts, grain), *dims), [0] * len(amounts)), amounts)

    def _issue(self, row: Mapping[str, Any], ts: datetime, amounts: tuple[int, ...]) -> None:
        if row.get("issue"):
            _add_span(self.issues, (row["org"], row["issue"], truncate(ts, "day")), row, ts, amounts)

    def _run(self, row: Mapping[str, Any], ts: datetime, amounts: tuple[int, ...]) -> None:
        if row.get("run"):
            _add_span(self.runs, (row["org"], row["run"], row.get("agent") or ""), row, ts, amounts)

    async def upsert(self, conn: AsyncConnection) -> None:
        """Add everything accumulated to the tables, inside the caller's transaction."""
        dialect = conn.dialect.name
        for table, keys, amounts, acc in _TABLES:
            entries = getattr(self, acc)
            if not entries:
                continue
            if acc == "buckets":
                rows = [(*k, *v) for k, v in sorted(entries.items())]
            else:
                rows = [(*k, *s.amounts, s.first_at, s.last_at, s.project) for k, s in sorted(entries.items())]
            if dialect == "sqlite":
                rows = [tuple(sqlite_value(v) for v in row) for row in rows]
            await conn.exec_driver_sql(_upsert_sql(table, keys, amounts, dialect, spans=acc != "buckets"), rows)


def _add(into: list[int], amounts: tuple[int, ...]) -> None:
    for i, amount in enumerate(amounts):
        into[i] += amount


def _add_span(spans: dict[tuple[Any, ...], _Span], key: tuple[Any, ...], row: Mapping[str, Any], ts: datetime,
              amounts: tuple[int, ...]) -> None:
    project = row.get("project") or ""
    span = spans.get(key)
    if span is None:
        spans[key] = _Span(list(amounts), ts, ts, project)
        return
    _add(span.amounts, amounts)
    span.first_at, span.last_at = min(span.first_at, ts), max(span.last_at, ts)
    span.project = max(span.project, project)  # order-free, so rebuilt rows equal incremental ones


# (table, key columns, amount columns, accumulator attribute)
_TABLES = (
    ("metric_buckets", ("grain", "bucket_start", "org", "project", "station", "agent", "provider", "model"),
     BUCKET_AMOUNTS, "buckets"),
    ("issue_days", ("org", "issue", "day"), ISSUE_AMOUNTS, "issues"),
    ("run_agents", ("org", "run", "agent"), RUN_AMOUNTS, "runs"),
)


@cache
def _upsert_sql(table: str, keys: tuple[str, ...], amounts: tuple[str, ...], dialect: str, *, spans: bool) -> str:
    """INSERT ... ON CONFLICT DO UPDATE adding the amounts (same text on both dialects but the placeholders).

    Raw driver SQL on purpose: this runs in every writer batch, and SQLAlchemy's per-row bind processing
    would cost more than the upsert itself."""
    columns = [*keys, *amounts, *(("first_at", "last_at", "project") if spans else ())]
    marks = ", ".join("?" if dialect == "sqlite" else f"${i + 1}" for i in range(len(columns)))
    least, greatest = ("LEAST", "GREATEST") if dialect == "postgresql" else ("MIN", "MAX")
    sets = [f"{a} = {table}.{a} + excluded.{a}" for a in amounts]
    if spans:
        sets += [f"first_at = {least}({table}.first_at, excluded.first_at)",
                 f"last_at = {greatest}({table}.last_at, excluded.last_at)",
                 f"project = {greatest}({table}.project, excluded.project)"]  # order-free: rebuilt = incremental
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {', '.join(sets)}")


async def rebuild(store: Store, org: str | None = None) -> dict[str, int]:
    """Recompute buckets, rollups and station visits of `org` (None: every org) from `usage` and
    `factory_events`, in one transaction that locks the rollup tables first: ingest running meanwhile waits,
    then adds on top (and recomputes its issues' visits from every stored event)."""
    started = time.monotonic()
    rollup = Rollup()
    counts = {"calls": 0, "events": 0}
    async with store.engine.begin() as conn:
        if store.dialect == "postgresql":  # station_visits first: ingest writes it before the others
            await conn.execute(text("LOCK TABLE station_visits, metric_buckets, issue_days, run_agents "
                                    "IN EXCLUSIVE MODE"))
        visit_rows = await rebuild_visits(conn, org)
        for table in (metric_buckets, issue_days, run_agents):
            wipe = delete(table)
            await conn.execute(wipe if org is None else wipe.where(table.c.org == org))
        for source, add, name in ((usage, rollup.add_call, "calls"), (factory_events, rollup.add_event, "events")):
            stmt = select(source)
            if source is factory_events:
                stmt = stmt.where(factory_events.c.type.in_(("session.completed", "execution")))
            if org is not None:
                stmt = stmt.where(source.c.org == org)
            result = await conn.stream(stmt.execution_options(yield_per=_REBUILD_CHUNK))
            async for part in result.mappings().partitions(_REBUILD_CHUNK):
                for row in part:
                    add(dict(row))
                counts[name] += len(part)
        await rollup.upsert(conn)
    return {**counts, "buckets": len(rollup.buckets), "issueDays": len(rollup.issues), "runAgents": len(rollup.runs),
            "stationVisits": visit_rows, "durationMs": int((time.monotonic() - started) * 1000)}
