"""Optional push of alert Bundles to a FHIR R4 server, with bounded retries, never blocking.

Off unless ``ICUWATCH_FHIR_ENDPOINT`` is set (``ICUWATCH_FHIR_TOKEN``: optional bearer token).

* :func:`push_alert` -- ``POST [base]`` of one transaction Bundle from
  :func:`~icuwatch.interfaces.fhir_export.bundle_for_alert`. Connection errors, timeouts, 408,
  429 and 5xx are retried up to ``fhir_push_attempts`` times with exponential backoff (doubling
  from ``fhir_push_backoff_s``, jittered, each delay at most ``fhir_push_backoff_max_s``; a
  ``Retry-After`` in seconds is honoured within that bound); other 4xx are not retried. Returns a
  :class:`PushResult`, never raises for HTTP or network trouble.
* **Idempotent**: every entry of the Bundle is a conditional update ``PUT
  Type?identifier=urn:icuwatch:alert|<alert id>``, so the server creates each resource once and
  replaces it afterwards -- a retry after a lost response, a redelivered alert, or a second push
  never duplicates, and pushing again after acknowledge/resolve updates the Flag/DetectedIssue.
* :class:`FhirPusher` -- what the worker or the API calls: ``submit(bundle)`` /
  ``submit_alert(alert, score)`` only enqueue (bounded queue, drop-oldest, counted) and return at
  once; one background task pushes in order. Start it in the running event loop (``await
  pusher.start()``), stop it with ``await pusher.stop()``.
* :func:`changed_alert_bundles` -- the database-driven alternative: Bundles of the alerts changed
  since a cursor (raise, acknowledge, resolve, escalate), for a periodic background task.

The HTTP client is aiohttp (already installed with faust-streaming).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, Callable, Optional

import aiohttp
from sqlalchemy.orm import Session

from icuwatch.core.settings import Settings
from icuwatch.interfaces import fhir_export as fx
from icuwatch.storage import lifecycle

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass
class PushResult:
    ok: bool
    status: Optional[int] = None
    """HTTP status of the last attempt (None: no response, or push disabled)."""
    attempts: int = 0
    error: Optional[str] = None
    response: Any = None
    """The server's response body (a transaction-response Bundle) when JSON."""
    skipped: bool = False
    """True when no endpoint is configured (nothing sent)."""


def backoff_delay(retry: int, settings: Settings, retry_after: Optional[float] = None) -> float:
    """Delay before retry number ``retry`` (1-based): ``backoff_s * 2**(retry-1)`` with +-20 %
    jitter, or the server's ``Retry-After``; never more than ``backoff_max_s``."""
    if retry_after is not None:
        d = retry_after
    else:
        d = settings.fhir_push_backoff_s * (2 ** (retry - 1)) * random.uniform(0.8, 1.2)
    return max(0.0, min(d, settings.fhir_push_backoff_max_s))


def _retry_after(headers: Any) -> Optional[float]:
    v = headers.get("Retry-After") if headers is not None else None
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None  # an HTTP date: use the normal backoff


def _headers(settings: Settings, bundle: dict[str, Any]) -> dict[str, str]:
    h = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    if settings.fhir_token:
        h["Authorization"] = f"Bearer {settings.fhir_token}"
    ident = (bundle.get("identifier") or {}).get("value")
    if ident:
        h["X-Request-Id"] = str(ident)  # the alert id, for tracing on the server side
    return h


