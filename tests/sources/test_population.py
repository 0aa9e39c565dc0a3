"""The ``icu`` population: baselines through a Gaussian copula and a slow drift, fitted to real stays
(``sources/simulator/population.py``); the ``stylised`` one is what it was."""

from __future__ import annotations

import numpy as np
import pytest

from icuwatch.sources.physionet import default_data_dir
from icuwatch.sources.simulator import Simulation, course, lab_orders, population
from icuwatch.sources.simulator.patients import draw_patients
from icuwatch.sources.simulator.physiology import VitalsGenerator

T0 = 1_700_000_000.0
ARGS = (60, 3, 36 * 3600.0, 0.5, (4 * 3600.0, 30 * 3600.0), "sim")


def test_the_icu_population_keeps_who_deteriorates_and_when_and_draws_the_rest():
    stylised, icu = draw_patients(*ARGS), draw_patients(*ARGS, population="icu")
    assert all(p.drift is None and not p.comorbidities for p in stylised) and all(p.drift is not None for p in icu)
    for a, b in zip(stylised, icu):
        assert (a.deteriorates, a.onset_s, a.age, a.unit) == (b.deteriorates, b.onset_s, b.age, b.unit)
    assert icu == draw_patients(*ARGS, population="icu")  # seeded
    assert np.std([p.baseline.hr for p in icu]) > 1.3 * np.std([p.baseline.hr for p in stylised])
    with pytest.raises(ValueError, match="population"):
        draw_patients(*ARGS, population="ward")


def test_conditions_are_drawn_at_the_units_mix_and_treatment_bends_the_course():
    patients = [p for p in draw_patients(600, 8, *ARGS[2:], population="icu") if p.deteriorates]
    for condition, share in course.CONDITION_MIX.items():
        assert abs(np.mean([p.condition == condition for p in patients]) - share) < 0.08, condition
    responders = [p for p in patients if p.responds]
    assert 0.6 < len(responders) / len(patients) < 0.95
    for p in patients[:40]:
        treated = p.onset_s + p.treated_after_s
        before, later = float(p.severity(treated)), float(p.severity(treated + 12 * 3600))
        assert (later < before) if p.responds else (later >= before)
    assert any(course.on_pressors(p, p.onset_s + 30 * 3600) for p in patients if not p.responds)
    stable = [p for p in draw_patients(300, 8, *ARGS[2:], population="icu") if not p.deteriorates]
    assert any("post_op" in p.comorbidities for p in stable) and np.mean([len(p.agitation) > 0 for p in stable]) > 0.5


def test_baselines_follow_the_fitted_quantiles_and_correlation():
    pop = population.load()
    rng = np.random.default_rng(0)
    draws = [population.draw_baseline(rng) for _ in range(4000)]
    grid = np.linspace(population.TAIL, 1 - population.TAIL, population.QUANTILES)
    for v in population.VITALS:
        x = np.array([d[v] for d in draws])
        q = pop["baseline"]["quantiles"][v]
        assert abs(np.median(x) - np.interp(0.5, grid, q)) < 0.05 * (q[-1] - q[0]), v
        assert q[0] <= x.min() and x.max() <= q[-1]
    sbp, dbp = np.array([d["sbp"] for d in draws]), np.array([d["dbp"] for d in draws])
    fitted = pop["baseline"]["normal_score_correlation"][2][3]
    assert fitted > 0.3 and abs(np.corrcoef(sbp, dbp)[0, 1] - fitted) < 0.1


def test_drift_plus_the_simulators_noise_charts_like_real_stays():
    """Hourly charts of 24 h (drift + the fast noise), around each patient's own median: the fitted
    spread and 1-hour autocorrelation come back (what ``drift_process`` solves for)."""
    pop = population.load()
    t = np.arange(24) * 3600.0
    rng = np.random.default_rng(5)
    for vital in ("hr", "sbp", "temp"):
        charts = np.stack(
            [
                population.draw_drift(np.random.default_rng(s)).at(vital, t)
                + rng.normal(0, population.FAST_NOISE_SD[vital], len(t))
                for s in range(400)
            ]
        )
        residual = charts - np.median(charts, axis=1, keepdims=True)
        fitted = pop["drift"][vital]
        assert abs(residual.std() / fitted["residual_sd"] - 1) < 0.2, vital
        lag1 = np.corrcoef(residual[:, :-1].ravel(), residual[:, 1:].ravel())[0, 1]
        assert abs(lag1 - fitted["autocorrelation_1h"]) < 0.12, vital
    d = population.draw_drift(np.random.default_rng(1))
    # a function of time: any block layout gives the same values
    d = population.draw_drift(np.random.default_rng(1))
    whole = d.at("sbp", np.arange(0.0, 600.0))
    assert np.allclose(
        np.concatenate([d.at("sbp", np.arange(0.0, 250.0)), d.at("sbp", np.arange(250.0, 600.0))]), whole
    )


