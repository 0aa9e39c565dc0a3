"""The admission check both listeners make under ``ICUWATCH_UNADMITTED_DATA=refuse``, on a real
SQLite database: what counts as admitted, the listener's own A01, the positive cache and its
expiry, and a database that cannot be read (transient: HL7 AE, DICOM 0xA700)."""

from __future__ import annotations

import hl7
import pytest

from icuwatch.core.schemas import Adt
from icuwatch.interfaces.patient_directory import (
    DISCHARGED,
    NOT_ADMITTED,
    NOT_KNOWN,
    DirectoryUnavailable,
    PatientDirectory,
)
from icuwatch.storage import db, repository

T0 = 1_732_550_400.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def database(tmp_path):
    url = f"sqlite:///{tmp_path / 'adt.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    sessions = db.session_factory(engine)

    def apply(*events: Adt) -> None:
        with sessions.begin() as s:
            for e in events:
                repository.upsert_patient(s, e)

    def stub(pid: str) -> None:  # a row made because a score arrived first: no ADT
        with sessions.begin() as s:
            repository.ensure_patient(s, pid)

    yield url, apply, stub
    engine.dispose()


def test_admitted_means_an_admission_and_no_discharge_before_the_observation(database):
    url, apply, stub = database
    apply(
        Adt(patient_id="a", event_time=T0, event="admit"),
        Adt(patient_id="d", event_time=T0 - 86400, event="admit"),
        Adt(patient_id="d", event_time=T0, event="discharge"),
        Adt(patient_id="r", event_time=T0 - 86400, event="admit"),
        Adt(patient_id="r", event_time=T0 - 3600, event="discharge"),
        Adt(patient_id="r", event_time=T0, event="admit"),  # readmitted
    )
    stub("s")
    d = PatientDirectory(url)
    try:
        assert d.check("a", T0 + 60) is None and d.check("a", T0 - 60) is None  # data just before the A01
        assert d.check("nobody", T0) == NOT_KNOWN
        assert d.check("s", T0) == NOT_ADMITTED
        assert d.check("d", T0 - 60) is None and d.check("d", T0) is None
        assert d.check("d", T0 + 1) == DISCHARGED
        assert d.check("r", T0 + 60) is None
    finally:
        d.close()


def test_own_adt_counts_at_once_and_the_cache_is_positive_only_and_expires(database):
    url, apply, _ = database
    clock = Clock()
    d = PatientDirectory(url, cache_s=30.0, own_s=600.0, clock=clock)
    try:
        # an A01 this listener forwarded: admitted before the worker wrote it down
        assert d.check("p", T0) == NOT_KNOWN
        d.note_adt(Adt(patient_id="p", event_time=T0 - 60, event="admit"))
        before = d.lookups
        assert d.check("p", T0) is None and d.lookups == before  # no database read
        d.note_adt(Adt(patient_id="p", event_time=T0 + 600, event="discharge"))
        assert d.check("p", T0 + 300) is None
        assert d.check("p", T0 + 900) == NOT_KNOWN  # own says discharged; the database knows nothing
        d.note_adt(Adt(patient_id="p", event_time=T0 - 120, event="admit"))  # older: does not reopen
        assert d.check("p", T0 + 900) == NOT_KNOWN
        clock.t += 601  # own knowledge lapses; the database decides
        apply(Adt(patient_id="p", event_time=T0 - 60, event="admit"))
        assert d.check("p", T0 + 900) is None

        # a not-found answer is not cached: an admission that lands counts at the next message
        assert d.check("q", T0) == NOT_KNOWN
        apply(Adt(patient_id="q", event_time=T0 - 60, event="admit"))
        assert d.check("q", T0) is None
        # an admitted answer is cached for cache_s
        reads = d.lookups
        assert d.check("q", T0 + 1) is None and d.lookups == reads
        apply(Adt(patient_id="q", event_time=T0 + 10, event="discharge"))
        assert d.check("q", T0 + 20) is None and d.lookups == reads  # the cache answers (for <= 30 s)
        clock.t += 31
        assert d.check("q", T0 + 20) == DISCHARGED and d.lookups == reads + 1
    finally:
        d.close()


def test_a_database_that_cannot_be_read_is_transient_for_both_listeners(tmp_path):
    from stack_fixtures import free_port, settings_for

    from icuwatch.interfaces import dicom_scp
    from icuwatch.interfaces.hl7_listener import Hl7Listener

    url = f"sqlite:///{tmp_path / 'never-migrated.db'}"  # no patients table
    d = PatientDirectory(url)
    with pytest.raises(DirectoryUnavailable, match="patient directory unavailable"):
        d.check("p", T0)

    class Recorder:
        def __init__(self):
            self.sent = []

        def send(self, topic, key=None, value=None, headers=None):
            self.sent.append(topic)

            class F:
                def get(self, timeout=None):
                    return None

            return F()

        def flush(self, timeout=None):
            pass

    settings, _ = settings_for(tmp_path, ICUWATCH_UNADMITTED_DATA="refuse", ICUWATCH_LIVE_MAX_AGE_S="0")
    producer = Recorder()
    listener = Hl7Listener(settings, producer=producer, patients=d)
    try:
        oru = "\r".join(
            [
                "MSH|^~\\&|GW|WARD|ICUWATCH|ICU|20241125170000||ORU^R01|c1|P|2.5",
                "PID|1||P1^^^HOSP^MR",
                "OBR|1||O1|PANEL|||20241125160000",
                "OBX|1|NM|8867-4||90|/min|||||F",
            ]
        )
        ack = hl7.parse(listener.handle(oru.encode()))
        assert str(ack.segment("MSA")[1]) == "AE"
        assert "retry: patient directory unavailable" in ack.unescape(str(ack.segment("MSA")[3]))
        assert producer.sent == []  # nothing forwarded, nothing dead-lettered: the sender keeps it
    finally:
        listener.executor.shutdown()

    port = free_port()
    scp = dicom_scp.CxrStoreSCP(
        settings.model_copy(update={"live_max_age_s": 0.0}), port=port, producer=Recorder(), patients=d
    )
    scp.start(block=False)
    try:
        from test_dicom import make_xray, ramp12, scu

        assoc = scu(port, dicom_scp.DX_PRESENTATION_STORAGE)
        rsp = assoc.send_c_store(make_xray(ramp12(), patient_id="P1"))
        assoc.release()
        assert rsp.Status == dicom_scp.STATUS_OUT_OF_RESOURCES and "directory unavailable" in rsp.ErrorComment
    finally:
        scp.stop()
        d.close()
