"""psv-predict: challenge file format, strict causality, and agreement with the streaming path."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from icuwatch.sources import physionet
from icuwatch.sources.physionet import Stay, read_psv

DATA = physionet.default_data_dir()
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"PhysioNet data not at {DATA}")


def stays(n: int, min_rows: int = 10, max_rows: int = 400) -> list[Stay]:
    out = []
    for path in physionet.list_stays(DATA, split="test"):
        stay = read_psv(path)
        if min_rows <= len(stay.values) <= max_rows:
            out.append(stay)
        if len(out) == n:
            break
    return out


def truncated(stay: Stay, hours: int) -> Stay:
    return Stay(stay.patient_id, stay.columns, stay.values[:hours])


@needs_data
@pytest.mark.parametrize("model", ["rules", "news2", "qsofa"])
def test_rule_predictions_are_strictly_causal(model):
    from icuwatch.fusion.psv_predict import predictor

    predict, _ = predictor(model)
    rng = np.random.default_rng(3)
    for stay in stays(6, min_rows=20):
        full = predict(stay)
        assert full.shape == (len(stay.values),)
        for cut in rng.integers(1, len(stay.values), size=3):
            np.testing.assert_allclose(predict(truncated(stay, int(cut))), full[:cut], rtol=0, atol=0)


@needs_data
def test_predict_dir_writes_one_row_per_input_row(tmp_path):
    from icuwatch.fusion.psv_predict import predict_dir, predictor

    _, threshold = predictor("rules")

    src = tmp_path / "in"
    src.mkdir()
    chosen = stays(4)
    for stay in chosen:
        (src / f"{stay.patient_id}.psv").write_text((DATA / f"{stay.patient_id}.psv").read_text())
    assert predict_dir(src, tmp_path / "out", model="rules", progress=False) == 4
    for stay in chosen:
        lines = (tmp_path / "out" / f"{stay.patient_id}.psv").read_text().splitlines()
        assert lines[0] == "PredictedProbability|PredictedLabel"
        assert len(lines) - 1 == len(stay.values)
        for line in lines[1:]:
            p, y = line.split("|")
            assert 0.0 <= float(p) <= 1.0 and y in ("0", "1") and (y == "1") == (float(p) >= threshold)


@needs_data
@pytest.mark.stack
def test_streaming_scores_agree_with_psv_predict(stack, tmp_path):
    """Replay stays through broker -> worker -> tritonserver; each hour's final score must equal
    psv-predict's score for that hour."""
    from stack_fixtures import running_worker, wait_for_scores

    from icuwatch.fusion.psv_predict import hour_times, rule_outputs
    from icuwatch.sources.psv import stay_messages
    from icuwatch.storage import db
    from icuwatch.storage.repository import utc
    from icuwatch.streams.kafka.producer import make_producer

    base_settings, env = stack
    url = f"sqlite:///{tmp_path / 'agree.db'}"
    settings = base_settings.model_copy(
        update={"database_url": url, "app_id": f"agree-{uuid.uuid4().hex[:6]}", "worker_web_port": 16067}
    )
    db.upgrade(url)
    chosen = stays(3, min_rows=10, max_rows=40)
    base = 1_700_000_000.0 + (time.time() % 1_000_000)  # fresh event times: no clash with other runs
    suffix = uuid.uuid4().hex[:6]
    messages = []
    for stay in chosen:
        renamed = Stay(f"{stay.patient_id}x{suffix}", stay.columns, stay.values)
        messages += stay_messages(renamed, base)
    messages.sort(key=lambda m: m[0])

    env = {**env, "ICUWATCH_SCORING_MODEL": ""}  # the rule model early_warning, whose scores rule_outputs gives
    with running_worker(settings, env, tmp_path / "worker.log"):
        producer = make_producer(settings)
        last = None
        for t, topic, msg in messages:
            if last is not None and t > last:
                producer.flush()
                time.sleep(0.1)  # one replayed hour per 100 ms: topics stay within an hour of each other
            producer.send(topic, key=msg.key(), value=msg.to_bytes())
            last = t
        producer.flush()
        producer.close()
        rows = wait_for_scores(url, {f"{s.patient_id}x{suffix}" for s in chosen})

    compared = 0
    for stay in chosen:
        pid = f"{stay.patient_id}x{suffix}"
        times = hour_times(stay, base)
        offline = rule_outputs(stay, base)
        streamed = {r.event_time: r for r in rows if r.patient_id == pid}
        assert all(r.source == "triton" for r in streamed.values())
        for i, t in enumerate(times):
            row = streamed.get(utc(float(t)))
            if row is None:
                continue  # hours with no vital signs advance no clock: the stream scores no such hour
            for field in ("sepsis_risk", "deterioration_risk", "news2", "qsofa"):
                assert getattr(row, field) == pytest.approx(float(offline[field][i]), abs=1e-5), (pid, i, field)
            compared += 1
    assert compared >= sum(len(s.values) for s in chosen) // 2


@needs_data
def test_tuned_threshold_is_stored_and_read_back(tmp_path):
    from icuwatch.fusion.thresholds import stored_threshold, tune

    card = tune("qsofa", DATA, tmp_path, max_stays=120, progress=False)
    assert 0.0 <= card["threshold"] <= 1.0
    assert card["data"]["split"].startswith("val") and card["data"]["real_data"] is True
    assert stored_threshold(tmp_path, "qsofa") == card["threshold"]
    assert stored_threshold(tmp_path, "news2") is None


def test_the_default_is_the_served_model(tmp_path):
    """``psv-predict`` without ``--model`` scores with what the worker serves: the rules, or the
    student once ``ICUWATCH_SCORING_MODEL`` names one (then its trained weights are required)."""
    from icuwatch.core.errors import OperatorError
    from icuwatch.core.settings import Settings
    from icuwatch.fusion.psv_predict import predictor, rule_outputs, served_model

    rules_served = Settings(state_dir=tmp_path, scoring_model="")
    assert served_model(rules_served) == "rules"
    (stay,) = stays(1)
    predict, _ = predictor("served", settings=rules_served)
    np.testing.assert_array_equal(predict(stay), rule_outputs(stay)["sepsis_risk"].astype(np.float64))
    student_served = Settings(state_dir=tmp_path, scoring_model="student_physionet")
    assert served_model(student_served) == "student"
    with pytest.raises(OperatorError, match="no trained student"):
        predictor("served", settings=student_served)
