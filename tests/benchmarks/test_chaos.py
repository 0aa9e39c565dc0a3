"""Fault injection: the fault proxy on real sockets and the real PostgreSQL server, the lost /
duplicated comparison, and (opt-in, ICUWATCH_SLOW=1) the full ``icuwatch chaos`` drill and the
100,000-message bad-input run through the real pipeline."""

from __future__ import annotations

import socket
import threading

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from stack_fixtures import free_port

from icuwatch.benchmarks.chaos import POSTGRES_ADMIN_URL, compare
from icuwatch.benchmarks.fault_proxy import FaultProxy


@pytest.fixture
def echo_server():
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(
                target=lambda c=conn: [c.sendall(d) for d in iter(lambda: c.recv(1024), b"")], daemon=True
            ).start()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()
    server.close()


def test_fault_proxy_cuts_open_connections_refuses_new_ones_and_restores(echo_server):
    proxy = FaultProxy(free_port(), echo_server).start()
    try:
        conn = socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=5)
        conn.sendall(b"ping")
        assert conn.recv(16) == b"ping"
        proxy.cut()
        assert conn.recv(16) == b"", "an open connection must be closed by the cut"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=2)
        proxy.restore()
        again = socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=5)
        again.sendall(b"pong")
        assert again.recv(16) == b"pong"
        again.close()
    finally:
        proxy.stop()


