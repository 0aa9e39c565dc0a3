import json

import numpy as np
import pytest

from icuwatch.core import schemas, topics

T = 1_764_000_000.0


def test_round_trip_every_input_type():
    msgs = {
        topics.VITALS: schemas.Vitals(patient_id="p1", event_time=T, hr=80, spo2=97, consciousness="A"),
        topics.WAVEFORMS: schemas.Waveform(patient_id="p1", event_time=T, signal="ecg", fs=250, samples=[0.1] * 250),
        topics.LABS: schemas.Lab(
            patient_id="p1", event_time=T, analyte="lactate", value=2.5, unit="mmol/L", result_time=T + 1800
        ),
        topics.CXR: schemas.Cxr(
            patient_id="p1", event_time=T, study_id="s1", arrival_time=T + 600, image_b64="iVBORw0KGgoAAAANSUhEUg=="
        ),
        topics.ADT: schemas.Adt(patient_id="p1", event_time=T, event="admit", unit="MICU", bed="3"),
    }
    for topic, msg in msgs.items():
        assert schemas.decode(topic, msg.to_bytes(), b"p1") == msg


@pytest.mark.parametrize(
    "topic, payload, reason",
    [
        (topics.VITALS, b"not json", "Invalid JSON"),
        (topics.VITALS, b'{"patient_id":"p1","event_time":1764000000}', "no value"),
        (topics.VITALS, b'{"patient_id":"p1","hr":80}', "event_time"),
        (topics.VITALS, b'{"patient_id":"p1","event_time":1,"hr":80}', "event_time"),
        (topics.VITALS, b'{"patient_id":"p1","event_time":1764000000000,"hr":80}', "event_time"),
        (topics.VITALS, b'{"schema_version":2,"patient_id":"p1","event_time":1764000000,"hr":80}', "schema_version"),
        (topics.VITALS, b'{"patient_id":"p1","event_time":1764000000,"hr":900}', "hr"),
        (topics.VITALS, b'{"patient_id":"p1","event_time":1764000000,"hr":80,"extra":1}', "extra"),
        (
            topics.LABS,
            b'{"patient_id":"p1","event_time":1764000000,"analyte":"lactate","value":2,"unit":"mg/dL","result_time":1764000001}',
            "mmol/L",
        ),
        (
            topics.LABS,
            b'{"patient_id":"p1","event_time":1764000000,"analyte":"unobtainium","value":2,"unit":"x","result_time":1764000001}',
            "unknown analyte",
        ),
        (
            topics.WAVEFORMS,
            b'{"patient_id":"p1","event_time":1764000000,"signal":"ecg","fs":250,"samples":[]}',
            "samples",
        ),
        (topics.ADT, b'{"patient_id":"p 1","event_time":1764000000,"event":"admit"}', "patient_id"),
        (
            topics.ADT,
            b'{"patient_id":"p1","event_time":1764000000,"event":"admit","hospital_admit_time":1764000001}',
            "hospital_admit_time after event_time",
        ),
        (
            topics.ADT,
            b'{"patient_id":"p1","event_time":1764000000,"event":"admit","hospital_admit_time":1764000000000}',
            "hospital_admit_time",
        ),
        (
            topics.ADT,
            b'{"patient_id":"p1","event_time":1764000000,"event":"transfer","hospital_admit_time":-7200}',
            "hospital_admit_time",
        ),
        (topics.VITALS, b"", "empty"),
        (
            topics.WAVEFORMS,
            b'{"patient_id":"p1","event_time":1764000000,"signal":"ecg","fs":3,"samples":[0.1,0.2,0.3]}',
            "at least 50",
        ),
    ],
)
def test_bad_messages_raise_schema_error_with_reason(topic, payload, reason):
    with pytest.raises(schemas.SchemaError) as err:
        schemas.decode(topic, payload)
    assert reason.lower() in err.value.reason.lower()


def test_key_must_match_patient():
    msg = schemas.Vitals(patient_id="p1", event_time=T, hr=80)
    with pytest.raises(schemas.SchemaError, match="key"):
        schemas.decode(topics.VITALS, msg.to_bytes(), b"p2")


def test_every_message_carries_version_and_event_time():
    for topic, model in schemas.MESSAGE_TYPES.items():
        fields = model.model_fields
        assert "event_time" in fields and "schema_version" in fields, topic
    body = json.loads(schemas.Vitals(patient_id="p1", event_time=T, hr=80).to_bytes())
    assert body["schema_version"] == 1 and body["event_time"] == T


def test_adt_hospital_admission_is_optional_and_not_after_the_event():
    old = b'{"schema_version":1,"patient_id":"p1","event_time":1764000000,"event":"admit","age":70}'
    assert schemas.decode(topics.ADT, old).hospital_admit_time is None  # v1 messages without it stay valid
    for event, hosp in (("admit", T - 2 * 86400.0), ("admit", T), ("discharge", T - 3600.0)):
        msg = schemas.Adt(patient_id="p1", event_time=T, event=event, hospital_admit_time=hosp)
        assert schemas.decode(topics.ADT, msg.to_bytes()) == msg
        assert json.loads(msg.to_bytes())["hospital_admit_time"] == hosp
    assert "hospital_admit_time" not in json.loads(schemas.Adt(patient_id="p1", event_time=T, event="admit").to_bytes())
    for bad in (T + 0.001, float("nan"), 1.0):
        with pytest.raises(ValueError, match="hospital_admit_time"):
            schemas.Adt(patient_id="p1", event_time=T, event="admit", hospital_admit_time=bad)


