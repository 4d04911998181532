"""budgets: runtime limits, approvals, alerts (fired once per counter, window and threshold), webhook outbox.

Revision ID: 0002_budgets
Revises: 0001_usage
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from proxy.store.models import UTCDateTime

revision = "0002_budgets"
down_revision = "0001_usage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A call that passed without enforcement (ledger unavailable, on_unavailable: allow) says so.
    op.add_column("usage", sa.Column("enforcement", sa.String(), nullable=True))
    op.create_table(
        "runtime_limits",
        sa.Column("budget", sa.String(), nullable=False),
        sa.Column("limit_nano", sa.BigInteger(), nullable=False),
        sa.Column("config_limit_nano", sa.BigInteger(), nullable=False),  # the file's limit when it was set
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("updated_by", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("budget", name="pk_runtime_limits"),
    )
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("org", sa.String(), nullable=False),
        sa.Column("budget", sa.String(), nullable=False),
        sa.Column("counter_key", sa.String(), nullable=False),
        sa.Column("window_id", sa.String(), nullable=False),
        sa.Column("scope", sa.String(), nullable=False),  # JSON object of the counter's scope
        sa.Column("status", sa.String(), nullable=False),  # pending | approved | denied | expired
        sa.Column("worst_nano", sa.BigInteger(), nullable=False),  # largest worst case among held calls
        sa.Column("grant_nano", sa.BigInteger(), nullable=True),  # added to the counter's limit when approved
        sa.Column("requested_at", UTCDateTime(), nullable=False),
        sa.Column("requested_by", sa.String(), nullable=True),  # key name of the first held call
        sa.Column("decided_at", UTCDateTime(), nullable=True),
        sa.Column("decided_by", sa.String(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),  # the window's end: a grant never outlives it
        sa.PrimaryKeyConstraint("id", name="pk_approvals"),
    )
    op.create_index("ix_approvals_org_status", "approvals", ["org", "status", "requested_at"])
    # One pending approval per counter and window: parallel held calls share it.
    op.create_index("uq_approvals_pending", "approvals", ["counter_key", "window_id"], unique=True,
                    sqlite_where=sa.text("status = 'pending'"), postgresql_where=sa.text("status = 'pending'"))
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("org", sa.String(), nullable=False),
        sa.Column("budget", sa.String(), nullable=False),
        sa.Column("counter_key", sa.String(), nullable=False),
        sa.Column("window_id", sa.String(), nullable=False),
        sa.Column("at_pct", sa.Float(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),  # warn | webhook | exceeded
        sa.Column("spent_nano", sa.BigInteger(), nullable=False),
        sa.Column("limit_nano", sa.BigInteger(), nullable=False),
        sa.Column("fired_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
        # Fired once per counter, window and threshold, however many replicas see the crossing.
        sa.UniqueConstraint("counter_key", "window_id", "at_pct", name="uq_alerts_once"),
    )
    op.create_index("ix_alerts_org_fired_at", "alerts", ["org", "fired_at"])
    op.create_table(
        "webhook_outbox",
        sa.Column("id", sa.String(), nullable=False),  # also the webhook-id header: receivers dedupe on it
        sa.Column("webhook", sa.String(), nullable=False),
        sa.Column("event_type", sa.String(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),  # the exact signed bytes (UTF-8 JSON)
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),  # pending | delivered | failed
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_outbox"),
    )
    op.create_index("ix_webhook_outbox_due", "webhook_outbox", ["status", "next_attempt_at"])
    op.create_table(
        "webhook_deliveries",  # the delivery log: one row per attempt
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("outbox_id", sa.String(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),  # HTTP status, None for a connection failure
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
    )
    op.create_index("ix_webhook_deliveries_outbox", "webhook_deliveries", ["outbox_id"])


def downgrade() -> None:
    for table in ("webhook_deliveries", "webhook_outbox", "alerts", "approvals", "runtime_limits"):
        op.drop_table(table)
    op.drop_column("usage", "enforcement")
