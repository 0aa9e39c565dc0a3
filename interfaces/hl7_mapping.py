"""HL7 v2 -> icuwatch v1 messages: observation mapping tables, timestamps, ORU^R01 and ADT^A01/A02/A03.

Everything here is pure (no network): :func:`map_message` turns one HL7 message (bytes or text)
into the v1 messages it carries, or raises :class:`Hl7Reject` with a one-line reason (and, where
known, the segment and field at fault). The listener (``hl7_listener``) sends the result to Kafka
and answers the sender.

Mapping tables are data (``mappings/hl7_observations.csv``, format documented in its header); a
hospital extends or overrides them with its own CSV (``ICUWATCH_HL7_MAPPING``).

Event times are the observation times carried in the message, never the arrival time:

* ORU^R01: OBX-14 (observation date/time), else OBR-7 of the OBX's order (collection time). One
  ``icu.vitals`` message per patient and observation time; one ``icu.labs`` message per lab OBX,
  ``result_time`` = OBR-22 (results reported), else MSH-7 (not earlier than collection).
* ADT^A01/A02/A03 -> admit/transfer/discharge, event time EVN-6 (event occurred), else EVN-2
  (recorded), else MSH-7. PV1-44 (admit date/time of the visit) becomes ``hospital_admit_time`` when
  it is a full timestamp (to the minute) not after the event time; otherwise it is left out and the
  message is still accepted (the field is optional, and feeds that send a date only or a pre-admit
  time were accepted before it was read).

The patient is PID-3 exactly as the hospital wrote it (the MR identifier of several; padding spaces
stripped, never rewritten: :func:`_patient_id`); one the v1 id cannot hold is refused saying what is
wrong ("PID-3: patient identifier has ' ' at position 4 ..."), and with an ``authority``
(``settings.patient_id_authority``) one another assigning authority gave (PID-3.4) is refused too.

HL7 timestamps are ``YYYYMMDDHHMM[SS[.S[S[S[S]]]]][+/-ZZZZ]`` (a ``TS`` degree-of-precision component
is ignored); a timestamp without an offset is in ``settings.hl7_timezone`` (UTC by default).

A live listener passes a :class:`TimeWindow` around its own clock: an event time outside it (an
observation dated next month, or years back) is refused, naming the field it came from (OBX-14,
OBR-7, EVN-6, EVN-2, MSH-7). PV1-44 (hospital admission) is not an event time and is not checked.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone, tzinfo
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

import hl7
from pydantic import ValidationError

from icuwatch.core import schemas, topics
from icuwatch.core.schemas import LAB_UNITS, Adt, Lab, Message, Vitals
from icuwatch.interfaces.clock import TimeWindow

TOPICS = {"vitals": topics.VITALS, "labs": topics.LABS}
NUMERIC_VITALS = ("hr", "spo2", "rr", "sbp", "dbp", "map", "temp")
CODED_VITALS = ("o2_supplement", "consciousness")
ANY_UNIT = "*"
DEFAULT_MAPPING = "hl7_observations.csv"
_COLUMNS = ("code", "topic", "field", "unit", "factor", "offset", "note")


class Hl7Reject(ValueError):
    """A message that cannot be accepted (answered AR, dead-lettered).

    ``reason`` is one line; ``segment``/``index``/``field`` locate the fault where known (ERR-2) and
    ``code`` is the HL7 table 0357 error code (ERR-3).
    """

    def __init__(
        self,
        reason: str,
        *,
        segment: str | None = None,
        index: int | None = None,
        field: int | None = None,
        code: str = "207",
        patient_id: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.segment = segment
        self.index = index
        self.field = field
        self.code = code
        self.patient_id = patient_id


ERROR_TEXT = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "204": "Unknown key identifier",
    "207": "Application internal error",
}


# ---------------------------------------------------------------------------------------------
# mapping tables


@dataclass(frozen=True)
class UnitRule:
    code: str
    topic: str
    """``vitals``, ``labs`` or ``ignore``."""
    field: str
    unit: str
    """As written in the file (normalised for lookup by :func:`norm_unit`)."""
    factor: float = 1.0
    offset: float = 0.0
    note: str = ""

    def convert(self, value: float) -> float:
        return value * self.factor + self.offset

    @property
    def identity(self) -> bool:
        return self.factor == 1.0 and self.offset == 0.0


def norm_unit(unit: str) -> str:
    return unit.strip().replace("\u00b5", "u").replace("\u03bc", "u").lower()


def _number(text: str, what: str, where: str) -> float:
    text = text.strip()
    if not text:
        return 0.0 if what == "offset" else 1.0
    try:
        if "/" in text:
            num, den = text.split("/")
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{where}: {what} {text!r} is not a number or fraction") from None


@dataclass
class ObservationMap:
    """Code -> rules per normalised unit. Build with :func:`load_mapping`."""

    rules: dict[str, dict[str, UnitRule]] = field(default_factory=dict)

    def add(self, rule: UnitRule) -> None:
        existing = self.rules.get(rule.code)
        if existing and any((r.topic, r.field) != (rule.topic, rule.field) for r in existing.values()):
            existing = None  # remapped code: the new file defines it alone
        existing = existing if existing is not None else {}
        existing[norm_unit(rule.unit)] = rule
        self.rules[rule.code] = existing

    def lookup(self, code: str, unit: str) -> UnitRule:
        """The rule for an OBX code and unit; :class:`LookupError` with a reason if there is none."""
        by_unit = self.rules.get(code)
        if not by_unit:
            raise LookupError(f"unknown observation code {code!r}")
        rule = by_unit.get(norm_unit(unit)) or by_unit.get(ANY_UNIT)
        if rule is None:
            first = next(iter(by_unit.values()))
            if first.topic == "ignore":
                return first
            accepted = ", ".join(repr(r.unit) for r in by_unit.values())
            raise LookupError(f"unit {unit!r} not accepted for {code} ({first.field}); expected one of {accepted}")
        return rule

    def preferred(self, topic: str, field_name: str) -> UnitRule | None:
        """The first identity rule for (topic, field): the code and unit the encoder sends."""
        for by_unit in self.rules.values():
            for rule in by_unit.values():
                if rule.topic == topic and rule.field == field_name and rule.identity:
                    return rule
        return None


def read_rules(text: str, source: str = "<mapping>") -> list[UnitRule]:
    """Parse a mapping CSV (see the header of ``mappings/hl7_observations.csv``)."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    missing = [c for c in ("code", "topic", "field", "unit") if c not in (reader.fieldnames or ())]
    if missing:
        raise ValueError(f"{source}: missing column(s) {', '.join(missing)} (header: {','.join(_COLUMNS)})")
    out = []
    for n, row in enumerate(reader, start=2):
        where = f"{source} data row {n - 1}"
        code, topic, fld = ((row.get(k) or "").strip() for k in ("code", "topic", "field"))
        if not code:
            raise ValueError(f"{where}: empty code")
        if topic == "vitals" and fld not in NUMERIC_VITALS + CODED_VITALS:
            raise ValueError(f"{where}: {fld!r} is not a vitals field")
        if topic == "labs" and fld not in LAB_UNITS:
            raise ValueError(f"{where}: {fld!r} is not a v1 lab analyte")
        if topic not in ("vitals", "labs", "ignore"):
            raise ValueError(f"{where}: topic must be vitals, labs or ignore, got {topic!r}")
        out.append(
            UnitRule(
                code=code,
                topic=topic,
                field=fld,
                unit=(row.get("unit") or "").strip(),
                factor=_number(row.get("factor") or "", "factor", where),
                offset=_number(row.get("offset") or "", "offset", where),
                note=(row.get("note") or "").strip(),
            )
        )
    return out


