"""Live shadow: the shadow model's scores and would-be alerts, and the thresholds each served model
alerts at.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

Hand-written; tests/storage/test_storage.py checks it against the models with Alembic's compare_metadata.
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: Union[str, None] = "0007"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "shadow_scores",
        sa.Column("id", BigIntId, autoincrement=True, nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("deterioration_risk", sa.Float(), nullable=False),
        sa.Column("sepsis_risk", sa.Float(), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revision", sa.SmallInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id", name="pk_shadow_scores"),
        sa.UniqueConstraint("patient_id", "model", "event_time", name="uq_shadow_scores_patient_id_model_event_time"),
    )
    op.create_index("ix_shadow_scores_event_time", "shadow_scores", ["event_time"])
    op.create_table(
        "shadow_alerts",
        sa.Column("alert_id", sa.String(200), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("risk", sa.Float(), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("episode_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("alert_id", name="pk_shadow_alerts"),
    )
    op.create_index("ix_shadow_alerts_event_time", "shadow_alerts", ["event_time"])
    op.create_table(
        "served_models",
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model", name="pk_served_models"),
    )


def downgrade() -> None:
    op.drop_table("served_models")
    op.drop_index("ix_shadow_alerts_event_time", "shadow_alerts")
    op.drop_table("shadow_alerts")
    op.drop_index("ix_shadow_scores_event_time", "shadow_scores")
    op.drop_table("shadow_scores")
