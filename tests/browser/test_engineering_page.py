"""The engineers' page (``/engineering``): the live shadow's comparison and the drift flags, as
``/api/shadow`` and ``/api/drift`` give them; a nurse's token is turned away. Headless Chromium
against ``icuwatch serve`` on a hand-made ward."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from stack_fixtures import free_port
from test_board_browser import CHROMIUM, browser_page, serve  # noqa: F401 (browser_page: a fixture)

from icuwatch.core import schemas
from icuwatch.core.settings import Settings
from icuwatch.storage import db, drift_counts, shadow
from icuwatch.storage import repository as repo
from icuwatch.storage.tokens import create_token
from icuwatch.streams.drift import DriftCounts

pytestmark = [
    pytest.mark.stack,
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}"),
]


def _score(model: str, t: float, risk: float) -> schemas.Score:
    return schemas.Score(
        patient_id="bed-1", event_time=t, model=model, model_version="1", source="triton",
        deterioration_risk=risk, sepsis_risk=0.0, news2=1, qsofa=0, staleness_s={}, scored_at=t,
    )  # fmt: skip


def test_the_engineering_page_shows_the_shadow_and_the_drift_flags(browser_page, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    url = f"sqlite:///{tmp_path / 'ward.db'}"
    db.upgrade(url)
    settings = Settings(database_url=url, state_dir=tmp_path / "state")
    factory = db.session_factory(db.make_engine(url))
    now = time.time()
    counts = DriftCounts("w1")
    hour = now - now % 3600
    for h in range(12):  # the unit's X-rays stop six hours ago
        for p in range(4):
            for k in range(30):
                counts.arrived("MICU", f"bed-{p}", hour - 3600 * (11 - h) + 60 * k, "icu.cxr" if h < 6 else "icu.labs")
    with factory.begin() as s:
        engineer, nurse = create_token(s, "eng.ito", "engineer"), create_token(s, "nurse.okafor", "nurse")
        repo.upsert_patient(s, schemas.Adt(patient_id="bed-1", event_time=now - 7200, event="admit", unit="MICU"))
        repo.add_scores(s, [_score("student_live", now - 600, 0.4), _score("student_live", now - 300, 0.1)])
        shadow.add_scores(s, [_score("early_warning", now - 600, 0.6), _score("early_warning", now - 300, 0.6)])
        shadow.record_served_model(s, "student_live", "live", {"deterioration": 0.3, "sepsis": 0.3})
        shadow.record_served_model(s, "early_warning", "shadow", {"deterioration": 0.5, "sepsis": 0.5})
        drift_counts.record(s, counts.take())

    port = free_port()
    api = serve(settings, {"ICUWATCH_STATE_DIR": str(tmp_path / "state")}, port, tmp_path / "serve.log")
    try:
        page = browser_page
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"http://127.0.0.1:{port}/engineering?token={engineer}")
        expect(page.locator("#sides")).to_contain_text("student_live/1")
        expect(page.locator("#sides")).to_contain_text("early_warning/1")
        expect(page.locator("#agreement")).to_contain_text("over 2 paired scores: 0.5")
        expect(page.locator("#drift-flags")).to_contain_text("MICU: feeds icu.cxr")
        assert not errors, f"JavaScript errors: {errors}"

        page.evaluate("localStorage.clear()")
        page.goto(f"http://127.0.0.1:{port}/engineering?token={nurse}")
        expect(page.locator("#notice")).to_have_text("Engineer or admin tokens only.")
    finally:
        api.terminate()
        api.wait(timeout=10)
