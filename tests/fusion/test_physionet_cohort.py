"""PhysioNet 2019 cohort builder: layouts on a hand-made stay, causality, train-only normalisation,
the cached build of a few real stays."""

from __future__ import annotations

import numpy as np
import pytest

from icuwatch.fusion.cohorts import physionet as ph
from icuwatch.fusion.cohorts.base import SPLIT_CODES, Cohort
from icuwatch.sources.physionet import (
    LAB_COLUMNS,
    VITAL_COLUMNS,
    Stay,
    default_data_dir,
    list_stays,
    read_psv,
    split_of,
)

DATA = default_data_dir()
needs_data = pytest.mark.skipif(
    not DATA.is_dir() or not list_stays(DATA, limit=1), reason=f"PhysioNet 2019 stays not found in {DATA}"
)
nan = np.nan
VITALS, LABS = tuple(VITAL_COLUMNS), tuple(LAB_COLUMNS)
COLUMNS = (*VITALS, "Lactate", "WBC", "Age", "Gender", "Unit1", "Unit2", "HospAdmTime", "ICULOS", "SepsisLabel")


def _patient_id(split: str, start: int = 0) -> str:
    return next(f"p{i:06d}" for i in range(start, start + 1000) if split_of(f"p{i:06d}") == split)


def _tiny_stay(patient_id: str = "p000000") -> Stay:
    """Five hours from ICULOS 3: no data at hour 3; HR 90 at 4, 100 at 6; O2Sat 1000 at 4 (charting
    error); lactate 2.0 at 6; nothing at 5 and 7. Units unknown, admitted 2500 h before the ICU."""
    hr = [nan, 90, nan, 100, nan]
    o2 = [nan, 1000, nan, nan, nan]
    lactate = [nan, nan, nan, 2.0, nan]
    rows = [
        [hr[t], o2[t], nan, nan, nan, nan, nan, lactate[t], nan, 70, 1, nan, nan, -2500.0, t + 3, t >= 3]
        for t in range(5)
    ]
    return Stay(patient_id=patient_id, columns=COLUMNS, values=np.array(rows, dtype=float))


def _norm(hr_mean=80.0, hr_std=10.0, lactate_mean=1.0, lactate_std=0.5) -> dict:
    vmean, vstd = [0.0] * len(VITALS), [1.0] * len(VITALS)
    lmean, lstd = [0.0] * len(LABS), [1.0] * len(LABS)
    vmean[0], vstd[0] = hr_mean, hr_std
    lmean[LABS.index("Lactate")], lstd[LABS.index("Lactate")] = lactate_mean, lactate_std
    return {"z_clip": ph.Z_CLIP, "vitals": {"mean": vmean, "std": vstd}, "labs": {"mean": lmean, "std": lstd}}


def _lab(x: np.ndarray, analyte: str) -> np.ndarray:
    """[n, 3] value, ever, log1p(hours since)/5 of one analyte."""
    i = LABS.index(analyte)
    return x[:, 3 * i : 3 * i + 3]


