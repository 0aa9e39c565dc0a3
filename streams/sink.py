"""The worker's way into the database: SQLAlchemy calls run in a thread so the event loop keeps
consuming; scores are written in batches, alerts one by one before they are published."""

from __future__ import annotations

import asyncio
import logging

from icuwatch.storage import db, repository
from icuwatch.streams import schemas

log = logging.getLogger(__name__)


class StorageSink:
    def __init__(self, url: str) -> None:
        self.url = url
        self._sessions = None
        self._scores: list[schemas.Score] = []
        self.scores_stored = 0

    @property
    def sessions(self):
        if self._sessions is None:
            self._sessions = db.session_factory(db.make_engine(self.url))
        return self._sessions

    def _run(self, fn, *args):
        with self.sessions() as session, session.begin():
            return fn(session, *args)

    async def upsert_patient(self, adt: schemas.Adt) -> None:
        await asyncio.to_thread(self._run, repository.upsert_patient, adt)

    async def store_alert(self, alert: schemas.Alert) -> bool:
        return await asyncio.to_thread(self._run, repository.add_alert, alert)

    def queue_score(self, score: schemas.Score) -> None:
        self._scores.append(score)

    async def flush_scores(self) -> None:
        if not self._scores:
            return
        batch, self._scores = self._scores, []
        try:
            self.scores_stored += await asyncio.to_thread(self._run, repository.add_scores, batch)
        except Exception as exc:
            log.error("storing %d scores failed (%s); will retry", len(batch), type(exc).__name__)
            self._scores[:0] = batch