async def push_alert(
    bundle: dict[str, Any],
    settings: Settings,
    *,
    session: Optional[aiohttp.ClientSession] = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> PushResult:
    """POST a transaction Bundle to ``settings.fhir_endpoint`` with bounded retries.

    ``session``: an aiohttp session to reuse (one is made and closed otherwise).
    """
    if not settings.fhir_endpoint:
        return PushResult(ok=False, skipped=True, error="ICUWATCH_FHIR_ENDPOINT not set")
    if bundle.get("type") != "transaction":
        raise ValueError("push a transaction Bundle (bundle_for_alert's default)")
    own = session is None
    if own:
        session = aiohttp.ClientSession()
    url = settings.fhir_endpoint.rstrip("/")
    headers = _headers(settings, bundle)
    timeout = aiohttp.ClientTimeout(total=settings.fhir_push_timeout_s)
    attempts = max(1, settings.fhir_push_attempts)
    result = PushResult(ok=False)
    try:
        for attempt in range(1, attempts + 1):
            result.attempts = attempt
            retry_after = None
            try:
                async with session.post(url, json=bundle, headers=headers, timeout=timeout) as r:
                    result.status = r.status
                    text = await r.text()
                    try:
                        result.response = await r.json(content_type=None) if text else None
                    except ValueError:
                        result.response = text
                    if 200 <= r.status < 300:
                        result.ok, result.error = True, None
                        return result
                    result.error = f"HTTP {r.status}: {text[:200]}"
                    if r.status not in RETRY_STATUSES:
                        return result
                    retry_after = _retry_after(r.headers)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                result.status = None
                result.error = f"{type(exc).__name__}: {exc}"
            if attempt < attempts:
                delay = backoff_delay(attempt, settings, retry_after)
                log.info("FHIR push failed (%s), retry %d in %.2f s", result.error, attempt, delay)
                await sleep(delay)
        return result
    finally:
        if own:
            await session.close()


def push_alert_sync(bundle: dict[str, Any], settings: Settings) -> PushResult:
    """:func:`push_alert` from synchronous code (a CLI, a thread): runs its own event loop."""
    return asyncio.run(push_alert(bundle, settings))


class FhirPusher:
    """Background pusher: enqueue without waiting, push in order in one task.

    ``submit`` never blocks and never raises for a full queue: the oldest waiting Bundle is
    dropped (``stats["dropped"]``). With no endpoint configured everything is a no-op.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enabled = bool(settings.fhir_endpoint)
        self._queue: collections.deque[dict[str, Any]] = collections.deque(maxlen=max(1, settings.fhir_push_queue))
        self._wake = asyncio.Event()
        self._task: Optional[asyncio.Task[None]] = None
        self._session: Optional[aiohttp.ClientSession] = None
        self.stats = {"submitted": 0, "pushed": 0, "failed": 0, "dropped": 0}
        self.last_error: Optional[str] = None

    def submit(self, bundle: dict[str, Any]) -> bool:
        """Queue a transaction Bundle; False when pushing is off."""
        if not self.enabled:
            return False
        if len(self._queue) == self._queue.maxlen:
            self.stats["dropped"] += 1
        self._queue.append(bundle)
        self.stats["submitted"] += 1
        self._wake.set()
        return True

    def submit_alert(self, alert: Any, score: Any = None) -> bool:
        """Build the alert's Bundle and queue it (see :func:`fx.bundle_for_alert`)."""
        if not self.enabled:
            return False
        try:
            bundle = fx.bundle_for_alert(alert, score, patient_system=self.settings.fhir_patient_identifier_system)
        except Exception:  # a bad alert must not reach the caller's stream
            log.exception("could not build a FHIR Bundle for an alert")
            self.stats["failed"] += 1
            return False
        return self.submit(bundle)

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        if self.enabled and self._task is None:
            self._session = aiohttp.ClientSession()
            self._task = asyncio.create_task(self._run(), name="fhir-push")

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            bundle = self._queue.popleft()
            try:
                r = await push_alert(bundle, self.settings, session=self._session)
            except Exception as exc:  # keep the loop alive whatever happens
                log.exception("FHIR push crashed")
                r = PushResult(ok=False, error=str(exc))
            if r.ok:
                self.stats["pushed"] += 1
            else:
                self.stats["failed"] += 1
                self.last_error = r.error
                log.warning("FHIR push gave up after %d attempt(s): %s", r.attempts, r.error)

    async def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until the queue is empty and the current push has finished (True) or timeout."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        done = self.stats["pushed"] + self.stats["failed"]
        target = self.stats["submitted"] - self.stats["dropped"]
        while done < target and loop.time() < end:
            await asyncio.sleep(0.02)
            done = self.stats["pushed"] + self.stats["failed"]
            target = self.stats["submitted"] - self.stats["dropped"]
        return done >= target

    async def stop(self, drain_s: float = 5.0) -> None:
        if self._task is None:
            return
        await self.drain(drain_s)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None


def changed_alert_bundles(
    session: Session,
    since: Optional[datetime],
    after_id: Optional[str] = None,
    limit: int = 200,
    *,
    patient_system: str,
) -> tuple[list[dict[str, Any]], tuple[Optional[datetime], Optional[str]]]:
    """Transaction Bundles of the alerts changed after the cursor ``(since, after_id)``, oldest
    change first, and the next cursor. For a periodic task: ``pusher.submit`` each Bundle.
    ``patient_system``: ``settings.fhir_patient_identifier_system`` (the subjects' identifier system)."""
    rows = lifecycle.alerts_changed_since(session, since, limit, after_id=after_id)
    bundles = [fx.bundle_for_alert(a, fx.score_for_alert(session, a), patient_system=patient_system) for a in rows]
    cursor = (rows[-1].updated_at, rows[-1].alert_id) if rows else (since, after_id)
    return bundles, cursor
