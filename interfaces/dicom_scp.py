"""DICOM in: a C-STORE SCP that turns chest X-rays pushed by PACS into v1 ``icu.cxr`` messages.

``icuwatch dicom-listen`` runs :func:`serve`; tests start :class:`CxrStoreSCP` non-blocking.

What is stored
    Objects of the CR, DX (For Presentation / For Processing) and Secondary Capture storage
    classes that are chest X-rays (:func:`is_chest_xray`). Every other storage class is accepted at
    association time and then refused per object, so the sender sees an explicit failure status
    instead of a rejected presentation context.

The message
    pixels through the Modality LUT and VOI LUT (window or LUT sequence), MONOCHROME1 inverted,
    scaled to 8 bits, longest side <= 1024, PNG (:func:`normalise_pixels`, :func:`to_png`);
    ``event_time`` = acquisition time from the header (:func:`acquisition_time`); ``arrival_time``
    = now; ``study_id`` = ``StudyInstanceUID/SOPInstanceUID`` (two views of one study are two
    messages; a PACS resending the same instance gives the same id, which the worker ignores);
    ``view`` from ViewPosition; ``report`` from ImageComments. The patient is ``PatientID``
    exactly as sent (:func:`patient_id_of`): one the v1 id cannot hold (a space, '/', '\\', over
    64 characters) is refused saying what is wrong, never rewritten; with
    ``ICUWATCH_PATIENT_ID_AUTHORITY`` set, an IssuerOfPatientID (0010,0021) naming another
    authority is refused. A patient ADT never admitted, or discharged before the acquisition:
    ``ICUWATCH_UNADMITTED_DATA`` decides, one policy with the HL7 listener
    (:mod:`icuwatch.interfaces.patient_directory`): ``accept`` (default) stores it, ``refuse``
    answers 0xC001.

Statuses (PS3.4 Annex B, Storage Service Class)
    ``0x0000`` success: sent only once the broker acknowledged the message (acks=all, future
    ``.get(timeout)``).
    ``0xA700`` Refused, out of resources: the broker did not confirm in
    ``ICUWATCH_DICOM_BROKER_TIMEOUT_S``, or (under ``refuse``) the database could not be asked;
    transient, the sender should retry. (The producer may still deliver it later; a resend has the
    same study_id and is ignored by the worker.)
    ``0xA900`` Error, data set does not match SOP class: not a chest X-ray (other storage class,
    modality or body part), or the dataset's SOPClassUID differs from the request's.
    ``0xC000`` Error, cannot understand: unreadable/corrupt dataset, pixel data that cannot be
    decoded, no usable acquisition time.
    ``0xC001`` Error, cannot understand (patient): no usable PatientID (the reason says what is
    wrong with it), another site's IssuerOfPatientID, or (under ``refuse``) a patient not known to
    ADT / not admitted / discharged before the acquisition.
    Every refusal carries an ErrorComment, is written to ``icu.deadletter`` (``topic`` "dicom",
    the reason, the original Part 10 bytes base64 when under 256 KB, else a note) and is logged
    without patient identifiers (reason, storage class, modality, sizes only). A broker failure
    (0xA700) is only logged: the dead-letter topic lives on the same broker.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable

import numpy as np
from PIL import Image
from pydantic import ValidationError
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.valuerep import DA, DT, TM

from icuwatch.core import schemas, topics
from icuwatch.core.settings import Settings
from icuwatch.interfaces.clock import TimeWindow
from icuwatch.streams.kafka.producer import LIVE_HEADER

from .patient_directory import DirectoryUnavailable, PatientDirectory

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_NOT_CXR = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_UNKNOWN_PATIENT = 0xC001

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
CXR_SOP_CLASSES = (CR_STORAGE, DX_PRESENTATION_STORAGE, DX_PROCESSING_STORAGE, SECONDARY_CAPTURE_STORAGE)
"""Storage classes a chest X-ray is taken from; everything else is accepted, then refused."""

CXR_MODALITIES = {"CR", "DX"}
CHEST_BODY_PARTS = {"CHEST", "THORAX", "LUNG", "CHEST_LAT", "CHEST_PA", "CHEST_AP"}
CHEST_WORDS = re.compile(r"\b(CHEST|THORAX|THORACIC|CXR|LUNGS?|TORAX|THX)\b", re.IGNORECASE)
VIEWS = {"AP": "AP", "PA": "PA", "LAT": "LAT", "LATERAL": "LAT", "LL": "LAT", "RL": "LAT", "RLD": "AP", "LLD": "AP"}
MAX_SIDE = 1024
DEADLETTER_MAX_ORIGINAL = 256 * 1024
UNCOMPRESSED_SYNTAXES = (
    dcm_uid.ExplicitVRLittleEndian,
    dcm_uid.ImplicitVRLittleEndian,
    dcm_uid.DeflatedExplicitVRLittleEndian,
    dcm_uid.ExplicitVRBigEndian,
)
COMPRESSED_SYNTAXES = (
    dcm_uid.RLELossless,
    dcm_uid.JPEGBaseline8Bit,
    dcm_uid.JPEGExtended12Bit,
    dcm_uid.JPEGLossless,
    dcm_uid.JPEGLosslessSV1,
    dcm_uid.JPEGLSLossless,
    dcm_uid.JPEGLSNearLossless,
    dcm_uid.JPEG2000Lossless,
    dcm_uid.JPEG2000,
)


class Refused(Exception):
    """An object the SCP will not store: ``status`` goes back to the sender, ``reason`` (no patient
    identifiers in it) to the dead-letter topic and the log."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --- header checks ---------------------------------------------------------------------------


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    return str(value).strip()


