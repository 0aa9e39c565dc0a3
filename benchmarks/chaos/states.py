"""Whether every patient's checkpointed state came back whole: the changelog vs an offline fold."""

from __future__ import annotations

import json

from icuwatch.core.settings import Settings

STATE_FIELDS = ("vitals", "window", "hourly", "labs", "cxr", "recent_vitals_t")
"""The parts of a patient's state that every message changes and that do not depend on the order
the topics were read in: after all messages, a pipeline that lost none holds exactly these."""


def expected_states(sim) -> dict[str, dict]:
    """Every simulated message (bar waveform chunks, which live outside the table) folded once into
    each patient's state, as JSON would carry it."""
    from icuwatch.core import schemas
    from icuwatch.streams import patient_state

    states: dict[str, dict] = {}
    for _, _, msg in sim.timed_messages():
        if not isinstance(msg, schemas.WAVEFORM_TYPES):
            patient_state.apply(states.setdefault(msg.patient_id, patient_state.new_state()), msg)
    return json.loads(json.dumps({p: {f: st[f] for f in STATE_FIELDS} for p, st in states.items()}))


def state_differences(states: dict[str, dict], expected: dict[str, dict]) -> dict[str, dict]:
    """Per patient whose checkpoint is not whole: each differing field, checkpointed vs expected."""
    out: dict[str, dict] = {}
    for p, want in expected.items():
        got = states.get(p)
        if got is None:
            out[p] = {"missing": True}
            continue
        diff = {f: {"checkpointed": got.get(f), "expected": want[f]} for f in STATE_FIELDS if got.get(f) != want[f]}
        if diff:
            out[p] = diff
    return out


def vital_rows_missing(states: dict[str, dict], expected: dict[str, dict]) -> int:
    """Vital-sign rows (seconds of heart rate) the checkpointed hourly aggregates lack against the
    offline fold, summed over hours and patients (a patient with no checkpoint lacks them all): what
    a loss of input records (a broker that kept nothing) cost. Rows counted twice do not offset it."""
    missing = 0.0
    for patient, want in expected.items():
        got = {row[0]: row[1] for row in (states.get(patient) or {}).get("hourly") or []}
        missing += sum(max(0.0, row[1] - got.get(row[0], 0.0)) for row in want["hourly"] or [])
    return int(missing)


def keyed_records(settings: Settings, topic: str) -> list:
    """Every keyed, non-empty record of ``topic`` from its start (until 3 s bring nothing new)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.broker,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=3000,
    )
    try:
        return [m for m in consumer if m.key is not None and m.value is not None]
    finally:
        consumer.close()


def checkpointed_states(settings: Settings) -> dict[str, dict]:
    """The newest checkpoint of every patient, read from the ``patient_state`` changelog."""
    from icuwatch.core import topics

    latest = {m.key.decode(): m.value for m in keyed_records(settings, topics.changelogs(settings.app_id)[0])}
    return {p: {f: json.loads(v).get(f) for f in STATE_FIELDS} for p, v in latest.items()}
