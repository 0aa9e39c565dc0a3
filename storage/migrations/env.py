"""Alembic environment for icuwatch.

The database URL comes from, in order: a connection handed over by ``icuwatch.storage.db.upgrade``
(``config.attributes["connection"]``), ``config.attributes["url"]``, ``-x url=...`` on the command
line, ``sqlalchemy.url`` in the ini file, and finally the ``ICUWATCH_DATABASE_URL`` setting.
"""

from __future__ import annotations

import logging.config

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from icuwatch.storage.db import make_engine, resolve_url
from icuwatch.storage.models import Base

config = context.config
target_metadata = Base.metadata

# Arbitrary constant: PostgreSQL advisory lock key that serialises concurrent upgrades (the worker
# and the API may both migrate at start-up).
_PG_MIGRATION_LOCK = 0x1C0_3A7C


def _url():
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    return resolve_url(url or config.get_main_option("sqlalchemy.url") or None)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite can only ALTER via table copies; batch mode makes future migrations portable.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    # Plain CLI use: configure logging from the ini (programmatic callers keep their own logging).
    if config.config_file_name is not None:
        logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)
    engine = make_engine(_url(), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            _configure(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
