"""Property-based fuzzing (hypothesis) of the HTTP API on a real SQLite database.

Whatever a client sends (headers, path and query parameters, bodies), the API answers with a
deliberate status: never a 500, never patient data without a valid token, and the alerts it holds
change only through a valid acknowledge or resolve.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from icuwatch.api.app import create_app
from icuwatch.core import schemas
from icuwatch.core.settings import Settings
from icuwatch.storage import db
from icuwatch.storage import repository as repo
from icuwatch.storage.tokens import create_token

T = 1_764_000_000.0
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
TEXT = st.text(max_size=40)
QUERY_VALUE = (
    TEXT
    | st.integers(-(10**6), 10**6).map(str)
    | st.sampled_from(
        ["raised", "acknowledged", "resolved", "sepsis", "deterioration", "2026-01-01T00:00:00Z", "0", "1001"]
    )
)


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> tuple[TestClient, dict[str, str], str]:
    tmp: Path = tmp_path_factory.mktemp("fuzz-api")
    url = f"sqlite:///{tmp / 'icuwatch.db'}"
    db.upgrade(url)
    app = create_app(Settings(database_url=url, state_dir=tmp / "state"), escalate=False)
    alert_id = f"p1:sepsis:{int(T)}"
    with app.state.sessions.begin() as s:
        repo.upsert_patient(s, schemas.Adt(patient_id="p1", event_time=T - 3600, event="admit", unit="MICU", bed="3"))
        repo.add_alert(
            s,
            schemas.Alert(
                patient_id="p1",
                event_time=T,
                alert_id=alert_id,
                kind="sepsis",
                risk=0.8,
                news2=7,
                qsofa=2,
                model="early_warning",
                source="triton",
                episode_start=T,
                raised_at=T + 1,
            ),
        )
        tokens = {role: create_token(s, f"{role}-1", role) for role in ("nurse", "engineer")}
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, tokens, alert_id


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def deliberate(r) -> None:
    assert r.status_code < 500, (r.request.method, str(r.request.url), r.status_code, r.text[:200])


@FUZZ
@given(
    header=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
    path=st.sampled_from(["/api/me", "/api/alerts", "/api/quality", "/fhir/Flag?patient=p1", "/metrics"]),
)
def test_any_authorization_header_without_a_token_is_401(api, header, path):
    client, tokens, _ = api
    r = client.get(path, headers={"Authorization": header})
    assert r.status_code == 401, (header, r.status_code)
    assert "p1" not in r.text and "MICU" not in r.text


@FUZZ
@given(
    params=st.dictionaries(
        st.sampled_from(["state", "kind", "unit", "patient_id", "limit", "junk"]), QUERY_VALUE, max_size=5
    )
)
def test_alert_list_parameters(api, params):
    client, tokens, _ = api
    r = client.get("/api/alerts", params=params, headers=bearer(tokens["nurse"]))
    deliberate(r)
    if r.status_code == 200:
        assert isinstance(r.json(), list)


@FUZZ
@given(patient=TEXT, params=st.dictionaries(st.sampled_from(["since", "limit"]), QUERY_VALUE, max_size=2))
def test_timeline_parameters(api, patient, params):
    client, tokens, _ = api
    r = client.get(f"/api/patients/{quote(patient, safe='')}/timeline", params=params, headers=bearer(tokens["nurse"]))
    deliberate(r)
    assert r.status_code in (200, 404, 422), r.status_code


@FUZZ
@given(
    resource=st.sampled_from(["RiskAssessment", "Flag", "DetectedIssue"]),
    params=st.dictionaries(st.sampled_from(["patient", "_count", "limit", "status"]), QUERY_VALUE, max_size=4),
)
def test_fhir_search_parameters(api, resource, params):
    client, tokens, _ = api
    r = client.get(f"/fhir/{resource}", params=params, headers=bearer(tokens["nurse"]))
    deliberate(r)


@FUZZ
@given(
    alert_id=TEXT,
    action=st.sampled_from(["acknowledge", "resolve"]),
    body=st.none() | st.dictionaries(TEXT, TEXT | st.integers(), max_size=3) | st.lists(st.integers(), max_size=3),
)
def test_alert_actions_on_unknown_ids_and_odd_bodies(api, alert_id, action, body):
    """Unknown ids are 404 and bodies that are not ``{"comment": str}`` are 422; the known alert
    is not touched (``alert_id`` never equals it: it holds a colon-separated time)."""
    client, tokens, known = api
    path = f"/api/alerts/{quote(alert_id, safe='')}/{action}"
    r = client.post(path, json=body, headers=bearer(tokens["nurse"]))
    deliberate(r)
    if alert_id != known:
        assert r.status_code in (404, 405, 422), (alert_id, r.status_code)
    r = client.post(path, json=body, headers=bearer(tokens["engineer"]))
    assert r.status_code in (403, 404, 405, 422), r.status_code
    held = client.get("/api/alerts", params={"patient_id": "p1"}, headers=bearer(tokens["nurse"])).json()
    assert [(a["alert_id"], a["state"]) for a in held] == [(known, "raised")]


@FUZZ
@given(reason=st.text(max_size=60) | st.sampled_from(["", " ", "\t\n", "\u00a0\u2003"]))
def test_a_resolve_without_a_real_reason_is_refused(api, reason):
    """A blank reason is 422 whoever the alert; any other reaches the alert lookup (404 here)."""
    client, tokens, known = api
    r = client.post("/api/alerts/p9:sepsis:1/resolve", json={"reason": reason}, headers=bearer(tokens["nurse"]))
    deliberate(r)
    assert r.status_code == (422 if not reason.strip() else 404), (reason, r.status_code)
    r = client.post(
        f"/api/alerts/{quote(known, safe='')}/resolve",
        json={"reason": " " * len(reason)},
        headers=bearer(tokens["nurse"]),
    )
    assert r.status_code == 422
    held = client.get("/api/alerts", params={"patient_id": "p1"}, headers=bearer(tokens["nurse"])).json()
    assert [(a["alert_id"], a["state"]) for a in held] == [(known, "raised")]
