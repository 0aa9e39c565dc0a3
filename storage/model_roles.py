"""Model roles set while the workers run (``ModelRole``): the newest row per role is in force."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from icuwatch.core.errors import OperatorError
from icuwatch.storage.models import ModelRole
from icuwatch.storage.repository import _now

ROLES = ("live", "shadow")


def current(session: Session) -> dict[str, str]:
    """Per role with a row, the model in force (``""`` for the shadow: none)."""
    newest = select(ModelRole.role, func.max(ModelRole.id).label("id")).group_by(ModelRole.role).subquery()
    rows = session.execute(select(ModelRole.role, ModelRole.model).join(newest, ModelRole.id == newest.c.id))
    return {role: model for role, model in rows}


def set_role(session: Session, role: str, model: str, actor: str, reason: str | None = None) -> dict[str, Any]:
    if role not in ROLES:
        raise OperatorError(f"unknown model role {role!r}; expected one of {', '.join(ROLES)}")
    was = current(session).get(role)
    session.add(ModelRole(role=role, model=model, set_by=actor, set_at=_now(), reason=reason))
    return {"role": role, "model": model, "was": was, "by": actor}


def promote_shadow(session: Session, actor: str, shadow_default: str = "", reason: str | None = None) -> dict[str, Any]:
    """The shadow becomes the live model and the shadow role is emptied, in one transaction.
    ``shadow_default``: the workers' own setting, when no role row names a shadow."""
    shadow = current(session).get("shadow", shadow_default)
    if not shadow:
        raise OperatorError("no shadow model to promote (set one with `icuwatch models shadow NAME`)")
    live = set_role(session, "live", shadow, actor, reason or "promoted from shadow")
    set_role(session, "shadow", "", actor, reason or f"{shadow} promoted to live")
    return {"live": shadow, "was_live": live["was"], "shadow": "", "by": actor}


def history(session: Session) -> list[dict[str, Any]]:
    return [
        {"role": r.role, "model": r.model, "by": r.set_by, "at": r.set_at.isoformat(), "reason": r.reason}
        for r in session.scalars(select(ModelRole).order_by(ModelRole.id))
    ]
