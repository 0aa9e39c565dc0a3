"""Data liveness: ``data_feeds``, when each patient's data of each modality last arrived.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

Hand-written; tests/storage/test_storage.py checks it against the models with Alembic's compare_metadata.
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: Union[str, None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "data_feeds",
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_event_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("patient_id", "modality"),
    )


def downgrade() -> None:
    op.drop_table("data_feeds")
