"""Writes of the live shadow (``streams/shadow.py``): the shadow model's scores, its would-be
alert episodes, and the thresholds each served model alerts at. Only these tables are written, so
nothing here reaches the nurses' board, ``icu.alerts`` or FHIR."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from icuwatch.core import schemas
from icuwatch.storage.models import ServedModel, ShadowAlert, ShadowScore
from icuwatch.storage.repository import _insert, _insert_ignore, _now, _upsert_revisions, utc

SCORE_KEYS = ["patient_id", "model", "event_time"]


def add_scores(session: Session, scores: Sequence[schemas.Score]) -> int:
    """Store shadow scores: a redelivered one is skipped, a higher revision replaces the stored one."""
    rows: list[dict[str, Any]] = [
        {
            "patient_id": s.patient_id,
            "event_time": utc(s.event_time),
            "model": s.model,
            "model_version": s.model_version,
            "deterioration_risk": s.deterioration_risk,
            "sepsis_risk": s.sepsis_risk,
            "scored_at": utc(s.scored_at),
            "revision": s.revision,
        }
        for s in scores
    ]
    first = [r for r in rows if r["revision"] == 0]
    stored = _insert_ignore(session, ShadowScore, first, SCORE_KEYS) if first else 0
    return stored + _upsert_revisions(session, [r for r in rows if r["revision"] > 0], ShadowScore)


def add_alerts(session: Session, alerts: Sequence[schemas.Alert]) -> int:
    """Store the episodes the shadow opened (a redelivered one is skipped)."""
    rows = [
        {
            "alert_id": a.alert_id,
            "patient_id": a.patient_id,
            "kind": a.kind,
            "risk": a.risk,
            "model": a.model,
            "model_version": a.model_version,
            "episode_start": utc(a.episode_start),
            "event_time": utc(a.event_time),
            "raised_at": utc(a.raised_at),
        }
        for a in alerts
    ]
    return _insert_ignore(session, ShadowAlert, rows, ["alert_id"]) if rows else 0


def close_episodes(session: Session, closed: Mapping[str, float]) -> None:
    """Per alert id, the event time of the score that closed the episode (first close kept)."""
    for alert_id, at in closed.items():
        session.execute(
            update(ShadowAlert)
            .where(ShadowAlert.alert_id == alert_id, ShadowAlert.closed_at.is_(None))
            .values(closed_at=utc(at))
        )


def store_batch(
    session: Session, scores: Sequence[schemas.Score], alerts: Sequence[schemas.Alert], closed: Mapping[str, float]
) -> int:
    """One batch of the shadow agent, in one transaction; returns the scores stored."""
    stored = add_scores(session, scores)
    add_alerts(session, alerts)
    close_episodes(session, closed)
    return stored


def record_served_model(session: Session, model: str, role: str, thresholds: Mapping[str, float]) -> None:
    """What ``model`` alerts at (per kind, its 'on' threshold) and its role, ``live`` or ``shadow``."""
    row = {"model": model, "role": role, "thresholds": dict(thresholds), "updated_at": _now()}
    insert = _insert(session, ServedModel.__table__).values(row)
    session.execute(
        insert.on_conflict_do_update(
            index_elements=["model"], set_={c: insert.excluded[c] for c in row if c != "model"}
        )
    )
