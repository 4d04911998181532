"""station_visits: the station events paired into stays (one row per station.completed, plus the open entry of
each (org, issue, station)), maintained at ingest, so the station and phase metrics read a window's visits
and the open ones instead of sorting every station event ever posted. Filled here from the events already
stored (the same pairing as ingest: proxy.metrics.visits.issue_visits).

Revision ID: 0005_station_visits
Revises: 0004_events_cover
Create Date: 2026-11-26
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from proxy.metrics.visits import COLUMNS, SOURCES, issue_visits
from proxy.store.models import UTCDateTime

revision = "0005_station_visits"
down_revision = "0004_events_cover"
branch_labels = None
depends_on = None

_CHUNK = 2000


def upgrade() -> None:
    visits = op.create_table(
        "station_visits",
        sa.Column("org", sa.String(), nullable=False),
        sa.Column("issue", sa.String(), nullable=False),
        sa.Column("station", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("entered_at", UTCDateTime(), nullable=True),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.Column("outcome", sa.String(), nullable=True),
        sa.Column("stay_us", sa.BigInteger(), nullable=True),
        sa.Column("reworks_before", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("prev_completed_at", UTCDateTime(), nullable=True),
        sa.Column("prev_passed_at", UTCDateTime(), nullable=True),
        sa.Column("issue_done", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("org", "issue", "station", "seq", name="pk_station_visits"),
    )
    op.create_index("ix_station_visits_org_completed_at", "station_visits", ["org", "completed_at"])
    op.create_index("ix_station_visits_open", "station_visits", ["org", "entered_at"],
                    sqlite_where=sa.text("completed_at IS NULL"), postgresql_where=sa.text("completed_at IS NULL"))
    _backfill(visits)


def _backfill(visits: sa.Table) -> None:
    events = sa.table("factory_events", sa.column("org", sa.String()), sa.column("id", sa.String()),
                      sa.column("type", sa.String()), sa.column("ts", UTCDateTime()),
                      sa.column("issue", sa.String()), sa.column("station", sa.String()),
                      sa.column("outcome", sa.String()))
    c = events.c
    stmt = (sa.select(c.org, c.issue, c.type, c.ts, c.station, c.outcome, c.id)
            .where(c.type.in_(SOURCES), c.issue.is_not(None)).order_by(c.org, c.issue))
    rows: list[tuple[Any, ...]] = []
    current: tuple[str, str] | None = None
    pending: list[Any] = []
    for row in op.get_bind().execute(stmt.execution_options(yield_per=_CHUNK)):
        if (row.org, row.issue) != current:
            if current is not None:
                rows += issue_visits(*current, pending)
            current, pending = (row.org, row.issue), []
        pending.append(row)
        if len(rows) >= _CHUNK:
            op.bulk_insert(visits, [dict(zip(COLUMNS, r, strict=True)) for r in rows])
            rows = []
    if current is not None:
        rows += issue_visits(*current, pending)
    if rows:
        op.bulk_insert(visits, [dict(zip(COLUMNS, r, strict=True)) for r in rows])


def downgrade() -> None:
    op.drop_index("ix_station_visits_open", table_name="station_visits")
    op.drop_index("ix_station_visits_org_completed_at", table_name="station_visits")
    op.drop_table("station_visits")
