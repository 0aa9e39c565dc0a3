"""What the ingest agent decides for one decoded input message, as plain functions over the patient's
state (no Kafka, no I/O), so each decision can be tested alone:

1. :func:`apply_message`: fold the message into the state; False when it brings nothing new (a
   duplicate, or a redelivery after a restart or rebalance: ``patient_state.redelivered``).
2. :func:`next_step`: once applied, whether the patient is scored now (and for what reason) or the
   state is checkpointed, or neither (a vital sign or waveform chunk between checkpoints).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from icuwatch.core import schemas
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


def apply_message(state: PatientState, msg: schemas.Message, where: Where, waveforms: WaveformState) -> bool:
    """Fold ``msg`` into ``state``; False when it brings nothing new. Waveform chunks are not
    tracked by offset (the waveform buffers recognise a repeated chunk themselves)."""
    is_waveform = isinstance(msg, schemas.Waveform)
    redelivered = not is_waveform and patient_state.redelivered(state, *where)
    applied = not redelivered and patient_state.apply(state, msg, waveforms)
    if not is_waveform:
        patient_state.mark_applied(state, *where)
    return applied


def phase_s(key: bytes, period_s: float) -> float:
    """The patient's own phase within a period (rescoring, checkpoints): a hash of the key, so a ward
    admitted together does not all rescore in the same second."""
    return zlib.crc32(key) % period_s


def next_step(
    state: PatientState, msg: schemas.Message, key: bytes, waveforms: WaveformState, score_interval_s: float
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
    checkpoint = not isinstance(msg, (schemas.Vitals, schemas.Waveform)) or patient_state.checkpoint_due(state)
    return NextStep(checkpoint=checkpoint)
