"""The streamed PhysioNet-cohort row (``streams/student_row.py``) against the offline cohort, and
the worker's student scoring path (``StudentScorer`` + batcher) with a fake Triton client."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import numpy as np
import pytest

from icuwatch.core import features as F
from icuwatch.core import rules, schemas
from icuwatch.core.settings import Settings
from icuwatch.fusion.cohorts.physionet import STATIC_CHANNELS, fit_norm, read_stay, stay_inputs
from icuwatch.fusion.psv_predict import hour_times
from icuwatch.sources.physionet import default_data_dir, list_stays
from icuwatch.sources.psv import DEFAULT_BASE_TIME, stay_messages
from icuwatch.streams import patient_state
from icuwatch.streams.batcher import ScoreBatcher
from icuwatch.streams.scoring import StudentScorer
from icuwatch.streams.student_row import FIELDS, cohort_row, stack_rows

DATA = default_data_dir()
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"no PhysioNet stays in {DATA}")
HOSP = STATIC_CHANNELS.index("hosp_adm_time_div1000")


def _stays():
    paths = list_stays(DATA)
    # the first stays in name order, plus ones starting after ICULOS 1 and ones without a unit
    picked, late, no_unit = paths[:6], [], []
    for p in paths[6:400]:
        s = read_stay(p)
        if s.column("ICULOS")[0] > 1 and len(late) < 2:
            late.append(s)
        elif np.isnan(s.column("Unit1")[0]) and len(no_unit) < 2:
            no_unit.append(s)
    return [read_stay(p) for p in picked] + late + no_unit


def _streamed_rows(stay, norm):
    """Fold the replay's messages into a patient state in time order (as ``psv_predict.rule_outputs``
    does) and take ``cohort_row`` at every hour."""
    messages = sorted(stay_messages(stay, DEFAULT_BASE_TIME), key=lambda m: m[0])
    state = patient_state.new_state()
    rows, i = [], 0
    for t in hour_times(stay, DEFAULT_BASE_TIME):
        while i < len(messages) and messages[i][0] <= t:
            patient_state.apply(state, messages[i][2])
            i += 1
        rows.append(cohort_row(state, float(t), norm))
    json.dumps(state)  # the Faust table stores it as JSON
    return rows, state


@needs_data
def test_replayed_stays_give_the_offline_cohort_rows():
    """Every channel of every hour equals ``stay_inputs`` exactly, the hospital admission time
    (``hosp_adm_time_div1000``, from the admit's ``hospital_admit_time``) included.

    The stays are replayed whole, so nothing the v1 schema rejects is in them (checked: a rejected
    vital would be missing from the stream and z-scored offline)."""
    stays = _stays()
    assert len(stays) >= 8 and any(s.column("ICULOS")[0] > 1 for s in stays)
    norm = fit_norm(stays)
    n_rows = n_hosp = 0
    for stay in stays:
        stats = Counter()
        stay_messages(stay, DEFAULT_BASE_TIME, stats)
        assert stats["skipped_out_of_range"] == 0, stay.patient_id
        offline = stay_inputs(stay, norm)
        rows, state = _streamed_rows(stay, norm)
        assert len(state["hourly"]) <= patient_state.HOURLY_BUCKETS
        for r, row in enumerate(rows):
            where = f"{stay.patient_id} row {r}"
            np.testing.assert_array_equal(row["inputs"]["vitals"], offline["inputs"]["vitals"][r], where)
            np.testing.assert_array_equal(row["inputs"]["labs"], offline["inputs"]["labs"][r], where)
            np.testing.assert_array_equal(row["inputs"]["static"], offline["inputs"]["static"][r], where)
            n_hosp += bool(row["inputs"]["static"][HOSP] != 0.0)
            np.testing.assert_array_equal(row["present"], offline["present"][r], where)
            np.testing.assert_array_equal(row["staleness_h"], offline["staleness_h"][r], where)
            assert row["hour"] == offline["hour"][r]
            assert row["inputs"]["vitals"].dtype == np.float32 and row["present"].dtype == bool
            n_rows += 1
    assert n_rows > 200 and n_hosp > 0  # some stays reached the ICU after hours in the hospital


def _vitals(t, **v):
    return schemas.Vitals(patient_id="p1", event_time=t, **v)


NORM = {
    "z_clip": 10.0,
    "vitals": {"mean": [80.0, 97.0, 37.0, 120.0, 80.0, 60.0, 18.0], "std": [10.0, 2.0, 0.5, 15.0, 10.0, 10.0, 4.0]},
    "labs": {"mean": [0.0] * 27, "std": [1.0] * 27},
}


def test_hourly_means_of_a_second_by_second_monitor_and_a_bounded_json_state():
    """A monitor sending every 10 s for 20 h: each hour's value is the mean of its samples, the
    state keeps ``HOURLY_BUCKETS`` hours and stays JSON-able; a score mid-hour reads the partial hour."""
    state = patient_state.new_state()
    t0 = 1_600_000_000.0
    for k in range(20 * 360 + 1):
        t = t0 + 10.0 * k
        patient_state.apply(state, _vitals(t, hr=60.0 + (k % 2) * 10.0, spo2=95.0))
    assert len(state["hourly"]) == patient_state.HOURLY_BUCKETS
    assert json.loads(json.dumps(state)) == state
    row = cohort_row(state, t0 + 20 * 3600.0, NORM)
    v = row["inputs"]["vitals"]
    assert v.shape == (8, 14)
    hr = FIELDS.index("hr")
    # hours end at the first sample's time + whole hours: each of the 8 is 360 samples, mean 65
    np.testing.assert_array_equal(v[:, hr], np.float32((65.0 - 80.0) / 10.0))
    assert (v[:, 7 + hr] == 1).all() and (v[:, 7 + FIELDS.index("temp")] == 0).all()
    # half an hour later nothing new arrived: step 7 is the hour in progress, unmeasured, forward filled
    late = cohort_row(state, t0 + 20.5 * 3600.0, NORM)["inputs"]["vitals"]
    assert late[7, 7 + hr] == 0 and late[7, hr] == v[7, hr] and (late[:7, 7 + hr] == 1).all()
    assert cohort_row(state, t0 + 20.5 * 3600.0, NORM)["staleness_h"][0] == np.float32(0.5)


def test_forward_fill_reaches_past_the_kept_hours_and_old_checkpoints_load():
    state = patient_state.new_state()
    t0 = 1_600_100_000.0
    patient_state.apply(state, _vitals(t0, temp=38.5, hr=90.0))
    for h in range(1, 30):
        patient_state.apply(state, _vitals(t0 + h * 3600.0, hr=90.0))
    row = cohort_row(state, t0 + 29 * 3600.0, NORM)["inputs"]["vitals"]
    temp = FIELDS.index("temp")
    assert (row[:, temp] == np.float32((38.5 - 37.0) / 0.5)).all() and (row[:, 7 + temp] == 0).all()

    old = patient_state.new_state()
    for key in ("hourly", "hourly_anchor", "hourly_carry"):
        del old[key]
    assert cohort_row(old, t0, NORM)["inputs"]["vitals"].sum() == 0  # a checkpoint from before
    patient_state.apply(old, _vitals(t0, hr=100.0))
    assert cohort_row(old, t0, NORM)["inputs"]["vitals"][7, 0] == np.float32(2.0)


def test_static_channels_from_adt():
    state = patient_state.new_state()
    t0 = 1_600_200_000.0
    patient_state.apply(
        state, schemas.Adt(patient_id="p1", event_time=t0, event="admit", unit="SICU", age=71.0, sex="M")
    )
    patient_state.apply(state, _vitals(t0 + 5 * 3600.0, hr=80.0))
    static = cohort_row(state, t0 + 5 * 3600.0, NORM)["inputs"]["static"]
    np.testing.assert_array_equal(static, np.array([0.71, 1, 0, 1, 1, 0, 0.05], np.float32))
    # the hospital admission: hours before the ICU admission / 1000, clipped to [-1, 1]
    patient_state.apply(
        state,
        schemas.Adt(
            patient_id="p1", event_time=t0, event="transfer", unit="SICU", hospital_admit_time=t0 - 50.25 * 3600.0
        ),
    )
    static = cohort_row(state, t0 + 5 * 3600.0, NORM)["inputs"]["static"]
    np.testing.assert_array_equal(static, np.array([0.71, 1, 0, 1, 1, -0.05025, 0.05], np.float32))
    patient_state.apply(
        state,
        schemas.Adt(patient_id="p1", event_time=t0 + 3600.0, event="transfer", hospital_admit_time=t0 - 2000 * 3600.0),
    )  # older: kept the latest
    assert cohort_row(state, t0 + 5 * 3600.0, NORM)["inputs"]["static"][HOSP] == np.float32(-0.05025)
    long = patient_state.new_state()
    patient_state.apply(
        long, schemas.Adt(patient_id="p1", event_time=t0, event="admit", hospital_admit_time=t0 - 2000 * 3600.0)
    )
    assert cohort_row(long, t0, NORM)["inputs"]["static"][HOSP] == -1.0
    late = patient_state.new_state()  # known before the ICU admit: 0 until the admit arrives
    patient_state.apply(
        late, schemas.Adt(patient_id="p1", event_time=t0 - 3600.0, event="transfer", hospital_admit_time=t0 - 7200.0)
    )
    assert cohort_row(late, t0, NORM)["inputs"]["static"][HOSP] == 0.0
    assert json.loads(json.dumps(state)) == state


# --- the worker's scoring path with the student -------------------------------------------------------


class _Result:
    def __init__(self, arrays):
        self.arrays = arrays

    def as_numpy(self, name):
        return self.arrays.get(name)


def _fake_probability(vitals, labs, present):
    """What the fake student answers: a float32 probability that every input moves."""
    z = 0.05 * vitals.sum(axis=(1, 2)) + 0.3 * labs.sum(axis=1) + 0.4 * present[:, 0] - 0.2 * present[:, 1]
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


class _StudentClient:
    def __init__(self, fail=False):
        self.fail, self.calls = fail, []

    async def get_model_metadata(self, model, as_json=False, client_timeout=None):
        return {"name": model, "inputs": [{"name": "PRESENT", "datatype": "BOOL"}]}

    async def infer(self, model, inputs, outputs=None, client_timeout=None):
        if self.fail:
            raise ConnectionError("down")
        self.calls.append((model, [(i.name(), i.datatype(), i.shape()) for i in inputs], [o.name() for o in outputs]))
        arrays = {
            i.name(): np.frombuffer(i._get_content(), dtype=bool if i.datatype() == "BOOL" else np.float32).reshape(
                i.shape()
            )
            for i in inputs
        }
        p = _fake_probability(arrays["VITALS"], arrays["LABS"], arrays["PRESENT"])
        return _Result({"PROBABILITY": p.reshape(-1, 1)})

    async def close(self):
        pass


def _rows(n):
    state = patient_state.new_state()
    patient_state.apply(state, _vitals(1_600_300_000.0, hr=130.0, rr=26.0, sbp=88.0, temp=38.9))
    return [cohort_row(state, 1_600_300_000.0, NORM) for _ in range(n)], patient_state.features_at(
        state, 1_600_300_000.0
    )


def _mixed_rows():
    """Three patients' rows: vitals only, then vitals and labs twice (a lactate, then also a WBC)."""
    (vitals_only,), x = _rows(1)
    state = patient_state.new_state()
    t = 1_600_300_000.0
    patient_state.apply(state, _vitals(t - 3600.0, hr=110.0, temp=38.2))
    patient_state.apply(
        state,
        schemas.Lab(
            patient_id="p1", event_time=t - 1800.0, analyte="lactate", value=3.1, unit="mmol/L", result_time=t - 1700.0
        ),
    )
    patient_state.apply(state, _vitals(t, hr=130.0, rr=26.0, sbp=88.0, temp=38.9))
    one_lab = cohort_row(state, t, NORM)
    patient_state.apply(
        state,
        schemas.Lab(
            patient_id="p1", event_time=t - 600.0, analyte="wbc", value=15.0, unit="10^9/L", result_time=t - 500.0
        ),
    )
    return [vitals_only, one_lab, cohort_row(state, t, NORM)], x


def _publish_batch(client, rows=None):
    published = []

    async def run():
        scorer = StudentScorer(
            Settings(
                triton_url="127.0.0.1:1", scoring_model="student_physionet", triton_timeout_s=0.5, triton_retry_s=60.0
            ),
            {"norm": NORM, "heads": ["sepsis"], "thresholds": {"sepsis": 0.04}},
        )
        await scorer.client.close()
        scorer.client = client

        async def publish(score):
            published.append(score)

        b = ScoreBatcher(scorer, publish, batch_max=8, batch_wait_s=0.01)
        cohort, x = _mixed_rows() if rows is None else rows
        for i, row in enumerate(cohort):
            b.submit(f"p{i}", 1_600_300_000.0, x, {"vitals": 0.0}, "first", cohort=row)
        await b.flush(b.pending)
        return scorer

    scorer = asyncio.run(run())
    return published, scorer


def _absent(row, j):
    """``row`` with cohort modality ``j`` absent, written out by hand (inputs zero, flag off, staleness 0)."""
    out = {"inputs": dict(row["inputs"]), "present": row["present"].copy(), "staleness_h": row["staleness_h"].copy()}
    name = ("vitals", "labs")[j]
    out["inputs"][name] = np.zeros_like(row["inputs"][name])
    out["present"][j], out["staleness_h"][j] = False, 0.0
    return out


def _p(row):
    b = stack_rows([row])
    return float(_fake_probability(b["vitals"], b["labs"], b["present"])[0])


def test_student_scores_sepsis_and_rules_the_rest():
    client = _StudentClient()
    published, scorer = _publish_batch(client)
    rows, x = _mixed_rows()
    assert [r["present"].tolist() for r in rows] == [[True, False], [True, True], [True, True]]
    # one call: the 3 rows, then per row a copy without each present modality (1 + 2 + 2)
    ((model, inputs, outputs),) = client.calls
    assert model == "student_physionet" and outputs == ["PROBABILITY"]
    assert inputs == [
        ("VITALS", "FP32", [8, 8, 14]),
        ("LABS", "FP32", [8, 81]),
        ("STATIC", "FP32", [8, 7]),
        ("PRESENT", "BOOL", [8, 2]),
        ("STALENESS_H", "FP32", [8, 2]),
    ]
    ruled = rules.score_explained(x)
    deterioration = F.contributions_as_dicts(ruled["contributions"])[0]["deterioration"]
    for s, row in zip(published, rows):
        assert s.model == "student_physionet+rules" and s.source == "triton"
        assert s.sepsis_risk == pytest.approx(_p(row), abs=1e-7)
        assert s.deterioration_risk == pytest.approx(float(ruled["deterioration_risk"][0]))
        assert s.news2 == int(ruled["news2"][0]) and s.qsofa == int(ruled["qsofa"][0])
        assert set(s.contributions) == set(F.CONTRIBUTION_RISKS)
        assert s.contributions["deterioration"] == deterioration
        want = {
            "vitals": _p(row) - _p(_absent(row, 0)),
            "labs": _p(row) - _p(_absent(row, 1)) if row["present"][1] else 0.0,
            "waveforms": 0.0,
            "cxr": 0.0,
        }
        assert s.contributions["sepsis"] == pytest.approx(want, abs=1e-6)
        assert abs(s.contributions["sepsis"]["vitals"]) > 1e-3
    assert all(abs(s.contributions["sepsis"]["labs"]) > 1e-3 for s in published[1:])
    assert scorer.counts["triton_rows"] == 3


def test_student_batches_over_the_model_limit_go_as_several_requests(monkeypatch):
    from icuwatch.serving import export as triton_export
    from icuwatch.streams import scoring

    assert scoring.STUDENT_MAX_BATCH == triton_export.MAX_BATCH_SIZE  # the exported config's max_batch_size
    whole, _ = _publish_batch(_StudentClient())
    monkeypatch.setattr(scoring, "STUDENT_MAX_BATCH", 3)
    client = _StudentClient()
    split, _ = _publish_batch(client)
    assert [call[1][0][2][0] for call in client.calls] == [3, 3, 2]
    assert [(s.sepsis_risk, s.contributions) for s in split] == [(s.sepsis_risk, s.contributions) for s in whole]


def test_leave_one_out_rows_are_the_cohorts_absent_modalities():
    from icuwatch.streams.student_row import leave_one_out

    rows, _ = _mixed_rows()
    batch = stack_rows(rows)
    extended, without = leave_one_out(batch)
    assert without.tolist() == [[3, -1], [4, 5], [6, 7]]
    for k, v in batch.items():
        assert extended[k].dtype == v.dtype and len(extended[k]) == 8
        np.testing.assert_array_equal(extended[k][:3], v)
    for i, row in enumerate(rows):
        for j in range(2):
            if without[i, j] >= 0:
                want = stack_rows([_absent(row, j)])
                for k in batch:
                    np.testing.assert_array_equal(extended[k][without[i, j]], want[k][0], f"{k} {i} {j}")
    assert leave_one_out(stack_rows(rows[:1]))[1].tolist() == [[1, -1]]


def test_student_falls_back_to_the_rules_when_triton_fails():
    published, scorer = _publish_batch(_StudentClient(fail=True))
    _, x = _rows(1)
    ruled = rules.score(x)
    assert scorer.counts["fallback_rows"] == 3 and scorer.counts["triton_errors"] == 1
    for s in published:
        assert s.model == rules.MODEL_NAME and s.source == "fallback"
        assert s.sepsis_risk == pytest.approx(float(ruled["sepsis_risk"][0]))
        assert set(s.contributions) == set(F.CONTRIBUTION_RISKS)


def test_stack_rows_gives_the_triton_batch():
    rows, _ = _rows(2)
    batch = stack_rows(rows)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "vitals": ((2, 8, 14), np.float32),
        "labs": ((2, 81), np.float32),
        "static": ((2, 7), np.float32),
        "present": ((2, 2), np.dtype(bool)),
        "staleness_h": ((2, 2), np.float32),
    }
