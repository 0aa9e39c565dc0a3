"""Message schemas: version 1 (JSON, every topic) and version 2 (binary waveform chunks).

Every message carries ``schema_version``, ``patient_id`` and ``event_time`` (seconds since the
Unix epoch, UTC, as a float: the time the observation was made, not when it arrived; from the year
2000 on, so a millisecond or relative timestamp is rejected rather than misread). Version 1 is JSON.
Version 2 (:class:`WaveformV2`, ``icu.waveforms`` only) is a msgpack map whose samples are packed
int16 or float32 with a scale: a third of the bytes of v1's JSON numbers and a fifth of its decode
cost, where waveforms are three quarters of a bedside network's messages. The version is read per
message (:func:`decode`), so v1 and v2 producers can share the topic. Decoding is strict: a message
that does not validate raises :class:`SchemaError`, and the worker sends its original bytes to
``icu.deadletter`` with the reason.
"""

from __future__ import annotations

import base64
import math
import re
import time
from typing import Annotated, Any, Literal, Union

import msgspec
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from icuwatch.core import features, topics

SCHEMA_VERSION = 1

PATIENT_ID_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
PatientId = Annotated[str, Field(min_length=1, max_length=64, pattern=PATIENT_ID_PATTERN)]
EARLIEST_EVENT_TIME = 946_684_800.0
"""2000-01-01T00:00:00Z: anything older is a clock or unit error (milliseconds, relative time)."""
EventTime = Annotated[float, Field(ge=EARLIEST_EVENT_TIME, lt=4.0e9, allow_inf_nan=False)]


