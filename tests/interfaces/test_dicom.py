"""DICOM in (C-STORE SCP -> icu.cxr) and out (Cxr -> DX object -> C-STORE).

Pure tests of pixel normalisation, time extraction and chest detection; an SCP with a stand-in
producer for the broker-failure status; and, on the real broker (``stack``), one association that
stores chest X-rays and refuses a CT, a head DX, an unknown patient and a corrupt object in between.
"""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from stack_fixtures import free_port, read_matching, read_to_log_end

from icuwatch.core import schemas, topics
from icuwatch.interfaces import dicom_encode, dicom_scp
from icuwatch.interfaces.dicom_scp import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_NOT_CXR,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    STATUS_UNKNOWN_PATIENT,
)
from icuwatch.sources.simulator import cxr as sim_cxr

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ACQ = datetime(2024, 3, 5, 14, 30, 15, 500000, tzinfo=timezone.utc)


def historic(settings):
    """The studies here were acquired in 2024 (``ACQ``): no limit on their age at the listener."""
    return settings.model_copy(update={"live_max_age_s": 0.0})


def make_xray(
    pixels: np.ndarray,
    *,
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    modality: str = "DX",
    body_part: str | None = "CHEST",
    patient_id: str = "p-1",
    sop_class: str = dicom_scp.DX_PRESENTATION_STORAGE,
    signed: bool = False,
    **extra,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = "Test^Patient"
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.AcquisitionDateTime = ACQ.strftime("%Y%m%d%H%M%S.%f")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8 if pixels.dtype.itemsize == 1 else 16
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    return ds


def ramp12() -> np.ndarray:
    return (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)


# --- pixels --------------------------------------------------------------------------------


def test_12bit_scaled_to_8bit_and_monochrome1_inverted():
    arr = ramp12()
    arr[0, 0], arr[0, 1] = 0, 4095
    mono2 = dicom_scp.normalise_pixels(make_xray(arr, bits_stored=12))
    assert mono2.dtype == np.uint8 and mono2[0, 0] == 0 and mono2[0, 1] == 255
    assert np.all(np.diff(mono2.ravel()[2:100].astype(int)) >= 0)  # monotone in the input
    mono1 = dicom_scp.normalise_pixels(make_xray(arr, bits_stored=12, photometric="MONOCHROME1"))
    assert mono1[0, 0] == 255 and mono1[0, 1] == 0
    np.testing.assert_array_equal(mono1.astype(int), 255 - mono2.astype(int))


def test_16bit_rescale_then_window():
    # stored 0..65535; rescale y = 2x - 1000; window centre 1000 width 400 -> [800, 1200] in y
    arr = np.array([[0, 900, 1000, 1100, 1200, 65535]], dtype=np.uint16)  # y: -1000, 800, 1000, 1200, 1400, ...
    ds = make_xray(arr, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=400)
    out = dicom_scp.normalise_pixels(ds)[0]
    assert out[0] == 0 and out[1] == 0  # at/below the window's lower edge
    assert 120 <= out[2] <= 135  # centre: mid grey
    assert out[3] == 255 and out[4] == 255 and out[5] == 255
    # the same window on MONOCHROME1: dense (high) values are shown dark
    inv = dicom_scp.normalise_pixels(
        make_xray(
            arr, photometric="MONOCHROME1", RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=400
        )
    )[0]
    np.testing.assert_array_equal(inv.astype(int), 255 - out.astype(int))


def test_png_downsampled_to_1024():
    big = (np.random.default_rng(0).integers(0, 256, (1500, 2048))).astype(np.uint8)
    with Image.open(io.BytesIO(dicom_scp.to_png(big))) as im:
        assert im.format == "PNG" and im.mode == "L" and im.size == (1024, 750)
    with Image.open(io.BytesIO(dicom_scp.to_png(big[:300, :200]))) as im:
        assert im.size == (200, 300)


# --- header --------------------------------------------------------------------------------


def test_acquisition_time_order_and_time_zones():
    ds = make_xray(ramp12())
    assert dicom_scp.acquisition_time(ds) == ACQ.timestamp()  # naive = UTC
    ds.AcquisitionDateTime = "20240305153015.5+0100"
    assert dicom_scp.acquisition_time(ds) == ACQ.timestamp()  # offset inside the DT wins
    ds.AcquisitionDateTime = "20240305093015.5"
    ds.TimezoneOffsetFromUTC = "-0500"
    assert dicom_scp.acquisition_time(ds) == ACQ.timestamp()
    del ds.AcquisitionDateTime
    ds.AcquisitionDate, ds.AcquisitionTime = "20240305", "083015.5"
    ds.TimezoneOffsetFromUTC = "-0600"
    assert dicom_scp.acquisition_time(ds) == ACQ.timestamp()
    del ds.AcquisitionTime  # incomplete pair: next one
    del ds.TimezoneOffsetFromUTC
    ds.ContentDate, ds.ContentTime = "20240305", "143015.5"
    ds.StudyDate, ds.StudyTime = "20240305", "100000"
    assert dicom_scp.acquisition_time(ds) == ACQ.timestamp()
    del ds.ContentDate
    assert dicom_scp.acquisition_time(ds) == datetime(2024, 3, 5, 10, tzinfo=timezone.utc).timestamp()
    del ds.StudyTime
    with pytest.raises(ValueError):
        dicom_scp.acquisition_time(ds)


def test_chest_detection_and_view():
    x = ramp12()
    assert dicom_scp.is_chest_xray(make_xray(x))
    assert dicom_scp.is_chest_xray(make_xray(x, modality="CR", body_part=None, ProtocolName="XR Chest PA"))
    assert not dicom_scp.is_chest_xray(make_xray(x, modality="CT"))
    assert not dicom_scp.is_chest_xray(make_xray(x, body_part="HEAD", ProtocolName="chest"))  # body part decides
    assert not dicom_scp.is_chest_xray(make_xray(x, body_part=None, ViewPosition="AP"))  # an AP abdomen too
    assert dicom_scp.view_of(make_xray(x, ViewPosition="LL")) == "LAT"
    assert dicom_scp.view_of(make_xray(x, ViewPosition="PA")) == "PA"
    assert dicom_scp.view_of(make_xray(x)) == "AP"


def test_patient_id_is_kept_exactly_or_refused_saying_why():
    x = ramp12()
    assert dicom_scp.patient_id_of(make_xray(x, patient_id="MRN.12-3 ")) == "MRN.12-3"  # LO padding only
    for pid, reason in [
        ("MRN 12", "PatientID has ' ' at position 4"),
        ("MRN/12", "PatientID has '/' at position 4"),
        ("MRN\\12", "PatientID has '\\\\' at position 4"),  # DICOM's value separator
        ("", "PatientID is empty"),
    ]:
        with pytest.raises(dicom_scp.Refused) as exc:
            dicom_scp.patient_id_of(make_xray(x, patient_id=pid))
        assert exc.value.status == STATUS_UNKNOWN_PATIENT and exc.value.reason.startswith(reason), exc.value.reason
        assert "12" not in exc.value.reason
    foreign = make_xray(x, patient_id="A1", IssuerOfPatientID="OTHER")
    assert dicom_scp.patient_id_of(foreign) == "A1"  # no authority set: not checked
    with pytest.raises(dicom_scp.Refused, match="IssuerOfPatientID 'OTHER' is not this site's"):
        dicom_scp.patient_id_of(foreign, "HOSP")
    assert dicom_scp.patient_id_of(make_xray(x, patient_id="A1", IssuerOfPatientID="HOSP"), "HOSP") == "A1"
    assert dicom_scp.patient_id_of(make_xray(x, patient_id="A1"), "HOSP") == "A1"  # no issuer: this site's


def sim_message(patient_id: str, t: float = 1.7e9, view: str = "PA") -> schemas.Cxr:
    png = sim_cxr.render(0.6, "pneumonia", "left", np.random.default_rng(3))
    return schemas.Cxr(
        patient_id=patient_id,
        event_time=t,
        arrival_time=t + 600,
        study_id=f"{patient_id}-cxr001",
        image_b64=sim_cxr.to_b64(png),
        view=view,
        report="Impression: pneumonia.",
    )


def test_encode_round_trip():
    msg = sim_message("sim-7", t=1.7e9 + 0.25, view="LAT")
    ds = dicom_encode.cxr_to_dataset(msg, patient_name="Doe^Jane")
    assert ds.PatientID == "sim-7" and str(ds.PatientName) == "Doe^Jane" and ds.Modality == "DX"
    assert ds.StudyInstanceUID == dicom_encode.cxr_to_dataset(msg).StudyInstanceUID  # deterministic
    back = dicom_scp.dataset_to_cxr(ds, "sim-7", arrival_time=msg.arrival_time)
    assert back.event_time == msg.event_time and back.view == "LAT" and back.report == msg.report
    original = np.asarray(Image.open(io.BytesIO(base64.b64decode(msg.image_b64))))
    np.testing.assert_array_equal(dicom_scp.normalise_pixels(ds), original)


# --- the SCP -------------------------------------------------------------------------------


def scu(port: int, *sop_classes: str):
    from pynetdicom import AE

    ae = AE(ae_title="TEST-SCU")
    for sop in sop_classes:
        ae.add_requested_context(sop, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="ICUWATCH")
    assert assoc.is_established
    return assoc


class FailingProducer:
    sent: list = []

    class _Future:
        def get(self, timeout=None):
            from kafka.errors import KafkaTimeoutError

            raise KafkaTimeoutError("no broker")

    def send(self, topic, key=None, value=None, headers=None):
        self.sent.append(topic)
        return self._Future()


class RecordingProducer:
    """Acknowledges at once; keeps (topic, headers) of what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list | None]] = []

    class _Future:
        def get(self, timeout=None):
            return None

    def send(self, topic, key=None, value=None, headers=None):
        self.sent.append((topic, headers))
        return self._Future()


def test_acquisition_times_outside_the_live_window_are_refused_and_what_is_taken_is_marked_live(tmp_path):
    """An X-ray dated a day ahead (a wrong modality clock) or a month old is refused with the
    reason; a current one goes to icu.cxr marked live, so the worker checks it against the
    record's timestamp too."""
    from stack_fixtures import settings_for

    from icuwatch.streams.kafka.producer import LIVE_HEADER

    settings, _ = settings_for(tmp_path)
    producer = RecordingProducer()
    port = free_port()
    scp = dicom_scp.CxrStoreSCP(settings, port=port, producer=producer)
    scp.start(block=False)
    now = datetime.now(timezone.utc)
    try:
        assoc = scu(port, dicom_scp.DX_PRESENTATION_STORAGE)
        at = lambda t: make_xray(ramp12(), bits_stored=12, AcquisitionDateTime=t.strftime("%Y%m%d%H%M%S"))  # noqa: E731
        ahead = assoc.send_c_store(at(now + timedelta(days=1)))
        old = assoc.send_c_store(at(now - timedelta(days=30)))
        current = assoc.send_c_store(at(now - timedelta(minutes=20)))
        assoc.release()
    finally:
        scp.stop()
    assert ahead.Status == STATUS_CANNOT_UNDERSTAND
    assert ahead.ErrorComment.startswith("acquisition time 24.0 h ahead of the receiving clock")
    assert old.Status == STATUS_CANNOT_UNDERSTAND and "older than the receiving clock" in old.ErrorComment
    assert current.Status == STATUS_SUCCESS
    assert producer.sent == [(topics.DEADLETTER, None), (topics.DEADLETTER, None), (topics.CXR, [LIVE_HEADER])]


def test_broker_failure_is_out_of_resources(tmp_path):
    from stack_fixtures import settings_for

    settings, _ = settings_for(tmp_path, ICUWATCH_DICOM_BROKER_TIMEOUT_S="0.1")
    port = free_port()
    scp = dicom_scp.CxrStoreSCP(historic(settings), port=port, producer=FailingProducer())
    scp.start(block=False)
    try:
        assoc = scu(port, dicom_scp.DX_PRESENTATION_STORAGE)
        rsp = assoc.send_c_store(make_xray(ramp12(), bits_stored=12))
        assert rsp.Status == STATUS_OUT_OF_RESOURCES and "broker" in rsp.ErrorComment
        rsp = assoc.send_c_store(make_xray(ramp12(), body_part="KNEE"))
        assert rsp.Status == STATUS_NOT_CXR  # refusals still answered when the dead letter cannot go out
        assoc.release()
    finally:
        scp.stop()


def corrupt_file(path, marker: bytes) -> None:
    """Valid Part 10 header, then a body whose second element claims more bytes than follow."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dicom_scp.DX_PRESENTATION_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    body = (
        b"\x08\x00\x60\x00CS\x02\x00DX"  # (0008,0060) Modality = DX
        + b"\x10\x00\x20\x00LO\xff\x7f"
        + marker
    )  # (0010,0020) PatientID, 32767 bytes claimed
    path.write_bytes(buf.getvalue() + body)


@pytest.mark.stack
def test_scp_on_real_broker(stack, tmp_path):
    from pynetdicom import _config

    from icuwatch.storage import db, repository

    settings, _ = stack
    url = f"sqlite:///{tmp_path / 'dicom.db'}"
    db.upgrade(url)
    pid, stranger = f"dcm-{uuid.uuid4().hex[:10]}", f"dcm-{uuid.uuid4().hex[:10]}"
    engine = db.make_engine(url)
    with db.session_factory(engine).begin() as session:
        repository.upsert_patient(
            session,
            schemas.Adt(patient_id=pid, event_time=ACQ.timestamp() - 86400, event="admit", unit="ICU-1", bed="3"),
        )
    engine.dispose()

    port = free_port()
    refusing = settings.model_copy(update={"database_url": url, "unadmitted_data": "refuse"})
    scp = dicom_scp.CxrStoreSCP(historic(refusing), port=port)
    scp.start(block=False)
    marker = uuid.uuid4().hex.encode()
    bad_path = tmp_path / "corrupt.dcm"
    corrupt_file(bad_path, marker)
    try:
        assoc = scu(port, dicom_scp.DX_PRESENTATION_STORAGE, CT_STORAGE)
        good = make_xray(
            ramp12(),
            bits_stored=12,
            patient_id=pid,
            photometric="MONOCHROME1",
            ViewPosition="PA",
            ImageComments="Lungs clear.",
        )
        assert assoc.send_c_store(good).Status == 0x0000

        ct = make_xray(ramp12(), patient_id=pid, modality="CT", body_part="HEAD", sop_class=CT_STORAGE)
        head = make_xray(ramp12(), patient_id=pid, body_part="SKULL")
        unknown = make_xray(ramp12(), patient_id=stranger)
        statuses = [assoc.send_c_store(ds) for ds in (ct, head, unknown)]
        assert [r.Status for r in statuses] == [STATUS_NOT_CXR, STATUS_NOT_CXR, STATUS_UNKNOWN_PATIENT]
        assert stranger not in statuses[2].ErrorComment

        _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are
        try:
            assert assoc.send_c_store(bad_path).Status == STATUS_CANNOT_UNDERSTAND
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False

        cut = make_xray(ramp12(), patient_id=pid)
        cut.PixelData = cut.PixelData[: len(cut.PixelData) // 2]  # a transfer cut short
        rsp = assoc.send_c_store(cut)
        assert rsp.Status == STATUS_CANNOT_UNDERSTAND and "pixel data" in rsp.ErrorComment

        later = make_xray(ramp12(), patient_id=pid, AcquisitionDateTime="20240305183015+0200")
        assert assoc.send_c_store(later).Status == 0x0000  # same association still stores
        assoc.release()

        # the encoder side (icuwatch simulate --via dicom): a v1 message out and back in
        sent = dicom_encode.send_via_dicom([sim_message(pid, t=ACQ.timestamp() + 60)], "127.0.0.1", port, "ICUWATCH")
        assert sent == {"sent": 1, "stored": 1, "refused": []}
        with pytest.raises(dicom_encode.DicomSendError, match="0xC001"):
            dicom_encode.send_via_dicom([sim_message(stranger)], "127.0.0.1", port, "ICUWATCH")
    finally:
        scp.stop()

    cxrs = [
        schemas.decode(topics.CXR, r.value, r.key)
        for r in read_matching(settings, topics.CXR, lambda r: r.key == pid.encode(), 3)
    ]
    assert len(cxrs) == 3
    via_encoder = next(m for m in cxrs if m.event_time == ACQ.timestamp() + 60)
    assert via_encoder.view == "PA" and via_encoder.report == "Impression: pneumonia."
    assert via_encoder.image_b64 == sim_message(pid).image_b64  # 8-bit PNG in, same pixels out
    first = next(m for m in cxrs if m.study_id == dicom_scp.study_id_of(good))
    assert first.study_id.startswith(f"{good.StudyInstanceUID}/")  # + SOP instance UID (hashed if too long)
    assert first.event_time == ACQ.timestamp() and first.view == "PA" and first.report == "Lungs clear."
    assert abs(first.arrival_time - time.time()) < 120
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(first.image_b64))))
    assert img.shape == (64, 64) and img[0, 0] == 255  # MONOCHROME1: the lowest value shown white
    assert {m.event_time for m in cxrs} == {
        ACQ.timestamp(),
        ACQ.timestamp() + 60,
        datetime(2024, 3, 5, 16, 30, 15, tzinfo=timezone.utc).timestamp(),
    }

    def ours(r) -> bool:
        v = json.loads(r.value)
        return v["topic"] == "dicom" and (
            r.key in (pid.encode(), stranger.encode())
            or marker.decode() in base64.b64decode(v["original_b64"]).decode("latin-1")
        )

    dead = [json.loads(r.value) for r in read_matching(settings, topics.DEADLETTER, ours, 6)]
    reasons = sorted(d["reason"] for d in dead)
    assert len(dead) == 6, reasons
    assert any("storage class CT Image Storage" in r for r in reasons)
    assert any("body part SKULL" in r for r in reasons)
    assert any("not known to ADT" in r for r in reasons)
    assert any("unreadable dataset" in r for r in reasons)
    assert any("pixel data cannot be decoded" in r for r in reasons)
    unreadable = next(d for d in dead if "unreadable" in d["reason"])
    assert unreadable["patient_id"] == "unknown" and unreadable["partition"] == -1
    ct_dl = next(d for d in dead if "CT Image" in d["reason"])
    assert base64.b64decode(ct_dl["original_b64"])[128:132] == b"DICM"  # the original Part 10 bytes


@pytest.mark.stack
def test_patient_identity_and_never_admitted_patients_through_the_scp(stack, tmp_path):
    """Issue 18, the SCP's half (``test_hl7.py`` has the listener's), through the real SCP, broker
    and database. PatientID ``MRN 1001`` / ``MRN/1001`` were stored as ``MRN_1001``: now refused
    (0xC001) saying what is wrong; ``MRN-1001`` and ``MRN.1001`` are two patients; another site's
    IssuerOfPatientID is refused when this site's authority is set. Never-admitted patients, one
    policy with HL7: accept (default) stores them, refuse answers 0xC001 (and a patient
    discharged before the acquisition too), while an admitted one is stored."""
    from icuwatch.storage import db, repository

    base, _ = stack
    url = f"sqlite:///{tmp_path / 'adt.db'}"
    db.upgrade(url)
    tag = uuid.uuid4().hex[:8]
    stranger, known, gone = (f"{k}-{tag}" for k in ("never", "known", "gone"))
    engine = db.make_engine(url)
    with db.session_factory(engine).begin() as session:
        repository.upsert_patient(
            session, schemas.Adt(patient_id=known, event_time=ACQ.timestamp() - 86400, event="admit")
        )
        repository.upsert_patient(
            session, schemas.Adt(patient_id=gone, event_time=ACQ.timestamp() - 86400, event="admit")
        )
        repository.upsert_patient(
            session, schemas.Adt(patient_id=gone, event_time=ACQ.timestamp() - 60, event="discharge")
        )
    engine.dispose()

    def store(settings, datasets) -> list:
        port = free_port()
        scp = dicom_scp.CxrStoreSCP(historic(settings), port=port)
        scp.start(block=False)
        try:
            assoc = scu(port, dicom_scp.DX_PRESENTATION_STORAGE)
            out = [assoc.send_c_store(ds) for ds in datasets]
            assoc.release()
            return out
        finally:
            scp.stop()

    settings = base.model_copy(update={"database_url": url})
    assert settings.unadmitted_data == "accept"  # the default
    got = store(
        settings,
        [make_xray(ramp12(), patient_id=p) for p in (f"MRN {tag}", f"MRN/{tag}", f"MRN-{tag}", f"MRN.{tag}", stranger)],
    )
    assert [r.Status for r in got] == [STATUS_UNKNOWN_PATIENT] * 2 + [0x0000] * 3
    assert got[0].ErrorComment.startswith("PatientID has ' ' at position 4")
    assert got[1].ErrorComment.startswith("PatientID has '/' at position 4")
    assert all(tag not in r.ErrorComment for r in got[:2])

    got = store(
        settings.model_copy(update={"patient_id_authority": "HOSP"}),
        [
            make_xray(ramp12(), patient_id=f"F{tag}", IssuerOfPatientID="OTHER"),
            make_xray(ramp12(), patient_id=f"H{tag}", IssuerOfPatientID="HOSP"),
        ],
    )
    assert [(r.Status, r.get("ErrorComment")) for r in got] == [
        (STATUS_UNKNOWN_PATIENT, "IssuerOfPatientID 'OTHER' is not this site's"),
        (0x0000, None),
    ]

    got = store(
        settings.model_copy(update={"unadmitted_data": "refuse"}),
        [make_xray(ramp12(), patient_id=p) for p in (stranger, known, gone)],
    )
    assert [(r.Status, r.get("ErrorComment")) for r in got] == [
        (STATUS_UNKNOWN_PATIENT, "patient not known to ADT"),
        (0x0000, None),
        (STATUS_UNKNOWN_PATIENT, "patient discharged before the observation"),
    ]

    keys = sorted(r.key.decode() for r in read_to_log_end(base, topics.CXR, lambda r: tag.encode() in (r.key or b"")))
    assert keys == sorted([f"MRN-{tag}", f"MRN.{tag}", stranger, f"H{tag}", known]), keys  # no MRN_..., no gone


def test_association_calling_another_ae_title_is_rejected(tmp_path):
    """Regression: the SCP accepted any called AE title. Now only ``dicom_ae_title`` (A-ASSOCIATE-RJ
    otherwise: rejected permanent, by the service user, "called AE title not recognised")."""
    from pynetdicom import AE
    from stack_fixtures import settings_for

    settings, _ = settings_for(tmp_path, ICUWATCH_DICOM_AE_TITLE="ICU-CXR")
    port = free_port()
    scp = dicom_scp.CxrStoreSCP(historic(settings), port=port, producer=FailingProducer())
    scp.start(block=False)
    try:
        for called in ("ICUWATCH", "ANY-SCP"):
            ae = AE(ae_title="TEST-SCU")
            ae.add_requested_context(dicom_scp.DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])
            assoc = ae.associate("127.0.0.1", port, ae_title=called)
            assert assoc.is_rejected and not assoc.is_established, called
            rj = assoc.acceptor.primitive
            assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x07), called
        ae = AE(ae_title="TEST-SCU")
        ae.add_requested_context(dicom_scp.DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", port, ae_title="ICU-CXR")
        assert assoc.is_established
        assoc.release()
    finally:
        scp.stop()
