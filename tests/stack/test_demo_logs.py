"""Security: a demo run (``icuwatch demo``'s own code, on the test stack) writes no patient
identifier into any log: worker, API, broker or tritonserver."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from icuwatch.benchmarks.demo import run_demo
from icuwatch.deploy import api_server

pytestmark = pytest.mark.stack


def test_demo_run_logs_carry_no_patient_identifier(stack, tmp_path, monkeypatch):
    base, env = stack
    settings = base.model_copy(
        update={
            "database_url": f"sqlite:///{tmp_path / 'demo.db'}",
            "app_id": f"icuwatch-demo-{uuid.uuid4().hex[:8]}",
            "worker_web_port": 16177,
            "api_port": 18090,
        }
    )
    for name, value in {**env, "ICUWATCH_DATABASE_URL": settings.database_url, "ICUWATCH_API_PORT": "18090"}.items():
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
    assert scores["by_model"].get("student_live/1", 0) == scores["triton"], scores  # the default: the live student
    assert sum(scores["by_model"].values()) == scores["triton"] + scores["fallback"]
    assert all(a["model"] and "model_version" in a for a in summary["alerts"]), summary["alerts"]

    logs = sorted(settings.log_dir.glob("*.log"))
    names = {p.name for p in logs}
    assert "demo-worker.log" in names and any("api" in n for n in names), names
    for path in logs:
        text = path.read_text(errors="replace")
        leaked = sorted(i for i in ids | {summary["run"]} if i in text)
        assert not leaked, f"{path.name} names {leaked}"
