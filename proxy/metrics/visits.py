"""Station visits: the rollup the station and phase metrics read instead of the station event history.

One row per `station.completed` of an (org, issue, station), paired as docs/metrics.md pairs them: with the
latest `station.entered` of the same issue and station at or before it (NULL when there is none; an entry and
a completion at the same instant pair), its outcome, the stay in microseconds, and `reworks_before`
(outcome=rework completions there strictly before it). Plus one open row (completed_at NULL) when the latest
entry has no completion at or after it, with `issue_done` when an `issue.completed` of the issue is at or
after that entry (then it is not work in progress). `seq` numbers the rows of one (issue, station) in time
order, the open row last; `prev_completed_at` / `prev_passed_at` are the times of the previous completion /
outcome=passed of the same (issue, station), so a window counts each issue once per station from the first of
its rows in the window (the one whose previous completion, or pass, is before the window) without grouping.

Contract: the rows of an (org, issue, station) are a function (`station_visits_of`) of its stored
station.entered / station.completed events and the issue's latest issue.completed alone, whatever order they
arrived in. `refresh`, inside the ingest transaction, recomputes the (issue, station) keys a batch of new
events touched and sets `issue_done` on the open rows a new issue.completed follows (a flag that only ever
turns true); on PostgreSQL under a transaction advisory lock per (org, issue), taken in one order, so
concurrent batches of one issue recompute one after the other and the later one sees the earlier one's
events. `rebuild_visits` recomputes an org (or every org) with the very same function, so rebuilt rows equal
incremental ones."""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from proxy.store.models import factory_events, sqlite_value, station_visits

STATION_TYPES = ("station.entered", "station.completed")
SOURCES = (*STATION_TYPES, "issue.completed")
_CHUNK = 400  # keys per recompute: IN lists within SQLite's old bound-parameter limit (999)
_INSERT_CHUNK = 2000
# The first key of the two-int advisory locks ("svis"): that key space never meets the single-bigint locks.
_LOCK_SPACE = 0x73766973
COLUMNS = ("org", "issue", "station", "seq", "entered_at", "completed_at", "outcome", "stay_us", "reworks_before",
           "prev_completed_at", "prev_passed_at", "issue_done")


@dataclass(frozen=True, slots=True)
class StationEvent:
    """What pairing needs of one stored station event."""

    type: str
    ts: datetime
    outcome: str | None
    id: str


def station_visits_of(org: str, issue: str, station: str, events: Iterable[StationEvent],
                      done: datetime | None) -> list[tuple[Any, ...]]:
    """The station_visits rows (values in COLUMNS order) of one (org, issue, station), from its station events
    and the latest issue.completed of the issue (`done`, None when it has none)."""
    entries = sorted(e.ts for e in events if e.type == "station.entered")
    completions = sorted((e for e in events if e.type == "station.completed"), key=lambda e: (e.ts, e.id))
    reworks = [e.ts for e in completions if e.outcome == "rework"]
    rows: list[tuple[Any, ...]] = []
    last_done: datetime | None = None  # the previous completion of this (issue, station)
    last_pass: datetime | None = None  # its previous outcome=passed
    for seq, c in enumerate(completions):
        at = bisect_right(entries, c.ts)  # entries at or before the completion
        entered = entries[at - 1] if at else None
        stay = None if entered is None else _microseconds(c.ts - entered)
        rows.append((org, issue, station, seq, entered, c.ts, c.outcome, stay, bisect_left(reworks, c.ts),
                     last_done, last_pass, False))
        last_done = c.ts
        last_pass = c.ts if c.outcome == "passed" else last_pass
    if entries and (last_done is None or last_done < entries[-1]):
        rows.append((org, issue, station, len(completions), entries[-1], None, None, None, len(reworks),
                     last_done, last_pass, done is not None and done >= entries[-1]))
    return rows


