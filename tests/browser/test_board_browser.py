"""The nurses' board in a real browser, on the real pipeline.

simulator -> Tansu -> Faust worker -> tritonserver -> SQLite <- ``icuwatch serve`` <- headless
Chromium. A nurse logs in with a token, a simulated patient deteriorates, the alert appears on the
open board without a reload (server-sent events), the nurse clicks Acknowledge, and the database
records the acknowledgement under that nurse's name. The patient page then draws the risk chart;
back on the board the row shows the patient's current risk (the newest score) and the nurse
resolves the alert with a reason. A screenshot of the board goes to ``reports/board.png``.

Without the stack, on a hand-made ward served by ``icuwatch serve``: rows sort by current risk and
follow new scores live, Resolve needs a reason, and only clinical roles see the action buttons.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select
from stack_fixtures import free_port, running_worker, wait_for

from icuwatch.core import schemas
from icuwatch.core.settings import REPO_ROOT, Settings
from icuwatch.storage import data_feeds, db, lifecycle
from icuwatch.storage import repository as repo
from icuwatch.storage.models import Alert, Score
from icuwatch.storage.tokens import create_token

CHROMIUM = os.environ.get("ICUWATCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NURSE = "nurse.okafor"

pytestmark = [
    pytest.mark.stack,
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"no Chromium at {CHROMIUM} (CI installs Debian's chromium; set ICUWATCH_CHROMIUM)",
    ),
]


def issue_nurse_token(settings) -> str:
    try:
        from icuwatch.storage.tokens import issue_token
    except ImportError:
        issue_token = None
    if issue_token is not None:
        return issue_token(settings, NURSE, "nurse")
    factory = db.session_factory(db.make_engine(settings.database_url))
    with factory.begin() as s:
        return create_token(s, NURSE, "nurse")


def serve(settings, env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen:
    full_env = {
        **os.environ,
        **env,
        "ICUWATCH_DATABASE_URL": settings.database_url,
        "ICUWATCH_API_STREAM_POLL_S": "0.5",
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "icuwatch.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    def up():
        if proc.poll() is not None:
            raise RuntimeError(f"icuwatch serve exited:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    if not wait_for(up, timeout_s=30, interval_s=0.2):
        proc.terminate()
        raise RuntimeError(f"icuwatch serve did not come up:\n{log_path.read_text(errors='replace')[-3000:]}")
    return proc


@pytest.fixture
def board(stack, tmp_path):
    """Worker and API on one fresh SQLite file; yields (settings, base url, nurse token)."""
    base, env = stack
    url = f"sqlite:///{tmp_path / 'board.db'}"
    db.upgrade(url)
    settings = base.model_copy(
        update={"database_url": url, "app_id": f"icuwatch-board-{uuid.uuid4().hex[:8]}", "worker_web_port": free_port()}
    )
    token = issue_nurse_token(settings)
    port = free_port()
    with running_worker(settings, env, tmp_path / "worker.log"):
        api = serve(settings, env, port, tmp_path / "serve.log")
        try:
            yield settings, f"http://127.0.0.1:{port}", token
        finally:
            api.terminate()
            try:
                api.wait(timeout=10)
            except subprocess.TimeoutExpired:
                api.kill()


@pytest.fixture
def browser_page(tmp_path):
    sync_playwright = pytest.importorskip(
        "playwright.sync_api", reason="playwright is in the test extras"
    ).sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 800},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(20_000)
            yield page
        finally:
            context.close()


def test_alert_appears_live_and_nurse_acknowledges_it(browser_page, board):
    from playwright.sync_api import expect

    from icuwatch.sources.simulator import Simulation
    from icuwatch.sources.simulator.producer import publish
    from icuwatch.streams.kafka.producer import make_producer

    settings, base_url, token = board
    page = browser_page
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # Log in through the ready link; the token leaves the address bar and stays in localStorage.
    page.goto(f"{base_url}/?token={token}")
    expect(page.locator("#conn")).to_have_text("live")
    expect(page.locator("#who")).to_contain_text(NURSE)
    assert "token=" not in page.url
    assert page.evaluate("localStorage.getItem('icuwatch.token')") == token
    page.evaluate("window.__sameDocument = true")  # survives only if the page is never reloaded

    prefix = f"brd{uuid.uuid4().hex[:6]}-"
    sim = Simulation(
        n_patients=1,
        seed=11,
        start_time=time.time() - 4 * 3600,
        duration_s=3 * 3600,
        deteriorating_fraction=1.0,
        onset_window_s=(600.0, 900.0),
        waveforms=False,
        cxr=False,
        patient_prefix=prefix,
    )
    producer = make_producer(settings)
    publish(sim, producer, speed=0)
    producer.close()

    # The alert appears on the open board, pushed by the stream.
    row = page.locator(f"tr.alert[data-alert-id^='{prefix}']").first
    expect(row).to_be_visible(timeout=120_000)
    assert page.evaluate("window.__sameDocument === true"), "the board reloaded instead of updating live"
    conn = page.locator("#conn")
    assert conn.get_attribute("data-snapshots") == "1", "the stream reconnected instead of pushing the alert"
    assert int(conn.get_attribute("data-events") or 0) >= 1
    alert_id = row.get_attribute("data-alert-id")
    # Pin the row by its id: a second alert of the patient (the other kind) may sort first later,
    # and `.first` would then point the clicks at it.
    row = page.locator(f"tr.alert[data-alert-id='{alert_id}']")
    patient_id = alert_id.split(":")[0]
    assert row.get_attribute("data-state") == "raised"
    expect(row.locator("a.patient-link")).to_have_text(patient_id)

    row.locator(".ack-comment-input").fill("seen, calling the doctor")
    clicked = datetime.now(timezone.utc)
    row.locator("button.ack").click()
    acked = page.locator(f"tr.alert[data-alert-id='{alert_id}']")
    expect(acked).to_have_attribute("data-state", "acknowledged", timeout=15_000)  # a loaded 2-core CI machine
    expect(acked.locator(".ack-by")).to_contain_text(NURSE)
    expect(acked.locator("button.ack")).to_have_count(0)

    factory = db.session_factory(db.make_engine(settings.database_url))
    with factory() as s:
        stored = s.get(Alert, alert_id)
    assert stored.state == "acknowledged"
    assert stored.acknowledged_by == NURSE
    assert stored.ack_comment == "seen, calling the doctor"
    assert clicked - timedelta(seconds=5) <= stored.acknowledged_at <= datetime.now(timezone.utc) + timedelta(seconds=5)

    reports = REPO_ROOT / "reports"
    reports.mkdir(exist_ok=True)
    page.screenshot(path=str(reports / "board.png"), full_page=True)

    # The patient page: a risk chart with points, the alert marker, data freshness per modality.
    acked.locator("a.patient-link").click()
    page.wait_for_url(f"**/patients/{patient_id}")
    chart = page.locator("#chart svg.chart")
    expect(chart).to_be_visible()
    assert chart.locator("circle.point.det").count() >= 2
    assert len(chart.locator("polyline.det").get_attribute("points").split()) >= 2
    assert chart.locator(f"g.alert-marker[data-alert-id='{alert_id}']").count() == 1
    expect(page.locator("#staleness tr[data-modality]")).to_have_count(4)
    expect(page.locator("#staleness tr[data-modality='vitals'] td").nth(1)).to_contain_text("ago")  # at the score
    expect(page.locator("#staleness tr[data-modality='cxr'] td").first).to_have_text("never")
    # per-modality contributions of the latest score: a column per risk, a row per modality
    expect(page.locator("#contributions-table th[data-risk]")).to_have_count(2)
    expect(page.locator("#contributions-table tr[data-modality]")).to_have_count(4)
    expect(page.locator("#contributions-table tr[data-modality='cxr'] td").first).to_have_text("0.00")
    page.screenshot(path=str(reports / "patient.png"), full_page=True)

    # Back on the board once the worker is done with this patient: the row shows the current risk
    # of the alert's kind, then the nurse resolves the alert with a reason.
    def scores():
        with factory() as s:
            return s.scalars(select(Score).where(Score.patient_id == patient_id).order_by(Score.event_time)).all()

    settled = []
    wait_for(lambda: settled.append(len(scores())) or settled[-3:] == [settled[-1]] * 3, timeout_s=120, interval_s=2)
    latest = scores()[-1]
    page.goto(base_url)
    row = page.locator(f"tr.alert[data-alert-id='{alert_id}']")
    expect(row.locator("td.risk .now")).to_have_text(f"{getattr(latest, stored.kind + '_risk'):.2f}", timeout=15_000)
    expect(row.locator("td.risk .opening")).to_have_text(f"opened {stored.risk:.2f}")
    expect(row.locator("td.news2 .now")).to_have_text(str(latest.news2))
    row.locator(".resolve-reason").fill("reviewed with the physician")
    row.locator("button.resolve").click()
    expect(row).to_have_count(0)
    with factory() as s:
        stored = s.get(Alert, alert_id)
        trail = lifecycle.alert_events(s, alert_id)
    assert (stored.state, stored.resolved_by) == ("resolved", NURSE)
    assert (trail[-1].action, trail[-1].actor, trail[-1].detail["reason"]) == (
        "resolved",
        NURSE,
        "reviewed with the physician",
    )

    assert not errors, f"JavaScript errors: {errors}"


def test_rows_sort_by_current_risk_and_a_nurse_resolves_with_a_reason(browser_page, tmp_path):
    from playwright.sync_api import expect

    url = f"sqlite:///{tmp_path / 'ward.db'}"
    db.upgrade(url)
    settings = Settings(database_url=url, state_dir=tmp_path / "state")
    factory = db.session_factory(db.make_engine(url))
    now = time.time()

    def add_score(pid: str, t: float, risk: float, news2: int) -> None:
        with factory.begin() as s:
            repo.add_scores(
                s,
                [
                    schemas.Score(
                        patient_id=pid,
                        event_time=t,
                        model="early_warning",
                        source="triton",
                        deterioration_risk=risk,
                        sepsis_risk=0.1,
                        news2=news2,
                        qsofa=1,
                        staleness_s={},
                        scored_at=t,
                    )
                ],
            )

    ids = {}
    with factory.begin() as s:
        tokens = {role: create_token(s, user, role) for user, role in ((NURSE, "nurse"), ("eng.lee", "engineer"))}
        for pid, opening, news2 in (("bed-a", 0.9, 9), ("bed-b", 0.66, 7)):
            ids[pid] = f"{pid}:deterioration:{int(now - 900)}"
            repo.add_alert(
                s,
                schemas.Alert(
                    patient_id=pid,
                    event_time=now - 840,
                    alert_id=ids[pid],
                    kind="deterioration",
                    risk=opening,
                    news2=news2,
                    qsofa=1,
                    model="early_warning",
                    source="triton",
                    episode_start=now - 900,
                    raised_at=now,
                ),
            )
    add_score("bed-a", now - 300, 0.55, 5)
    add_score("bed-b", now - 300, 1.0, 16)  # the defect's numbers: opened 0.66 / 7, now 1.00 / 16

    port = free_port()
    api = serve(settings, {"ICUWATCH_STATE_DIR": str(tmp_path / "state")}, port, tmp_path / "serve.log")
    try:
        page = browser_page
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"http://127.0.0.1:{port}/?token={tokens['nurse']}")
        rows = page.locator("tr.alert")
        expect(rows).to_have_count(2)
        page.evaluate("window.__sameDocument = true")
        assert [rows.nth(i).get_attribute("data-alert-id") for i in range(2)] == [ids["bed-b"], ids["bed-a"]]
        b = page.locator(f"tr.alert[data-alert-id='{ids['bed-b']}']")
        expect(b.locator("td.risk .now")).to_have_text("1.00")
        expect(b.locator("td.risk .opening")).to_have_text("opened 0.66")
        expect(b.locator("td.news2 .now")).to_have_text("16")
        expect(b.locator("td.news2 .opening")).to_have_text("opened 7")

        # New scores change no alert, yet the board follows them live and re-sorts.
        add_score("bed-a", now - 60, 0.97, 14)
        add_score("bed-b", now - 60, 0.7, 8)
        a = page.locator(f"tr.alert[data-alert-id='{ids['bed-a']}']")
        expect(a.locator("td.risk .now")).to_have_text("0.97", timeout=15_000)  # re-read every 10 polls of 0.5 s
        expect(rows.first).to_have_attribute("data-alert-id", ids["bed-a"])
        assert page.evaluate("window.__sameDocument === true"), "the board reloaded instead of updating live"

        # Resolve needs a reason: without one nothing is sent.
        b.locator("button.resolve").click()
        expect(page.locator("#notice")).to_contain_text("reason")
        b.locator(".resolve-reason").fill("reviewed, on antibiotics, physician aware")
        b.locator("button.resolve").click()
        expect(b).to_have_count(0)
        expect(page.locator("#notice")).to_contain_text("alert again")
        with factory() as s:
            resolved = s.get(Alert, ids["bed-b"])
            trail = lifecycle.alert_events(s, ids["bed-b"])
        assert (resolved.state, resolved.resolved_by) == ("resolved", NURSE)
        assert trail[-1].detail == {"from_state": "raised", "reason": "reviewed, on antibiotics, physician aware"}
        assert not errors, f"JavaScript errors: {errors}"

        # An engineer sees the board but no buttons (the API would refuse them: 403).
        page.goto(f"http://127.0.0.1:{port}/?token={tokens['engineer']}")
        expect(page.locator("#who")).to_contain_text("eng.lee")
        expect(rows).to_have_count(1)
        expect(page.locator("tr.alert button")).to_have_count(0)
    finally:
        api.terminate()
        api.wait(timeout=10)


def test_a_silent_patient_is_on_the_board_and_its_page_says_no_data_since(browser_page, tmp_path):
    """The defect: nothing marked a patient whose data stopped, and the patient page said "Vital
    signs 0 s ago" from the last score while the data were 10 minutes old."""
    from playwright.sync_api import expect

    url = f"sqlite:///{tmp_path / 'ward.db'}"
    db.upgrade(url)
    settings = Settings(database_url=url, state_dir=tmp_path / "state")
    factory = db.session_factory(db.make_engine(url))
    now = time.time()
    with factory.begin() as s:
        token = create_token(s, NURSE, "nurse")
        for pid in ("bed-c", "bed-d"):
            repo.upsert_patient(
                s, schemas.Adt(patient_id=pid, event_time=now - 7200, event="admit", bed=pid[-1].upper())
            )
            repo.add_scores(
                s,
                [
                    schemas.Score(
                        patient_id=pid,
                        event_time=now - 600,
                        model="early_warning",
                        source="triton",
                        deterioration_risk=0.2,
                        sepsis_risk=0.1,
                        news2=2,
                        qsofa=0,
                        staleness_s={"vitals": 0.0, "waveforms": None, "labs": None, "cxr": None},
                        scored_at=now - 600,
                    )
                ],
            )
        data_feeds.record(s, {("bed-c", "vitals"): (now - 600, now - 600), ("bed-d", "vitals"): (now - 5, now - 5)})
        repo.add_alert(s, _alert("bed-d", "deterioration", now - 900, risk=0.9))
        repo.add_alert(s, _alert("bed-c", "data_liveness", now - 600, risk=0.0))

    port = free_port()
    api = serve(settings, {"ICUWATCH_STATE_DIR": str(tmp_path / "state")}, port, tmp_path / "serve.log")
    try:
        page = browser_page
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"http://127.0.0.1:{port}/?token={token}")
        rows = page.locator("tr.alert")
        expect(rows).to_have_count(2)
        first = rows.first  # a silent patient ranks with the highest risks
        expect(first).to_have_attribute("data-alert-id", f"bed-c:data_liveness:{int(now - 600)}")
        expect(first.locator("td.kind")).to_contain_text("No data")
        expect(first.locator("td.silent")).to_contain_text("no vital signs since")
        silent = page.locator("#silent tr.silent-feed")
        expect(page.locator("#silent")).to_be_visible()
        expect(silent).to_have_count(1)
        expect(silent.first).to_have_attribute("data-patient-id", "bed-c")
        expect(silent.first).to_contain_text("no vital signs for 10 min")

        page.goto(f"http://127.0.0.1:{port}/patients/bed-c")
        vitals = page.locator("#staleness tr[data-modality='vitals']")
        expect(vitals).to_have_attribute("data-silent", "true")
        expect(vitals.locator("td").first).to_have_text("no data for 10 min")
        expect(vitals.locator("td").nth(1)).to_have_text("0 s ago")  # what the last score saw, beside it
        page.goto(f"http://127.0.0.1:{port}/patients/bed-d")
        vitals = page.locator("#staleness tr[data-modality='vitals']")
        expect(vitals).to_have_attribute("data-silent", "false")
        expect(vitals.locator("td").first).to_contain_text("s ago")
        assert not errors, f"JavaScript errors: {errors}"
    finally:
        api.terminate()
        api.wait(timeout=10)


def _alert(pid: str, kind: str, start: float, risk: float) -> schemas.Alert:
    liveness = kind == "data_liveness"
    return schemas.Alert(
        patient_id=pid,
        event_time=start + 300,
        alert_id=f"{pid}:{kind}:{int(start)}",
        kind=kind,
        risk=risk,
        news2=0 if liveness else 9,
        qsofa=0 if liveness else 1,
        model="liveness" if liveness else "early_warning",
        source="liveness" if liveness else "triton",
        episode_start=start,
        raised_at=start + 300,
    )
