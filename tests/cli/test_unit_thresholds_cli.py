"""``icuwatch tune-thresholds --unit``: tune from the database and an outcomes file, roll back,
list; one-line errors (the tuning itself: tests/fusion/test_unit_tuning.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from icuwatch.cli.main import main
from icuwatch.core import schemas
from icuwatch.core.settings import get_settings
from icuwatch.storage import db, repository

T0 = 1_765_000_000.0


@pytest.fixture
def database(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'icuwatch.db'}"
    monkeypatch.setenv("ICUWATCH_DATABASE_URL", url)
    get_settings.cache_clear()
    db.upgrade(url)
    yield url
    get_settings.cache_clear()


def seed(url: str, tmp_path) -> str:
    """MICU: 10 patients scored every 5 min for a day by the live student; two deteriorate."""
    rng = np.random.default_rng(0)
    sessions = db.session_factory(db.make_engine(url))
    truth, scores = [], []
    for i in range(10):
        pid, onset = f"m{i}", (T0 + 3600 * (8 + 4 * i) if i < 2 else None)
        truth.append({"patient_id": pid, "onset_time": onset, "condition": "sepsis" if onset else "stable"})
        for k in range(288):
            t = T0 + 300 * k
            risk = 0.05 + abs(rng.normal(0, 0.01)) + (0.3 if onset and t > onset - 1800 else 0.0)
            scores.append(
                schemas.Score(
                    patient_id=pid,
                    event_time=t,
                    model="student_live",
                    source="triton",
                    deterioration_risk=risk,
                    sepsis_risk=risk,
                    news2=1,
                    qsofa=0,
                    staleness_s={},
                    scored_at=t,
                )  # fmt: skip
            )
    with sessions.begin() as s:
        for i in range(10):
            repository.upsert_patient(s, schemas.Adt(patient_id=f"m{i}", event_time=T0, event="admit", unit="MICU"))
        repository.add_scores(s, scores)
    path = tmp_path / "truth.json"
    path.write_text(json.dumps(truth))
    return str(path)


def test_tune_roll_back_and_list_a_unit_s_threshold(database, tmp_path, capsys):
    outcomes = seed(database, tmp_path)
    assert (
        main(["tune-thresholds", "--unit", "MICU", "--outcomes", outcomes, "--by", "eng.ito", "--kind", "sepsis"]) == 0
    )
    (tuned,) = json.loads(capsys.readouterr().out)
    assert (tuned["unit"], tuned["model"], tuned["version"], tuned["positives"]) == ("MICU", "student_live", 1, 2)
    assert tuned["chosen"]["caught"] == 2 and 0.07 < tuned["chosen"]["threshold"] < 0.4  # above every stable score
    assert main(["tune-thresholds", "--unit", "MICU", "--rollback", "--by", "eng.kim"]) == 0  # both kinds asked
    (back,) = json.loads(capsys.readouterr().out)  # only sepsis had one in force; the model found by itself
    assert (back["kind"], back["model"], back["threshold"]) == ("sepsis", "student_live", None)
    assert main(["tune-thresholds", "--unit", "MICU", "--history"]) == 0
    history = json.loads(capsys.readouterr().out)
    assert [(h["version"], h["active"], h["by"]) for h in history] == [(1, False, "eng.ito"), (2, True, "eng.kim")]


def test_unit_tuning_errors_are_one_line(database, tmp_path, capsys):
    outcomes = seed(database, tmp_path)
    for argv, expected in (
        (["--outcomes", outcomes], "--by WHO is required"),
        (["--by", "eng.ito"], "--outcomes FILE is required"),
        (["--outcomes", outcomes, "--by", "eng.ito", "--source", "shadow"], "no shadow scores of unit MICU"),
        (["--rollback", "--by", "eng.ito"], "nothing to roll back"),
    ):
        assert main(["tune-thresholds", "--unit", "MICU", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err, err
