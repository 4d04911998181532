"""SQL tables of the store (SQLAlchemy 2 declarative); the schema itself is created by migrations.

Only counts and attribution are stored: prompts and completions never reach this module.
"""

from __future__ import annotations

from datetime import UTC, datetime

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
