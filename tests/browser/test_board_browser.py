"""The nurses' board in a real browser, on the real pipeline.

simulator -> Tansu -> Faust worker -> tritonserver -> SQLite <- ``icuwatch serve`` <- headless
Chromium. A nurse logs in with a token, a simulated patient deteriorates, the alert appears on the
open board without a reload (server-sent events), the nurse clicks Acknowledge, and the database
records the acknowledgement under that nurse's name. The patient page then draws the risk chart.
A screenshot of the board goes to ``reports/board.png``.
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
from stack_fixtures import free_port, running_worker, wait_for

from icuwatch.core.settings import REPO_ROOT
from icuwatch.storage import db
from icuwatch.storage.models import Alert

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
    from icuwatch.storage.tokens import create_token

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
    patient_id = alert_id.split(":")[0]
    assert row.get_attribute("data-state") == "raised"
    expect(row.locator("a.patient-link")).to_have_text(patient_id)

    row.locator(".ack-comment-input").fill("seen, calling the doctor")
    clicked = datetime.now(timezone.utc)
    row.locator("button.ack").click()
    acked = page.locator(f"tr.alert[data-alert-id='{alert_id}']")
    expect(acked).to_have_attribute("data-state", "acknowledged")
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
    expect(page.locator("#staleness tr")).to_have_count(4)
    expect(page.locator("#staleness tr[data-modality='vitals'] td")).to_contain_text("ago")
    expect(page.locator("#staleness tr[data-modality='cxr'] td")).to_have_text("never")
    # per-modality contributions of the latest score: a column per risk, a row per modality
    expect(page.locator("#contributions-table th[data-risk]")).to_have_count(2)
    expect(page.locator("#contributions-table tr[data-modality]")).to_have_count(4)
    expect(page.locator("#contributions-table tr[data-modality='cxr'] td").first).to_have_text("0.00")
    page.screenshot(path=str(reports / "patient.png"), full_page=True)

    assert not errors, f"JavaScript errors: {errors}"
