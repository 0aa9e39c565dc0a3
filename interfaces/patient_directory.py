"""Who ADT admitted: the one check both listeners (HL7, DICOM) make under
``ICUWATCH_UNADMITTED_DATA=refuse``.

The policy (``settings.unadmitted_data``), the same for HL7 and DICOM:

* ``accept`` (default): data about a patient ADT never admitted is taken in like any other; the
  API marks the patient ``admitted: false`` and the board shows "no ADT admission". Refusing it
  would silence a real patient whenever the ADT feed is late or down. No lookup is made.
* ``refuse``: an observation is taken only for a patient ADT admitted (``patients.admitted_at``
  set) and not discharged before the observation's event time. HL7 answers AE for a patient not
  known or not admitted (the sender retries: the ADT may be late) and AR for one discharged
  before the observation; DICOM answers 0xC001. Both dead-letter what they refuse.

The ``patients`` table is written by the worker's sink from ``icu.adt``, so an admission reaches
it a moment after the listener forwarded the A01: :meth:`PatientDirectory.note_adt` records the
ADT events this process itself forwarded (acknowledged by the broker), and those count for
``own_s`` seconds, so a feed sending A01 then ORU is not refused by that race. Database answers
that a patient is admitted are cached for ``cache_s`` seconds (positive only: a patient not found
is looked up again next time, so a late admission counts at once). Reasons never contain the
patient id.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from icuwatch.core import schemas

NOT_KNOWN = "patient not known to ADT"
NOT_ADMITTED = "patient has no admission from ADT"
DISCHARGED = "patient discharged before the observation"
MAX_REMEMBERED = 100_000
"""Patients whose own ADT or cached admission a directory keeps at most (oldest forgotten first)."""


class DirectoryUnavailable(RuntimeError):
    """The database could not be asked (transient: HL7 AE, DICOM 0xA700)."""


@dataclass
class _Stay:
    admitted: float | None = None
    discharged: float | None = None
    updated: float | None = None
    expires: float = 0.0


def verdict(admitted: float | None, discharged: float | None, event_time: float) -> str | None:
    """None when an observation at ``event_time`` is about an admitted patient, else the reason."""
    if admitted is None:
        return NOT_ADMITTED
    if discharged is not None and discharged < event_time:
        return DISCHARGED
    return None


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    from icuwatch.storage.repository import utc

    return utc(value).timestamp()


class PatientDirectory:
    """Admission lookups in the ``patients`` table (``database_url``), with this process's own
    forwarded ADT and a short positive cache in front. Thread-safe."""

    def __init__(
        self,
        database_url: str,
        *,
        cache_s: float = 30.0,
        own_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from icuwatch.storage import db

        self.engine = db.make_engine(database_url)
        self.sessions = db.session_factory(self.engine)
        self.cache_s, self.own_s, self.clock = cache_s, own_s, clock
        self._own: OrderedDict[str, _Stay] = OrderedDict()
        self._cache: OrderedDict[str, _Stay] = OrderedDict()
        self._lock = threading.Lock()
        self.lookups = 0
        """Database reads made (for tests and stats)."""

    def note_adt(self, adt: schemas.Adt) -> None:
        """An ADT event this process forwarded (after the broker acknowledged it); applied as the
        sink applies it to the ``patients`` row (a newer event replaces the stay, an older one
        only fills a missing admission)."""
        t = adt.event_time
        with self._lock:
            stay = self._own.pop(adt.patient_id, None) or _Stay()
            if stay.updated is None or t >= stay.updated:
                if adt.event == "admit":
                    stay.admitted, stay.discharged = t, None
                elif adt.event == "discharge":
                    stay.discharged = t
                stay.updated = t
            elif adt.event == "admit" and stay.admitted is None:
                stay.admitted = t
            stay.expires = self.clock() + self.own_s
            self._own[adt.patient_id] = stay
            self._cache.pop(adt.patient_id, None)  # the stay changed: ask the database again
            while len(self._own) > MAX_REMEMBERED:
                self._own.popitem(last=False)

    def check(self, patient_id: str, event_time: float) -> str | None:
        """None if the patient is admitted at ``event_time`` (admitted, and not discharged before
        it); otherwise the reason, without the id. :class:`DirectoryUnavailable` when the database
        cannot be read."""
        now = self.clock()
        with self._lock:
            own = self._fresh(self._own, patient_id, now)
            cached = self._fresh(self._cache, patient_id, now)
        if own is not None and verdict(own.admitted, own.discharged, event_time) is None:
            return None
        if cached is not None and verdict(cached.admitted, cached.discharged, event_time) is None:
            return None
        row = self._read(patient_id)
        if row is None:
            return NOT_KNOWN
        admitted, discharged = row
        if admitted is not None:
            with self._lock:
                self._cache.pop(patient_id, None)
                self._cache[patient_id] = _Stay(admitted, discharged, expires=now + self.cache_s)
                while len(self._cache) > MAX_REMEMBERED:
                    self._cache.popitem(last=False)
        return verdict(admitted, discharged, event_time)

    @staticmethod
    def _fresh(table: OrderedDict[str, _Stay], patient_id: str, now: float) -> _Stay | None:
        stay = table.get(patient_id)
        if stay is not None and stay.expires <= now:
            del table[patient_id]
            return None
        return stay

    def _read(self, patient_id: str) -> tuple[float | None, float | None] | None:
        from sqlalchemy import select
        from sqlalchemy.exc import SQLAlchemyError

        from icuwatch.storage.models import Patient

        with self._lock:
            self.lookups += 1
        try:
            with self.sessions() as session:
                row = session.execute(
                    select(Patient.admitted_at, Patient.discharged_at).where(Patient.patient_id == patient_id)
                ).first()
        except SQLAlchemyError as exc:
            raise DirectoryUnavailable(f"patient directory unavailable ({type(exc).__name__})") from None
        if row is None:
            return None
        return _epoch(row[0]), _epoch(row[1])

    def close(self) -> None:
        self.engine.dispose()
