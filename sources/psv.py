"""Replay PhysioNet/CinC 2019 stays (``pNNNNNN.psv``) into the v1 topics.

Time line of one stay (``base_time`` = hospital admission, default 2020-01-01T00:00Z):

* ICU admission = ``base_time - HospAdmTime * 3600`` (``HospAdmTime`` is hours from hospital to ICU
  admission, usually negative; NaN is taken as 0, and the first non-NaN value of the column is used);
* the row with ``ICULOS = h`` has event time ``icu_admit + h * 3600`` (rows without a usable ICULOS
  are skipped and counted);
* ``icu.adt`` admit (age, sex from Gender 1=M 0=F, unit MICU/SICU from Unit1/Unit2,
  ``hospital_admit_time`` = ``base_time``) at the ICU admission, discharge one hour after the last
  row. A stay with a positive ``HospAdmTime`` (ICU admission before the hospital's, which the schema
  rejects) is sent without ``hospital_admit_time``.

Each row with at least one vital sign gives one ``icu.vitals`` message, each measured lab value one
``icu.labs`` message (``result_time = event_time``: the challenge has no result times). Values the v1
schema rejects (out of its ranges) are dropped one by one and counted; a message left without any
value is not sent. Publish time = event time. Many stays replayed together all have their hospital
admission at the same ``base_time``, so their ICU stays overlap like a real unit's.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from icuwatch.core import topics
from icuwatch.core.errors import UNREADABLE, BadFile, one_line
from icuwatch.core.schemas import LAB_UNITS, Adt, Lab, Message, Vitals
from icuwatch.sources.pacing import send_paced
from icuwatch.sources.physionet import LAB_COLUMNS, VITAL_COLUMNS, Stay, list_stays, read_psv, stay_folder

DEFAULT_BASE_TIME = datetime(2020, 1, 1, tzinfo=timezone.utc).timestamp()
"""2020-01-01T00:00:00Z: hospital admission of every replayed stay unless told otherwise."""

_ORDER_ADMIT, _ORDER_VITALS, _ORDER_LAB, _ORDER_DISCHARGE = 0, 1, 2, 3

Item = tuple[float, int, int, str, Message]
"""(publish time, order within a time, sequence within the stay, topic, message)."""


def _first_finite(values: Iterable[float]) -> float | None:
    for v in values:
        if v is not None and math.isfinite(v):
            return float(v)
    return None


def icu_admit_time(hosp_adm_hours: float | None, base_time: float) -> float:
    """ICU admission (epoch s) for a stay whose hospital admission is ``base_time``."""
    h = hosp_adm_hours if hosp_adm_hours is not None and math.isfinite(hosp_adm_hours) else 0.0
    return round(base_time - h * 3600.0, 3)


def row_times(stay: Stay, base_time: float) -> tuple[float, np.ndarray]:
    """(ICU admission time, event time of every row); NaN for a row without a usable ICULOS."""
    hosp = _first_finite(stay.column("HospAdmTime")) if "HospAdmTime" in stay.columns else None
    t_admit = icu_admit_time(hosp, base_time)
    if "ICULOS" in stay.columns:
        hours = stay.column("ICULOS").astype(np.float64)
        hours = np.where(np.isfinite(hours) & (hours >= 0), hours, np.nan)
    else:
        hours = np.arange(1, len(stay.values) + 1, dtype=np.float64)
    return t_admit, np.round(t_admit + hours * 3600.0, 3)


def _build(cls: type[Message], fields: dict[str, Any], stats: Counter, topic: str) -> Message | None:
    """``cls(**fields)``; fields the schema rejects are dropped (counted) until it validates."""
    fields = dict(fields)
    while True:
        try:
            return cls(**fields)
        except ValidationError as exc:
            bad = {e["loc"][0] for e in exc.errors() if e.get("loc") and e["loc"][0] in fields}
            bad -= {"patient_id", "event_time"}
            if not bad:
                stats["skipped_messages"] += 1
                return None
            for name in bad:
                stats["skipped_out_of_range"] += 1
                stats[f"skipped_out_of_range.{topic}.{name}"] += 1
                del fields[name]


def _stay_items(stay: Stay, base_time: float, stats: Counter, id_prefix: str = "") -> Iterator[Item]:
    """The stay's messages in publish-time order, built lazily row by row (rows sorted by ICULOS)."""
    pid = f"{id_prefix}{stay.patient_id}"
    col = {name: i for i, name in enumerate(stay.columns)}
    t_admit, times = row_times(stay, base_time)
    seq = 0

    def demographic(name: str) -> float | None:
        return _first_finite(stay.column(name)) if name in col else None

    age, gender = demographic("Age"), demographic("Gender")
    unit1, unit2 = demographic("Unit1"), demographic("Unit2")
    unit = "MICU" if unit1 == 1 else ("SICU" if unit2 == 1 else None)
    sex = {1.0: "M", 0.0: "F"}.get(gender) if gender is not None else None
    hospital = dict(hospital_admit_time=base_time) if base_time <= t_admit else {}
    admit = _build(
        Adt,
        dict(patient_id=pid, event_time=t_admit, event="admit", unit=unit, age=age, sex=sex, **hospital),
        stats,
        topics.ADT,
    )
    if admit is not None:
        yield t_admit, _ORDER_ADMIT, seq, topics.ADT, admit
        seq += 1

    vital_idx = [(col[c], f) for c, f in VITAL_COLUMNS.items() if c in col]
    lab_idx = [(col[c], a) for c, a in LAB_COLUMNS.items() if c in col]
    n = stay.values.shape[0]
    hours = stay.column("ICULOS").astype(float) if "ICULOS" in col else np.arange(1.0, n + 1.0)
    usable = np.isfinite(hours) & (hours >= 0)
    stats["skipped_rows"] += int(n - usable.sum())
    last_t = t_admit
    for r in np.flatnonzero(usable)[np.argsort(hours[usable], kind="stable")]:
        row = stay.values[r]
        t = round(t_admit + float(hours[r]) * 3600.0, 3)
        last_t = max(last_t, t)
        vit = {f: float(row[i]) for i, f in vital_idx if math.isfinite(row[i])}
        if vit:
            msg = _build(Vitals, dict(patient_id=pid, event_time=t, **vit), stats, topics.VITALS)
            if msg is not None:
                yield t, _ORDER_VITALS, seq, topics.VITALS, msg
                seq += 1
        for i, analyte in lab_idx:
            v = float(row[i])
            if not math.isfinite(v):
                continue
            msg = _build(
                Lab,
                dict(
                    patient_id=pid,
                    event_time=t,
                    analyte=analyte,
                    value=v,
                    unit=LAB_UNITS.get(analyte, "?"),
                    result_time=t,
                ),
                stats,
                topics.LABS,
            )
            if msg is not None:
                yield t, _ORDER_LAB, seq, topics.LABS, msg
                seq += 1
    t_dis = round(last_t + 3600.0, 3)
    dis = _build(Adt, dict(patient_id=pid, event_time=t_dis, event="discharge", unit=unit), stats, topics.ADT)
    if dis is not None:
        yield t_dis, _ORDER_DISCHARGE, seq, topics.ADT, dis