def test_hand_made_stay_layout_present_and_staleness():
    out = ph.stay_inputs(_tiny_stay(), _norm())
    v, labs, static = out["inputs"]["vitals"], out["inputs"]["labs"], out["inputs"]["static"]
    assert v.shape == (5, ph.T, 14) and labs.shape == (5, 3 * len(LABS)) and static.shape == (5, 7)
    assert v.dtype == labs.dtype == static.dtype == np.float32

    np.testing.assert_array_equal(out["present"], [[0, 0], [1, 0], [1, 0], [1, 1], [1, 1]])
    np.testing.assert_array_equal(out["staleness_h"], [[0, 0], [0, 0], [1, 0], [0, 0], [1, 1]])
    np.testing.assert_array_equal(out["hour"], [3, 4, 5, 6, 7])
    np.testing.assert_array_equal(out["y"], [0, 0, 0, 1, 1])

    # Row 4 (hour 7): steps t-7..t are 3 zero steps before the stay, then rows 0..4, oldest first.
    hr_z, hr_flag = v[4, :, 0], v[4, :, 7]
    np.testing.assert_array_equal(hr_z, [0, 0, 0, 0, 1, 1, 2, 2])  # (90-80)/10, forward-filled, (100-80)/10
    np.testing.assert_array_equal(hr_flag, [0, 0, 0, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(v[4, :, 1], [0, 0, 0, 0, ph.Z_CLIP, ph.Z_CLIP, ph.Z_CLIP, ph.Z_CLIP])  # clipped
    assert not v[4, :, [2, 3, 4, 5, 6, 9, 10, 11, 12, 13]].any()  # never measured: zeros
    assert not v[0].any() and not labs[:3].any()  # absent modality: all zeros
    # Row 1's window ends with row 1, so it is row 4's window shifted by three hours.
    np.testing.assert_array_equal(v[1, 3:], v[4, :5])

    lac = _lab(labs, "Lactate")
    np.testing.assert_allclose(lac[:, 0], [0, 0, 0, 2, 2])  # (2.0-1.0)/0.5
    np.testing.assert_array_equal(lac[:, 1], [0, 0, 0, 1, 1])
    np.testing.assert_allclose(lac[:, 2], [0, 0, 0, 0, np.log1p(1) / 5], rtol=1e-6)
    assert not _lab(labs, "WBC").any() and not _lab(labs, "Platelets").any()  # absent column: zeros

    np.testing.assert_allclose(static[0], [0.7, 1, 0, 0, 0, -1, 0.03], rtol=1e-6)
    np.testing.assert_allclose(static[:, -1], np.array([3, 4, 5, 6, 7]) / 100, rtol=1e-6)


def test_hour_falls_back_to_row_number_and_missing_labels_give_none():
    stay = _tiny_stay()
    values = stay.values.copy()
    values[2, COLUMNS.index("ICULOS")] = nan
    keep = [i for i, c in enumerate(COLUMNS) if c != "SepsisLabel"]
    out = ph.stay_inputs(Stay(stay.patient_id, tuple(COLUMNS[i] for i in keep), values[:, keep]), _norm())
    np.testing.assert_array_equal(out["hour"], [3, 4, 3, 6, 7])
    assert out["y"] is None
    assert (out["staleness_h"] >= 0).all()


def _assert_causal(stay: Stay, norm: dict, cuts) -> None:
    full = ph.stay_inputs(stay, norm)
    for k in cuts:
        part = ph.stay_inputs(Stay(stay.patient_id, stay.columns, stay.values[:k]), norm)
        for name in full["inputs"]:
            np.testing.assert_array_equal(part["inputs"][name], full["inputs"][name][:k])
        for key in ("present", "staleness_h", "y", "hour"):
            np.testing.assert_array_equal(part[key], full[key][:k])


def test_causal_by_truncation_on_the_hand_made_stay():
    _assert_causal(_tiny_stay(), _norm(), range(1, 5))


@needs_data
def test_causal_by_truncation_on_real_stays():
    rng = np.random.default_rng(3)
    paths = list_stays(DATA, limit=300)
    stays = [read_psv(p) for p in rng.choice(paths, size=12, replace=False)]
    norm = ph.fit_norm(stays)
    for stay in stays:
        n = len(stay.values)
        _assert_causal(stay, norm, sorted({1, n // 2, n - 1, *rng.integers(1, n, size=3).tolist()}))


def test_fit_norm_uses_train_stays_only():
    train = _tiny_stay(_patient_id("train"))
    val, test = _tiny_stay(_patient_id("val")), _tiny_stay(_patient_id("test"))
    val.values[:, 0] = 1e6  # HR of the val and test stays must not move the statistics
    test.values[:, COLUMNS.index("Lactate")] = -1e6
    norm = ph.fit_norm([train, val, test])
    assert norm == ph.fit_norm([train]) and norm["n_train_stays"] == 1
    assert norm["vitals"]["mean"][0] == pytest.approx(95.0) and norm["vitals"]["std"][0] == pytest.approx(5.0)
    assert norm["vitals"]["count"][0] == 2
    i = LABS.index("Lactate")
    assert norm["labs"]["mean"][i] == 2.0 and norm["labs"]["std"][i] == 1.0  # one value: std 0 -> 1
    assert norm["labs"]["mean"][LABS.index("WBC")] == 0.0  # never measured: 0 / 1


@needs_data
def test_fast_reader_matches_read_psv(tmp_path):
    for path in list_stays(DATA, limit=40)[::4]:
        fast, slow = ph.read_stay(path), read_psv(path)
        assert fast.patient_id == slow.patient_id and fast.columns == slow.columns
        np.testing.assert_array_equal(fast.values, slow.values)
    ragged = tmp_path / "p999999.psv"
    ragged.write_text("HR|O2Sat|ICULOS\n80|NaN|1\n\n81|97|2\n")  # a blank line: read_psv handles it
    np.testing.assert_array_equal(ph.read_stay(ragged).values, [[80, nan, 1], [81, 97, 2]])


@pytest.fixture(scope="module")
def small() -> Cohort:
    if not DATA.is_dir() or not list_stays(DATA, limit=1):
        pytest.skip(f"PhysioNet 2019 stays not found in {DATA}")
    return ph.build(DATA, limit=50, seed=0, progress=False)


@needs_data
def test_limit_build_of_fifty_real_stays(small):
    small.validate()
    assert len(small.group_ids) == 50 and small.group_ids == sorted(set(small.group_ids))
    assert small.modalities == ("vitals", "labs")
    assert small.dims() == {"vitals": (8, 14), "labs": (81,), "static": (7,)}
    assert small.meta["version"] == ph.COHORT_VERSION and small.meta["source"] == ph.SOURCE
    assert len(small.meta["static_channels"]) == 7 and small.meta["T"] == 8
    start = 0
    for g, pid in enumerate(small.group_ids):
        stay = read_psv(DATA / f"{pid}.psv")
        rows = np.flatnonzero(small.group == g)
        np.testing.assert_array_equal(rows, np.arange(start, start + len(stay.values)))
        start += len(stay.values)
        np.testing.assert_array_equal(small.hour[rows], stay.column("ICULOS"))
        np.testing.assert_array_equal(small.y[rows], stay.labels)
        assert (small.split[rows] == SPLIT_CODES[split_of(pid)]).all()
    assert start == len(small)
    per_split = small.meta["per_split"]
    assert sum(s["rows"] for s in per_split.values()) == len(small)
    assert sum(s["positives"] for s in per_split.values()) == int(small.y.sum())
    # The same seed picks the same stays; another seed others.
    again = ph.build(DATA, limit=5, seed=0, progress=False).group_ids
    assert again == ph.build(DATA, limit=5, seed=0, progress=False).group_ids
    assert again != ph.build(DATA, limit=5, seed=1, progress=False).group_ids


@needs_data
def test_cohort_is_z_scored_with_the_train_statistics(small):
    train_ids = [pid for pid in small.group_ids if split_of(pid) == "train"]
    assert 0 < len(train_ids) < len(small.group_ids)
    train = [read_psv(DATA / f"{pid}.psv") for pid in train_ids]
    hr = np.concatenate([s.column("HR") for s in train])
    norm = small.meta["norm"]
    assert norm["vitals"]["mean"][0] == pytest.approx(np.nanmean(hr))
    assert norm["vitals"]["std"][0] == pytest.approx(np.nanstd(hr))
    # A measured HR in a val/test row: the newest step holds (HR - train mean) / train std.
    g = next(i for i, pid in enumerate(small.group_ids) if split_of(pid) != "train")
    stay = read_psv(DATA / f"{small.group_ids[g]}.psv")
    t = int(np.flatnonzero(~np.isnan(stay.column("HR")))[0])
    row = np.flatnonzero(small.group == g)[t]
    expected = (stay.column("HR")[t] - np.nanmean(hr)) / np.nanstd(hr)
    assert small.inputs["vitals"][row, -1, 0] == pytest.approx(expected, rel=1e-5)
    assert small.inputs["vitals"][row, -1, 7] == 1.0
    # Re-applying meta["norm"] to one stay reproduces the cohort rows (psv-predict's path).
    one = ph.stay_inputs(stay, norm)
    for name in one["inputs"]:
        np.testing.assert_array_equal(one["inputs"][name], small.inputs[name][small.group == g])


@needs_data
def test_save_load_round_trip(small, tmp_path):
    loaded = Cohort.load(small.save(tmp_path / "c.npz"))
    loaded.validate()
    assert loaded.name == small.name and loaded.modalities == small.modalities
    assert loaded.group_ids == small.group_ids and loaded.meta == small.meta
    for k in small.inputs:
        np.testing.assert_array_equal(loaded.inputs[k], small.inputs[k])
        assert loaded.inputs[k].dtype == np.float32
    for k in ("present", "staleness_h", "y", "group", "hour", "split"):
        np.testing.assert_array_equal(getattr(loaded, k), getattr(small, k))


@needs_data
def test_load_or_build_caches_and_rebuilds_another_version(tmp_path, monkeypatch):
    calls = []
    real_build = ph.build

    def counting_build(*args, **kwargs):
        calls.append(kwargs.get("limit"))
        return real_build(*args, **kwargs)

    monkeypatch.setattr(ph, "build", counting_build)
    first = ph.load_or_build(DATA, cache_dir=tmp_path, limit=10, progress=False)
    path = tmp_path / f"{ph.COHORT_VERSION}-limit10.npz"
    assert path.is_file() and calls == [10]
    second = ph.load_or_build(DATA, cache_dir=tmp_path, limit=10, progress=False)
    assert calls == [10] and second.group_ids == first.group_ids
    np.testing.assert_array_equal(second.inputs["labs"], first.inputs["labs"])

    second.meta["version"] = "physionet-cohort-v0"
    second.save(path)
    third = ph.load_or_build(DATA, cache_dir=tmp_path, limit=10, progress=False)
    assert calls == [10, 10] and third.meta["version"] == ph.COHORT_VERSION
    assert Cohort.load(path).meta["version"] == ph.COHORT_VERSION
