"""The FastAPI application: ``create_app(settings)``.

Public: ``/`` and ``/patients/{patient_id}`` (HTML shells of the board, no patient data),
``/static/*``, ``/healthz``. Everything else needs a bearer token (see :mod:`icuwatch.api.auth`),
``/openapi.json`` and ``/docs`` included (header or ``?token=``; off with ``api_docs=false``).
Every response carries a Content-Security-Policy and the usual hardening headers; a request body
over ``api_max_body_bytes`` is refused with 413 before anything parses it.

While the app runs, a background task escalates alerts left unacknowledged for
``alert_escalate_after_s`` every ``api_escalate_interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from pathlib import Path
from typing import Any, AsyncIterator, Optional
from urllib.parse import quote

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from icuwatch.api import feeds_routes, routes, stream
from icuwatch.api.auth import OPERATOR_ROLES, Principal, current_user_header_or_query, require_roles
from icuwatch.api.metrics import make_registry
from icuwatch.core.settings import Settings, get_settings
from icuwatch.storage import db, lifecycle

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"

_PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>icuwatch</title></head>
<body><h1>icuwatch</h1><p>The board ({page}) is not installed. The API is at <a href="/docs">/docs</a>.</p>
<p>Not for clinical use.</p></body></html>
"""


def escalate_once(app: FastAPI) -> list[str]:
    """Escalate overdue alerts now; returns the escalated alert ids."""
    with app.state.sessions.begin() as s:
        return lifecycle.escalate_overdue(s, after_s=app.state.settings.alert_escalate_after_s)


async def _escalation_loop(app: FastAPI, interval_s: float) -> None:
    while True:
        try:
            ids = await run_in_threadpool(escalate_once, app)
            if ids:
                log.warning("escalated %d unacknowledged alert(s)", len(ids))  # ids carry patient ids: not logged
        except Exception:  # keep escalating after a transient database error
            log.exception("escalation pass failed")
        await asyncio.sleep(interval_s)


async def _fhir_push_loop(app: FastAPI, interval_s: float = 2.0) -> None:
    """With ``ICUWATCH_FHIR_ENDPOINT`` set: every alert change (raise, acknowledge, resolve, escalate)
    goes to the EHR as a FHIR transaction Bundle (conditional updates, so re-sends never duplicate).
    The cursor starts at the app's start time: older changes were pushed by the previous run."""
    from datetime import datetime, timezone

    from icuwatch.interfaces.fhir_push import FhirPusher, changed_alert_bundles

    pusher = FhirPusher(app.state.settings)
    system = app.state.settings.fhir_patient_identifier_system
    await pusher.start()
    cursor: tuple = (datetime.now(timezone.utc), None)
    try:
        while True:
            try:
                with app.state.sessions() as s:
                    bundles, cursor = await run_in_threadpool(changed_alert_bundles, s, *cursor, patient_system=system)
                for bundle in bundles:
                    pusher.submit(bundle)
            except Exception:
                log.exception("FHIR push pass failed")
            await asyncio.sleep(interval_s)
    finally:
        await pusher.stop()


def _page(name: str) -> Response:
    path = STATIC_DIR / name
    if path.is_file():
        return FileResponse(path, media_type="text/html", headers={"Cache-Control": "no-cache"})
    return HTMLResponse(_PLACEHOLDER.format(page=name))


