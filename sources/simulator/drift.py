"""Drift injected into a simulated unit's stream, to test the drift guards (``storage/drift_report.py``).

Each injection changes what one unit's feeds send from ``start_s`` (seconds after the simulation's
start, event time) on, the way a real fault would, while the patients themselves stay as they are:

* ``lab_units``: the lab system reports creatinine in µmol/L under the mg/dL label (× 88.4), a
  mapping error after an interface change;
* ``monitor_offset``: the unit's monitors read SpO2 ``offset`` points low (default 6), e.g. a
  firmware update across one unit's monitors (one bed alone is 1/N of the unit's counts, below
  what a per-unit histogram can tell in hours);
* ``xray_stop``: the unit's X-rays stop arriving (a modality feed down).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from icuwatch.core import schemas, topics

DriftKind = Literal["lab_units", "monitor_offset", "xray_stop"]
KINDS: tuple[str, ...] = ("lab_units", "monitor_offset", "xray_stop")
CREATININE_MG_DL_TO_UMOL_L = 88.4


@dataclass(frozen=True)
class Injection:
    kind: DriftKind
    unit: str
    start_s: float
    offset: float = 6.0

    @classmethod
    def parse(cls, text: str) -> "Injection":
        """``KIND:UNIT:START_H`` (``monitor_offset:MICU:2``: from simulated hour 2 on)."""
        parts = text.split(":")
        if len(parts) != 3 or parts[0] not in KINDS:
            raise ValueError(f"drift {text!r}: give KIND:UNIT:START_H with KIND one of {', '.join(KINDS)}")
        try:
            start_h = float(parts[2])
        except ValueError:
            raise ValueError(f"drift {text!r}: START_H must be a number of hours") from None
        return cls(parts[0], parts[1], start_h * 3600.0)  # type: ignore[arg-type]


def inject(
    messages: Iterable[tuple[float, str, Any]],
    injections: Iterable[Injection],
    units: dict[str, str],
    start_time: float,
) -> Iterator[tuple[float, str, Any]]:
    """``messages`` (publish time, topic, message) with the injections applied; ``units``: each
    patient's unit. A message is changed (or, for ``xray_stop``, left out) when its patient is in
    the injection's unit and its event time is at or after the injection's start."""
    active = list(injections)
    for t, topic, msg in messages:
        unit = units.get(msg.patient_id)
        for inj in active:
            if unit != inj.unit or msg.event_time < start_time + inj.start_s:
                continue
            if inj.kind == "xray_stop" and topic == topics.CXR:
                msg = None
                break
            if inj.kind == "lab_units" and isinstance(msg, schemas.Lab) and msg.analyte == "creatinine":
                msg = msg.model_copy(update={"value": round(msg.value * CREATININE_MG_DL_TO_UMOL_L, 1)})
            if inj.kind == "monitor_offset" and isinstance(msg, schemas.Vitals) and msg.spo2 is not None:
                msg = msg.model_copy(update={"spo2": max(0.0, msg.spo2 - inj.offset)})
        if msg is not None:
            yield t, topic, msg
