"""factory metrics: lifecycle events, hourly / daily metric buckets, (org, issue, day) and (org, run, agent)
rollups. Buckets and rollups are filled at ingest; existing calls are rolled up by POST /api/factory/aggregate.

Revision ID: 0003_factory
Revises: 0002_budgets
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from proxy.store.models import UTCDateTime

revision = "0003_factory"
down_revision = "0002_budgets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "factory_events",
        sa.Column("org", sa.String(), nullable=False),
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("ts", UTCDateTime(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("project", sa.String(), nullable=True),
        sa.Column("issue", sa.String(), nullable=True),
        sa.Column("station", sa.String(), nullable=True),
        sa.Column("run", sa.String(), nullable=True),
        sa.Column("agent", sa.String(), nullable=True),
        sa.Column("actor", sa.String(), nullable=True),
        sa.Column("provider", sa.String(), nullable=True),
        sa.Column("model", sa.String(), nullable=True),
        sa.Column("ref", sa.String(), nullable=True),
        sa.Column("kind", sa.String(), nullable=True),
        sa.Column("outcome", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=True),
        sa.Column("overridden", sa.Boolean(), nullable=True),
        sa.Column("is_rollback", sa.Boolean(), nullable=True),
        sa.Column("metered", sa.Boolean(), nullable=True),
        sa.Column("cost_nano", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("compute_nano", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("duration_ms", sa.BigInteger(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("org", "id", name="pk_factory_events"),
    )
    op.create_index("ix_factory_events_org_type_ts", "factory_events", ["org", "type", "ts"])
    op.create_index("ix_factory_events_org_issue_ts", "factory_events", ["org", "issue", "ts"])
    op.create_table(
        "metric_buckets",
        sa.Column("grain", sa.String(), nullable=False),
        sa.Column("bucket_start", UTCDateTime(), nullable=False),
        sa.Column("org", sa.String(), nullable=False),
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("station", sa.String(), nullable=False),
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("cost_nano", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("compute_nano", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("calls", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("errors", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("unpriced", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("grain", "bucket_start", "org", "project", "station", "agent", "provider", "model", name="pk_metric_buckets"),
    )
    op.create_index("ix_metric_buckets_org_grain_start", "metric_buckets", ["org", "grain", "bucket_start"])
    op.create_table(
        "issue_days",
        sa.Column("org", sa.String(), nullable=False),
        sa.Column("issue", sa.String(), nullable=False),
        sa.Column("day", UTCDateTime(), nullable=False),
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("cost_nano", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("compute_nano", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("retry_nano", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("calls", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("unpriced", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("session_ms", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("first_at", UTCDateTime(), nullable=False),
        sa.Column("last_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("org", "issue", "day", name="pk_issue_days"),
    )
    op.create_index("ix_issue_days_org_day", "issue_days", ["org", "day"])
    op.create_table(
        "run_agents",
        sa.Column("org", sa.String(), nullable=False),
        sa.Column("run", sa.String(), nullable=False),
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("cost_nano", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("retry_nano", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("calls", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("errors", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("first_at", UTCDateTime(), nullable=False),
        sa.Column("last_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("org", "run", "agent", name="pk_run_agents"),
    )
    op.create_index("ix_run_agents_org_last_at", "run_agents", ["org", "last_at"])


def downgrade() -> None:
    for table in ("run_agents", "issue_days", "metric_buckets", "factory_events"):
        op.drop_table(table)
