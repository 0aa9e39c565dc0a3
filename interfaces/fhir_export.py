"""FHIR out: an alert (and the score it came from) as FHIR R4 resources.

For every alert episode three resources are built, each validated with ``fhir.resources``:

* ``RiskAssessment`` -- the model's prediction: status ``final``, ``subject`` the patient,
  ``occurrenceDateTime`` the score's *event time*, ``method`` the model (and whether Triton or the
  in-process fallback scored it), ``prediction[0]`` the outcome ("clinical deterioration" or
  "sepsis") with ``probabilityDecimal`` = the risk; ``basis`` points at contained NEWS2 and qSOFA
  Observations, and a ``note`` gives NEWS2, qSOFA, the per-modality data age (staleness) and,
  when the alert or its score carries them, the per-modality contributions to the alert's risk.
* ``Flag`` -- the banner on the patient's chart: ``active`` while the alert is raised or
  acknowledged, ``inactive`` once resolved; ``period`` = episode start (to resolution).
* ``DetectedIssue`` -- the clinical-decision-support finding: severity ``high``,
  ``identifiedDateTime`` = the alert's event time, ``implicated`` = the RiskAssessment; status
  ``preliminary`` until a clinician has acknowledged it, then ``final``.

EHRs show them on different screens (banner flags, CDS worklists, risk views), hence all three.

**Why the ``fhir.resources.R4B`` models stand for R4.** ``fhir.resources`` 8 ships FHIR R5 in its
top-level package and the R4 line only as ``R4B`` (4.3); there is no separate R4 (4.0.1) package.
RiskAssessment, Flag and DetectedIssue did not change between R4 and R4B, whereas R5 did change
them (DetectedIssue ``patient`` -> ``subject``, new ``category``/``encounter``; RiskAssessment's
reason elements), so the R4B models validate exactly the R4 shape. The models forbid unknown
elements, and ``tests/interfaces/test_fhir.py`` also checks every element against the R4 spec's element
lists (:data:`R4_ELEMENTS`), so no R5-only field can slip into the JSON.

Identity: every resource of an alert carries ``identifier`` = (:data:`ALERT_IDENTIFIER_SYSTEM`,
alert id) and a deterministic logical id (:func:`resource_id`), so pushing the same alert twice
updates rather than duplicates (see :mod:`icuwatch.interfaces.fhir_push`).

The patient: every ``subject`` (``patient`` of a DetectedIssue) is a logical reference by
identifier only, ``{"type": "Patient", "identifier": {"system": <the EHR's MRN system>, "value":
<the hospital's identifier, exactly as PID-3 / PatientID gave it>}}`` (:func:`subject`). The system
is ``settings.fhir_patient_identifier_system`` (``ICUWATCH_FHIR_PATIENT_IDENTIFIER_SYSTEM``), passed
in by the callers as ``patient_system``. No ``Patient/<id>`` literal reference: icuwatch does not
know the EHR's logical ids, and guessing one from the MRN points at a resource the EHR lacks (or
another patient's).

Not for clinical use: every resource is tagged ``not-for-clinical-use`` in ``meta.tag``.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Any, Mapping, Optional
from urllib.parse import quote

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.detectedissue import DetectedIssue
from fhir.resources.R4B.flag import Flag
from fhir.resources.R4B.riskassessment import RiskAssessment
from sqlalchemy import select
from sqlalchemy.orm import Session

from icuwatch.storage.models import Score as ScoreRow
from icuwatch.storage.repository import utc

ALERT_IDENTIFIER_SYSTEM = "urn:icuwatch:alert"
"""Identifier system of the resources made from an alert; the value is the alert id."""
PATIENT_IDENTIFIER_SYSTEM = "urn:icuwatch:patient"
"""Default identifier system of the patient ids in subject references (the settings' default of
``fhir_patient_identifier_system``; a site sets its EHR's MRN system URI)."""
MODEL_SYSTEM = "urn:icuwatch:model"
TAG_SYSTEM = "urn:icuwatch:tag"
_UUID_NAMESPACE = uuid.UUID("5b0f5c8e-6a57-4c1f-9d1e-1c2b7e0a1c55")

OUTCOME_TEXT = {"deterioration": "clinical deterioration", "sepsis": "sepsis"}
LIVENESS_KIND = "data_liveness"
"""An alert that the patient's vital signs stopped arriving: no risk was assessed, so it has a Flag
and a DetectedIssue but no RiskAssessment."""
LIVENESS_TEXT = "icuwatch: no vital signs received (monitor off or network down?)"
"""``prediction[0].outcome.text`` per alert kind."""

RESOURCE_TYPES = ("RiskAssessment", "Flag", "DetectedIssue")

_DOMAIN_RESOURCE = {
    "resourceType",
    "id",
    "meta",
    "implicitRules",
    "language",
    "text",
    "contained",
    "extension",
    "modifierExtension",
}
R4_ELEMENTS: dict[str, frozenset[str]] = {
    "RiskAssessment": frozenset(
        _DOMAIN_RESOURCE
        | {
            "identifier",
            "basedOn",
            "parent",
            "status",
            "method",
            "code",
            "subject",
            "encounter",
            "occurrenceDateTime",
            "occurrencePeriod",
            "condition",
            "performer",
            "reasonCode",
            "reasonReference",
            "basis",
            "prediction",
            "mitigation",
            "note",
        }
    ),
    "Flag": frozenset(
        _DOMAIN_RESOURCE | {"identifier", "status", "category", "code", "subject", "period", "encounter", "author"}
    ),
    "DetectedIssue": frozenset(
        _DOMAIN_RESOURCE
        | {
            "identifier",
            "status",
            "code",
            "severity",
            "patient",
            "identifiedDateTime",
            "identifiedPeriod",
            "author",
            "implicated",
            "evidence",
            "detail",
            "reference",
            "mitigation",
        }
    ),
    "Observation": frozenset(
        _DOMAIN_RESOURCE
        | {
            "identifier",
            "basedOn",
            "partOf",
            "status",
            "category",
            "code",
            "subject",
            "focus",
            "encounter",
            "effectiveDateTime",
            "effectivePeriod",
            "effectiveTiming",
            "effectiveInstant",
            "issued",
            "performer",
            "valueQuantity",
            "valueCodeableConcept",
            "valueString",
            "valueBoolean",
            "valueInteger",
            "valueRange",
            "valueRatio",
            "valueSampledData",
            "valueTime",
            "valueDateTime",
            "valuePeriod",
            "dataAbsentReason",
            "interpretation",
            "note",
            "bodySite",
            "method",
            "specimen",
            "device",
            "referenceRange",
            "hasMember",
            "derivedFrom",
            "component",
        }
    ),
}
"""Top-level elements of these resources in FHIR R4 (4.0.1), for the no-R5-fields check."""


# -------------------------------------------------------------------------------------------- helpers


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def fhir_time(t: float | datetime) -> str:
    """Epoch seconds or an aware datetime as a FHIR ``dateTime`` (UTC, ``Z``)."""
    s = utc(t).isoformat()
    return s[:-6] + "Z" if s.endswith("+00:00") else s


def resource_id(alert_id: str) -> str:
    """Deterministic FHIR logical id for the resources of an alert (alert ids hold ':' which FHIR
    ids may not): ``icuwatch-`` + 40 hex digits of its SHA-256. Same for every resource type."""
    return "icuwatch-" + hashlib.sha256(alert_id.encode()).hexdigest()[:40]


def full_url(resource_type: str, alert_id: str) -> str:
    """``urn:uuid:`` name of one resource of an alert inside a transaction Bundle (stable)."""
    return f"urn:uuid:{uuid.uuid5(_UUID_NAMESPACE, f'{resource_type}/{alert_id}')}"


def _identifier(alert_id: str) -> list[dict[str, str]]:
    return [{"system": ALERT_IDENTIFIER_SYSTEM, "value": alert_id}]


def subject(patient_id: str, patient_system: str = PATIENT_IDENTIFIER_SYSTEM) -> dict[str, Any]:
    """The patient as a logical reference by identifier only: ``patient_system`` (the EHR's MRN
    system) and the hospital's identifier exactly; no ``Patient/<id>`` (see the module doc)."""
    return {"type": "Patient", "identifier": {"system": patient_system, "value": patient_id}}


def _meta() -> dict[str, Any]:
    return {
        "tag": [
            {
                "system": TAG_SYSTEM,
                "code": "not-for-clinical-use",
                "display": "Simulated / research output, not for clinical use",
            }
        ]
    }


def _staleness(score: Any) -> dict[str, Optional[float]]:
    st = _get(score, "staleness")
    if st is None:
        st = _get(score, "staleness_s")
    return dict(st or {})


def _contributions(alert: Any, score: Any, kind: str) -> dict[str, Any]:
    """Per modality, the contributions to the alert's kind of risk: the alert's own, else its
    kind's entry in the score's ``{kind: {modality: value}}`` (a flat ``{name: value}`` mapping
    is taken as it is)."""
    own = _get(alert, "contributions")
    if own:
        return dict(own)
    c = _get(score, "contributions") if score is not None else None
    if not c:
        return {}
    if any(isinstance(v, dict) for v in c.values()):
        return dict(c.get(kind) or {})
    return dict(c)


def _fmt_age(v: Optional[float]) -> str:
    if v is None:
        return "never seen"
    return f"{v:.0f} s"


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json")


# ------------------------------------------------------------------------------------------ score lookup


def score_for_alert(session: Session, alert: Any) -> Optional[ScoreRow]:
    """The score an alert came from: same patient and model at the alert's event time, else that
    model's newest score at or before it, else None (scores are kept per revision-free key, so the
    stored row is the final revision)."""
    t = utc(_get(alert, "event_time"))
    q = select(ScoreRow).where(
        ScoreRow.patient_id == _get(alert, "patient_id"),
        ScoreRow.model == _get(alert, "model"),
        ScoreRow.event_time <= t,
    )
    return session.scalars(q.order_by(ScoreRow.event_time.desc()).limit(1)).first()


# -------------------------------------------------------------------------------------------- builders


def risk_assessment(
    alert: Any, score: Any = None, *, patient_system: str = PATIENT_IDENTIFIER_SYSTEM
) -> dict[str, Any]:
    """A validated R4 RiskAssessment (as JSON dict) for ``alert`` (a storage row, a
    ``schemas.Alert`` or a mapping) and the ``score`` it came from (row, schema or None);
    ``patient_system``: the identifier system of the subject (:func:`subject`).

    ``occurrenceDateTime`` is the score's event time (the alert's when no score is given).
    """
    alert_id = _get(alert, "alert_id")
    pid = _get(alert, "patient_id")
    kind = _get(alert, "kind")
    news2 = _get(score, "news2") if score is not None else None
    qsofa = _get(score, "qsofa") if score is not None else None
    news2 = _get(alert, "news2") if news2 is None else news2
    qsofa = _get(alert, "qsofa") if qsofa is None else qsofa
    model = _get(score, "model") if score is not None else None
    model = model or _get(alert, "model")
    source = (_get(score, "source") if score is not None else None) or _get(alert, "source")
    when = _get(score, "event_time") if score is not None else None
    when = fhir_time(when if when is not None else _get(alert, "event_time"))

    ages = _staleness(score) if score is not None else {}
    lines = [f"NEWS2 {news2}", f"qSOFA {qsofa}", f"scored by {model} ({source})"]
    if ages:
        lines.append("data age at scoring: " + ", ".join(f"{k} {_fmt_age(v)}" for k, v in sorted(ages.items())))
    contributions = _contributions(alert, score, kind)
    if contributions:
        lines.append(
            "contributions: "
            + ", ".join(
                f"{k} {v:+.3f}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in contributions.items()
            )
        )
    lines.append("Not for clinical use.")

    def observation(oid: str, text: str, value: int) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "code": {"text": text},
            "subject": subject(pid, patient_system),
            "effectiveDateTime": when,
            "valueInteger": int(value),
        }

    ra = {
        "resourceType": "RiskAssessment",
        "id": resource_id(alert_id),
        "meta": _meta(),
        "contained": [observation("news2", "NEWS2 total score", news2), observation("qsofa", "qSOFA score", qsofa)],
        "identifier": _identifier(alert_id),
        "status": "final",
        "method": {
            "coding": [{"system": MODEL_SYSTEM, "code": model, "display": model}],
            "text": f"{model} via {source}",
        },
        "code": {"text": "ICU early warning risk"},
        "subject": subject(pid, patient_system),
        "occurrenceDateTime": when,
        "basis": [
            {"reference": "#news2", "display": f"NEWS2 {news2}"},
            {"reference": "#qsofa", "display": f"qSOFA {qsofa}"},
        ],
        "prediction": [
            {
                "outcome": {"text": OUTCOME_TEXT.get(kind, kind)},
                "probabilityDecimal": float(_get(alert, "risk")),
                "rationale": f"{kind} alert episode since {fhir_time(_get(alert, 'episode_start'))}",
            }
        ],
        "note": [{"text": "; ".join(lines), "time": when}],
    }
    return _dump(RiskAssessment.model_validate(ra))


