"""A demo run (``icuwatch demo``'s own code, on the test stack) with the rule model as the live
shadow (issue 22's "done when", shorter): security — no patient identifier in any log (worker, API,
broker, tritonserver); the shadow scores every live batch, its alerts stay out of the nurses' tables,
and ``icuwatch shadow report`` compares the two."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from icuwatch.benchmarks.demo import run_demo
from icuwatch.cli.main import main
from icuwatch.core.settings import get_settings
from icuwatch.deploy import api_server
from icuwatch.serving import MODEL_REPOSITORY

pytestmark = pytest.mark.stack


def test_demo_run_with_a_shadow_logs_no_patient_identifier(stack, tmp_path, monkeypatch, capsys):
    base, env = stack
    settings = base.model_copy(
        update={
            "database_url": f"sqlite:///{tmp_path / 'demo.db'}",
            "app_id": f"icuwatch-demo-{uuid.uuid4().hex[:8]}",
            "worker_web_port": 16177,
            "api_port": 18090,
        }
    )
    demo_env = {
        **env,
        "ICUWATCH_DATABASE_URL": settings.database_url,
        "ICUWATCH_API_PORT": "18090",
        "ICUWATCH_SHADOW_MODEL": "early_warning",
    }
    for name, value in demo_env.items():
        monkeypatch.setenv(name, value)  # the demo's worker and API processes read their settings from it
    try:
        summary = run_demo(settings, minutes=0.5, patients=3, speed=60.0, seed=5, keep_stack=True)
    finally:
        api_server.stop(settings)

    truth = json.loads(Path(summary["ground_truth"]).read_text())
    ids = {t["patient_id"] for t in truth}
    assert len(ids) == 3 and summary["processed"] > 0 and summary["deadlettered"] > 0
    assert summary["scores"]["triton"] > 0, summary["scores"]
    # issue 19: scores per model version beside the source split; every alert names its model
    scores = summary["scores"]
    live = f"student_live/{_served_version('student_live')}"
    assert scores["by_model"].get(live, 0) == scores["triton"], scores  # the default: the live student
    assert sum(scores["by_model"].values()) == scores["triton"] + scores["fallback"]
    assert all(a["model"] and "model_version" in a for a in summary["alerts"]), summary["alerts"]
    # issue 22: the shadow answered every batch the live model did; no nurse-facing alert is its
    shadow = summary["shadow"]
    assert shadow is not None and list(shadow["by_model"]) == [f"early_warning/{_served_version('early_warning')}"]
    assert sum(shadow["by_model"].values()) == scores["triton"], (shadow, scores)
    assert {a["model"] for a in summary["alerts"]} <= {"student_live", "rules_v1"}
    get_settings.cache_clear()  # the CLI reads ICUWATCH_DATABASE_URL set above
    try:
        assert main(["shadow", "report", "--json"]) == 0
    finally:
        get_settings.cache_clear()
    report = json.loads(capsys.readouterr().out)
    assert report["live"]["model"] == live and report["shadow"]["model"].startswith("early_warning/")
    # the report covers the whole database, which holds more than this run: a new consumer group
    # reads the shared broker's topics from the start (earlier tests' patients, and the scores
    # other tests' workers published), so only lower bounds hold here
    # (another test's worker on the shared broker may have published scores of a model this
    # database never recorded thresholds for: only this run's models must have theirs)
    assert report["paired_scores"] >= scores["triton"]
    assert not {"student_live", "early_warning"} & set(report["models_without_thresholds"]), report
    assert 0.0 <= report["agreement"] <= 1.0 and report["shadow"]["alert_episodes"] >= shadow["would_be_alerts"]

    logs = sorted(settings.log_dir.glob("*.log"))
    names = {p.name for p in logs}
    assert "demo-worker.log" in names and any("api" in n for n in names), names
    for path in logs:
        text = path.read_text(errors="replace")
        leaked = sorted(i for i in ids | {summary["run"]} if i in text)
        assert not leaked, f"{path.name} names {leaked}"


def _served_version(model: str) -> str:
    """The highest version directory of a model in the shipped repository (what Triton serves)."""
    return str(max(int(p.name) for p in (MODEL_REPOSITORY / model).iterdir() if p.name.isdigit()))
