"""API bearer tokens: only their SHA-256 is stored; the plaintext is shown once, at creation.

Functions take a :class:`~sqlalchemy.orm.Session` and leave transaction control to the caller.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from icuwatch.core.settings import Settings
from icuwatch.storage.models import TOKEN_ROLES, ApiToken
from icuwatch.storage.repository import _now


def token_sha256(token: str) -> str:
    """Hex SHA-256 of a token's UTF-8 bytes, as stored in ``api_tokens.token_sha256``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(session: Session, user: str, role: str) -> str:
    """Create a token for ``user`` with ``role`` (one of nurse, physician, engineer, admin) and
    return its plaintext, which is not stored anywhere."""
    if role not in TOKEN_ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {TOKEN_ROLES}")
    if not user or not user.strip():
        raise ValueError("a token needs a user name")
    token = secrets.token_urlsafe(32)
    session.add(ApiToken(token_sha256=token_sha256(token), user=user.strip(), role=role, created_at=_now()))
    session.flush()
    return token


def _active(session: Session, token: str) -> Optional[ApiToken]:
    if not token:
        return None
    return session.scalars(
        select(ApiToken).where(ApiToken.token_sha256 == token_sha256(token), ApiToken.revoked_at.is_(None))
    ).one_or_none()


def authenticate(session: Session, token: str) -> Optional[tuple[str, str]]:
    """``(user, role)`` of a valid token; None for an unknown, empty or revoked one."""
    row = _active(session, token)
    return (row.user, row.role) if row is not None else None


def revoke_token(session: Session, token: str) -> bool:
    """Revoke a token; True if it was valid until now, False if unknown or already revoked."""
    row = _active(session, token)
    if row is None:
        return False
    row.revoked_at = _now()
    session.flush()
    return True


def issue_token(settings: Settings, user: str, role: str) -> str:
    """Create an API token for ``user`` with ``role`` in the configured database and return it.

    The database is migrated first (idempotent). The token is shown only here: the database keeps
    what ``authenticate`` needs to recognise it, nothing more.
    """
    from icuwatch.storage import db

    db.upgrade(settings.database_url)
    engine = db.make_engine(settings.database_url)
    try:
        with db.session_factory(engine).begin() as session:
            return create_token(session, user, role)
    finally:
        engine.dispose()
