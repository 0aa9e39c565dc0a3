"""Per-modality contributions: a nullable JSON ``contributions`` column on scores and alerts.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08

Hand-written; tests/storage/test_storage.py checks it against the models with Alembic's compare_metadata.
Scores: ``{risk kind: {modality: value}}``; alerts: ``{modality: value}`` for the alert's kind.
Rows from before stay NULL (no explanation was computed for them). On SQLite the downgrade
rebuilds both tables (batch mode; the reflected CHECK constraint on alerts.state is carried over).
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: Union[str, None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TABLES = ("scores", "alerts")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("contributions", sa.JSON(), nullable=True))


def downgrade() -> None:
    for table in reversed(TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("contributions")
