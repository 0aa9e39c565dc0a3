"""Live-model operations while the worker runs (issue 22 must-have 1), end to end on real parts
(Tansu, a worker subprocess, tritonserver, SQLite): ``icuwatch models shadow early_warning`` makes
the running worker score beside the live student, ``icuwatch models promote --shadow`` makes the
rule model the live one, and no worker restarts."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from sqlalchemy import func, select
from stack_fixtures import free_port, running_worker, wait_for

from icuwatch.cli.main import main
from icuwatch.core import schemas, topics
from icuwatch.core.settings import get_settings
from icuwatch.storage import db
from icuwatch.storage.models import Score, ShadowScore
from icuwatch.streams.kafka.producer import make_producer

pytestmark = pytest.mark.stack


def test_a_running_worker_follows_the_shadow_and_a_promotion(stack, tmp_path, monkeypatch, capsys):
    base, env = stack
    url = f"sqlite:///{tmp_path / 'roles.db'}"
    db.upgrade(url)
    settings = base.model_copy(
        update={"database_url": url, "app_id": f"icuwatch-roles-{uuid.uuid4().hex[:8]}", "worker_web_port": free_port()}
    )
    monkeypatch.setenv("ICUWATCH_DATABASE_URL", url)
    get_settings.cache_clear()
    sessions = db.session_factory(db.make_engine(url))
    pids = [f"mr{uuid.uuid4().hex[:6]}-{i}" for i in range(2)]
    stop = threading.Event()

    def monitors() -> None:
        """Vital signs a simulated minute apart (a score every five): scores keep coming."""
        producer = make_producer(settings)
        t = time.time() - 6 * 3600
        while not stop.is_set():
            for pid in pids:
                v = schemas.Vitals(patient_id=pid, event_time=t, hr=88, rr=18, spo2=95, sbp=118, temp=37.2)
                producer.send(topics.VITALS, key=pid.encode(), value=v.to_bytes())
            producer.flush()
            t += 60.0
            time.sleep(0.05)
        producer.close()

    def count(table, model: str | None = None) -> int:
        with sessions() as s:
            q = select(func.count()).select_from(table).where(table.patient_id.in_(pids))
            if model is not None:
                q = q.where(table.model == model)
            return s.scalar(q) or 0

    def settled(table, quiet_s: float = 3.0) -> bool:
        before = count(table)
        time.sleep(quiet_s)
        return count(table) == before

    def first(table, model: str, pid: str):
        with sessions() as s:
            return s.scalar(select(func.min(table.event_time)).where(table.patient_id == pid, table.model == model))

    def last(table, model: str, pid: str):
        with sessions() as s:
            return s.scalar(select(func.max(table.event_time)).where(table.patient_id == pid, table.model == model))

    sender = threading.Thread(target=monitors, daemon=True)
    try:
        with running_worker(settings, env, tmp_path / "worker.log"):
            sender.start()
            assert wait_for(lambda: count(Score, "student_live") >= 4, timeout_s=60), "no live scores"
            assert count(ShadowScore) == 0
            assert main(["models", "shadow", "early_warning", "--by", "eng.ito", "--json"]) == 0
            assert json.loads(capsys.readouterr().out)["model"] == "early_warning"
            assert wait_for(lambda: count(ShadowScore, "early_warning") >= 4, timeout_s=60), "no shadow scores"
            assert count(Score, "early_warning") == 0  # the shadow reaches no nurse-facing table

            assert main(["models", "promote", "--shadow", "--by", "eng.ito"]) == 0
            capsys.readouterr()
            assert wait_for(
                lambda: all(first(Score, "early_warning", pid) is not None for pid in pids), timeout_s=60
            ), "the promotion was not followed"
            # The shadow agent may still be storing scores submitted before the promotion: once it
            # has caught up, no shadow score follows, and per patient every score before the
            # promotion is the student's (live) and early_warning's (shadow), every one after it
            # early_warning's alone (the switch is one step, worker.follow_model_roles).
            assert wait_for(lambda: settled(ShadowScore), timeout_s=60), "shadow scores keep coming"
            for pid in pids:
                promoted_at = first(Score, "early_warning", pid)
                for before in (last(Score, "student_live", pid), last(ShadowScore, "early_warning", pid)):
                    assert before is None or before < promoted_at  # None: this patient's first score came after
            assert count(Score, "student_live") >= 4 and count(ShadowScore, "early_warning") >= 4
            assert main(["models", "roles", "--json"]) == 0
            roles = json.loads(capsys.readouterr().out)
            assert (roles["live"], roles["shadow"]) == ("early_warning", "")
            assert [h["role"] for h in roles["history"]] == ["shadow", "live", "shadow"]
    finally:
        stop.set()
        get_settings.cache_clear()
