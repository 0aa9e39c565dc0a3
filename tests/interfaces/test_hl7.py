"""HL7 v2 interface: mapping tables, unit conversion, timestamps, ORU/ADT mapping, the encoder's round
trip, ACKs; and the MLLP listener against the real broker (``stack``)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import hl7
import hl7.mllp
import pytest
from stack_fixtures import read_matching, read_to_log_end

from icuwatch.core import topics
from icuwatch.core.schemas import LAB_UNITS, Adt, Lab, Vitals
from icuwatch.interfaces import hl7_encode
from icuwatch.interfaces.hl7_encode import send_via_hl7_async, to_hl7
from icuwatch.interfaces.hl7_listener import Hl7Listener, build_ack
from icuwatch.interfaces.hl7_mapping import (
    Hl7Reject,
    TimeWindow,
    completed_years,
    load_mapping,
    map_message,
    parse_ts,
)

MAPPING = load_mapping()
T0 = 1732550400.0  # 2024-11-25T16:00:00Z
TS = "20241125160000"


def fixed_times_accepted(settings):
    """These tests' times are fixed in 2024: older than a live listener accepts by default."""
    return settings.model_copy(update={"live_max_age_s": 0.0})


def oru(pid: str, *obx: str, obr_time: str = TS, extra_obr: str = "", msh_time: str = "20241125170000") -> str:
    segs = [
        f"MSH|^~\\&|GW|WARD|ICUWATCH|ICU|{msh_time}||ORU^R01|{uuid.uuid4().hex[:12]}|P|2.5",
        f"PID|1||{pid}^^^HOSP^MR||Doe^Jane",
        f"OBR|1||ORD1|PANEL|||{obr_time}{extra_obr}",
    ]
    segs += [f"OBX|{i}|{o}" for i, o in enumerate(obx, 1)]
    return "\r".join(segs)


def adt(
    pid: str,
    trigger: str,
    evn_time: str = TS,
    loc: str = "MICU^12^MICU-012",
    born: str = "19570601",
    sex: str = "F",
    admitted: str = "",
) -> str:
    pv1 = f"PV1|1|I|{loc}" + ("|" * 41 + admitted if admitted else "")  # PV1-44 admit date/time
    return "\r".join(
        [
            f"MSH|^~\\&|ADT|HOSP|ICUWATCH|ICU|20241125163000||ADT^{trigger}|{uuid.uuid4().hex[:12]}|P|2.5",
            f"EVN|{trigger}|{evn_time}",
            f"PID|1||{pid}^^^HOSP^MR||Doe^Jane||{born}|{sex}",
            pv1,
        ]
    )


# ---- pure: timestamps -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("202411251600", T0),
        ("20241125160000", T0),
        ("20241125160000.5", T0 + 0.5),
        ("20241125160000.1234", T0 + 0.1234),
        ("20241125170000+0100", T0),
        ("20241125110000-0500", T0),
        ("20241125163000+0030", T0),
    ],
)
def test_parse_ts(text, expected):
    assert parse_ts(text) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "text",
    [
        "2024",
        "2024112516",
        "20241325160000",
        "20241125250000",
        "20241125160000.",
        "20241125160000.12345",
        "20241125160000+01",
        "20241125160000Z",
        "2024-11-25T16:00",
        "",
        "20241125160000+2500",
        "1732550400",
    ],
)
def test_parse_ts_rejects(text):
    with pytest.raises(ValueError):
        parse_ts(text)


def test_naive_time_in_configured_zone():
    assert parse_ts(TS) == T0  # UTC by default
    assert parse_ts("20241125170000", ZoneInfo("Europe/Berlin")) == T0  # CET in November
    assert parse_ts("20240701180000", ZoneInfo("Europe/Berlin")) == parse_ts("20240701160000")  # CEST


def test_completed_years():
    from datetime import date

    assert completed_years(date(1957, 6, 1), date(2024, 11, 25)) == 67
    assert completed_years(date(1957, 11, 26), date(2024, 11, 25)) == 66


# ---- pure: mapping tables and unit conversion --------------------------------------------------


@pytest.mark.parametrize(
    "code,unit,value,field,expected",
    [
        ("2524-7", "mg/dL", 18.02, "lactate", 2.0),
        ("32693-4", "mmol/L", 2.5, "lactate", 2.5),
        ("2160-0", "umol/L", 88.4, "creatinine", 1.0),
        ("2160-0", "µmol/L", 176.8, "creatinine", 2.0),
        ("2345-7", "mmol/L", 5.0, "glucose", 90.08),
        ("718-7", "g/L", 135, "hemoglobin", 13.5),
        ("6690-2", "10*9/L", 12.1, "wbc", 12.1),
        ("6690-2", "10^9/L", 12.1, "wbc", 12.1),
        ("2019-8", "kPa", 5.33, "paco2", 39.98),
        ("3150-0", "%", 40, "fio2", 0.4),
        ("8310-5", "[degF]", 98.6, "temp", 37.0),
        ("8310-5", "Cel", 38.2, "temp", 38.2),
        ("8480-6", "mm[Hg]", 120, "sbp", 120),
    ],
)
def test_unit_conversion(code, unit, value, field, expected):
    rule = MAPPING.lookup(code, unit)
    assert rule.field == field
    assert rule.convert(value) == pytest.approx(expected, abs=0.01)


