import numpy as np
import pytest

from icuwatch.core import features as F
from icuwatch.core import rules


def row(**values):
    x = F.empty(1)
    for name, value in values.items():
        x[0, F.INDEX[name]] = value
    return x


NORMAL = dict(hr=75, spo2=98, rr=16, sbp=125, temp=37.0, o2_supplement=0, altered_mentation=0)


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({}, 0),
        ({"rr": 8}, 3),
        ({"rr": 9}, 1),
        ({"rr": 11}, 1),
        ({"rr": 20}, 0),
        ({"rr": 21}, 2),
        ({"rr": 24}, 2),
        ({"rr": 25}, 3),
        ({"spo2": 91}, 3),
        ({"spo2": 92}, 2),
        ({"spo2": 93}, 2),
        ({"spo2": 94}, 1),
        ({"spo2": 95}, 1),
        ({"spo2": 96}, 0),
        ({"sbp": 90}, 3),
        ({"sbp": 91}, 2),
        ({"sbp": 100}, 2),
        ({"sbp": 101}, 1),
        ({"sbp": 110}, 1),
        ({"sbp": 111}, 0),
        ({"sbp": 219}, 0),
        ({"sbp": 220}, 3),
        ({"hr": 40}, 3),
        ({"hr": 41}, 1),
        ({"hr": 50}, 1),
        ({"hr": 51}, 0),
        ({"hr": 90}, 0),
        ({"hr": 91}, 1),
        ({"hr": 110}, 1),
        ({"hr": 111}, 2),
        ({"hr": 130}, 2),
        ({"hr": 131}, 3),
        ({"temp": 35.0}, 3),
        ({"temp": 35.1}, 1),
        ({"temp": 36.0}, 1),
        ({"temp": 36.1}, 0),
        ({"temp": 38.0}, 0),
        ({"temp": 38.1}, 1),
        ({"temp": 39.0}, 1),
        ({"temp": 39.1}, 2),
        ({"o2_supplement": 1}, 2),
        ({"altered_mentation": 1}, 3),
    ],
)
def test_news2_bands_match_rcp_chart(changes, expected):
    assert rules.news2(row(**{**NORMAL, **changes}))[0] == expected


def test_news2_worked_example_septic_patient():
    x = row(hr=135, spo2=90, rr=28, sbp=88, temp=39.5, o2_supplement=1, altered_mentation=1)
    assert rules.news2(x)[0] == 3 + 3 + 3 + 3 + 2 + 2 + 3


def test_missing_values_score_zero():
    assert rules.news2(F.empty(1))[0] == 0
    assert rules.qsofa(F.empty(1))[0] == 0


def test_qsofa_criteria():
    assert rules.qsofa(row(rr=22, sbp=100, altered_mentation=1))[0] == 3
    assert rules.qsofa(row(rr=21, sbp=101, altered_mentation=0))[0] == 0
    assert rules.qsofa(row(rr=30, sbp=140))[0] == 1


def test_risk_maps_cross_half_at_the_clinical_triggers():
    risk = rules.score(
        np.concatenate([row(**{**NORMAL, "rr": 25, "spo2": 91}), row(**{**NORMAL, "rr": 25, "spo2": 92, "hr": 91})])
    )
    assert risk["news2"].tolist() == [6 + 0, 3 + 2 + 1]
    high = rules.score(row(**{**NORMAL, "rr": 25, "spo2": 91, "hr": 91}))
    assert high["news2"][0] == 7 and high["deterioration_risk"][0] > 0.5
    assert rules.score(row(**NORMAL))["deterioration_risk"][0] < 0.01
    septic = rules.score(row(rr=24, sbp=95, lactate=3.1, temp=37.0))
    assert septic["qsofa"][0] == 2 and septic["sepsis_risk"][0] > 0.5
    no_infection = rules.score(row(rr=24, sbp=95, lactate=1.0, wbc=8, temp=37.0))
    assert no_infection["sepsis_risk"][0] < 0.5


def test_batch_rows_are_independent():
    x = np.concatenate([row(**NORMAL), row(hr=140), F.empty(1)])
    out = rules.score(x)
    assert out["news2"].tolist() == [0, 3, 0]
    assert all(v.shape == (3,) for v in out.values())
