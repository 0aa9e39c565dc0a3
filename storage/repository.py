"""Reads and writes used by the worker and the API.

Every function takes a :class:`~sqlalchemy.orm.Session` and leaves transaction control to the
caller (``with factory.begin() as session: ...``). Writes are idempotent so that Kafka redelivery
(at-least-once) cannot duplicate rows, and ADT updates are safe against out-of-order delivery.
Inserts use the dialect's ``INSERT ... ON CONFLICT DO NOTHING`` (SQLite and PostgreSQL).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Iterable, Optional, Sequence

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from icuwatch.core import schemas
from icuwatch.storage.models import (
    ALERT_ACTIONS,
    ALERT_STATES,
    OPEN_ALERT_STATES,
    Alert,
    AlertEvent,
    Patient,
    Score,
    UnitMode,
)

_CHUNK_ROWS = 500
"""Rows per multi-row INSERT: 500 x 13 columns stays well under SQLite's and psycopg's limits."""


class StorageError(Exception):
    """Base class of the repository's errors."""


class AlertNotFound(StorageError, LookupError):
    """No alert with that id."""


class AlertStateError(StorageError, ValueError):
    """The alert is not in a state that allows the requested transition."""


def utc(t: float | datetime) -> datetime:
    """Epoch seconds (as in the v1 schemas) or an aware datetime, as an aware UTC datetime."""
    if isinstance(t, datetime):
        if t.tzinfo is None:
            raise ValueError(f"naive datetime {t!r}")
        return t.astimezone(timezone.utc)
    return datetime.fromtimestamp(t, tz=timezone.utc)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _insert(session: Session, table: Any) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that supports ``on_conflict_do_nothing`` for the session's dialect."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise StorageError(f"unsupported database dialect {name!r} (need sqlite or postgresql)")


def _insert_ignore(session: Session, table: Any, rows: list[dict[str, Any]], keys: list[str]) -> int:
    """Insert ``rows`` skipping any that conflict on ``keys``; return how many were inserted.

    One multi-row statement per chunk; inserted rows are counted with RETURNING because
    ``rowcount`` is not reported reliably for such statements by every driver (psycopg gives -1).
    """
    tbl = table.__table__
    inserted = 0
    for i in range(0, len(rows), _CHUNK_ROWS):
        stmt = (
            _insert(session, tbl)
            .values(rows[i : i + _CHUNK_ROWS])
            .on_conflict_do_nothing(index_elements=keys)
            .returning(tbl.c[keys[0]])
        )
        inserted += len(session.execute(stmt).all())
    return inserted


def _ensure_patients(session: Session, patient_ids: Iterable[str]) -> int:
    ids = sorted(set(patient_ids))  # sorted: concurrent writers take row locks in the same order
    if not ids:
        return 0
    return _insert_ignore(session, Patient, [{"patient_id": p} for p in ids], ["patient_id"])


def ensure_patient(session: Session, patient_id: str) -> bool:
    """Create a minimal patient row if none exists yet; True if one was created."""
    return _ensure_patients(session, [patient_id]) == 1


