"""Token expiry: a nullable ``expires_at`` column on ``api_tokens``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

Hand-written; tests/storage/test_storage.py checks it against the models with Alembic's compare_metadata.
Tokens from before stay NULL (they never expire until revoked: ``icuwatch token list|revoke``).
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: Union[str, None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("expires_at")