def test_unknown_code_and_unit_have_reasons():
    with pytest.raises(LookupError, match="unknown observation code '9999-9'"):
        MAPPING.lookup("9999-9", "mmol/L")
    with pytest.raises(LookupError, match="unit 'g/dL' not accepted for 2524-7 \\(lactate\\)"):
        MAPPING.lookup("2524-7", "g/dL")


def test_every_lab_rule_targets_a_schema_analyte():
    for by_unit in MAPPING.rules.values():
        for rule in by_unit.values():
            if rule.topic == "labs":
                assert rule.field in LAB_UNITS
    # the simulator's analytes all have an identity row (the encoder's code and unit)
    from icuwatch.sources.simulator.labs import FULL

    assert all(MAPPING.preferred("labs", a) for a in FULL)


def test_extra_mapping_file_extends_and_overrides(tmp_path):
    extra = tmp_path / "site.csv"
    extra.write_text(
        "# site codes\ncode,topic,field,unit,factor,offset,note\n"
        "LOC-LAC,labs,lactate,mg/dL,1/9.01,,local lactate\n"
        "2160-0,labs,creatinine,umol/L,0.0113,0,rounded factor\n"
        "8867-4,labs,lactate,mmol/L,1,0,silly remap\n"
        "147842,ignore,,,,,monitor ECG HR duplicate\n"
    )
    m = load_mapping(extra)
    assert m.lookup("LOC-LAC", "mg/dL").convert(9.01) == pytest.approx(1.0)
    assert m.lookup("2160-0", "umol/L").factor == 0.0113
    assert m.lookup("2160-0", "mg/dL").factor == 1  # built-in rows of the code stay
    assert m.lookup("8867-4", "mmol/L").field == "lactate"
    with pytest.raises(LookupError):
        m.lookup("8867-4", "/min")  # remapped code: built-in rows dropped
    assert m.lookup("147842", "").topic == "ignore"
    bad = tmp_path / "bad.csv"
    bad.write_text("code,topic,field,unit\nX,labs,unobtainium,mg/dL\n")
    with pytest.raises(ValueError, match="not a v1 lab analyte"):
        load_mapping(bad)


# ---- pure: ORU / ADT mapping -------------------------------------------------------------------


def test_oru_vitals_one_message_per_observation_time():
    text = oru(
        "P1",
        f"NM|8867-4^Heart rate^LN||88|/min|||||F|||{TS}",
        f"NM|59408-5^SpO2^LN||94|%|||||F|||{TS}",
        f"NM|8310-5^Temp^LN||101.3|[degF]|||||F|||{TS}",
        "NM|9279-1^RR^LN||22|/min|||||F|||20241125160100",
        "NM|8480-6^SBP^LN||95|mm[Hg]|||||F",
    )  # no OBX-14: OBR-7
    out = map_message(text, MAPPING)
    assert [t for t, _ in out] == [topics.VITALS, topics.VITALS]
    first, second = out[0][1], out[1][1]
    assert isinstance(first, Vitals) and first.event_time == T0
    assert (first.hr, first.spo2, first.sbp) == (88, 94, 95)
    assert first.temp == pytest.approx(38.5, abs=0.01)
    assert second.event_time == T0 + 60 and second.rr == 22


def test_oru_labs_with_conversion_and_times():
    text = oru(
        "P2",
        f"NM|2524-7^Lactate^LN||36.04|mg/dL|||||F|||{TS}",
        "NM|2160-0^Creat^LN||132.6|umol/L|||||F",
        extra_obr="|||||||||||||||20241125164500",
    )
    out = map_message(text, MAPPING)
    labs = {m.analyte: m for _, m in out}
    assert labs["lactate"].value == pytest.approx(4.0, abs=1e-3) and labs["lactate"].unit == "mmol/L"
    assert labs["creatinine"].value == pytest.approx(1.5, abs=1e-3) and labs["creatinine"].unit == "mg/dL"
    assert all(m.event_time == T0 and m.result_time == T0 + 45 * 60 for m in labs.values())
    # without OBR-22, the result time is the message time
    out = map_message(oru("P2", "NM|2345-7||6|mmol/L|||||F"), MAPPING)
    assert out[0][1].result_time == T0 + 3600 and out[0][1].value == pytest.approx(108.1, abs=0.01)


def test_cancelled_observations_are_skipped():
    out = map_message(oru("P3", "NM|8867-4||90|/min|||||F", "NM|2524-7||||||||X"), MAPPING)
    assert [t for t, _ in out] == [topics.VITALS]


@pytest.mark.parametrize(
    "obx,reason",
    [
        ("NM|9999-9^Mystery||1|mmol/L|||||F", "unknown observation code '9999-9'"),
        ("NM|2524-7^Lactate||2|g/dL|||||F", "unit 'g/dL' not accepted"),
        ("NM|8867-4^HR||fast|/min|||||F", "not a number"),
        ("NM|8867-4^HR||900|/min|||||F", "vitals hr"),
        ("NM|8867-4^HR||90|/min|||||F|||20241125256100", "OBX-14: bad HL7 timestamp"),
        ("NM|8867-4^HR||90|/min|||||F|||19990101000000", "event_time"),
    ],
)
def test_oru_rejects(obx, reason):
    with pytest.raises(Hl7Reject) as exc:
        map_message(oru("P4", "NM|59408-5||97|%|||||F", obx), MAPPING)
    assert reason in exc.value.reason
    assert exc.value.patient_id == "P4"


