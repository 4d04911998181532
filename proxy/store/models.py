"""SQL tables of the store (SQLAlchemy 2 declarative); the schema itself is created by migrations.

Only counts and attribution are stored: prompts and completions never reach this module.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Index, Integer, MetaData, String, Table
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
