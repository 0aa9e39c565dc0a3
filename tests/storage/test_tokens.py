"""API tokens in the storage layer: expiry, revocation, listing, and migration 0005 (``expires_at``).

On SQLite and on PostgreSQL (the conftest's ``url`` / ``sessions`` fixtures).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.orm import Session, sessionmaker

from icuwatch.storage import db, tokens
from icuwatch.storage.models import ApiToken


def test_expired_and_revoked_tokens_do_not_authenticate(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        shift = tokens.create_token(s, "amy", "nurse", ttl_s=12 * 3600)
        forever = tokens.create_token(s, "scraper", "engineer")
        gone = tokens.create_token(s, "bo", "physician", ttl_s=60)
    with sessions.begin() as s:
        assert tokens.authenticate(s, shift) == ("amy", "nurse")
        assert tokens.authenticate(s, forever) == ("scraper", "engineer")
        row = s.scalars(sa.select(ApiToken).where(ApiToken.user == "bo")).one()
        row.expires_at = datetime.now(timezone.utc) - timedelta(microseconds=1)
    with sessions.begin() as s:
        assert tokens.authenticate(s, gone) is None
        assert not tokens.revoke_token(s, gone)  # expired: nothing left to revoke by its secret
        assert {t.user: t.state for t in tokens.list_tokens(s)} == {
            "amy": "active",
            "scraper": "active",
            "bo": "expired",
        }
        ids = {t.user: t.id for t in tokens.list_tokens(s)}
        assert tokens.revoke_tokens(s, user="amy") == [ids["amy"]]
        assert tokens.revoke_tokens(s, ids=[ids["amy"], ids["bo"], 999999]) == [ids["bo"]]
        assert tokens.revoke_tokens(s) == []
    with sessions.begin() as s:
        assert tokens.authenticate(s, shift) is None
        assert {t.user: t.state for t in tokens.list_tokens(s)} == {
            "amy": "revoked",
            "scraper": "active",
            "bo": "revoked",
        }
    with sessions.begin() as s, pytest.raises(ValueError):
        tokens.create_token(s, "cy", "nurse", ttl_s=-1)


def test_migration_0005_keeps_earlier_tokens_valid_and_downgrades(url: str) -> None:
    """Tokens created before 0005 have no expiry: they stay valid until revoked."""
    db.upgrade(url, "0004")
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO api_tokens (token_sha256, \"user\", role, created_at) VALUES (:h, 'old', 'admin', :t)"
                ),
                {"h": tokens.token_sha256("an-old-token"), "t": datetime.now(timezone.utc)},
            )
        db.upgrade(url)
        with db.session_factory(engine).begin() as s:
            assert tokens.authenticate(s, "an-old-token") == ("old", "admin")
            assert [t.expires_at for t in tokens.list_tokens(s)] == [None]
        engine.dispose()
        command.downgrade(db.alembic_config(url), "0004")
        assert "expires_at" not in {c["name"] for c in sa.inspect(engine).get_columns("api_tokens")}
        db.upgrade(url)
    finally:
        engine.dispose()
