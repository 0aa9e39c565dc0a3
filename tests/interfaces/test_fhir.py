"""FHIR out: resources (validated with fhir.resources' R4B models, R4 element lists, JSON round
trip), the /fhir search routes on SQLite and PostgreSQL, and the push against a real local HTTP
server (aiohttp on a free port on 127.0.0.1) that fails the first two requests with 503.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.detectedissue import DetectedIssue
from fhir.resources.R4B.flag import Flag
from fhir.resources.R4B.riskassessment import RiskAssessment

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from icuwatch.api.app import create_app
from icuwatch.core import schemas
from icuwatch.core.settings import Settings
from icuwatch.interfaces import fhir_export as fx
from icuwatch.interfaces import fhir_push as fp
from icuwatch.storage import db
from icuwatch.storage import repository as repo

T0 = 1_700_000_000.0
MODELS = {"RiskAssessment": RiskAssessment, "Flag": Flag, "DetectedIssue": DetectedIssue}


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def make_alert(pid: str = "p1", kind: str = "sepsis", t: float = T0, risk: float = 0.73) -> schemas.Alert:
    return schemas.Alert(
        patient_id=pid,
        event_time=t,
        alert_id=f"{pid}:{kind}:{int(t - 600)}",
        kind=kind,
        risk=risk,
        news2=7,
        qsofa=2,
        model="early_warning",
        source="triton",
        episode_start=t - 600,
        raised_at=t + 1,
    )


def make_score(pid: str = "p1", t: float = T0, sepsis: float = 0.73, det: float = 0.41) -> schemas.Score:
    return schemas.Score(
        patient_id=pid,
        event_time=t,
        model="early_warning",
        source="triton",
        deterioration_risk=det,
        sepsis_risk=sepsis,
        news2=7,
        qsofa=2,
        staleness_s={"vitals": 1.0, "labs": 3600.0, "cxr": None},
        scored_at=t + 0.5,
    )


def check_r4(res: dict[str, Any]) -> None:
    """Validates with the R4B model, round-trips through JSON, and has R4 elements only."""
    rtype = res["resourceType"]
    model = MODELS[rtype]
    text = json.dumps(res)
    again = model.model_validate_json(text).model_dump(mode="json")
    assert again == res
    assert set(res) <= fx.R4_ELEMENTS[rtype], set(res) - fx.R4_ELEMENTS[rtype]
    for c in res.get("contained", []):
        assert set(c) <= fx.R4_ELEMENTS[c["resourceType"]]


# ---------------------------------------------------------------------------------- resources


def test_resources_validate_round_trip_and_are_r4():
    alert, score = make_alert(), make_score()
    ra, fl, di = fx.resources_for_alert(alert, score)
    for res in (ra, fl, di):
        check_r4(res)
        assert res["id"] == fx.resource_id(alert.alert_id)
        assert res["identifier"] == [{"system": fx.ALERT_IDENTIFIER_SYSTEM, "value": alert.alert_id}]

    assert ra["status"] == "final"
    p1 = {"type": "Patient", "identifier": {"system": fx.PATIENT_IDENTIFIER_SYSTEM, "value": "p1"}}
    assert ra["subject"] == p1 and all(c["subject"] == p1 for c in ra["contained"])
    assert ra["occurrenceDateTime"] == iso(score.event_time)
    assert ra["method"]["coding"][0]["code"] == "early_warning" and "triton" in ra["method"]["text"]
    assert ra["prediction"][0]["outcome"]["text"] == "sepsis"
    assert ra["prediction"][0]["probabilityDecimal"] == pytest.approx(0.73)
    note = ra["note"][0]["text"]
    assert "NEWS2 7" in note and "qSOFA 2" in note and "labs 3600 s" in note and "cxr never seen" in note
    contained = {c["id"]: c for c in ra["contained"]}
    assert contained["news2"]["valueInteger"] == 7 and contained["qsofa"]["valueInteger"] == 2
    assert [b["reference"] for b in ra["basis"]] == ["#news2", "#qsofa"]

    assert fl["status"] == "active" and fl["period"] == {"start": iso(alert.episode_start)}
    assert di["status"] == "preliminary" and di["severity"] == "high"
    assert fl["subject"] == p1
    assert di["patient"] == p1 and "subject" not in di  # R4, not R5
    assert di["identifiedDateTime"] == iso(alert.event_time)
    assert di["implicated"] == [{"reference": f"RiskAssessment/{ra['id']}"}]

    det = fx.risk_assessment(make_alert(kind="deterioration", risk=0.6), make_score())
    assert det["prediction"][0]["outcome"]["text"] == "clinical deterioration"


def test_state_changes_contributions_and_odd_patient_ids():
    resolved = {
        **make_alert().model_dump(),
        "state": "resolved",
        "resolved_at": T0 + 3600,
        "acknowledged_by": "nurse-1",
    }
    fl, di = fx.flag(resolved), fx.detected_issue(resolved)
    assert fl["status"] == "inactive" and fl["period"]["end"] == iso(T0 + 3600)
    assert di["status"] == "final" and "nurse-1" in di["detail"]
    acked = {**resolved, "state": "acknowledged", "resolved_at": None}
    assert fx.flag(acked)["status"] == "active" and fx.detected_issue(acked)["status"] == "final"

    score = {**make_score().model_dump(), "contributions": {"lactate": 0.21, "rr": -0.05}}
    ra = fx.risk_assessment(make_alert(), score)
    assert "lactate +0.210" in ra["note"][0]["text"]

    odd = fx.flag(make_alert(pid="pt_7"))  # '_' is not allowed in FHIR ids: no matter, no Patient/ reference
    check_r4(odd)
    assert odd["subject"] == {
        "type": "Patient",
        "identifier": {"system": fx.PATIENT_IDENTIFIER_SYSTEM, "value": "pt_7"},
    }

    no_score = fx.risk_assessment(make_alert())  # falls back to the alert's own figures and time
    check_r4(no_score)
    assert no_score["occurrenceDateTime"] == iso(T0)


def _strings(node: Any):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


@pytest.mark.parametrize("pid", ["MRN-1001", "MRN.1001", "mrn_1001", "0042", "A" * 64])
def test_the_subject_is_the_hospitals_identifier_in_the_ehrs_system(pid):
    """Issue 18: subjects were ``Patient/<icuwatch id>`` -- a guess at the EHR's logical id (after
    a lossy rewrite: ``Patient/MRN_1001``), which the EHR did not know. Now every subject is a
    logical reference by identifier only: the EHR's MRN system and the hospital's identifier exactly."""
    system = "urn:oid:2.16.840.1.113883.3.999.1"
    alert, score = make_alert(pid=pid), make_score(pid=pid)
    expected = {"type": "Patient", "identifier": {"system": system, "value": pid}}
    ra, fl, di = fx.resources_for_alert(alert, score, patient_system=system)
    for res in (ra, fl, di):
        check_r4(res)  # fhir.resources validates the logical reference
    assert ra["subject"] == fl["subject"] == di["patient"] == expected
    assert all(c["subject"] == expected for c in ra["contained"])
    for bundle in (
        fx.bundle_for_alert(alert, score, patient_system=system),
        fx.bundle_for_alert(alert, score, type="collection", patient_system=system),
    ):
        Bundle.model_validate(bundle)
        assert not [t for t in _strings(bundle) if t.startswith("Patient/")]
        assert [e["resource"].get("subject", e["resource"].get("patient")) for e in bundle["entry"]] == [expected] * 3


def test_bundles():
    alert, score = make_alert(), make_score()
    tx = fx.bundle_for_alert(alert, score)
    assert Bundle.model_validate_json(json.dumps(tx)).model_dump(mode="json") == tx
    assert tx["type"] == "transaction"
    by_type = {e["resource"]["resourceType"]: e for e in tx["entry"]}
    assert set(by_type) == {"RiskAssessment", "Flag", "DetectedIssue"}
    for rtype, e in by_type.items():
        assert e["request"]["method"] == "PUT"
        assert unquote(e["request"]["url"]) == f"{rtype}?identifier={fx.ALERT_IDENTIFIER_SYSTEM}|{alert.alert_id}"
        assert e["fullUrl"].startswith("urn:uuid:") and "id" not in e["resource"]
        assert set(e["resource"]) <= fx.R4_ELEMENTS[rtype]
    assert by_type["DetectedIssue"]["resource"]["implicated"] == [{"reference": by_type["RiskAssessment"]["fullUrl"]}]
    assert fx.bundle_for_alert(alert, score) == tx  # deterministic: same fullUrls every time

    col = fx.bundle_for_alert(alert, score, type="collection")
    Bundle.model_validate(col)
    assert col["type"] == "collection" and all("request" not in e for e in col["entry"])
    assert all(e["resource"]["id"] == fx.resource_id(alert.alert_id) for e in col["entry"])


def test_a_data_liveness_alert_is_a_flag_and_a_detected_issue_without_a_risk_assessment():
    alert = schemas.Alert(
        patient_id="p1",
        event_time=T0 + 400,
        alert_id=f"p1:data_liveness:{T0:.0f}",
        kind="data_liveness",
        risk=0.0,
        news2=0,
        qsofa=0,
        model="liveness",
        source="liveness",
        episode_start=T0,
        raised_at=T0 + 400,
    )
    tx = fx.bundle_for_alert(alert)
    Bundle.model_validate(tx)
    by_type = {e["resource"]["resourceType"]: e["resource"] for e in tx["entry"]}
    assert set(by_type) == {"Flag", "DetectedIssue"}
    assert by_type["Flag"]["code"]["text"] == fx.LIVENESS_TEXT
    assert "implicated" not in by_type["DetectedIssue"]
    assert by_type["DetectedIssue"]["detail"].startswith(f"no vital signs received since {iso(T0)}")
    for res in by_type.values():
        check_r4(res)


# ---------------------------------------------------------------------------------- API routes


@pytest.fixture
def url(url: str) -> str:
    """The conftest's empty database (SQLite or PostgreSQL), migrated."""
    db.upgrade(url)
    return url


