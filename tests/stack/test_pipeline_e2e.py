"""End to end on real parts: simulator -> Tansu -> Faust worker -> tritonserver -> database."""

from __future__ import annotations

import base64
import math
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select
from stack_fixtures import postgres_database, running_worker, wait_for

from icuwatch.benchmarks.bad_input import read_deadletters
from icuwatch.core import schemas, topics
from icuwatch.core.features import MODALITIES
from icuwatch.deploy import triton
from icuwatch.serving import MODEL_REPOSITORY
from icuwatch.storage import db
from icuwatch.storage.models import Alert, Score
from icuwatch.streams.kafka.producer import make_producer

STUDENT_VERSION = str(max(int(p.name) for p in (MODEL_REPOSITORY / "student_live").iterdir() if p.name.isdigit()))
"""The version ``latest: 1`` serves (the one before stays for ``icuwatch models rollback``)."""

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def pipeline_run(request, stack, tmp_path_factory):
    """One worker per database kind, with its own consumer group, shared by this module's tests (each
    uses patients of its own): its settings and the path of its log."""
    base, env = stack
    app_id = f"icuwatch-test-{uuid.uuid4().hex[:8]}"
    tmp_path = tmp_path_factory.mktemp(f"pipeline-{request.param}")
    log = tmp_path / "worker.log"

    def start(url):
        settings = base.model_copy(update={"database_url": url, "app_id": app_id, "worker_web_port": 16066})
        db.upgrade(url)
        return settings, running_worker(settings, env, log)

    if request.param == "sqlite":
        settings, worker = start(f"sqlite:///{tmp_path / 'icu.db'}")
        with worker:
            yield settings, log
    else:
        with postgres_database() as url:
            settings, worker = start(url)
            with worker:
                yield settings, log


@pytest.fixture
def pipeline(pipeline_run):
    return pipeline_run[0]


@pytest.fixture
def worker_log(pipeline_run) -> Path:
    return pipeline_run[1]


def sessions(settings):
    return db.session_factory(db.make_engine(settings.database_url))


def test_simulated_deterioration_alert_lands_in_database(pipeline, worker_log):
    from icuwatch.sources.simulator import Simulation
    from icuwatch.sources.simulator.producer import publish

    prefix = f"e2e{uuid.uuid4().hex[:6]}-"
    sim = Simulation(
        n_patients=2,
        seed=11,
        start_time=time.time() - 4 * 3600,
        duration_s=3 * 3600,
        deteriorating_fraction=1.0,
        onset_window_s=(600.0, 900.0),
        waveforms=False,
        cxr=True,
        patient_prefix=prefix,
    )
    truth = {t["patient_id"]: t for t in sim.ground_truth()}
    producer = make_producer(pipeline)
    counts = publish(sim, producer, speed=0)
    producer.close()
    assert counts[topics.VITALS] > 0

    factory = sessions(pipeline)

    def alerts():
        with factory() as s:
            return s.scalars(select(Alert).where(Alert.patient_id.startswith(prefix))).all()

    found = wait_for(alerts, timeout_s=150)
    assert found, "no alert reached the database"
    for alert in found:
        gt = truth[alert.patient_id]
        assert gt["onset_time"] is not None
        assert alert.event_time.timestamp() >= gt["onset_time"] - 3600, "alert long before onset"
        assert alert.state == "raised" and alert.source == "triton"
        # the default scoring model, the committed live student, at the version that answered
        assert (alert.model, alert.model_version) == ("student_live", STUDENT_VERSION)
        # per-modality contributions of the alert's risk: the student's leave-one-out differences
        assert alert.contributions is not None and set(alert.contributions) == set(MODALITIES)
        assert all(math.isfinite(v) and -1 <= v <= 1 for v in alert.contributions.values())
        assert alert.contributions["waveforms"] == 0.0  # this simulation sends none
    with factory() as s:
        scores = s.scalars(select(Score).where(Score.patient_id.startswith(prefix))).all()
    assert scores and all(sc.source == "triton" for sc in scores)
    assert {(sc.model, sc.model_version) for sc in scores} == {("student_live", STUDENT_VERSION)}
    # the X-rays the simulation sends reach the student: some score is moved by one
    assert any(sc.contributions["deterioration"]["cxr"] != 0.0 for sc in scores)
    assert all(
        set(sc.contributions) == {"deterioration", "sepsis"}
        and all(set(c) == set(MODALITIES) for c in sc.contributions.values())
        for sc in scores
    )
    opening = {(sc.patient_id, sc.event_time): sc for sc in scores}
    for alert in found:  # the alert copies its kind's contributions from the score that opened it
        sc = opening[(alert.patient_id, alert.event_time)]
        if sc.revision == 0:  # (a revision, after a late lab, replaces the stored score)
            assert alert.contributions == sc.contributions[alert.kind]
    log_text = worker_log.read_text(errors="replace")
    assert "Worker]: Ready" in log_text
    assert prefix not in log_text, "a patient identifier reached the worker's log"


