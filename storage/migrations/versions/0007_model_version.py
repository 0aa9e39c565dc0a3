"""Model identity: a nullable ``model_version`` column on scores and alerts.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

Hand-written; tests/storage/test_storage.py checks it against the models with Alembic's compare_metadata.
The version of the model that gave a score (for a Triton model the version that answered, e.g. "2")
and, on an alert, that of the score that opened it. Rows from before stay NULL (not recorded); so
do the fallback rules' scores. The unique key of scores stays (patient, model, event time): a score
redelivered after a promotion is the same score, revised or ignored as before. On SQLite the
downgrade rebuilds both tables (batch mode).
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: Union[str, None] = "0006"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TABLES = ("scores", "alerts")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("model_version", sa.String(64), nullable=True))


def downgrade() -> None:
    for table in reversed(TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("model_version")
