"""``sources/simulator/drift.py``: faults injected into one unit's feeds from a given time on."""

from __future__ import annotations

import pytest

from icuwatch.core import topics
from icuwatch.sources.simulator import Simulation
from icuwatch.sources.simulator.drift import CREATININE_MG_DL_TO_UMOL_L, Injection

T0 = 1_765_000_000.0


def messages(drift=()):
    sim = Simulation(8, seed=3, start_time=T0, duration_s=8 * 3600, waveforms=False, drift=drift)
    return sim, list(sim.timed_messages())


def test_each_injection_changes_only_its_unit_from_its_start():
    sim, clean = messages()
    injections = [
        Injection.parse(f"{k}:{u}:3")
        for k, u in (("lab_units", "MICU"), ("monitor_offset", "SICU"), ("xray_stop", "MICU"))
    ]
    _, drifted = messages(injections)
    unit = {p.patient_id: p.unit for p in sim.patients}
    assert {"MICU", "SICU"} == set(unit.values())
    after = T0 + 3 * 3600
    kept = [
        (t, topic, m)
        for t, topic, m in clean
        if not (topic == topics.CXR and unit[m.patient_id] == "MICU" and m.event_time >= after)
    ]
    assert len(kept) < len(clean) and len(drifted) == len(kept)  # only the MICU X-rays after hour 3 are gone
    changed = {"creatinine": 0, "spo2": 0}
    for (_, topic, a), (_, _, b) in zip(kept, drifted):
        if a == b:
            continue
        late = a.event_time >= after
        if topic == topics.LABS:
            assert late and unit[a.patient_id] == "MICU" and a.analyte == "creatinine"
            assert b.value == pytest.approx(a.value * CREATININE_MG_DL_TO_UMOL_L, abs=0.05) and b.unit == "mg/dL"
            changed["creatinine"] += 1
        else:
            assert topic == topics.VITALS and late and unit[a.patient_id] == "SICU"
            assert b.spo2 == pytest.approx(max(0.0, a.spo2 - 6.0)) and b.hr == a.hr
            changed["spo2"] += 1
    assert changed["creatinine"] > 0 and changed["spo2"] > 1000


def test_an_injection_is_parsed_from_kind_unit_and_hour():
    assert Injection.parse("xray_stop:SICU:1.5") == Injection("xray_stop", "SICU", 5400.0)
    for bad in ("xray_stop:SICU", "drop_all:SICU:1", "xray_stop:SICU:soon"):
        with pytest.raises(ValueError, match="drift"):
            Injection.parse(bad)
