"""Engines, sessions and schema migrations.

``upgrade()`` runs Alembic programmatically with a Config built from this package's own
``alembic.ini`` and ``migrations/`` folder, so it works from any working directory and from an
installed or editable package. The same files serve the CLI::

    alembic -c storage/alembic.ini -x url=sqlite:///var/icuwatch.db upgrade head
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from icuwatch.core.settings import get_settings

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
ALEMBIC_INI = PACKAGE_DIR / "alembic.ini"
MIGRATIONS_DIR = PACKAGE_DIR / "migrations"

SQLITE_BUSY_TIMEOUT_MS = 10_000
"""How long a SQLite writer waits for the worker's or the API's lock before failing."""


def resolve_url(url: Optional[str | URL] = None) -> URL:
    """``url``, or the configured ``ICUWATCH_DATABASE_URL`` when None."""
    return make_url(url if url is not None else get_settings().database_url)


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API read while the worker writes; the busy timeout makes a second writer wait
    # for the lock instead of failing at once with "database is locked".
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()


def make_engine(url: Optional[str | URL] = None, **kwargs: Any) -> Engine:
    """Create an engine for ``url`` (default: settings' ``database_url``).

    For a SQLite file the parent directory is created, and every connection gets WAL mode and a
    busy timeout. Extra keyword arguments go to :func:`sqlalchemy.create_engine`.
    """
    u = resolve_url(url)
    if u.get_backend_name() == "sqlite":
        db = u.database
        if db and db != ":memory:" and not db.startswith("file:"):
            Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
        engine = create_engine(u, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(u, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions for ``engine``. Callers own the transaction: ``with factory.begin() as s: ...``.

    ``expire_on_commit=False`` so rows returned by the repository stay readable after commit.
    """
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: Optional[str | URL] = None) -> Config:
    """An Alembic Config for this package's migrations, targeting ``url``."""
    cfg = Config(str(ALEMBIC_INI))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Passed as an attribute, not via set_main_option: the ini parser would choke on a '%' in
    # a URL-encoded password.
    cfg.attributes["url"] = resolve_url(url)
    return cfg


NOT_UP = ("connection refused", "could not connect", "the database system is starting up", "no such file or directory")
"""What a server that is not up (yet) answers, as opposed to a wrong password or database name."""


def wait_for_database(engine: Engine, wait_s: float) -> None:
    """Connect once, retrying with backoff for up to ``wait_s`` while the server is not up; one log
    line while waiting. Any other error (credentials, unknown database) is raised at once."""
    deadline, delay, waited = time.monotonic() + wait_s, 0.25, False
    while True:
        try:
            engine.connect().close()
            if waited:
                log.warning("database %s is up", engine.url.render_as_string())
            return
        except OperationalError as exc:
            if time.monotonic() + delay > deadline or not any(s in str(exc).lower() for s in NOT_UP):
                raise
            if not waited:
                log.warning("database %s is not up; waiting for it", engine.url.render_as_string())
                waited = True
        time.sleep(delay)
        delay = min(5.0, delay * 2)


def upgrade(url: Optional[str | URL] = None, revision: str = "head", wait_s: float | None = None) -> None:
    """Run ``alembic upgrade head`` (idempotent: a database already at head is left alone), once the
    server is up: waits up to ``wait_s`` (default ``settings.database_wait_s``) for one that is not."""
    u = resolve_url(url)
    engine = make_engine(u, poolclass=NullPool)
    try:
        wait_for_database(engine, get_settings().database_wait_s if wait_s is None else wait_s)
        with engine.begin() as conn:
            cfg = alembic_config(u)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


def current_revision(url: Optional[str | URL] = None) -> Optional[str]:
    """The revision the database is at, or None if it has never been migrated."""
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> Optional[str]:
    """The newest revision shipped with this package."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
