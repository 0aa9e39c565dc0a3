"""When each patient's data of each modality last arrived (``data_feeds``): written by the worker's
liveness check, read by the board and the patient page, which measure silence against now."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from icuwatch.storage.models import DataFeed, Patient
from icuwatch.storage.repository import _CHUNK_ROWS, _insert, utc

FeedTimes = Mapping[tuple[str, str], tuple[float, float | None]]
"""``{(patient_id, modality): (last_received_at, last_event_time)}``, epoch seconds (the event time
may be unknown)."""


def record(session: Session, feeds: FeedTimes) -> int:
    """Upsert ``{(patient_id, modality): (received, event_time)}``; a row only moves forward (an
    older receipt, from a worker replaying its backlog, leaves a newer one alone). Returns the rows sent."""
    rows = [
        {
            "patient_id": pid,
            "modality": modality,
            "last_received_at": utc(received),
            "last_event_time": utc(event_time) if event_time is not None else None,
        }
        for (pid, modality), (received, event_time) in sorted(feeds.items())
    ]
    table = DataFeed.__table__
    for i in range(0, len(rows), _CHUNK_ROWS):
        stmt = _insert(session, table).values(rows[i : i + _CHUNK_ROWS])
        stmt = stmt.on_conflict_do_update(
            index_elements=["patient_id", "modality"],
            set_={"last_received_at": stmt.excluded.last_received_at, "last_event_time": stmt.excluded.last_event_time},
            where=table.c.last_received_at < stmt.excluded.last_received_at,
        )
        session.execute(stmt)
    return len(rows)


@dataclass(frozen=True)
class Feed:
    modality: str
    last_received_at: datetime
    last_event_time: datetime | None
    silent_s: float
    """Seconds from ``last_received_at`` to now."""
    silent: bool
    """Watched (a threshold > 0) and silent for longer than its threshold."""


def _feed(row: DataFeed, now: datetime, silence_after_s: Mapping[str, float]) -> Feed:
    silent_s = max(0.0, (now - row.last_received_at).total_seconds())
    after = silence_after_s.get(row.modality, 0.0)
    return Feed(row.modality, row.last_received_at, row.last_event_time, silent_s, bool(after) and silent_s > after)


def of_patient(session: Session, patient_id: str, now: datetime, silence_after_s: Mapping[str, float]) -> list[Feed]:
    rows = session.scalars(select(DataFeed).where(DataFeed.patient_id == patient_id).order_by(DataFeed.modality))
    return [_feed(r, now, silence_after_s) for r in rows]


def silent(
    session: Session, now: datetime, silence_after_s: Mapping[str, float], limit: int = 500
) -> list[tuple[str, Feed]]:
    """``(patient_id, feed)`` of every watched feed silent past its threshold, of patients not
    discharged, longest silence first."""
    found: list[tuple[str, Feed]] = []
    for modality, after in silence_after_s.items():
        if not after:
            continue
        cutoff = utc(now.timestamp() - after)
        rows = session.execute(
            select(DataFeed, Patient.discharged_at)
            .outerjoin(Patient, Patient.patient_id == DataFeed.patient_id)
            .where(DataFeed.modality == modality, DataFeed.last_received_at < cutoff)
            .order_by(DataFeed.last_received_at)
            .limit(limit)
        )
        for row, discharged_at in rows:
            if discharged_at is None or discharged_at < row.last_received_at:
                found.append((row.patient_id, _feed(row, now, silence_after_s)))
    found.sort(key=lambda pf: -pf[1].silent_s)
    return found[:limit]
