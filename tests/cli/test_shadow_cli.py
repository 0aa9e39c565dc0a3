"""``icuwatch shadow report``: its --since and its one-line errors (the report itself:
tests/storage/test_shadow_tables.py; on a running pipeline: tests/stack/test_demo_logs.py)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from icuwatch.cli.main import main
from icuwatch.cli.shadow import parse_since
from icuwatch.core.errors import OperatorError
from icuwatch.core.settings import get_settings
from icuwatch.storage import db

NOW = datetime(2026, 12, 6, 8, 0, tzinfo=timezone.utc)


def test_since_takes_spans_and_iso_times():
    assert parse_since("90m", NOW) == NOW - timedelta(minutes=90)
    assert parse_since("12h", NOW) == NOW - timedelta(hours=12)
    assert parse_since("7d", NOW) == NOW - timedelta(days=7)
    assert parse_since("2026-12-06T06:00", NOW) == datetime(2026, 12, 6, 6, 0, tzinfo=timezone.utc)
    assert parse_since("2026-12-06T06:00+01:00", NOW) == datetime(2026, 12, 6, 5, 0, tzinfo=timezone.utc)
    assert parse_since(None, NOW) is None
    with pytest.raises(OperatorError, match="ISO 8601"):
        parse_since("yesterday", NOW)


@pytest.fixture
def database(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'icuwatch.db'}"
    monkeypatch.setenv("ICUWATCH_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def test_report_of_an_unmigrated_database_is_one_line(database, capsys):
    assert main(["shadow", "report"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("icuwatch shadow: the database at") and "icuwatch db upgrade" in err
    assert "\n" not in err


def test_report_of_an_empty_database_has_every_field(database, capsys):
    db.upgrade(database)
    assert main(["shadow", "report", "--since", "1d", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for side in ("live", "shadow"):
        assert report[side]["scores"] == 0 and report[side]["model"] is None
        assert {"alert_episodes", "episodes_per_patient_day"} <= set(report[side])
    assert {"agreement", "per_unit", "lead_time_difference_min"} <= set(report)