def test_malformed_messages_go_to_deadletter_and_good_ones_still_flow(pipeline):
    pid = f"dl{uuid.uuid4().hex[:8]}"
    key = pid.encode()
    t0 = time.time() - 3600
    bad_payloads = [
        b"{nope",
        b'{"schema_version":1,"patient_id":"%s","event_time":1,"hr":80}' % key,
        b'{"schema_version":9,"patient_id":"%s","event_time":1764000000,"hr":80}' % key,
    ]
    producer = make_producer(pipeline)
    sent_bad = []
    for i in range(901):  # rescored at most 300 s apart (on its own grid): a score lands after t0 + 600
        v = schemas.Vitals(patient_id=pid, event_time=t0 + i, hr=80, rr=16, spo2=97, sbp=120, temp=37.0)
        producer.send(topics.VITALS, key=key, value=v.to_bytes())
        if i % 50 == 25:
            payload = bad_payloads[len(sent_bad) % len(bad_payloads)]
            producer.send(topics.VITALS, key=key, value=payload)
            sent_bad.append(payload)
    keyless = schemas.Vitals(patient_id=pid, event_time=t0 + 0.5, hr=80).to_bytes()
    producer.send(topics.VITALS, key=None, value=keyless)
    sent_bad.append(keyless)
    producer.flush()
    producer.close()

    letters = read_deadletters(pipeline, expected=len(sent_bad), timeout_s=60.0, key=key)
    assert len(letters) == len(sent_bad)
    assert sorted(base64.b64decode(d["original_b64"]) for d in letters) == sorted(sent_bad)
    assert all(d["reason"] and d["topic"] == topics.VITALS for d in letters)
    assert any("missing message key" in d["reason"] for d in letters)

    factory = sessions(pipeline)

    def last_score():
        with factory() as s:
            return s.scalars(
                select(Score).where(Score.patient_id == pid, Score.event_time >= db_time(t0 + 600))
            ).first()

    assert wait_for(last_score, timeout_s=60), "the good message after the bad ones was not scored"


def db_time(t):
    from icuwatch.storage.repository import utc

    return utc(t)


def log_tail(log: Path, chars: int = 4000) -> str:
    """The end of the pipeline worker's log, for a failure message (test patients only)."""
    return log.read_text(errors="replace")[-chars:]


def test_worker_falls_back_to_rules_when_triton_is_down_and_returns(stack, pipeline, worker_log):
    pid = f"fb{uuid.uuid4().hex[:8]}"
    t0 = time.time() - 7200
    producer = make_producer(pipeline)
    factory = sessions(pipeline)

    def send(start, stop):
        for i in range(start, stop):
            # rr 23: NEWS2 2 and qSOFA 1, so the vital signs contribute (no alert: both risks < 0.3)
            v = schemas.Vitals(patient_id=pid, event_time=t0 + i, hr=85, rr=23, spo2=96, sbp=118, temp=37.2)
            producer.send(topics.VITALS, key=pid.encode(), value=v.to_bytes())
        producer.flush()

    def sources_after(t):
        with factory() as s:
            return [
                sc.source
                for sc in s.scalars(
                    select(Score)
                    .where(Score.patient_id == pid, Score.event_time >= db_time(t))
                    .order_by(Score.event_time)
                ).all()
            ]

    triton.stop(pipeline)
    try:
        send(0, 901)  # rescored at most 300 s apart: at least one score after t0 + 600
        down = wait_for(lambda: sources_after(t0 + 600), timeout_s=60)
        assert down and set(down) == {"fallback"}, (
            f"no fallback score while Triton was down: {down}; worker log:\n{log_tail(worker_log)}"
        )
    finally:
        triton.start(pipeline)
    start = 901
    deadline = time.monotonic() + 60
    while "triton" not in sources_after(t0 + 901) and time.monotonic() < deadline:
        send(start, start + 300)  # five more minutes of event time: one more score
        start += 300
        time.sleep(1.0)
    producer.close()
    after = wait_for(lambda: sources_after(t0 + 901), timeout_s=10)
    assert "triton" in after, f"worker never returned to Triton: {after}; log:\n{log_tail(worker_log)}"
    assert after[-1] == "triton"

    def stored():
        with factory() as s:
            return s.scalars(select(Score).where(Score.patient_id == pid).order_by(Score.event_time)).all()

    # the loop stops at the first Triton score; the last batch's own score (at most 300 s before its
    # end) may still be on its way to the database
    wait_for(lambda: stored()[-1].event_time.timestamp() - t0 >= start - 301, timeout_s=30)
    all_scores = stored()
    times = sorted(round(sc.event_time.timestamp() - t0) for sc in all_scores)
    # rescored on the patient's own 300-s grid: never more than 300 s between two scores
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert times[0] == 0 and times[-1] >= start - 301 and max(gaps) <= 300, (
        f"a score was lost while Triton was down: {times}"
    )

    # Same vital signs every second: the rule scores beside the student (NEWS2, qSOFA) equal the
    # fallback's; the risks are the student's through Triton and the rules' in the fallback.
    fallback = [sc for sc in all_scores if sc.source == "fallback"]
    served = [sc for sc in all_scores if sc.source == "triton" and sc.event_time > fallback[-1].event_time]
    assert fallback and served
    fb, tr = fallback[-1], served[-1]
    assert (fb.news2, fb.qsofa) == (tr.news2, tr.qsofa)
    assert fb.contributions is not None and tr.contributions is not None
    assert (fb.model, fb.model_version, tr.model, tr.model_version) == (
        "rules_v1",
        None,
        "student_live",
        STUDENT_VERSION,
    )
    assert fb.contributions["sepsis"]["vitals"] > 0 and fb.contributions["sepsis"]["labs"] == 0.0
