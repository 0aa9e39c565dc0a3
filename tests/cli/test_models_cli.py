"""``icuwatch models`` operator errors (issue 19): no tritonserver at the address, a version that is
not a number, nothing to roll back to: one line on stderr, exit 2, before anything is changed. The
switches themselves run on a real server in ``tests/stack/test_model_rollout.py``."""

from __future__ import annotations

import pytest
from stack_fixtures import free_port

from icuwatch.cli.main import main
from icuwatch.core.settings import get_settings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def no_triton(tmp_path, monkeypatch):
    port = free_port()
    monkeypatch.setenv("ICUWATCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("ICUWATCH_TRITON_URL", f"127.0.0.1:{port}")
    get_settings.cache_clear()
    yield port
    get_settings.cache_clear()


@pytest.mark.parametrize(
    "argv",
    [
        ["models", "list"],
        ["models", "list", "--json"],
        ["models", "promote", "early_warning", "2"],
        ["models", "rollback", "early_warning"],
    ],
)
def test_no_tritonserver_is_one_line_and_exit_2(no_triton, capsys, argv):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"icuwatch models: tritonserver at 127.0.0.1:{no_triton} does not answer"), err


@pytest.mark.parametrize("version", ["two", "0", "-1", "1.5", ""])
def test_a_version_is_a_positive_whole_number(no_triton, capsys, version):
    assert main(["models", "promote", "early_warning", version]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "a model version is a positive whole number" in err


def test_test_figures_of_a_model_not_in_the_repository_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["models", "test-figures", "no_such_model", "--repository", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "no model 'no_such_model'" in err, err
