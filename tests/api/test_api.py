"""HTTP API: authentication and roles, alerts, timeline, quality, metrics, the SSE stream, CLI.

Each test runs against a fresh SQLite file and a fresh PostgreSQL schema (same scheme as
``test_storage``: skipped only when nothing listens on 127.0.0.1:5432). Routes are exercised with
FastAPI's TestClient; the SSE stream with a real uvicorn server on a free port and an httpx
streaming request whose reads time out, so the test cannot hang.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import httpx
import pytest

with warnings.catch_warnings():  # "install httpx2 instead": httpx is what the project pins
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from icuwatch.api.app import RedactTokenFilter, create_app, escalate_once
from icuwatch.core import schemas
from icuwatch.core.settings import Settings
from icuwatch.storage import db
from icuwatch.storage import repository as repo
from icuwatch.storage.models import Alert

NOW = time.time()

PROTECTED = [
    ("GET", "/api/me"),
    ("GET", "/api/alerts"),
    ("POST", "/api/alerts/p1:deterioration:1/acknowledge"),
    ("POST", "/api/alerts/p1:deterioration:1/resolve"),
    ("GET", "/api/alerts/p1:deterioration:1/events"),
    ("GET", "/api/patients/p1/timeline"),
    ("GET", "/api/quality"),
    ("GET", "/api/stream"),
    ("GET", "/metrics"),
]
PUBLIC = ["/", "/patients/p1", "/healthz"]
DOCS = ["/openapi.json", "/docs"]
"""Public once; now behind a token (header or ``?token=``), and off with ``api_docs=false``."""
REASON = {"reason": "reviewed at the bedside"}
ALL_ROLES = ("nurse", "physician", "engineer", "admin")
ROUTE_ROLES = {
    ("GET", "/api/me"): ALL_ROLES,
    ("GET", "/api/alerts"): ALL_ROLES,
    ("POST", "/api/alerts/{alert_id}/acknowledge"): ("nurse", "physician"),
    ("POST", "/api/alerts/{alert_id}/resolve"): ("nurse", "physician"),
    ("GET", "/api/alerts/{alert_id}/events"): ALL_ROLES,
    ("GET", "/api/patients/{patient_id}/timeline"): ALL_ROLES,
    ("GET", "/api/patients/{patient_id}/feeds"): ALL_ROLES,
    ("GET", "/api/feeds/silent"): ALL_ROLES,
    ("GET", "/api/quality"): ALL_ROLES,
    ("GET", "/api/stream"): ALL_ROLES,
    ("GET", "/fhir/RiskAssessment"): ALL_ROLES,
    ("GET", "/fhir/Flag"): ALL_ROLES,
    ("GET", "/fhir/DetectedIssue"): ALL_ROLES,
    ("GET", "/metrics"): ("engineer", "admin"),
    ("GET", "/api/shadow"): ("engineer", "admin"),
    ("GET", "/api/drift"): ("engineer", "admin"),
}
"""Every documented route but ``/healthz``, and the roles that may call it."""


# --------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def url(url: str) -> str:
    """The conftest's empty database (SQLite or PostgreSQL), migrated."""
    db.upgrade(url)
    return url


@pytest.fixture
def settings(url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=url, state_dir=tmp_path / "state", api_stream_poll_s=0.2, api_stream_keepalive_s=1.0)


@pytest.fixture
def app(settings: Settings):
    return create_app(settings, escalate=False)


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def sessions(app):
    return app.state.sessions


@pytest.fixture
def tokens(sessions) -> dict[str, str]:
    """One token per role, user named after the role."""
    from icuwatch.storage.tokens import create_token

    with sessions.begin() as s:
        return {role: create_token(s, f"{role}-1", role) for role in ("nurse", "physician", "engineer", "admin")}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------------------------------- helpers


def admit(sessions, pid: str, unit: str, bed: str, t: float = NOW - 7200) -> None:
    with sessions.begin() as s:
        repo.upsert_patient(s, schemas.Adt(patient_id=pid, event_time=t, event="admit", unit=unit, bed=bed))


def raise_alert(
    sessions,
    pid: str = "p1",
    kind: str = "deterioration",
    t: float = NOW - 600,
    raised_at: float | None = None,
    risk: float = 0.8,
    news2: int = 8,
) -> str:
    alert_id = f"{pid}:{kind}:{int(t)}"
    with sessions.begin() as s:
        repo.add_alert(
            s,
            schemas.Alert(
                patient_id=pid,
                event_time=t + 300,
                alert_id=alert_id,
                kind=kind,
                risk=risk,
                news2=news2,
                qsofa=2,
                model="early_warning",
                source="triton",
                episode_start=t,
                raised_at=raised_at or t + 301,
            ),
        )
    return alert_id


def add_score(
    sessions, pid: str, t: float, risk: float = 0.4, source: str = "triton", news2: int = 5, sepsis: float = 0.1
) -> None:
    with sessions.begin() as s:
        repo.add_scores(
            s,
            [
                schemas.Score(
                    patient_id=pid,
                    event_time=t,
                    model="early_warning",
                    source=source,
                    deterioration_risk=risk,
                    sepsis_risk=sepsis,
                    news2=news2,
                    qsofa=1,
                    staleness_s={"vitals": 1.0, "labs": None},
                    scored_at=t + 1,
                )
            ],
        )


# ------------------------------------------------------------------------------------------- auth