def flag(alert: Any, *, patient_system: str = PATIENT_IDENTIFIER_SYSTEM) -> dict[str, Any]:
    """A validated R4 Flag: active while the alert is raised or acknowledged, inactive once
    resolved (``period.end`` = resolution time)."""
    alert_id = _get(alert, "alert_id")
    kind = _get(alert, "kind")
    state = _get(alert, "state") or "raised"
    period: dict[str, str] = {"start": fhir_time(_get(alert, "episode_start"))}
    resolved_at = _get(alert, "resolved_at")
    if state == "resolved" and resolved_at is not None:
        period["end"] = fhir_time(resolved_at)
    f = {
        "resourceType": "Flag",
        "id": resource_id(alert_id),
        "meta": _meta(),
        "identifier": _identifier(alert_id),
        "status": "inactive" if state == "resolved" else "active",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/flag-category",
                        "code": "clinical",
                        "display": "Clinical",
                    }
                ]
            }
        ],
        "code": {
            "text": LIVENESS_TEXT if kind == LIVENESS_KIND else f"icuwatch: high risk of {OUTCOME_TEXT.get(kind, kind)}"
        },
        "subject": subject(_get(alert, "patient_id"), patient_system),
        "period": period,
    }
    return _dump(Flag.model_validate(f))


