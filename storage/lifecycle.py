"""Alert lifecycle reads and writes beyond raise/acknowledge/resolve (those are in
:mod:`icuwatch.storage.repository`): escalation of unacknowledged alerts, the audit trail, the
change feed for server-sent events, a patient's timeline, each patient's latest score (the board's
current risk) and alert-quality figures.

Like the repository, every function takes a :class:`~sqlalchemy.orm.Session` and leaves
transaction control to the caller.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, Iterable, Optional

from sqlalchemy import and_, false, func, or_, select, update
from sqlalchemy.orm import Session

from icuwatch.storage.models import ALERT_STATES, Alert, AlertEvent, Patient, Score, UnitMode
from icuwatch.storage.repository import _now, _patient_is_silent, record_event, utc

ALERT_KINDS = ("deterioration", "sepsis")
SECONDS_PER_DAY = 86_400.0


def escalate_overdue(session: Session, *, after_s: float, now: float | datetime | None = None) -> list[str]:
    """Escalate raised (unacknowledged) alerts that have waited too long; return their ids, sorted.

    An alert is escalated when it was raised (``raised_at``) more than ``after_s`` seconds before
    ``now`` (default: wall clock) and its last escalation, if any, is also more than ``after_s``
    old: ``escalation_level`` += 1, ``escalated_at`` = ``now``, and an 'escalated' audit event with
    ``detail["level"]``. Run it periodically (e.g. every few seconds); each alert escalates at
    most once per ``after_s``. One atomic UPDATE, so concurrent callers cannot double-escalate.
    """
    if after_s <= 0 or not math.isfinite(after_s):
        raise ValueError(f"after_s must be a positive number of seconds, got {after_s!r}")
    t = utc(now) if now is not None else _now()
    cutoff = t - timedelta(seconds=after_s)
    stmt = (
        update(Alert)
        .where(
            Alert.state == "raised",
            Alert.silent.is_(False),  # nobody sees it to acknowledge it (storage/units.py)
            func.coalesce(Alert.shown_at, Alert.raised_at) < cutoff,
            or_(Alert.escalated_at.is_(None), Alert.escalated_at < cutoff),
        )
        .values(
            escalation_level=Alert.escalation_level + 1,
            escalated_at=t,
            updated_at=_now(),
        )
        .returning(Alert.alert_id, Alert.escalation_level)
        .execution_options(synchronize_session=False)
    )
    escalated = sorted(session.execute(stmt).all())
    ids = [alert_id for alert_id, _ in escalated]
    for alert_id, level in escalated:
        record_event(session, alert_id, "escalated", at=t, detail={"level": level, "after_s": after_s})
    # Rows of these alerts already loaded in this session are stale now.
    for alert_id in ids:
        loaded = session.identity_map.get(session.identity_key(Alert, alert_id))
        if loaded is not None:
            session.expire(loaded)
    return ids


def alert_events(session: Session, alert_id: str) -> list[AlertEvent]:
    """The audit trail of one alert in the order it was written (empty for an unknown id)."""
    return list(session.scalars(select(AlertEvent).where(AlertEvent.alert_id == alert_id).order_by(AlertEvent.id)))


def alerts_changed_since(
    session: Session,
    since: datetime | None,
    limit: int = 200,
    *,
    after_id: str | None = None,
) -> list[Alert]:
    """Alerts whose ``updated_at`` is after ``since`` (all when None), oldest change first.

    Ordered by (``updated_at``, ``alert_id``). To page without losing rows that share a timestamp
    (an escalation run stamps several alerts alike), pass the last row's ``updated_at`` as
    ``since`` and its ``alert_id`` as ``after_id``: rows are then those after that pair.

    ``updated_at`` is the wall-clock time of the write, taken before its transaction commits, so a
    slow transaction can commit a change stamped earlier than one already seen; a live feed should
    re-poll with a small overlap (a few seconds) and drop the (alert_id, updated_at) pairs it has
    already sent.
    """
    stmt = select(Alert).where(Alert.silent.is_(False))
    if since is not None:
        s = utc(since)
        if after_id is None:
            stmt = stmt.where(Alert.updated_at > s)
        else:
            stmt = stmt.where(or_(Alert.updated_at > s, and_(Alert.updated_at == s, Alert.alert_id > after_id)))
    stmt = stmt.order_by(Alert.updated_at, Alert.alert_id).limit(max(0, limit))
    return list(session.scalars(stmt))


def patient_timeline(
    session: Session,
    patient_id: str,
    since: float | datetime | None = None,
    limit: int = 2000,
) -> dict[str, Any]:
    """A patient's row, scores and alerts, for the timeline view.

    Returns ``{"patient": Patient | None, "scores": [Score, ...], "alerts": [Alert, ...],
    "truncated": bool}``. Scores (every model; each has staleness, source, revision, ...) and
    alerts are in ascending event time, only those with event time >= ``since`` when given. At
    most ``limit`` of each: the newest ones, and ``truncated`` tells whether any were left out.
    """
    cap = max(0, limit)
    start = utc(since) if since is not None else None

    score_q = select(Score).where(Score.patient_id == patient_id)
    alert_q = select(Alert).where(Alert.patient_id == patient_id, Alert.silent.is_(False))
    if _patient_is_silent(session, patient_id):  # the unit runs silent: no risk on the patient page
        score_q = score_q.where(false())
    if start is not None:
        score_q = score_q.where(Score.event_time >= start)
        alert_q = alert_q.where(Alert.event_time >= start)
    scores = list(session.scalars(score_q.order_by(Score.event_time.desc(), Score.model).limit(cap + 1)))
    alerts = list(session.scalars(alert_q.order_by(Alert.event_time.desc(), Alert.alert_id).limit(cap + 1)))
    truncated = len(scores) > cap or len(alerts) > cap
    return {
        "patient": session.get(Patient, patient_id),
        "scores": scores[:cap][::-1],
        "alerts": alerts[:cap][::-1],
        "truncated": truncated,
    }


def latest_scores(session: Session, patient_ids: Iterable[str]) -> dict[str, Score]:
    """Each patient's newest score (by event time; of any model, the latest stored at a tie), for the
    board's current risk beside an alert's opening risk. Patients without scores, and patients of a
    silent unit (``storage/units.py``: their risk is not for the nurses), are left out."""
    ids = sorted(set(patient_ids))
    silent = set(
        session.scalars(
            select(Patient.patient_id).join(UnitMode, UnitMode.unit == Patient.unit).where(UnitMode.mode == "silent")
        )
    )
    ids = [i for i in ids if i not in silent]
    latest: dict[str, Score] = {}
    for i in range(0, len(ids), 500):  # well under every driver's bound-parameter limit
        newest = (
            select(Score.patient_id, func.max(Score.event_time).label("t"))
            .where(Score.patient_id.in_(ids[i : i + 500]))
            .group_by(Score.patient_id)
            .subquery()
        )
        stmt = (
            select(Score)
            .join(newest, and_(Score.patient_id == newest.c.patient_id, Score.event_time == newest.c.t))
            .order_by(Score.id)
        )
        latest.update((sc.patient_id, sc) for sc in session.scalars(stmt))
    return latest


def _quantile(sorted_values: list[float], q: float) -> Optional[float]:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _patient_days(session: Session, since: Optional[datetime]) -> float:
    """Sum over patients of the time they were observed, in days.

    A patient's span runs from the earlier of ``admitted_at`` and their first score to the later of
    ``discharged_at`` and their last score (whichever exist; a readmission moves ``admitted_at``,
    the scores keep the earlier stay in). With ``since``, only scores from then on count and the
    span is clipped to start there. A patient with neither a complete admission nor scores counts 0.
    """
    score_q = select(Score.patient_id, func.min(Score.event_time), func.max(Score.event_time)).group_by(
        Score.patient_id
    )
    if since is not None:
        score_q = score_q.where(Score.event_time >= since)
    first_last = {pid: (utc(lo), utc(hi)) for pid, lo, hi in session.execute(score_q)}
    patients = {
        pid: (adm, dis)
        for pid, adm, dis in session.execute(select(Patient.patient_id, Patient.admitted_at, Patient.discharged_at))
    }
    total_s = 0.0
    for pid in set(patients) | set(first_last):
        adm, dis = patients.get(pid, (None, None))
        lo, hi = first_last.get(pid, (None, None))
        starts = [t for t in (adm, lo) if t is not None]
        ends = [t for t in (dis, hi) if t is not None]
        if not starts or not ends:
            continue
        start, end = min(starts), max(ends)
        if since is not None:
            start = max(start, since)
        total_s += max(0.0, (end - start).total_seconds())
    return total_s / SECONDS_PER_DAY


def alert_quality(session: Session, since: float | datetime | None = None) -> dict[str, Any]:
    """Alert burden and responsiveness, over alerts with event time >= ``since`` (all when None).

    Keys: ``alerts`` (count), ``patient_days`` (see :func:`_patient_days`),
    ``alerts_per_patient_day`` (None when there are no patient-days), ``acknowledged`` (alerts with
    an acknowledgement, whatever their state now), ``median_time_to_ack_s`` and
    ``p90_time_to_ack_s`` (``acknowledged_at - raised_at``; linear-interpolated quantiles; None
    when nothing was acknowledged), ``by_state`` (every state, 0 when none), ``by_kind`` (both
    kinds, 0 when none), ``escalated`` (alerts escalated at least once), ``suppressed``
    (alerts not stored because an episode of theirs was open, by their event time), ``since``.
    """
    start = utc(since) if since is not None else None
    alert_filter = [Alert.silent.is_(False)] + ([Alert.event_time >= start] if start is not None else [])

    by_state = dict.fromkeys(ALERT_STATES, 0)
    for state, n in session.execute(select(Alert.state, func.count()).where(*alert_filter).group_by(Alert.state)):
        by_state[state] = n
    by_kind = dict.fromkeys(ALERT_KINDS, 0)
    for kind, n in session.execute(select(Alert.kind, func.count()).where(*alert_filter).group_by(Alert.kind)):
        by_kind[kind] = n
    total = sum(by_state.values())
    escalated = session.scalar(select(func.count()).select_from(Alert).where(*alert_filter, Alert.escalation_level > 0))
    ack_times = sorted(
        (utc(acked) - utc(raised)).total_seconds()
        for raised, acked in session.execute(
            select(Alert.raised_at, Alert.acknowledged_at).where(*alert_filter, Alert.acknowledged_at.is_not(None))
        )
    )
    suppressed_q = select(func.count()).select_from(AlertEvent).where(AlertEvent.action == "suppressed")
    if start is not None:
        # By the dropped alert's event time, like the alerts. ISO strings of UTC times from one
        # formatter sort like the times ('+' sorts before '.', so whole seconds come first).
        suppressed_q = suppressed_q.where(AlertEvent.detail["event_time"].as_string() >= start.isoformat())
    patient_days = _patient_days(session, start)
    return {
        "since": start,
        "alerts": total,
        "patient_days": patient_days,
        "alerts_per_patient_day": total / patient_days if patient_days > 0 else None,
        "acknowledged": len(ack_times),
        "median_time_to_ack_s": _quantile(ack_times, 0.5),
        "p90_time_to_ack_s": _quantile(ack_times, 0.9),
        "by_state": by_state,
        "by_kind": by_kind,
        "escalated": escalated or 0,
        "suppressed": session.scalar(suppressed_q) or 0,
    }