ROUTES = ["/fhir/RiskAssessment", "/fhir/Flag", "/fhir/DetectedIssue"]


def test_fhir_routes(url: str, tmp_path: Path):
    from icuwatch.storage.tokens import create_token

    system = "urn:oid:2.16.840.1.113883.3.999.1"
    settings = Settings(database_url=url, state_dir=tmp_path / "state", fhir_patient_identifier_system=system)
    app = create_app(settings, escalate=False)
    sessions = app.state.sessions
    p1 = {"type": "Patient", "identifier": {"system": system, "value": "p1"}}
    t1, t2 = T0, T0 + 7200
    older, newer = make_alert(t=t1, risk=0.66), make_alert(kind="deterioration", t=t2, risk=0.81)
    with sessions.begin() as s:
        nurse = create_token(s, "nurse-1", "nurse")
        repo.add_scores(s, [make_score(t=t1, sepsis=0.66), make_score(t=t2, det=0.81), make_score(t=t2 + 300)])
        assert repo.add_alert(s, older) and repo.add_alert(s, newer)
        repo.add_alert(s, make_alert(pid="p2"))
    h = {"Authorization": f"Bearer {nurse}"}

    with TestClient(app) as c:
        for path in ROUTES:
            assert c.get(path, params={"patient": "p1"}).status_code == 401
            assert c.get(path, params={"patient": "p1"}, headers={"Authorization": "Bearer nope"}).status_code == 401

        r = c.get("/fhir/RiskAssessment", params={"patient": "p1"}, headers=h)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/fhir+json")
        assert r.headers["cache-control"] == "no-store"
        b = r.json()
        Bundle.model_validate(b)
        assert b["type"] == "searchset" and b["total"] == 2 and len(b["entry"]) == 2
        ras = [e["resource"] for e in b["entry"]]
        for e, ra in zip(b["entry"], ras):
            check_r4(ra)
            assert e["fullUrl"].endswith(f"/fhir/RiskAssessment/{ra['id']}")
            assert ra["subject"] == p1  # the EHR's MRN system, from the settings
        # newest first; probability = the alert's risk; occurrence = the score's event time
        assert [ra["prediction"][0]["outcome"]["text"] for ra in ras] == ["clinical deterioration", "sepsis"]
        assert [ra["prediction"][0]["probabilityDecimal"] for ra in ras] == pytest.approx([0.81, 0.66])
        assert [ra["occurrenceDateTime"] for ra in ras] == [iso(t2), iso(t1)]
        assert "labs 3600 s" in ras[0]["note"][0]["text"]

        one = c.get("/fhir/RiskAssessment", params={"patient": "Patient/p1", "_count": 1}, headers=h).json()
        assert one["total"] == 2 and len(one["entry"]) == 1
        assert one["entry"][0]["resource"]["occurrenceDateTime"] == iso(t2)
        assert len(c.get("/fhir/RiskAssessment", params={"patient": "p1", "limit": 1}, headers=h).json()["entry"]) == 1
        assert c.get("/fhir/RiskAssessment", params={"patient": "nobody"}, headers=h).json()["total"] == 0
        missing = c.get("/fhir/RiskAssessment", headers=h)
        assert missing.status_code == 400 and missing.json()["resourceType"] == "OperationOutcome"

        with sessions.begin() as s:
            repo.acknowledge(s, older.alert_id, "nurse-1")
            repo.resolve(s, older.alert_id, by="nurse-1", at=t1 + 1800)
        fl = c.get("/fhir/Flag", params={"patient": "p1"}, headers=h).json()
        Bundle.model_validate(fl)
        status = {e["resource"]["code"]["text"]: e["resource"] for e in fl["entry"]}
        assert status["icuwatch: high risk of sepsis"]["status"] == "inactive"
        assert status["icuwatch: high risk of sepsis"]["period"] == {"start": iso(t1 - 600), "end": iso(t1 + 1800)}
        assert status["icuwatch: high risk of clinical deterioration"]["status"] == "active"
        active = c.get("/fhir/Flag", params={"patient": "p1", "status": "active"}, headers=h).json()
        assert active["total"] == 1 and active["entry"][0]["resource"]["status"] == "active"

        with sessions.begin() as s:  # the change feed a background pusher would poll
            bundles, cursor = fp.changed_alert_bundles(s, None, patient_system=system)
            assert {b["identifier"]["value"] for b in bundles} == {
                older.alert_id,
                newer.alert_id,
                "p2:sepsis:1699999400",
            }
            assert all(b["type"] == "transaction" for b in bundles)
            assert all(
                e["resource"]["subject" if "subject" in e["resource"] else "patient"]["identifier"]["system"] == system
                for b in bundles
                for e in b["entry"]
            )
            assert fp.changed_alert_bundles(s, *cursor, patient_system=system)[0] == []

        di = c.get("/fhir/DetectedIssue", params={"patient": "p1"}, headers=h).json()
        assert [e["resource"]["status"] for e in di["entry"]] == ["preliminary", "final"]
        assert all(e["resource"]["patient"] == p1 for e in di["entry"])
        assert all(e["resource"]["subject"] == p1 for e in fl["entry"])
        assert di["entry"][0]["resource"]["implicated"][0]["reference"] == f"RiskAssessment/{ras[0]['id']}"


