"""``data_feeds`` (storage/data_feeds.py) on SQLite and PostgreSQL: rows only move forward, silence
is measured against the given now, discharged patients are not listed as silent."""

from __future__ import annotations

from datetime import datetime, timezone

from icuwatch.core import schemas
from icuwatch.storage import data_feeds
from icuwatch.storage import repository as repo

T0 = 1_800_000_000.0
AFTER = {"vitals": 300.0, "waveforms": 300.0, "labs": 0.0, "cxr": 0.0}


def at(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=timezone.utc)


def test_a_feed_row_only_moves_forward(sessions):
    with sessions.begin() as s:
        data_feeds.record(s, {("p1", "vitals"): (T0 + 10, T0), ("p1", "labs"): (T0, None)})
    with sessions.begin() as s:
        data_feeds.record(s, {("p1", "vitals"): (T0 + 5, T0 - 100)})  # an older receipt: a worker's backlog
    with sessions() as s:
        feeds = {f.modality: f for f in data_feeds.of_patient(s, "p1", at(T0 + 20), AFTER)}
    assert feeds["vitals"].last_received_at == at(T0 + 10) and feeds["vitals"].last_event_time == at(T0)
    assert feeds["vitals"].silent_s == 10.0 and not feeds["vitals"].silent
    assert feeds["labs"].last_event_time is None
    with sessions.begin() as s:
        data_feeds.record(s, {("p1", "vitals"): (T0 + 30, T0 + 25)})
    with sessions() as s:
        (vitals,) = [f for f in data_feeds.of_patient(s, "p1", at(T0 + 400), AFTER) if f.modality == "vitals"]
    assert vitals.last_received_at == at(T0 + 30) and vitals.silent_s == 370.0 and vitals.silent


def test_silent_lists_watched_feeds_past_their_threshold_longest_first_without_the_discharged(sessions):
    with sessions.begin() as s:
        data_feeds.record(
            s,
            {
                ("quiet", "vitals"): (T0, T0),
                ("quieter", "vitals"): (T0 - 600, T0 - 600),
                ("fine", "vitals"): (T0 + 250, T0 + 250),
                ("fine", "labs"): (T0 - 86_400 * 3, None),  # labs not watched here
                ("gone", "vitals"): (T0 - 900, T0 - 900),
            },
        )
        repo.upsert_patient(s, schemas.Adt(patient_id="gone", event_time=T0 - 800, event="discharge"))
    with sessions() as s:
        found = data_feeds.silent(s, at(T0 + 400), AFTER)
    assert [(pid, f.modality) for pid, f in found] == [("quieter", "vitals"), ("quiet", "vitals")]
    assert found[0][1].silent_s == 1000.0
