"""JSON routes under ``/api``: who am I, alerts (list, acknowledge, resolve, audit trail), a
patient's timeline and the alert-quality summary.

Every route needs a valid bearer token (:mod:`icuwatch.api.auth`); acknowledging and resolving
need the nurse or physician role, and resolving a reason (kept in the audit trail). An alert comes
with its opening risk (``risk``, ``news2``: the score that raised it) and the patient's current one
(``current_*``: the newest score). Times are ISO-8601 UTC strings. Database work happens in plain
``def`` handlers, which FastAPI runs in its thread pool, one transaction per request.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Iterable, Literal, Optional

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, status
from pydantic import AfterValidator, BaseModel, Field, StringConstraints
from sqlalchemy import select
from sqlalchemy.orm import Session

from icuwatch.api.auth import CLINICAL_ROLES, OPERATOR_ROLES, Principal, current_user, require_roles
from icuwatch.storage import lifecycle
from icuwatch.storage import repository as repo
from icuwatch.storage.models import Alert as AlertRow
from icuwatch.storage.models import Patient as PatientRow
from icuwatch.storage.models import Score as ScoreRow

router = APIRouter(prefix="/api", tags=["api"])

AlertState = Literal["raised", "acknowledged", "resolved"]
AlertKind = Literal["deterioration", "sepsis", "data_liveness"]

_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid bearer token"},
}
_ROLE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_AUTH_RESPONSES,
    403: {"description": "The token's role may not do this"},
}


# ------------------------------------------------------------------------------------ response models


class Me(BaseModel):
    user: str
    role: str


class Alert(BaseModel):
    """An alert episode with the patient's current location."""

    alert_id: str
    patient_id: str
    kind: str
    risk: float
    news2: int
    qsofa: int
    model: str
    model_version: Optional[str] = None
    """The version of ``model`` whose score opened the episode (for a Triton model the version that
    answered, e.g. "2"); null when unknown (the fallback rules, data liveness, older alerts)."""
    source: str
    state: AlertState
    event_time: datetime
    episode_start: datetime
    raised_at: datetime
    acknowledged_by: Optional[str] = None
    acknowledged_at: Optional[datetime] = None
    ack_comment: Optional[str] = None
    resolved_at: Optional[datetime] = None
    resolved_by: Optional[str] = None
    escalated_at: Optional[datetime] = None
    escalation_level: int = 0
    unit: Optional[str] = None
    bed: Optional[str] = None
    admitted: bool = False
    """Whether ADT has admitted the patient (an admission on record). False: the data came with no
    ADT admission (taken in under ``ICUWATCH_UNADMITTED_DATA=accept``); the board says so."""
    contributions: Optional[dict[str, float]] = None
    """Per modality (vitals, waveforms, labs, cxr), its contribution to this alert's kind of risk
    in the score that opened it (rule model: risk minus the risk without that modality's data);
    null when that score had none."""
    current_risk: Optional[float] = None
    """This alert's kind of risk in the patient's newest score (``risk`` is the opening one); null
    when the patient has no score."""
    current_news2: Optional[int] = None
    """NEWS2 of the patient's newest score (``news2`` is the opening one)."""
    current_at: Optional[datetime] = None
    """Event time of the patient's newest score."""
    current_model: Optional[str] = None
    """Model of the patient's newest score (after a promotion or during a fallback it can differ
    from the one that opened the episode)."""
    current_model_version: Optional[str] = None
    """Version of ``current_model`` that gave the newest score; null when unknown."""


class AcknowledgeBody(BaseModel):
    comment: Optional[str] = Field(None, max_length=2000)


def _not_blank(text: str) -> str:
    """Stripped as Python strips (every Unicode whitespace, control separators included): pydantic's
    ``strip_whitespace`` keeps some of them, which let a reason of one U+001F through."""
    text = text.strip()
    if not text:
        raise ValueError("a reason is required")
    return text


class ResolveBody(BaseModel):
    reason: Annotated[str, StringConstraints(max_length=2000), AfterValidator(_not_blank)]
    """Why it is resolved (required, not blank): kept in the 'resolved' audit event's detail."""