def test_malformed_messages_rejected():
    for text, reason in [
        ("hello", "no MSH segment"),
        (oru("P5", "NM|8867-4||90|/min|||||F").replace("OBX|1", "obx!1"), "bad segment id"),
        (oru("P5", "NM|8867-4||90|/min|||||F").replace("PID|1||P5^^^HOSP^MR", "PID|1||"), "PID-3"),
        (oru("P5", "NM|8867-4||90|/min|||||F", obr_time=""), "no observation time"),
        (adt("P5", "A08"), "unsupported ADT event A08"),
        (oru("P5").replace("ORU^R01", "ORM^O01"), "unsupported message type ORM^O01"),
    ]:
        with pytest.raises(Hl7Reject, match=None) as exc:
            map_message(text, MAPPING)
        assert reason in exc.value.reason, (text, exc.value.reason)


def test_adt_mapping():
    ((topic, msg),) = map_message(adt("MRN.77", "A01"), MAPPING)
    assert topic == topics.ADT and isinstance(msg, Adt)
    assert (msg.patient_id, msg.event, msg.unit, msg.bed, msg.age, msg.sex, msg.event_time) == (
        "MRN.77",
        "admit",
        "MICU",
        "MICU-012",
        67.0,
        "F",
        T0,
    )
    assert map_message(adt("X", "A02", loc="SICU^3"), MAPPING)[0][1].bed == "3"
    dis = map_message(adt("X", "A03", evn_time="", sex="O"), MAPPING)[0][1]
    assert dis.event == "discharge" and dis.sex == "U" and dis.event_time == T0 + 1800  # MSH-7
    assert msg.hospital_admit_time is None
    # PV1-44 (admit date/time of the visit) is the hospital admission, when usable
    admitted = map_message(adt("X", "A02", admitted="20241123081500"), MAPPING)[0][1]
    assert admitted.hospital_admit_time == T0 - 2 * 86400 - 7 * 3600 - 45 * 60
    assert map_message(adt("X", "A01", admitted=TS), MAPPING)[0][1].hospital_admit_time == T0
    for unusable in ("20241125160001", "20241123", "garbage"):  # after the event, a date only, malformed
        assert map_message(adt("X", "A01", admitted=unusable), MAPPING)[0][1].hospital_admit_time is None


def test_encoder_round_trip():
    v = Vitals(
        patient_id="sim0001",
        event_time=T0 + 0.123,
        hr=71.3,
        spo2=96.0,
        rr=18,
        sbp=121,
        dbp=70,
        map=87,
        temp=37.2,
        o2_supplement=False,
        consciousness="V",
    )
    lab = Lab(patient_id="sim0001", event_time=T0, analyte="fio2", value=0.35, unit="fraction", result_time=T0 + 600)
    a = Adt(patient_id="sim0001", event_time=T0, event="discharge", unit="MICU", bed="MICU-001", age=80, sex="M")
    h = Adt(patient_id="sim0001", event_time=T0 + 0.123, event="admit", unit="MICU", hospital_admit_time=T0 - 36000.5)
    times = {"event_time", "result_time", "hospital_admit_time"}
    for msg in (v, lab, a, h):
        ((topic, back),) = map_message(to_hl7(msg), MAPPING)
        assert back.model_dump(exclude=times) == msg.model_dump(exclude=times)
        assert back.event_time == pytest.approx(msg.event_time, abs=1e-4)
        if isinstance(msg, Adt):
            assert back.hospital_admit_time == (
                None if msg.hospital_admit_time is None else pytest.approx(msg.hospital_admit_time, abs=1e-4)
            )
    from icuwatch.sources.simulator import Simulation

    sim = Simulation(n_patients=2, seed=3, start_time=T0, duration_s=1200, waveforms=False, patient_prefix="rt")
    n = 0
    for _, topic, msg in sim.timed_messages():
        if topic in (topics.VITALS, topics.LABS, topics.ADT):
            ((t2, back),) = map_message(to_hl7(msg), MAPPING)
            assert t2 == topic and back.patient_id == msg.patient_id
            n += 1
    assert n > 100


def test_ack_segments():
    raw = oru("P6", "NM|8867-4||90|/min|||||F").encode()
    ack = hl7.parse(
        build_ack(raw, "AR", "unit 'x|y' not accepted", Hl7Reject("r", segment="OBX", index=4, field=6, code="103"))
    )
    assert str(ack.segment("MSH")[9]) == "ACK^R01^ACK"
    assert str(ack.segment("MSA")[1]) == "AR"
    assert str(ack.segment("MSA")[2]) == str(hl7.parse(raw.decode()).segment("MSH")[10])
    assert ack.unescape(str(ack.segment("MSA")[3])) == "unit 'x|y' not accepted"
    assert str(ack.segment("ERR")[2]) == "OBX^4^6" and str(ack.segment("ERR")[3]).startswith("103^")
    assert hl7.parse(build_ack(b"garbage", "AR", "no MSH")).segment("MSA")[1] == ["AR"]


