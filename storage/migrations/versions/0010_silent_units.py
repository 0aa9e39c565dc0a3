"""Silent mode per unit: ``unit_modes`` and its audit log, and on alerts ``silent`` (raised while
the unit was silent) and ``shown_at`` (when a silent alert was shown).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

Hand-written; tests/storage/test_storage.py checks it against the models with Alembic's compare_metadata.
Existing alerts become ``silent = false`` (they were all shown). On SQLite the downgrade rebuilds
the alerts table (batch mode).
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: Union[str, None] = "0009"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("silent", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("shown_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "unit_modes",
        sa.Column("unit", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("changed_by", sa.String(128), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.CheckConstraint("mode IN ('silent', 'live')", name="mode"),
        sa.PrimaryKeyConstraint("unit", name="pk_unit_modes"),
    )
    op.create_table(
        "unit_mode_events",
        sa.Column("id", BigIntId, autoincrement=True, nullable=False),
        sa.Column("unit", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_unit_mode_events"),
    )
    op.create_index("ix_unit_mode_events_unit", "unit_mode_events", ["unit"])


def downgrade() -> None:
    op.drop_index("ix_unit_mode_events_unit", "unit_mode_events")
    op.drop_table("unit_mode_events")
    op.drop_table("unit_modes")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("shown_at")
        batch.drop_column("silent")
