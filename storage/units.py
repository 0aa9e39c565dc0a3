"""Silent mode per unit: a unit can run the scoring model with its scores and alerts recorded but
not shown to its nurses, until an engineer turns it live (``icuwatch units silence|live``).

While a unit is silent, an alert of one of its patients (the patient's current unit, from ADT) is
stored with ``silent = true`` (``repository.store_alert``): the worker keeps its episode as for any
alert, but the board, the live stream, escalation, FHIR and the patient page leave it out, and its
scores are left off the patient page. A silent alert whose episode closes is resolved by the system
(nobody saw it to acknowledge it). Turning the unit live, in one transaction with the audit
event, shows its open silent alerts as new (``silent = false``, ``shown_at`` now: escalation counts
from then), so a deterioration that is still going on reaches the nurses at once; so does a
patient's open silent alert when ADT moves the patient to a unit that is not silent.

Every change is audited in ``unit_mode_events`` (who, when, why, the alerts shown).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from icuwatch.storage.models import UNIT_MODES, Patient, UnitMode, UnitModeEvent
from icuwatch.storage.repository import _insert, _now, _patient_is_silent, show_silent_alerts


class UnknownMode(ValueError):
    pass


def mode_of(session: Session, unit: str | None) -> str:
    """``silent`` or ``live`` (a unit without a row, or no unit, is live)."""
    if unit is None:
        return "live"
    return session.scalar(select(UnitMode.mode).where(UnitMode.unit == unit)) or "live"


def patient_is_silent(session: Session, patient_id: str) -> bool:
    """Whether the patient's current unit is silent."""
    return _patient_is_silent(session, patient_id)


def set_mode(session: Session, unit: str, mode: str, actor: str, reason: str | None = None) -> dict[str, Any]:
    """Put ``unit`` in ``mode``, audited. Going live shows the unit's open silent alerts."""
    if mode not in UNIT_MODES:
        raise UnknownMode(f"unknown unit mode {mode!r}; expected one of {', '.join(UNIT_MODES)}")
    was = mode_of(session, unit)
    now = _now()
    row = {"unit": unit, "mode": mode, "changed_by": actor, "changed_at": now, "reason": reason}
    insert = _insert(session, UnitMode.__table__).values(row)
    session.execute(insert.on_conflict_do_update(index_elements=["unit"], set_={c: insert.excluded[c] for c in row}))
    shown: list[str] = []
    if mode == "live":
        # Lock the unit's patients first, as store_alert does: an alert stored silent by a
        # transaction still running cannot then commit after this one and stay hidden.
        in_unit = list(session.scalars(select(Patient.patient_id).where(Patient.unit == unit).with_for_update()))
        shown = show_silent_alerts(session, in_unit, reason=f"unit {unit} went live")
    session.add(
        UnitModeEvent(unit=unit, mode=mode, actor=actor, at=now, reason=reason, detail={"was": was, "shown": shown})
    )
    return {"unit": unit, "mode": mode, "was": was, "shown": shown, "by": actor, "at": now.isoformat()}


def list_modes(session: Session) -> list[dict[str, Any]]:
    """Every unit with a mode row, and the units patients are in (live unless set)."""
    rows = {m.unit: m for m in session.scalars(select(UnitMode))}
    units = set(rows) | {u for u in session.scalars(select(Patient.unit).distinct()) if u}
    return [
        {
            "unit": u,
            "mode": rows[u].mode if u in rows else "live",
            "changed_by": rows[u].changed_by if u in rows else None,
            "changed_at": rows[u].changed_at.isoformat() if u in rows else None,
            "reason": rows[u].reason if u in rows else None,
        }
        for u in sorted(units)
    ]


def history(session: Session, unit: str | None = None) -> list[dict[str, Any]]:
    q = select(UnitModeEvent).order_by(UnitModeEvent.at, UnitModeEvent.id)
    if unit is not None:
        q = q.where(UnitModeEvent.unit == unit)
    return [
        {"unit": e.unit, "mode": e.mode, "by": e.actor, "at": e.at.isoformat(), "reason": e.reason, **e.detail}
        for e in session.scalars(q)
    ]