class SchemaError(ValueError):
    """A message that cannot be accepted; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_PATIENT_ID_DISALLOWED = re.compile(r"[^A-Za-z0-9_.\-]")


def check_patient_id(raw: object) -> str:
    """A hospital identifier (HL7 PID-3, DICOM PatientID, a record name) as the v1 patient id,
    exactly as given: only the spaces around it are stripped (DICOM and HL7 pad values with them).

    Never rewritten: an identifier the id pattern (``[A-Za-z0-9_.-]{1,64}``) cannot hold is a
    :class:`SchemaError` saying what is wrong (empty; too long; the first character not allowed
    and its 1-based position), never echoing the identifier. Rewriting it (``MRN 1001`` and
    ``MRN/1001`` both to ``MRN_1001``) or truncating it could make two patients one, and the
    EHR would not know the rewritten id."""
    pid = ("" if raw is None else str(raw)).strip(" ")
    if not pid:
        raise SchemaError("patient identifier is empty")
    if len(pid) > 64:
        raise SchemaError(f"patient identifier is {len(pid)} characters, at most 64")
    bad = _PATIENT_ID_DISALLOWED.search(pid)
    if bad is not None:
        raise SchemaError(
            f"patient identifier has {bad.group()!r} at position {bad.start() + 1} "
            "(allowed: letters, digits, '_', '.', '-')"
        )
    return pid


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    patient_id: PatientId
    event_time: EventTime

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    def key(self) -> bytes:
        return self.patient_id.encode()


class Vitals(Message):
    """Numerics from a bedside monitor, typically once a second. Absent values are omitted."""

    hr: Annotated[float, Field(ge=0, le=350)] | None = None
    spo2: Annotated[float, Field(ge=0, le=100)] | None = None
    rr: Annotated[float, Field(ge=0, le=120)] | None = None
    sbp: Annotated[float, Field(ge=0, le=350)] | None = None
    dbp: Annotated[float, Field(ge=0, le=300)] | None = None
    map: Annotated[float, Field(ge=0, le=300)] | None = None
    temp: Annotated[float, Field(ge=20, le=46)] | None = None
    """Core temperature, degrees Celsius."""
    o2_supplement: bool | None = None
    """Whether the patient is on supplemental oxygen (NEWS2 scores it)."""
    consciousness: Literal["A", "C", "V", "P", "U"] | None = None
    """ACVPU: alert, new confusion, voice, pain, unresponsive."""

    @model_validator(mode="after")
    def _some_value(self) -> "Vitals":
        if all(getattr(self, f) is None for f in VITAL_FIELDS):
            raise ValueError("vitals message carries no value")
        return self


VITAL_FIELDS = ("hr", "spo2", "rr", "sbp", "dbp", "map", "temp")


MIN_SAMPLING_HZ = {"ecg": 50.0, "ppg": 25.0, "resp": 4.0}
"""Below these rates QRS, pulse and breath detection are meaningless (and their filters undefined)."""


class Waveform(Message):
    """One chunk (normally 1 s) of a sampled signal; ``event_time`` is the time of sample 0."""

    signal: Literal["ecg", "ppg", "resp"]
    fs: Annotated[float, Field(gt=0, le=2000)]
    samples: Annotated[list[float], Field(min_length=1, max_length=20000)]
    units: str = "mV"

    @field_validator("samples")
    @classmethod
    def _finite_samples(cls, v: list[float]) -> list[float]:
        # sum() is one C loop; NaN/inf make it non-finite. Only then (or on an overflow of finite
        # values) is each sample checked: the per-sample loop was a third of a chunk's decode time.
        if not math.isfinite(sum(v)) and not all(math.isfinite(x) for x in v):
            raise ValueError("samples must be finite")
        return v

    @model_validator(mode="after")
    def _plausible_rate(self) -> "Waveform":
        low = MIN_SAMPLING_HZ[self.signal]
        if self.fs < low:
            raise ValueError(f"{self.signal} sampled at {self.fs} Hz; at least {low} Hz needed")
        return self

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.fs

    def end_time(self) -> float:
        """Event time of the last sample."""
        return self.event_time + (len(self.samples) - 1) / self.fs

    def values(self) -> np.ndarray:
        """The samples as float64, in ``units`` (as :meth:`WaveformV2.values`)."""
        return np.asarray(self.samples, dtype=float)


SAMPLE_FORMATS: dict[str, np.dtype] = {"int16": np.dtype("<i2"), "float32": np.dtype("<f4")}
"""v2 sample encodings: little-endian; int16 samples are multiplied by ``scale``."""
INT16_FULL_SCALE = 32767
_INT16 = SAMPLE_FORMATS["int16"]


class WaveformV2(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Version 2 of a waveform chunk (:class:`Waveform`'s fields, samples packed): a msgpack map.

    ``samples`` holds the chunk as little-endian ``sample_format`` values; a sample's value in
    ``units`` is the stored number times ``scale`` (int16; 1.0 for float32). Same limits as v1:
    1 to 20,000 samples, finite, and the minimum rate per signal."""

    schema_version: Literal[2] = 2
    patient_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=PATIENT_ID_PATTERN)]
    event_time: Annotated[float, msgspec.Meta(ge=EARLIEST_EVENT_TIME, lt=4.0e9)]
    signal: Literal["ecg", "ppg", "resp"]
    fs: Annotated[float, msgspec.Meta(gt=0, le=2000)]
    units: Annotated[str, msgspec.Meta(max_length=32)] = "mV"
    sample_format: Literal["int16", "float32"]
    scale: Annotated[float, msgspec.Meta(gt=0, lt=1e30)] = 1.0
    samples: Annotated[bytes, msgspec.Meta(min_length=2, max_length=80000)]

    @classmethod
    def of(
        cls,
        patient_id: str,
        event_time: float,
        signal: str,
        fs: float,
        values: Any,
        units: str = "mV",
        sample_format: str = "int16",
    ) -> "WaveformV2":
        """Pack float ``values``. int16 uses the chunk's own scale (its largest magnitude at full
        scale), so the rounding error is at most 1/65,534 of that magnitude. Raises
        :class:`SchemaError` for what the worker would dead-letter (NaN, a rate too low, ...)."""
        x = np.asarray(values, dtype=float)
        if not np.isfinite(x).all():
            raise SchemaError(f"{topics.WAVEFORMS} v2: samples must be finite")
        if sample_format == "int16":
            peak = float(np.max(np.abs(x))) if x.size else 0.0
            scale = peak / INT16_FULL_SCALE if peak > 0 else 1.0
            packed = np.round(x / scale).astype(SAMPLE_FORMATS["int16"]).tobytes()
        else:
            scale, packed = 1.0, x.astype(SAMPLE_FORMATS["float32"]).tobytes()
        chunk = cls(
            patient_id=patient_id,
            event_time=float(event_time),
            signal=signal,  # type: ignore[arg-type]
            fs=float(fs),
            units=units,
            sample_format=sample_format,  # type: ignore[arg-type]
            scale=scale,
            samples=packed,
        )
        return _decode_waveform_v2(chunk.to_bytes())  # msgspec checks its constraints only on decode

    @property
    def n_samples(self) -> int:
        return len(self.samples) // SAMPLE_FORMATS[self.sample_format].itemsize

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs

    def end_time(self) -> float:
        """Event time of the last sample."""
        return self.event_time + (self.n_samples - 1) / self.fs

    def values(self) -> np.ndarray:
        """The samples as float64, in ``units``."""
        if self.sample_format == "int16":
            return np.frombuffer(self.samples, dtype=_INT16) * self.scale
        return np.frombuffer(self.samples, dtype=SAMPLE_FORMATS[self.sample_format]).astype(float)

    def key(self) -> bytes:
        return self.patient_id.encode()

    def to_bytes(self) -> bytes:
        return _V2_ENCODER.encode(self)

    def _check(self) -> None:
        """What msgspec's constraints cannot say; raises ValueError."""
        if _PATIENT_ID_DISALLOWED.search(self.patient_id):  # msgspec's pattern lets a final newline by
            raise ValueError("patient_id: only letters, digits, '_', '.', '-' are allowed")
        itemsize = SAMPLE_FORMATS[self.sample_format].itemsize
        if len(self.samples) % itemsize:
            raise ValueError(f"samples: {len(self.samples)} bytes is not a whole number of {self.sample_format} values")
        if self.n_samples > 20000:
            raise ValueError(f"samples: {self.n_samples} samples, at most 20000")
        if self.sample_format == "float32" and not np.isfinite(self.values()).all():
            raise ValueError("samples must be finite")
        low = MIN_SAMPLING_HZ[self.signal]
        if self.fs < low:
            raise ValueError(f"{self.signal} sampled at {self.fs} Hz; at least {low} Hz needed")


