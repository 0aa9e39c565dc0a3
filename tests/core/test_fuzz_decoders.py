"""Property-based fuzzing (hypothesis) of every topic's decoder, ``schemas.decode``.

Whatever bytes arrive, the decoder either returns a message of the topic's type or raises
:class:`SchemaError` with a reason (what the worker puts in ``icu.deadletter``); never another
exception, which would kill the ingest agent. A message it accepts survives its own round trip.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icuwatch.core import schemas, topics

T = 1_764_000_000.0
EXAMPLES: dict[str, dict] = {
    topics.VITALS: {"patient_id": "p1", "event_time": T, "hr": 80, "spo2": 97, "consciousness": "A"},
    topics.WAVEFORMS: {"patient_id": "p1", "event_time": T, "signal": "ecg", "fs": 250, "samples": [0.1] * 250},
    topics.LABS: {
        "patient_id": "p1",
        "event_time": T,
        "analyte": "lactate",
        "value": 2.5,
        "unit": "mmol/L",
        "result_time": T + 1800,
    },
    topics.CXR: {
        "patient_id": "p1",
        "event_time": T,
        "study_id": "s1",
        "arrival_time": T + 600,
        "image_b64": "iVBORw0KGgoAAAANSUhEUg==",
        "report": "no acute findings",
    },
    topics.ADT: {
        "patient_id": "p1",
        "event_time": T,
        "event": "admit",
        "unit": "MICU",
        "bed": "3",
        "age": 70,
        "hospital_admit_time": T - 3600,
    },
    topics.SCORES: {
        "patient_id": "p1",
        "event_time": T,
        "model": "early_warning",
        "source": "triton",
        "deterioration_risk": 0.3,
        "sepsis_risk": 0.1,
        "news2": 4,
        "qsofa": 1,
        "staleness_s": {"vitals": 1.0, "labs": None},
        "scored_at": T + 1,
        "contributions": {"sepsis": {"vitals": 0.2, "labs": -0.1}},
    },
    topics.ALERTS: {
        "patient_id": "p1",
        "event_time": T,
        "alert_id": "p1:sepsis:1764000000",
        "kind": "sepsis",
        "risk": 0.7,
        "news2": 6,
        "qsofa": 2,
        "model": "early_warning",
        "source": "fallback",
        "episode_start": T,
        "raised_at": T + 2,
    },
    topics.DEADLETTER: {
        "patient_id": "p1",
        "event_time": T,
        "topic": "icu.vitals",
        "partition": 0,
        "offset": 5,
        "reason": "bad",
        "original_b64": "eyJ9",
    },
}
TOPICS = st.sampled_from(sorted(schemas.MESSAGE_TYPES))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode_or_reason(topic: str, raw: bytes, key: bytes | None = None) -> schemas.Message | str:
    try:
        msg = schemas.decode(topic, raw, key)
    except schemas.SchemaError as exc:
        assert exc.reason.strip(), "a dead letter needs a reason"
        return exc.reason
    expected = schemas.WAVEFORM_TYPES if topic == topics.WAVEFORMS else schemas.MESSAGE_TYPES[topic]
    assert isinstance(msg, expected)
    assert schemas.decode(topic, msg.to_bytes(), msg.key()) == msg
    return msg


def test_the_examples_are_valid():
    for topic, example in EXAMPLES.items():
        assert isinstance(decode_or_reason(topic, json.dumps(example).encode(), b"p1"), schemas.Message), topic
    assert set(EXAMPLES) == set(schemas.MESSAGE_TYPES)


@FUZZ
@given(topic=TOPICS, raw=st.binary(max_size=300), key=st.none() | st.binary(max_size=20))
def test_arbitrary_bytes(topic, raw, key):
    decode_or_reason(topic, raw, key)


@FUZZ
@given(topic=TOPICS, data=st.data())
def test_one_field_replaced_removed_or_added(topic, data):
    example = dict(EXAMPLES[topic])
    field = data.draw(st.sampled_from([*example, "schema_version", "extra"]))
    action = data.draw(st.sampled_from(["replace", "remove"]))
    if action == "remove":
        example.pop(field, None)
    else:
        example[field] = data.draw(JSON_VALUES)
    decode_or_reason(topic, json.dumps(example).encode(), data.draw(st.sampled_from([None, b"p1", b"p2"])))


@FUZZ
@given(topic=TOPICS, payload=JSON_VALUES)
def test_any_json_document(topic, payload):
    decode_or_reason(topic, json.dumps(payload).encode())


@FUZZ
@given(topic=TOPICS, data=st.data())
def test_truncated_and_corrupted_valid_messages(topic, data):
    raw = bytearray(json.dumps(EXAMPLES[topic]).encode())
    cut = data.draw(st.integers(0, len(raw)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, max(0, cut - 1)), st.integers(0, 255)), max_size=4))
    raw = raw[:cut]
    for i, b in flips:
        if raw:
            raw[i] = b
    decode_or_reason(topic, bytes(raw), b"p1")


@FUZZ
@given(
    pid=st.from_regex(schemas.PATIENT_ID_PATTERN, fullmatch=True),
    t=st.floats(T - 10 * 365 * 86400, T + 365 * 86400),
    hr=st.none() | st.floats(0, 350),
    spo2=st.floats(0, 100),
    temp=st.none() | st.floats(20, 46),
)
def test_valid_vitals_are_accepted_as_sent(pid, t, hr, spo2, temp):
    msg = schemas.Vitals(patient_id=pid, event_time=t, hr=hr, spo2=spo2, temp=temp)
    assert schemas.decode(topics.VITALS, msg.to_bytes(), pid.encode()) == msg


MSGPACK_VALUES = st.recursive(  # what msgpack can carry (integers within 64 bits)
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=30)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
V2_FIELDS = {  # a valid v2 waveform chunk's fields, to be broken one at a time
    "schema_version": 2,
    "patient_id": "p1",
    "event_time": 1_764_000_000.0,
    "signal": "ppg",
    "fs": 125.0,
    "units": "NU",
    "sample_format": "int16",
    "scale": 0.001,
    "samples": bytes(250),
}


@FUZZ
@given(data=st.data())
def test_binary_waveform_chunks_broken_anywhere(data):
    """v2 (msgpack) chunks with a field replaced by any msgpack value, removed, or the bytes cut
    and flipped: a valid chunk or a SchemaError with a reason, never another exception."""
    import msgspec

    fields = dict(V2_FIELDS)
    field = data.draw(st.sampled_from([*fields, "extra"]))
    if data.draw(st.booleans()):
        fields[field] = data.draw(MSGPACK_VALUES)
    else:
        fields.pop(field, None)
    raw = msgspec.msgpack.encode(fields)
    cut = data.draw(st.integers(1, len(raw)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, cut - 1), st.integers(0, 255)), max_size=3))
    broken = bytearray(raw[:cut])
    for i, b in flips:
        broken[i] = b
    decode_or_reason(topics.WAVEFORMS, bytes(broken), data.draw(st.sampled_from([None, b"p1"])))
