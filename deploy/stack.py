"""``icuwatch stack up|down|status``: broker, tritonserver, the database schema and the API/board."""

from __future__ import annotations

from icuwatch.core.settings import Settings
from icuwatch.deploy import api_server, broker, triton


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def up(settings: Settings) -> dict:
    from icuwatch.storage import db

    broker.start(settings)
    triton.start(settings)
    db.upgrade(settings.database_url)
    api_server.start(settings)
    return status(settings)


def down(settings: Settings) -> dict:
    return {
        "api_stopped": api_server.stop(settings),
        "triton_stopped": triton.stop(settings),
        "broker_stopped": broker.stop(settings),
    }


def status(settings: Settings) -> dict:
    from icuwatch.storage import db

    try:
        revision = db.current_revision(settings.database_url)
    except Exception as exc:
        revision = f"unreachable: {type(exc).__name__}"
    return {
        "broker": broker.status(settings),
        "triton": triton.status(settings),
        "database": {"url": _redacted(settings.database_url), "revision": revision},
        "api": api_server.status(settings),
    }
