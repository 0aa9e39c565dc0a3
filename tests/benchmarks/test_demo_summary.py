"""``icuwatch demo --json``'s summary names the models (issue 19, must-have 7): scores counted per
``<name>/<version>`` beside the triton/fallback split, and each alert's model and version, read
back from a real database (SQLite and PostgreSQL) the way the demo reads its run."""

from __future__ import annotations

import time

from icuwatch.benchmarks.demo import describe, read_back, score_counts
from icuwatch.core import schemas
from icuwatch.storage import repository as repo

T = time.time() - 3600
PREFIX = "demo120000-"


def _score(pid: str, t: float, model: str, version: str | None, source: str) -> schemas.Score:
    return schemas.Score(
        patient_id=pid,
        event_time=t,
        model=model,
        model_version=version,
        source=source,
        deterioration_risk=0.6,
        sepsis_risk=0.1,
        news2=7,
        qsofa=1,
        staleness_s={"vitals": 0.0},
        scored_at=t + 1,
    )


def test_scores_by_model_and_source_and_each_alerts_model(sessions):
    p1, p2 = f"{PREFIX}0001", f"{PREFIX}0002"
    with sessions.begin() as s:
        repo.add_scores(
            s,
            [_score(p1, T + 60 * i, "early_warning", "2", "triton") for i in range(5)]
            + [_score(p2, T + 60 * i, "early_warning", "1", "triton") for i in range(3)]  # after a rollback
            + [_score(p2, T + 600, "rules_v1", None, "fallback")]  # Triton unreachable
            + [_score("another-run-0001", T, "early_warning", "2", "triton")],  # not this run's
        )
        repo.add_alert(
            s,
            schemas.Alert(
                patient_id=p1,
                event_time=T + 120,
                alert_id=f"{p1}:deterioration:{int(T + 60)}",
                kind="deterioration",
                risk=0.6,
                news2=7,
                qsofa=1,
                model="early_warning",
                model_version="2",
                source="triton",
                episode_start=T + 60,
                raised_at=T + 121,
            ),
        )
    with sessions() as s:
        alerts, scores = read_back(s, PREFIX)
    assert scores == {
        "by_model": {"early_warning/1": 3, "early_warning/2": 5, "rules_v1": 1},
        "triton": 8,
        "fallback": 1,
    }
    assert [(a["patient_id"], a["model"], a["model_version"], a["source"]) for a in alerts] == [
        (p1, "early_warning", "2", "triton")
    ]

    summary = {
        "run": PREFIX.rstrip("-"),
        "data": "simulated",
        "produced": {"icu.vitals": 10},
        "processed": 10,
        "deadlettered": 0,
        "not_taken": 0,
        "scores": scores,
        "patients": {"total": 2, "deteriorating": 1, "deteriorating_alerted": 1, "stable_alerted": 0},
        "alerts": [{**alerts[0], "true_condition": "sepsis", "minutes_after_onset": 12.0}],
        "database": "db",
        "ground_truth": "truth.json",
        "worker_log": "worker.log",
    }
    text = describe(summary)
    assert "scores stored: 8 via Triton, 1 by fallback rules (early_warning/1 3, early_warning/2 5, rules_v1 1)" in text
    assert "+12.0 min after the simulated onset, by early_warning/2" in text


def test_score_counts_of_an_empty_run():
    assert score_counts([]) == {"by_model": {}, "triton": 0, "fallback": 0}
