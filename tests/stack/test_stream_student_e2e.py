"""The worker scoring with a learned student: the default live student (``student_live``, committed,
sepsis and deterioration; its stored risks and contributions equal the served TorchScript's on the
rows the stream builds) and the distilled PhysioNet student (``ICUWATCH_SCORING_MODEL=student_physionet``):
PhysioNet stays replayed through broker -> worker -> tritonserver, stored sepsis risks equal the
student's own probabilities (in-process, early exit as served) on the rows the stream builds, and
the stored sepsis contributions its leave-one-modality-out differences p(row) - p(row without the
modality) on those rows.

A tiny student is distilled from a tiny teacher on a small PhysioNet cohort with toy labels (what is
checked is the plumbing, not the model), exported, and served by a tritonserver of this module on
ports 18200-18202 beside the session's broker.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import numpy as np
import pytest

from icuwatch.sources.physionet import Stay, default_data_dir, list_stays, read_psv

DATA = default_data_dir()
pytestmark = [
    pytest.mark.stack,
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(not DATA.is_dir(), reason=f"no PhysioNet stays in {DATA}"),
]
PORTS = {
    "ICUWATCH_TRITON_URL": "127.0.0.1:18201",
    "ICUWATCH_TRITON_HTTP_PORT": "18200",
    "ICUWATCH_TRITON_METRICS_PORT": "18202",
}


@pytest.fixture(scope="module")
def student(tmp_path_factory, one_torch_thread):
    """(TrainedModel, its directory): a toy-trained student on PhysioNet-shaped rows."""
    from icuwatch.fusion import model_store
    from icuwatch.fusion.cohorts import physionet
    from icuwatch.fusion.distill import DistillConfig, distill
    from icuwatch.fusion.training import TrainConfig, train

    cohort = physionet.build(limit=80, progress=False)
    # toy labels: positives in every split, whatever sepsis cases the 80 stays hold
    cohort.y = (cohort.inputs["vitals"][:, -1, 0] > 0.3).astype(np.int8)
    models = tmp_path_factory.mktemp("models")
    cfg = dict(epochs=1, rows_per_epoch=2000, batch_size=64, threads=1, modality_dropout=0.3)
    teacher, teacher_card = train("attention", cohort, TrainConfig(**cfg), progress=False)
    teacher_dir = model_store.save(teacher, teacher_card, models / teacher_card["model"])
    model, card = distill(teacher_dir, cohort, DistillConfig(**cfg), progress=False)
    directory = model_store.save(model, card, models / card["model"])
    return model_store.load(directory), directory


@pytest.fixture(scope="module")
def served(student, tmp_path_factory):
    from stack_fixtures import settings_for

    from icuwatch.deploy import triton
    from icuwatch.serving import export as triton_export

    trained, directory = student
    repo = tmp_path_factory.mktemp("triton-repo")
    triton_export.export_model(trained, repo, directory)
    settings, _ = settings_for(
        tmp_path_factory.mktemp("triton-student"), **PORTS, ICUWATCH_TRITON_EXTRA_REPOSITORIES=str(repo)
    )
    try:
        triton.start(settings, ready_models=[settings.triton_model, "student_physionet"], timeout_s=120)
        yield settings
    finally:
        triton.stop(settings)


def _stays(n: int) -> list[Stay]:
    from icuwatch.sources.psv import stay_messages

    out = []
    for path in list_stays(DATA, split="test"):
        stay = read_psv(path)
        stats: Counter = Counter()
        if 10 <= len(stay.values) <= 30:
            stay_messages(stay, 1_600_000_000.0, stats)
            if not stats["skipped_out_of_range"]:
                out.append(stay)
        if len(out) == n:
            break
    return out


def _without(row: dict, j: int) -> dict:
    """The cohort row with modality ``j`` (0 vitals, 1 labs) absent: zeros, flag off, staleness 0."""
    name = ("vitals", "labs")[j]
    out = {
        "inputs": {**row["inputs"], name: np.zeros_like(row["inputs"][name])},
        "present": row["present"].copy(),
        "staleness_h": row["staleness_h"].copy(),
    }
    out["present"][j], out["staleness_h"][j] = False, 0.0
    return out


def _expected(directory, stay: Stay, base: float) -> dict[float, tuple[float, dict[str, float]]]:
    """Per hour time, what ``icuwatch psv-predict --model student`` gives offline (the worker's row
    builder, early exit) and the sepsis contributions (p(row) - p(row without the modality); 0 for
    an absent one)."""
    from icuwatch.fusion.psv_predict import StudentStayPredictor, hour_times

    predictor = StudentStayPredictor(directory)
    rows = predictor.rows(stay, base)
    p = predictor.probabilities(rows)
    out = {}
    for i, (t, row) in enumerate(zip(hour_times(stay, base), rows)):
        contributions = {"vitals": 0.0, "waveforms": 0.0, "labs": 0.0, "cxr": 0.0}
        for j, name in enumerate(("vitals", "labs")):
            if row["present"][j]:
                contributions[name] = float(p[i] - predictor.probabilities([_without(row, j)])[0])
        out[float(t)] = (float(p[i]), contributions)
    return out


def _replay(stack, env_overrides: dict, tmp_path, port: int):
    """Two short PhysioNet test stays replayed through the session's broker into a worker of its own
    (``env_overrides``: its scoring model); returns (the stays as renamed, the replay's base time, the
    stored scores)."""
    from stack_fixtures import running_worker, wait_for, wait_for_scores

    from icuwatch.core import topics
    from icuwatch.sources.psv import stay_messages
    from icuwatch.storage import db
    from icuwatch.streams.kafka.producer import make_producer

    base_settings, env = stack
    url = f"sqlite:///{tmp_path / 'student.db'}"
    settings = base_settings.model_copy(
        update={"database_url": url, "app_id": f"student-{uuid.uuid4().hex[:6]}", "worker_web_port": port}
    )
    env = {**env, **env_overrides}
    db.upgrade(url)
    chosen = _stays(2)
    base = 1_700_000_000.0 + (time.time() % 1_000_000)
    suffix = uuid.uuid4().hex[:6]
    renamed = [Stay(f"{s.patient_id}x{suffix}", s.columns, s.values) for s in chosen]
    # Per hour: labs and ADT first, and only once the worker has taken them (its stats file) the vital
    # signs. A lab taken after the next hour's vital signs would only count from that hour on (the
    # worker revises the latest score, not an older one); the rule sepsis risk rarely moves with a
    # lab, the student's moves with every one, so the replay must not race here.
    messages = sorted((m for s in renamed for m in stay_messages(s, base)), key=lambda m: (m[0], m[1] == topics.VITALS))
    stats_path = settings.run_dir / f"worker-{settings.worker_web_port}.json"
    sent: Counter = Counter()

    def processed() -> dict[str, int] | None:
        try:
            return json.loads(stats_path.read_text())["processed_by_topic"]
        except (OSError, ValueError, KeyError):
            return None

    def settled() -> dict[str, int] | None:
        """The worker's counts once they stop moving (anything left in the topics it reads drained)."""
        before = processed()
        time.sleep(2.5)  # the stats file is written every second
        return before if before is not None and before == processed() else None

    def taken() -> bool:
        done = processed() or {}
        return all(done.get(t, 0) - baseline.get(t, 0) >= n for t, n in sent.items() if t != topics.VITALS)

    with running_worker(settings, env, tmp_path / "worker.log"):
        baseline = wait_for(settled, timeout_s=120, interval_s=0.1)
        assert baseline is not None, "the worker never settled"
        producer = make_producer(settings)
        last, last_topic = None, None
        for t, topic, msg in messages:
            if topic == topics.VITALS and last_topic not in (None, topics.VITALS):
                producer.flush()
                assert wait_for(taken, timeout_s=30, interval_s=0.05), f"worker did not take {dict(sent)}"
            elif last is not None and t > last:
                producer.flush()
                time.sleep(0.1)
            last_topic, last = topic, t
            producer.send(topic, key=msg.key(), value=msg.to_bytes())
            sent[topic] += 1
        producer.flush()
        producer.close()
        rows = wait_for_scores(url, {s.patient_id for s in renamed})
    return renamed, base, rows


