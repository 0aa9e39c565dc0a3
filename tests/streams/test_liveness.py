"""Data liveness (streams/liveness.py): silence raises one alert, data back ends it, a nurse's
resolve during the silence re-alerts after the re-alert time, a restart does not alert at once."""

from __future__ import annotations

from icuwatch.core import schemas, topics
from icuwatch.streams import liveness, patient_state
from icuwatch.streams.ingest import apply_message
from icuwatch.streams.waveform_state import WaveformState

RULE = liveness.LivenessRule(
    {"vitals": 300.0, "waveforms": 300.0, "labs": 0.0, "cxr": 0.0}, realert_after_resolve_s=600.0
)
T0 = 1_800_000_000.0


def _state_with_vitals(received: float, event_time: float = T0) -> patient_state.PatientState:
    state = patient_state.new_state()
    msg = schemas.Vitals(patient_id="p1", event_time=event_time, hr=80)
    apply_message(state, msg, (topics.VITALS, 0, 1, received), WaveformState(60.0))
    return state


def test_received_is_the_kafka_timestamp_of_the_newest_record_duplicates_included():
    state = _state_with_vitals(received=T0 + 5)
    again = schemas.Vitals(patient_id="p1", event_time=T0, hr=80)
    assert not apply_message(state, again, (topics.VITALS, 0, 2, T0 + 50), WaveformState(60.0))  # duplicate data
    assert state["received"] == {"vitals": T0 + 50}  # ... but the feed is alive
    apply_message(state, again, (topics.VITALS, 0, 3, T0 + 20), WaveformState(60.0))
    assert state["received"]["vitals"] == T0 + 50  # never goes back


def test_silent_vitals_raise_one_alert_and_data_back_ends_it():
    state, watch = _state_with_vitals(received=T0), liveness.Watch()
    assert liveness.check("p1", state, watch, T0 + 300, 0.0, RULE) == (None, None)  # not longer than the threshold
    alert, ended = liveness.check("p1", state, watch, T0 + 301, 0.0, RULE)
    assert alert is not None and ended is None
    assert alert.kind == "data_liveness" and alert.episode_start == T0 and alert.event_time == T0 + 301
    assert alert.alert_id == f"p1:data_liveness:{T0:.0f}"
    assert liveness.check("p1", state, watch, T0 + 900, 0.0, RULE) == (None, None)  # one alert per silence
    patient_state.mark_received(state, topics.VITALS, T0 + 905)
    assert liveness.check("p1", state, watch, T0 + 906, 0.0, RULE) == (None, alert.alert_id)
    assert watch.alert_id is None


def test_other_modalities_do_not_alert_and_discharged_patients_are_not_watched():
    state = patient_state.new_state()
    patient_state.mark_received(state, topics.LABS, T0)
    patient_state.mark_received(state, topics.WAVEFORMS, T0)
    assert liveness.check("p1", state, liveness.Watch(), T0 + 10_000, 0.0, RULE) == (None, None)
    state = _state_with_vitals(received=T0)
    state["adt"] = {"event": "discharge", "t": T0 + 10}
    assert liveness.check("p1", state, liveness.Watch(), T0 + 10_000, 0.0, RULE) == (None, None)


def test_a_restarted_worker_counts_silence_from_when_it_took_the_patient():
    state, watch = _state_with_vitals(received=T0), liveness.Watch()
    start = T0 + 1000  # the worker came up long after the last receipt
    assert liveness.check("p1", state, watch, start + 200, start, RULE) == (None, None)
    alert, _ = liveness.check("p1", state, watch, start + 301, start, RULE)
    assert alert is not None and alert.episode_start == T0  # same id as before the restart


def test_a_resolve_during_the_silence_realerts_after_the_realert_time():
    state, watch = _state_with_vitals(received=T0), liveness.Watch()
    first, _ = liveness.check("p1", state, watch, T0 + 400, 0.0, RULE)
    assert first is not None
    liveness.resolved_by_nurse(watch, still_open={first.alert_id}, now=T0 + 450)
    assert watch.alert_id == first.alert_id  # still open: nothing changes
    liveness.resolved_by_nurse(watch, still_open=set(), now=T0 + 500)
    assert watch.alert_id is None and watch.resolved_at == T0 + 500
    assert liveness.check("p1", state, watch, T0 + 1099, 0.0, RULE) == (None, None)
    second, _ = liveness.check("p1", state, watch, T0 + 1100, 0.0, RULE)
    assert second is not None and second.alert_id != first.alert_id and second.episode_start == T0 + 500


def test_alert_is_a_valid_v1_message():
    state = _state_with_vitals(received=T0)
    alert, _ = liveness.check("p1", state, liveness.Watch(), T0 + 400, 0.0, RULE)
    assert alert is not None
    assert schemas.decode(topics.ALERTS, alert.to_bytes(), b"p1") == alert


def test_feed_times_hold_received_and_event_time_per_modality():
    state = _state_with_vitals(received=T0 + 3, event_time=T0)
    assert liveness.feed_times("p1", state) == {("p1", "vitals"): (T0 + 3, T0)}