WAVEFORM_TYPES = (Waveform, WaveformV2)
"""A waveform chunk of either version (what ``isinstance`` checks for "a waveform" take)."""
AnyWaveform = Union[Waveform, WaveformV2]
_V2_ENCODER = msgspec.msgpack.Encoder()
_V2_DECODER = msgspec.msgpack.Decoder(WaveformV2)
_MSGPACK_MAP_FIRST_BYTES = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])
"""A msgpack map starts with one of these bytes; JSON (v1) with ``{`` or whitespace."""


def is_v2_payload(raw: bytes) -> bool:
    """Whether ``raw`` is a binary (msgpack) payload rather than v1 JSON: read per message."""
    return raw[0] in _MSGPACK_MAP_FIRST_BYTES


def _decode_waveform_v2(raw: bytes) -> WaveformV2:
    try:
        msg = _V2_DECODER.decode(raw)
        msg._check()
    except msgspec.ValidationError as exc:
        reason, at, path = str(exc).partition(" - at `$")
        field = path.rstrip("`").lstrip(".") if at else "message"
        raise SchemaError(f"{topics.WAVEFORMS} v2: {field}: {reason}") from None
    except msgspec.DecodeError as exc:
        raise SchemaError(f"{topics.WAVEFORMS} v2: not a msgpack map ({exc})") from None
    except ValueError as exc:
        raise SchemaError(f"{topics.WAVEFORMS} v2: {exc}") from None
    return msg


LAB_UNITS: dict[str, str] = {
    "lactate": "mmol/L",
    "wbc": "10^9/L",
    "creatinine": "mg/dL",
    "platelets": "10^9/L",
    "bilirubin": "mg/dL",
    "hemoglobin": "g/dL",
    "ph": "pH",
    "paco2": "mmHg",
    "pao2": "mmHg",
    "bicarbonate": "mmol/L",
    "glucose": "mg/dL",
    "bun": "mg/dL",
    "potassium": "mmol/L",
    "fio2": "fraction",
    "base_excess": "mmol/L",
    "sao2": "%",
    "ast": "IU/L",
    "alkaline_phosphatase": "IU/L",
    "calcium": "mg/dL",
    "chloride": "mmol/L",
    "bilirubin_direct": "mg/dL",
    "magnesium": "mmol/dL",
    "phosphate": "mg/dL",
    "troponin_i": "ng/mL",
    "hematocrit": "%",
    "ptt": "s",
    "fibrinogen": "mg/dL",
    "etco2": "mmHg",
}
"""Analytes version 1 knows, each in the one unit the topic carries."""


class Lab(Message):
    """A laboratory result. ``event_time`` is the specimen collection time."""

    analyte: str
    value: Annotated[float, Field(allow_inf_nan=False)]
    unit: str
    result_time: EventTime
    """When the result became available (>= collection time)."""

    @model_validator(mode="after")
    def _known_analyte(self) -> "Lab":
        expected = LAB_UNITS.get(self.analyte)
        if expected is None:
            raise ValueError(f"unknown analyte {self.analyte!r}")
        if self.unit != expected:
            raise ValueError(f"{self.analyte} must be in {expected}, got {self.unit!r}")
        if self.result_time < self.event_time:
            raise ValueError("result_time before collection time")
        return self


