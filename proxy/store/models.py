"""SQL tables of the store (SQLAlchemy 2 declarative); the schema itself is created by migrations.

Only counts and attribution are stored: prompts and completions never reach this module.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Deterministic constraint and index names, so migrations can refer to them on every dialect.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime stored as UTC on every dialect.

    PostgreSQL keeps `timestamptz`. SQLite has no timezone type: values are stored as naive UTC text
    in SQLAlchemy's fixed-width format, so text order is time order (keyset pagination relies on it),
    and they are read back as aware UTC datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; pass a timezone-aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's SQLite DATETIME text: fixed width, so text order = time order


def sqlite_value(value: Any) -> Any:
    """A value as the raw SQLite driver must receive it (what UTCDateTime does, for statements that bypass
    SQLAlchemy's bind processing on the hot write path)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; pass a timezone-aware datetime")
        return value.astimezone(UTC).strftime(SQLITE_TIME)
    return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UsageRow(Base):
    """One row per proxied call; `request_id` is the primary key, so writing a call twice stores it once.

    Strings have no length limit on purpose: a value SQL rejects would block the writer's queue.
    Token counts are BigInteger because providers' numbers are not ours to bound.
    """

    __tablename__ = "usage"

    request_id: Mapped[str] = mapped_column(String, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    duration_ms: Mapped[int] = mapped_column(BigInteger, nullable=False)
    status: Mapped[str] = mapped_column(String, nullable=False)
    http_status: Mapped[int] = mapped_column(Integer, nullable=False)
    org: Mapped[str] = mapped_column(String, nullable=False)
    project: Mapped[str | None] = mapped_column(String)
    agent: Mapped[str | None] = mapped_column(String)
    station: Mapped[str | None] = mapped_column(String)
    run: Mapped[str | None] = mapped_column(String)
    issue: Mapped[str | None] = mapped_column(String)
    actor: Mapped[str | None] = mapped_column(String)
    retry_of: Mapped[str | None] = mapped_column(String)
    key_name: Mapped[str | None] = mapped_column(String)
    endpoint: Mapped[str] = mapped_column(String, nullable=False)
    provider: Mapped[str] = mapped_column(String, nullable=False)
    model: Mapped[str] = mapped_column(String, nullable=False)
    upstream_model: Mapped[str] = mapped_column(String, nullable=False, default="")
    input_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    cached_input_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    cost_nano: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    usage_source: Mapped[str] = mapped_column(String, nullable=False, default="provider")
    stream: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    catalog_version: Mapped[str] = mapped_column(String, nullable=False, default="")
    error: Mapped[str | None] = mapped_column(String)
    enforcement: Mapped[str | None] = mapped_column(String)  # "bypassed" when the ledger was unavailable

    # Every read is scoped by org. request_id trails the time indexes so keyset pagination
    # ((started_at, request_id) < cursor) seeks instead of scanning.
    __table_args__ = (
        Index("ix_usage_org_started_at", "org", "started_at", "request_id"),
        Index("ix_usage_org_run", "org", "run"),
        Index("ix_usage_org_issue", "org", "issue"),
        Index("ix_usage_org_agent", "org", "agent"),
        Index("ix_usage_org_station", "org", "station"),
    )


usage: Table = UsageRow.__table__  # type: ignore[assignment]  # Core handle used by db.py and queries.py


class RuntimeLimitRow(Base):
    """A budget limit changed at run time (`PUT /api/budgets/{name}/limit`); dropped when the file's limit
    for that budget changes (`config_limit_nano` is the file's limit when this was set)."""

    __tablename__ = "runtime_limits"

    budget: Mapped[str] = mapped_column(String, primary_key=True)
    limit_nano: Mapped[int] = mapped_column(BigInteger, nullable=False)
    config_limit_nano: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_by: Mapped[str | None] = mapped_column(String)


class ApprovalRow(Base):
    """A request to spend past an `approve` budget: one pending per counter and window."""

    __tablename__ = "approvals"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    org: Mapped[str] = mapped_column(String, nullable=False)
    budget: Mapped[str] = mapped_column(String, nullable=False)
    counter_key: Mapped[str] = mapped_column(String, nullable=False)
    window_id: Mapped[str] = mapped_column(String, nullable=False)
    scope: Mapped[str] = mapped_column(String, nullable=False)
    status: Mapped[str] = mapped_column(String, nullable=False)
    worst_nano: Mapped[int] = mapped_column(BigInteger, nullable=False)
    grant_nano: Mapped[int | None] = mapped_column(BigInteger)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    requested_by: Mapped[str | None] = mapped_column(String)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decided_by: Mapped[str | None] = mapped_column(String)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_approvals_org_status", "org", "status", "requested_at"),
        Index("uq_approvals_pending", "counter_key", "window_id", unique=True,
              sqlite_where=text("status = 'pending'"), postgresql_where=text("status = 'pending'")),
    )


class AlertRow(Base):
    """A threshold crossed (or a budget exceeded): unique per counter, window and threshold, so it fires
    once however many replicas see the crossing."""

    __tablename__ = "alerts"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    org: Mapped[str] = mapped_column(String, nullable=False)
    budget: Mapped[str] = mapped_column(String, nullable=False)
    counter_key: Mapped[str] = mapped_column(String, nullable=False)
    window_id: Mapped[str] = mapped_column(String, nullable=False)
    at_pct: Mapped[float] = mapped_column(Float, nullable=False)
    action: Mapped[str] = mapped_column(String, nullable=False)
    spent_nano: Mapped[int] = mapped_column(BigInteger, nullable=False)
    limit_nano: Mapped[int] = mapped_column(BigInteger, nullable=False)
    fired_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (
        UniqueConstraint("counter_key", "window_id", "at_pct", name="uq_alerts_once"),
        Index("ix_alerts_org_fired_at", "org", "fired_at"),
    )


class WebhookOutboxRow(Base):
    """An event waiting for (or done with) delivery to one webhook; `id` is the `webhook-id` header."""

    __tablename__ = "webhook_outbox"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    webhook: Mapped[str] = mapped_column(String, nullable=False)
    event_type: Mapped[str] = mapped_column(String, nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    status: Mapped[str] = mapped_column(String, nullable=False, default="pending")
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_webhook_outbox_due", "status", "next_attempt_at"),)


class WebhookDeliveryRow(Base):
    """The delivery log: one row per attempt."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    outbox_id: Mapped[str] = mapped_column(String, nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String)
    duration_ms: Mapped[int] = mapped_column(Integer, nullable=False)

    __table_args__ = (Index("ix_webhook_deliveries_outbox", "outbox_id"),)


runtime_limits: Table = RuntimeLimitRow.__table__  # type: ignore[assignment]
approvals: Table = ApprovalRow.__table__  # type: ignore[assignment]
alerts: Table = AlertRow.__table__  # type: ignore[assignment]
webhook_outbox: Table = WebhookOutboxRow.__table__  # type: ignore[assignment]
webhook_deliveries: Table = WebhookDeliveryRow.__table__  # type: ignore[assignment]


class FactoryEventRow(Base):
    """One factory lifecycle event (`POST /api/factory/events`), idempotent on (org, id).

    The columns are what the metrics queries filter and group on; `payload` keeps the event as posted
    (camelCase JSON) for the fields only listed back (version, branch, title, ...). Money is nano-USD.
    `cost_nano` is what the event adds to spend: an unmetered session's costUsd plus its compute leg, or an
    execution's compute cost; a metered session adds only its compute leg (its tokens are in `usage`).
    """

    __tablename__ = "factory_events"

    org: Mapped[str] = mapped_column(String, primary_key=True)
    id: Mapped[str] = mapped_column(String, primary_key=True)
    type: Mapped[str] = mapped_column(String, nullable=False)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    project: Mapped[str | None] = mapped_column(String)
    issue: Mapped[str | None] = mapped_column(String)
    station: Mapped[str | None] = mapped_column(String)
    run: Mapped[str | None] = mapped_column(String)
    agent: Mapped[str | None] = mapped_column(String)
    actor: Mapped[str | None] = mapped_column(String)  # agent | human
    provider: Mapped[str | None] = mapped_column(String)
    model: Mapped[str | None] = mapped_column(String)
    ref: Mapped[str | None] = mapped_column(String)  # pairing key: handoffId, incidentId, deployment / commit
    kind: Mapped[str | None] = mapped_column(String)  # execution kind, escalation strategy, pipeline name
    outcome: Mapped[str | None] = mapped_column(String)  # passed | rework; approved | rejected
    status: Mapped[str | None] = mapped_column(String)  # pipeline / deployment / incident status
    overridden: Mapped[bool | None] = mapped_column(Boolean)
    is_rollback: Mapped[bool | None] = mapped_column(Boolean)
    metered: Mapped[bool | None] = mapped_column(Boolean)
    cost_nano: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    compute_nano: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)  # part of cost_nano
    input_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    duration_ms: Mapped[int | None] = mapped_column(BigInteger)
    payload: Mapped[str] = mapped_column(Text, nullable=False)

    __table_args__ = (
        # On PostgreSQL it also INCLUDEs issue, station, outcome (migration 0004): index-only station scans.
        Index("ix_factory_events_org_type_ts", "org", "type", "ts",
              postgresql_include=["issue", "station", "outcome"]),
        Index("ix_factory_events_org_issue_ts", "org", "issue", "ts"),
    )


class MetricBucketRow(Base):
    """Additive rollup of spend per hour or day and per org x project x station x agent x provider x model.

    Upserted in the transaction that stores the raw row (a call or an event), so buckets and raw rows never
    disagree; `POST /api/factory/aggregate` rebuilds them from the raw rows. A missing dimension is ''
    (NULLs would defeat the primary key). `calls` counts proxied calls and unmetered sessions; `errors`
    those that failed; `compute_nano` is the part of `cost_nano` from the compute leg."""

    __tablename__ = "metric_buckets"

    grain: Mapped[str] = mapped_column(String, primary_key=True)  # hour | day
    bucket_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    org: Mapped[str] = mapped_column(String, primary_key=True)
    project: Mapped[str] = mapped_column(String, primary_key=True)
    station: Mapped[str] = mapped_column(String, primary_key=True)
    agent: Mapped[str] = mapped_column(String, primary_key=True)
    provider: Mapped[str] = mapped_column(String, primary_key=True)
    model: Mapped[str] = mapped_column(String, primary_key=True)
    cost_nano: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    compute_nano: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    calls: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    unpriced: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    duration_ms: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)

    __table_args__ = (Index("ix_metric_buckets_org_grain_start", "org", "grain", "bucket_start"),)


class IssueDayRow(Base):
    """Rollup per (org, issue, UTC day): what `GET /api/factory/cost-per-issue` lists without scanning calls."""

    __tablename__ = "issue_days"

    org: Mapped[str] = mapped_column(String, primary_key=True)
    issue: Mapped[str] = mapped_column(String, primary_key=True)
    day: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    project: Mapped[str] = mapped_column(String, nullable=False, default="")  # last seen
    cost_nano: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    compute_nano: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    retry_nano: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    calls: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    unpriced: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    session_ms: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    first_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (Index("ix_issue_days_org_day", "org", "day"),)


class RunAgentRow(Base):
    """Rollup per (org, run, agent): cost per pipeline run with its per-agent breakdown and top runs."""

    __tablename__ = "run_agents"

    org: Mapped[str] = mapped_column(String, primary_key=True)
    run: Mapped[str] = mapped_column(String, primary_key=True)
    agent: Mapped[str] = mapped_column(String, primary_key=True)  # '' when untagged
    project: Mapped[str] = mapped_column(String, nullable=False, default="")  # last seen
    cost_nano: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    retry_nano: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    calls: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    first_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (Index("ix_run_agents_org_last_at", "org", "last_at"),)


class StationVisitRow(Base):
    """Rollup of the station events: one row per `station.completed` of an (org, issue, station), paired
    with the latest `station.entered` at or before it, plus one open row (completed_at NULL) when the latest
    entry has no completion at or after it. Recomputed per issue at ingest, in the events' transaction
    (proxy/metrics/visits.py), so the station and phase metrics read a window's visits and the open ones
    instead of every station event ever posted."""

    __tablename__ = "station_visits"

    org: Mapped[str] = mapped_column(String, primary_key=True)
    issue: Mapped[str] = mapped_column(String, primary_key=True)
    station: Mapped[str] = mapped_column(String, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)  # time order within (issue, station)
    entered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # NULL: a completion with no entry
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # NULL: open
    outcome: Mapped[str | None] = mapped_column(String)  # passed | rework; NULL when open
    stay_us: Mapped[int | None] = mapped_column(BigInteger)  # completed_at - entered_at, when both are known
    reworks_before: Mapped[int] = mapped_column(Integer, nullable=False, default=0)  # rework outcomes before it
    prev_completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the previous completion here
    prev_passed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the previous outcome=passed here
    issue_done: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)  # open, issue completed since

    __table_args__ = (
        Index("ix_station_visits_org_completed_at", "org", "completed_at"),
        Index("ix_station_visits_open", "org", "entered_at", sqlite_where=text("completed_at IS NULL"),
              postgresql_where=text("completed_at IS NULL")),
    )


factory_events: Table = FactoryEventRow.__table__  # type: ignore[assignment]
metric_buckets: Table = MetricBucketRow.__table__  # type: ignore[assignment]
issue_days: Table = IssueDayRow.__table__  # type: ignore[assignment]
run_agents: Table = RunAgentRow.__table__  # type: ignore[assignment]
station_visits: Table = StationVisitRow.__table__  # type: ignore[assignment]