def detected_issue(alert: Any, *, patient_system: str = PATIENT_IDENTIFIER_SYSTEM) -> dict[str, Any]:
    """A validated R4 DetectedIssue (severity high) implicating the alert's RiskAssessment;
    ``preliminary`` until acknowledged or resolved, then ``final``."""
    alert_id = _get(alert, "alert_id")
    kind = _get(alert, "kind")
    state = _get(alert, "state") or "raised"
    if kind == LIVENESS_KIND:
        detail = f"no vital signs received since {fhir_time(_get(alert, 'episode_start'))}, state {state}"
    else:
        detail = (
            f"{OUTCOME_TEXT.get(kind, kind)} risk {float(_get(alert, 'risk')):.2f} "
            f"(NEWS2 {_get(alert, 'news2')}, qSOFA {_get(alert, 'qsofa')}), state {state}"
        )
    if _get(alert, "acknowledged_by"):
        detail += f"; acknowledged by {_get(alert, 'acknowledged_by')}"
    d = {
        "resourceType": "DetectedIssue",
        "id": resource_id(alert_id),
        "meta": _meta(),
        "identifier": _identifier(alert_id),
        "status": "preliminary" if state == "raised" else "final",
        "code": {"text": f"icuwatch {kind} alert"},
        "severity": "high",
        "patient": subject(_get(alert, "patient_id"), patient_system),
        "identifiedDateTime": fhir_time(_get(alert, "event_time")),
        "detail": detail,
    }
    if kind != LIVENESS_KIND:
        d["implicated"] = [{"reference": f"RiskAssessment/{resource_id(alert_id)}"}]
    return _dump(DetectedIssue.model_validate(d))