class AlertEvent(BaseModel):
    """One entry of an alert's audit trail."""

    alert_id: str
    action: Literal["raised", "acknowledged", "resolved", "escalated", "suppressed"]
    at: datetime
    actor: str
    """The user for acknowledgements and resolutions, 'system' otherwise."""
    detail: dict[str, Any] = {}


class Patient(BaseModel):
    patient_id: str
    unit: Optional[str] = None
    bed: Optional[str] = None
    age: Optional[float] = None
    sex: Optional[str] = None
    admitted_at: Optional[datetime] = None
    discharged_at: Optional[datetime] = None
    admitted: bool = False
    """Whether ADT has admitted the patient (``admitted_at`` set; see :class:`Alert`)."""


class TimelineScore(BaseModel):
    event_time: datetime
    deterioration_risk: float
    sepsis_risk: float
    news2: int
    qsofa: int
    source: str
    model: str
    model_version: Optional[str] = None
    """The version of ``model`` that gave this score; null for the fallback rules and older scores."""
    staleness: dict[str, Optional[float]]
    """Per modality: seconds since its last message at this score, or null if never seen."""
    revision: int = 0
    contributions: Optional[dict[str, dict[str, float]]] = None
    """Per risk kind (deterioration, sepsis), per modality: its contribution to that risk (rule
    model: leave-one-modality-out risk difference); null when the model gave none."""


class Timeline(BaseModel):
    patient: Patient
    scores: list[TimelineScore]
    """Ascending event time (every model)."""
    alerts: list[Alert]
    """Ascending event time."""
    truncated: bool = False
    """True when more than ``limit`` scores or alerts matched (the newest are returned)."""


class Quality(BaseModel):
    """Alert burden and responsiveness over alerts with event time >= ``since``."""

    since: Optional[datetime] = None
    alerts: int
    patient_days: float
    """Sum over patients of the time they were observed (admission and scores), in days."""
    alerts_per_patient_day: Optional[float] = None
    acknowledged: int
    median_time_to_ack_s: Optional[float] = None
    """Median of acknowledged_at - raised_at, seconds (null when nothing was acknowledged)."""
    p90_time_to_ack_s: Optional[float] = None
    by_state: dict[str, int]
    by_kind: dict[str, int]
    escalated: int
    """Alerts escalated at least once for staying unacknowledged."""
    suppressed: int
    """Alerts not stored because an episode of the same patient and kind was still open."""


# ----------------------------------------------------------------------------------------- helpers


def _shown(s, alert_id: str) -> None:
    """Raise ``AlertNotFound`` for an alert the nurses cannot see (raised while its unit ran silent)."""
    if s.scalar(select(AlertRow.silent).where(AlertRow.alert_id == alert_id)):
        raise repo.AlertNotFound(f"no alert with id {alert_id!r}")


def _session(request: Request):
    return request.app.state.sessions.begin()


def _patients(session: Session, ids: Iterable[str]) -> dict[str, PatientRow]:
    ids = sorted(set(ids))
    if not ids:
        return {}
    rows = session.scalars(select(PatientRow).where(PatientRow.patient_id.in_(ids)))
    return {p.patient_id: p for p in rows}


def alert_out(a: AlertRow, patient: Optional[PatientRow], current: Optional[ScoreRow] = None) -> Alert:
    """The API shape of an alert row, with the patient's current unit and bed and, from
    ``current`` (the patient's newest score), the current risk."""
    return Alert(
        alert_id=a.alert_id,
        patient_id=a.patient_id,
        kind=a.kind,
        risk=a.risk,
        news2=a.news2,
        qsofa=a.qsofa,
        model=a.model,
        model_version=a.model_version,
        source=a.source,
        state=a.state,
        event_time=a.event_time,
        episode_start=a.episode_start,
        raised_at=a.raised_at,
        acknowledged_by=a.acknowledged_by,
        acknowledged_at=a.acknowledged_at,
        ack_comment=a.ack_comment,
        resolved_at=a.resolved_at,
        resolved_by=a.resolved_by,
        escalated_at=a.escalated_at,
        escalation_level=a.escalation_level or 0,
        unit=patient.unit if patient is not None else None,
        bed=patient.bed if patient is not None else None,
        admitted=patient is not None and patient.admitted_at is not None,
        contributions=a.contributions,
        current_risk=getattr(current, f"{a.kind}_risk", None) if current is not None else None,
        current_news2=current.news2 if current is not None else None,
        current_at=current.event_time if current is not None else None,
        current_model=current.model if current is not None else None,
        current_model_version=current.model_version if current is not None else None,
    )


