import math

from icuwatch.fusion import features as F
from icuwatch.streams import patient_state as ps
from icuwatch.streams import schemas

T = 1_764_000_000.0


def vitals(t, **v):
    return schemas.Vitals(patient_id="p1", event_time=t, **v)


def lab(t, analyte="lactate", value=1.0, unit="mmol/L"):
    return schemas.Lab(patient_id="p1", event_time=t, analyte=analyte, value=value, unit=unit, result_time=t + 60)


def test_out_of_order_does_not_roll_back_last_value():
    s = ps.new_state()
    assert ps.apply_vitals(s, vitals(T + 10, hr=100))
    assert ps.apply_vitals(s, vitals(T + 5, hr=60))
    assert s["vitals"]["hr"] == [T + 10, 100]
    assert s["clock"] == T + 10


def test_duplicates_are_ignored_and_change_nothing():
    s = ps.new_state()
    ps.apply_vitals(s, vitals(T, hr=80, rr=16))
    before = repr(s)
    assert not ps.apply_vitals(s, vitals(T, hr=80, rr=16))
    assert repr(s) == before
    ps.apply_lab(s, lab(T))
    assert not ps.apply_lab(s, lab(T))


def test_window_holds_per_minute_means_in_time_order():
    s = ps.new_state()
    for i in reversed(range(120)):
        ps.apply_vitals(s, vitals(T + i, hr=60 + (i // 60) * 30))
    means = ps.window_means(s)["hr"]
    assert means == [(T, 60.0), (T + 60, 90.0)]


def test_window_is_bounded():
    s = ps.new_state()
    for i in range(0, 3 * 3600, 30):
        ps.apply_vitals(s, vitals(T + i, hr=70))
    assert len(s["window"]) == ps.WINDOW_MINUTES


def test_features_are_causal():
    s = ps.new_state()
    ps.apply_vitals(s, vitals(T, hr=80, spo2=97))
    ps.apply_lab(s, lab(T + 100, value=4.0))
    x_early = ps.features_at(s, T + 50)
    assert math.isnan(x_early[0, F.INDEX["lactate"]])
    assert x_early[0, F.INDEX["hr"]] == 80
    x_late = ps.features_at(s, T + 100)
    assert x_late[0, F.INDEX["lactate"]] == 4.0


def test_staleness_per_modality():
    s = ps.new_state()
    ps.apply_vitals(s, vitals(T, hr=80))
    ps.apply_lab(s, lab(T - 3600))
    stale = ps.staleness(s, T + 10)
    assert stale == {"vitals": 10.0, "waveforms": None, "labs": 3610.0, "cxr": None}
    x = ps.features_at(s, T + 10)
    assert x[0, F.INDEX["stale_labs_s"]] == 3610.0 and math.isnan(x[0, F.INDEX["stale_cxr_s"]])


def test_scoring_trigger_cadence_and_events():
    s = ps.new_state()
    ps.apply_vitals(s, vitals(T, hr=80))
    assert ps.scoring_trigger(s, None, 300) == "first"
    s["last_scored"] = T
    ps.apply_vitals(s, vitals(T + 100, hr=80))
    assert ps.scoring_trigger(s, None, 300) is None
    assert ps.scoring_trigger(s, "lab", 300) == "lab"
    assert ps.scoring_trigger(s, "red_flag", 300) == "red_flag"
    ps.apply_vitals(s, vitals(T + 300, hr=80))
    assert ps.scoring_trigger(s, None, 300) == "cadence"
    s["last_scored"] = T + 300
    assert ps.scoring_trigger(s, "lab", 300) is None  # nothing newer than the last score


def test_red_flag():
    assert ps.red_flag(vitals(T, rr=26))
    assert ps.red_flag(vitals(T, hr=80, consciousness="V"))
    assert not ps.red_flag(vitals(T, hr=80, rr=18, spo2=96))


def test_discharged_patient_is_not_scored():
    s = ps.new_state()
    ps.apply_vitals(s, vitals(T, hr=80))
    ps.apply_adt(s, schemas.Adt(patient_id="p1", event_time=T + 5, event="discharge"))
    assert ps.scoring_trigger(s, "lab", 300) is None
