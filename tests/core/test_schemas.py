import json

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