def upsert_patient(session: Session, adt: schemas.Adt) -> Patient:
    """Apply an admit / transfer / discharge event to the patient's row and return it.

    Out-of-order safe: ``Patient.updated_at`` is the event time of the newest ADT applied. An
    event at least as new replaces location and admission state (an admit after a discharge is a
    readmission); an older event only fills fields that are still empty (demographics, and
    ``admitted_at`` for a late admit) and never reopens or closes a stay. Redelivery of the
    same event is a no-op.
    """
    ensure_patient(session, adt.patient_id)
    p = session.scalars(
        select(Patient)
        .where(Patient.patient_id == adt.patient_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    t = utc(adt.event_time)
    newer = p.updated_at is None or t >= p.updated_at

    if newer:
        for field in ("unit", "bed", "age", "sex"):
            value = getattr(adt, field)
            if value is not None:
                setattr(p, field, value)
        if adt.event == "admit":
            p.admitted_at = t
            p.discharged_at = None
        elif adt.event == "discharge":
            p.discharged_at = t
        p.updated_at = t
    else:
        for field in ("unit", "bed", "age", "sex"):
            value = getattr(adt, field)
            if value is not None and getattr(p, field) is None:
                setattr(p, field, value)
        if adt.event == "admit" and p.admitted_at is None:
            p.admitted_at = t
    session.flush()
    if p.unit is not None:  # wait for a unit going live right now (units.set_mode holds this row)
        session.execute(select(UnitMode.unit).where(UnitMode.unit == p.unit).with_for_update(read=True))
    if not _patient_is_silent(session, p.patient_id):
        show_silent_alerts(session, [p.patient_id], reason=f"patient moved to {p.unit or 'no unit'}, not silent")
    return p


def show_silent_alerts(session: Session, patient_ids: Sequence[str], reason: str) -> list[str]:
    """Show these patients' open silent alerts to the nurses now (``silent = false``, ``shown_at`` =
    ``updated_at`` = now; storage/units.py), with a 'raised' audit event saying why; their ids."""
    if not patient_ids:
        return []
    now = _now()
    shown = sorted(
        session.scalars(
            update(Alert)
            .where(Alert.silent.is_(True), Alert.state.in_(OPEN_ALERT_STATES), Alert.patient_id.in_(patient_ids))
            .values(silent=False, shown_at=now, updated_at=now)
            .returning(Alert.alert_id)
            .execution_options(synchronize_session=False)
        )
    )
    for alert_id in shown:
        loaded = session.identity_map.get(session.identity_key(Alert, alert_id))
        if loaded is not None:
            session.expire(loaded)
        record_event(session, alert_id, "raised", at=now, detail={"shown": True, "reason": reason})
    return shown


def _finite_or_none(v: Optional[float]) -> Optional[float]:
    # JSON has no NaN/Infinity (PostgreSQL rejects them); the schema does not forbid them here.
    return v if v is None or math.isfinite(v) else None


def add_scores(session: Session, scores: Sequence[schemas.Score]) -> int:
    """Store scores, skipping any already stored (same patient, model and event time) unless the new
    one is a higher revision, which replaces the stored values.

    Returns the number of rows inserted or revised. Creates stub patient rows for patients not seen yet.
    """
    if not scores:
        return 0
    _ensure_patients(session, (s.patient_id for s in scores))
    rows: list[dict[str, Any]] = [
        {
            "patient_id": s.patient_id,
            "event_time": utc(s.event_time),
            "model": s.model,
            "model_version": s.model_version,
            "source": s.source,
            "deterioration_risk": s.deterioration_risk,
            "sepsis_risk": s.sepsis_risk,
            "news2": s.news2,
            "qsofa": s.qsofa,
            "staleness": {k: _finite_or_none(v) for k, v in s.staleness_s.items()},
            "trigger": s.trigger,
            "scored_at": utc(s.scored_at),
            "revision": s.revision,
            "contributions": s.contributions,
        }
        for s in scores
    ]
    first = [r for r in rows if r["revision"] == 0]
    stored = _insert_ignore(session, Score, first, ["patient_id", "model", "event_time"])
    revised = [r for r in rows if r["revision"] > 0]
    return stored + _upsert_revisions(session, revised)


def _upsert_revisions(session: Session, rows: list[dict[str, Any]], table: Any = Score) -> int:
    """Insert, or overwrite a stored score (of ``table``: ``scores`` or ``shadow_scores``) whose
    revision is lower. Order matters, so row by row."""
    tbl = table.__table__
    keys = ["patient_id", "model", "event_time"]
    changed = 0
    for row in rows:
        insert = _insert(session, tbl).values(row)
        stmt = insert.on_conflict_do_update(
            index_elements=keys,
            set_={c: insert.excluded[c] for c in row if c not in keys},
            where=tbl.c.revision < insert.excluded.revision,
        ).returning(tbl.c.id)
        changed += len(session.execute(stmt).all())
    return changed


SYSTEM_ACTOR = "system"
"""Actor of the audit events the system writes (raise, suppression, escalation, unattended resolve)."""


def _iso(t: datetime) -> str:
    return t.isoformat()


def record_event(
    session: Session,
    alert_id: str,
    action: str,
    *,
    actor: str = SYSTEM_ACTOR,
    at: datetime | None = None,
    detail: dict[str, Any] | None = None,
) -> AlertEvent:
    """Append one audit event (the caller's transaction makes it atomic with the change)."""
    if action not in ALERT_ACTIONS:
        raise ValueError(f"unknown alert action {action!r}; expected one of {ALERT_ACTIONS}")
    event = AlertEvent(
        alert_id=alert_id,
        at=at if at is not None else _now(),
        actor=actor,
        action=action,
        detail=detail or {},
    )
    session.add(event)
    session.flush()
    return event


def _lock_patient(session: Session, patient_id: str) -> None:
    """Serialise alert writers of one patient (PostgreSQL row lock; SQLite has one writer anyway,
    and ``ensure_patient``'s INSERT has already taken its write lock)."""
    session.execute(select(Patient.patient_id).where(Patient.patient_id == patient_id).with_for_update())


def open_alert(session: Session, patient_id: str, kind: str) -> Alert | None:
    """The open (raised or acknowledged) alert of this patient and kind, if any (the oldest, should
    data from before migration 0003 hold several)."""
    return session.scalars(
        select(Alert)
        .where(
            Alert.patient_id == patient_id,
            Alert.kind == kind,
            Alert.state.in_(OPEN_ALERT_STATES),
        )
        .order_by(Alert.event_time, Alert.alert_id)
        .limit(1)
    ).first()


def open_alert_kinds(session: Session, patient_id: str) -> set[str]:
    """Kinds of which this patient has an open (raised or acknowledged) alert: the worker closes an
    open episode whose kind is not among them (a nurse resolved its alert, see ``streams/alerting``)."""
    return set(
        session.scalars(
            select(Alert.kind).where(Alert.patient_id == patient_id, Alert.state.in_(OPEN_ALERT_STATES)).distinct()
        )
    )


def open_alert_ids(session: Session, alert_ids: Iterable[str]) -> set[str]:
    """Those of ``alert_ids`` that are open (raised or acknowledged)."""
    ids = sorted(set(alert_ids))
    found: set[str] = set()
    for i in range(0, len(ids), _CHUNK_ROWS):
        chunk = ids[i : i + _CHUNK_ROWS]
        found.update(
            session.scalars(select(Alert.alert_id).where(Alert.alert_id.in_(chunk), Alert.state.in_(OPEN_ALERT_STATES)))
        )
    return found


def add_alert(session: Session, alert: schemas.Alert) -> bool:
    """:func:`store_alert`, True only when the alert was newly stored."""
    return store_alert(session, alert) == "stored"


def store_alert(session: Session, alert: schemas.Alert) -> str:
    """Store a newly raised alert and its 'raised' audit event: ``"stored"``, ``"duplicate"``,
    ``"suppressed"`` or ``"silent"``.

    ``"silent"``: stored with ``silent = true`` because the patient's unit runs silent
    (``storage/units.py``), or a redelivery of such an alert: the worker does not publish it.

    ``"duplicate"``, with nothing written, if ``alert_id`` already exists: a redelivered alert never touches
    the stored one, so an acknowledgement survives redelivery.

    One open episode per patient and kind: while a raised or acknowledged alert of the same patient
    and kind exists, a new alert is not stored; instead a 'suppressed' event is written against the
    open alert (``detail["suppressed_alert_id"]`` = the new id; once per suppressed id, so
    redelivery adds nothing) and ``"suppressed"`` is returned.

    The worker republishes a duplicate (it may have died between storing and publishing it);
    a suppressed alert is not published.
    """
    ensure_patient(session, alert.patient_id)
    _lock_patient(session, alert.patient_id)
    stored = session.get(Alert, alert.alert_id)
    if stored is not None:
        return "silent" if stored.silent else "duplicate"
    now = _now()
    blocking = open_alert(session, alert.patient_id, alert.kind)
    if blocking is not None:
        already = session.scalar(
            select(func.count())
            .select_from(AlertEvent)
            .where(
                AlertEvent.alert_id == blocking.alert_id,
                AlertEvent.action == "suppressed",
                AlertEvent.detail["suppressed_alert_id"].as_string() == alert.alert_id,
            )
        )
        if not already:
            record_event(
                session,
                blocking.alert_id,
                "suppressed",
                at=now,
                detail={
                    "suppressed_alert_id": alert.alert_id,
                    "source": alert.source,
                    "risk": alert.risk,
                    "episode_start": _iso(utc(alert.episode_start)),
                    "event_time": _iso(utc(alert.event_time)),
                },
            )
        return "suppressed"
    row: dict[str, Any] = {
        "alert_id": alert.alert_id,
        "patient_id": alert.patient_id,
        "kind": alert.kind,
        "risk": alert.risk,
        "news2": alert.news2,
        "qsofa": alert.qsofa,
        "model": alert.model,
        "model_version": alert.model_version,
        "source": alert.source,
        "episode_start": utc(alert.episode_start),
        "event_time": utc(alert.event_time),
        "raised_at": utc(alert.raised_at),
        "stored_at": now,
        "state": "raised",
        "escalation_level": 0,
        "updated_at": now,
        "contributions": alert.contributions,
        # the model's alerts only: a monitor that went quiet is not the model's (streams/liveness.py)
        "silent": alert.kind != "data_liveness" and _patient_is_silent(session, alert.patient_id),
    }
    if _insert_ignore(session, Alert, [row], ["alert_id"]) != 1:
        return "duplicate"
    record_event(
        session,
        alert.alert_id,
        "raised",
        at=row["raised_at"],
        detail={
            "risk": alert.risk,
            "news2": alert.news2,
            "qsofa": alert.qsofa,
            "model": alert.model,
            "model_version": alert.model_version,
            "source": alert.source,
            "episode_start": _iso(row["episode_start"]),
            "event_time": _iso(row["event_time"]),
            "silent": row["silent"],
        },
    )
    return "silent" if row["silent"] else "stored"


def _patient_is_silent(session: Session, patient_id: str) -> bool:
    """Whether the patient's current unit runs silent (``storage/units.py``)."""
    mode = session.scalar(
        select(UnitMode.mode).join(Patient, Patient.unit == UnitMode.unit).where(Patient.patient_id == patient_id)
    )
    return mode == "silent"


def _locked_alert(session: Session, alert_id: str) -> Alert:
    alert = session.scalars(
        select(Alert).where(Alert.alert_id == alert_id).with_for_update().execution_options(populate_existing=True)
    ).one_or_none()
    if alert is None:
        raise AlertNotFound(f"no alert with id {alert_id!r}")
    return alert


def acknowledge(
    session: Session,
    alert_id: str,
    by: str,
    comment: str | None = None,
    *,
    at: float | datetime | None = None,
) -> Alert:
    """Mark a raised alert acknowledged by ``by`` (at ``at``, default now), write the
    'acknowledged' audit event, and return the alert.

    Raises :class:`AlertNotFound` for an unknown id and :class:`AlertStateError` unless the alert
    is in state 'raised'.
    """
    if not by or not by.strip():
        raise ValueError("acknowledge needs the name of who acknowledged")
    alert = _locked_alert(session, alert_id)
    if alert.state != "raised":
        raise AlertStateError(f"alert {alert_id!r} is {alert.state}; only a raised alert can be acknowledged")
    alert.state = "acknowledged"
    alert.acknowledged_by = by.strip()
    alert.acknowledged_at = utc(at) if at is not None else _now()
    alert.ack_comment = comment
    alert.updated_at = _now()
    record_event(
        session,
        alert_id,
        "acknowledged",
        actor=alert.acknowledged_by,
        at=alert.acknowledged_at,
        detail={"comment": comment},
    )
    return alert


def resolve(
    session: Session,
    alert_id: str,
    *,
    by: str | None = None,
    at: float | datetime | None = None,
    reason: str | None = None,
) -> Alert:
    """Mark an alert resolved (from 'raised' or 'acknowledged') by ``by`` (None: the system), write
    the 'resolved' audit event with ``reason`` (``detail["reason"]``; the API requires one from a
    person), and return the alert.

    Resolving an already resolved alert changes nothing and writes no event (the episode end may be
    redelivered). Raises :class:`AlertNotFound` for an unknown id.

    While the patient's risk stays high the worker raises a new alert of this kind after
    ``alert_realert_after_resolve_s`` (see ``streams/alerting``).
    """
    if by is not None:
        by = by.strip() or None
    if reason is not None:
        reason = reason.strip() or None
    alert = _locked_alert(session, alert_id)
    if alert.state != "resolved":
        previous = alert.state
        alert.state = "resolved"
        alert.resolved_at = utc(at) if at is not None else _now()
        alert.resolved_by = by
        alert.updated_at = _now()
        record_event(
            session,
            alert_id,
            "resolved",
            actor=by or SYSTEM_ACTOR,
            at=alert.resolved_at,
            detail={"from_state": previous, "reason": reason},
        )
    return alert


def list_alerts(
    session: Session,
    state: str | None = None,
    kind: str | None = None,
    patient_id: str | None = None,
    limit: int = 100,
    unit: str | None = None,
) -> list[Alert]:
    """Alerts the nurses see (not silent, ``storage/units.py``) matching all given filters, newest
    event time first (at most ``limit``).

    ``unit`` matches the patient's current unit (``patients.unit``).
    """
    if state is not None and state not in ALERT_STATES:
        raise ValueError(f"unknown alert state {state!r}; expected one of {ALERT_STATES}")
    stmt = select(Alert).where(Alert.silent.is_(False))
    if state is not None:
        stmt = stmt.where(Alert.state == state)
    if kind is not None:
        stmt = stmt.where(Alert.kind == kind)
    if patient_id is not None:
        stmt = stmt.where(Alert.patient_id == patient_id)
    if unit is not None:
        stmt = stmt.join(Patient, Patient.patient_id == Alert.patient_id).where(Patient.unit == unit)
    stmt = stmt.order_by(Alert.event_time.desc(), Alert.alert_id).limit(max(0, limit))
    return list(session.scalars(stmt))


def count_alerts(session: Session) -> dict[str, int]:
    """Number of alerts the nurses see (not silent) in each state; every state is present (0 when none)."""
    counts = dict.fromkeys(ALERT_STATES, 0)
    for state, n in session.execute(
        select(Alert.state, func.count()).where(Alert.silent.is_(False)).group_by(Alert.state)
    ):
        counts[state] = n
    return counts