class RedactTokenFilter(logging.Filter):
    """Blanks ``token=...`` in access-log lines (the SSE stream's credential rides in its URL)."""

    _pattern = re.compile(r"(?<=[?&]token=)[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "token=" in a for a in record.args):
            record.args = tuple(self._pattern.sub("***", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str) and "token=" in record.msg:
            record.msg = self._pattern.sub("***", record.msg)
        return True


def redact_tokens_in_access_log(logger_name: str = "uvicorn.access") -> None:
    """Install :class:`RedactTokenFilter` on the access logger (once)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, RedactTokenFilter) for f in logger.filters):
        logger.addFilter(RedactTokenFilter())


class NoStoreMiddleware:
    """``Cache-Control: no-store`` on ``/api/*`` and ``/metrics``: patient data is never cached.

    Plain ASGI (not ``BaseHTTPMiddleware``), so the SSE stream passes through untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(("/api/", "/metrics")):
            await self.app(scope, receive, send)
            return

        async def send_no_store(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                message = {**message, "headers": headers + [(b"cache-control", b"no-store")]}
            await send(message)

        await self.app(scope, receive, send_no_store)


CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
"""The board's pages load only their own scripts (no inline script). Inline styles stay allowed:
the patient page's legend uses ``style=`` attributes."""
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: https:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
"""Swagger UI (``/docs``) is an inline script plus its bundle from the CDN."""


class SecurityHeadersMiddleware:
    """CSP, ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy:
    no-referrer`` (the stream's URL carries a token) on every HTTP response. Plain ASGI."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = DOCS_CSP if scope["path"] == "/docs" else CSP
        extra = [
            (b"content-security-policy", csp.encode()),
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
        ]
        names = {k for k, _ in extra}

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": headers + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimitMiddleware:
    """413 for a request body over ``max_bytes``, by its Content-Length or, chunked, as it arrives.

    The body is read here (API bodies are small) and handed on whole, so nothing downstream ever
    sees more than ``max_bytes``; after it, ``receive`` is the server's again (disconnects)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Any, receive: Any, send: Any) -> None:
        response = JSONResponse({"detail": f"request body over {self.max_bytes} bytes"}, status_code=413)
        await response(scope, receive, send)


def create_app(settings: Optional[Settings] = None, *, escalate: bool = True) -> FastAPI:
    """The API on ``settings.database_url`` (the schema must already be migrated).

    ``escalate=False`` leaves out the background escalation task (tests call
    :func:`escalate_once` themselves).
    """
    settings = settings or get_settings()
    redact_tokens_in_access_log()
    engine = db.make_engine(settings.database_url)
    sessions = db.session_factory(engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = []
        if escalate:
            tasks.append(asyncio.create_task(_escalation_loop(app, settings.api_escalate_interval_s)))
        if settings.fhir_endpoint:
            tasks.append(asyncio.create_task(_fhir_push_loop(app)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            engine.dispose()

    app = FastAPI(
        title="icuwatch",
        summary="ICU alert board API. Not for clinical use.",
        version="1",
        lifespan=lifespan,
        openapi_url=None,  # served below, behind a token
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = sessions
    app.state.metrics_registry = make_registry(settings, sessions)

    app.include_router(routes.router)
    app.include_router(stream.router)
    app.include_router(feeds_routes.router)
    from icuwatch.api.fhir_routes import router as fhir_router  # FHIR R4 search (/fhir)

    app.include_router(fhir_router)

    app.add_middleware(NoStoreMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware)  # outermost: a 413 gets the headers too

    if settings.api_docs:

        @app.get("/openapi.json", include_in_schema=False)
        def openapi(_: Principal = Depends(current_user_header_or_query)) -> JSONResponse:
            return JSONResponse(app.openapi())

        @app.get("/docs", include_in_schema=False)
        def docs(who: Principal = Depends(current_user_header_or_query)) -> HTMLResponse:
            """Swagger UI; open it as ``/docs?token=...`` (a browser tab sends no Authorization header)."""
            return get_swagger_ui_html(openapi_url=f"/openapi.json?token={quote(who.token, safe='')}", title="icuwatch")

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics (engineer, admin)",
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE_LATEST: {}}},
            401: {"description": "Missing or invalid bearer token"},
            403: {"description": "Only engineer and admin tokens"},
        },
    )
    def metrics(_: Principal = Depends(require_roles(*OPERATOR_ROLES))) -> Response:
        return Response(generate_latest(app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["operations"], summary="Liveness (no patient data)")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return _page("index.html")

    @app.get("/engineering", include_in_schema=False)
    def engineering_page() -> Response:
        return _page("engineering.html")  # live shadow and drift: its API calls need an engineer or admin token

    @app.get("/patients/{patient_id}", include_in_schema=False)
    def patient_page(patient_id: str) -> Response:
        return _page("patient.html")  # the page reads the id from its URL and fetches with a token

    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    return app