# ---------------------------------------------------------------------------------- push


class FakeFhirServer:
    """A tiny FHIR transaction endpoint: ``fail_status`` (503) for the first ``fail_first`` requests, then applies
    the Bundle's conditional updates to an in-memory store keyed by (type, identifier)."""

    def __init__(self, fail_first: int = 2, fail_status: int = 503) -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.requests: list[dict[str, Any]] = []
        self.store: dict[tuple[str, str], dict[str, Any]] = {}
        self.creates = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
        if len(self.requests) <= self.fail_first:
            return web.Response(status=self.fail_status, text="busy", headers={"Retry-After": "0"})
        out = []
        for e in body["entry"]:
            rtype, _, query = e["request"]["url"].partition("?")
            ident = unquote(query.removeprefix("identifier="))
            key = (rtype, ident)
            if key in self.store:
                rid, status = self.store[key]["id"], "200 OK"
            else:
                rid, status = f"srv{len(self.store) + 1}", "201 Created"
                self.creates += 1
            self.store[key] = {**e["resource"], "id": rid}
            out.append({"response": {"status": status, "location": f"{rtype}/{rid}/_history/1"}})
        return web.json_response(
            {"resourceType": "Bundle", "type": "transaction-response", "entry": out},
            content_type="application/fhir+json",
        )


