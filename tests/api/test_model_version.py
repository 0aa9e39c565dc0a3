"""Model identity through the API (issue 19, must-have 6): every alert says which model and version
opened it and which gave the patient's newest score; every timeline score which model and version
gave it (the board and the patient page show them). Older rows, the fallback rules and data
liveness have no version (null). On SQLite and PostgreSQL."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Iterator

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from icuwatch.api.app import create_app
from icuwatch.core import schemas
from icuwatch.core.settings import Settings
from icuwatch.storage import db, lifecycle
from icuwatch.storage import repository as repo
from icuwatch.storage.tokens import create_token

NOW = time.time()


@pytest.fixture
def client(url: str, tmp_path: Path) -> Iterator[tuple[TestClient, object]]:
    db.upgrade(url)
    app = create_app(Settings(database_url=url, state_dir=tmp_path / "state"), escalate=False)
    with TestClient(app) as c:
        yield c, app.state.sessions


def _score(t: float, risk: float, version: str | None, model: str = "early_warning", source: str = "triton"):
    return schemas.Score(
        patient_id="mv-1",
        event_time=t,
        model=model,
        model_version=version,
        source=source,
        deterioration_risk=risk,
        sepsis_risk=0.1,
        news2=7,
        qsofa=1,
        staleness_s={"vitals": 1.0},
        scored_at=t + 1,
    )


def test_alerts_and_timeline_name_the_model_version(client):
    c, sessions = client
    with sessions.begin() as s:
        token = create_token(s, "nurse-1", "nurse")
        repo.add_scores(s, [_score(NOW - 900, 0.7, "2"), _score(NOW - 600, 0.8, "2")])
        stored = repo.add_alert(
            s,
            schemas.Alert(
                patient_id="mv-1",
                event_time=NOW - 600,
                alert_id=f"mv-1:deterioration:{int(NOW - 900)}",
                kind="deterioration",
                risk=0.8,
                news2=7,
                qsofa=1,
                model="early_warning",
                model_version="2",
                source="triton",
                episode_start=NOW - 900,
                raised_at=NOW - 599,
            ),
        )
        assert stored
        # promoted to version 1, then Triton unreachable: the newest score is the fallback's
        repo.add_scores(s, [_score(NOW - 300, 0.9, "1"), _score(NOW - 60, 0.95, None, "rules_v1", "fallback")])
    h = {"Authorization": f"Bearer {token}"}

    (alert,) = c.get("/api/alerts", headers=h).json()
    assert (alert["model"], alert["model_version"]) == ("early_warning", "2")
    assert (alert["current_model"], alert["current_model_version"], alert["current_risk"]) == ("rules_v1", None, 0.95)

    t = c.get("/api/patients/mv-1/timeline", headers=h).json()
    assert [(x["model"], x["model_version"], x["source"]) for x in t["scores"]] == [
        ("early_warning", "2", "triton"),
        ("early_warning", "2", "triton"),
        ("early_warning", "1", "triton"),
        ("rules_v1", None, "fallback"),
    ]
    assert t["alerts"][0]["model_version"] == "2"
    with sessions() as s:  # the audit trail's raise names the version too
        (raised,) = [e for e in lifecycle.alert_events(s, alert["alert_id"]) if e.action == "raised"]
        assert raised.detail["model_version"] == "2"


def test_a_revised_score_takes_the_version_that_revised_it(client):
    """Same patient, model and event time is one score: a higher revision after a promotion
    replaces the values and the version; a redelivered revision 0 changes nothing."""
    _, sessions = client
    with sessions.begin() as s:
        repo.add_scores(s, [_score(NOW - 300, 0.5, "2")])
        repo.add_scores(s, [_score(NOW - 300, 0.9, "1")])  # redelivery, revision 0: ignored
        revised = _score(NOW - 300, 0.6, "1").model_copy(update={"revision": 1})
        assert repo.add_scores(s, [revised]) == 1
    with sessions() as s:
        (row,) = lifecycle.patient_timeline(s, "mv-1")["scores"]
        assert (row.model_version, row.deterioration_risk, row.revision) == ("1", 0.6, 1)
