"""DICOM out: v1 ``icu.cxr`` messages as DX chest objects, sent to a C-STORE SCP.

``icuwatch simulate --via dicom`` uses :class:`DicomRoutingProducer`: a drop-in for the Kafka
producer that :func:`icuwatch.sources.simulator.producer.publish` writes to, which sends every
``icu.cxr`` message over DICOM (to ``icuwatch dicom-listen``) and everything else to Kafka.
:func:`send_via_dicom` sends a batch of messages on one association.
"""

from __future__ import annotations

import base64
import io
import logging
import re
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from icuwatch.core import schemas, topics

log = logging.getLogger(__name__)

DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
VIEW_POSITION = {"AP": "AP", "PA": "PA", "LAT": "LL"}


class DicomSendError(RuntimeError):
    """The association failed, or (strict) a C-STORE was answered with a non-success status."""


def _uid_for(study_id: str, part: str) -> UID:
    """Deterministic UID (same message -> same UIDs, so a resend is a duplicate, not a new image)."""
    return generate_uid(entropy_srcs=[study_id, part])


def _study_uid(study_id: str) -> UID:
    if len(study_id) <= 64 and re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+", study_id):
        return UID(study_id)
    return _uid_for(study_id, "study")


def _image(msg: schemas.Cxr) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(msg.image_b64))) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.int64)
            return np.clip(arr, 0, 65535).astype(np.uint16)
        return np.asarray(im.convert("L"), dtype=np.uint8)


def cxr_to_dataset(msg: schemas.Cxr, patient_name: str | None = None) -> Dataset:
    """A DX For Presentation chest object (MONOCHROME2, Explicit VR Little Endian) for ``msg``:
    pixels from its PNG/JPEG (8-bit, or 16-bit for a 16-bit PNG), an identity VOI LUT, acquisition /
    content / study date-times in UTC with TimezoneOffsetFromUTC +0000, PatientID, the report in
    ImageComments. StudyInstanceUID is ``msg.study_id`` when that is a valid UID, else derived
    from it; series and SOP instance UIDs are derived from the study id, so the same message always
    gives the same object."""
    pixels = _image(msg)
    bits = 16 if pixels.dtype == np.uint16 else 8
    when = datetime.fromtimestamp(msg.event_time, tz=timezone.utc)
    date, clock = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")

    ds = Dataset()
    sop_uid = _uid_for(msg.study_id, "image")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX_PRESENTATION_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds.SOPClassUID = DX_PRESENTATION_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID = msg.patient_id
    ds.PatientName = patient_name or ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = _study_uid(msg.study_id)
    ds.SeriesInstanceUID = _uid_for(msg.study_id, "series")
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "XR CHEST"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = "DX"
    ds.Manufacturer = "icuwatch"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = VIEW_POSITION[msg.view]
    ds.ProtocolName = f"CHEST {msg.view}"
    ds.ImageLaterality = "U"
    ds.PatientOrientation = ["L", "F"] if msg.view != "LAT" else ["P", "F"]
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.TimezoneOffsetFromUTC = "+0000"
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S.%f") + "+0000"
    ds.AcquisitionDate, ds.AcquisitionTime = date, clock
    ds.ContentDate, ds.ContentTime = date, clock
    ds.StudyDate, ds.StudyTime = date, clock
    ds.SeriesDate, ds.SeriesTime = date, clock
    if msg.report:
        ds.ImageComments = msg.report

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PresentationLUTShape = "IDENTITY"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    voi = Dataset()
    voi.add_new(0x00283002, "US", [0 if bits == 16 else 256, 0, bits])  # LUTDescriptor; 0 entries = 65536
    voi.LUTExplanation = "IDENTITY"
    voi.add_new(0x00283006, "US", list(range(2**bits)))  # LUTData
    ds.VOILUTSequence = Sequence([voi])
    ds.PixelData = np.ascontiguousarray(pixels.astype("<u2" if bits == 16 else np.uint8)).tobytes()
    ds["PixelData"].VR = "OW" if bits == 16 else "OB"
    return ds