def stay_messages(
    stay: Stay, base_time: float, stats: Counter | None = None, id_prefix: str = ""
) -> list[tuple[float, str, Message]]:
    """Every message of one stay as ``(publish_time, topic, message)``, in publish-time order.

    ``stats`` (optional) collects ``skipped_out_of_range`` (values the v1 schema rejects, also per
    ``topic.field``), ``skipped_rows`` (no usable ICULOS) and ``skipped_messages``.
    ``id_prefix`` is put before the patient id (the file stem), e.g. to replay a stay twice.
    """
    stats = Counter() if stats is None else stats
    return [(t, topic, msg) for t, _, _, topic, msg in _stay_items(stay, base_time, stats, id_prefix)]


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan  # as read_psv reads it


def _quick_span(path: Path) -> tuple[float | None, float | None]:
    """(HospAdmTime, last ICULOS) of a stay without building messages (to schedule the merge).
    Raises :class:`BadFile` where ``read_psv`` would: no rows, a row with the wrong number of values."""
    try:
        with open(path) as f:
            header = f.readline().strip().split("|")
            ih = header.index("HospAdmTime") if "HospAdmTime" in header else None
            il = header.index("ICULOS") if "ICULOS" in header else None
            hosp = last = None
            rows = 0
            for lineno, line in enumerate(f, start=2):
                parts = line.strip().split("|")
                if parts == [""]:
                    continue
                if len(parts) != len(header):
                    raise BadFile(path, f"{len(parts)} values, the header has {len(header)}", line=lineno)
                rows += 1
                if ih is not None and hosp is None:
                    v = _number(parts[ih])
                    hosp = v if math.isfinite(v) else None
                if il is not None:
                    v = _number(parts[il])
                    if math.isfinite(v):
                        last = v if last is None else max(last, v)
    except UnicodeDecodeError:
        raise BadFile(path, "not a text file") from None
    if not rows:
        raise BadFile(path, "no rows under the header" if header != [""] else "empty file")
    return hosp, last


