"""Alert lifecycle: escalation, who resolved, change times, audit log, API tokens.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Hand-written; tests/storage/test_storage.py checks it against the models with Alembic's compare_metadata.
Existing alerts get ``updated_at`` = their latest known change (resolution, acknowledgement or
storage) and an audit trail rebuilt from their columns (``detail["backfilled"]`` is true), so
every alert has at least its 'raised' event.
"""

from __future__ import annotations

from datetime import timezone
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: Union[str, None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _id() -> sa.Column:
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False)


def _aware(t):
    # SQLite hands back naive UTC values.
    return None if t is None else (t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t)


def upgrade() -> None:
    # SQLite rebuilds the table for the NOT NULL change (batch mode; the reflected CHECK constraint
    # on state is carried over, tests/storage/test_alert_lifecycle.py checks it).
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("resolved_by", sa.String(128), nullable=True))
        batch.add_column(sa.Column("escalation_level", sa.SmallInteger(), nullable=False, server_default="0"))
        batch.add_column(_ts("escalated_at", nullable=True))
        batch.add_column(_ts("updated_at", nullable=True))
    op.execute("UPDATE alerts SET updated_at = COALESCE(resolved_at, acknowledged_at, stored_at)")
    with op.batch_alter_table("alerts") as batch:
        batch.alter_column("updated_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch.create_index("ix_alerts_updated_at", ["updated_at"])

    events = op.create_table(
        "alert_events",
        _id(),
        sa.Column("alert_id", sa.String(200), nullable=False),
        _ts("at"),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alert_events"),
        sa.CheckConstraint(
            "action IN ('raised', 'acknowledged', 'resolved', 'escalated', 'suppressed')",
            name="action",  # the naming convention makes it ck_alert_events_action
        ),
    )
    op.create_index("ix_alert_events_alert_id", "alert_events", ["alert_id"])

    op.create_table(
        "api_tokens",
        _id(),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("user", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        _ts("created_at"),
        _ts("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.UniqueConstraint("token_sha256", name="uq_api_tokens_token_sha256"),
        sa.CheckConstraint("role IN ('nurse', 'physician', 'engineer', 'admin')", name="role"),
    )

    _backfill_audit(events)


def _backfill_audit(events: sa.Table) -> None:
    alerts = sa.table(
        "alerts",
        sa.column("alert_id"),
        sa.column("risk", sa.Float()),
        sa.column("raised_at", sa.DateTime(timezone=True)),
        sa.column("acknowledged_by"),
        sa.column("acknowledged_at", sa.DateTime(timezone=True)),
        sa.column("ack_comment"),
        sa.column("resolved_at", sa.DateTime(timezone=True)),
    )
    rows = []
    result = op.get_bind().execute(sa.select(alerts).order_by(alerts.c.raised_at, alerts.c.alert_id))
    for a in result:
        base = {"alert_id": a.alert_id}
        rows.append(
            {
                **base,
                "at": _aware(a.raised_at),
                "actor": "system",
                "action": "raised",
                "detail": {"backfilled": True, "risk": a.risk},
            }
        )
        if a.acknowledged_at is not None:
            rows.append(
                {
                    **base,
                    "at": _aware(a.acknowledged_at),
                    "actor": a.acknowledged_by or "unknown",
                    "action": "acknowledged",
                    "detail": {"backfilled": True, "comment": a.ack_comment},
                }
            )
        if a.resolved_at is not None:
            rows.append(
                {
                    **base,
                    "at": _aware(a.resolved_at),
                    "actor": "system",
                    "action": "resolved",
                    "detail": {"backfilled": True},
                }
            )
    if rows:
        op.bulk_insert(events, rows)


def downgrade() -> None:
    op.drop_table("api_tokens")
    op.drop_index("ix_alert_events_alert_id", table_name="alert_events")
    op.drop_table("alert_events")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_index("ix_alerts_updated_at")
        batch.drop_column("updated_at")
        batch.drop_column("escalated_at")
        batch.drop_column("escalation_level")
        batch.drop_column("resolved_by")