class Cxr(Message):
    """A chest X-ray. ``event_time`` is the acquisition time; the image is a base64 PNG/JPEG."""

    study_id: Annotated[str, Field(min_length=1, max_length=128)]
    arrival_time: EventTime
    image_b64: Annotated[str, Field(min_length=16)]
    image_format: Literal["png", "jpeg"] = "png"
    view: Literal["AP", "PA", "LAT"] = "AP"
    report: Annotated[str, Field(max_length=20000)] | None = None


class Adt(Message):
    """Admit / transfer / discharge (``event_time``: when it happened)."""

    event: Literal["admit", "transfer", "discharge"]
    unit: str | None = None
    bed: str | None = None
    age: Annotated[float, Field(ge=0, le=130)] | None = None
    sex: Literal["F", "M", "U"] | None = None
    hospital_admit_time: EventTime | None = None
    """When the patient was admitted to the hospital (epoch s; <= ``event_time``: an ICU admission,
    transfer or discharge happens during the hospital stay). Optional, added without a version bump:
    a message without it is still valid v1 and reads as "unknown"."""

    @model_validator(mode="after")
    def _hospital_admission_first(self) -> "Adt":
        if self.hospital_admit_time is not None and self.hospital_admit_time > self.event_time:
            raise ValueError("hospital_admit_time after event_time")
        return self


def _check_modality_values(values: dict[str, float], where: str) -> None:
    for modality, v in values.items():
        if modality not in features.MODALITIES:
            raise ValueError(f"{where}: unknown modality {modality!r}; expected {features.MODALITIES}")
        if not math.isfinite(v) or not -1.0 <= v <= 1.0:
            raise ValueError(f"{where}: {modality} must be a finite number in [-1, 1], got {v!r}")


Contributions = dict[str, float]
"""Per modality (``vitals``, ``waveforms``, ``labs``, ``cxr``; a subset allowed) how much it
contributed to one risk: a leave-one-modality-out risk difference (rule model) or an attention
weight; finite, in [-1, 1]. Layout and meaning: :data:`icuwatch.core.features.CONTRIBUTIONS_SHAPE`."""


AlertKind = Literal["deterioration", "sepsis", "data_liveness"]
"""``data_liveness``: a monitored patient's vital signs stopped arriving (monitor off, network
down); ``episode_start`` is when the last one arrived, ``risk``/``news2``/``qsofa`` are 0."""
ScoreSource = Literal["triton", "fallback"]
"""Where a score came from: the served model, or the in-process rules while Triton is unreachable."""
AlertSource = Literal["triton", "fallback", "liveness"]
"""A risk alert's score source, or ``liveness`` (the worker's data-liveness check)."""
ModelVersion = Annotated[str, Field(min_length=1, max_length=64)]
"""The version of the model that gave a score, as its server names it: for a Triton model the
version directory that answered (``ModelInferResponse.model_version``, e.g. ``"2"``). Optional on
scores and alerts (added without a version bump, like ``contributions``: a message without it is
still valid v1 and reads as "unknown"); the in-process fallback rules (model ``rules_v1``) have none."""


class Score(Message):
    """A risk score for one patient at ``event_time`` (using only data with event time <= it)."""

    model: str
    model_version: ModelVersion | None = None
    """The served version of ``model`` that gave this score (see :data:`ModelVersion`)."""
    source: ScoreSource
    deterioration_risk: Annotated[float, Field(ge=0, le=1)]
    sepsis_risk: Annotated[float, Field(ge=0, le=1)]
    news2: Annotated[int, Field(ge=0, le=20)]
    qsofa: Annotated[int, Field(ge=0, le=3)]
    staleness_s: dict[str, float | None]
    """Per modality: seconds between ``event_time`` and the modality's last message (None: never)."""
    scored_at: EventTime
    """Wall-clock time the score was computed."""
    trigger: str = "cadence"
    revision: Annotated[int, Field(ge=0)] = 0
    """0 for the first score at ``event_time``; n > 0 when data with event time <= it arrived late
    (another topic consumed behind) and the score was recomputed. The highest revision is final."""
    contributions: dict[str, Contributions] | None = None
    """Per risk kind (``deterioration``, ``sepsis``), per modality: see :data:`Contributions`.
    None when the model gives none (optional: messages without it stay valid v1)."""

    @field_validator("contributions")
    @classmethod
    def _known_contributions(cls, v: dict[str, Contributions] | None) -> dict[str, Contributions] | None:
        if v is None:
            return v
        for kind, values in v.items():
            if kind not in features.CONTRIBUTION_RISKS:
                raise ValueError(f"unknown risk kind {kind!r}; expected {features.CONTRIBUTION_RISKS}")
            _check_modality_values(values, kind)
        return v