def load_mapping(extra: str | Path | None = None) -> ObservationMap:
    """The built-in table, extended/overridden by ``extra`` (a CSV path) when given."""
    mapping = ObservationMap()
    text = resources.files("icuwatch.interfaces").joinpath("mappings", DEFAULT_MAPPING).read_text("utf-8")
    for rule in read_rules(text, DEFAULT_MAPPING):
        mapping.add(rule)
    if extra:
        path = Path(extra)
        for rule in read_rules(path.read_text("utf-8"), str(path)):
            mapping.add(rule)
    return mapping


# ---------------------------------------------------------------------------------------------
# timestamps

_TS_RE = re.compile(r"(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(?:(\d{2})(?:\.(\d{1,4}))?)?(?:([+-])(\d{2})(\d{2}))?")
_DATE_RE = re.compile(r"(\d{4})(\d{2})(\d{2})\d*(?:\.\d+)?(?:[+-]\d{4})?")


def zone(name: str | None) -> tzinfo:
    return timezone.utc if not name or name.upper() == "UTC" else ZoneInfo(name)


def parse_ts(value: str, naive_tz: tzinfo = timezone.utc) -> float:
    """HL7 TS/DTM ``YYYYMMDDHHMM[SS[.S…]][+/-ZZZZ]`` -> epoch seconds; ``ValueError`` otherwise."""
    text = value.strip()
    m = _TS_RE.fullmatch(text)
    if not m:
        raise ValueError(f"bad HL7 timestamp {value!r} (want YYYYMMDDHHMM[SS[.SSSS]][+/-ZZZZ])")
    y, mo, d, h, mi, s, frac, sign, zh, zm = m.groups()
    if sign:
        if int(zh) > 14 or int(zm) > 59:
            raise ValueError(f"bad UTC offset in HL7 timestamp {value!r}")
        off = timedelta(hours=int(zh), minutes=int(zm))
        tz: tzinfo = timezone(off if sign == "+" else -off)
    else:
        tz = naive_tz
    try:
        dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s or 0), tzinfo=tz)
    except ValueError as exc:
        raise ValueError(f"bad HL7 timestamp {value!r}: {exc}") from None
    return dt.timestamp() + (float("0." + frac) if frac else 0.0)