def v2_chunk(**changes) -> bytes:
    """A valid v2 ECG chunk as msgpack, with ``changes`` to its fields."""
    import msgspec

    good = schemas.WaveformV2.of("p1", T, "ecg", 250.0, np.sin(np.arange(250) / 7.0) * 1.3)
    return msgspec.msgpack.encode({**msgspec.structs.asdict(good), **changes})


def test_v2_waveform_round_trips_at_a_third_of_the_bytes():
    x = np.sin(np.arange(250) / 7.0) * 1.3
    v1 = schemas.Waveform(patient_id="p1", event_time=T, signal="ecg", fs=250.0, samples=np.round(x, 4).tolist())
    v2 = schemas.WaveformV2.of("p1", T, "ecg", 250.0, x, "mV")
    raw = v2.to_bytes()
    assert len(raw) < 0.4 * len(v1.to_bytes())
    got = schemas.decode(topics.WAVEFORMS, raw, b"p1")
    assert isinstance(got, schemas.WaveformV2) and got == v2 and got.schema_version == 2
    assert np.max(np.abs(got.values() - x)) <= got.scale / 2 + 1e-12  # int16 at the chunk's own scale
    assert got.scale == pytest.approx(1.3 * np.max(np.abs(np.sin(np.arange(250) / 7.0))) / 32767)
    assert got.n_samples == 250 and got.end_time() == pytest.approx(v1.end_time())
    f32 = schemas.decode(
        topics.WAVEFORMS, schemas.WaveformV2.of("p1", T, "ecg", 250.0, x, sample_format="float32").to_bytes()
    )
    np.testing.assert_array_equal(f32.values(), x.astype(np.float32))
    flat = schemas.WaveformV2.of("p1", T, "resp", 25.0, np.zeros(25))  # all zero: scale 1, not 0
    assert flat.scale == 1.0 and not flat.values().any()


def test_the_version_is_read_per_message():
    v1 = schemas.Waveform(patient_id="p1", event_time=T, signal="ecg", fs=250.0, samples=[0.1] * 250)
    assert isinstance(schemas.decode(topics.WAVEFORMS, v1.to_bytes()), schemas.Waveform)
    assert isinstance(schemas.decode(topics.WAVEFORMS, b" \n" + v1.to_bytes()), schemas.Waveform)
    assert isinstance(schemas.decode(topics.WAVEFORMS, v2_chunk()), schemas.WaveformV2)
    assert np.array_equal(v1.values(), np.full(250, 0.1))
    with pytest.raises(schemas.SchemaError, match="Input should be 1"):  # a v2 body in JSON is no v1
        schemas.decode(topics.WAVEFORMS, json.dumps({**json.loads(v1.to_bytes()), "schema_version": 2}).encode())
    with pytest.raises(schemas.SchemaError):  # binary is for waveforms only
        schemas.decode(topics.VITALS, v2_chunk())


@pytest.mark.parametrize(
    "changes, reason",
    [
        (dict(fs=5000.0), "fs: Expected `float` <= 2000.0"),
        (dict(fs=10.0), "ecg sampled at 10.0 Hz; at least 50.0 Hz needed"),
        (dict(patient_id="a b"), "patient_id: Expected `str` matching regex"),
        (dict(event_time=1_764_000_000_000.0), "event_time: Expected `float` < 4000000000.0"),
        (dict(samples=b"\x01\x02\x03"), "3 bytes is not a whole number of int16 values"),
        (dict(samples=b"\x00"), "samples: Expected `bytes` of length >= 2"),
        (dict(samples=bytes(40002)), "20001 samples, at most 20000"),
        (dict(sample_format="int8"), "sample_format: Invalid enum value 'int8'"),
        (dict(schema_version=3), "schema_version: Invalid enum value 3"),
        (dict(comment="x"), "message: Object contains unknown field `comment`"),
        (dict(scale=float("nan")), "scale: Expected `float` > 0.0"),
        (dict(scale=float("inf")), "scale: Expected `float` < 1e+30"),
        (
            dict(sample_format="float32", samples=np.array([0.1, np.inf], "<f4").tobytes()),
            "samples must be finite",
        ),
        (dict(signal="eeg"), "signal: Invalid enum value 'eeg'"),
        (dict(patient_id="p1\n"), "patient_id: only letters"),  # msgspec's pattern alone lets it by
    ],
)
def test_bad_v2_waveforms_raise_schema_error_naming_the_field(changes, reason):
    with pytest.raises(schemas.SchemaError) as err:
        schemas.decode(topics.WAVEFORMS, v2_chunk(**changes))
    assert err.value.reason.startswith("icu.waveforms v2: ")
    assert reason in err.value.reason


def test_bad_v2_bytes_raise_schema_error():
    for raw, reason in [(v2_chunk()[:-5], "not a msgpack map"), (b"\x80", "missing required field")]:
        with pytest.raises(schemas.SchemaError, match=reason):
            schemas.decode(topics.WAVEFORMS, raw)
    with pytest.raises(schemas.SchemaError, match="key"):
        schemas.decode(topics.WAVEFORMS, v2_chunk(), b"p2")


def test_packing_refuses_what_the_worker_would_dead_letter():
    """``WaveformV2.of`` validates as the worker decodes: NaN is not silently packed as zeros."""
    for values, fs, reason in [
        ([0.1, float("nan"), 0.2], 250.0, "samples must be finite"),
        ([0.1, float("inf")], 250.0, "samples must be finite"),
        ([0.1, 0.2], 10.0, "at least 50.0 Hz"),
        (np.zeros(20001), 250.0, "at most 20000"),
    ]:
        with pytest.raises(schemas.SchemaError, match=reason):
            schemas.WaveformV2.of("p1", T, "ecg", fs, values)
    with pytest.raises(schemas.SchemaError, match="patient_id"):
        schemas.WaveformV2.of("p1\n", T, "ecg", 250.0, np.ones(250))