def is_chest_xray(ds: Dataset) -> bool:
    """A CR/DX chest X-ray: Modality CR or DX, and BodyPartExamined CHEST (THORAX, ...); when
    BodyPartExamined is absent, a chest word (CHEST, THORAX, CXR, LUNG) in ProtocolName,
    SeriesDescription, StudyDescription or ViewPosition. A view position alone (AP/PA) is not
    enough: an AP abdomen has one too. A body part that is present and not the chest decides."""
    if _text(ds, "Modality").upper() not in CXR_MODALITIES:
        return False
    body = _text(ds, "BodyPartExamined").upper()
    if body:
        return body in CHEST_BODY_PARTS
    return any(
        CHEST_WORDS.search(_text(ds, k))
        for k in ("ProtocolName", "SeriesDescription", "StudyDescription", "ViewPosition")
    )


def patient_id_of(ds: Dataset, authority: str = "") -> str:
    """PatientID exactly as sent (:func:`schemas.check_patient_id`: padding spaces stripped, never
    rewritten); :class:`Refused` 0xC001 saying what is wrong with it. With ``authority``
    (``settings.patient_id_authority``) set, an IssuerOfPatientID naming another authority is
    refused; one without an issuer is taken as this site's."""
    value = ds.get("PatientID")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)  # a backslash (DICOM's value separator): refused below
    try:
        pid = schemas.check_patient_id(value)
    except schemas.SchemaError as exc:  # ErrorComment holds 64 characters: the field name leads
        raise Refused(STATUS_UNKNOWN_PATIENT, exc.reason.replace("patient identifier", "PatientID", 1)) from None
    issuer = _text(ds, "IssuerOfPatientID")
    if authority and issuer and issuer != authority:
        raise Refused(STATUS_UNKNOWN_PATIENT, f"IssuerOfPatientID {issuer[:40]!r} is not this site's")
    return pid


def _offset(text: str) -> timezone | None:
    m = re.fullmatch(r"([+-])(\d\d)(\d\d)", text.strip())
    if not m:
        return None
    minutes = int(m.group(2)) * 60 + int(m.group(3))
    if minutes > 14 * 60:
        return None
    return timezone(timedelta(minutes=minutes if m.group(1) == "+" else -minutes))


