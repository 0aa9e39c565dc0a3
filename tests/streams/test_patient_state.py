import json
import math

from icuwatch.core import features as F
from icuwatch.core import schemas
from icuwatch.streams import patient_state as ps

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
    assert s["now"] == T + 10


def test_duplicates_are_ignored_and_change_nothing():
    s = ps.new_state()
    ps.apply_vitals(s, vitals(T, hr=80, rr=16))
    before = repr(s)
    assert not ps.apply_vitals(s, vitals(T, hr=80, rr=16))
    assert repr(s) == before
    assert ps.apply_lab(s, lab(T))
    before = repr(s)
    assert not ps.apply_lab(s, lab(T))
    assert repr(s) == before


def test_redelivery_beyond_the_recent_vitals_dedupe_is_recognised_by_offset():
    """A restarted worker re-reads from the partition's committed offset, which can lie further back
    than the last RECENT_VITALS samples of this patient: the offsets folded in recognise them."""
    s = ps.new_state()
    n = ps.RECENT_VITALS + 30
    produced = 1_796_000_000.0  # the records' producer timestamps, one a second
    for i in range(n):
        assert not ps.redelivered(s, "icu.vitals", 2, 100 + i, produced + i)
        ps.apply_vitals(s, vitals(T + i, hr=80))
        ps.mark_applied(s, "icu.vitals", 2, 100 + i, produced + i)
    checkpoint = json.dumps(s)
    assert ps.redelivered(s, "icu.vitals", 2, 100, produced)  # older than recent_vitals_t remembers
    assert ps.apply_vitals(s, vitals(T, hr=80))  # event-time dedupe alone would count it again
    s = json.loads(checkpoint)
    assert ps.redelivered(s, "icu.vitals", 2, 100 + n - 1, produced + n - 1)
    assert not ps.redelivered(s, "icu.vitals", 2, 100 + n, produced + n)
    assert not ps.redelivered(s, "icu.vitals", 3, 0, produced)  # another partition's offsets are its own
    ps.mark_applied(s, "icu.vitals", 2, 5, produced + 3)  # an older record never moves it back
    assert ps.redelivered(s, "icu.vitals", 2, 100 + n - 1, produced + n - 1)


def test_a_topic_counting_from_zero_again_is_not_taken_for_redelivery():
    """The local broker restarted empty: offsets start at 0 again, but the records are newer."""
    s = ps.new_state()
    produced = 1_796_000_000.0
    ps.mark_applied(s, "icu.vitals", 0, 50_000, produced)
    assert ps.redelivered(s, "icu.vitals", 0, 49_000, produced - 30)
    assert not ps.redelivered(s, "icu.vitals", 0, 3, produced + 20)
    ps.mark_applied(s, "icu.vitals", 0, 3, produced + 20)
    assert ps.redelivered(s, "icu.vitals", 0, 2, produced + 19)  # the new life's own re-reads
    assert not ps.redelivered(s, "icu.vitals", 0, 4, produced + 21)