def parse_date(value: str) -> date:
    m = _DATE_RE.fullmatch(value.strip())
    if not m:
        raise ValueError(f"bad HL7 date {value!r} (want YYYYMMDD)")
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError as exc:
        raise ValueError(f"bad HL7 date {value!r}: {exc}") from None


def format_ts(t: float) -> str:
    """Epoch seconds -> ``YYYYMMDDHHMMSS.SSSS+0000`` (UTC, 0.1 ms)."""
    whole = math.floor(t)
    frac = round((t - whole) * 10_000)
    if frac == 10_000:
        whole, frac = whole + 1, 0
    return datetime.fromtimestamp(whole, timezone.utc).strftime("%Y%m%d%H%M%S") + f".{frac:04d}+0000"


def completed_years(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


# ---------------------------------------------------------------------------------------------
# message access helpers


class _Seg:
    """Field access on one parsed segment with HL7 numbering (MSH-3 is field 3)."""

    def __init__(self, msg: hl7.Message, seg: hl7.Segment, index: int) -> None:
        self.msg, self.seg, self.index = msg, seg, index
        self.name = str(seg[0])

    def field(self, n: int) -> hl7.Field | None:
        i = n  # python-hl7 keeps MSH-1 (the separator) as a field, so index n is field n everywhere
        if i < 1 or i >= len(self.seg):
            return None
        return self.seg[i]

    def get(self, n: int, rep: int = 1, comp: int = 1) -> str:
        f = self.field(n)
        if f is None or str(f) == "":
            return ""
        if self.name == "MSH" and n == 2:
            return str(f)
        node = f
        if isinstance(node, hl7.Field) or (isinstance(node, list) and node and isinstance(node[0], hl7.Repetition)):
            if rep > len(node):
                return ""
            node = node[rep - 1]
        if isinstance(node, hl7.Repetition):
            if comp > len(node):
                return ""
            node = node[comp - 1]
        elif comp > 1:
            return ""
        if isinstance(node, hl7.Component):
            node = node[0] if len(node) else ""
        return self.msg.unescape(str(node))

    def subcomponents(self, n: int, rep: int = 1, comp: int = 1) -> int:
        """How many subcomponents component ``comp`` of repetition ``rep`` of field ``n`` has (``get``
        returns the first only)."""
        f = self.field(n)
        if f is None or str(f) == "" or (self.name == "MSH" and n <= 2):
            return 0
        node = f
        if isinstance(node, hl7.Field) and node and isinstance(node[0], hl7.Repetition):
            if rep > len(node):
                return 0
            node = node[rep - 1]
        if isinstance(node, hl7.Repetition):
            if comp > len(node):
                return 0
            node = node[comp - 1]
        elif comp > 1:
            return 0
        return len(node) if isinstance(node, hl7.Component) else 1

    def repetitions(self, n: int) -> int:
        f = self.field(n)
        if f is None or str(f) == "":
            return 0
        return len(f) if isinstance(f, hl7.Field) and f and isinstance(f[0], hl7.Repetition) else 1

    def reject(self, reason: str, field_num: int | None = None, code: str = "207", pid: str | None = None):
        return Hl7Reject(reason, segment=self.name, index=self.index, field=field_num, code=code, patient_id=pid)


def parse_hl7(raw: bytes | str) -> hl7.Message:
    """Bytes -> :class:`hl7.Message` (UTF-8, falling back to Latin-1); :class:`Hl7Reject` on junk."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
    else:
        text = raw
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip()
    if not text.startswith("MSH") or len(text) < 8:
        raise Hl7Reject("not an HL7 v2 message (no MSH segment)", code="100")
    try:
        return hl7.parse(text)
    except Exception as exc:  # python-hl7 raises assorted errors on malformed input
        raise Hl7Reject(f"malformed HL7: {exc}", code="102") from None


def _segments(msg: hl7.Message) -> list[_Seg]:
    out = []
    for i, seg in enumerate(msg):
        name = str(seg[0]) if len(seg) else ""
        if not re.fullmatch(r"[A-Z][A-Z0-9]{2}", name):
            raise Hl7Reject(
                f"segment {i + 1}: bad segment id {name[:20]!r}", segment=name[:3] or None, index=i + 1, code="100"
            )
        out.append(_Seg(msg, seg, i + 1))
    return out


@dataclass(frozen=True)
class Header:
    message_type: str
    trigger: str
    control_id: str
    sent_time: float | None


def header(msg: hl7.Message, naive_tz: tzinfo = timezone.utc) -> Header:
    msh = _segments(msg)[0]
    if msh.name != "MSH":
        raise Hl7Reject("first segment is not MSH", code="100")
    sent = msh.get(7)
    try:
        sent_time = parse_ts(sent, naive_tz) if sent else None
    except ValueError as exc:
        raise msh.reject(f"MSH-7: {exc}", 7, "102") from None
    return Header(msh.get(9, comp=1), msh.get(9, comp=2), msh.get(10), sent_time)


def _time(seg: _Seg, n: int, naive_tz: tzinfo, pid: str | None = None) -> float | None:
    value = seg.get(n)
    if not value:
        return None
    try:
        return parse_ts(value, naive_tz)
    except ValueError as exc:
        raise seg.reject(f"{seg.name}-{n}: {exc}", n, "102", pid) from None


def _check_time(window: TimeWindow | None, t: float, seg: _Seg, n: int, pid: str) -> None:
    problem = window.problem(t) if window is not None else None
    if problem is not None:
        raise seg.reject(f"{seg.name}-{n}: event time {seg.get(n)} is {problem}", n, "102", pid)


def _patient_id(segs: list[_Seg], authority: str = "") -> str:
    """The patient id from PID-3, exactly as the hospital wrote it (:func:`schemas.check_patient_id`).

    Of several repetitions, the medical record number (PID-3.5 ``MR``) is preferred. With
    ``authority`` (``settings.patient_id_authority``) set, only identifiers whose assigning
    authority (PID-3.4, first subcomponent) is this site's, or is not given, are considered, and
    of those one that names it is preferred; an identifier only another authority assigned is
    refused. An identifier the v1 id cannot hold is refused, saying what is wrong."""
    pid_seg = next((s for s in segs if s.name == "PID"), None)
    if pid_seg is None:
        raise Hl7Reject("no PID segment", segment="PID", code="100")
    reps = max(pid_seg.repetitions(3), 1)
    # (identifier, assigning authority, identifier type, repetition) of each non-empty repetition
    found = [
        (pid_seg.get(3, rep=r, comp=1), pid_seg.get(3, rep=r, comp=4).strip(), pid_seg.get(3, rep=r, comp=5).strip(), r)
        for r in range(1, reps + 1)
    ]
    found = [f for f in found if f[0].strip(" ")]
    if not found:
        raise pid_seg.reject("PID-3: no patient identifier", 3, "101")
    if authority:
        ours = [f for f in found if f[1] in ("", authority)]
        if not ours:
            raise pid_seg.reject(f"PID-3.4: assigning authority {found[0][1][:40]!r} is not this site's", 3, "204")
        found = ours
    # stable sort: the first MR (of this site's authority when one is set), else the first identifier
    ident, _, _, rep = sorted(found, key=lambda f: (f[2] != "MR", bool(authority) and f[1] != authority))[0]
    if pid_seg.subcomponents(3, rep=rep, comp=1) > 1:
        # an unescaped '&' in the identifier: reading its first part only could merge two patients
        raise pid_seg.reject("PID-3.1: patient identifier has subcomponents ('&' must be escaped as \\T\\)", 3, "102")
    try:
        return schemas.check_patient_id(ident)
    except schemas.SchemaError as exc:
        raise pid_seg.reject(f"PID-3: {exc.reason}", 3, "102") from None


def _validated(model, pid: str, seg: _Seg | None = None, **fields) -> Message:
    try:
        return model(patient_id=pid, **fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or model.__name__
        reason = f"{model.__name__.lower()} {where}: {first.get('msg', 'invalid')}"
        if seg is not None:
            raise seg.reject(reason, code="102", pid=pid) from None
        raise Hl7Reject(reason, code="102", patient_id=pid) from None


# ---------------------------------------------------------------------------------------------
# ORU^R01

_SKIPPED_STATUS = {"X", "D", "W", "N"}  # no result / deleted / wrong / not asked
_NUM_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_TRUE = {"Y", "YES", "TRUE", "T", "1"}
_FALSE = {"N", "NO", "FALSE", "F", "0"}


def _obx_number(obx: _Seg, pid: str) -> float:
    vtype = obx.get(2).upper()
    if vtype == "SN":  # structured numeric: comparator^num1
        comparator, text = obx.get(5, comp=1), obx.get(5, comp=2)
        if comparator not in ("", "="):
            raise obx.reject(f"OBX-5: censored value {comparator}{text} cannot be forwarded", 5, "102", pid)
    else:
        text = obx.get(5)
    if not _NUM_RE.fullmatch(text.strip()):
        raise obx.reject(f"OBX-5: value {text!r} is not a number", 5, "102", pid)
    return float(text)


def _obx_coded(obx: _Seg, name: str, pid: str):
    text = obx.get(5).strip().upper()
    if name == "o2_supplement":
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise obx.reject(f"OBX-5: {name} value {text!r} is not Y/N", 5, "103", pid)
    if text[:1] in ("A", "C", "V", "P", "U") and (
        len(text) == 1 or text in ("ALERT", "CONFUSION", "CONFUSED", "VOICE", "PAIN", "UNRESPONSIVE")
    ):
        return text[:1]
    raise obx.reject(f"OBX-5: consciousness value {text!r} is not one of A/C/V/P/U", 5, "103", pid)


def _oru(
    segs: list[_Seg],
    hdr: Header,
    mapping: ObservationMap,
    naive_tz: tzinfo,
    window: TimeWindow | None = None,
    authority: str = "",
) -> list[tuple[str, Message]]:
    pid = _patient_id(segs, authority)
    obr: _Seg | None = None
    obr_time: float | None = None
    result_time: float | None = None
    vitals: dict[float, dict] = {}
    vitals_seg: dict[float, _Seg] = {}
    labs: list[tuple[str, Message]] = []
    n_obx = 0
    for seg in segs:
        if seg.name == "OBR":
            obr = seg
            obr_time = _time(seg, 7, naive_tz, pid)
            result_time = _time(seg, 22, naive_tz, pid)
            continue
        if seg.name != "OBX":
            continue
        n_obx += 1
        if seg.get(11).upper() in _SKIPPED_STATUS:
            continue
        code, unit = seg.get(3, comp=1).strip(), seg.get(6, comp=1)
        if not code:
            raise seg.reject("OBX-3: no observation code", 3, "101", pid)
        try:
            rule = mapping.lookup(code, unit)
        except LookupError as exc:
            raise seg.reject(f"OBX-3/6: {exc}", 6 if "unit" in str(exc) else 3, "103", pid) from None
        if rule.topic == "ignore":
            continue
        t = _time(seg, 14, naive_tz, pid)
        if t is not None:
            _check_time(window, t, seg, 14, pid)
        elif obr_time is not None and obr is not None:
            t = obr_time
            _check_time(window, t, obr, 7, pid)
        else:
            raise seg.reject("no observation time (OBX-14 and OBR-7 empty)", 14, "101", pid)
        if rule.topic == "vitals":
            value = (
                _obx_coded(seg, rule.field, pid) if rule.field in CODED_VITALS else rule.convert(_obx_number(seg, pid))
            )
            vitals.setdefault(t, {})[rule.field] = value
            vitals_seg.setdefault(t, seg)
        else:
            value = rule.convert(_obx_number(seg, pid))
            rt = result_time
            if rt is None:
                rt = max(t, hdr.sent_time) if hdr.sent_time is not None else t
            labs.append(
                (
                    topics.LABS,
                    _validated(
                        Lab,
                        pid,
                        seg,
                        event_time=t,
                        analyte=rule.field,
                        value=value,
                        unit=LAB_UNITS[rule.field],
                        result_time=rt,
                    ),
                )
            )
    if n_obx == 0:
        raise Hl7Reject("ORU^R01 without OBX segments", segment="OBX", code="101", patient_id=pid)
    out: list[tuple[str, Message]] = []
    for t in sorted(vitals):
        values = vitals[t]
        if not any(k in values for k in NUMERIC_VITALS):
            raise vitals_seg[t].reject("vital signs without a numeric value at this time", 5, "101", pid)
        out.append((topics.VITALS, _validated(Vitals, pid, vitals_seg[t], event_time=t, **values)))
    return out + labs


# ---------------------------------------------------------------------------------------------
# ADT

ADT_EVENTS = {"A01": "admit", "A02": "transfer", "A03": "discharge"}


def _adt(
    segs: list[_Seg], hdr: Header, naive_tz: tzinfo, window: TimeWindow | None = None, authority: str = ""
) -> list[tuple[str, Message]]:
    pid = _patient_id(segs, authority)
    event = ADT_EVENTS.get(hdr.trigger)
    evn = next((s for s in segs if s.name == "EVN"), None)
    if event is None and evn is not None:
        event = ADT_EVENTS.get(evn.get(1))
    if event is None:
        raise Hl7Reject(
            f"unsupported ADT event {hdr.trigger or '(none)'} (A01/A02/A03)",
            segment="MSH",
            field=9,
            code="201",
            patient_id=pid,
        )
    t = None
    if evn is not None:
        for n in (6, 2):
            t = _time(evn, n, naive_tz, pid)
            if t is not None:
                _check_time(window, t, evn, n, pid)
                break
    if t is None:
        t = hdr.sent_time
        if t is not None:
            _check_time(window, t, segs[0], 7, pid)
    if t is None:
        raise Hl7Reject(
            "no event time (EVN-6, EVN-2 and MSH-7 empty)", segment="EVN", field=2, code="101", patient_id=pid
        )
    pid_seg = next(s for s in segs if s.name == "PID")
    pv1 = next((s for s in segs if s.name == "PV1"), None)
    fields: dict = {}
    if pv1 is not None:
        unit = pv1.get(3, comp=1).strip()
        bed = pv1.get(3, comp=3).strip() or pv1.get(3, comp=2).strip()
        if unit:
            fields["unit"] = unit
        if bed:
            fields["bed"] = bed
    if pv1 is not None:
        try:
            hospital = parse_ts(pv1.get(44), naive_tz) if pv1.get(44) else None
        except ValueError:
            hospital = None
        if hospital is not None and schemas.EARLIEST_EVENT_TIME <= hospital <= t:
            fields["hospital_admit_time"] = hospital
    born = pid_seg.get(7)
    if born:
        try:
            fields["age"] = float(completed_years(parse_date(born), datetime.fromtimestamp(t, naive_tz).date()))
        except ValueError as exc:
            raise pid_seg.reject(f"PID-7: {exc}", 7, "102", pid) from None
    sex = pid_seg.get(8).strip().upper()
    if sex:
        fields["sex"] = sex if sex in ("F", "M") else "U"
    return [(topics.ADT, _validated(Adt, pid, evn, event_time=t, event=event, **fields))]


# ---------------------------------------------------------------------------------------------


def map_message(
    raw: bytes | str | hl7.Message,
    mapping: ObservationMap,
    naive_tz: tzinfo = timezone.utc,
    window: TimeWindow | None = None,
    authority: str = "",
) -> list[tuple[str, Message]]:
    """One HL7 message -> ``[(topic, v1 message), ...]``; :class:`Hl7Reject` if any part is bad
    (with ``window``: an event time outside it, too; with ``authority``: a PID-3 another assigning
    authority gave, see :func:`_patient_id`).

    All or nothing: a message is either mapped whole or rejected whole.
    """
    msg = raw if isinstance(raw, hl7.Message) else parse_hl7(raw)
    try:
        return _map(msg, mapping, naive_tz, window, authority)
    except Hl7Reject as rej:
        if rej.patient_id is None:  # key the dead letter by patient where the PID is readable
            rej.patient_id = _best_effort_patient_id(msg, authority)
        raise


def _best_effort_patient_id(msg: hl7.Message, authority: str = "") -> str | None:
    try:
        for i, seg in enumerate(msg):
            if len(seg) and str(seg[0]) == "PID":
                return _patient_id([_Seg(msg, seg, i + 1)], authority)
    except Exception:
        pass
    return None


def pid_segment_index(raw: bytes | str | hl7.Message) -> int | None:
    """Position (1-based) of the first PID segment in a message, for ERR-2; None without one."""
    try:
        msg = raw if isinstance(raw, hl7.Message) else parse_hl7(raw)
        return next((i + 1 for i, seg in enumerate(msg) if len(seg) and str(seg[0]) == "PID"), None)
    except Exception:
        return None


def _map(
    msg: hl7.Message, mapping: ObservationMap, naive_tz: tzinfo, window: TimeWindow | None, authority: str = ""
) -> list[tuple[str, Message]]:
    segs = _segments(msg)
    hdr = header(msg, naive_tz)
    try:
        if hdr.message_type == "ORU" and hdr.trigger in ("R01", ""):
            return _oru(segs, hdr, mapping, naive_tz, window, authority)
        if hdr.message_type == "ADT":
            return _adt(segs, hdr, naive_tz, window, authority)
    except Hl7Reject:
        raise
    except Exception as exc:  # a structure python-hl7 parsed but we cannot read: reject, do not crash
        raise Hl7Reject(f"unreadable {hdr.message_type}^{hdr.trigger}: {type(exc).__name__}: {exc}") from None
    raise Hl7Reject(
        f"unsupported message type {hdr.message_type}^{hdr.trigger} (ORU^R01, ADT^A01/A02/A03)",
        segment="MSH",
        field=9,
        code="200",
    )