def _microseconds(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _source_columns() -> list[Any]:
    e = factory_events.c
    return [e.org, e.issue, e.station, e.type, e.ts, e.outcome, e.id]


async def refresh(conn: AsyncConnection, org: str, stations: Collection[tuple[str, str]],
                  completed: Mapping[str, datetime]) -> int:
    """In the caller's transaction, after it stored new events of `org`: recompute the visits of each
    (issue, station) in `stations` (new station.entered / station.completed there) from its stored events,
    and mark the open visits that an issue.completed in `completed` (issue -> latest new ts) closes; returns
    the rows written."""
    issues = sorted({issue for issue, _ in stations} | set(completed))
    if not issues:
        return 0
    if conn.dialect.name == "postgresql":
        await _lock(conn, org, issues)
    keys = sorted(set(stations))
    recomputed: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for i in range(0, len(keys), _CHUNK):  # a key two chunks recompute gets the same rows twice: kept once
        recomputed.update(await _recompute(conn, org, keys[i: i + _CHUNK]))
    rows = [row for key in sorted(recomputed) for row in recomputed[key]]
    await _insert(conn, rows)
    if completed:  # issue_done only ever turns true: the latest completion at or after the entry
        v = station_visits.c
        await conn.execute(update(station_visits)
                           .where(v.org == org, v.issue == bindparam("done_issue"), v.completed_at.is_(None),
                                  v.entered_at <= bindparam("done_at", type_=v.entered_at.type), ~v.issue_done)
                           .values(issue_done=True),
                           [{"done_issue": issue, "done_at": at} for issue, at in sorted(completed.items())])
    return len(rows)


async def _recompute(conn: AsyncConnection, org: str,
                     keys: list[tuple[str, str]]) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    """Delete the visits of these (issue, station) keys and return their rows recomputed from the events,
    per key. Every key of the issues x stations cross product that has events is recomputed alike: one IN
    list per column keeps the delete an index range, where a list of pairs makes PostgreSQL recheck every
    row against every pair."""
    e, v = factory_events.c, station_visits.c
    issues = sorted({issue for issue, _ in keys})
    stations = sorted({station for _, station in keys})
    found: dict[tuple[str, str], list[StationEvent]] = defaultdict(list)
    done: dict[str, datetime] = {}  # the latest issue.completed of each issue
    stmt = select(*_source_columns()).where(e.org == org, e.issue.in_(issues), or_(
        and_(e.type.in_(STATION_TYPES), e.station.in_(stations)), e.type == "issue.completed"))
    for row in await conn.execute(stmt):
        if row.type == "issue.completed":
            done[row.issue] = max(row.ts, done.get(row.issue, row.ts))
        else:
            found[(row.issue, row.station)].append(StationEvent(row.type, row.ts, row.outcome, row.id))
    await conn.execute(delete(station_visits).where(v.org == org, v.issue.in_(issues), v.station.in_(stations)))
    return {(issue, station): station_visits_of(org, issue, station, events, done.get(issue))
            for (issue, station), events in found.items()}


async def rebuild_visits(conn: AsyncConnection, org: str | None) -> int:
    """Delete and recompute the visits of `org` (None: every org) from the event log; returns the rows
    written. The caller holds the table lock (see rollups.rebuild)."""
    wipe = delete(station_visits)
    await conn.execute(wipe if org is None else wipe.where(station_visits.c.org == org))
    e = factory_events.c
    stmt = select(*_source_columns()).where(e.type.in_(SOURCES), e.issue.is_not(None)).order_by(e.org, e.issue)
    if org is not None:
        stmt = stmt.where(e.org == org)
    written, rows = 0, list[tuple[Any, ...]]()
    current: tuple[str, str] | None = None
    events: list[Any] = []
    result = await conn.stream(stmt.execution_options(yield_per=_INSERT_CHUNK))
    async for part in result.partitions(_INSERT_CHUNK):  # one await per part, not per row
        for row in part:
            if (row.org, row.issue) != current:
                if current is not None:
                    rows += issue_visits(*current, events)
                current, events = (row.org, row.issue), []
            events.append(row)
        if len(rows) >= _INSERT_CHUNK:
            written += await _insert(conn, rows)
            rows = []
    if current is not None:
        rows += issue_visits(*current, events)
    return written + await _insert(conn, rows)


def issue_visits(org: str, issue: str, events: Iterable[Any]) -> list[tuple[Any, ...]]:
    """Every visit of one issue from all its events of SOURCES (rows with type, ts, station, outcome, id)."""
    by_station: dict[str, list[StationEvent]] = defaultdict(list)
    done: datetime | None = None
    for event in events:
        if event.type == "issue.completed":
            done = event.ts if done is None else max(done, event.ts)
        elif event.station is not None:
            by_station[event.station].append(StationEvent(event.type, event.ts, event.outcome, event.id))
    rows: list[tuple[Any, ...]] = []
    for station in sorted(by_station):
        rows += station_visits_of(org, issue, station, by_station[station], done)
    return rows


async def _insert(conn: AsyncConnection, rows: list[tuple[Any, ...]]) -> int:
    """Driver-level executemany: SQLAlchemy's per-row bind processing would cost more than the insert."""
    if not rows:
        return 0
    sqlite = conn.dialect.name == "sqlite"
    marks = ", ".join("?" if sqlite else f"${i + 1}" for i in range(len(COLUMNS)))
    sql = f"INSERT INTO station_visits ({', '.join(COLUMNS)}) VALUES ({marks})"
    for i in range(0, len(rows), _INSERT_CHUNK):
        chunk = rows[i: i + _INSERT_CHUNK]
        await conn.exec_driver_sql(sql, [tuple(sqlite_value(x) for x in r) for r in chunk] if sqlite else chunk)
    return len(rows)


def lock_key(org: str, issue: str) -> int:
    """A stable signed 32-bit key of (org, issue) (a collision only serializes two issues' recomputes)."""
    digest = hashlib.blake2b(f"{org}\x1f{issue}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


async def _lock(conn: AsyncConnection, org: str, issues: list[str]) -> None:
    """Transaction advisory locks of the issues, in ascending key order (two batches never wait on each
    other in a cycle). A function scan yields the array's elements in order, so the locks are taken in it."""
    keys = sorted({lock_key(org, issue) for issue in issues})
    await conn.execute(text("SELECT count(pg_advisory_xact_lock(:space, k)) FROM unnest(CAST(:keys AS integer[])) AS k"),
                       {"space": _LOCK_SPACE, "keys": keys})
