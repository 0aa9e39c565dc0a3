"""Drift injected by the simulator is flagged (issue 22, must-have 5), end to end on real parts:
the simulator -> Tansu -> a worker subprocess (its drift counts, scores through tritonserver) ->
SQLite -> the drift report.

One simulated ward of 8 patients (the stylised population: half of them deteriorate) over 10 hours
(event time in 2025, apart from every other test's data on the shared broker), with three faults
from hour 3 on: SICU's monitors read SpO2 6 points low, MICU's lab reports creatinine in µmol/L
under the mg/dL label, MICU's X-rays stop. The reference window is hours 0-3; the current window
grows an hour at a time from hour 3, and each fault must be flagged for its unit within its stated
time, and not for the other unit: SpO2 offset within 1 h, creatinine units within 4 h (labs come
every few hours), X-rays stopped within 7 h (an empty window is unlikely enough only once ~7
films were expected). Measured (2026-12-06): 1 h, 1 h and 3 h.

The report also flags what the ward's own course moved (admission-hour labs and films, patients
deteriorating): PSI and the rate tests compare two windows of one small unit, so a sicker case mix
is drift too. So the other unit must not be flagged for the same signal *within the stated time*;
later it may be (CI once saw MICU's SpO2 at PSI 0.28 over 7 h, its deteriorating patients'
desaturation; how many scores each hour gets varies with how the worker interleaves the topics).

The whole simulation goes out at once, so the worker may read an hour of a patient's vitals, films
and labs before the ADT topic's admission: those counts are held until the patient's unit is known
(``streams/drift.py``). Before they were, CI once saw MICU's admission-hour films and scores under
the unit "unknown" (its reference window then expected too few films: X-rays stopped went unflagged).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from stack_fixtures import free_port, running_worker, wait_for

from icuwatch.sources.simulator import Simulation
from icuwatch.sources.simulator.drift import Injection
from icuwatch.sources.simulator.producer import publish
from icuwatch.storage import db
from icuwatch.storage.drift_report import report
from icuwatch.storage.models import DriftCount
from icuwatch.streams.kafka.producer import make_producer

pytestmark = pytest.mark.stack

START = datetime(2025, 1, 6, tzinfo=timezone.utc)
HOURS, FAULT_H = 10, 3
STATED_H = {("SICU", "inputs", "spo2"): 1, ("MICU", "inputs", "creatinine"): 4, ("MICU", "feeds", "icu.cxr"): 7}


def test_injected_drift_is_flagged_for_its_unit_within_the_stated_time(stack, tmp_path):
    base, env = stack
    url = f"sqlite:///{tmp_path / 'drift.db'}"
    db.upgrade(url)
    settings = base.model_copy(
        update={"database_url": url, "app_id": f"icuwatch-drift-{uuid.uuid4().hex[:8]}", "worker_web_port": free_port()}
    )
    faults = [
        Injection(kind, unit, FAULT_H * 3600.0)
        for (unit, _, _), kind in zip(STATED_H, ("monitor_offset", "lab_units", "xray_stop"))
    ]
    sim = Simulation(
        8, seed=11, start_time=START.timestamp(), duration_s=HOURS * 3600.0, waveforms=False,
        patient_prefix=f"dr{uuid.uuid4().hex[:6]}", drift=faults,
    )  # fmt: skip
    assert {p.unit for p in sim.patients} == {"MICU", "SICU"}
    sessions = db.session_factory(db.make_engine(url))
    last_hour = START + timedelta(hours=HOURS - 1)

    def last_hour_counted() -> bool:
        """Every patient seen in the last hour (partitions are consumed independently)."""
        with sessions() as s:
            rows = s.scalars(
                select(DriftCount.counts).where(DriftCount.bucket_start == last_hour, DriftCount.column == "patients")
            )
            return sum(c[0] for c in rows) == len(sim.patients)

    log = tmp_path / "worker.log"
    with running_worker(settings, {**env, "ICUWATCH_DRIFT_FLUSH_S": "1"}, log):
        producer = make_producer(settings)
        publish(sim, producer, speed=0)
        producer.close()
        assert wait_for(last_hour_counted, timeout_s=300, interval_s=2.0), f"log:\n{log.read_text()[-3000:]}"
        wait_for(lambda: False, timeout_s=3.0)  # the last flush of the newest hour

    first_flagged: dict[tuple[str, str, str], int] = {}
    with sessions() as s:
        for h in range(FAULT_H + 1, HOURS + 1):
            r = report(
                s,
                current=timedelta(hours=h - FAULT_H),
                reference=timedelta(hours=FAULT_H),
                until=START + timedelta(hours=h),
            )
            for flag in r["flags"]:
                first_flagged.setdefault((flag["unit"], flag["signal"], flag["name"]), h - FAULT_H)
        final = r
    for signal, stated in STATED_H.items():
        assert signal in first_flagged, (signal, final["flags"])
        assert first_flagged[signal] <= stated, (signal, first_flagged[signal])
    for (unit, group, name), stated in STATED_H.items():  # the fault is the unit's, not the ward's
        other = "MICU" if unit == "SICU" else "SICU"
        assert first_flagged.get((other, group, name), HOURS) > stated, (other, group, name, first_flagged)
    print({f"{u} {g} {n}": h for (u, g, n), h in sorted(first_flagged.items())})
