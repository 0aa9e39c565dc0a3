"""Gradient-boosted trees baseline: causal features, forward fill / time since, a quick real train."""

from __future__ import annotations

import json

import numpy as np
import pytest

from icuwatch.fusion.baselines.features import FEATURE_NAMES, FEATURE_VERSION, N_FEATURES, NEVER, stay_features
from icuwatch.sources.physionet import Stay, default_data_dir, list_stays, read_psv

DATA = default_data_dir()
needs_data = pytest.mark.skipif(
    not DATA.is_dir() or not list_stays(DATA, limit=1), reason=f"PhysioNet 2019 stays not found in {DATA}"
)

COLUMNS = (
    "HR",
    "O2Sat",
    "Temp",
    "SBP",
    "MAP",
    "DBP",
    "Resp",
    "Lactate",
    "WBC",
    "FiO2",
    "Age",
    "Gender",
    "HospAdmTime",
    "ICULOS",
    "SepsisLabel",
)
nan = np.nan


def _tiny_stay() -> Stay:
    """Seven hours, hand-made: HR measured at hours 1, 2, 5; lactate at 2 and 4; Temp never."""
    hr = [nan, 80, 90, nan, nan, 120, nan]
    lactate = [nan, nan, 1.5, nan, 3.0, nan, nan]
    rows = []
    for t in range(7):
        rows.append([hr[t], 97, nan, 120 if t else nan, 80, 60, 18, lactate[t], nan, nan, 60, 1, -5.0, t + 1, 0])
    return Stay(patient_id="p000000", columns=COLUMNS, values=np.array(rows, dtype=float))


def _feature(x: np.ndarray, name: str) -> np.ndarray:
    return x[:, FEATURE_NAMES.index(name)]


def test_forward_fill_and_hours_since_on_a_hand_made_stay():
    x = stay_features(_tiny_stay())
    assert x.shape == (7, N_FEATURES) and x.dtype == np.float32
    np.testing.assert_array_equal(_feature(x, "HR_last"), [nan, 80, 90, 90, 90, 120, 120])
    np.testing.assert_array_equal(_feature(x, "HR_hours_since"), [NEVER, 0, 0, 1, 2, 0, 1])
    np.testing.assert_array_equal(_feature(x, "HR_count"), [0, 1, 2, 2, 2, 3, 3])
    np.testing.assert_array_equal(_feature(x, "HR_measured"), [0, 1, 1, 0, 0, 1, 0])
    # 6-hour window t-5..t of measured values (row 6: rows 1..6); change of the last value over 6 hours.
    np.testing.assert_array_equal(_feature(x, "HR_max6h"), [nan, 80, 90, 90, 90, 120, 120])
    np.testing.assert_array_equal(_feature(x, "HR_min6h"), [nan, 80, 80, 80, 80, 80, 80])
    np.testing.assert_allclose(_feature(x, "HR_mean6h"), [nan, 80, 85, 85, 85, 290 / 3, 290 / 3], rtol=1e-6)
    np.testing.assert_array_equal(_feature(x, "HR_delta6h"), [nan] * 7)  # no HR 6 hours before any row
    np.testing.assert_array_equal(_feature(x, "Lactate_last"), [nan, nan, 1.5, 1.5, 3.0, 3.0, 3.0])
    np.testing.assert_array_equal(_feature(x, "Lactate_hours_since"), [NEVER, NEVER, 0, 1, 0, 1, 2])
    np.testing.assert_array_equal(_feature(x, "Lactate_delta_prev"), [nan, nan, nan, nan, 1.5, 1.5, 1.5])
    np.testing.assert_array_equal(_feature(x, "Temp_hours_since"), [NEVER] * 7)
    assert np.isnan(_feature(x, "Temp_last")).all()
    np.testing.assert_array_equal(_feature(x, "ICULOS"), np.arange(1, 8))
    # Columns the stay lacks (labs not in the file, Unit1) are NaN, never invented.
    assert np.isnan(_feature(x, "Platelets_last")).all() and np.isnan(_feature(x, "Unit1")).all()
    # NEWS2 on forward-filled values, hour 5: HR 120 -> 2, SBP 120 -> 0, RR 18 -> 0, SpO2 97 -> 0.
    assert _feature(x, "news2")[5] == 2
    assert _feature(x, "infection_signs")[4] == 1  # lactate 3.0 >= 2


def test_delta_over_six_hours():
    stay = _tiny_stay()
    values = np.vstack([stay.values, stay.values[-1:]])  # eight hours: row 7 repeats row 6
    values[7, COLUMNS.index("HR")] = 100.0
    x = stay_features(Stay(stay.patient_id, stay.columns, values))
    # Row 6: last HR 120 vs last HR at hour 0 (none yet) -> NaN; row 7: 100 vs 80 (hour 1).
    assert np.isnan(_feature(x, "HR_delta6h")[6])
    assert _feature(x, "HR_delta6h")[7] == pytest.approx(20.0)


@needs_data
def test_features_are_causal_on_real_stays():
    """Features of a stay cut at a random hour equal the first rows of the whole stay's features."""
    rng = np.random.default_rng(1)
    paths = list_stays(DATA, limit=400)
    for path in rng.choice(paths, size=25, replace=False):
        stay = read_psv(path)
        full = stay_features(stay)
        assert full.shape == (len(stay.values), N_FEATURES)
        for cut in {1, int(rng.integers(1, len(stay.values) + 1)), len(stay.values)}:
            head = stay_features(Stay(stay.patient_id, stay.columns, stay.values[:cut]))
            np.testing.assert_array_equal(head, full[:cut], err_msg=f"{path.name} cut at {cut}")


@needs_data
def test_quick_train_writes_card_and_model_predicts(tmp_path):
    from icuwatch.fusion.baselines import gbt

    card = gbt.train(
        DATA, tmp_path, max_train_stays=300, max_eval_stays=250, seed=0, progress=False, params={"max_iter": 30}
    )
    saved = json.loads((tmp_path / "model_card.json").read_text())
    assert saved == card
    assert card["data"]["real"] is True and card["feature_version"] == FEATURE_VERSION
    train = card["data"]["splits"]["train"]
    assert card["data"]["train_stays_read"] == 300 and train["stays_used"] < 300  # non-septic stays subsampled
    assert train["septic_stays"] > 0
    assert card["data"]["splits"]["val"]["stays_used"] == 250
    assert 0.0 <= card["threshold"] <= 1.0
    assert set(card["test"]) == {"auroc", "auprc", "utility"}

    model = gbt.GbtModel.load(tmp_path)
    assert model.threshold == card["threshold"]
    stay = read_psv(list_stays(DATA, "test", limit=1)[0])
    p = model.predict_stay(stay)
    assert p.shape == (len(stay.values),)
    assert np.all((p >= 0) & (p <= 1))
    np.testing.assert_array_equal(model.alarms(stay), (p >= model.threshold).astype(int))
    # Causal end to end: scoring the first hours alone gives the same probabilities.
    cut = max(1, len(stay.values) // 2)
    np.testing.assert_allclose(model.predict_stay(Stay(stay.patient_id, stay.columns, stay.values[:cut])), p[:cut])


def test_load_refuses_other_feature_version(tmp_path):
    from icuwatch.fusion.baselines import gbt

    (tmp_path / gbt.CARD_FILE).write_text(json.dumps({"feature_version": "old", "threshold": 0.5}))
    with pytest.raises(ValueError, match="retrain"):
        gbt.GbtModel.load(tmp_path)
