import os

import pytest

from stack_fixtures import settings_for


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
