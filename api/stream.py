"""``GET /api/stream``: the live alert board as server-sent events.

On connect the client gets one ``event: snapshot`` whose data is the JSON array of open alerts
(raised or acknowledged); from then on an ``event: alert`` with one Alert object whenever an
alert is raised or changes state (acknowledged, escalated, resolved), or an open alert's current
risk (the patient's newest score) changed. A ``: keep-alive`` comment goes out when nothing
happened for ``api_stream_keepalive_s``. Once the caller's token is revoked or expires, an
``event: revoked`` and the end of the stream (checked every poll).

The database is the source of truth: every ``api_stream_poll_s`` the stream asks for alerts whose
``updated_at`` is newer than its cursor. The cursor trails the newest change seen by an overlap
window, because a writer stamps ``updated_at`` before it commits and a slow transaction can
become visible after a later one; changes already sent are recognised by (alert id,
``updated_at``, state) and not sent twice. A new score does not change its patients' alerts, so
every ``CURRENT_EVERY_POLLS`` polls the stream re-reads the open alerts and sends those whose
current risk moved since it last sent them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import AsyncIterator, Optional

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from icuwatch.api.auth import Principal, current_user_header_or_query, still_valid
from icuwatch.api.routes import alerts_out
from icuwatch.storage import lifecycle
from icuwatch.storage import repository as repo

router = APIRouter(prefix="/api", tags=["api"])
log = logging.getLogger(__name__)

OVERLAP = timedelta(seconds=10)
SNAPSHOT_LIMIT = 1000
PAGE = 200
CURRENT_EVERY_POLLS = 10
"""Open alerts' current risk is re-read every this many polls (10 s at the default poll)."""


def _sse(event: str, data: object, id: Optional[str] = None) -> str:
    lines = [f"event: {event}"]
    if id is not None:
        lines.append(f"id: {id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


def _snapshot(sessions) -> tuple[list[dict], dict[str, tuple]]:
    with sessions.begin() as s:
        rows = []
        for state in ("raised", "acknowledged"):
            rows += repo.list_alerts(s, state=state, limit=SNAPSHOT_LIMIT)
        rows.sort(key=lambda a: a.event_time, reverse=True)
        out = alerts_out(s, rows)
    seen = {a.alert_id: (a.updated_at, a.state) for a in rows}
    return [a.model_dump(mode="json") for a in out], seen


def _changed(sessions, since: datetime) -> tuple[list[dict], list[tuple]]:
    """Every alert changed after ``since``, oldest change first (paged by (updated_at, alert_id))."""
    rows: list = []
    with sessions.begin() as s:
        after: Optional[tuple[datetime, str]] = None
        while True:
            page = lifecycle.alerts_changed_since(
                s, after[0] if after else since, limit=PAGE, after_id=after[1] if after else None
            )
            rows += page
            if len(page) < PAGE:
                break
            after = (page[-1].updated_at, page[-1].alert_id)
        out = alerts_out(s, rows)
    keys = [(a.alert_id, a.updated_at, a.state) for a in rows]
    return [a.model_dump(mode="json") for a in out], keys


def _current(alert: dict) -> tuple:
    return alert.get("current_at"), alert.get("current_risk"), alert.get("current_news2")


async def alert_events(
    request: Request, poll_s: float, keepalive_s: float, who: Optional[Principal] = None
) -> AsyncIterator[str]:
    """With ``who``, the caller's token is re-checked every poll: once it is revoked or expired the
    stream sends ``event: revoked`` and ends (the browser's reconnect then gets a 401)."""
    sessions = request.app.state.sessions
    cursor = datetime.now(timezone.utc) - OVERLAP
    snapshot, sent = await run_in_threadpool(_snapshot, sessions)
    shown = {a["alert_id"]: _current(a) for a in snapshot}  # per open alert, the current risk last sent
    yield "retry: 3000\n\n"
    yield _sse("snapshot", snapshot)
    last_out = time.monotonic()
    polls = 0
    while not await request.is_disconnected():
        await asyncio.sleep(poll_s)
        polls += 1
        if who is not None:
            try:
                valid = await run_in_threadpool(still_valid, request, who)
            except Exception:  # database briefly unavailable: check again next poll
                log.warning("alert stream token check failed", exc_info=True)
            else:
                if not valid:
                    yield _sse("revoked", {"detail": "token expired or revoked"})
                    return
        if polls % CURRENT_EVERY_POLLS == 0:
            try:
                open_now, _ = await run_in_threadpool(_snapshot, sessions)
            except Exception:  # database briefly unavailable: refresh next time
                log.warning("alert stream refresh failed", exc_info=True)
            else:
                for alert in open_now:
                    if alert["alert_id"] in shown and shown[alert["alert_id"]] != _current(alert):
                        yield _sse("alert", alert)
                        last_out = time.monotonic()
                shown = {a["alert_id"]: _current(a) for a in open_now}
        try:
            alerts, keys = await run_in_threadpool(_changed, sessions, cursor)
        except Exception:  # database briefly unavailable: keep the connection, try again next poll
            log.warning("alert stream poll failed", exc_info=True)
            alerts, keys = [], []
        newest = cursor
        for alert, (alert_id, updated_at, state) in zip(alerts, keys):
            newest = max(newest, updated_at - OVERLAP)
            if sent.get(alert_id) == (updated_at, state):
                continue
            sent[alert_id] = (updated_at, state)
            shown[alert_id] = _current(alert)
            yield _sse("alert", alert, id=f"{alert_id}@{updated_at.isoformat()}")
            last_out = time.monotonic()
        if newest > cursor:
            cursor = newest
            # Forget changes older than the cursor: the query cannot return them again.
            sent = {k: v for k, v in sent.items() if v[0] > cursor}
        if time.monotonic() - last_out >= keepalive_s:
            yield ": keep-alive\n\n"
            last_out = time.monotonic()


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`event: snapshot` (JSON array of open Alerts), then `event: alert` (one Alert) per change",
        },
        401: {"description": "Missing or invalid token (header or ?token=)"},
    },
    summary="Live alerts (server-sent events)",
)
async def stream(request: Request, who: Principal = Depends(current_user_header_or_query)) -> StreamingResponse:
    settings = request.app.state.settings
    return StreamingResponse(
        alert_events(request, settings.api_stream_poll_s, settings.api_stream_keepalive_s, who),
        media_type="text/event-stream",
        headers={"X-Accel-Buffering": "no"},
    )
