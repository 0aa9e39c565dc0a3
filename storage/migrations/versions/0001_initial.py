"""Initial schema: patients, scores, alerts.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Hand-written; tests/storage/test_storage.py checks it against the models with Alembic's compare_metadata.
No foreign keys to patients on purpose: scores and alerts may arrive before the ADT admit.
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: Union[str, None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("unit", sa.String(64), nullable=True),
        sa.Column("bed", sa.String(64), nullable=True),
        sa.Column("age", sa.Float(), nullable=True),
        sa.Column("sex", sa.String(1), nullable=True),
        _ts("admitted_at", nullable=True),
        _ts("discharged_at", nullable=True),
        _ts("updated_at", nullable=True),
        sa.PrimaryKeyConstraint("patient_id", name="pk_patients"),
    )

    op.create_table(
        "scores",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("patient_id", sa.String(64), nullable=False),
        _ts("event_time"),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("deterioration_risk", sa.Float(), nullable=False),
        sa.Column("sepsis_risk", sa.Float(), nullable=False),
        sa.Column("news2", sa.SmallInteger(), nullable=False),
        sa.Column("qsofa", sa.SmallInteger(), nullable=False),
        sa.Column("staleness", sa.JSON(), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        _ts("scored_at"),
        sa.PrimaryKeyConstraint("id", name="pk_scores"),
        sa.UniqueConstraint("patient_id", "model", "event_time", name="uq_scores_patient_id_model_event_time"),
    )
    op.create_index("ix_scores_patient_id_event_time", "scores", ["patient_id", "event_time"])

    op.create_table(
        "alerts",
        sa.Column("alert_id", sa.String(200), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("risk", sa.Float(), nullable=False),
        sa.Column("news2", sa.SmallInteger(), nullable=False),
        sa.Column("qsofa", sa.SmallInteger(), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        _ts("episode_start"),
        _ts("event_time"),
        _ts("raised_at"),
        _ts("stored_at"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("acknowledged_by", sa.String(128), nullable=True),
        _ts("acknowledged_at", nullable=True),
        sa.Column("ack_comment", sa.Text(), nullable=True),
        _ts("resolved_at", nullable=True),
        sa.PrimaryKeyConstraint("alert_id", name="pk_alerts"),
        sa.CheckConstraint("state IN ('raised', 'acknowledged', 'resolved')", name="ck_alerts_state"),
    )
    op.create_index("ix_alerts_state_event_time", "alerts", ["state", "event_time"])
    op.create_index("ix_alerts_patient_id_event_time", "alerts", ["patient_id", "event_time"])


def downgrade() -> None:
    op.drop_index("ix_alerts_patient_id_event_time", table_name="alerts")
    op.drop_index("ix_alerts_state_event_time", table_name="alerts")
    op.drop_table("alerts")
    op.drop_index("ix_scores_patient_id_event_time", table_name="scores")
    op.drop_table("scores")
    op.drop_table("patients")