def alerts_out(session: Session, alerts: list[AlertRow]) -> list[Alert]:
    pats = _patients(session, (a.patient_id for a in alerts))
    latest = lifecycle.latest_scores(session, (a.patient_id for a in alerts))
    return [alert_out(a, pats.get(a.patient_id), latest.get(a.patient_id)) for a in alerts]


def _one_alert(session: Session, alert_id: str) -> AlertRow:
    a = session.get(AlertRow, alert_id)
    if a is None or a.silent:  # silent: raised while its unit ran silent, not for the nurses
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no alert {alert_id!r}")
    return a


# ------------------------------------------------------------------------------------------ routes


@router.get("/me", response_model=Me, responses=_AUTH_RESPONSES, summary="Who the token belongs to")
def me(who: Principal = Depends(current_user)) -> Me:
    return Me(user=who.user, role=who.role)


@router.get("/alerts", response_model=list[Alert], responses=_AUTH_RESPONSES, summary="List alerts")
def list_alerts(
    request: Request,
    state: Optional[AlertState] = None,
    kind: Optional[AlertKind] = None,
    unit: Optional[str] = Query(None, description="the patient's current unit"),
    patient_id: Optional[str] = None,
    limit: int = Query(100, ge=1, le=1000),
    _: Principal = Depends(current_user),
) -> list[Alert]:
    """Alerts matching every given filter, newest event time first."""
    with _session(request) as s:
        rows = repo.list_alerts(s, state=state, kind=kind, patient_id=patient_id, unit=unit, limit=limit)
        return alerts_out(s, rows)


@router.post(
    "/alerts/{alert_id}/acknowledge",
    response_model=Alert,
    responses={
        **_ROLE_RESPONSES,
        404: {"description": "Unknown alert"},
        409: {"description": "The alert is not in state 'raised'"},
    },
    summary="Acknowledge a raised alert (nurse, physician)",
)
def acknowledge(
    request: Request,
    alert_id: str,
    body: Optional[AcknowledgeBody] = Body(None),
    who: Principal = Depends(require_roles(*CLINICAL_ROLES)),
) -> Alert:
    """Records who acknowledged (the token's user), when, and the optional comment."""
    comment = body.comment if body is not None else None
    with _session(request) as s:
        try:
            _shown(s, alert_id)
            a = repo.acknowledge(s, alert_id, who.user, comment=comment)
        except repo.AlertNotFound:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no alert {alert_id!r}") from None
        except repo.AlertStateError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
        return alerts_out(s, [a])[0]


@router.post(
    "/alerts/{alert_id}/resolve",
    response_model=Alert,
    responses={
        **_ROLE_RESPONSES,
        404: {"description": "Unknown alert"},
        409: {"description": "The alert cannot be resolved from its state"},
    },
    summary="Resolve an alert with a reason (nurse, physician)",
)
def resolve(
    request: Request,
    alert_id: str,
    body: ResolveBody,
    who: Principal = Depends(require_roles(*CLINICAL_ROLES)),
) -> Alert:
    """Records who resolved it, when and why (the reason is in the 'resolved' audit event);
    resolving a resolved alert changes nothing. If the patient's risk stays high, the worker
    raises a new alert of this kind after ``ICUWATCH_ALERT_REALERT_AFTER_RESOLVE_S``."""
    with _session(request) as s:
        try:
            _shown(s, alert_id)
            a = repo.resolve(s, alert_id, by=who.user, reason=body.reason)
        except repo.AlertNotFound:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no alert {alert_id!r}") from None
        except repo.AlertStateError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
        return alerts_out(s, [a])[0]


