"""Data liveness for the board and the patient page: when each patient's data last arrived and
which feeds are silent, measured against now (``storage/data_feeds.py``; the worker writes the
table every ``liveness_check_s``, so an age is at most that much too young)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from icuwatch.api import routes
from icuwatch.api.auth import Principal, current_user
from icuwatch.storage import data_feeds

router = APIRouter(prefix="/api", tags=["api"])
_RESPONSES: dict[int | str, dict[str, Any]] = {401: {"description": "Missing or invalid bearer token"}}


class Feed(BaseModel):
    modality: str
    last_received_at: datetime
    """When its newest record was sent (the Kafka timestamp: the sender's clock)."""
    last_event_time: Optional[datetime] = None
    """Event time of its newest data."""
    silent_s: float
    """Seconds from ``last_received_at`` to now."""
    silence_after_s: float
    """The modality's threshold (``ICUWATCH_SILENCE_<MODALITY>_S``; 0: not watched)."""
    silent: bool
    """Watched and silent longer than its threshold."""


class SilentFeed(Feed):
    patient_id: str
    unit: Optional[str] = None
    bed: Optional[str] = None


def _out(feed: data_feeds.Feed, after: dict[str, float]) -> dict[str, Any]:
    return {
        "modality": feed.modality,
        "last_received_at": feed.last_received_at,
        "last_event_time": feed.last_event_time,
        "silent_s": round(feed.silent_s, 1),
        "silence_after_s": after.get(feed.modality, 0.0),
        "silent": feed.silent,
    }


@router.get(
    "/patients/{patient_id}/feeds",
    response_model=list[Feed],
    responses=_RESPONSES,
    summary="When each of a patient's data feeds last arrived",
)
def patient_feeds(request: Request, patient_id: str, _: Principal = Depends(current_user)) -> list[Feed]:
    """One entry per modality that ever arrived; empty for a patient with no data."""
    after = request.app.state.settings.silence_after_s()
    with request.app.state.sessions.begin() as s:
        feeds = data_feeds.of_patient(s, patient_id, datetime.now(timezone.utc), after)
    return [Feed.model_validate(_out(f, after)) for f in feeds]


@router.get("/feeds/silent", response_model=list[SilentFeed], responses=_RESPONSES, summary="Silent data feeds")
def silent_feeds(
    request: Request, limit: int = Query(500, ge=1, le=5000), _: Principal = Depends(current_user)
) -> list[SilentFeed]:
    """Feeds of patients not discharged that are silent past their modality's threshold, longest first."""
    after = request.app.state.settings.silence_after_s()
    with request.app.state.sessions.begin() as s:
        found = data_feeds.silent(s, datetime.now(timezone.utc), after, limit)
        patients = routes._patients(s, (pid for pid, _ in found))
        out = []
        for pid, feed in found:
            p = patients.get(pid)
            out.append(
                SilentFeed.model_validate(
                    {**_out(feed, after), "patient_id": pid, "unit": p.unit if p else None, "bed": p.bed if p else None}
                )
            )
    return out