class DicomCxrSender:
    """One SCU association to a C-STORE SCP, reopened if the peer drops it."""

    def __init__(
        self,
        host: str,
        port: int,
        ae_title: str = "ICUWATCH",
        *,
        calling_ae_title: str = "ICUWATCH-SCU",
        timeout_s: float = 60.0,
    ) -> None:
        self.host, self.port, self.ae_title = host, port, ae_title
        self.calling_ae_title = calling_ae_title
        self.timeout_s = timeout_s
        self.assoc = None

    def _associate(self):
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_ae_title)
        ae.add_requested_context(DX_PRESENTATION_STORAGE, [ExplicitVRLittleEndian])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        if not assoc.is_established:
            raise DicomSendError(f"no association with {self.ae_title}@{self.host}:{self.port}")
        return assoc

    def send(self, msg: schemas.Cxr, patient_name: str | None = None) -> tuple[int, str]:
        """C-STORE one message; (status, error comment). Raises DicomSendError when no status
        comes back (association refused, aborted, timed out)."""
        ds = cxr_to_dataset(msg, patient_name)
        for attempt in (1, 2):
            if self.assoc is None or not self.assoc.is_established:
                self.assoc = self._associate()
            rsp = self.assoc.send_c_store(ds)
            if rsp and "Status" in rsp:
                return int(rsp.Status), str(rsp.get("ErrorComment", ""))
            self.close()
            if attempt == 2:
                raise DicomSendError("C-STORE got no response (association aborted or timed out)")
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.assoc is not None:
            if self.assoc.is_established:
                self.assoc.release()
            self.assoc = None


def send_via_dicom(
    messages: Iterable[schemas.Cxr],
    host: str,
    port: int,
    ae_title: str = "ICUWATCH",
    *,
    calling_ae_title: str = "ICUWATCH-SCU",
    patient_names: dict[str, str] | None = None,
    strict: bool = True,
) -> dict[str, Any]:
    """C-STORE every message (one association) and check each status.

    Returns ``{"sent": n, "stored": k, "refused": [{"study_id", "status", "comment"}, ...]}``.
    With ``strict`` (default) a non-success status raises :class:`DicomSendError` after the
    remaining messages were tried (warnings 0xB000-0xB007 count as stored)."""
    sender = DicomCxrSender(host, port, ae_title, calling_ae_title=calling_ae_title)
    names = patient_names or {}
    result: dict[str, Any] = {"sent": 0, "stored": 0, "refused": []}
    try:
        for msg in messages:
            if not isinstance(msg, schemas.Cxr):
                raise TypeError(f"send_via_dicom takes Cxr messages, got {type(msg).__name__}")
            status, comment = sender.send(msg, names.get(msg.patient_id))
            result["sent"] += 1
            if status == 0x0000 or 0xB000 <= status <= 0xBFFF:
                result["stored"] += 1
            else:
                result["refused"].append({"study_id": msg.study_id, "status": f"0x{status:04X}", "comment": comment})
    finally:
        sender.close()
    if strict and result["refused"]:
        raise DicomSendError(f"{len(result['refused'])} of {result['sent']} refused: {result['refused'][:3]}")
    return result


class _Done:
    """Producer-future look-alike for a C-STORE already answered."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def add_errback(self, fn, *args, **kwargs):
        if self.error is not None:
            fn(self.error, *args, **kwargs)
        return self

    def add_callback(self, fn, *args, **kwargs):
        if self.error is None:
            fn(None, *args, **kwargs)
        return self

    def get(self, timeout: float | None = None):
        if self.error is not None:
            raise self.error
        return None


class DicomRoutingProducer:
    """A kafka-python producer stand-in: ``icu.cxr`` messages go over DICOM C-STORE (one association
    kept open), every other topic to ``producer``. Failed stores (a non-success status, a lost
    association) call the future's errbacks, so ``send_paced`` reports them as undelivered."""

    def __init__(
        self, producer: Any, host: str, port: int, ae_title: str = "ICUWATCH", *, calling_ae_title: str = "ICUWATCH-SIM"
    ) -> None:
        self.producer = producer
        self.sender = DicomCxrSender(host, port, ae_title, calling_ae_title=calling_ae_title)
        self.counts: Counter = Counter()

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None, **kwargs: Any):
        if topic != topics.CXR:
            return self.producer.send(topic, key=key, value=value, **kwargs)
        msg = schemas.decode(topics.CXR, value, key)
        try:
            status, comment = self.sender.send(msg)
        except DicomSendError as exc:
            self.counts["failed"] += 1
            return _Done(exc)
        if status == 0x0000 or 0xB000 <= status <= 0xBFFF:
            self.counts["stored"] += 1
            return _Done(None)
        self.counts[f"0x{status:04X}"] += 1
        log.warning("C-STORE refused 0x%04X: %s", status, comment)
        return _Done(DicomSendError(f"C-STORE refused 0x{status:04X}: {comment}"))

    def flush(self, timeout: float | None = None) -> None:
        self.producer.flush(timeout=timeout)

    def close(self, timeout: float | None = None) -> None:
        self.sender.close()
        self.producer.close(timeout=timeout)
