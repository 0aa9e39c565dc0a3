"""Per-modality contributions: the rule model's leave-one-modality-out deltas, the Triton model that
serves them, the fallback, the v1 messages that carry them, migration 0004, storage, API and FHIR.

Database tests run on SQLite and on the PostgreSQL server at 127.0.0.1:5432 (conftest's ``url``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import re
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from icuwatch.core import features as F
from icuwatch.core import rules, schemas, topics
from icuwatch.core.settings import REPO_ROOT, Settings
from icuwatch.serving import MODEL_REPOSITORY
from icuwatch.storage import db, lifecycle
from icuwatch.storage import repository as repo
from icuwatch.storage.models import Alert as AlertRow
from icuwatch.storage.models import Base
from icuwatch.storage.models import Score as ScoreRow
from icuwatch.streams import alerting, patient_state
from icuwatch.streams.batcher import ScoreBatcher
from icuwatch.streams.scoring import TritonScorer

T0 = 1_700_000_000.0
MODEL_DIR = MODEL_REPOSITORY / "early_warning"


def L(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def det(news2: int) -> float:
    return L(1.35 * (news2 - 6.5))


def sep(points: int) -> float:
    return L(1.5 * (points - 2.5))


def row(**values: float) -> np.ndarray:
    x = F.empty(1)
    for name, value in values.items():
        x[0, F.INDEX[name]] = value
    return x


def by_modality(x: np.ndarray) -> dict[str, tuple[float, float]]:
    c = rules.contributions(x)
    return {m: (float(c[m][0, 0]), float(c[m][0, 1])) for m in F.MODALITIES}


# ------------------------------------------------------------------------------------ the layout


def test_layout_is_one_set_of_constants():
    assert F.MODALITIES == ("vitals", "waveforms", "labs", "cxr") == patient_state.MODALITIES
    assert F.CONTRIBUTION_RISKS == ("deterioration", "sepsis") == tuple(alerting.RISK_FIELD)
    assert F.CONTRIBUTIONS_SHAPE == (2, 4)
    assert set(F.MODALITY_FEATURES) == set(F.MODALITIES)
    columns = [c for m in F.MODALITIES for c in F.MODALITY_FEATURES[m]]
    assert len(columns) == len(set(columns)) and set(columns) <= set(F.FEATURE_NAMES)
    assert F.MODALITY_FEATURES["vitals"] == (
        "hr",
        "spo2",
        "rr",
        "sbp",
        "map",
        "temp",
        "o2_supplement",
        "altered_mentation",
    )
    assert F.MODALITY_FEATURES["labs"] == ("lactate", "wbc", "creatinine", "platelets", "bilirubin")
    assert F.MODALITY_FEATURES["waveforms"] == ("ecg_hr", "ppg_pr") and F.MODALITY_FEATURES["cxr"] == ()


def test_contributions_as_dicts_follows_the_layout_and_drops_unusable_rows():
    c = np.zeros((3, 2, 4), np.float32)
    c[0, 1, 2] = 0.25  # sepsis x labs
    c[0, 0, 0] = -0.0
    c[1, 0, 3] = np.nan
    c[2, 1, 1] = 1.5  # no risk difference or weight is larger than 1
    out = F.contributions_as_dicts(c)
    assert out[0] == {
        "deterioration": {"vitals": 0.0, "waveforms": 0.0, "labs": 0.0, "cxr": 0.0},
        "sepsis": {"vitals": 0.0, "waveforms": 0.0, "labs": 0.25, "cxr": 0.0},
    }
    assert math.copysign(1.0, out[0]["deterioration"]["vitals"]) == 1.0  # no -0.0 on the wire
    assert out[1] is None and out[2] is None
    with pytest.raises(ValueError, match="contributions must be"):
        F.contributions_as_dicts(np.zeros((1, 4, 2)))


# ------------------------------------------------------------------------------------ rule model


def test_high_rr_low_sbp_and_lactate_hand_checked():
    # NEWS2: rr 24 -> 2, sbp 95 -> 2, temp 37 -> 0: 4 (0 without vitals).
    # qSOFA 2 (rr >= 22, sbp <= 100) + infection 1 (lactate >= 2; temp 37 normal) = 3.
    # Without vitals: qSOFA 0 + lactate 1 = 1. Without labs: qSOFA 2 + 0 = 2.
    c = by_modality(row(rr=24, sbp=95, lactate=3.1, temp=37.0))
    assert c["vitals"][0] == pytest.approx(det(4) - det(0), abs=1e-6)
    assert c["vitals"][1] == pytest.approx(sep(3) - sep(1), abs=1e-6)
    assert c["vitals"][1] > 0.5
    assert c["labs"] == pytest.approx((0.0, sep(3) - sep(2)), abs=1e-6)
    assert c["waveforms"] == (0.0, 0.0) and c["cxr"] == (0.0, 0.0)


def test_blanking_a_modality_without_data_gives_zero():
    # No labs at all: the labs contribution is exactly 0 for both risks; vitals carry everything.
    c = by_modality(row(rr=26, sbp=88, hr=125, spo2=90, temp=38.5))
    assert c["labs"] == (0.0, 0.0)
    assert c["vitals"][0] > 0.5 and c["vitals"][1] > 0
    # No data at all: nothing contributes.
    assert all(v == (0.0, 0.0) for v in by_modality(F.empty(1)).values())
    # Waveform features present, but the rules read none of them.
    assert by_modality(row(ecg_hr=150, ppg_pr=150))["waveforms"] == (0.0, 0.0)


def test_leave_one_out_is_not_additive():
    # Infection sign "WBC > 12 or temperature > 38": either modality alone keeps it, so neither
    # gets credit for the sepsis risk; the fever still raises NEWS2 by 1 point (39.5 -> 2).
    c = by_modality(row(rr=16, sbp=120, temp=39.5, wbc=15))
    assert c["labs"] == (0.0, 0.0)
    assert c["vitals"] == pytest.approx((det(2) - det(0), 0.0), abs=1e-6)


def test_vectorised_contributions_match_blanking_row_by_row():
    rng = np.random.default_rng(7)
    n = 64
    x = F.empty(n)
    ranges = {
        "hr": (30, 160),
        "spo2": (80, 100),
        "rr": (5, 35),
        "sbp": (70, 230),
        "temp": (34, 40.5),
        "o2_supplement": (0, 1),
        "altered_mentation": (0, 1),
        "lactate": (0.5, 6),
        "wbc": (2, 20),
        "ecg_hr": (30, 160),
    }
    for name, (lo, hi) in ranges.items():
        v = rng.uniform(lo, hi, n)
        v[rng.random(n) < 0.3] = np.nan
        x[:, F.INDEX[name]] = v
    arr = rules.contribution_array(x)
    assert arr.shape == (n, 2, 4) and arr.dtype == np.float32
    full = rules.score(x)
    for j, m in enumerate(F.MODALITIES):
        blanked = x.copy()
        blanked[:, [F.INDEX[c] for c in F.MODALITY_FEATURES[m]]] = np.nan
        without = rules.score(blanked)
        np.testing.assert_allclose(arr[:, 0, j], full["deterioration_risk"] - without["deterioration_risk"], atol=1e-7)
        np.testing.assert_allclose(arr[:, 1, j], full["sepsis_risk"] - without["sepsis_risk"], atol=1e-7)
    # rule points are never negative and a missing value scores 0: data can only raise a rule risk
    assert (arr >= 0).all() and (arr[:, :, 3] == 0).all()
    assert (arr[:, :, 0] > 0).any() and (arr[:, 1, 2] > 0).any()
    np.testing.assert_array_equal(arr[5], rules.contribution_array(x[5:6])[0])
    explained = rules.score_explained(x)
    for key, value in full.items():
        np.testing.assert_array_equal(explained[key], value)  # the old outputs are unchanged
    np.testing.assert_array_equal(explained["contributions"], arr)


# ---------------------------------------------------------------------------------------- Triton


def test_config_declares_contributions_and_version_2_is_served():
    text = (MODEL_DIR / "config.pbtxt").read_text()
    m = re.search(r'name: "CONTRIBUTIONS", data_type: TYPE_FP32, dims: \[ (\d+), (\d+) \]', text)
    assert m and (int(m[1]), int(m[2])) == F.CONTRIBUTIONS_SHAPE
    for name in ("DETERIORATION_RISK", "SEPSIS_RISK", "NEWS2", "QSOFA"):
        assert f'name: "{name}"' in text
    assert "latest: { num_versions: 1 }" in text
    versions = sorted(int(p.name) for p in MODEL_DIR.iterdir() if p.is_dir() and p.name.isdigit())
    assert versions[-1] == 2 and (MODEL_DIR / "2" / "model.py").is_file()
    assert "CONTRIBUTIONS" not in (MODEL_DIR / "1" / "model.py").read_text()  # the rollback version


class _Tensor:
    def __init__(self, name, arr):
        self.name, self.arr = name, np.asarray(arr)

    def as_numpy(self):
        return self.arr


class _Response:
    def __init__(self, output_tensors, error=None):
        self.outputs = {t.name: t.arr for t in output_tensors}
        self.error = error


def test_served_model_code_gives_the_fallback_numbers(monkeypatch):
    """Version 2's model.py, run against a stand-in for the python backend's utils module."""
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor = _Tensor
    pb.InferenceResponse = _Response
    pb.TritonError = str
    pb.get_input_tensor_by_name = lambda request, name: request[name]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    monkeypatch.delenv("ICUWATCH_SITE_PACKAGES", raising=False)
    spec = importlib.util.spec_from_file_location("early_warning_v2", MODEL_DIR / "2" / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.TritonPythonModel()
    model.initialize({})
    x = np.concatenate([row(rr=24, sbp=95, lactate=3.1, temp=37.0), F.empty(1), row(hr=135, spo2=90)])
    ok, bad = model.execute([{"FEATURES": _Tensor("FEATURES", x)}, {"FEATURES": _Tensor("FEATURES", x[:, :5])}])
    assert bad.error and not bad.outputs
    assert ok.outputs["CONTRIBUTIONS"].shape == (3, 2, 4) and ok.outputs["CONTRIBUTIONS"].dtype == np.float32
    fallback = rules.score_explained(x)
    np.testing.assert_array_equal(ok.outputs["CONTRIBUTIONS"], fallback["contributions"])
    np.testing.assert_array_equal(ok.outputs["SEPSIS_RISK"].reshape(-1), fallback["sepsis_risk"])
    np.testing.assert_array_equal(ok.outputs["NEWS2"].reshape(-1), fallback["news2"])


class _FakeResult:
    def __init__(self, arrays):
        self.arrays = arrays

    def as_numpy(self, name):
        return self.arrays.get(name)


class _FakeClient:
    """A Triton client whose model declares ``outputs``; records what each call requested."""

    def __init__(self, outputs, contributions=None):
        self.outputs, self.contributions, self.requested = outputs, contributions, []

    async def get_model_metadata(self, model, as_json=False, client_timeout=None):
        return {"name": model, "outputs": [{"name": n} for n in self.outputs]}

    async def infer(self, model, inputs, outputs=None, client_timeout=None):
        self.requested.append([o.name() for o in outputs])
        n = 2
        arrays = {
            "DETERIORATION_RISK": np.full((n, 1), 0.2, np.float32),
            "SEPSIS_RISK": np.full((n, 1), 0.1, np.float32),
            "NEWS2": np.full((n, 1), 3, np.int32),
            "QSOFA": np.ones((n, 1), np.int32),
        }
        if self.contributions is not None:
            arrays["CONTRIBUTIONS"] = self.contributions
        return _FakeResult(arrays)

    async def close(self):
        pass


def _scorer(**kw) -> TritonScorer:
    return TritonScorer(Settings(triton_url="127.0.0.1:1", triton_timeout_s=0.5, triton_retry_s=60.0, **kw))


def _score_with(client, x):
    """Score ``x`` with a TritonScorer whose client is ``client`` (made inside an event loop)."""

    async def run():
        s = _scorer()
        await s.client.close()
        s.client = client
        return await s.score(x)

    return asyncio.run(run())


def test_scorer_asks_for_contributions_only_when_the_model_has_them():
    x = F.empty(2)
    old = _FakeClient(["DETERIORATION_RISK", "SEPSIS_RISK", "NEWS2", "QSOFA"])
    out, source = _score_with(old, x)
    assert source == "triton" and out["contributions"] is None
    assert old.requested == [["DETERIORATION_RISK", "SEPSIS_RISK", "NEWS2", "QSOFA"]]

    c = np.full((2, 2, 4), 0.125, np.float32)
    new = _FakeClient(["DETERIORATION_RISK", "SEPSIS_RISK", "NEWS2", "QSOFA", "CONTRIBUTIONS"], c)
    out, source = _score_with(new, x)
    assert source == "triton" and "CONTRIBUTIONS" in new.requested[0]
    np.testing.assert_array_equal(out["contributions"], c)

    # declared but not sent (version 1 behind a version 2 config), or the wrong shape: no contributions
    for sent in (None, np.zeros((2, 4, 2), np.float32)):
        out, source = _score_with(_FakeClient(new.outputs, sent), x)
        assert source == "triton" and out["contributions"] is None


def test_fallback_scores_carry_the_rule_contributions():
    x = np.concatenate([row(rr=24, sbp=95, lactate=3.1, temp=37.0), F.empty(1)])

    async def run():
        s = _scorer()  # nothing listens on port 1
        try:
            return s, *(await s.score(x))
        finally:
            await s.close()

    s, out, source = asyncio.run(run())
    assert source == "fallback" and s.counts["triton_errors"] == 1
    np.testing.assert_array_equal(out["contributions"], rules.contribution_array(x))


def test_batcher_publishes_contributions_per_row_and_none_without_them():
    x = np.concatenate([row(rr=24, sbp=95, lactate=3.1, temp=37.0), row(hr=75)])

    class Scorer:
        model_name = "early_warning"

        def __init__(self, with_contributions):
            self.with_contributions = with_contributions

        async def score(self, batch, rows=None):
            out = rules.score_explained(batch) if self.with_contributions else rules.score(batch)
            return out, "triton"

    for with_c in (True, False):
        published: list[schemas.Score] = []

        async def publish(score, published=published):
            published.append(score)

        b = ScoreBatcher(Scorer(with_c), publish, batch_max=8, batch_wait_s=0.01)
        batch = [patient_state_due(f"p{i}", x[i : i + 1]) for i in range(2)]
        asyncio.run(b.flush(batch))
        assert [s.patient_id for s in published] == ["p0", "p1"]
        if with_c:
            assert published[0].contributions == F.contributions_as_dicts(rules.contribution_array(x[:1]))[0]
            assert published[0].contributions["sepsis"]["vitals"] > 0.5
            assert published[1].contributions["sepsis"] == {m: 0.0 for m in F.MODALITIES}
        else:
            assert all(s.contributions is None for s in published)


def patient_state_due(pid: str, features: np.ndarray):
    from icuwatch.streams.batcher import Due

    return Due(pid, T0, features, {"vitals": 1.0, "waveforms": None, "labs": None, "cxr": None}, "cadence")


# --------------------------------------------------------------------------------------- schemas


CONTRIB = {
    "deterioration": {"vitals": 0.0329, "waveforms": 0.0, "labs": 0.0, "cxr": 0.0},
    "sepsis": {"vitals": 0.5838, "waveforms": 0.0, "labs": 0.3584, "cxr": 0.0},
}


def make_score(pid="p1", t=T0, contributions=CONTRIB, **kw) -> schemas.Score:
    fields = dict(
        patient_id=pid,
        event_time=t,
        model="early_warning",
        source="triton",
        deterioration_risk=0.2,
        sepsis_risk=0.7,
        news2=4,
        qsofa=2,
        staleness_s={"vitals": 1.0, "labs": 60.0},
        scored_at=t + 1,
        contributions=contributions,
    )
    fields.update(kw)
    return schemas.Score(**fields)


def make_alert(pid="p1", kind="sepsis", t=T0, contributions=None) -> schemas.Alert:
    return schemas.Alert(
        patient_id=pid,
        event_time=t,
        alert_id=f"{pid}:{kind}:{int(t - 300)}",
        kind=kind,
        risk=0.7,
        news2=4,
        qsofa=2,
        model="early_warning",
        source="triton",
        episode_start=t - 300,
        raised_at=t + 2,
        contributions=contributions,
    )


def test_score_and_alert_round_trip_with_contributions():
    s = make_score()
    back = schemas.decode(topics.SCORES, s.to_bytes(), b"p1")
    assert back == s and back.contributions["sepsis"]["labs"] == 0.3584
    a = make_alert(contributions=CONTRIB["sepsis"])
    assert schemas.decode(topics.ALERTS, a.to_bytes(), b"p1").contributions == CONTRIB["sepsis"]


def test_v1_messages_without_contributions_stay_valid():
    s = make_score(contributions=None)
    raw = s.to_bytes()
    assert b"contributions" not in raw  # None is left off the wire
    assert schemas.decode(topics.SCORES, raw).contributions is None
    assert schemas.decode(topics.ALERTS, make_alert().to_bytes()).contributions is None


@pytest.mark.parametrize(
    "bad, reason",
    [
        ({"sepsis": {"ecg": 0.1}}, "unknown modality"),
        ({"shock": {"vitals": 0.1}}, "unknown risk kind"),
        ({"sepsis": {"vitals": 1.5}}, "finite number in"),
        ({"sepsis": {"vitals": "NaN"}}, "finite number in"),
        ({"sepsis": {"vitals": "Infinity"}}, "finite number in"),
        ({"sepsis": 0.3}, "should be an object"),
    ],
)
def test_score_contributions_are_validated(bad, reason):
    raw = make_score(contributions=None).model_dump(mode="json", exclude_none=True)
    raw["contributions"] = bad

    with pytest.raises(schemas.SchemaError, match=reason):
        schemas.decode(topics.SCORES, json.dumps(raw).encode())
    alert = make_alert().model_dump(mode="json", exclude_none=True)
    alert["contributions"] = {"ecg": 0.1}
    with pytest.raises(schemas.SchemaError, match="unknown modality"):
        schemas.decode(topics.ALERTS, json.dumps(alert).encode())


def test_alert_copies_its_kinds_contributions_from_the_opening_score():
    th = {k: alerting.Thresholds(0.5, 0.3, confirm=2) for k in alerting.RISK_FIELD}
    state = alerting.new_alert_state()
    first = dict(CONTRIB, sepsis={**CONTRIB["sepsis"], "labs": 0.1})
    assert alerting.update(state, make_score(t=T0, contributions=first), th) == []
    raised = alerting.update(state, make_score(t=T0 + 300), th)
    assert [a.kind for a in raised] == ["sepsis"]
    assert raised[0].contributions == CONTRIB["sepsis"]  # the score that opened it, not the run's first

    state = alerting.new_alert_state()
    alerting.update(state, make_score(t=T0, contributions=None), th)
    assert alerting.update(state, make_score(t=T0 + 300, contributions=None), th)[0].contributions is None


# -------------------------------------------------------------------------------------- migration


def _columns(eng, table):
    return {c["name"]: c for c in sa.inspect(eng).get_columns(table)}


def test_migration_0004_upgrades_and_downgrades(url: str):
    db.upgrade(url, "0003")
    eng = db.make_engine(url)
    try:
        sessions = db.session_factory(eng)
        with eng.begin() as conn:  # a 0003 score and alert, written without the ORM's new columns
            conn.execute(
                sa.text(
                    "INSERT INTO scores (patient_id, event_time, model, source, deterioration_risk, sepsis_risk, news2,"
                    " qsofa, staleness, trigger, scored_at, revision) VALUES ('old', :t, 'm', 'triton', 0.1, 0.2, 1, 0,"
                    " '{}', 'cadence', :t, 0)"
                ),
                {"t": repo.utc(T0)},
            )
        assert "contributions" not in _columns(eng, "scores")

        db.upgrade(url)  # to head: 0004 and every later migration
        assert db.current_revision(url) == db.head_revision()
        for table in ("scores", "alerts"):
            col = _columns(eng, table)["contributions"]
            assert col["nullable"] is True
        with eng.connect() as conn:
            mc = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(mc, Base.metadata) == []
            assert conn.scalar(sa.text("SELECT count(*) FROM scores WHERE contributions IS NULL")) == 1
        with sessions.begin() as s:
            repo.add_scores(s, [make_score(pid="new")])
            assert repo.store_alert(s, make_alert(pid="new", contributions=CONTRIB["sepsis"])) == "stored"

        db_downgrade(url, "0003")
        assert db.current_revision(url) == "0003"
        assert "contributions" not in _columns(eng, "scores")
        assert "contributions" not in _columns(eng, "alerts")
        with eng.connect() as conn:
            assert conn.scalar(sa.text("SELECT count(*) FROM scores")) == 2  # rows kept
            assert conn.scalar(sa.text("SELECT risk FROM alerts WHERE patient_id = 'new'")) == 0.7
            with pytest.raises(sa.exc.IntegrityError):  # the state CHECK survived SQLite's rebuild
                conn.execute(sa.text("UPDATE alerts SET state = 'bogus'"))

        db.upgrade(url)
        with sessions() as s:
            assert s.scalars(sa.select(ScoreRow.contributions)).all() == [None, None]
    finally:
        eng.dispose()


def db_downgrade(url: str, revision: str) -> None:
    from alembic import command
    from sqlalchemy.pool import NullPool

    engine = db.make_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            cfg = db.alembic_config(url)
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------- storage and API


def test_contributions_are_stored_and_come_back(sessions):
    with sessions.begin() as s:
        repo.add_scores(s, [make_score(t=T0), make_score(t=T0 + 300, contributions=None)])
        assert repo.store_alert(s, make_alert(t=T0, contributions=CONTRIB["sepsis"])) == "stored"
        assert repo.store_alert(s, make_alert(kind="deterioration", t=T0)) == "stored"
    with sessions() as s:
        t = lifecycle.patient_timeline(s, "p1")
        assert [sc.contributions for sc in t["scores"]] == [CONTRIB, None]
        by_kind = {a.kind: a.contributions for a in repo.list_alerts(s, patient_id="p1")}
        assert by_kind == {"sepsis": CONTRIB["sepsis"], "deterioration": None}
        # None is SQL NULL, not a JSON 'null'
        assert s.scalar(sa.select(sa.func.count()).select_from(ScoreRow).where(ScoreRow.contributions.is_(None))) == 1
        assert s.scalar(sa.select(sa.func.count()).select_from(AlertRow).where(AlertRow.contributions.is_(None))) == 1

    revised = dict(CONTRIB, sepsis={**CONTRIB["sepsis"], "labs": 0.5})
    with sessions.begin() as s:  # a later revision (late lab) replaces the explanation too
        assert repo.add_scores(s, [make_score(t=T0, revision=1, contributions=revised)]) == 1
    with sessions() as s:
        assert lifecycle.patient_timeline(s, "p1")["scores"][0].contributions["sepsis"]["labs"] == 0.5


def test_api_and_fhir_return_contributions(url: str, tmp_path: Path):
    from icuwatch.api.app import create_app
    from icuwatch.storage.tokens import create_token

    db.upgrade(url)
    app = create_app(Settings(database_url=url, state_dir=tmp_path / "state"), escalate=False)
    with TestClient(app) as client:
        sessions = app.state.sessions
        now = time.time()
        with sessions.begin() as s:
            token = create_token(s, "nurse-1", "nurse")
            repo.add_scores(s, [make_score(t=now - 600), make_score(t=now - 300)])
            repo.store_alert(s, make_alert(t=now - 300, contributions=CONTRIB["sepsis"]))
        h = {"Authorization": f"Bearer {token}"}

        alerts = client.get("/api/alerts", headers=h).json()
        assert [a["contributions"] for a in alerts] == [CONTRIB["sepsis"]]
        timeline = client.get("/api/patients/p1/timeline", headers=h).json()
        latest = timeline["scores"][-1]
        assert latest["contributions"] == CONTRIB  # the shape api/static/patient.js reads
        assert set(latest["contributions"]["sepsis"]) == set(F.MODALITIES)
        assert timeline["alerts"][0]["contributions"] == CONTRIB["sepsis"]
        js = (REPO_ROOT / "api" / "static" / "patient.js").read_text()
        assert "latest.contributions" in js and '["deterioration", "Deterioration"]' in js

        bundle = client.get("/fhir/RiskAssessment", params={"patient": "p1"}, headers=h).json()
        note = bundle["entry"][0]["resource"]["note"][0]["text"]
        assert "contributions: vitals +0.584, waveforms +0.000, labs +0.358, cxr +0.000" in note

    from icuwatch.interfaces import fhir_export as fx

    # an alert without its own: its kind's entry of the score's nested contributions
    ra = fx.risk_assessment(make_alert(kind="deterioration"), make_score())
    assert "contributions: vitals +0.033, waveforms +0.000, labs +0.000, cxr +0.000" in ra["note"][0]["text"]
    ra = fx.risk_assessment(make_alert(), make_score(contributions=None))
    assert "contributions" not in ra["note"][0]["text"]
