"""Writes of the workers' drift counts (``streams/drift.py``): each writer's cumulative counts per
bucket replace what it wrote before, so a flush is idempotent."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from icuwatch.storage.models import DriftCount
from icuwatch.storage.repository import _insert, utc

KEYS = ["bucket_start", "unit", "column", "writer"]


def record(session: Session, rows: Sequence[dict]) -> None:
    """Rows of ``DriftCounts.take`` (``bucket_start`` in epoch seconds)."""
    for row in rows:
        values = {**row, "bucket_start": utc(row["bucket_start"])}
        insert = _insert(session, DriftCount.__table__).values(values)
        session.execute(insert.on_conflict_do_update(index_elements=KEYS, set_={"counts": insert.excluded.counts}))
