"""Per-unit alert thresholds, versioned (``icuwatch tune-thresholds --unit``).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

Hand-written; tests/storage/test_storage.py checks it against the models with Alembic's compare_metadata.
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: Union[str, None] = "0010"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "unit_thresholds",
        sa.Column("id", BigIntId, autoincrement=True, nullable=False),
        sa.Column("unit", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_unit_thresholds"),
        sa.UniqueConstraint("unit", "kind", "model", "version", name="uq_unit_thresholds_unit_kind_model_version"),
    )


def downgrade() -> None:
    op.drop_table("unit_thresholds")