async def _serve(server: FakeFhirServer) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/fhir", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/fhir"


def _push_settings(endpoint: str | None, **kw: Any) -> Settings:
    return Settings(
        fhir_endpoint=endpoint,
        fhir_token="s3cret",
        fhir_push_backoff_s=0.01,
        fhir_push_backoff_max_s=0.05,
        fhir_push_timeout_s=5,
        **kw,
    )


def test_push_retries_arrives_once_and_is_idempotent():
    async def scenario() -> None:
        server = FakeFhirServer(fail_first=2)
        runner, endpoint = await _serve(server)
        try:
            settings = _push_settings(endpoint)
            bundle = fx.bundle_for_alert(make_alert(), make_score())

            r = await fp.push_alert(bundle, settings)
            assert r.ok and r.status == 200 and r.attempts == 3, r
            assert len(server.requests) == 3 and server.creates == 3 and len(server.store) == 3
            assert [e["response"]["status"] for e in r.response["entry"]] == ["201 Created"] * 3
            hdr = server.requests[-1]["headers"]
            assert hdr["Authorization"] == "Bearer s3cret"
            assert hdr["Content-Type"].startswith("application/fhir+json")

            again = await fp.push_alert(bundle, settings)  # a second push: updates, no duplicate
            assert again.ok and again.attempts == 1
            assert [e["response"]["status"] for e in again.response["entry"]] == ["200 OK"] * 3
            assert len(server.requests) == 4 and server.creates == 3 and len(server.store) == 3

            resolved = {**make_alert().model_dump(), "state": "resolved", "resolved_at": T0 + 60}
            assert (await fp.push_alert(fx.bundle_for_alert(resolved, make_score()), settings)).ok
            flag = server.store[("Flag", f"{fx.ALERT_IDENTIFIER_SYSTEM}|{make_alert().alert_id}")]
            assert flag["status"] == "inactive" and len(server.store) == 3

            # background pusher: submit returns at once, pushes in the background
            system = "urn:oid:2.16.840.1.113883.3.999.1"
            pusher = fp.FhirPusher(settings.model_copy(update={"fhir_patient_identifier_system": system}))
            await pusher.start()
            t = time.perf_counter()
            assert pusher.submit_alert(make_alert(pid="p9"), make_score(pid="p9"))
            assert time.perf_counter() - t < 0.05
            assert await pusher.drain(10)
            await pusher.stop()
            assert pusher.stats["pushed"] == 1 and server.creates == 6
            pushed = server.requests[-1]["body"]["entry"]
            assert {
                e["resource"].get("subject", e["resource"].get("patient"))["identifier"]["system"] for e in pushed
            } == {system}
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_push_gives_up_is_bounded_and_off_when_unset():
    async def scenario() -> None:
        server = FakeFhirServer(fail_first=100)
        runner, endpoint = await _serve(server)
        try:
            slept: list[float] = []

            async def fake_sleep(d: float) -> None:
                slept.append(d)

            settings = _push_settings(endpoint, fhir_push_attempts=4)
            r = await fp.push_alert(fx.bundle_for_alert(make_alert()), settings, sleep=fake_sleep)
            assert not r.ok and r.status == 503 and r.attempts == 4 and len(server.requests) == 4
            assert len(slept) == 3 and all(d <= 0.05 for d in slept)
        finally:
            await runner.cleanup()

        bad = FakeFhirServer(fail_first=1, fail_status=400)
        runner, endpoint = await _serve(bad)
        try:  # a 4xx other than 408/429 is not retried
            r = await fp.push_alert(fx.bundle_for_alert(make_alert()), _push_settings(endpoint))
            assert not r.ok and r.status == 400 and r.attempts == 1 and len(bad.requests) == 1
        finally:
            await runner.cleanup()

        # nothing listening: connection errors are retried, then reported, never raised
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
        r = await fp.push_alert(fx.bundle_for_alert(make_alert()), _push_settings(dead, fhir_push_attempts=2))
        assert not r.ok and r.status is None and r.attempts == 2 and r.error

        off = _push_settings(None)
        assert (await fp.push_alert(fx.bundle_for_alert(make_alert()), off)).skipped
        assert fp.FhirPusher(off).submit_alert(make_alert()) is False

    delays = [fp.backoff_delay(n, Settings(fhir_push_backoff_s=1, fhir_push_backoff_max_s=5)) for n in range(1, 8)]
    assert 0.8 <= delays[0] <= 1.2 and 1.6 <= delays[1] <= 2.4 and max(delays) == 5
    asyncio.run(scenario())


