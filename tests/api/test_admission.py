"""The API says whether ADT admitted a patient (issue 18, must-have 3): under the default
``ICUWATCH_UNADMITTED_DATA=accept`` both listeners take in data about a patient ADT never
admitted, and the board must show that, not hide it. On SQLite and PostgreSQL."""

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
from icuwatch.storage import db
from icuwatch.storage import repository as repo
from icuwatch.storage.tokens import create_token

NOW = time.time()


@pytest.fixture
def client(url: str, tmp_path: Path) -> Iterator[tuple[TestClient, object]]:
    db.upgrade(url)
    app = create_app(Settings(database_url=url, state_dir=tmp_path / "state"), escalate=False)
    with TestClient(app) as c:
        yield c, app.state.sessions


def _alert(pid: str) -> schemas.Alert:
    return schemas.Alert(
        patient_id=pid,
        event_time=NOW - 300,
        alert_id=f"{pid}:deterioration:{int(NOW - 600)}",
        kind="deterioration",
        risk=0.8,
        news2=8,
        qsofa=2,
        model="early_warning",
        source="triton",
        episode_start=NOW - 600,
        raised_at=NOW - 299,
    )


def test_alerts_and_timeline_say_whether_adt_admitted_the_patient(client):
    c, sessions = client
    with sessions.begin() as s:
        token = create_token(s, "nurse-1", "nurse")
        repo.upsert_patient(s, schemas.Adt(patient_id="adm-1", event_time=NOW - 7200, event="admit", unit="MICU"))
        repo.upsert_patient(s, schemas.Adt(patient_id="left-1", event_time=NOW - 7200, event="admit"))
        repo.upsert_patient(s, schemas.Adt(patient_id="left-1", event_time=NOW - 60, event="discharge"))
        for pid in ("adm-1", "left-1", "noadt-1"):  # noadt-1: scored and alerted, no ADT at all
            repo.add_alert(s, _alert(pid))
    h = {"Authorization": f"Bearer {token}"}

    alerts = {a["patient_id"]: a for a in c.get("/api/alerts", headers=h, params={"state": "raised"}).json()}
    assert {pid: a["admitted"] for pid, a in alerts.items()} == {"adm-1": True, "left-1": True, "noadt-1": False}

    timeline = c.get("/api/patients/noadt-1/timeline", headers=h).json()
    assert timeline["patient"]["admitted"] is False and timeline["patient"]["admitted_at"] is None
    assert timeline["alerts"][0]["admitted"] is False
    admitted = c.get("/api/patients/adm-1/timeline", headers=h).json()["patient"]
    assert admitted["admitted"] is True and admitted["unit"] == "MICU"
