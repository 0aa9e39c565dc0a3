"""The board and the patient page say which model and version scored the patient (issue 19,
must-have 6): "early_warning v2 · triton" under the alert's kind, "now early_warning v1" once a
promoted version gave the newest score, the version beside the latest score and each alert on the
patient page. Headless Chromium against ``icuwatch serve`` on a hand-made ward."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from stack_fixtures import free_port
from test_board_browser import CHROMIUM, browser_page, serve  # noqa: F401 (browser_page: a fixture)

from icuwatch.core import schemas
from icuwatch.core.settings import Settings
from icuwatch.storage import db
from icuwatch.storage import repository as repo
from icuwatch.storage.tokens import create_token

pytestmark = [
    pytest.mark.stack,
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}"),
]


def _score(pid: str, t: float, version: str | None, source: str = "triton") -> schemas.Score:
    return schemas.Score(
        patient_id=pid,
        event_time=t,
        model="early_warning" if source == "triton" else "rules_v1",
        model_version=version,
        source=source,
        deterioration_risk=0.8,
        sepsis_risk=0.1,
        news2=8,
        qsofa=1,
        staleness_s={},
        scored_at=t + 1,
    )


def test_the_board_and_the_patient_page_name_the_model_version(browser_page, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    url = f"sqlite:///{tmp_path / 'ward.db'}"
    db.upgrade(url)
    settings = Settings(database_url=url, state_dir=tmp_path / "state")
    factory = db.session_factory(db.make_engine(url))
    now = time.time()
    ids = {}
    with factory.begin() as s:
        token = create_token(s, "nurse.okafor", "nurse")
        for pid in ("bed-same", "bed-promoted"):
            repo.upsert_patient(s, schemas.Adt(patient_id=pid, event_time=now - 7200, event="admit", bed=pid[-1]))
            ids[pid] = f"{pid}:deterioration:{int(now - 900)}"
            repo.add_alert(
                s,
                schemas.Alert(
                    patient_id=pid,
                    event_time=now - 840,
                    alert_id=ids[pid],
                    kind="deterioration",
                    risk=0.8,
                    news2=8,
                    qsofa=1,
                    model="early_warning",
                    model_version="2",
                    source="triton",
                    episode_start=now - 900,
                    raised_at=now - 839,
                ),
            )
            repo.add_scores(s, [_score(pid, now - 840, "2")])
        repo.add_scores(s, [_score("bed-promoted", now - 300, "1")])  # after `models promote early_warning 1`

    port = free_port()
    api = serve(settings, {"ICUWATCH_STATE_DIR": str(tmp_path / "state")}, port, tmp_path / "serve.log")
    try:
        page = browser_page
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"http://127.0.0.1:{port}/?token={token}")
        expect(page.locator("tr.alert")).to_have_count(2)
        same = page.locator(f"tr.alert[data-alert-id='{ids['bed-same']}'] td.kind")
        expect(same.locator(".model").first).to_have_text("early_warning v2 · triton")
        expect(same.locator(".model-now")).to_have_count(0)
        promoted = page.locator(f"tr.alert[data-alert-id='{ids['bed-promoted']}'] td.kind")
        expect(promoted.locator(".model").first).to_have_text("early_warning v2 · triton")
        expect(promoted.locator(".model-now")).to_have_text("now early_warning v1")

        page.goto(f"http://127.0.0.1:{port}/patients/bed-promoted")
        expect(page.locator("#latest")).to_contain_text("early_warning v1 via triton")
        expect(page.locator("#chart-model")).to_have_text("model early_warning v1 (earlier scores: v2)")
        expect(page.locator(f"#patient-alerts tr[data-alert-id='{ids['bed-promoted']}'] .model")).to_have_text(
            "early_warning v2"
        )
        assert not errors, f"JavaScript errors: {errors}"
    finally:
        api.terminate()
        api.wait(timeout=10)