def acquisition_time(ds: Dataset) -> float:
    """Epoch seconds (UTC) of the acquisition: AcquisitionDateTime, else AcquisitionDate +
    AcquisitionTime, else ContentDate/Time, else StudyDate/Time (the first pair with both parts).
    An offset inside a DT value wins; otherwise TimezoneOffsetFromUTC applies; otherwise the
    time is taken as UTC. A DT coarser than the hour is skipped. ValueError when none is usable."""
    tz = _offset(_text(ds, "TimezoneOffsetFromUTC")) or timezone.utc
    candidates: list[tuple[str, Callable[[], datetime | None]]] = []

    def from_dt() -> datetime | None:
        text = _text(ds, "AcquisitionDateTime")
        if len(re.sub(r"[+-]\d{4}$", "", text)) < 10:
            return None
        return DT(text)

    candidates.append(("AcquisitionDateTime", from_dt))
    for prefix in ("Acquisition", "Content", "Study"):

        def from_pair(prefix: str = prefix) -> datetime | None:
            d, t = _text(ds, f"{prefix}Date"), _text(ds, f"{prefix}Time")
            if not d or not t:
                return None
            day, clock = DA(d), TM(t)
            if not isinstance(day, date) or clock is None:
                return None
            return datetime.combine(day, clock)

        candidates.append((f"{prefix}Date/Time", from_pair))

    problems = []
    for name, get in candidates:
        try:
            value = get()
        except (ValueError, TypeError, OverflowError) as exc:
            problems.append(f"{name} unreadable ({type(exc).__name__})")
            continue
        if value is None:
            continue
        value = datetime(
            value.year,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
            value.microsecond,
            tzinfo=value.tzinfo or tz,
        )
        return value.timestamp()
    raise ValueError("no acquisition time in the header" + (f": {'; '.join(problems)}" if problems else ""))


def view_of(ds: Dataset) -> str:
    """The schema's view from ViewPosition (LL/RL/LATERAL -> LAT); AP when absent or other (ICU
    films are portable AP)."""
    return VIEWS.get(_text(ds, "ViewPosition").upper(), "AP")


# --- pixels ----------------------------------------------------------------------------------


def _window_range(ds: Dataset) -> tuple[float, float]:
    """Output range of pydicom's ``apply_windowing`` (it scales a window to this range)."""
    if ds.PixelRepresentation == 0:
        y_min, y_max = 0.0, float(2**ds.BitsStored - 1)
    else:
        y_min, y_max = float(-(2 ** (ds.BitsStored - 1))), float(2 ** (ds.BitsStored - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        y_min, y_max = y_min * float(slope) + float(intercept), y_max * float(slope) + float(intercept)
    return y_min, y_max


def normalise_pixels(ds: Dataset) -> np.ndarray:
    """The image as 8-bit grayscale, 0 = black as displayed: Modality LUT (rescale), VOI LUT (LUT
    sequence, else window centre/width, else the image's own min..max), MONOCHROME1 inverted.
    First frame of a multi-frame object; colour (Secondary Capture) reduced to luminance."""
    arr = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[0]
    if int(ds.get("SamplesPerPixel", 1)) > 1:  # pydicom returns RGB by default
        lum = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        lo, hi = 0.0, float(2 ** int(ds.get("BitsStored", 8)) - 1)
        out = (lum - lo) / (hi - lo)
    else:
        values = apply_modality_lut(arr, ds)
        voi_seq = ds.get("VOILUTSequence")
        if voi_seq:
            values = np.asarray(values)
            if values.dtype.kind == "f":  # a LUT is indexed by integers
                values = np.rint(values).astype(np.int64)
            values = apply_voi_lut(values, ds, index=0, prefer_lut=True)
            bits = int(voi_seq[0].LUTDescriptor[2])
            lo, hi = 0.0, float(2**bits - 1)
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            values = apply_voi_lut(values, ds, index=0, prefer_lut=False)
            lo, hi = _window_range(ds)
        else:
            values = np.asarray(values, dtype=np.float64)
            lo, hi = float(values.min()), float(values.max())
        out = (np.asarray(values, dtype=np.float64) - lo) / (hi - lo) if hi > lo else np.zeros(values.shape)
        if _text(ds, "PhotometricInterpretation").upper() == "MONOCHROME1":
            out = 1.0 - out
    if out.ndim != 2:
        raise ValueError(f"unexpected pixel array shape {out.shape}")
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_png(image: np.ndarray, max_side: int = MAX_SIDE) -> bytes:
    """8-bit grayscale PNG, downsampled (Lanczos, aspect kept) so the longest side <= max_side."""
    im = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))  # 2-D uint8 -> mode L
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def study_id_of(ds: Dataset) -> str:
    """``StudyInstanceUID/SOPInstanceUID`` (<= 128 characters: a hash of the SOP instance UID
    stands in when both together are too long)."""
    study, sop = _text(ds, "StudyInstanceUID"), _text(ds, "SOPInstanceUID")
    if not study or not sop:
        raise ValueError("StudyInstanceUID or SOPInstanceUID missing")
    sid = f"{study}/{sop}"
    if len(sid) > 128:
        sid = f"{study}/{hashlib.sha256(sop.encode()).hexdigest()[: 127 - len(study)]}"
    return sid