class _DownProducer:
    """A producer whose broker never acknowledges."""

    def send(self, topic, key=None, value=None, **kwargs):
        from kafka.errors import KafkaTimeoutError

        class F:
            def get(self, timeout=None):
                raise KafkaTimeoutError("broker down")

        return F()

    def flush(self, timeout=None):
        pass


def test_broker_down_is_ae(tmp_path):
    from stack_fixtures import settings_for

    settings, _ = settings_for(tmp_path)
    listener = Hl7Listener(fixed_times_accepted(settings), producer=_DownProducer())
    try:
        ack = hl7.parse(listener.handle(oru("P7", "NM|8867-4||90|/min|||||F").encode()))
        assert str(ack.segment("MSA")[1]) == "AE" and "broker" in str(ack.segment("MSA")[3])
        ack = hl7.parse(listener.handle(oru("P7", "NM|9999-9||90|/min|||||F").encode()))
        assert str(ack.segment("MSA")[1]) == "AE"  # rejected but could not be dead-lettered: sender keeps it
    finally:
        listener.executor.shutdown()


# ---- with the real broker ----------------------------------------------------------------------


def _consume(settings, topic: str, patient_id: str, n: int, timeout_s: float = 20.0) -> list[dict]:
    """The decoded values of ``topic``'s records keyed ``patient_id``, until ``n`` are found."""
    ours = read_matching(settings, topic, lambda r: r.key == patient_id.encode(), n, timeout_s)
    return [json.loads(r.value) for r in ours]


async def _exchange(port: int, texts: list[str]) -> list[tuple[str, str]]:
    """Send each message on one connection, waiting for its ACK: [(MSA-1, MSA-3)]."""
    reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", port, encoding="utf-8")
    out = []
    try:
        for text in texts:
            writer.writeblock(text.encode("utf-8"))
            await writer.drain()
            ack = await asyncio.wait_for(reader.readmessage(), 30)
            out.append(hl7_encode.ack_code(ack))
    finally:
        writer.close()
    return out


async def _with_listener(settings, body):
    listener = Hl7Listener(settings)
    await listener.start("127.0.0.1", 0)
    try:
        return await body(listener.port)
    finally:
        await listener.close()


@pytest.mark.stack
def test_listener_end_to_end(stack):
    settings, _ = stack
    pid = f"hl7-{uuid.uuid4().hex[:8]}"
    good_vitals = oru(
        pid,
        f"NM|8867-4^HR^LN||112|/min|||||F|||{TS}",
        f"NM|8310-5^T^LN||102.2|[degF]|||||F|||{TS}",
        "NM|59408-5^SpO2^LN||91|%|||||F|||20241125160500+0100",
    )
    good_labs = oru(
        pid,
        "NM|2524-7^Lactate^LN||37.84|mg/dL|||||F",
        "NM|6690-2^WBC^LN||14.2|10*9/L|||||F",
        obr_time="20241125153000",
        extra_obr="|||||||||||||||20241125161500",
    )
    bad = [
        oru(pid, "NM|8867-4||90|/min|||||F").replace("OBX|1", "OB\x01|1"),  # bad segment
        oru(pid, "NM|1234-5^What||1|mg/dL|||||F"),  # unknown code
        oru(pid, "NM|2524-7^Lactate||2|mg/mL|||||F"),  # wrong unit
        oru(pid, "NM|8867-4||90|/min|||||F|||20241131120000"),  # bad timestamp
    ]
    after = oru(pid, "NM|8867-4^HR^LN||64|/min|||||F|||20241125170000")

    async def body(port):
        first = await _exchange(
            port, [good_vitals, good_labs, adt(pid, "A01"), adt(pid, "A03", evn_time="20241126090000")]
        )
        second = await _exchange(port, bad + [after])  # one connection: rejects, then a good one
        return first, second

    first, second = asyncio.run(_with_listener(fixed_times_accepted(settings), body))
    assert [c for c, _ in first] == ["AA"] * 4, first
    assert [c for c, _ in second] == ["AR"] * 4 + ["AA"], second
    for (_, reason), expect in zip(
        second,
        [
            "bad segment id",
            "unknown observation code '1234-5'",
            "unit 'mg/mL' not accepted",
            "OBX-14: bad HL7 timestamp",
        ],
    ):
        assert expect in reason

    vitals = sorted(_consume(settings, topics.VITALS, pid, 3), key=lambda m: m["event_time"])
    assert [v["event_time"] for v in vitals] == [T0 - 3600 + 300, T0, T0 + 3600]
    assert vitals[1]["hr"] == 112 and vitals[1]["temp"] == pytest.approx(39.0, abs=0.01)
    assert vitals[0]["spo2"] == 91 and vitals[2]["hr"] == 64
    labs = {m["analyte"]: m for m in _consume(settings, topics.LABS, pid, 2)}
    assert labs["lactate"]["value"] == pytest.approx(4.2, abs=1e-3) and labs["lactate"]["unit"] == "mmol/L"
    assert labs["lactate"]["event_time"] == T0 - 1800 and labs["lactate"]["result_time"] == T0 + 900
    assert labs["wbc"]["value"] == 14.2
    adts = sorted(_consume(settings, topics.ADT, pid, 2), key=lambda m: m["event_time"])
    assert [(a["event"], a["event_time"]) for a in adts] == [("admit", T0), ("discharge", T0 + 17 * 3600)]
    assert adts[0]["unit"] == "MICU" and adts[0]["age"] == 67 and adts[0]["sex"] == "F"
    dead = _consume(settings, topics.DEADLETTER, pid, 4)
    assert len(dead) == 4 and all(d["topic"] == "hl7" for d in dead)
    assert {base64.b64decode(d["original_b64"]).decode() for d in dead} == set(bad)
    assert any("unknown observation code" in d["reason"] for d in dead)