def psv_timed_messages(
    paths: list[Path], base_time: float, stats: Counter, id_prefix: str = "", admits: list[float] | None = None
) -> Iterator[tuple[float, str, Message]]:
    """All stays' messages merged in publish-time order (ties: admit, vitals, labs, discharge).

    A stay is read only when the merged stream reaches its ICU admission, and dropped once sent, so
    memory holds the stays that overlap in time rather than the whole folder.
    """
    if admits is None:
        admits = [icu_admit_time(_quick_span(p)[0], base_time) for p in paths]
    starts = sorted(zip(admits, range(len(paths)), paths))
    heap: list[tuple[float, int, int, int, int, str, Message]] = []
    active: dict[int, Iterator[Item]] = {}
    nxt = 0

    def push(n: int) -> None:
        item = next(active[n], None)
        if item is None:
            del active[n]
            return
        t, order, seq, topic, msg = item
        heapq.heappush(heap, (t, order, n, seq, id(msg), topic, msg))

    while heap or nxt < len(starts):
        while nxt < len(starts) and (not heap or starts[nxt][0] <= heap[0][0]):
            _, n, path = starts[nxt]
            nxt += 1
            stats["stays"] += 1
            active[n] = _stay_items(read_psv(path), base_time, stats, id_prefix)
            push(n)
        if not heap:
            continue
        t, _, n, _, _, topic, msg = heapq.heappop(heap)
        yield t, topic, msg
        push(n)


def replay_psv(
    directory: str | Path,
    producer: Any,
    patients: int | Iterable[str] | None = None,
    speed: float = 0.0,
    base_time: float | None = None,
    progress: bool = True,
    id_prefix: str = "",
) -> dict[str, Any]:
    """Send the stays of ``directory`` (all, the first ``patients`` in name order, or those ids).

    A stay file that is malformed or unreadable is left out and the others are sent: ``failed`` counts
    them, ``failed_files`` says why (naming the file and line). A folder without stays raises
    :class:`OperatorError`. Returns ``{"produced": {topic: n}, "stays": n, "skipped_out_of_range": n,
    ..., "failed": n, "failed_files": [...]}``.
    """
    base_time = DEFAULT_BASE_TIME if base_time is None else float(base_time)
    directory = stay_folder(directory)
    if patients is None or isinstance(patients, int):
        paths = list_stays(directory, limit=patients)
    else:
        wanted = set(patients)
        paths = [p for p in list_stays(directory) if p.stem in wanted]
    stats: Counter = Counter()
    failed: list[str] = []
    readable = []
    for path in paths:
        try:
            readable.append((path, _quick_span(path)))
        except (BadFile, *UNREADABLE) as exc:
            failed.append(one_line(exc))
    paths, spans = [p for p, _ in readable], [s for _, s in readable]
    admits = [icu_admit_time(h, base_time) for h, _ in spans]
    start = min(admits) if admits else None
    end = max((a + ((last or 0.0) + 1.0) * 3600.0 for a, (_, last) in zip(admits, spans)), default=None)
    produced = send_paced(
        psv_timed_messages(paths, base_time, stats, id_prefix, admits),
        producer,
        speed,
        start_time=start,
        end_time=end,
        progress=progress,
    )
    out: dict[str, Any] = {
        "produced": produced,
        "stays": stats.pop("stays", 0),
        "skipped_out_of_range": stats.pop("skipped_out_of_range", 0),
        "skipped_rows": stats.pop("skipped_rows", 0),
        "skipped_messages": stats.pop("skipped_messages", 0),
        "failed": len(failed),
        "failed_files": failed,
    }
    if stats:
        out["skipped_by_field"] = dict(sorted(stats.items()))
    return out