class Alert(Message):
    """An alert episode opening. ``alert_id`` is unique per patient, kind and episode."""

    alert_id: Annotated[str, Field(min_length=1, max_length=200)]
    kind: AlertKind
    risk: Annotated[float, Field(ge=0, le=1)]
    news2: Annotated[int, Field(ge=0, le=20)]
    qsofa: Annotated[int, Field(ge=0, le=3)]
    model: str
    model_version: ModelVersion | None = None
    """The version of ``model`` whose score opened the episode (see :data:`ModelVersion`)."""
    source: AlertSource
    episode_start: EventTime
    raised_at: EventTime
    """Wall-clock time the alert was raised."""
    contributions: Contributions | None = None
    """The contributions to this alert's kind of risk from the score that opened the episode
    (see :data:`Contributions`); None when that score had none (optional, like Score's)."""

    @field_validator("contributions")
    @classmethod
    def _known_contributions(cls, v: Contributions | None) -> Contributions | None:
        if v is not None:
            _check_modality_values(v, "contributions")
        return v


class DeadLetter(Message):
    """A message that could not be accepted. ``patient_id`` is the original key, or 'unknown'."""

    topic: str
    partition: int
    offset: int
    reason: str
    original_b64: str

    @classmethod
    def of(
        cls, source: str, raw: bytes, reason: str, patient_id: str | None = None, partition: int = -1, offset: int = -1
    ) -> "DeadLetter":
        """The dead letter of ``raw`` bytes from ``source`` (a topic, or 'hl7' / 'dicom' for the
        listeners), stamped now; keyed by ``patient_id`` when it is a valid id, else 'unknown'."""
        valid = patient_id is not None and re.fullmatch(PATIENT_ID_PATTERN, patient_id) is not None
        return cls(
            patient_id=patient_id if valid and patient_id is not None else "unknown",
            event_time=time.time(),
            topic=source,
            partition=partition,
            offset=offset,
            reason=reason,
            original_b64=base64.b64encode(raw).decode("ascii"),
        )


MESSAGE_TYPES: dict[str, type[Message]] = {
    topics.VITALS: Vitals,
    topics.WAVEFORMS: Waveform,
    topics.LABS: Lab,
    topics.CXR: Cxr,
    topics.ADT: Adt,
    topics.SCORES: Score,
    topics.ALERTS: Alert,
    topics.DEADLETTER: DeadLetter,
}

InputMessage = Union[Vitals, Waveform, WaveformV2, Lab, Cxr, Adt]
Decoded = Union[Message, WaveformV2]
"""What :func:`decode` returns: a v1 message of any topic, or a v2 waveform chunk."""


def decode(topic: str, raw: bytes | None, key: bytes | None = None) -> Decoded:
    """Parse and validate one message from ``topic``; raise :class:`SchemaError` on anything wrong.

    The version is read per message: on ``icu.waveforms`` a msgpack map is v2 (:class:`WaveformV2`),
    anything else is read as v1 JSON. The message key, when given, must equal the payload's patient
    id (the topics are partitioned by it, so a mismatch would put the patient's state on the wrong
    worker).
    """
    model = MESSAGE_TYPES.get(topic)
    if model is None:
        raise SchemaError(f"no schema for topic {topic!r}")
    if not raw:
        raise SchemaError("empty message")
    if topic == topics.WAVEFORMS and is_v2_payload(raw):
        chunk = _decode_waveform_v2(raw)
        if key is not None and key != chunk.key():
            raise SchemaError("message key does not match patient_id")
        return chunk
    try:
        msg = model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "message"
        raise SchemaError(f"{topic} v1: {where}: {first.get('msg', 'invalid')}") from None
    if key is not None and key != msg.key():
        raise SchemaError("message key does not match patient_id")
    return msg


def decode_score(raw: bytes | None, key: bytes | None = None) -> Score:
    """:func:`decode` for ``icu.scores``, typed as the :class:`Score` it returns."""
    msg = decode(topics.SCORES, raw, key)
    assert isinstance(msg, Score)  # MESSAGE_TYPES maps the topic to Score
    return msg
