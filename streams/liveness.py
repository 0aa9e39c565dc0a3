"""Data liveness: silence is never mistaken for stability.

A score says what the data said when it last came; when a monitor is switched off or the network
drops, no score comes and a quiet board looks like a stable patient. So the worker checks every
``liveness_check_s``, for each of its patients, how long each modality has been silent: wall
seconds since the Kafka timestamp (the sender's clock) of its newest record. Wall time, not event
time: a replay or the simulator at speed 60 has event times far from now by design, but a feed that
stops sending is silent in every mode.

A monitored patient (vital signs seen, not discharged) whose vital signs are silent longer than
``silence_vitals_s`` gets a ``data_liveness`` alert with the lifecycle of a risk alert: one open
alert per patient and kind; when data comes back the episode closes (the alert is resolved if a
nurse acknowledged it, otherwise it stays on the board until someone does); a nurse who resolves it
while the silence goes on (the patient is in CT) is alerted again after
``alert_realert_after_resolve_s`` of further silence. Silence is counted from the later of the last
receipt and ``watch_start`` (when the worker took the patient's partition), so a restarted worker
does not alert on every patient before it has read their backlog.

Pure: the worker passes ``now`` and keeps a :class:`Watch` per patient in memory (the database's
open alerts are the truth across restarts; ids are derived from the silence's start).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from icuwatch.core import schemas
from icuwatch.core.settings import Settings
from icuwatch.streams import patient_state
from icuwatch.streams.patient_state import PatientState

KIND: Final[Literal["data_liveness"]] = "data_liveness"
ALERTED_MODALITY = "vitals"
"""The modality whose silence raises an alert: the bedside monitor is the patient's heartbeat.
The other modalities' silences are shown on the board and the patient page only."""

FeedTimes = dict[tuple[str, str], tuple[float, float | None]]
"""``{(patient_id, modality): (last received, last event time)}`` (``storage/data_feeds.py``)."""


@dataclass(frozen=True)
class LivenessRule:
    silence_after_s: dict[str, float]
    """Per modality, seconds of silence before it counts (0: not watched)."""
    realert_after_resolve_s: float = 1800.0

    @classmethod
    def of(cls, settings: Settings) -> LivenessRule:
        return cls(settings.silence_after_s(), settings.alert_realert_after_resolve_s)


@dataclass
class Watch:
    """What the worker remembers of one patient's liveness episode."""

    alert_id: str | None = None
    """The open data-liveness alert (None: none)."""
    resolved_at: float | None = None
    """Wall time the worker found that alert resolved by a nurse while the silence went on."""


def silent_for(state: PatientState, modality: str, now: float, watch_start: float = 0.0) -> float | None:
    """Wall seconds ``modality`` has been silent, counted from the later of its last receipt and
    ``watch_start``; None if it never arrived."""
    received = state.get("received", {}).get(modality)
    if received is None:
        return None
    return now - max(received, watch_start)


def monitored(state: PatientState) -> bool:
    """Vital signs have arrived and the newest ADT event is not a discharge."""
    return ALERTED_MODALITY in state.get("received", {}) and state["adt"].get("event") != "discharge"


def resolved_by_nurse(watch: Watch, still_open: set[str], now: float) -> None:
    """The worker asked the database which open alerts are still open: a liveness alert that is not
    was resolved by a nurse, which starts the re-alert period."""
    if watch.alert_id is not None and watch.alert_id not in still_open:
        watch.alert_id, watch.resolved_at = None, now


def check(
    patient_id: str, state: PatientState, watch: Watch, now: float, watch_start: float, rule: LivenessRule
) -> tuple[schemas.Alert | None, str | None]:
    """One check of one patient: ``(alert to raise, id of the alert whose episode ended)``."""
    after = rule.silence_after_s.get(ALERTED_MODALITY, 0.0)
    silent = silent_for(state, ALERTED_MODALITY, now, watch_start)
    if not after or silent is None or not monitored(state) or silent <= after:
        ended, watch.alert_id, watch.resolved_at = watch.alert_id, None, None
        return None, ended
    if watch.alert_id is not None:
        return None, None
    if watch.resolved_at is not None and now - watch.resolved_at < rule.realert_after_resolve_s:
        return None, None
    start = max(state.get("received", {})[ALERTED_MODALITY], watch.resolved_at or 0.0)
    alert = schemas.Alert(
        patient_id=patient_id,
        event_time=now,
        alert_id=f"{patient_id}:{KIND}:{start:.0f}",
        kind=KIND,
        risk=0.0,
        news2=0,
        qsofa=0,
        model="liveness",
        source="liveness",
        episode_start=start,
        raised_at=now,
    )
    watch.alert_id = alert.alert_id
    return alert, None


def feed_times(patient_id: str, state: PatientState) -> FeedTimes:
    """What the ``data_feeds`` table holds for this patient, from its state."""
    return {
        (patient_id, modality): (received, patient_state.last_event_time(state, modality))
        for modality, received in state.get("received", {}).items()
    }