def test_every_patient_route_needs_a_valid_token(client, sessions, tokens):
    admit(sessions, "p1", "ICU-SECRET-UNIT", "bed-7")
    raise_alert(sessions, "p1", t=1.0e9 + 1)  # an id that differs from the one in PROTECTED
    for method, path in PROTECTED:
        r = client.request(method, path)
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        r = client.request(method, path, headers=bearer("not-a-token"))
        assert r.status_code == 401, (method, path, r.status_code)
        r = client.request(method, path, params={"token": "not-a-token"})
        assert r.status_code == 401, (method, path, r.status_code)
    # ?token= is accepted by the stream only (EventSource cannot set headers)
    assert client.get("/api/me", params={"token": tokens["nurse"]}).status_code == 401
    for path in PUBLIC:
        r = client.get(path)
        assert r.status_code == 200, (path, r.status_code)
        assert "ICU-SECRET-UNIT" not in r.text and "bed-7" not in r.text
    assert client.get("/api/me", headers=bearer(tokens["nurse"])).json() == {"user": "nurse-1", "role": "nurse"}
    assert client.get("/api/me", headers={"Authorization": f"Basic {tokens['nurse']}"}).status_code == 401


def test_every_route_refuses_no_token_a_bad_token_and_the_wrong_role(client, sessions, tokens):
    """Driven by the OpenAPI document, so a route added later without an entry here fails."""
    spec = client.get("/openapi.json", headers=bearer(tokens["nurse"])).json()
    documented = {(m.upper(), path) for path, ops in spec["paths"].items() for m in ops}
    assert documented - {("GET", "/healthz")} == set(ROUTE_ROLES)
    alert_id = raise_alert(sessions, "p1")
    for (method, template), allowed in ROUTE_ROLES.items():
        path = template.format(alert_id=alert_id, patient_id="p1")
        params = {"patient": "p1"} if path.startswith("/fhir/") else None
        assert client.request(method, path, params=params).status_code == 401, path
        assert client.request(method, path, params=params, headers=bearer("wrong")).status_code == 401, path
        for role in set(ALL_ROLES) - set(allowed):
            r = client.request(method, path, params=params, headers=bearer(tokens[role]))
            assert r.status_code == 403, (path, role, r.status_code)
    with sessions.begin() as s:
        assert s.get(Alert, alert_id).state == "raised"


def test_roles(client, sessions, tokens):
    a = raise_alert(sessions, "p1")
    b = raise_alert(sessions, "p2")
    for role in ("nurse", "physician", "engineer", "admin"):
        h = bearer(tokens[role])
        assert client.get("/api/me", headers=h).json()["role"] == role
        assert client.get("/api/alerts", headers=h).status_code == 200
        assert client.get("/api/quality", headers=h).status_code == 200
        assert client.get("/api/patients/p1/timeline", headers=h).status_code == 200
    for role in ("engineer", "admin"):
        h = bearer(tokens[role])
        assert client.post(f"/api/alerts/{a}/acknowledge", headers=h).status_code == 403
        assert client.post(f"/api/alerts/{a}/resolve", headers=h).status_code == 403
        assert client.get("/metrics", headers=h).status_code == 200
    for role in ("nurse", "physician"):
        assert client.get("/metrics", headers=bearer(tokens[role])).status_code == 403
    with sessions.begin() as s:
        assert s.get(Alert, a).state == "raised"  # the 403s changed nothing
    assert client.post(f"/api/alerts/{a}/acknowledge", headers=bearer(tokens["physician"])).status_code == 200
    assert client.post(f"/api/alerts/{b}/resolve", headers=bearer(tokens["nurse"]), json=REASON).status_code == 200


# ----------------------------------------------------------------------------------------- alerts