def test_stored_sepsis_risks_are_the_students(stack, served, student, tmp_path):
    from icuwatch.fusion.psv_predict import hour_times, rule_outputs
    from icuwatch.storage.repository import utc

    _, directory = student
    env = {
        "ICUWATCH_TRITON_URL": served.triton_url,
        "ICUWATCH_SCORING_MODEL": "student_physionet",
        "ICUWATCH_SCORING_MODEL_DIR": str(directory),
    }
    renamed, base, rows = _replay(stack, env, tmp_path, 16068)
    compared = moved = 0
    for stay in renamed:
        expected = _expected(directory, stay, base)
        offline = rule_outputs(stay, base)
        streamed = {r.event_time: r for r in rows if r.patient_id == stay.patient_id}
        for i, t in enumerate(hour_times(stay, base)):
            row = streamed.get(utc(float(t)))
            if row is None:
                continue  # an hour without vital signs advances no clock
            assert row.source == "triton" and row.model == "student_physionet+rules"
            risk, contributions = expected[float(t)]
            assert row.sepsis_risk == pytest.approx(risk, abs=1e-5), (stay.patient_id, i, row.revision)
            assert row.contributions["sepsis"] == pytest.approx(contributions, abs=2e-5), (stay.patient_id, i)
            moved += any(abs(v) > 1e-4 for v in contributions.values())
            for field in ("deterioration_risk", "news2", "qsofa"):
                assert getattr(row, field) == pytest.approx(float(offline[field][i]), abs=1e-5), (i, field)
            compared += 1
    assert compared >= sum(len(s.values) for s in renamed) // 2 and moved > 0


