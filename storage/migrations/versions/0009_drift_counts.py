"""Drift guards: the workers' counts per unit, event-time hour and column (``streams/drift.py``).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

Hand-written; tests/storage/test_storage.py checks it against the models with Alembic's compare_metadata.
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: Union[str, None] = "0008"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "drift_counts",
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("unit", sa.String(64), nullable=False),
        sa.Column("column", sa.String(64), nullable=False),
        sa.Column("writer", sa.String(128), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("bucket_start", "unit", "column", "writer", name="pk_drift_counts"),
    )
    op.create_index("ix_drift_counts_bucket_start", "drift_counts", ["bucket_start"])


def downgrade() -> None:
    op.drop_index("ix_drift_counts_bucket_start", "drift_counts")
    op.drop_table("drift_counts")