@pytest.mark.stack
def test_simulator_via_hl7(stack):
    from icuwatch.sources.simulator import Simulation

    settings, _ = stack
    prefix = f"h{uuid.uuid4().hex[:6]}-"
    sim = Simulation(n_patients=2, seed=11, start_time=T0, duration_s=120, waveforms=False, patient_prefix=prefix)
    expected, first_vitals = {}, []
    for _, topic, msg in sim.timed_messages():
        if topic in (topics.VITALS, topics.LABS, topics.ADT):
            expected[topic] = expected.get(topic, 0) + 1
        if topic == topics.VITALS and msg.patient_id == f"{prefix}0000":
            first_vitals.append(msg.event_time)

    async def body(port):
        return await send_via_hl7_async(sim, "127.0.0.1", port, speed=0, connections=2)

    result = asyncio.run(_with_listener(fixed_times_accepted(settings), body))
    assert result["sent"] == expected
    got = _consume(settings, topics.VITALS, f"{prefix}0000", len(first_vitals))
    assert sorted(g["event_time"] for g in got) == pytest.approx(sorted(first_vitals), abs=1e-3)


# ---- event times a live listener refuses (issue 18) ---------------------------------------------


def hl7_ts(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y%m%d%H%M%S+0000")


def test_event_times_outside_the_live_window_are_refused_naming_the_field():
    window = TimeWindow(now=T0, max_future_s=300.0, max_age_s=7 * 86400.0)
    ahead, old = hl7_ts(T0 + 30 * 86400), hl7_ts(T0 - 8 * 86400)
    cases = [
        (oru("W1", "NM|59408-5||97|%|||||F", f"NM|8867-4||90|/min|||||F|||{ahead}"), ("OBX", 5, 14), "30.0 d ahead"),
        (oru("W1", "NM|8867-4||90|/min|||||F", obr_time=old), ("OBR", 3, 7), "8.0 d older"),
        (oru("W1", "NM|2524-7||9|mg/dL|||||F", obr_time=hl7_ts(T0 + 301)), ("OBR", 3, 7), "301 s ahead"),
        (adt("W1", "A01", evn_time=ahead), ("EVN", 2, 2), "30.0 d ahead"),
        (adt("W1", "A03", evn_time="").replace("20241125163000", old), ("MSH", 1, 7), "8.0 d older"),
    ]
    for text, (segment, index, field), reason in cases:
        assert map_message(text, MAPPING)  # without a window (replayed files, tests): mapped
        with pytest.raises(Hl7Reject) as exc:
            map_message(text, MAPPING, window=window)
        rej = exc.value
        assert (rej.segment, rej.index, rej.field, rej.code, rej.patient_id) == (segment, index, field, "102", "W1")
        assert rej.reason.startswith(f"{segment}-{field}: event time ") and reason in rej.reason, rej.reason
        assert "receiving clock" in rej.reason
    # clock skew within the window, a lab drawn days ago, and a hospital admission weeks back: accepted
    inside = [
        oru("W1", f"NM|8867-4||90|/min|||||F|||{hl7_ts(T0 + 299)}"),
        oru("W1", "NM|2524-7||9|mg/dL|||||F", obr_time=hl7_ts(T0 - 6 * 86400)),
        adt("W1", "A02", admitted=hl7_ts(T0 - 40 * 86400)),
    ]
    assert all(map_message(text, MAPPING, window=window) for text in inside)
    assert map_message(cases[0][0], MAPPING, window=TimeWindow(T0, 0.0, 0.0))  # 0: not checked


class _Recorder:
    """A producer that acknowledges everything, keeping what was sent (and its headers)."""

    def __init__(self):
        self.sent = []

    def send(self, topic, key=None, value=None, headers=None):
        self.sent.append((topic, key, headers))

        class F:
            def get(self, timeout=None):
                return None

        return F()

    def flush(self, timeout=None):
        pass


def test_the_listener_refuses_against_its_own_clock_and_marks_what_it_sends_live(tmp_path):
    from stack_fixtures import settings_for

    from icuwatch.streams.kafka.producer import LIVE_HEADER

    settings, _ = settings_for(tmp_path)
    producer = _Recorder()
    listener = Hl7Listener(settings, producer=producer)
    now = time.time()
    try:
        far = oru("W2", f"NM|8867-4^HR^LN||150|/min|||||F|||{hl7_ts(now + 30 * 86400)}")
        ack = hl7.parse(listener.handle(far.encode()))
        assert str(ack.segment("MSA")[1]) == "AR"
        assert ack.unescape(str(ack.segment("MSA")[3])).startswith("OBX-14: event time ")
        assert str(ack.segment("ERR")[2]) == "OBX^4^14"
        assert producer.sent == [(topics.DEADLETTER, b"W2", None)]  # dead-lettered, not marked live
        ack = hl7.parse(listener.handle(oru("W2", f"NM|8867-4||90|/min|||||F|||{hl7_ts(now - 60)}").encode()))
        assert str(ack.segment("MSA")[1]) == "AA"
        assert producer.sent[1] == (topics.VITALS, b"W2", [LIVE_HEADER])
    finally:
        listener.executor.shutdown()


@pytest.mark.stack
def test_a_far_future_observation_cannot_stop_a_patients_scoring(stack, tmp_path):
    """Issue 18, through the real listener, broker, worker and database: an ORU with OBX-14 = now +
    30 days got AA, moved the patient's clock 30 days ahead, and the patient's current vital signs
    were no longer scored. Now it is refused (AR) and dead-lettered; so is a record marked live that
    bypasses the listener (the worker's own check, the header through the broker); and the current
    vital signs that follow are scored like a control patient's."""
    from sqlalchemy import func, select
    from stack_fixtures import free_port, running_worker, wait_for

    from icuwatch.benchmarks.bad_input import read_deadletters
    from icuwatch.storage import db
    from icuwatch.storage.models import Score
    from icuwatch.streams.kafka.producer import LIVE_HEADER, make_producer

    base, env = stack
    tag = uuid.uuid4().hex[:6]
    victim, control = f"fut-{tag}", f"ctl-{tag}"
    url = f"sqlite:///{tmp_path / 'icu.db'}"
    db.upgrade(url)
    settings = base.model_copy(
        update={"database_url": url, "app_id": f"icuwatch-clock-{tag}", "worker_web_port": free_port()}
    )
    now = time.time()
    times = [now - 900 + 30 * i for i in range(31)]  # 15 min of current data, every 30 s

    def current(pid):
        return [
            oru(pid, "NM|8867-4^HR^LN||80|/min|||||F", "NM|9279-1^RR^LN||16|/min|||||F", obr_time=hl7_ts(t))
            for t in times
        ]

    far = oru(victim, f"NM|8867-4^HR^LN||150|/min|||||F|||{hl7_ts(now + 30 * 86400)}", obr_time=hl7_ts(now))
    bypass = Vitals(patient_id=victim, event_time=now + 30 * 86400, hr=150, rr=16).to_bytes()

    async def body(port):
        refused = await _exchange(port, [far])
        return refused, await _exchange(port, [m for pair in zip(current(victim), current(control)) for m in pair])

    sessions = db.session_factory(db.make_engine(url))

    def scores():
        with sessions() as s:
            rows = s.execute(
                select(Score.patient_id, func.count(), func.max(Score.event_time))
                .where(Score.patient_id.in_([victim, control]))
                .group_by(Score.patient_id)
            ).all()
        return {
            pid: (n, last.timestamp() if last.tzinfo else last.replace(tzinfo=timezone.utc).timestamp())
            for pid, n, last in rows
        }

    def cadence_kept(got):
        return len(got) == 2 and all(times[-1] - 330 <= last <= times[-1] + 1 for _, last in got.values())

    with running_worker(settings, env, tmp_path / "worker.log"):
        producer = make_producer(settings)
        producer.send(topics.VITALS, key=victim.encode(), value=bypass, headers=[LIVE_HEADER]).get(timeout=30)
        producer.close()
        refused, accepted = asyncio.run(_with_listener(settings, body))
        assert refused[0][0] == "AR" and refused[0][1].startswith("OBX-14: event time "), refused
        assert "ahead of the receiving clock" in refused[0][1]
        assert [c for c, _ in accepted] == ["AA"] * 62, accepted
        # scored at the cadence (every 300 s on each patient's own grid) up to its last vital sign
        assert wait_for(lambda: cadence_kept(scores()), timeout_s=60), f"scores: {scores()}"
        time.sleep(2.0)  # the last scores may still be landing
        found = scores()
    (n_victim, last_victim), (n_control, last_control) = found[victim], found[control]
    assert n_victim >= 3 and abs(n_victim - n_control) <= 1, found
    assert max(last_victim, last_control) <= times[-1] + 1, found  # no score dated next month
    letters = read_deadletters(settings, expected=2, timeout_s=20.0, key=victim.encode())
    by_topic = {d["topic"]: d for d in letters}
    assert set(by_topic) == {"hl7", topics.VITALS}, letters
    assert base64.b64decode(by_topic["hl7"]["original_b64"]).decode() == far
    assert base64.b64decode(by_topic[topics.VITALS]["original_b64"]) == bypass
    assert "ahead of the live source's clock" in by_topic[topics.VITALS]["reason"]


# ---- patient identity and never-admitted patients (issue 18, must-have 3) ----------------------


def with_pid3(text: str, pid3: str, pid: str = "P9") -> str:
    """``text`` (from :func:`oru`/:func:`adt` for ``pid``) with PID-3 replaced by ``pid3`` whole."""
    return text.replace(f"PID|1||{pid}^^^HOSP^MR", f"PID|1||{pid3}")


@pytest.mark.parametrize(
    "pid3, reason, code",
    [
        ("MRN 1001^^^HOSP^MR", "PID-3: patient identifier has ' ' at position 4", "102"),
        ("MRN/1001^^^HOSP^MR", "PID-3: patient identifier has '/' at position 4", "102"),
        ("MRN\\S\\1001^^^HOSP^MR", "PID-3: patient identifier has '^' at position 4", "102"),  # escaped '^'
        ("x" * 65 + "^^^HOSP^MR", "PID-3: patient identifier is 65 characters, at most 64", "102"),
        ("^^^HOSP^MR", "PID-3: no patient identifier", "101"),
        ("MRN&1001^^^HOSP^MR", "PID-3.1: patient identifier has subcomponents", "102"),  # unescaped '&'
    ],
)
def test_pid3_is_refused_saying_what_is_wrong(pid3, reason, code):
    text = with_pid3(oru("P9", "NM|8867-4||90|/min|||||F"), pid3)
    with pytest.raises(Hl7Reject) as exc:
        map_message(text, MAPPING)
    rej = exc.value
    assert rej.reason.startswith(reason), rej.reason
    assert (rej.segment, rej.index, rej.field, rej.code, rej.patient_id) == ("PID", 2, 3, code, None)
    assert "1001" not in rej.reason and "xxxxx" not in rej.reason  # the identifier is not echoed


def test_pid3_is_kept_exactly_and_the_site_authority_is_checked():
    def pid_of(pid3: str, authority: str = "") -> str:
        ((_, msg),) = map_message(with_pid3(oru("P9", "NM|8867-4||90|/min|||||F"), pid3), MAPPING, authority=authority)
        return msg.patient_id

    assert pid_of("MRN-1001^^^HOSP^MR") == "MRN-1001" and pid_of("MRN.1001^^^HOSP^MR") == "MRN.1001"
    assert pid_of("  007 ^^^HOSP^MR") == "007"  # padding only
    assert pid_of("V1^^^HOSP^VN~M1^^^HOSP^MR") == "M1"  # the medical record number preferred
    # unset: not checked (a single-source site)
    assert pid_of("A1^^^OTHER^MR") == "A1"
    # set: this site's identifier, or one without an authority, is taken; another site's is refused
    assert pid_of("A1^^^HOSP^MR", "HOSP") == "A1" and pid_of("A1", "HOSP") == "A1"
    assert pid_of("A1^^^HOSP&2.16.840.1.1&ISO^MR", "HOSP") == "A1"  # PID-3.4's first subcomponent
    assert pid_of("A1^^^OTHER^MR~B2^^^HOSP^MR", "HOSP") == "B2"
    assert pid_of("A1^^^^MR~B2^^^HOSP^MR", "HOSP") == "B2"  # the one naming this site first
    with pytest.raises(Hl7Reject) as exc:
        pid_of("A1^^^OTHER^MR~B2^^^OTHER^PI", "HOSP")
    assert exc.value.reason == "PID-3.4: assigning authority 'OTHER' is not this site's"
    assert (exc.value.segment, exc.value.field, exc.value.code, exc.value.patient_id) == ("PID", 3, "204", None)
    # ADT takes the same identifier
    ((_, admit),) = map_message(with_pid3(adt("P9", "A01"), "MRN.1001^^^HOSP^MR"), MAPPING, authority="HOSP")
    assert admit.patient_id == "MRN.1001"


def _exchange_acks(port: int, texts: list[str]) -> list:
    """Like :func:`_exchange`, returning the parsed ACKs (MSA and ERR)."""

    async def run():
        reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", port, encoding="utf-8")
        out = []
        try:
            for text in texts:
                writer.writeblock(text.encode("utf-8"))
                await writer.drain()
                out.append(await asyncio.wait_for(reader.readmessage(), 30))
        finally:
            writer.close()
        return out

    return asyncio.run(run())


class _Listening:
    """A started :class:`Hl7Listener` on a free port in its own event loop thread (``with``)."""

    def __init__(self, settings, **kw):
        self.settings, self.kw = settings, kw

    def __enter__(self):
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.listener = Hl7Listener(self.settings, **self.kw)
        asyncio.run_coroutine_threadsafe(self.listener.start("127.0.0.1", 0), self.loop).result(10)
        return self.listener

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.listener.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.mark.stack
def test_patient_identity_through_the_listener_and_broker(stack):
    """Issue 18: ``MRN 1001`` and ``MRN/1001`` were both forwarded as ``MRN_1001`` (one patient of
    two), and 65 characters were refused as "no patient identifier". Through the real listener and
    broker: each is refused (AR) saying what is wrong, dead-lettered without a key; ``MRN-1001`` and
    ``MRN.1001`` go out as two patients, exactly; with this site's authority set, another
    authority's identifier is refused."""
    settings, _ = stack
    settings = fixed_times_accepted(settings)
    tag = uuid.uuid4().hex[:8]
    vitals = "NM|8867-4^HR^LN||88|/min|||||F"
    sent = [
        with_pid3(oru("P9", vitals), f"{pid3}^^^HOSP^MR")
        for pid3 in (f"MRN {tag}", f"MRN/{tag}", f"MRN-{tag}", f"MRN.{tag}", f"{tag}{'x' * 57}")
    ]
    with _Listening(settings) as listener:
        acks = _exchange_acks(listener.port, sent)
    codes = [hl7_encode.ack_code(a) for a in acks]
    assert [c for c, _ in codes] == ["AR", "AR", "AA", "AA", "AR"], codes
    assert codes[0][1].startswith("PID-3: patient identifier has ' ' at position 4 (allowed: letters, digits")
    assert codes[1][1].startswith("PID-3: patient identifier has '/' at position 4")
    assert codes[4][1] == "PID-3: patient identifier is 65 characters, at most 64"
    for i in (0, 1, 4):
        assert str(acks[i].segment("ERR")[2]) == "PID^2^3" and str(acks[i].segment("ERR")[3]).startswith("102^")
        assert tag not in codes[i][1]

    foreign = with_pid3(oru("P9", vitals), f"F{tag}^^^OTHER^MR")
    ours = with_pid3(oru("P9", vitals), f"H{tag}^^^HOSP^MR~F{tag}^^^OTHER^PI")
    with _Listening(settings.model_copy(update={"patient_id_authority": "HOSP"})) as listener:
        codes = [hl7_encode.ack_code(a) for a in _exchange_acks(listener.port, [foreign, ours])]
    assert codes == [("AR", "PID-3.4: assigning authority 'OTHER' is not this site's"), ("AA", "")], codes

    keys = {
        r.key.decode()
        for r in read_matching(settings, topics.VITALS, lambda r: tag.encode() in (r.key or b""), 3, timeout_s=20)
    }
    assert keys == {f"MRN-{tag}", f"MRN.{tag}", f"H{tag}"}  # two patients stay two; nothing as MRN_...
    dead = [
        json.loads(r.value)
        for r in read_matching(
            settings,
            topics.DEADLETTER,
            lambda r: tag.encode() in base64.b64decode(json.loads(r.value).get("original_b64") or ""),
            4,
            timeout_s=20,
        )
    ]
    assert len(dead) == 4 and all(d["topic"] == "hl7" and d["patient_id"] == "unknown" for d in dead), dead
    assert all(tag not in d["reason"] for d in dead)
    assert {base64.b64decode(d["original_b64"]).decode() for d in dead} == {sent[0], sent[1], sent[4], foreign}


@pytest.mark.stack
def test_never_admitted_patients_one_policy(stack, tmp_path):
    """Issue 18: HL7 forwarded vitals of a patient ADT never admitted while DICOM refused them. One
    policy now (``unadmitted_data``), here for HL7 through the real listener, broker and database
    (``test_dicom.py`` has the SCP's half). accept: forwarded. refuse: AE naming PID-3 (the ADT may
    be late), AR for a patient discharged before the observation; a patient the database knows as
    admitted, and one whose A01 this listener itself just forwarded, are accepted."""
    from icuwatch.core.schemas import Adt
    from icuwatch.storage import db, repository

    base, _ = stack
    url = f"sqlite:///{tmp_path / 'adt.db'}"
    db.upgrade(url)
    tag = uuid.uuid4().hex[:8]
    stranger, known, gone, fresh = (f"{k}-{tag}" for k in ("never", "known", "gone", "fresh"))
    engine = db.make_engine(url)
    with db.session_factory(engine).begin() as s:
        repository.upsert_patient(s, Adt(patient_id=known, event_time=T0 - 86400, event="admit"))
        repository.upsert_patient(s, Adt(patient_id=gone, event_time=T0 - 2 * 86400, event="admit"))
        repository.upsert_patient(s, Adt(patient_id=gone, event_time=T0 - 3600, event="discharge"))
    engine.dispose()
    settings = fixed_times_accepted(base).model_copy(update={"database_url": url})
    hr = f"NM|8867-4^HR^LN||101|/min|||||F|||{TS}"

    assert settings.unadmitted_data == "accept"  # the default
    with _Listening(settings) as listener:
        accepted = [hl7_encode.ack_code(a) for a in _exchange_acks(listener.port, [oru(stranger, hr)])]
        assert listener.patients is None  # accept: no lookup at all
    assert accepted == [("AA", "")]

    refusing = settings.model_copy(update={"unadmitted_data": "refuse"})
    texts = [oru(stranger, hr), oru(known, hr), oru(gone, hr), adt(fresh, "A01"), oru(fresh, hr)]
    with _Listening(refusing) as listener:
        acks = _exchange_acks(listener.port, texts)
    codes = [hl7_encode.ack_code(a) for a in acks]
    assert codes == [
        ("AE", "not stored, retry: PID-3: patient not known to ADT"),
        ("AA", ""),
        ("AR", "PID-3: patient discharged before the observation"),
        ("AA", ""),
        ("AA", ""),  # its own A01 counts before the worker has written it down (no worker here)
    ], codes
    for i in (0, 2):
        assert str(acks[i].segment("ERR")[2]) == "PID^2^3" and str(acks[i].segment("ERR")[3]).startswith("204^")

    keys = [r.key.decode() for r in read_to_log_end(settings, topics.VITALS, lambda r: tag.encode() in (r.key or b""))]
    assert sorted(keys) == sorted([stranger, known, fresh]), keys  # nothing for the discharged patient
    dead = [
        json.loads(r.value)
        for r in read_matching(settings, topics.DEADLETTER, lambda r: r.key in (stranger.encode(), gone.encode()), 2)
    ]
    assert sorted(d["reason"] for d in dead) == [
        "PID-3: patient discharged before the observation",
        "PID-3: patient not known to ADT",
    ]
