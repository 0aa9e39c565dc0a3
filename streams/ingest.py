"""What the ingest agent decides for one decoded input message, as plain functions over the patient's
state (no Kafka, no I/O), so each decision can be tested alone:

1. :func:`apply_message`: fold the message into the state; False when it brings nothing new (a
   duplicate, or a redelivery after a restart or rebalance: ``patient_state.redelivered``); raises
   :class:`Refused`, the state untouched, when its event time is implausible (:func:`implausible_time`).
2. :func:`next_step`: once applied, whether the patient is scored now (and for what reason) or the
   state is checkpointed, or neither (a vital sign or waveform chunk between checkpoints).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from icuwatch.core import schemas
from icuwatch.core.settings import Settings
from icuwatch.streams import patient_state
from icuwatch.streams.patient_state import PatientState
from icuwatch.streams.waveform_state import WaveformState

Where = tuple[str, int, int, float]
"""A record's topic, partition, offset and Kafka timestamp."""


@dataclass(frozen=True)
class NextStep:
    score_reason: str | None = None
    """Why the patient is scored now (``patient_state.scoring_trigger``), or None."""
    score_time: float = 0.0
    """Event time of that score: the patient's clock."""
    checkpoint: bool = False
    """Write the state to the table now (when not scored: a score checkpoints once published)."""


@dataclass(frozen=True)
class ClockRule:
    """Which event times the worker refuses (``core/settings.py``: ``live_max_future_s``,
    ``live_max_age_s``, ``clock_max_jump_s``; 0 turns a check off)."""

    live_max_future_s: float = 300.0
    live_max_age_s: float = 7 * 86400.0
    max_jump_s: float = 86400.0

    @classmethod
    def of(cls, settings: Settings) -> ClockRule:
        return cls(settings.live_max_future_s, settings.live_max_age_s, settings.clock_max_jump_s)


class Refused(ValueError):
    """A message whose event time is implausible: dead-lettered with ``reason``, the state untouched."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _span(s: float) -> str:
    return f"{s:.0f} s" if s < 3600 else f"{s / 3600:.1f} h" if s < 86400 else f"{s / 86400:.1f} d"


def implausible_time(
    state: PatientState, msg: schemas.Decoded, timestamp: float, live: bool, rule: ClockRule
) -> str | None:
    """Why ``msg``'s event time is implausible, or None.

    A single message must not be able to stop a patient's scoring: the clock is the newest vital-sign
    time and scores wait for it, so one vital sign dated a month ahead froze the patient for a month.

    * A record a live source marked (``live``; the HL7 listener, which sends what it receives at
      once) is checked against its own Kafka ``timestamp``, the sender's clock: any topic, at most
      ``live_max_future_s`` ahead and ``live_max_age_s`` behind.
    * Any other record (replays, the simulator at any speed: event times far from wall time by
      design) is checked against the patient's own clock, vital signs only (other topics are consumed
      at their own pace in a replay, ahead of or behind the vital signs): at most ``max_jump_s`` ahead
      of the clock, or of a later admission (a new stay of the same patient id), nor behind it. A
      patient's first vital sign has nothing to be compared with and sets the clock.
    """
    t = msg.event_time
    if live and timestamp:
        if rule.live_max_future_s and t - timestamp > rule.live_max_future_s:
            limit = _span(rule.live_max_future_s)
            return f"event time {_span(t - timestamp)} ahead of the live source's clock (at most {limit})"
        if rule.live_max_age_s and timestamp - t > rule.live_max_age_s:
            limit = _span(rule.live_max_age_s)
            return f"event time {_span(timestamp - t)} older than the live source's clock (at most {limit})"
        return None
    now = state["now"]
    if not isinstance(msg, schemas.Vitals) or now is None or not rule.max_jump_s:
        return None
    ahead = t - max(now, state["adt"].get("admit_t", now))
    if ahead > rule.max_jump_s:
        return f"vital sign {_span(ahead)} ahead of the patient's clock (at most {_span(rule.max_jump_s)})"
    if now - t > rule.max_jump_s:
        return f"vital sign {_span(now - t)} behind the patient's clock (at most {_span(rule.max_jump_s)})"
    return None


def apply_message(
    state: PatientState,
    msg: schemas.Decoded,
    where: Where,
    waveforms: WaveformState,
    clock: ClockRule | None = None,
    live: bool = False,
) -> bool:
    """Fold ``msg`` into ``state``; False when it brings nothing new. Waveform chunks are not
    tracked by offset (the waveform buffers recognise a repeated chunk themselves). With a ``clock``
    rule, raises :class:`Refused` before touching the state when the event time is implausible (a
    record already applied is recognised first, so a re-read one is never refused)."""
    is_waveform = isinstance(msg, schemas.WAVEFORM_TYPES)
    redelivered = not is_waveform and patient_state.redelivered(state, *where)
    if not redelivered and clock is not None:
        reason = implausible_time(state, msg, where[3], live, clock)
        if reason is not None:
            raise Refused(reason)
    applied = not redelivered and patient_state.apply(state, msg, waveforms)
    patient_state.mark_received(state, where[0], where[3])
    if not is_waveform:
        patient_state.mark_applied(state, *where)
    return applied


def phase_s(key: bytes, period_s: float) -> float:
    """The patient's own phase within a period (rescoring, checkpoints): a hash of the key, so a ward
    admitted together does not all rescore in the same second."""
    return zlib.crc32(key) % period_s


def next_step(
    state: PatientState, msg: schemas.Decoded, key: bytes, waveforms: WaveformState, score_interval_s: float
) -> NextStep:
    """After :func:`apply_message` accepted ``msg``: score, checkpoint, or wait. A discharge drops the
    patient's waveform buffers first. A score due at the patient's clock refreshes the waveform
    features up to it and stamps the state's ``revision`` and ``last_scored``."""
    if isinstance(msg, schemas.Adt) and msg.event == "discharge":
        waveforms.forget(msg.patient_id)
    reason = patient_state.scoring_trigger(state, score_interval_s, phase_s=phase_s(key, score_interval_s))
    now = state["now"]
    if reason is not None and now is not None:
        patient_state.refresh_waveform_features(state, msg.patient_id, now, waveforms)
        state["revision"] = state.get("revision", 0) + 1 if reason == "revision" else 0
        state["last_scored"] = now
        return NextStep(score_reason=reason, score_time=now)
    checkpoint = not isinstance(msg, (schemas.Vitals, *schemas.WAVEFORM_TYPES)) or patient_state.checkpoint_due(state)
    return NextStep(checkpoint=checkpoint)