def test_the_api_pushes_alert_changes_when_an_endpoint_is_configured(tmp_path):
    """`icuwatch serve` with ICUWATCH_FHIR_ENDPOINT: a raised alert, then its acknowledgement,
    reach the (real, local) FHIR server as conditional updates: one set of resources, updated."""
    import threading

    from fastapi.testclient import TestClient

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = FakeFhirServer(fail_first=1)
    runner, endpoint = asyncio.run_coroutine_threadsafe(_serve(server), loop).result(10)
    url = f"sqlite:///{tmp_path / 'push.db'}"
    db.upgrade(url)
    system = "urn:oid:2.16.840.1.113883.3.999.1"
    settings = _push_settings(endpoint, database_url=url, fhir_patient_identifier_system=system)
    sessions = db.session_factory(db.make_engine(url))
    try:
        with TestClient(create_app(settings, escalate=False)):
            with sessions.begin() as s:
                repo.add_alert(s, make_alert(pid="push1"))
            deadline = time.monotonic() + 15
            while server.creates < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert server.creates == 3, server.requests
            with sessions.begin() as s:
                repo.acknowledge(s, make_alert(pid="push1").alert_id, by="nurse.a")
            deadline = time.monotonic() + 15
            while len(server.requests) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
        assert server.creates == 3 and len(server.store) == 3
        issue = next(v for (t, _), v in server.store.items() if t == "DetectedIssue")
        assert issue["status"] == "final"  # acknowledged
        assert issue["patient"] == {"type": "Patient", "identifier": {"system": system, "value": "push1"}}
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