def test_window_holds_per_minute_means_in_time_order():
    s = ps.new_state()
    for i in reversed(range(120)):
        ps.apply_vitals(s, vitals(T + i, hr=60 + (i // 60) * 30))
    assert ps.window_means(s)["hr"] == [(T, 60.0), (T + 60, 90.0)]


def test_window_is_bounded():
    s = ps.new_state()
    for i in range(0, 3 * 3600, 30):
        ps.apply_vitals(s, vitals(T + i, hr=70))
    assert len(s["window"]) == ps.WINDOW_MINUTES


def test_features_are_causal_even_when_a_lab_arrives_early():
    s = ps.new_state()
    ps.apply_vitals(s, vitals(T, hr=80, spo2=97))
    ps.apply_lab(s, lab(T - 3600, value=1.5))
    ps.apply_lab(s, lab(T + 100, value=4.0))  # consumed before the vitals of T+100
    x_now = ps.features_at(s, T)
    assert x_now[0, F.INDEX["lactate"]] == 1.5
    assert x_now[0, F.INDEX["hr"]] == 80
    assert ps.features_at(s, T + 100)[0, F.INDEX["lactate"]] == 4.0


def test_staleness_per_modality():
    s = ps.new_state()
    ps.apply_vitals(s, vitals(T, hr=80))
    ps.apply_lab(s, lab(T - 3600))
    ps.apply_lab(s, lab(T + 500))
    stale = ps.staleness(s, T + 10)
    assert stale == {"vitals": 10.0, "waveforms": None, "labs": 3610.0, "cxr": None}
    x = ps.features_at(s, T + 10)
    assert x[0, F.INDEX["stale_labs_s"]] == 3610.0 and math.isnan(x[0, F.INDEX["stale_cxr_s"]])


def test_scoring_trigger_cadence_and_events():
    s = ps.new_state()
    assert ps.scoring_trigger(s, 300) is None  # no vital signs yet: no clock
    ps.apply_vitals(s, vitals(T, hr=80))
    assert ps.scoring_trigger(s, 300) == "first"
    s["last_scored"] = T
    ps.apply_vitals(s, vitals(T + 100, hr=80))
    assert ps.scoring_trigger(s, 300) is None
    ps.apply_lab(s, lab(T + 50))
    assert ps.scoring_trigger(s, 300) == "lab"
    s["last_scored"] = T + 100
    ps.apply_vitals(s, vitals(T + 200, rr=30))
    assert ps.scoring_trigger(s, 300) == "red_flag"
    s["last_scored"] = T + 200
    ps.apply_vitals(s, vitals(T + 500, hr=80))
    assert ps.scoring_trigger(s, 300) == "cadence"


def test_an_early_lab_triggers_only_when_the_clock_reaches_it():
    s = ps.new_state()
    ps.apply_vitals(s, vitals(T, hr=80))
    s["last_scored"] = T
    ps.apply_lab(s, lab(T + 120))
    ps.apply_vitals(s, vitals(T + 60, hr=80))
    assert ps.scoring_trigger(s, 300) is None
    ps.apply_vitals(s, vitals(T + 120, hr=80))
    assert ps.scoring_trigger(s, 300) == "lab"


def test_red_flag():
    assert ps.red_flag(vitals(T, rr=26))
    assert ps.red_flag(vitals(T, hr=80, consciousness="V"))
    assert not ps.red_flag(vitals(T, hr=80, rr=18, spo2=96))


def test_discharge_stops_scoring_only_once_the_clock_reaches_it():
    s = ps.new_state()
    ps.apply_vitals(s, vitals(T, hr=80))
    ps.apply_adt(s, schemas.Adt(patient_id="p1", event_time=T + 3600, event="discharge"))
    assert ps.scoring_trigger(s, 300) == "first"
    s["last_scored"] = T
    ps.apply_vitals(s, vitals(T + 3600, hr=80))
    assert ps.scoring_trigger(s, 300) is None


def test_state_is_json_serialisable():
    import json

    s = ps.new_state()
    ps.apply_vitals(s, vitals(T, hr=80, consciousness="A"))
    ps.apply_lab(s, lab(T))
    ps.apply_adt(s, schemas.Adt(patient_id="p1", event_time=T, event="admit"))
    assert json.loads(json.dumps(s)) == s


def test_a_late_lab_revises_the_latest_score():
    s = ps.new_state()
    ps.apply_vitals(s, vitals(T, hr=80))
    assert ps.scoring_trigger(s, 300) == "first"
    s["last_scored"] = T
    ps.apply_lab(s, lab(T - 10, value=3.0))  # drawn before T, consumed after T was scored
    assert ps.scoring_trigger(s, 300) == "revision"
    assert ps.features_at(s, T)[0, F.INDEX["lactate"]] == 3.0
    assert ps.scoring_trigger(s, 300) is None


def test_checkpoints_fall_in_each_patients_own_second_of_the_minute():
    s = ps.new_state()
    s["now"] = 1_200_000.0 + 25.0  # a minute boundary (20,000 x 60 s) + 25 s
    ps.mark_checkpoint(s, phase_s=10.0)
    assert s["checkpoint_t"] == 1_200_000.0 - 10.0  # this patient's minute starts 10 s before the boundary
    s["now"] += 24.0
    assert not ps.checkpoint_due(s)
    s["now"] += 1.0
    assert ps.checkpoint_due(s)  # at boundary + 50 s = its next minute
    other = ps.new_state()
    other["now"] = 1_200_000.0 + 25.0
    ps.mark_checkpoint(other, phase_s=40.0)
    assert other["checkpoint_t"] == 1_200_000.0 + 20.0


def test_rescoring_runs_on_each_patients_own_grid():
    """Patients scored together at T are rescored in different seconds, each at most once a minute
    for red flags and once an interval for the cadence, and at least half of either apart."""
    base = 1_800_000_000.0  # a multiple of 60 and of 300
    fired = {}
    for phase in (0.0, 17.0, 45.0):
        s = ps.new_state()
        ps.apply_vitals(s, vitals(base, hr=80))
        s["last_scored"] = base
        times = []
        for k in range(1, 181):
            ps.apply_vitals(s, vitals(base + k, rr=30))  # a red flag every second
            if ps.scoring_trigger(s, 300, phase_s=phase) == "red_flag":
                times.append(k)
                s["last_scored"] = base + k
        fired[phase] = times
        assert all(b - a >= 30 for a, b in zip([0] + times, times))
        assert 2 <= len(times) <= 3
    # phase 45: its boundary at 15 s is too close to the last score, so 30 s after that boundary
    assert fired[0.0][0] == 60 and fired[17.0][0] == 43 and fired[45.0][0] == 45
    assert len({tuple(v) for v in fired.values()}) == 3


def test_a_ward_scored_together_is_rescored_spread_over_the_minute():
    """1,000 patients scored in the same second with red flags pending: their next scores fall on
    their own grids, spread over the second half-minute (the old rule put every patient whose
    boundary fell in the first half-minute at exactly +30 s)."""
    from collections import Counter

    from icuwatch.streams.ingest import phase_s

    base = 1_800_000_000.0
    first_rescore = Counter()
    for i in range(1000):
        phase = phase_s(f"sim{i:04d}".encode(), 300.0)  # as the worker derives it (ingest.next_step)
        s = ps.new_state()
        ps.apply_vitals(s, vitals(base, hr=80))
        s["last_scored"] = base
        for k in range(1, 91):
            ps.apply_vitals(s, vitals(base + k, rr=30))
            if ps.scoring_trigger(s, 300, phase_s=phase) == "red_flag":
                first_rescore[k] += 1
                break
    assert sum(first_rescore.values()) == 1000
    assert min(first_rescore) >= 30 and max(first_rescore) <= 60
    assert max(first_rescore.values()) <= 70  # ~33 a second over the second half-minute; was ~500 at +30 s


def test_one_abnormal_reading_is_rescored_when_its_minute_comes():
    """A red flag that comes before its time on the grid waits for it instead of being dropped."""
    base = 1_800_000_000.0
    s = ps.new_state()
    ps.apply_vitals(s, vitals(base, hr=80))
    s["last_scored"] = base
    ps.apply_vitals(s, vitals(base + 5, rr=30))  # the one abnormal reading
    assert ps.scoring_trigger(s, 300, phase_s=0.0) is None
    fired = []
    for k in range(6, 121):
        ps.apply_vitals(s, vitals(base + k, hr=80, rr=16))
        reason = ps.scoring_trigger(s, 300, phase_s=0.0)
        if reason is not None:
            fired.append((k, reason))
            s["last_scored"] = base + k
    assert fired == [(60, "red_flag")]
