"""Read-only FHIR R4 search under ``/fhir`` (``application/fhir+json``), same bearer tokens as the
rest of the API (401 without a valid one; every role may read).

* ``GET /fhir/RiskAssessment?patient=<id>[&_count=N]`` -- one RiskAssessment **per alert**
  (not per score: alerts are the clinically meaningful events, carry a stable identifier that
  matches what :mod:`icuwatch.interfaces.fhir_push` sends, and a patient scored every 5 minutes
  would otherwise yield ~300 assessments a day). Each is built from the alert and the score it
  came from (``occurrenceDateTime`` = that score's event time). Newest first.
* ``GET /fhir/Flag?patient=<id>[&status=active|inactive][&_count=N]`` -- one Flag per alert.
* ``GET /fhir/DetectedIssue?patient=<id>[&_count=N]`` -- one DetectedIssue per alert.

``patient`` is the hospital's patient identifier (the ``identifier.value`` of every subject, whose
system is ``ICUWATCH_FHIR_PATIENT_IDENTIFIER_SYSTEM``; ``Patient/<id>`` is accepted too); ``_count``
(or ``limit``) defaults to 50, at most 1000; ``total`` is the number of all matches. An unknown
patient gives an empty searchset (FHIR search semantics), a missing ``patient`` a 400
OperationOutcome.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Literal, Optional

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from icuwatch.api.auth import Principal, current_user
from icuwatch.interfaces import fhir_export as fx
from icuwatch.storage.models import Alert as AlertRow

FHIR_JSON = "application/fhir+json"

router = APIRouter(prefix="/fhir", tags=["fhir"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {FHIR_JSON: {}}, "description": "A searchset Bundle"},
    400: {"content": {FHIR_JSON: {}}, "description": "OperationOutcome: missing patient"},
    401: {"description": "Missing or invalid bearer token"},
}


def _fhir(body: dict[str, Any], status_code: int = 200) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")),
        status_code=status_code,
        media_type=FHIR_JSON,
        headers={"Cache-Control": "no-store"},
    )


def _outcome(status_code: int, diagnostics: str) -> Response:
    return _fhir(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "required", "diagnostics": diagnostics}],
        },
        status_code,
    )


def _search(
    request: Request,
    patient: Optional[str],
    count: int,
    build: Callable[[Session, AlertRow], dict[str, Any]],
    state_in: Optional[tuple[str, ...]] = None,
    risk_only: bool = False,
) -> Response:
    if not patient:
        return _outcome(400, "the 'patient' search parameter is required")
    pid = patient.removeprefix("Patient/")
    with request.app.state.sessions.begin() as s:
        q = select(AlertRow).where(AlertRow.patient_id == pid, AlertRow.silent.is_(False))
        if state_in is not None:
            q = q.where(AlertRow.state.in_(state_in))
        if risk_only:  # a data-liveness alert assessed no risk
            q = q.where(AlertRow.kind != fx.LIVENESS_KIND)
        total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
        rows = s.scalars(q.order_by(AlertRow.event_time.desc(), AlertRow.alert_id).limit(count))
        resources = [build(s, a) for a in rows]
    base = str(request.base_url).rstrip("/") + "/fhir"
    return _fhir(fx.searchset(resources, base, str(request.url), total=total))


_PATIENT = Query(None, description="Patient id (or Patient/<id>)")
_COUNT = Query(None, alias="_count", ge=1, le=1000, description="page size (default 50)")
_LIMIT = Query(None, ge=1, le=1000, description="same as _count")


def _patient_system(request: Request) -> str:
    """The EHR's patient identifier system every subject carries (``ICUWATCH_FHIR_PATIENT_IDENTIFIER_SYSTEM``)."""
    return str(request.app.state.settings.fhir_patient_identifier_system)


def _n(count: Optional[int], limit: Optional[int]) -> int:
    return count or limit or 50


@router.get(
    "/RiskAssessment",
    response_class=Response,
    responses=_RESPONSES,
    summary="The patient's RiskAssessments, one per alert, newest first",
)
def risk_assessments(
    request: Request,
    patient: Optional[str] = _PATIENT,
    count: Optional[int] = _COUNT,
    limit: Optional[int] = _LIMIT,
    _: Principal = Depends(current_user),
) -> Response:
    system = _patient_system(request)
    return _search(
        request,
        patient,
        _n(count, limit),
        lambda s, a: fx.risk_assessment(a, fx.score_for_alert(s, a), patient_system=system),
        risk_only=True,
    )


@router.get(
    "/Flag",
    response_class=Response,
    responses=_RESPONSES,
    summary="The patient's alert Flags (active: raised/acknowledged; inactive: resolved)",
)
def flags(
    request: Request,
    patient: Optional[str] = _PATIENT,
    status: Optional[Literal["active", "inactive"]] = Query(None),
    count: Optional[int] = _COUNT,
    limit: Optional[int] = _LIMIT,
    _: Principal = Depends(current_user),
) -> Response:
    states = {None: None, "active": ("raised", "acknowledged"), "inactive": ("resolved",)}[status]
    system = _patient_system(request)
    return _search(request, patient, _n(count, limit), lambda s, a: fx.flag(a, patient_system=system), states)


@router.get(
    "/DetectedIssue",
    response_class=Response,
    responses=_RESPONSES,
    summary="The patient's alerts as DetectedIssues, newest first",
)
def detected_issues(
    request: Request,
    patient: Optional[str] = _PATIENT,
    count: Optional[int] = _COUNT,
    limit: Optional[int] = _LIMIT,
    _: Principal = Depends(current_user),
) -> Response:
    system = _patient_system(request)
    return _search(request, patient, _n(count, limit), lambda s, a: fx.detected_issue(a, patient_system=system))