def _expected_live(stay: Stay, base: float) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """Per hour, what the served live student's TorchScript answers in process on the rows the worker
    builds (``psv-predict --model student_live``'s path): (p [sepsis, deterioration], contributions
    [2 risks, 4 explanation modalities], each p(row) - p(row without the modality group))."""
    import torch

    from icuwatch.core import features
    from icuwatch.core.live_row import FEATURE_MODALITY_GROUPS, MODALITIES
    from icuwatch.core.settings import Settings
    from icuwatch.fusion.psv_predict import LiveStudentStayPredictor, hour_times, states_at_hours
    from icuwatch.streams.live_row import row
    from icuwatch.streams.student_row import leave_one_out, stack_rows

    predictor = LiveStudentStayPredictor(Settings())
    rows = [row(state, t, predictor.norm) for t, state in states_at_hours(stay, base)]
    groups = list(FEATURE_MODALITY_GROUPS.values())
    batch, without = leave_one_out(stack_rows(rows), MODALITIES, groups)
    with torch.no_grad():
        p, _ = predictor.module({k: torch.from_numpy(v) for k, v in batch.items()}, True)
    p = p.double().numpy()
    out = {}
    for i, t in enumerate(hour_times(stay, base)):
        contributions = np.zeros((2, len(features.MODALITIES)))
        for g, name in enumerate(FEATURE_MODALITY_GROUPS):
            if without[i, g] >= 0:
                contributions[:, features.MODALITIES.index(name)] = p[i] - p[without[i, g]]
        out[float(t)] = (p[i], contributions)
    return out


def test_stored_risks_are_the_served_live_students(stack, tmp_path):
    """The default scoring model (``student_live``, committed, served by the session's tritonserver):
    stored sepsis and deterioration risks and their contributions equal the served TorchScript's on
    the rows the stream builds; NEWS2 and qSOFA are the rules'."""
    from icuwatch.fusion.psv_predict import hour_times, rule_outputs
    from icuwatch.serving import MODEL_REPOSITORY
    from icuwatch.serving.export import newest_version_dir
    from icuwatch.storage.repository import utc

    served = newest_version_dir(MODEL_REPOSITORY / "student_live").name  # latest: 1
    renamed, base, rows = _replay(stack, {"ICUWATCH_SCORING_MODEL": "student_live"}, tmp_path, 16069)
    compared = 0
    for stay in renamed:
        expected = _expected_live(stay, base)
        offline = rule_outputs(stay, base)
        streamed = {r.event_time: r for r in rows if r.patient_id == stay.patient_id}
        for i, t in enumerate(hour_times(stay, base)):
            row = streamed.get(utc(float(t)))
            if row is None:
                continue
            assert (row.source, row.model, row.model_version) == ("triton", "student_live", served)
            p, contributions = expected[float(t)]
            assert row.sepsis_risk == pytest.approx(p[0], abs=1e-5), (stay.patient_id, i)
            assert row.deterioration_risk == pytest.approx(p[1], abs=1e-5), (stay.patient_id, i)
            for k, risk in enumerate(("deterioration", "sepsis")):
                want = dict(zip(("vitals", "waveforms", "labs", "cxr"), contributions[1 - k]))
                assert row.contributions[risk] == pytest.approx(want, abs=2e-5), (stay.patient_id, i, risk)
            for field in ("news2", "qsofa"):
                assert getattr(row, field) == pytest.approx(float(offline[field][i]), abs=1e-5), (i, field)
            compared += 1
    assert compared >= sum(len(s.values) for s in renamed) // 2