def test_acknowledge_resolve_and_audit_trail(client, sessions, tokens):
    admit(sessions, "p1", "ICU-A", "3")
    a = raise_alert(sessions, "p1")
    nurse, doc = bearer(tokens["nurse"]), bearer(tokens["physician"])

    before = datetime.now(timezone.utc)
    r = client.post(f"/api/alerts/{a}/acknowledge", headers=nurse, json={"comment": "seen, fluids started"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "acknowledged" and body["acknowledged_by"] == "nurse-1"
    assert body["ack_comment"] == "seen, fluids started"
    assert (body["unit"], body["bed"]) == ("ICU-A", "3")
    with sessions.begin() as s:  # written to the database: who and when
        row = s.get(Alert, a)
        assert (row.state, row.acknowledged_by, row.ack_comment) == ("acknowledged", "nurse-1", "seen, fluids started")
        assert before - timedelta(seconds=1) <= row.acknowledged_at <= datetime.now(timezone.utc)
    assert datetime.fromisoformat(body["acknowledged_at"]) == row.acknowledged_at

    r = client.post(f"/api/alerts/{a}/acknowledge", headers=doc)
    assert r.status_code == 409
    assert client.post("/api/alerts/nope/acknowledge", headers=nurse).status_code == 404
    assert client.post("/api/alerts/nope/resolve", headers=nurse, json=REASON).status_code == 404
    assert client.get("/api/alerts/nope/events", headers=nurse).status_code == 404

    # A resolve needs a reason: none, an empty or a blank one is refused and changes nothing.
    for body in (None, {}, {"reason": ""}, {"reason": "  \n "}, {"reason": 3}, {"reason": "x" * 2001}):
        r = client.post(f"/api/alerts/{a}/resolve", headers=doc, json=body)
        assert r.status_code == 422, (body, r.status_code)
    with sessions.begin() as s:
        assert s.get(Alert, a).state == "acknowledged"
    r = client.post(f"/api/alerts/{a}/resolve", headers=doc, json={"reason": " sepsis ruled out "})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "resolved" and r.json()["resolved_by"] == "physician-1"
    with sessions.begin() as s:
        row = s.get(Alert, a)
        assert (row.state, row.resolved_by) == ("resolved", "physician-1") and row.resolved_at is not None
    assert client.post(f"/api/alerts/{a}/acknowledge", headers=nurse).status_code == 409

    events = client.get(f"/api/alerts/{a}/events", headers=nurse).json()
    assert [(e["action"], e["actor"]) for e in events][-2:] == [
        ("acknowledged", "nurse-1"),
        ("resolved", "physician-1"),
    ]
    assert events[-1]["detail"] == {"from_state": "acknowledged", "reason": "sepsis ruled out"}
    # resolving again changes nothing and writes no event
    assert client.post(f"/api/alerts/{a}/resolve", headers=nurse, json={"reason": "again"}).status_code == 200
    assert len(client.get(f"/api/alerts/{a}/events", headers=nurse).json()) == len(events)
    assert events[0]["action"] == "raised"
    assert all(e["alert_id"] == a for e in events)


def test_alert_filters(client, sessions, tokens):
    admit(sessions, "p1", "ICU-A", "1")
    admit(sessions, "p2", "ICU-B", "2")
    a1 = raise_alert(sessions, "p1", "deterioration", t=NOW - 900)
    a2 = raise_alert(sessions, "p1", "sepsis", t=NOW - 800)
    b1 = raise_alert(sessions, "p2", "sepsis", t=NOW - 700)
    h = bearer(tokens["nurse"])
    client.post(f"/api/alerts/{a1}/acknowledge", headers=h)

    def ids(**params):
        r = client.get("/api/alerts", headers=h, params=params)
        assert r.status_code == 200, r.text
        return [x["alert_id"] for x in r.json()]

    assert ids() == [b1, a2, a1]  # newest event time first
    assert ids(state="raised") == [b1, a2]
    assert ids(state="acknowledged") == [a1]
    assert ids(kind="sepsis") == [b1, a2]
    assert ids(unit="ICU-A") == [a2, a1]
    assert ids(unit="ICU-B", kind="sepsis") == [b1]
    assert ids(limit=1) == [b1]
    assert ids(unit="nowhere") == []
    assert client.get("/api/alerts", headers=h, params={"state": "bogus"}).status_code == 422
    alert = client.get("/api/alerts", headers=h, params={"unit": "ICU-B"}).json()[0]
    assert set(alert) == {
        "alert_id",
        "patient_id",
        "kind",
        "risk",
        "news2",
        "qsofa",
        "model",
        "model_version",
        "source",
        "state",
        "event_time",
        "episode_start",
        "raised_at",
        "acknowledged_by",
        "acknowledged_at",
        "ack_comment",
        "resolved_at",
        "resolved_by",
        "escalated_at",
        "escalation_level",
        "unit",
        "bed",
        "admitted",
        "contributions",
        "current_risk",
        "current_news2",
        "current_at",
        "current_model",
        "current_model_version",
    }
    assert alert["contributions"] is None  # raised without contributions (see test_contributions.py)
    assert alert["admitted"] is True  # ADT admitted p2 (test_admission.py: one it did not)
    assert alert["event_time"].endswith("Z") or alert["event_time"].endswith("+00:00")
    assert datetime.fromisoformat(alert["episode_start"]).timestamp() == pytest.approx(NOW - 700, abs=1e-3)


def test_alerts_show_the_current_risk_beside_the_opening_risk(client, sessions, tokens):
    """The defect: a row showed the episode's opening risk (0.66 / NEWS2 7) while the latest score
    was 1.00 / NEWS2 16. Each alert now carries the patient's newest score of its kind."""
    add_score(sessions, "p1", NOW - 900, risk=0.66, news2=7, sepsis=0.2)
    a = raise_alert(sessions, "p1", t=NOW - 960, risk=0.66, news2=7)
    add_score(sessions, "p1", NOW - 300, risk=1.0, news2=16, sepsis=0.35)
    add_score(sessions, "p1", NOW - 600, risk=0.7, news2=9)  # late, older: not the current one
    b = raise_alert(sessions, "p1", kind="sepsis", t=NOW - 1200, risk=0.9)
    c = raise_alert(sessions, "p2", t=NOW - 100, risk=0.55)  # no score stored yet
    h = bearer(tokens["nurse"])
    alerts = {x["alert_id"]: x for x in client.get("/api/alerts", headers=h).json()}
    assert (alerts[a]["risk"], alerts[a]["news2"]) == (0.66, 7)  # opening
    assert (alerts[a]["current_risk"], alerts[a]["current_news2"]) == (1.0, 16)
    assert datetime.fromisoformat(alerts[a]["current_at"]).timestamp() == pytest.approx(NOW - 300, abs=1e-3)
    assert (alerts[b]["risk"], alerts[b]["current_risk"]) == (0.9, 0.35)  # its kind's risk
    assert (alerts[c]["current_risk"], alerts[c]["current_news2"], alerts[c]["current_at"]) == (None, None, None)
    timeline = client.get("/api/patients/p1/timeline", headers=h).json()
    assert {x["alert_id"]: x["current_risk"] for x in timeline["alerts"]} == {a: 1.0, b: 0.35}


def test_timeline_and_quality(client, sessions, tokens):
    admit(sessions, "p1", "ICU-A", "4")
    for i in range(5):
        add_score(sessions, "p1", NOW - 3600 + 300 * i, risk=0.1 * i, source="fallback" if i == 2 else "triton")
    add_score(sessions, "p2", NOW - 3600)
    a = raise_alert(sessions, "p1", t=NOW - 2400)
    h = bearer(tokens["physician"])
    client.post(f"/api/alerts/{a}/acknowledge", headers=bearer(tokens["nurse"]))

    r = client.get("/api/patients/p1/timeline", headers=h)
    assert r.status_code == 200, r.text
    t = r.json()
    assert t["patient"]["patient_id"] == "p1" and t["patient"]["unit"] == "ICU-A"
    assert len(t["scores"]) == 5
    times = [datetime.fromisoformat(s["event_time"]) for s in t["scores"]]
    assert times == sorted(times)
    assert [s["source"] for s in t["scores"]].count("fallback") == 1
    assert t["scores"][0]["staleness"] == {"vitals": 1.0, "labs": None}
    assert set(t["scores"][0]) == {
        "event_time",
        "deterioration_risk",
        "sepsis_risk",
        "news2",
        "qsofa",
        "source",
        "model",
        "model_version",
        "staleness",
        "revision",
        "contributions",
    }
    assert t["scores"][0]["contributions"] is None
    assert [x["alert_id"] for x in t["alerts"]] == [a] and t["alerts"][0]["state"] == "acknowledged"

    since = datetime.fromtimestamp(NOW - 3600 + 599, tz=timezone.utc).isoformat()
    assert len(client.get("/api/patients/p1/timeline", headers=h, params={"since": since}).json()["scores"]) == 3
    assert client.get("/api/patients/nobody/timeline", headers=h).status_code == 404

    q = client.get("/api/quality", headers=h)
    assert q.status_code == 200, q.text
    q = q.json()
    # p1 observed from admission (now - 2 h) to the last score (now - 40 min): 4800 s, one alert
    assert q["patient_days"] == pytest.approx(4800 / 86400)
    assert q["alerts_per_patient_day"] == pytest.approx(86400 / 4800)
    assert q["alerts"] == 1 and q["acknowledged"] == 1
    assert q["median_time_to_ack_s"] == pytest.approx(time.time() - (NOW - 2400 + 301), abs=30)
    assert q["by_state"] == {"raised": 0, "acknowledged": 1, "resolved": 0}
    assert q["by_kind"] == {"deterioration": 1, "sepsis": 0}
    assert q["escalated"] == 0 and q["suppressed"] == 0


def test_escalation_reaches_the_api(client, app, sessions, tokens):
    a = raise_alert(sessions, "p1", t=NOW - 7200, raised_at=NOW - 3600)
    b = raise_alert(sessions, "p2", t=NOW - 60, raised_at=time.time())
    assert escalate_once(app) == [a]
    h = bearer(tokens["nurse"])
    alerts = {x["alert_id"]: x for x in client.get("/api/alerts", headers=h).json()}
    assert alerts[a]["escalation_level"] == 1 and alerts[a]["escalated_at"] is not None
    assert alerts[b]["escalation_level"] == 0 and alerts[b]["escalated_at"] is None
    assert "escalated" in [e["action"] for e in client.get(f"/api/alerts/{a}/events", headers=h).json()]


def test_background_task_escalates(settings, tokens):
    settings = settings.model_copy(update={"api_escalate_interval_s": 0.1, "alert_escalate_after_s": 60.0})
    app = create_app(settings)  # with the escalation task
    a = raise_alert(app.state.sessions, "p1", raised_at=time.time() - 120)
    with TestClient(app) as client:
        deadline = time.monotonic() + 5
        while True:
            alert = client.get("/api/alerts", headers=bearer(tokens["nurse"])).json()[0]
            if alert["escalation_level"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert (alert["alert_id"], alert["escalation_level"]) == (a, 1)


def test_no_store_and_log_redaction(client, tokens):
    assert client.get("/api/me", headers=bearer(tokens["nurse"])).headers["cache-control"] == "no-store"
    assert client.get("/api/alerts").headers["cache-control"] == "no-store"
    assert "no-store" not in client.get("/healthz").headers.get("cache-control", "")
    rec = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/api/stream?token=s3cr3t&x=1", "1.1", 200),
        None,
    )
    assert RedactTokenFilter().filter(rec)
    assert "s3cr3t" not in rec.getMessage() and "token=***&x=1" in rec.getMessage()


# ---------------------------------------------------------------------------------------- metrics


def test_metrics(client, settings, sessions, tokens):
    settings.run_dir.mkdir(parents=True)
    (settings.run_dir / "worker-6066.json").write_text(
        json.dumps(
            {
                "at": time.time(),
                "processed": 120,
                "duplicates": 3,
                "deadlettered": 4,
                "scores_submitted": 11,
                "scores_published": 10,
                "alerts_raised": 1,
                "processed_by_topic": {"icu.vitals": 100, "icu.labs": 20},
                "scorer": {
                    "triton_batches": 2,
                    "triton_rows": 7,
                    "fallback_batches": 1,
                    "fallback_rows": 3,
                    "triton_errors": 1,
                },
                "scores_stored": 10,
                "scores_pending": 0,
                "consumer_lag": {"icu.vitals": {"0": 5, "1": 0}},
                "record_age_s": {"icu.vitals": 1.5},
            }
        )
    )
    (settings.run_dir / "worker-6067.json").write_text("{half-written")
    admit(sessions, "p1", "ICU-A", "1", t=NOW - 7200)
    add_score(sessions, "p1", NOW)  # observed for 2 h: 1/12 patient-day
    raise_alert(sessions, "p1")
    b = raise_alert(sessions, "p2")
    client.post(f"/api/alerts/{b}/resolve", headers=bearer(tokens["nurse"]), json=REASON)

    r = client.get("/metrics", headers=bearer(tokens["engineer"]))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(r.text)
        for s in fam.samples
    }
    w = ("worker", "worker-6066")
    assert samples[("icuwatch_messages_processed_total", (("topic", "icu.vitals"), w))] == 100
    assert samples[("icuwatch_messages_processed_total", (("topic", "icu.labs"), w))] == 20
    assert samples[("icuwatch_messages_deadlettered_total", (w,))] == 4
    assert samples[("icuwatch_scores_total", (("source", "triton"), w))] == 7
    assert samples[("icuwatch_scores_total", (("source", "fallback"), w))] == 3
    assert samples[("icuwatch_scores_fallback_total", (w,))] == 3
    assert samples[("icuwatch_consumer_lag", (("partition", "0"), ("topic", "icu.vitals"), w))] == 5
    assert samples[("icuwatch_record_age_seconds", (("topic", "icu.vitals"), w))] == 1.5
    assert samples[("icuwatch_worker_up", (w,))] == 1
    assert samples[("icuwatch_workers", ())] == 1
    assert samples[("icuwatch_alerts_open", ())] == 1
    assert samples[("icuwatch_alerts", (("state", "resolved"),))] == 1
    assert samples[("icuwatch_alerts_per_patient_day", ())] == pytest.approx(24.0)
    assert samples[("icuwatch_alerts_by_kind", (("kind", "deterioration"),))] == 2
    assert samples[("icuwatch_database_up", ())] == 1


# ---------------------------------------------------------------------------------------- openapi


def test_openapi_documents_the_routes(client, tokens):
    spec = client.get("/openapi.json", headers=bearer(tokens["engineer"])).json()
    paths = spec["paths"]
    for method, path in [
        ("get", "/api/me"),
        ("get", "/api/alerts"),
        ("post", "/api/alerts/{alert_id}/acknowledge"),
        ("post", "/api/alerts/{alert_id}/resolve"),
        ("get", "/api/alerts/{alert_id}/events"),
        ("get", "/api/patients/{patient_id}/timeline"),
        ("get", "/api/quality"),
        ("get", "/api/stream"),
        ("get", "/metrics"),
        ("get", "/healthz"),
    ]:
        assert method in paths.get(path, {}), (method, path)
    schemas_ = spec["components"]["schemas"]
    assert {"Alert", "Timeline", "TimelineScore", "AlertEvent", "Me", "Quality"} <= set(schemas_)
    ok = paths["/api/alerts"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["items"]["$ref"].endswith("/Alert")
    assert "401" in paths["/api/alerts"]["get"]["responses"]
    assert "403" in paths["/api/alerts/{alert_id}/acknowledge"]["post"]["responses"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert schemas_["Alert"]["properties"]["raised_at"].get("format") == "date-time"


# -------------------------------------------------------------------------------------------- SSE


@contextmanager
def serving(app) -> Iterator[str]:
    """The app under a real uvicorn server on a free port, in a thread."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1, lifespan="on"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def read_events(lines: Iterator[str], until, deadline: float) -> list[tuple[str, object]]:
    """Parse SSE lines into (event, data) until ``until(events)`` or the deadline."""
    events: list[tuple[str, object]] = []
    name, data = None, []
    for line in lines:
        if line == "":
            if data:
                events.append((name or "message", json.loads("\n".join(data))))
                if until(events):
                    return events
            name, data = None, []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"stream ended or timed out; got {events}")


def test_stream_pushes_alert_changes(app, sessions, tokens):
    admit(sessions, "p0", "ICU-A", "1")
    old = raise_alert(sessions, "p0")
    with serving(app) as base:
        timeout = httpx.Timeout(5.0, read=3.0)  # keep-alive every 1 s: a read never waits 3 s
        with httpx.Client(base_url=base, timeout=timeout) as http:
            assert http.get("/api/stream").status_code == 401
            assert http.get("/api/stream", params={"token": "bogus"}).status_code == 401
            with http.stream("GET", "/api/stream", params={"token": tokens["nurse"]}) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                lines = r.iter_lines()
                deadline = time.monotonic() + 15
                first = read_events(lines, lambda ev: len(ev) >= 1, deadline)
                assert first[0][0] == "snapshot"
                assert [a["alert_id"] for a in first[0][1]] == [old]

                t0 = time.monotonic()
                new = raise_alert(sessions, "p1", kind="sepsis")  # written straight to the DB, as the worker does
                got = read_events(lines, lambda ev: any(e == "alert" for e, _ in ev), deadline)
                alert = [d for e, d in got if e == "alert"][-1]
                assert alert["alert_id"] == new and alert["state"] == "raised"
                assert time.monotonic() - t0 < 5

                with sessions.begin() as s:  # a state change is pushed too
                    repo.acknowledge(s, old, "nurse-2")
                got = read_events(lines, lambda ev: any(e == "alert" for e, _ in ev), deadline)
                alert = [d for e, d in got if e == "alert"][-1]
                assert (alert["alert_id"], alert["state"], alert["acknowledged_by"]) == (old, "acknowledged", "nurse-2")
                assert alert["unit"] == "ICU-A"
                # nothing changes now: keep-alive comments hold the connection open (every 1 s here)
                for line in lines:
                    if line.startswith(":") or time.monotonic() > deadline:
                        break
                assert line == ": keep-alive"
            # header auth works for the stream as well
            with http.stream("GET", "/api/stream", headers=bearer(tokens["engineer"])) as r:
                snap = read_events(r.iter_lines(), lambda ev: len(ev) >= 1, time.monotonic() + 10)
                assert {a["alert_id"] for a in snap[0][1]} == {old, new}


def test_stream_pushes_a_new_current_risk(app, sessions, tokens):
    """A new score changes no alert row, yet the board's current risk must follow it: the stream
    re-reads open alerts every few polls and sends those whose current risk moved."""
    from icuwatch.api.stream import CURRENT_EVERY_POLLS

    add_score(sessions, "p1", NOW - 900, risk=0.66, news2=7)
    a = raise_alert(sessions, "p1", t=NOW - 960, risk=0.66, news2=7)
    quiet = raise_alert(sessions, "p2", t=NOW - 960)
    with serving(app) as base:
        with httpx.Client(base_url=base, timeout=httpx.Timeout(5.0, read=3.0)) as http:
            with http.stream("GET", "/api/stream", params={"token": tokens["nurse"]}) as r:
                lines = r.iter_lines()
                deadline = time.monotonic() + 20
                (snapshot,) = read_events(lines, lambda ev: len(ev) >= 1, deadline)
                assert {x["alert_id"]: x["current_risk"] for x in snapshot[1]} == {a: 0.66, quiet: None}
                t0 = time.monotonic()
                add_score(sessions, "p1", NOW - 300, risk=1.0, news2=16)
                got = read_events(lines, lambda ev: any(e == "alert" for e, _ in ev), deadline)
                alert = [d for e, d in got if e == "alert"][-1]
                assert (alert["alert_id"], alert["risk"], alert["current_risk"], alert["current_news2"]) == (
                    a,
                    0.66,
                    1.0,
                    16,
                )
                assert time.monotonic() - t0 < CURRENT_EVERY_POLLS * 0.2 + 3
                # nothing else moved: no event for the other patient's alert, only keep-alives
                for line in lines:
                    assert quiet not in line
                    if line.startswith(":") or time.monotonic() > deadline:
                        break
                assert line == ": keep-alive"


# -------------------------------------------------------------------------------------------- CLI


def test_cli_token_and_serve_parser(settings, client):
    from icuwatch.cli.main import build_parser
    from icuwatch.storage.tokens import issue_token

    token = issue_token(settings, "amy", "nurse")
    assert client.get("/api/me", headers=bearer(token)).json() == {"user": "amy", "role": "nurse"}
    parser = build_parser()
    args = parser.parse_args(["serve", "--port", "9999"])
    assert (args.host, args.port) == (None, 9999)
    args = parser.parse_args(["token", "create", "--user", "bo", "--role", "physician"])
    assert (args.user, args.role) == ("bo", "physician")
    with pytest.raises(SystemExit):
        parser.parse_args(["token", "create", "--user", "bo", "--role", "janitor"])


# ------------------------------------------------------------------------------ access hardening


def expire(sessions, token: str) -> None:
    """Backdate a token's expiry, as if its shift had ended."""
    from icuwatch.storage.models import ApiToken
    from icuwatch.storage.tokens import token_sha256

    with sessions.begin() as s:
        row = s.query(ApiToken).filter_by(token_sha256=token_sha256(token)).one()
        row.expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)


def test_tokens_expire_after_their_roles_lifetime(settings, client, sessions):
    """Regression: tokens never expired. A nurse's lasts a shift (``api_token_ttl_s``), an engineer's
    ``api_operator_token_ttl_s``; once past it the API answers 401."""
    from icuwatch.storage.models import ApiToken
    from icuwatch.storage.tokens import issue_token

    settings = settings.model_copy(update={"api_token_ttl_s": 12 * 3600.0, "api_operator_token_ttl_s": 86400.0})
    nurse, engineer = issue_token(settings, "amy", "nurse"), issue_token(settings, "eve", "engineer")
    forever = issue_token(settings, "scraper", "engineer", ttl_s=0)
    with sessions.begin() as s:
        rows = {r.user: r for r in s.query(ApiToken)}
        assert rows["amy"].expires_at - rows["amy"].created_at == timedelta(hours=12)
        assert rows["eve"].expires_at - rows["eve"].created_at == timedelta(days=1)
        assert rows["scraper"].expires_at is None
    for token in (nurse, engineer, forever):
        assert client.get("/api/me", headers=bearer(token)).status_code == 200
    expire(sessions, nurse)
    r = client.get("/api/me", headers=bearer(nurse))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.get("/api/stream", params={"token": nurse}).status_code == 401
    assert client.get("/api/me", headers=bearer(engineer)).status_code == 200


def test_cli_token_list_and_revoke(settings, client, monkeypatch, capsys):
    """Regression: tokens could not be revoked from the command line. ``token list`` shows ids and
    states but never a token or its hash; ``token revoke`` by id or by user takes effect at once."""
    from icuwatch.cli.main import main
    from icuwatch.storage.tokens import issue_token, token_sha256

    monkeypatch.setattr("icuwatch.cli.api.get_settings", lambda: settings)
    amy = issue_token(settings, "amy", "nurse")
    amy2 = issue_token(settings, "amy", "physician")
    bo = issue_token(settings, "bo", "engineer")
    capsys.readouterr()
    assert main(["token", "list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 4 and all(line.split()[-1] == "active" for line in lines[1:])
    for secret in (amy, amy2, bo):
        assert secret not in out and token_sha256(secret) not in out
    bo_id = next(line.split()[0] for line in lines if " bo " in line)

    assert main(["token", "revoke", bo_id]) == 0
    capsys.readouterr()
    assert client.get("/api/me", headers=bearer(bo)).status_code == 401
    assert client.get("/api/me", headers=bearer(amy)).status_code == 200
    assert main(["token", "revoke", "--user", "amy"]) == 0
    assert capsys.readouterr().out.startswith("revoked 2 token(s)")
    assert all(client.get("/api/me", headers=bearer(t)).status_code == 401 for t in (amy, amy2))

    assert main(["token", "list"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1  # only active ones by default
    assert main(["token", "list", "--all"]) == 0
    assert [line.split()[-1] for line in capsys.readouterr().out.splitlines()[1:]] == ["revoked"] * 3
    assert main(["token", "revoke", bo_id]) == 1  # already revoked: one line, no traceback
    assert main(["token", "revoke"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 2 and "Traceback" not in err
    assert main(["token", "create", "--user", "cy", "--role", "nurse", "--ttl-h", "-1"]) == 2


@pytest.mark.parametrize("how", ["revoke", "expire"])
def test_stream_closes_when_its_token_is_revoked_or_expires(app, sessions, tokens, how):
    """Regression: a live stream opened before a revocation kept running. It re-checks its token every
    poll and ends with ``event: revoked``; the browser's reconnect then gets a 401."""
    from icuwatch.storage.tokens import revoke_token

    raise_alert(sessions, "p1")
    with serving(app) as base:
        with httpx.Client(base_url=base, timeout=httpx.Timeout(5.0, read=3.0)) as http:
            with http.stream("GET", "/api/stream", params={"token": tokens["nurse"]}) as r:
                lines = r.iter_lines()
                deadline = time.monotonic() + 15
                read_events(lines, lambda ev: len(ev) >= 1, deadline)
                t0 = time.monotonic()
                if how == "revoke":
                    with sessions.begin() as s:
                        assert revoke_token(s, tokens["nurse"])
                else:
                    expire(sessions, tokens["nurse"])
                got = read_events(lines, lambda ev: ev[-1][0] == "revoked", deadline)
                assert time.monotonic() - t0 < 3
                assert [e for e, _ in got] == ["revoked"]
                assert list(lines) == []  # the server ended the response
            assert http.get("/api/stream", params={"token": tokens["nurse"]}).status_code == 401
            with http.stream("GET", "/api/stream", params={"token": tokens["physician"]}) as r:
                assert r.status_code == 200  # other tokens are untouched


def test_security_headers_on_every_response(client, tokens):
    """Regression: no Content-Security-Policy, X-Frame-Options or nosniff."""
    alert = ("POST", "/api/alerts/nope/acknowledge")
    for method, path, headers in [
        ("GET", "/", {}),
        ("GET", "/patients/p1", {}),
        ("GET", "/static/board.js", {}),
        ("GET", "/healthz", {}),
        ("GET", "/api/me", {}),
        ("GET", "/api/alerts", bearer(tokens["nurse"])),
        (*alert, bearer(tokens["nurse"])),
        ("GET", "/no-such-page", {}),
    ]:
        r = client.request(method, path, headers=headers)
        csp = r.headers.get("content-security-policy", "")
        assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp, (path, csp)
        assert r.headers.get("x-frame-options") == "DENY", path
        assert r.headers.get("x-content-type-options") == "nosniff", path
        assert r.headers.get("referrer-policy") == "no-referrer", path
    for page in ("index.html", "patient.html"):  # the CSP allows no inline script: the board has none
        html = (Path(__file__).resolve().parents[2] / "api" / "static" / page).read_text()
        assert "<script>" not in html


def test_request_bodies_over_the_limit_are_refused(settings, sessions, tokens):
    """Regression: a 20 MB body was parsed. Over ``api_max_body_bytes`` it is 413 before parsing,
    whether it declares its length or comes chunked; the alert is untouched."""
    alert_id = raise_alert(sessions, "p1")
    with TestClient(create_app(settings, escalate=False)) as client:
        nurse = bearer(tokens["nurse"])
        big = b'{"reason": "' + b"x" * (20 * 1024 * 1024) + b'"}'
        for content in (big, iter([big[i : i + 65536] for i in range(0, len(big), 65536)])):
            r = client.post(f"/api/alerts/{alert_id}/resolve", headers=nurse, content=content)
            assert r.status_code == 413, r.text[:200]
            assert r.headers["x-content-type-options"] == "nosniff"
        with sessions.begin() as s:
            assert s.get(Alert, alert_id).state == "raised"
    small = settings.model_copy(update={"api_max_body_bytes": 100})
    with TestClient(create_app(small, escalate=False)) as client:
        body = {"reason": "r" * 200}
        assert client.post(f"/api/alerts/{alert_id}/resolve", headers=nurse, json=body).status_code == 413
        r = client.post(f"/api/alerts/{alert_id}/resolve", headers=nurse, json=REASON)
        assert r.status_code == 200 and r.json()["state"] == "resolved"
        assert client.get("/api/me", headers=nurse).status_code == 200


def test_docs_need_a_token_and_can_be_switched_off(settings, client, tokens):
    """Regression: ``/docs`` and ``/openapi.json`` opened without a token."""
    for path in DOCS:
        assert client.get(path).status_code == 401, path
        assert client.get(path, params={"token": "bogus"}).status_code == 401, path
        assert client.get(path, headers=bearer(tokens["nurse"])).status_code == 200, path
    assert "/api/alerts" in client.get("/openapi.json", params={"token": tokens["admin"]}).json()["paths"]
    page = client.get("/docs", params={"token": tokens["admin"]})
    assert f"/openapi.json?token={tokens['admin']}" in page.text
    assert "cdn.jsdelivr.net" in page.headers["content-security-policy"]
    assert client.get("/redoc", headers=bearer(tokens["admin"])).status_code == 404
    off = settings.model_copy(update={"api_docs": False})
    with TestClient(create_app(off, escalate=False)) as c:
        for path in DOCS:
            assert c.get(path, headers=bearer(tokens["admin"])).status_code == 404, path


def test_shadow_report_for_engineers_and_its_page(client, sessions, tokens):
    """The live shadow's report (``storage/shadow_report.py``, tested there): engineers read it; its
    page is served like the board's."""
    from icuwatch.storage import shadow

    def scored(model: str, t: float, risk: float) -> schemas.Score:
        return schemas.Score(
            patient_id="p1", event_time=t, model=model, source="triton", deterioration_risk=risk,
            sepsis_risk=0.0, news2=1, qsofa=0, staleness_s={}, scored_at=t,
        )  # fmt: skip

    admit(sessions, "p1", "MICU", "3")
    with sessions.begin() as s:
        repo.add_scores(s, [scored("student_live", NOW - 3600, 0.4), scored("student_live", NOW - 60, 0.4)])
        shadow.add_scores(s, [scored("early_warning", NOW - 3600, 0.1), scored("early_warning", NOW - 60, 0.6)])
        shadow.record_served_model(s, "student_live", "live", {"deterioration": 0.3, "sepsis": 0.3})
        shadow.record_served_model(s, "early_warning", "shadow", {"deterioration": 0.5, "sepsis": 0.5})
    r = client.get("/api/shadow", headers=bearer(tokens["engineer"]))
    assert r.status_code == 200
    body = r.json()
    assert (body["live"]["model"], body["shadow"]["model"]) == ("student_live", "early_warning")
    assert body["paired_scores"] == 2 and body["agreement"] == 0.5 and set(body["per_unit"]) == {"MICU"}
    since = datetime.fromtimestamp(NOW - 600, timezone.utc).replace(tzinfo=None).isoformat()  # naive: UTC
    assert (
        client.get("/api/shadow", params={"since": since}, headers=bearer(tokens["admin"])).json()["paired_scores"] == 1
    )
    page = client.get("/engineering")
    assert page.status_code == 200 and "engineering.js" in page.text


def test_drift_metrics_and_report_for_engineers(client, sessions, tokens):
    """The drift guards' gauges (``storage/drift_report.py``, tested there) come with the scrape, and
    ``/api/drift`` gives the report; a unit whose feed stopped shows its rate and its flag."""
    from prometheus_client.parser import text_string_to_metric_families

    from icuwatch.storage import drift_counts
    from icuwatch.streams.drift import DriftCounts

    counts = DriftCounts("w1")
    t0 = NOW - NOW % 3600 - 12 * 3600
    for h in range(12):
        for p in range(4):
            for k in range(60):
                counts.arrived("MICU", f"m{p}", t0 + 3600 * h + 60 * k, "icu.vitals" if h < 6 else "icu.labs")
    with sessions.begin() as s:
        drift_counts.record(s, counts.take())
    r = client.get("/api/drift", params={"current_h": 6, "reference_h": 6}, headers=bearer(tokens["engineer"]))
    assert r.status_code == 200
    flags = {(f["unit"], f["signal"], f["name"]) for f in r.json()["flags"]}
    assert flags == {("MICU", "feeds", "icu.vitals"), ("MICU", "feeds", "icu.labs")}
    text = client.get("/metrics", headers=bearer(tokens["engineer"])).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    # the metrics use the default windows (current 6 h, reference 7 d): the same drop
    assert samples[("icuwatch_feed_messages_per_patient_hour", (("topic", "icu.vitals"), ("unit", "MICU")))] == 0
    assert samples[("icuwatch_drift_flagged", (("name", "icu.vitals"), ("signal", "feeds"), ("unit", "MICU")))] == 1
    assert samples[("icuwatch_alert_volume_out_of_band", (("unit", "MICU"),))] == 0


def test_a_silent_unit_s_alert_is_not_found_by_the_nurses(client, sessions, tokens):
    """Silent mode (``storage/units.py``): the alert is in the database, the API answers as if not."""
    from icuwatch.storage import units

    admit(sessions, "p1", "MICU", "3")
    with sessions.begin() as s:
        units.set_mode(s, "MICU", "silent", "eng.ito")
    a = raise_alert(sessions, "p1")
    nurse = bearer(tokens["nurse"])
    assert client.get("/api/alerts", headers=nurse).json() == []
    assert client.post(f"/api/alerts/{a}/acknowledge", headers=nurse).status_code == 404
    assert client.post(f"/api/alerts/{a}/resolve", headers=nurse, json=REASON).status_code == 404
    assert client.get(f"/api/alerts/{a}/events", headers=nurse).status_code == 404
    assert client.get("/fhir/Flag", params={"patient": "p1"}, headers=nurse).json()["total"] == 0
    with sessions.begin() as s:
        units.set_mode(s, "MICU", "live", "eng.ito")
    assert [x["alert_id"] for x in client.get("/api/alerts", headers=nurse).json()] == [a]
    assert client.post(f"/api/alerts/{a}/acknowledge", headers=nurse).status_code == 200