def dataset_to_cxr(ds: Dataset, patient_id: str, arrival_time: float | None = None) -> schemas.Cxr:
    """The v1 message for a chest X-ray dataset (Refused with 0xC000 when it cannot be built)."""
    try:
        event_time = acquisition_time(ds)
    except ValueError as exc:
        raise Refused(STATUS_CANNOT_UNDERSTAND, str(exc)) from None
    try:
        png = to_png(normalise_pixels(ds))
    except Exception as exc:  # noqa: BLE001 - any decoder failure means we cannot use the image
        raise Refused(
            STATUS_CANNOT_UNDERSTAND, f"pixel data cannot be decoded ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None
    report = _text(ds, "ImageComments") or None
    try:
        return schemas.Cxr(
            patient_id=patient_id,
            event_time=event_time,
            arrival_time=time.time() if arrival_time is None else arrival_time,
            study_id=study_id_of(ds),
            image_b64=base64.b64encode(png).decode("ascii"),
            image_format="png",
            view=view_of(ds),
            report=report[:20000] if report else None,
        )
    except (ValidationError, ValueError) as exc:
        first = exc.errors()[0] if isinstance(exc, ValidationError) else {"loc": (), "msg": str(exc)}
        where = ".".join(str(p) for p in first.get("loc", ())) or "message"
        raise Refused(STATUS_CANNOT_UNDERSTAND, f"icu.cxr v1: {where}: {first.get('msg')}") from None


# --- the SCP ---------------------------------------------------------------------------------


def accepted_transfer_syntaxes() -> list[str]:
    """Uncompressed syntaxes plus the compressed ones this pydicom can decode (so a sender that
    offers only JPEG Lossless is turned away at association time when no decoder is installed)."""
    extra = [ts for ts in COMPRESSED_SYNTAXES if _decodable(ts)]
    return [*UNCOMPRESSED_SYNTAXES, *extra]


def _decodable(ts: str) -> bool:
    try:
        return get_decoder(ts).is_available
    except Exception:  # noqa: BLE001
        return False


@dataclass
class StoreResult:
    status: int
    reason: str = ""


class CxrStoreSCP:
    """The C-STORE SCP. ``producer`` is a kafka-python producer (default: ``make_producer``);
    ``patients`` a :class:`~icuwatch.interfaces.patient_directory.PatientDirectory` (default: one
    on settings' database, made only under ``unadmitted_data=refuse``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        host: str | None = None,
        port: int | None = None,
        ae_title: str | None = None,
        producer: Any = None,
        patients: PatientDirectory | None = None,
    ) -> None:
        self.settings = settings
        self.host = host if host is not None else settings.dicom_host
        self.port = port if port is not None else settings.dicom_port
        self.ae_title = ae_title or settings.dicom_ae_title
        self.authority = settings.patient_id_authority.strip()
        self.refuse_unadmitted = settings.unadmitted_data == "refuse"
        self.timeout_s = settings.dicom_broker_timeout_s
        self._own_producer = producer is None
        if producer is None:
            from icuwatch.streams.kafka.producer import WaitingProducer

            producer = WaitingProducer(settings, "dicom")  # starts without the broker, connects when it is up
        self.producer = producer
        self._own_patients = patients is None and self.refuse_unadmitted
        self.patients = PatientDirectory(settings.database_url) if self._own_patients else patients
        self.counts: Counter = Counter()
        self._lock = threading.Lock()
        self.server = None

    # the handler
    def handle_store(self, event: Any) -> Dataset:
        t0 = time.monotonic()
        result = self._store(event)
        with self._lock:
            self.counts["stored" if result.status == STATUS_SUCCESS else f"0x{result.status:04X}"] += 1
        if result.status == STATUS_SUCCESS:
            log.info("DICOM stored: %s from %s in %.2f s", _sop_name(event), _calling(event), time.monotonic() - t0)
        else:
            log.warning(
                "DICOM refused 0x%04X: %s (%s from %s)", result.status, result.reason, _sop_name(event), _calling(event)
            )
        status = Dataset()
        status.Status = result.status
        if result.status != STATUS_SUCCESS:
            status.ErrorComment = result.reason[:64]
        return status

    def _store(self, event: Any) -> StoreResult:
        ds = None
        pid = None
        try:
            try:
                ds = event.dataset
                ds.file_meta = event.file_meta
                truncated = _truncated_element(ds)
                # decode every element now: a corrupt body fails here, not half-way through
                for _ in ds.iterall():
                    pass
            except Exception as exc:  # noqa: BLE001
                ds = None
                raise Refused(STATUS_CANNOT_UNDERSTAND, f"unreadable dataset ({type(exc).__name__})") from None
            if truncated:
                raise Refused(STATUS_CANNOT_UNDERSTAND, f"unreadable dataset (element {truncated} truncated)")
            try:
                pid = patient_id_of(ds, self.authority)  # dead letters are keyed by it
                bad_pid = None
            except Refused as refusal:
                pid, bad_pid = None, refusal
            requested = str(event.request.AffectedSOPClassUID)
            if requested not in CXR_SOP_CLASSES:
                raise Refused(STATUS_NOT_CXR, f"storage class {_uid_name(requested)} is not a chest X-ray")
            if _text(ds, "SOPClassUID") and _text(ds, "SOPClassUID") != requested:
                raise Refused(STATUS_NOT_CXR, "SOPClassUID differs from the request's")
            if not is_chest_xray(ds):
                raise Refused(
                    STATUS_NOT_CXR,
                    "not a chest X-ray (modality "
                    f"{_text(ds, 'Modality') or '-'}, body part {_text(ds, 'BodyPartExamined') or '-'})",
                )
            if bad_pid is not None or pid is None:
                raise bad_pid or Refused(STATUS_UNKNOWN_PATIENT, "no usable PatientID")
            try:
                event_time = acquisition_time(ds)
            except ValueError as exc:
                raise Refused(STATUS_CANNOT_UNDERSTAND, str(exc)) from None
            window = TimeWindow(time.time(), self.settings.live_max_future_s, self.settings.live_max_age_s)
            if (problem := window.problem(event_time)) is not None:
                raise Refused(STATUS_CANNOT_UNDERSTAND, f"acquisition time {problem}")
            if self.refuse_unadmitted and self.patients is not None:
                try:
                    why = self.patients.check(pid, event_time)
                except DirectoryUnavailable as exc:
                    log.warning("DICOM: %s", exc)
                    return StoreResult(STATUS_OUT_OF_RESOURCES, str(exc))
                if why:
                    raise Refused(STATUS_UNKNOWN_PATIENT, why)
            msg = dataset_to_cxr(ds, pid)
        except Refused as refusal:
            self._dead_letter(event, pid, refusal.reason)
            return StoreResult(refusal.status, refusal.reason)
        except Exception as exc:  # noqa: BLE001 - never let a bug abort the association
            reason = f"internal error ({type(exc).__name__})"
            log.exception("DICOM handler failed")
            self._dead_letter(event, pid, reason)
            return StoreResult(STATUS_CANNOT_UNDERSTAND, reason)
        try:
            self.producer.send(topics.CXR, key=msg.key(), value=msg.to_bytes(), headers=[LIVE_HEADER]).get(
                timeout=self.timeout_s
            )
        except Exception as exc:  # noqa: BLE001 - KafkaTimeoutError, KafkaError, ...
            return StoreResult(STATUS_OUT_OF_RESOURCES, f"broker did not confirm ({type(exc).__name__})")
        return StoreResult(STATUS_SUCCESS)

    def _dead_letter(self, event: Any, patient_id: str | None, reason: str) -> None:
        try:
            raw = event.encoded_dataset(include_meta=True)
        except Exception:  # noqa: BLE001
            raw = b""
        note = ""
        if len(raw) > DEADLETTER_MAX_ORIGINAL:
            raw, note = b"", f" [original {len(raw)} bytes not kept: over {DEADLETTER_MAX_ORIGINAL}]"
        dl = schemas.DeadLetter.of("dicom", raw, reason + note, patient_id)
        try:
            self.producer.send(topics.DEADLETTER, key=dl.key(), value=dl.to_bytes()).get(timeout=self.timeout_s)
        except Exception as exc:  # noqa: BLE001
            log.error("DICOM dead letter not delivered (%s): %s", type(exc).__name__, reason)

    # lifecycle
    def application_entity(self):
        from pynetdicom import AE, AllStoragePresentationContexts
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.ae_title)
        # An association calling another title is rejected (permanent, service user: "called AE
        # title not recognised"): a modality configured for another node must not land here.
        ae.require_called_aet = True
        syntaxes = accepted_transfer_syntaxes()
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
        ae.add_supported_context(Verification)
        ae.maximum_pdu_size = 0  # no limit
        return ae

    def start(self, block: bool = False):
        """Listen; with ``block=False`` return the server (``stop()`` shuts it down). A port in use is
        an :class:`~icuwatch.core.errors.OperatorError` naming it."""
        import errno

        from pynetdicom import evt

        from icuwatch.core.errors import OperatorError

        ae = self.application_entity()
        handlers = [(evt.EVT_C_STORE, self.handle_store)]
        try:
            self.server = ae.start_server((self.host, self.port), block=block, evt_handlers=handlers)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise OperatorError(f"port {self.port} on {self.host} is already in use") from exc
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        if self._own_producer:
            self.producer.flush(timeout=self.timeout_s)
            self.producer.close(timeout=self.timeout_s)
        if self._own_patients and self.patients is not None:
            self.patients.close()


def _truncated_element(ds: Dataset) -> str | None:
    """The tag of a top-level element holding fewer bytes than its header declares (pydicom reads
    a cut-off object without complaint), or None."""
    from pydicom.dataelem import RawDataElement

    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if (
            isinstance(raw, RawDataElement)
            and raw.value is not None
            and raw.length != 0xFFFFFFFF
            and len(raw.value) != raw.length
        ):
            return str(raw.tag)
    return None


def _uid_name(u: str) -> str:
    try:
        return dcm_uid.UID(u).name or u
    except Exception:  # noqa: BLE001
        return u


def _sop_name(event: Any) -> str:
    try:
        return _uid_name(str(event.request.AffectedSOPClassUID))
    except Exception:  # noqa: BLE001
        return "?"


def _calling(event: Any) -> str:
    try:
        return str(event.assoc.requestor.ae_title)
    except Exception:  # noqa: BLE001
        return "?"


def serve(settings: Settings, host: str | None = None, port: int | None = None, ae_title: str | None = None) -> None:
    """Run the SCP until interrupted (``icuwatch dicom-listen``)."""
    scp = CxrStoreSCP(settings, host=host, port=port, ae_title=ae_title)
    scp.start(block=False)
    if os.environ.get("ICUWATCH_DICOM_REQUIRE_ADMITTED") is not None:
        log.warning(
            "ICUWATCH_DICOM_REQUIRE_ADMITTED is no longer read: ICUWATCH_UNADMITTED_DATA (accept|refuse) "
            "decides for HL7 and DICOM alike (now %s)",
            settings.unadmitted_data,
        )
    log.warning(
        "DICOM C-STORE SCP %s listening on %s:%d (unadmitted data: %s; patient id authority: %s)",
        scp.ae_title,
        scp.host,
        scp.port,
        settings.unadmitted_data,
        scp.authority or "not checked",
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        scp.stop()