def test_streamed_vitals_of_the_icu_population_wander_and_stay_plausible():
    sim = Simulation(6, 5, 1_700_000_000.0, 6 * 3600.0, deteriorating_fraction=0.0, population="icu")
    drifting = 0
    for p in sim.patients:
        out = VitalsGenerator(p, p.rng(1)).block(np.arange(0.0, 6 * 3600.0))
        both = np.isfinite(out["map"]) & np.isfinite(out["sbp"])
        assert np.all((out["map"][both] >= out["dbp"][both]) & (out["map"][both] <= out["sbp"][both]))
        assert np.nanmax(out["spo2"]) <= 100 and np.nanmin(out["hr"]) >= 20
        hourly_sbp = np.nanmean(out["sbp"].reshape(6, 3600), axis=1)
        if np.isfinite(hourly_sbp).sum() >= 3:  # (some patients' charts have long gaps, as real ones)
            drifting += 1
            assert np.nanmax(hourly_sbp) - np.nanmin(hourly_sbp) > 3.0  # drifts hour to hour, not only with severity
    assert drifting >= 4
    assert Simulation(2, 5, 1_700_000_000.0, 600.0).population == "stylised"


def test_the_monitor_goes_off_and_groups_go_uncharted_as_in_real_charts():
    pop = population.load()["charting"]
    on, reported = zip(*(population.chart_mask(11, i, 64) for i in range(300)))
    on, reported = np.array(on)[:, 1:24], np.array(reported)[:, 1:24]
    off = 1 - on.mean(axis=1)
    assert 0.06 < off.mean() < 0.15  # set B: no vital sign in 10 % of hours 2-24
    assert np.median(off) < 0.06 and np.percentile(off, 90) > 0.2  # most charted every hour, a few with long gaps
    assert pop["off_after_on_quantiles"][0] < pop["off_after_on"] < pop["off_after_on_quantiles"][-1]
    temp = reported[:, :, list(population.CHART_GROUPS).index("temp")]
    assert 0.2 < temp.mean() < 0.5 and not (temp & ~on).any()
    first, longer = population.chart_mask(11, 3, 64), population.chart_mask(11, 3, 128)
    assert np.array_equal(first[0], longer[0][:64])  # a longer horizon extends, never redraws


def test_an_icu_ward_streams_only_what_is_charted():
    sim = Simulation(4, 9, 1_700_000_000.0, 5 * 3600.0, waveforms=False, cxr=False, population="icu")
    vitals = [m for topic, m in sim.messages() if topic == "icu.vitals"]
    assert all(
        any(getattr(m, f) is not None for f in ("hr", "spo2", "rr", "sbp", "dbp", "map", "temp")) for m in vitals
    )
    assert len(vitals) < 4 * 5 * 3600  # monitor-off hours send nothing
    temps = sum(m.temp is not None for m in vitals)
    assert 0 < temps < 0.7 * len(vitals)


def test_order_hazards_read_rounds_and_count_stays_only_while_charted():
    rounds = [([2, 6, 10, 14, 18, 22], 1, 24)] * 40  # a panel every 4 hours from hour 2
    ended = [([], 1, 3)] * 40  # charts that end at hour 3, untested
    late = [([10], 1, 24)] * 40  # a first panel at hour 10
    joined = [([], 8, 24)] * 40  # charts that start at hour 8, untested
    fitted = lab_orders.hazards(rounds + ended + late + joined, 24)
    assert fitted["first_hazard"][:3] == [0.0, round(40 / 120, 5), 0.0]  # hour 2: of the 120 charted then
    assert fitted["gap_hazard"][:4] == [0.0, 0.0, 0.0, round(200 / 240, 5)]  # 4 h on: rounds, not late
    assert fitted["first_hazard"][9] == 0.5  # hour 10: late of (late + joined): the ended left, the joined came
    assert fitted["first_hazard"][6] == 0.0  # hour 7: 40 late at risk, no event (the joined not yet charted)


