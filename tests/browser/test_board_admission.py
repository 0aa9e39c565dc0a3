"""The board and the patient page show "no ADT admission" for a patient whose data came in without
an ADT admission (issue 18, must-have 3: accepted by default, and said so), in headless Chromium
against ``icuwatch serve`` on a hand-made ward."""

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


def test_a_patient_adt_never_admitted_is_marked_on_the_board_and_the_patient_page(browser_page, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    url = f"sqlite:///{tmp_path / 'ward.db'}"
    db.upgrade(url)
    settings = Settings(database_url=url, state_dir=tmp_path / "state")
    factory = db.session_factory(db.make_engine(url))
    now = time.time()
    ids = {}
    with factory.begin() as s:
        token = create_token(s, "nurse.okafor", "nurse")
        repo.upsert_patient(s, schemas.Adt(patient_id="bed-adm", event_time=now - 7200, event="admit", bed="1"))
        for pid in ("bed-adm", "bed-noadt"):
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
                    source="triton",
                    episode_start=now - 900,
                    raised_at=now,
                ),
            )
            repo.add_scores(
                s,
                [
                    schemas.Score(
                        patient_id=pid,
                        event_time=now - 840,
                        model="early_warning",
                        source="triton",
                        deterioration_risk=0.8,
                        sepsis_risk=0.1,
                        news2=8,
                        qsofa=1,
                        staleness_s={},
                        scored_at=now - 839,
                    )
                ],
            )

    port = free_port()
    api = serve(settings, {"ICUWATCH_STATE_DIR": str(tmp_path / "state")}, port, tmp_path / "serve.log")
    try:
        page = browser_page
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"http://127.0.0.1:{port}/?token={token}")
        expect(page.locator("tr.alert")).to_have_count(2)
        unadmitted = page.locator(f"tr.alert[data-alert-id='{ids['bed-noadt']}'] td.patient .badge-no-adt")
        expect(unadmitted).to_have_text("no ADT admission")
        expect(unadmitted).to_be_visible()
        expect(page.locator(f"tr.alert[data-alert-id='{ids['bed-adm']}'] .badge-no-adt")).to_have_count(0)

        page.goto(f"http://127.0.0.1:{port}/patients/bed-noadt")
        expect(page.locator("#patient-id")).to_have_text("bed-noadt")
        expect(page.locator("#no-adt")).to_be_visible()
        expect(page.locator("#no-adt")).to_have_text("no ADT admission")
        page.goto(f"http://127.0.0.1:{port}/patients/bed-adm")
        expect(page.locator("#patient-facts")).to_contain_text("bed 1")
        expect(page.locator("#no-adt")).to_be_hidden()
        assert not errors, f"JavaScript errors: {errors}"
    finally:
        api.terminate()
        api.wait(timeout=10)