@router.get(
    "/alerts/{alert_id}/events",
    response_model=list[AlertEvent],
    responses={**_AUTH_RESPONSES, 404: {"description": "Unknown alert"}},
    summary="An alert's audit trail, oldest first",
)
def alert_events(request: Request, alert_id: str, _: Principal = Depends(current_user)) -> list[AlertEvent]:
    with _session(request) as s:
        _one_alert(s, alert_id)
        return [_event_out(e) for e in lifecycle.alert_events(s, alert_id)]


def _event_out(e: Any) -> AlertEvent:
    return AlertEvent.model_validate(e, from_attributes=True)


@router.get(
    "/patients/{patient_id}/timeline",
    response_model=Timeline,
    responses={**_AUTH_RESPONSES, 404: {"description": "Unknown patient"}},
    summary="A patient's scores and alerts over time",
)
def timeline(
    request: Request,
    patient_id: str,
    since: Optional[datetime] = Query(None, description="only scores/alerts from this time on (ISO-8601)"),
    limit: int = Query(2000, ge=1, le=20000, description="at most this many scores (the newest)"),
    _: Principal = Depends(current_user),
) -> Timeline:
    if since is not None and since.tzinfo is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail="since needs a time zone (e.g. Z)")
    with _session(request) as s:
        t = lifecycle.patient_timeline(s, patient_id, since=since, limit=limit)
        patient = t.get("patient")
        if patient is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no patient {patient_id!r}")
        return Timeline(
            patient=Patient.model_validate(patient, from_attributes=True).model_copy(
                update={"admitted": patient.admitted_at is not None}
            ),
            scores=[TimelineScore.model_validate(x, from_attributes=True) for x in t["scores"]],
            alerts=alerts_out(s, t["alerts"]),
            truncated=bool(t.get("truncated", False)),
        )


@router.get("/quality", response_model=Quality, responses=_AUTH_RESPONSES, summary="Alert-quality summary")
def quality(
    request: Request,
    since: Optional[datetime] = Query(None, description="only alerts raised from this time on (ISO-8601)"),
    _: Principal = Depends(current_user),
) -> Quality:
    """Alerts per patient-day, time to acknowledge, and the other alert-burden figures."""
    with _session(request) as s:
        return Quality.model_validate(lifecycle.alert_quality(s, since=since))


@router.get(
    "/shadow",
    response_model=dict[str, Any],
    responses={**_AUTH_RESPONSES, 403: {"description": "Only engineer and admin tokens"}},
    summary="Live shadow: the live model against the shadow (engineers)",
)
def shadow_report(
    request: Request,
    since: Optional[datetime] = Query(None, description="only scores and alerts from this event time on (ISO-8601)"),
    _: Principal = Depends(require_roles(*OPERATOR_ROLES)),
) -> dict[str, Any]:
    """What ``icuwatch shadow report --json`` prints (``storage/shadow_report.py``). Engineers and
    admins only: the shadow's would-be alerts are not for the nurses' screens."""
    from icuwatch.storage.shadow_report import report

    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    with _session(request) as s:
        return report(s, since)


@router.get(
    "/drift",
    response_model=dict[str, Any],
    responses={**_AUTH_RESPONSES, 403: {"description": "Only engineer and admin tokens"}},
    summary="Drift and alert-volume guards per unit (engineers)",
)
def drift_report(
    request: Request,
    current_h: float = Query(6.0, gt=0, le=24 * 90, description="current window, hours of event time"),
    reference_h: float = Query(168.0, gt=0, le=24 * 365, description="reference window before it, hours"),
    _: Principal = Depends(require_roles(*OPERATOR_ROLES)),
) -> dict[str, Any]:
    """What ``icuwatch drift report --json`` prints (``storage/drift_report.py``)."""
    from datetime import timedelta

    from icuwatch.storage.drift_report import report

    with _session(request) as s:
        return report(s, timedelta(hours=current_h), timedelta(hours=reference_h))