def resources_for_alert(
    alert: Any, score: Any = None, *, patient_system: str = PATIENT_IDENTIFIER_SYSTEM
) -> list[dict[str, Any]]:
    """``[RiskAssessment, Flag, DetectedIssue]`` of one alert (no RiskAssessment for a data-liveness one)."""
    resources = [flag(alert, patient_system=patient_system), detected_issue(alert, patient_system=patient_system)]
    if _get(alert, "kind") == LIVENESS_KIND:
        return resources
    return [risk_assessment(alert, score, patient_system=patient_system), *resources]


def conditional_url(resource_type: str, alert_id: str) -> str:
    """``Type?identifier=system|value``: the conditional-update target of one resource."""
    return f"{resource_type}?identifier={quote(ALERT_IDENTIFIER_SYSTEM + '|' + alert_id, safe=':|')}"


def bundle_for_alert(
    alert: Any, score: Any = None, *, type: str = "transaction", patient_system: str = PATIENT_IDENTIFIER_SYSTEM
) -> dict[str, Any]:
    """A validated R4 Bundle of the alert's RiskAssessment, Flag and DetectedIssue.

    ``type="transaction"`` (default, for pushing): each entry is a conditional update
    ``PUT Type?identifier=urn:icuwatch:alert|<alert id>`` with a stable ``urn:uuid`` fullUrl, and
    the DetectedIssue implicates the RiskAssessment by that fullUrl, so the server creates each
    resource once and replaces it on every later push (idempotent, and a resolved alert's push
    turns the Flag inactive). Resource ids are left out: the server assigns them.
    ``type="collection"``: the same resources with their deterministic ids, no requests.
    In both, the DetectedIssue implicates the RiskAssessment by its ``urn:uuid`` fullUrl.
    ``patient_system``: the identifier system of every subject (:func:`subject`).
    """
    if type not in ("transaction", "collection"):
        raise ValueError(f"bundle type {type!r}: expected transaction or collection")
    alert_id = _get(alert, "alert_id")
    entries = []
    ra_url = full_url("RiskAssessment", alert_id)
    for res in resources_for_alert(alert, score, patient_system=patient_system):
        rtype = res["resourceType"]
        res = dict(res)
        if rtype == "DetectedIssue" and "implicated" in res:  # resolvable inside the Bundle
            res["implicated"] = [{"reference": ra_url}]
        entry: dict[str, Any] = {"fullUrl": full_url(rtype, alert_id), "resource": res}
        if type == "transaction":
            res.pop("id", None)
            entry["request"] = {"method": "PUT", "url": conditional_url(rtype, alert_id)}
        entries.append(entry)
    b = {
        "resourceType": "Bundle",
        "type": type,
        "identifier": {"system": ALERT_IDENTIFIER_SYSTEM, "value": alert_id},
        "entry": entries,
    }
    if type == "collection":
        b["timestamp"] = fhir_time(_get(alert, "event_time"))
    return _dump(Bundle.model_validate(b))


def searchset(
    resources: list[dict[str, Any]], base_url: str, self_url: str, total: Optional[int] = None
) -> dict[str, Any]:
    """A validated searchset Bundle of ``resources``; ``total`` = all matches (default: as many
    as given)."""
    base = base_url.rstrip("/")
    b = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources) if total is None else total,
        "link": [{"relation": "self", "url": self_url}],
        "entry": [
            {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in resources
        ],
    }
    return _dump(Bundle.model_validate(b))