@pytest.mark.timeout(120)
def test_fault_proxy_admits_only_the_topic_admin_to_a_restarted_broker(tmp_path):
    """The broker-restart drill's gate, on a real Tansu: while it holds, the admin client creates the
    topics through the proxy and any other client is turned away; then everyone is let in."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaTimeoutError

    from icuwatch.benchmarks.fault_proxy import kafka_client_id
    from icuwatch.core import topics
    from icuwatch.core.settings import Settings
    from icuwatch.deploy import broker
    from icuwatch.deploy.processes import split_host_port

    settings = Settings(broker=f"127.0.0.1:{free_port()}", state_dir=tmp_path)
    listen = f"127.0.0.1:{free_port()}"
    proxy = FaultProxy(split_host_port(settings.broker, 9092)[1], split_host_port(listen, 9092))
    proxy.start().cut()
    broker.start(settings, create_topics=False, listen=listen)
    try:
        proxy.restore(admit=lambda frame: kafka_client_id(frame) == broker.ADMIN_CLIENT_ID)
        with pytest.raises(KafkaTimeoutError, match="bootstrap"):
            KafkaProducer(bootstrap_servers=settings.broker, client_id="a-bedside-feed", max_block_ms=3000)
        assert proxy.turned_away >= 1
        broker.create_all_topics(settings)  # through the proxy, as the admin
        proxy.open()
        producer = KafkaProducer(bootstrap_servers=settings.broker, client_id="a-bedside-feed")
        assert producer.send(topics.VITALS, key=b"p1", value=b"{}").get(timeout=10).offset == 0
        assert len(producer.partitions_for(topics.VITALS)) == settings.partitions
        producer.close()
    finally:
        proxy.stop()
        broker.stop(settings)


@pytest.mark.postgres
def test_fault_proxy_makes_postgresql_unreachable_and_back():
    proxy = FaultProxy(free_port(), ("127.0.0.1", 5432)).start()
    url = make_url(POSTGRES_ADMIN_URL).set(host="127.0.0.1", port=proxy.listen_port)
    engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as c:
            assert c.execute(text("select 1")).scalar() == 1
        proxy.cut()
        with pytest.raises(DBAPIError):
            with engine.connect() as c:
                c.execute(text("select 1"))
        proxy.restore()
        with engine.connect() as c:
            assert c.execute(text("select 2")).scalar() == 2
    finally:
        engine.dispose()
        proxy.stop()


def outcome(alerts: dict, suppressed=(), scores=None, whole=2, worker=None) -> dict:
    return {
        "alerts": alerts,
        "suppressed": list(suppressed),
        "scores": scores or {},
        "truth": [{"patient_id": "p1", "onset_time": 1.0}, {"patient_id": "p2", "onset_time": None}],
        "states_whole": whole,
        "states_total": 2,
        "state_fields_differing": {},
        "vital_rows_missing": 0,
        "produced": 10,
        "settled": True,
        "worker": worker or {},
        "timeline": [],
        "patient_ids_in_logs": False,
    }


def test_compare_counts_lost_and_duplicated_alerts_per_patient_and_kind():
    ref = outcome({"p1:sepsis:100": ("p1", "sepsis"), "p1:deterioration:90": ("p1", "deterioration")})
    same = compare(outcome({"p1:sepsis:100": ("p1", "sepsis"), "p1:deterioration:95": ("p1", "deterioration")}), ref)
    assert (same["lost"], same["duplicated"]) == (0, 0)  # a shifted episode start is neither
    assert not same["alert_ids_equal_reference"]
    lost = compare(outcome({"p1:sepsis:100": ("p1", "sepsis")}), ref)
    assert (lost["lost"], lost["lost_alerts"]) == (1, ["p1:deterioration"])
    dup = compare(
        outcome(
            {"p1:sepsis:100": ("p1", "sepsis"), "p1:deterioration:90": ("p1", "deterioration")},
            suppressed=["p1:sepsis:160"],
        ),
        ref,
    )
    assert dup["duplicated"] == 1 and dup["lost"] == 0
    assert dup["deteriorating_alerted"] == "1/1" and dup["stable_alerted"] == 0
    once = {"processed": 10, "duplicates": 0, "scores_taken": 5, "scores_published": 5, "alerts_republished": 0}
    trajectory = compare(outcome(dict(ref["alerts"]), suppressed=["p1:sepsis:160"], worker=once), ref)
    assert (trajectory["duplicated"], trajectory["episodes_beyond_reference_with_refused"]) == (0, 1)
    assert not trajectory["redelivered"], "nothing twice: a refused episode is another trajectory, not a re-raise"
    stored = compare(outcome({**ref["alerts"], "p1:sepsis:160": ("p1", "sepsis")}, worker=once), ref)
    assert stored["duplicated"] == 1, "a second alert a nurse saw is a duplicate, redelivered or not"
    for twice in ({"duplicates": 3}, {"processed": 12}, {"scores_taken": 6}, {"alerts_republished": 1}):
        reread = compare(outcome(dict(ref["alerts"]), suppressed=["p1:sepsis:160"], worker=once | twice), ref)
        assert reread["redelivered"] and reread["duplicated"] == 1, twice


def test_vital_rows_missing_sums_what_the_hourly_aggregates_lack():
    from icuwatch.benchmarks.chaos.states import vital_rows_missing

    expected = {
        "p1": {"hourly": [[0, 60.0, 4800.0], [1, 3600.0, 1.0], [2, 10.0, 1.0]]},
        "p2": {"hourly": [[0, 5.0, 400.0]]},
        "p3": {"hourly": [[0, 20.0, 1600.0]]},
    }
    states = {
        "p1": {"hourly": [[0, 61.0, 4880.0], [1, 3593.0, 1.0]]},  # a duplicate row offsets nothing
        "p2": {"hourly": [[0, 5.0, 400.0]]},
    }  # p3: never checkpointed
    assert vital_rows_missing(states, expected) == 7 + 10 + 20


def test_a_refused_episode_names_the_source_its_run_began_on():
    from icuwatch.benchmarks.chaos.stack import refusal

    scores = {("p1", 1000): (3, 1, "fallback", "interval"), ("p1", 1300): (3, 1, "triton", "interval")}
    detail = {"suppressed_alert_id": "p1:sepsis:1000", "source": "triton", "episode_start": "1970-01-01T00:16:40+00:00"}
    assert refusal(detail, scores) == {"alert_id": "p1:sepsis:1000", "opened_by": "triton", "run_began_on": "fallback"}
    later = {**detail, "suppressed_alert_id": "p1:sepsis:1300", "episode_start": "1970-01-01T00:21:40+00:00"}
    assert refusal(later, scores)["run_began_on"] == "triton"
