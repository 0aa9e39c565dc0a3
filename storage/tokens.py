"""API bearer tokens: only their SHA-256 is stored; the plaintext is shown once, at creation.

Functions take a :class:`~sqlalchemy.orm.Session` and leave transaction control to the caller.
"""

from __future__ import annotations

import hashlib
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterator, Optional, Sequence

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from icuwatch.core.settings import Settings
from icuwatch.storage.models import TOKEN_ROLES, ApiToken
from icuwatch.storage.repository import _now


def token_sha256(token: str) -> str:
    """Hex SHA-256 of a token's UTF-8 bytes, as stored in ``api_tokens.token_sha256``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_ttl_s(settings: Settings, role: str) -> float:
    """Lifetime of a new token with ``role``: a shift for clinical roles, longer for operators; 0: none."""
    return settings.api_token_ttl_s if role in ("nurse", "physician") else settings.api_operator_token_ttl_s


def create_token(session: Session, user: str, role: str, ttl_s: float = 0.0) -> str:
    """Create a token for ``user`` with ``role`` (one of nurse, physician, engineer, admin) valid for
    ``ttl_s`` seconds (0: until revoked) and return its plaintext, which is not stored anywhere."""
    if role not in TOKEN_ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {TOKEN_ROLES}")
    if not user or not user.strip():
        raise ValueError("a token needs a user name")
    if ttl_s < 0:
        raise ValueError("a token lifetime cannot be negative")
    token = secrets.token_urlsafe(32)
    now = _now()
    expires = now + timedelta(seconds=ttl_s) if ttl_s > 0 else None
    session.add(
        ApiToken(token_sha256=token_sha256(token), user=user.strip(), role=role, created_at=now, expires_at=expires)
    )
    session.flush()
    return token


def token_state(row: ApiToken, now: Optional[datetime] = None) -> str:
    """``active``, ``expired`` or ``revoked``."""
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= (now or _now()):
        return "expired"
    return "active"


def _active(session: Session, token: str) -> Optional[ApiToken]:
    if not token:
        return None
    row = session.scalars(select(ApiToken).where(ApiToken.token_sha256 == token_sha256(token))).one_or_none()
    return row if row is not None and token_state(row) == "active" else None


def authenticate(session: Session, token: str) -> Optional[tuple[str, str]]:
    """``(user, role)`` of a valid token; None for an unknown, empty, expired or revoked one."""
    row = _active(session, token)
    return (row.user, row.role) if row is not None else None


def revoke_token(session: Session, token: str) -> bool:
    """Revoke a token; True if it was valid until now, False if unknown, expired or already revoked."""
    row = _active(session, token)
    if row is None:
        return False
    row.revoked_at = _now()
    session.flush()
    return True


@dataclass(frozen=True)
class TokenInfo:
    """What ``icuwatch token list`` shows of a token: never the token or its hash."""

    id: int
    user: str
    role: str
    created_at: datetime
    expires_at: Optional[datetime]
    state: str


def list_tokens(session: Session) -> list[TokenInfo]:
    """Every token, oldest first."""
    now = _now()
    return [
        TokenInfo(r.id, r.user, r.role, r.created_at, r.expires_at, token_state(r, now))
        for r in session.scalars(select(ApiToken).order_by(ApiToken.id))
    ]


def revoke_tokens(session: Session, ids: Sequence[int] = (), user: Optional[str] = None) -> list[int]:
    """Revoke the tokens with these ids and, with ``user``, all of that user's tokens. Returns the ids
    newly revoked (expired ones too: revoking is final, expiry is not if the lifetime setting changes)."""
    clauses: list[ColumnElement[bool]] = [ApiToken.id.in_(list(ids))] if ids else []
    if user:
        clauses.append(ApiToken.user == user.strip())
    if not clauses:
        return []
    rows = session.scalars(select(ApiToken).where(or_(*clauses), ApiToken.revoked_at.is_(None))).all()
    now = _now()
    for row in rows:
        row.revoked_at = now
    session.flush()
    return sorted(r.id for r in rows)


@contextmanager
def _session(settings: Settings) -> Iterator[Session]:
    """A transaction on the configured database, migrated first (idempotent)."""
    from icuwatch.storage import db

    db.upgrade(settings.database_url)
    engine = db.make_engine(settings.database_url)
    try:
        with db.session_factory(engine).begin() as session:
            yield session
    finally:
        engine.dispose()


def issue_token(settings: Settings, user: str, role: str, ttl_s: Optional[float] = None) -> str:
    """Create an API token for ``user`` with ``role`` in the configured database and return it.

    ``ttl_s`` defaults to the role's lifetime setting (:func:`token_ttl_s`). The token is shown only
    here: the database keeps what ``authenticate`` needs to recognise it, nothing more.
    """
    with _session(settings) as session:
        return create_token(session, user, role, token_ttl_s(settings, role) if ttl_s is None else ttl_s)


def list_issued(settings: Settings) -> list[TokenInfo]:
    """:func:`list_tokens` on the configured database."""
    with _session(settings) as session:
        return list_tokens(session)


def revoke_issued(settings: Settings, ids: Sequence[int] = (), user: Optional[str] = None) -> list[int]:
    """:func:`revoke_tokens` on the configured database."""
    with _session(settings) as session:
        return revoke_tokens(session, ids, user)
