"""Bearer-token authentication and role checks.

Tokens live in the database (``create_token`` / ``authenticate`` in the storage layer); the API
only ever sees the token the client sends. Every route that returns patient data depends on
:func:`current_user`; routes that change an alert depend on :func:`require_roles`.

* no token, or a token the database does not know (or expired or revoked): **401** with ``WWW-Authenticate: Bearer``;
* a valid token whose role may not do this: **403**.

The SSE stream and ``/docs`` also accept ``?token=`` (``EventSource`` and a browser tab cannot set
headers), see :func:`current_user_header_or_query`; the stream re-checks the token while it runs
(:func:`still_valid`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from icuwatch.storage import tokens
from icuwatch.storage.models import TOKEN_ROLES

ROLES = TOKEN_ROLES
CLINICAL_ROLES = ("nurse", "physician")
"""Who may acknowledge and resolve alerts."""
OPERATOR_ROLES = ("engineer", "admin")
"""Who may read the Prometheus metrics."""

_bearer = HTTPBearer(auto_error=False, description="A token from `icuwatch token create`.")


@dataclass(frozen=True)
class Principal:
    user: str
    role: str
    token: str = field(default="", repr=False, compare=False)
    """The credential it was authenticated with (the stream re-checks it while it runs)."""


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def _lookup(request: Request, token: Optional[str]) -> Principal:
    if not token:
        raise _unauthorized("missing bearer token")
    with request.app.state.sessions.begin() as session:
        found = tokens.authenticate(session, token)
    if found is None:
        raise _unauthorized("invalid, expired or revoked token")
    user, role = found
    return Principal(user=user, role=role, token=token)


def current_user(request: Request, creds: Optional[HTTPAuthorizationCredentials] = Depends(_bearer)) -> Principal:
    """The caller, from ``Authorization: Bearer <token>``."""
    return _lookup(request, creds.credentials if creds else None)


def current_user_header_or_query(
    request: Request,
    creds: Optional[HTTPAuthorizationCredentials] = Depends(_bearer),
    token: Optional[str] = Query(
        None, description="The bearer token, for clients that cannot set headers (EventSource)."
    ),
) -> Principal:
    """The caller, from the ``Authorization`` header or else the ``token`` query parameter."""
    return _lookup(request, creds.credentials if creds else token)


def still_valid(request: Request, who: Principal) -> bool:
    """Whether ``who``'s token is still valid (not revoked, not expired) now."""
    with request.app.state.sessions.begin() as session:
        return tokens.authenticate(session, who.token) is not None


def require_roles(*roles: str) -> Callable[..., Principal]:
    """A dependency: the authenticated caller, 403 unless their role is one of ``roles``."""

    def dependency(who: Principal = Depends(current_user)) -> Principal:
        if who.role not in roles:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"role {who.role!r} may not do this (needs one of {', '.join(roles)})",
            )
        return who

    return dependency
