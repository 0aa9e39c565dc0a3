"""The worker's way into the database: SQLAlchemy calls run in a thread so the event loop keeps
consuming; each score and alert is written before its event is acknowledged, and a database outage
makes the stream wait (retrying) instead of dropping writes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from icuwatch.core import schemas
from icuwatch.storage import data_feeds, db, drift_counts, model_roles, repository, shadow, unit_thresholds
from icuwatch.storage.models import Alert
from icuwatch.streams.alerting import Thresholds

log = logging.getLogger(__name__)
EPISODE_CLOSED_BY = "system:episode-closed"
EPISODE_CLOSED_REASON = "risk back below the alert threshold after acknowledgement"
DATA_BACK_REASON = "data arriving again after acknowledgement"
SILENT_EPISODE_CLOSED_REASON = "risk back below the alert threshold while the unit ran silent"


def _resolve_if_acknowledged(session, alert_id: str, reason: str = EPISODE_CLOSED_REASON) -> None:
    """An alert nobody has acknowledged stays on the board (and escalates) even if the patient
    recovered: an unseen alert must not vanish on its own. A silent one (its unit runs silent,
    ``storage/units.py``) is resolved when its episode closes: nobody can see it to acknowledge it,
    and left open it would be shown, stale, when the unit goes live."""
    alert = session.get(Alert, alert_id)
    if alert is None:
        return
    if alert.state == "acknowledged":
        repository.resolve(session, alert_id, by=EPISODE_CLOSED_BY, reason=reason)
    elif alert.silent and alert.state == "raised":
        repository.resolve(session, alert_id, by=EPISODE_CLOSED_BY, reason=SILENT_EPISODE_CLOSED_REASON)


def _store_scores(
    session, scores: list[schemas.Score], open_episodes: dict[str, Collection[str]]
) -> tuple[int, dict[str, set[str]]]:
    stored = repository.add_scores(session, scores)
    resolved = {}
    for patient_id, kinds in open_episodes.items():
        if kinds:
            resolved[patient_id] = set(kinds) - repository.open_alert_kinds(session, patient_id)
    return stored, resolved


class StorageSink:
    def __init__(self, url: str) -> None:
        self.url = url
        self._sessions: sessionmaker[Session] | None = None
        self.scores_stored = 0

    @property
    def sessions(self):
        if self._sessions is None:
            self._sessions = db.session_factory(db.make_engine(self.url))
        return self._sessions

    def _run(self, fn, *args):
        with self.sessions() as session, session.begin():
            return fn(session, *args)

    async def _durably(self, what: str, fn, *args):
        """Run a database call in a thread, retrying with backoff while the database is unavailable:
        the stream waits (and Kafka keeps the backlog) rather than dropping the write or crashing."""
        delay = 0.5
        while True:
            try:
                return await asyncio.to_thread(self._run, fn, *args)
            except repository.StorageError:
                raise
            except (OperationalError, InterfaceError) as exc:
                log.error("database unavailable while %s (%s); retrying in %.1f s", what, type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def upsert_patient(self, adt: schemas.Adt) -> None:
        await self._durably("storing an ADT event", repository.upsert_patient, adt)

    async def store_alert(self, alert: schemas.Alert) -> str:
        """ "stored", "duplicate" (already stored: republish, the worker may have died before),
        "suppressed" (another alert of this patient and kind is open) or "silent" (stored, its unit
        runs silent: not published)."""
        return await self._durably("storing an alert", repository.store_alert, alert)

    async def store_scores(
        self, scores: list[schemas.Score], open_episodes: dict[str, Collection[str]]
    ) -> dict[str, set[str]]:
        """A batch of scores in one transaction, written before their events are acknowledged.

        Returns, per patient id of ``open_episodes`` (kinds of that patient's open episodes in the
        worker), those that have no open alert in the database any more: a nurse resolved it.
        Asked on every batch in the same transaction (one indexed read per patient with an open
        episode), so no cache can go stale, and the answer comes from the database, which survives
        a worker restart."""
        stored, resolved = await self._durably("storing scores", _store_scores, scores, open_episodes)
        self.scores_stored += stored
        return resolved

    async def close_episode(self, alert_id: str, reason: str = EPISODE_CLOSED_REASON) -> None:
        """The episode ended (risk back below 'off'): resolve its alert if a nurse acknowledged it, so
        the next episode of that kind can alert (one open alert per patient and kind)."""
        try:
            await self._durably("closing an episode", _resolve_if_acknowledged, alert_id, reason)
        except repository.AlertNotFound:
            pass

    async def open_alert_ids(self, alert_ids: Collection[str]) -> set[str]:
        """Those of ``alert_ids`` still open in the database (the others were resolved)."""
        return await self._durably("reading open alerts", repository.open_alert_ids, alert_ids)

    async def store_shadow_batch(
        self, scores: list[schemas.Score], alerts: list[schemas.Alert], closed: dict[str, float]
    ) -> None:
        """The shadow agent's batch: its scores, the episodes it opened and closed (one transaction)."""
        await self._durably("storing shadow scores", shadow.store_batch, scores, alerts, closed)

    async def record_served_model(self, model: str, role: str, thresholds: Mapping[str, Thresholds]) -> None:
        """What ``model`` alerts at (per kind, the 'on' threshold), for the shadow report."""
        ons = {kind: th.on for kind, th in thresholds.items()}
        await self._durably("recording the served model", shadow.record_served_model, model, role, ons)

    async def record_drift(self, rows: list[dict]) -> None:
        """The worker's drift counts (``streams/drift.py``), one transaction per flush."""
        if rows:
            await self._durably("storing drift counts", drift_counts.record, rows)

    async def unit_thresholds(self, model: str) -> dict[tuple[str, str], float]:
        """Per (unit, kind), the active unit threshold for ``model``."""
        return await self._durably("reading unit thresholds", unit_thresholds.active, model)

    async def model_roles(self) -> dict[str, str]:
        """The live and shadow models the roles table sets (``storage/model_roles.py``)."""
        return await self._durably("reading model roles", model_roles.current)

    async def record_feeds(self, feeds: data_feeds.FeedTimes) -> None:
        """When each patient's data last arrived (``storage/data_feeds.py``), one statement a chunk."""
        if feeds:
            await self._durably("storing data liveness", data_feeds.record, feeds)
