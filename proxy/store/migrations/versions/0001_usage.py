"""usage: one row per proxied call.

Revision ID: 0001_usage
Revises:
Create Date: 2026-05-09

Spelled out column by column (not `metadata.create_all`) so this revision means the same thing after
models.py moves on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from proxy.store.models import UTCDateTime

revision = "0001_usage"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage",
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=False),
        sa.Column("org", sa.String(), nullable=False),
        sa.Column("project", sa.String(), nullable=True),
        sa.Column("agent", sa.String(), nullable=True),
        sa.Column("station", sa.String(), nullable=True),
        sa.Column("run", sa.String(), nullable=True),
        sa.Column("issue", sa.String(), nullable=True),
        sa.Column("actor", sa.String(), nullable=True),
        sa.Column("retry_of", sa.String(), nullable=True),
        sa.Column("key_name", sa.String(), nullable=True),
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("upstream_model", sa.String(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_nano", sa.BigInteger(), nullable=False),
        sa.Column("usage_source", sa.String(), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("catalog_version", sa.String(), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("request_id", name="pk_usage"),
    )
    op.create_index("ix_usage_org_started_at", "usage", ["org", "started_at", "request_id"])
    op.create_index("ix_usage_org_run", "usage", ["org", "run"])
    op.create_index("ix_usage_org_issue", "usage", ["org", "issue"])
    op.create_index("ix_usage_org_agent", "usage", ["org", "agent"])
    op.create_index("ix_usage_org_station", "usage", ["org", "station"])


def downgrade() -> None:
    op.drop_table("usage")