def test_frailty_is_fitted_to_how_unevenly_real_stays_are_tested():
    rng = np.random.default_rng(0)
    hours = np.arange(2, 25)
    even = [(sorted(int(h) for h in rng.choice(hours, 6, replace=False)), 1, 24) for _ in range(300)]
    uneven = [(hours[rng.random(23) < (0.8 if k % 5 == 0 else 0.04)].tolist(), 1, 24) for k in range(300)]
    k_even = lab_orders.frailty_for_counts(lab_orders.hazards(even, 24), even, 24)
    k_uneven = lab_orders.frailty_for_counts(lab_orders.hazards(uneven, 24), uneven, 24)
    assert k_uneven < 1.0 < 10.0 < k_even  # busy and rarely tested patients: a small gamma shape


def test_a_daily_round_continues_past_the_first_day():
    fitted = population.load()["labs"]
    assert fitted["hazard_hours"] >= 48 and len(fitted["events"]["routine"]["gap_hazard"]) == fitted["hazard_hours"]
    patients = draw_patients(150, 2, 72 * 3600.0, 0.0, (0.0, 1.0), "sim", population="icu")
    per_day = np.zeros(3)
    for p in patients:
        orders = lab_orders.draw_orders(fitted, p.severity, 72 * 3600.0, p.rng(3))
        days = {int(t // 86400) for t, analytes in orders if "bun" in analytes}
        per_day += [d in days for d in range(3)]
    assert per_day.min() > 0.8 * per_day.max()  # basic panels on day 2 and 3 as on day 1


def test_icu_labs_come_in_real_panels_at_real_rates_and_none_in_the_first_hour():
    from icuwatch.sources.simulator.labs import lab_messages

    fitted = population.load()["labs"]
    patients = draw_patients(200, 4, 24 * 3600.0, 0.0, (0.0, 1.0), "sim", population="icu")
    hours_with, first_hours, gas_patients = {}, [], 0
    for p in patients:
        labs = lab_messages(p, T0, 24 * 3600.0, p.rng(3))
        first_hours += [(lab.event_time - T0) // 3600 for lab in labs]
        by_hour = {}
        for lab in labs:
            by_hour.setdefault((lab.event_time - T0) // 3600, set()).add(lab.analyte)
        for analytes in by_hour.values():
            for a in analytes:
                hours_with[a] = hours_with.get(a, 0) + 1
        for hour, analytes in by_hour.items():  # (a result not back by the end is left out: not the last 2 h)
            if "bun" in analytes and hour < 22:
                assert {"creatinine", "potassium", "glucose"} <= analytes  # a basic panel, drawn together
        gas_patients += any("ph" in a for a in by_hour.values())
    assert min(first_hours) >= 1  # nothing in the first hour, as set B
    share = {a: n / (200 * 23) for a, n in hours_with.items()}
    assert 0.03 < share["bun"] < 0.10 and 0.12 < share["glucose"] < 0.30 and share.get("bicarbonate", 0) < 0.02
    assert gas_patients < 0.6 * 200  # most patients never get a blood gas
    assert set(fitted["events"]) == set(lab_orders.EVENT_TYPES)


@pytest.mark.skipif(not default_data_dir().is_dir(), reason="no PhysioNet stays")
def test_fit_reads_real_stays_of_the_train_split_only(monkeypatch):
    from icuwatch.sources import physionet

    read = []
    real_read = physionet.read_psv
    monkeypatch.setattr(physionet, "read_psv", lambda path: read.append(path) or real_read(path))
    fitted = population.fit(default_data_dir(), limit=150, progress=False)
    assert len(read) == 150 and {physionet.split_of(p.stem) for p in read} == {"train"}
    assert "split 'train': 150 stays" in fitted["fitted_on"]
    assert set(fitted["drift"]) == set(population.DRIFTING)
    for v in population.VITALS:
        q = fitted["baseline"]["quantiles"][v]
        assert len(q) == population.QUANTILES and q == sorted(q)
    assert 1.0 < fitted["drift"]["map"]["residual_sd"] < 15.0  # measured MAP is not (SBP + 2 DBP) / 3 (rounding: ~0.3)
