"""Shared fixtures. Database tests run on SQLite and on the PostgreSQL server at 127.0.0.1:5432
(database ``test``): ``url`` is an empty, not yet migrated database of either kind, each PostgreSQL
one a fresh schema of this session, dropped afterwards."""

import os
import socket
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from stack_fixtures import settings_for

from icuwatch.storage import db


def pytest_collection_modifyitems(config, items):
    if os.environ.get("ICUWATCH_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow soak/load run: opt in with ICUWATCH_SLOW=1 (make test-all)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """Broker and tritonserver on test ports, started once per test session."""
    from icuwatch.deploy import broker, triton

    settings, env = settings_for(tmp_path_factory.mktemp("stack"))
    try:
        broker.start(settings)
        triton.start(settings)
        yield settings, env
    finally:
        triton.stop(settings)
        broker.stop(settings)


PG_URL = os.environ.get("ICUWATCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SESSION_TAG = f"icuwatch_test_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine]:
    """An engine on the PostgreSQL test database; skips when the server is unreachable."""
    u = make_url(PG_URL)
    # Skip only when nothing listens; a reachable server that rejects us is a failure, not a skip.
    try:
        socket.create_connection((u.host or "127.0.0.1", u.port or 5432), timeout=3).close()
    except OSError as exc:
        pytest.skip(f"PostgreSQL not reachable at {u.host}:{u.port or 5432}: {exc}")
    engine = sa.create_engine(u, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with engine.connect() as conn:  # fails (does not skip) on bad credentials or database
        conn.execute(sa.text("SELECT 1"))
    yield engine
    # Drop anything this session left behind (e.g. after an interrupted test).
    with engine.connect() as conn:
        leftovers = conn.scalars(
            sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :p"),
            {"p": f"{SESSION_TAG}%"},
        ).all()
        for name in leftovers:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database (not yet migrated)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'icuwatch.db'}"
        return
    admin: Engine = request.getfixturevalue("pg_admin")
    schema = f"{SESSION_TAG}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    # search_path makes the new schema the default one for everything, Alembic included.
    pg_url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    yield pg_url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    db.upgrade(url)
    eng = db.make_engine(url)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return db.session_factory(engine)


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for the module's tests, restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
