"""The ingest agent's decisions, without Kafka: what one message does to a patient's state, and
whether the patient is scored, checkpointed, or neither."""

from icuwatch.core import schemas, topics
from icuwatch.streams import ingest, patient_state
from icuwatch.streams.waveform_state import WaveformState

T = 1_764_000_000.0
KEY = b"p1"
INTERVAL_S = 300.0


def vitals(t, **v):
    return schemas.Vitals(patient_id="p1", event_time=t, **{"hr": 80, "rr": 16, **v})


def lab(t):
    return schemas.Lab(patient_id="p1", event_time=t, analyte="lactate", value=4.2, unit="mmol/L", result_time=t + 60)


def at(offset, topic=topics.VITALS, timestamp=T):
    return (topic, 0, offset, timestamp)


def scored_once():
    """A patient whose first vital sign was scored and whose state was checkpointed after."""
    state, waveforms = patient_state.new_state(), WaveformState()
    assert ingest.apply_message(state, vitals(T), at(0), waveforms)
    first = ingest.next_step(state, vitals(T), KEY, waveforms, INTERVAL_S)
    assert first.score_reason == "first" and first.score_time == T
    patient_state.mark_checkpoint(state, ingest.phase_s(KEY, patient_state.CHECKPOINT_EVERY_S))
    return state, waveforms


def test_the_first_vital_sign_is_scored_at_the_patients_clock():
    state, _ = scored_once()
    assert state["last_scored"] == T and state["revision"] == 0 and state["now"] == T


def test_a_redelivered_record_and_a_duplicate_bring_nothing_new():
    state, waveforms = scored_once()
    assert not ingest.apply_message(state, vitals(T), at(0), waveforms)  # the same record, read again
    assert not ingest.apply_message(state, vitals(T), at(1), waveforms)  # the same sample, sent twice
    assert ingest.apply_message(state, vitals(T + 1), at(2), waveforms)


def test_a_vital_sign_between_scores_and_checkpoints_does_nothing_more():
    state, waveforms = scored_once()
    msg = vitals(T + 10)
    assert ingest.apply_message(state, msg, at(1), waveforms)
    assert ingest.next_step(state, msg, KEY, waveforms, INTERVAL_S) == ingest.NextStep()


def test_a_lab_is_scored_once_the_clock_reaches_it_and_revises_a_score_it_arrives_late_for():
    state, waveforms = scored_once()
    early = lab(T + 30)  # drawn after the clock: waits for the vital signs of its time
    assert ingest.apply_message(state, early, at(0, topics.LABS), waveforms)
    assert ingest.next_step(state, early, KEY, waveforms, INTERVAL_S) == ingest.NextStep(checkpoint=True)
    later = vitals(T + 40)
    assert ingest.apply_message(state, later, at(1), waveforms)
    step = ingest.next_step(state, later, KEY, waveforms, INTERVAL_S)
    assert (step.score_reason, step.score_time) == ("lab", T + 40)
    late = lab(T + 20)  # drawn before the score at T + 40, arriving after it
    assert ingest.apply_message(state, late, at(1, topics.LABS), waveforms)
    step = ingest.next_step(state, late, KEY, waveforms, INTERVAL_S)
    assert (step.score_reason, step.score_time) == ("revision", T + 40) and state["revision"] == 1


def test_a_discharge_drops_the_waveform_buffers_and_stops_scoring():
    state, waveforms = scored_once()
    chunk = schemas.Waveform(patient_id="p1", event_time=T + 5, signal="ecg", fs=250, samples=[0.1] * 250)
    assert ingest.apply_message(state, chunk, at(0, topics.WAVEFORMS), waveforms)
    assert waveforms.buffers
    out = schemas.Adt(patient_id="p1", event_time=T + 6, event="discharge")
    assert ingest.apply_message(state, out, at(0, topics.ADT), waveforms)
    assert ingest.next_step(state, out, KEY, waveforms, INTERVAL_S) == ingest.NextStep(checkpoint=True)
    assert not waveforms.buffers
    after = vitals(T + 600, hr=150)
    assert ingest.apply_message(state, after, at(1), waveforms)
    assert ingest.next_step(state, after, KEY, waveforms, INTERVAL_S).score_reason is None


def test_patients_get_their_own_phase():
    phases = {ingest.phase_s(f"p{i}".encode(), 60.0) for i in range(50)}
    assert all(0 <= p < 60 for p in phases) and len(phases) > 30
