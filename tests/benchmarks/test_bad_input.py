"""The malformed messages of ``icuwatch chaos --bad-input`` are each rejected by the decoder (or,
keyless, by the worker), and are spread among the good ones as asked. Pure logic; the run itself
through the real pipeline is ``test_chaos.py``."""

from __future__ import annotations

import pytest

from icuwatch.benchmarks import bad_input
from icuwatch.core import schemas, topics
from icuwatch.sources.simulator import Simulation

T = 1_764_000_000.0
GOOD = {
    topics.VITALS: schemas.Vitals(patient_id="p1", event_time=T, hr=80, spo2=97),
    topics.WAVEFORMS: schemas.Waveform(patient_id="p1", event_time=T, signal="ecg", fs=250, samples=[0.1] * 250),
    topics.LABS: schemas.Lab(
        patient_id="p1", event_time=T, analyte="lactate", value=2.5, unit="mmol/L", result_time=T + 1800
    ),
    topics.CXR: schemas.Cxr(
        patient_id="p1", event_time=T, study_id="s1", arrival_time=T + 600, image_b64="iVBORw0KGgoAAAANSUhEUg=="
    ),
    topics.ADT: schemas.Adt(patient_id="p1", event_time=T, event="admit", unit="MICU", bed="3", age=70),
}


@pytest.mark.parametrize("topic", sorted(GOOD))
def test_every_malformed_kind_is_rejected(topic):
    kinds = {**bad_input.MUTATIONS, **bad_input.TOPIC_MUTATIONS[topic]}
    seen = set()
    for i in range(len(kinds)):
        kind, key, payload = bad_input.malformed(i, topic, GOOD[topic])
        seen.add(kind)
        if key is None:
            schemas.decode(topic, payload)  # valid payload: the worker refuses it for the missing key
            continue
        with pytest.raises(schemas.SchemaError) as err:
            schemas.decode(topic, payload, key)
        assert err.value.reason.strip(), kind
    assert seen == set(kinds)


def test_malformed_messages_are_spread_among_the_good_ones():
    sim = Simulation(n_patients=2, seed=1, start_time=T, duration_s=300.0)
    n_good = sum(1 for _ in sim.timed_messages())
    items = list(bad_input.interleave(sim, n_bad=2 * n_good + 7))
    kinds = [kind for *_, kind in items]
    assert kinds.count(None) == n_good and len(items) == 3 * n_good + 7
    assert kinds[0] is None and kinds[1] is not None  # interleaved from the start, not appended
    good_topics = [topic for topic, _, _, kind in items if kind is None]
    assert good_topics == [topic for _, topic, _ in sim.timed_messages()]
