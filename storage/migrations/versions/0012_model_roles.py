"""Model roles (live, shadow) set while the workers run (``icuwatch models shadow``, ``models promote
--shadow``), append-only.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06

Hand-written; tests/storage/test_storage.py checks it against the models with Alembic's compare_metadata.
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: Union[str, None] = "0011"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "model_roles",
        sa.Column("id", BigIntId, autoincrement=True, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("set_by", sa.String(128), nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_model_roles"),
        sa.CheckConstraint("role IN ('live', 'shadow')", name="role"),
    )


def downgrade() -> None:
    op.drop_table("model_roles")
