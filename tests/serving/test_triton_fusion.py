"""The trained teacher and the early-exit student exported as Triton models (``icuwatch export-triton``)
and served by the real tritonserver: same probabilities and exits as in-process, early exit inside a
batch, and the committed ``serving/models`` untouched.

A tiny teacher and student are trained on the toy cohort. The tests marked ``stack`` start their own
tritonserver on ports 18100-18102 (the session stack uses 18000-18002), serving the committed
repository plus the exported one as an extra repository, as ``ICUWATCH_TRITON_EXTRA_REPOSITORIES`` does.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pytest
import torch
from fusion_toy import toy_cohort
from stack_fixtures import settings_for

from icuwatch.deploy import triton
from icuwatch.fusion import model_store
from icuwatch.fusion.cohorts.base import gather
from icuwatch.fusion.distill import DistillConfig, distill
from icuwatch.fusion.strategies.base import to_tensors
from icuwatch.fusion.training import TrainConfig, train
from icuwatch.serving import export as triton_export

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PORTS = {
    "ICUWATCH_TRITON_URL": "127.0.0.1:18101",
    "ICUWATCH_TRITON_HTTP_PORT": "18100",
    "ICUWATCH_TRITON_METRICS_PORT": "18102",
}
KEYS = ["vitals", "labs", "static", "present", "staleness_h"]  # the toy cohort's inputs, in Triton input order


def _snapshot(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def committed_before():
    return _snapshot(triton.MODEL_REPOSITORY)


@pytest.fixture(scope="module")
def cohort():
    return toy_cohort(n_groups=60)


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory, one_torch_thread):
    """(teacher, student) as ``model_store.TrainedModel``, saved under a tmp models dir; the student's
    exit margins (around its alert threshold) set so that every exit answers some test rows."""
    models = tmp_path_factory.mktemp("models")
    teacher, teacher_card = train(
        "attention",
        cohort,
        TrainConfig(epochs=1, rows_per_epoch=2000, batch_size=64, threads=1, modality_dropout=0.3),
        progress=False,
    )
    teacher_dir = model_store.save(teacher, teacher_card, models / teacher_card["model"])
    student, card = distill(
        teacher_dir,
        cohort,
        DistillConfig(epochs=2, rows_per_epoch=2000, batch_size=64, threads=1, modality_dropout=0.3),
        progress=False,
    )
    with torch.no_grad():
        student(to_tensors(gather(cohort, cohort.rows("test"))))
        z = student.exit_logits
        center = float(student.exit_center)
        mid = [float((z[:, k] / student.exit_temperatures[k] - center).abs().median()) for k in range(2)]
    student.set_exits(margins=mid)
    card["exit_margins"] = mid
    student_dir = model_store.save(student, card, models / card["model"])
    return model_store.load(teacher_dir), model_store.load(student_dir), teacher_dir, student_dir


@pytest.fixture(scope="module")
def repository(trained, tmp_path_factory, committed_before):
    teacher, student, teacher_dir, student_dir = trained
    repo = tmp_path_factory.mktemp("triton-repo")
    info = {
        "teacher": triton_export.export_model(teacher, repo, teacher_dir),
        "student": triton_export.export_model(student, repo, student_dir),
    }
    return repo, info


def _numpy_batch(cohort, rows):
    return {k: np.ascontiguousarray(v) for k, v in gather(cohort, rows).items()}


# --- export (no server) ----------------------------------------------------------------------------


def test_export_writes_a_triton_model_per_network(repository, trained):
    repo, info = repository
    assert triton_export.batch_keys(trained[1].model.spec) == KEYS
    assert sorted(p.name for p in repo.iterdir()) == ["attention_toy", "student_toy"]
    for role, name in (("teacher", "attention_toy"), ("student", "student_toy")):
        config = (repo / name / "config.pbtxt").read_text()
        assert f'name: "{name}"' in config and 'backend: "python"' in config
        assert int(config.split("max_batch_size:")[1].split()[0]) >= 1024
        assert "dynamic_batching" in config
        for inp in ("VITALS", "LABS", "STATIC", "PRESENT", "STALENESS_H"):
            assert f'name: "{inp}"' in config
        assert 'name: "PROBABILITY"' in config
        assert ('name: "EXIT"' in config) == (role == "student")
        version = repo / name / "1"
        assert (version / "model.py").read_bytes() == triton_export.TEMPLATE.read_bytes()
        assert isinstance(triton_export.load_torchscript(version / "model.pt"), torch.jit.ScriptModule)
        provenance = json.loads((version / "export.json").read_text())
        assert provenance["source"] == info[role]["source"] and provenance["check"]["exits_equal"]
        assert provenance["check"]["max_abs_probability_difference"] <= triton_export.VERIFY_ATOL
        if role == "student":  # the exit rule travels with the model
            student = trained[1].model
            assert provenance["exit_center"] == pytest.approx(float(student.exit_center))
            assert provenance["exit_margins"] == pytest.approx(student.exit_margins.tolist())
    _, _, teacher_dir, student_dir = trained
    assert triton_export.is_current(repo, teacher_dir) and triton_export.is_current(repo, student_dir)


@torch.no_grad()
def test_torchscript_equals_the_eager_models(repository, trained, cohort):
    repo, _ = repository
    teacher, student = trained[0], trained[1]
    batch = to_tensors(gather(cohort, cohort.rows("test")))
    for tr, name in ((teacher, "attention_toy"), (student, "student_toy")):
        module = triton_export.load_torchscript(repo / name / "1" / "model.pt")
        temperature = None if name.startswith("student") else tr.temperature
        for early in (True, False):
            p_ref, e_ref = triton_export.reference(tr.model, batch, temperature, early)
            p, e = module(batch, early)
            np.testing.assert_allclose(p.numpy(), p_ref, rtol=0, atol=1e-6)
            assert np.array_equal(e.numpy(), e_ref)
    _, where = triton_export.reference(student.model, batch, early_exit=True)
    assert set(where.tolist()) == {0, 1, 2}


def test_production_image_check_accepts_the_export(repository):
    """deploy/production/check_triton_repository.py, which the Triton image build runs on both
    repositories, loads and runs both exported models (and would refuse a torch mismatch)."""
    import importlib.util

    from icuwatch.core.settings import REPO_ROOT

    path = REPO_ROOT / "deploy" / "production" / "check_triton_repository.py"
    spec = importlib.util.spec_from_file_location("check_triton_repository", path)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    repo, _ = repository
    lines = check.check([triton.MODEL_REPOSITORY, repo], check.release(torch.__version__))
    assert any("attention_toy: version 1" in line for line in lines)
    student = next(line for line in lines if "student_toy: version 1" in line)
    assert "exits [" in student


def test_default_repository_is_generated_not_the_committed_one(tmp_path):
    settings, _ = settings_for(tmp_path)
    assert triton_export.default_repository(settings) == tmp_path / "triton" / "models"
    assert triton_export.default_repository().resolve() != triton.MODEL_REPOSITORY.resolve()
    assert not triton.MODEL_REPOSITORY.resolve().is_relative_to(triton_export.default_repository().resolve())


def test_repositories_default_alternative_and_extra(tmp_path):
    settings, _ = settings_for(tmp_path)
    assert triton.repositories(settings) == [triton.MODEL_REPOSITORY.resolve()]
    extra = tmp_path / "fusion-models"
    settings, _ = settings_for(tmp_path, ICUWATCH_TRITON_EXTRA_REPOSITORIES=str(extra))
    assert triton.repositories(settings) == [triton.MODEL_REPOSITORY.resolve(), extra.resolve()]
    settings, _ = settings_for(tmp_path, ICUWATCH_TRITON_MODEL_REPOSITORY=str(extra))
    assert triton.repositories(settings) == [extra.resolve()]
    assert triton.repositories(settings, extra_repositories=[extra]) == [extra.resolve()]


def test_export_says_what_to_train_when_a_model_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(model_store, "models_dir", lambda: tmp_path / "models")
    with pytest.raises(FileNotFoundError, match="icuwatch train --strategy attention --cohort physionet"):
        triton_export.export("physionet", tmp_path / "repo")


# --- served by tritonserver ------------------------------------------------------------------------


FLOOR = "student_toy_floor"


@pytest.fixture(scope="module")
def served(repository, trained, tmp_path_factory):
    """tritonserver on test ports: the committed repository plus the exported one as an extra (and,
    in a third repository, ``bench models``' compute-free floor model with the student's interface)."""
    import os

    import tritonclient.grpc as grpcclient

    from icuwatch.benchmarks.models import floor_model

    repo, _ = repository
    floor_repo = tmp_path_factory.mktemp("floor-repo")
    floor_model(floor_repo, trained[1].model.spec, FLOOR)
    settings, _ = settings_for(
        tmp_path_factory.mktemp("triton-fusion"),
        **PORTS,
        ICUWATCH_TRITON_EXTRA_REPOSITORIES=os.pathsep.join([str(repo), str(floor_repo)]),
    )
    try:
        triton.start(
            settings, ready_models=[settings.triton_model, "attention_toy", "student_toy", FLOOR], timeout_s=120
        )
        client = grpcclient.InferenceServerClient(settings.triton_url)
        yield client
        client.close()
    finally:
        triton.stop(settings)


def _infer(client, model, batch, early_exit=True, student=False):
    from icuwatch.benchmarks.models import infer

    return infer(client, model, batch, KEYS, early_exit, student)


@pytest.mark.stack
def test_triton_teacher_equals_the_in_process_model(served, trained, cohort):
    teacher = trained[0]
    rows = cohort.rows("test")
    batch = _numpy_batch(cohort, rows)
    p, _ = _infer(served, "attention_toy", batch)
    with torch.no_grad():
        expected = teacher.probabilities(teacher.model(to_tensors(batch)).numpy())
    np.testing.assert_allclose(p, expected, rtol=0, atol=1e-6)


@pytest.mark.stack
def test_triton_student_equals_the_in_process_early_exit_and_full_student(served, trained, cohort):
    student = trained[1].model
    rows = cohort.rows("test")
    batch = _numpy_batch(cohort, rows)
    with torch.no_grad():
        logits, where = student.forward_early_exit(to_tensors(batch))
        expected = torch.sigmoid(student.calibrated(logits, where)).numpy()
        full = torch.sigmoid(student(to_tensors(batch)) / student.exit_temperatures[-1]).numpy()
    p, e = _infer(served, "student_toy", batch, student=True)
    np.testing.assert_allclose(p, expected, rtol=0, atol=1e-6)
    assert np.array_equal(e, where.numpy())
    assert set(e.tolist()) == {0, 1, 2}
    p, e = _infer(served, "student_toy", batch, early_exit=False, student=True)
    np.testing.assert_allclose(p, full, rtol=0, atol=1e-6)
    assert (e == 2).all()


@pytest.mark.stack
def test_a_mixed_batch_sends_only_the_rows_near_the_alert_threshold_deeper(served, trained, cohort):
    student = trained[1].model
    rows = cohort.rows("test")
    with torch.no_grad():
        student(to_tensors(gather(cohort, rows)))
        distance0 = (student.exit_logits[:, 0] / student.exit_temperatures[0] - student.exit_center).abs().numpy()
    order = np.argsort(distance0)
    near, far = rows[order[:8]], rows[order[-8:]]
    margin0 = float(student.exit_margins[0])
    assert (distance0[order[-8:]] >= margin0).all() and (distance0[order[:8]] < margin0).all()
    mixed = np.empty(16, dtype=rows.dtype)
    mixed[0::2], mixed[1::2] = far, near
    _, e = _infer(served, "student_toy", _numpy_batch(cohort, mixed), student=True)
    assert (e[0::2] == 0).all(), "a row far from the alert threshold went deeper than exit 0"
    assert (e[1::2] > 0).all(), "a row near the alert threshold left at exit 0"


@pytest.mark.stack
def test_concurrent_requests_batched_together_get_their_own_answers(served, trained, cohort):
    """Many small requests in flight at once, early exit on and off: whatever Triton's dynamic
    batcher puts together (concatenated, run, split back in model.py), each request gets the
    in-process answer for its own rows."""
    import threading

    import tritonclient.grpc as grpcclient

    from icuwatch.benchmarks.models import _inputs, _stats
    from icuwatch.serving.export import EARLY_EXIT_PARAMETER, EXIT, PROBABILITY

    student = trained[1].model
    rows = cohort.rows("test")
    batch = _numpy_batch(cohort, rows)
    with torch.no_grad():
        logits, where = student.forward_early_exit(to_tensors(batch))
        early_p = torch.sigmoid(student.calibrated(logits, where)).numpy()
        full_p = torch.sigmoid(student(to_tensors(batch)) / student.exit_temperatures[-1]).numpy()
    client = grpcclient.InferenceServerClient(PORTS["ICUWATCH_TRITON_URL"])
    before = _stats(client, "student_toy")
    outputs = [grpcclient.InferRequestedOutput(PROBABILITY), grpcclient.InferRequestedOutput(EXIT)]
    results, done, lock = {}, threading.Event(), threading.Lock()
    jobs = [(s, min(s + 3, len(rows)), early) for early in (True, False) for s in range(0, len(rows), 3)]

    def callback(job, result, error):
        with lock:
            results[job] = error if error is not None else (result.as_numpy(PROBABILITY), result.as_numpy(EXIT))
            if len(results) == len(jobs):
                done.set()

    try:
        for job in jobs:
            s, e, early = job
            client.async_infer(
                "student_toy",
                _inputs({k: v[s:e] for k, v in batch.items()}, KEYS),
                lambda result, error, job=job: callback(job, result, error),
                outputs=outputs,
                parameters=None if early else {EARLY_EXIT_PARAMETER: False},
            )
        assert done.wait(60), "not every request was answered"
        after = _stats(client, "student_toy")
    finally:
        client.close()
    # the batcher did put requests together (else this tested the one-request path only)
    assert after["executions"] - before["executions"] < len(jobs)
    for (s, e, early), answer in results.items():
        assert not isinstance(answer, Exception), answer
        p, exits = answer[0].reshape(-1), answer[1].reshape(-1)
        if early:
            np.testing.assert_allclose(p, early_p[s:e], rtol=0, atol=1e-6)
            assert np.array_equal(exits, where.numpy()[s:e])
        else:
            np.testing.assert_allclose(p, full_p[s:e], rtol=0, atol=1e-6)
            assert (exits == 2).all()


@pytest.mark.stack
def test_the_floor_model_answers_the_students_outputs_without_computing_and_triton_splits_its_time(served, cohort):
    from icuwatch.benchmarks.models import _server_split, _server_stats

    batch = _numpy_batch(cohort, cohort.rows("test")[:50])
    before = _server_stats(served, FLOOR)
    p, e = _infer(served, FLOOR, batch, student=True)
    after = _server_stats(served, FLOOR)
    deadline = time.monotonic() + 5.0
    while after["count"] == before["count"] and time.monotonic() < deadline:  # Triton counts after it answers
        time.sleep(0.05)
        after = _server_stats(served, FLOOR)
    assert p.shape == (50,) and e.shape == (50,) and not p.any() and not e.any()
    split = _server_split(before, after, [1.0])
    assert after["count"] == before["count"] + 1
    assert split["server_ms"] > 0 and split["compute_infer_ms"] > 0
    parts = sum(split[f"{part}_ms"] for part in ("queue", "compute_input", "compute_infer", "compute_output"))
    assert parts <= split["server_ms"] + 1e-3
    assert split["client_minus_server_ms"] == pytest.approx(1000.0 - split["server_ms"], abs=1e-2)


@pytest.mark.stack
def test_the_committed_rule_model_still_serves_and_its_repository_is_untouched(served, committed_before):
    import tritonclient.grpc as grpcclient

    from icuwatch.core import features

    x = np.zeros((2, features.N_FEATURES), dtype=np.float32)
    inp = grpcclient.InferInput("FEATURES", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = served.infer("early_warning", [inp])
    assert result.as_numpy("DETERIORATION_RISK").shape == (2, 1)
    assert _snapshot(triton.MODEL_REPOSITORY) == committed_before
    assert not any(p.name in ("attention_toy", "student_toy") for p in triton.MODEL_REPOSITORY.iterdir())
