"""Per-unit alert thresholds, versioned (``UnitThreshold``): the tuning writes a new active
version, a rollback re-activates the previous one, the worker reads the active ones."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from icuwatch.core.errors import OperatorError
from icuwatch.storage.models import UnitThreshold
from icuwatch.storage.repository import _now


def _deactivate(session: Session, unit: str, kind: str, model: str) -> int | None:
    """Deactivate the active version (returning it, None when there was none)."""
    was = session.scalar(
        select(UnitThreshold.version).where(
            UnitThreshold.unit == unit, UnitThreshold.kind == kind, UnitThreshold.model == model, UnitThreshold.active
        )
    )
    session.execute(
        update(UnitThreshold)
        .where(UnitThreshold.unit == unit, UnitThreshold.kind == kind, UnitThreshold.model == model)
        .values(active=False)
    )
    return was


def record(
    session: Session, unit: str, kind: str, model: str, threshold: float | None, actor: str, detail: dict[str, Any]
) -> int:
    """Add a version and make it the active one (``threshold`` None: the model's own); its number."""
    newest = session.scalar(
        select(func.max(UnitThreshold.version)).where(
            UnitThreshold.unit == unit, UnitThreshold.kind == kind, UnitThreshold.model == model
        )
    )
    was = _deactivate(session, unit, kind, model)
    version = (newest or 0) + 1
    session.add(
        UnitThreshold(
            unit=unit, kind=kind, model=model, version=version,
            threshold=None if threshold is None else float(threshold), active=True,
            created_by=actor, created_at=_now(), detail={**detail, "replaced_version": was},
        )
    )  # fmt: skip
    return version


def rollback(session: Session, unit: str, kind: str, model: str, actor: str) -> dict[str, Any]:
    """Go back to the threshold that was active before the active one: a new version carrying it,
    so who rolled back, and when, is kept like any tuning. Past the first version the new version
    carries no threshold: the unit alerts at the model's own again. Rollbacks in a row go further
    back."""
    rows = list(
        session.scalars(
            select(UnitThreshold)
            .where(UnitThreshold.unit == unit, UnitThreshold.kind == kind, UnitThreshold.model == model)
            .order_by(UnitThreshold.version)
        )
    )
    current = next((r for r in rows if r.active), None)
    if current is None or _effective(rows, current).threshold is None:
        raise OperatorError(f"{unit} {kind} ({model}): no unit threshold is in force; nothing to roll back")
    target = _previous_active(rows, current)
    restores = None if target is None else _effective(rows, target).version
    threshold = None if target is None else _effective(rows, target).threshold
    version = record(
        session, unit, kind, model, threshold, actor, {"rollback_of": current.version, "restores": restores}
    )
    return {
        "unit": unit, "kind": kind, "model": model, "threshold": threshold, "version": version,
        "rolled_back": current.version, "restores": restores,
    }  # fmt: skip


def _effective(rows: list[UnitThreshold], row: UnitThreshold) -> UnitThreshold:
    """The tuned version a row stands for: itself, or for a rollback the version it restores."""
    by_version = {r.version: r for r in rows}
    while row.detail.get("restores") is not None and row.detail["restores"] in by_version:
        row = by_version[row.detail["restores"]]
    return row


def _previous_active(rows: list[UnitThreshold], current: UnitThreshold) -> UnitThreshold | None:
    """The version in force before the one ``current`` stands for (None: the model's own)."""
    origin = _effective(rows, current)
    replaced = origin.detail.get("replaced_version")
    previous = next((r for r in rows if r.version == replaced), None)
    if previous is None or _effective(rows, previous).threshold is None:
        return None
    return previous


def models_in_force(session: Session, unit: str) -> set[str]:
    """The models with a unit threshold in force for ``unit`` (the default of ``--rollback``)."""
    return set(
        session.scalars(
            select(UnitThreshold.model).where(
                UnitThreshold.unit == unit, UnitThreshold.active, UnitThreshold.threshold.is_not(None)
            )
        )
    )


def active(session: Session, model: str) -> dict[tuple[str, str], float]:
    """Per (unit, kind), the active threshold for ``model``."""
    rows = session.execute(
        select(UnitThreshold.unit, UnitThreshold.kind, UnitThreshold.threshold).where(
            UnitThreshold.model == model, UnitThreshold.active, UnitThreshold.threshold.is_not(None)
        )
    )
    return {(unit, kind): float(t) for unit, kind, t in rows}


def history(session: Session, unit: str | None = None) -> list[dict[str, Any]]:
    q = select(UnitThreshold).order_by(
        UnitThreshold.unit, UnitThreshold.kind, UnitThreshold.model, UnitThreshold.version
    )
    if unit is not None:
        q = q.where(UnitThreshold.unit == unit)
    return [
        {
            "unit": r.unit, "kind": r.kind, "model": r.model, "version": r.version, "threshold": r.threshold,
            "active": r.active, "by": r.created_by, "at": r.created_at.isoformat(), **r.detail,
        }
        for r in session.scalars(q)
    ]  # fmt: skip
