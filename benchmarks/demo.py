"""``icuwatch demo``: the whole pipeline on the embedded default, then a summary.

Starts the local stack, a worker, and the bedside simulator (plus a few deliberately malformed
messages), waits until the worker has consumed everything, and reads back what landed: scores,
alerts with their lead time against the simulated onsets, and dead letters.
"""

from __future__ import annotations

import json
import sys
import time

from icuwatch.core.settings import Settings

MALFORMED = (
    ("icu.vitals", b"{not json"),
    ("icu.vitals", b'{"schema_version":1,"patient_id":"%s","event_time":1,"hr":80}'),
    (
        "icu.labs",
        b'{"schema_version":1,"patient_id":"%s","event_time":1764000000,"analyte":"lactate","value":2,"unit":"mg/dL","result_time":1764000001}',
    ),
)


def worker_stats(settings: Settings) -> dict:
    from icuwatch.deploy.worker_process import stats_path

    path = stats_path(settings)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def wait_drained(settings: Settings, expected_inputs: int, timeout_s: float) -> dict:
    """Wait until the worker has taken every input message and its scores have reached the DB."""
    deadline = time.monotonic() + timeout_s
    stats = worker_stats(settings)
    while time.monotonic() < deadline:
        stats = worker_stats(settings)
        taken = stats.get("processed", 0) + stats.get("deadlettered", 0)
        settled = stats.get("scores_taken", -1) >= stats.get("scores_published", 0) > 0
        shadow = stats.get("shadow")
        if shadow:  # the shadow's scores (those it answered) stored too
            settled = settled and stats.get("shadow_scores_taken", -1) >= shadow.get("shadow_rows", 0)
        if taken >= expected_inputs and settled:
            time.sleep(2.0)
            return worker_stats(settings)
        time.sleep(0.5)
    return stats


def lead_times(alerts: list[dict], truth: list[dict]) -> list[dict]:
    """Each alert with its time relative to the simulated onset (negative = before onset)."""
    onset = {t["patient_id"]: t for t in truth}
    out = []
    for a in alerts:
        gt = onset.get(a["patient_id"], {})
        t0 = gt.get("onset_time")
        out.append(
            {
                **a,
                "true_condition": gt.get("condition", "unknown"),
                "minutes_after_onset": None if t0 is None else round((a["event_time"] - t0) / 60.0, 1),
            }
        )
    return out


def model_key(model: str, version: str | None) -> str:
    """``<name>/<version>``, or the name alone for a model without a version (the fallback rules)."""
    return f"{model}/{version}" if version else model


def score_counts(rows) -> dict:
    """Stored scores as the summary reports them, from ``(model, model_version, source, count)``
    rows: ``{"by_model": {"<name>/<version>": n, ...}, "triton": n, "fallback": n}``."""
    by_model: dict[str, int] = {}
    by_source = {"triton": 0, "fallback": 0}
    for model, version, source, count in rows:
        key = model_key(model, version)
        by_model[key] = by_model.get(key, 0) + int(count)
        by_source[source] = by_source.get(source, 0) + int(count)
    return {"by_model": dict(sorted(by_model.items())), **by_source}


def read_back(session, prefix: str) -> tuple[list[dict], dict]:
    """What the run stored, for the summary: its alerts (each with the model and version that opened
    it) and its scores counted by model and by source (:func:`score_counts`)."""
    from sqlalchemy import func, select

    from icuwatch.storage import repository
    from icuwatch.storage.models import Score

    alerts = [
        {
            "alert_id": a.alert_id,
            "patient_id": a.patient_id,
            "kind": a.kind,
            "risk": round(a.risk, 3),
            "model": a.model,
            "model_version": a.model_version,
            "source": a.source,
            "event_time": a.event_time.timestamp(),
        }
        for a in repository.list_alerts(session, limit=10_000)
        if a.patient_id.startswith(prefix)
    ]
    scores = score_counts(
        session.execute(
            select(Score.model, Score.model_version, Score.source, func.count())
            .where(Score.patient_id.startswith(prefix))
            .group_by(Score.model, Score.model_version, Score.source)
        ).all()
    )
    return alerts, scores


def read_back_shadow(session, prefix: str, sick: set[str]) -> dict | None:
    """The shadow model's side of the run (``ICUWATCH_SHADOW_MODEL``): its scores by model and its
    would-be alerts, None when no shadow scored. Never on the nurses' board."""
    from sqlalchemy import func, select

    from icuwatch.storage.models import ShadowAlert, ShadowScore

    counts = session.execute(
        select(ShadowScore.model, ShadowScore.model_version, func.count())
        .where(ShadowScore.patient_id.startswith(prefix))
        .group_by(ShadowScore.model, ShadowScore.model_version)
    ).all()
    if not counts:
        return None
    alerted = session.execute(
        select(ShadowAlert.patient_id, ShadowAlert.kind).where(ShadowAlert.patient_id.startswith(prefix))
    ).all()
    patients = {pid for pid, _ in alerted}
    return {
        "by_model": {model_key(m, v): int(n) for m, v, n in counts},
        "would_be_alerts": len(alerted),
        "deteriorating_alerted": len(patients & sick),
        "stable_alerted": len(patients - sick),
    }


def describe(summary: dict) -> str:
    """What happened and where to look, for a person (the JSON line is for machines)."""
    p = summary["patients"]
    lines = [
        "",
        f"icuwatch demo {summary['run']} -- {summary['data']}",
        f"  messages produced: {sum(summary['produced'].values())} "
        f"({', '.join(f'{k} {v}' for k, v in summary['produced'].items())})",
        f"  processed by the worker: {summary['processed']}, dead-lettered: {summary['deadlettered']}, "
        f"produced but never taken by the worker: {summary['not_taken']}",
        f"  scores stored: {summary['scores']['triton']} via Triton, {summary['scores']['fallback']} by fallback rules "
        f"({', '.join(f'{k} {v}' for k, v in summary['scores']['by_model'].items()) or 'none'})",
        f"  patients: {p['total']}, deteriorating {p['deteriorating']}, of which alerted {p['deteriorating_alerted']}; "
        f"stable patients alerted: {p['stable_alerted']}",
    ]
    if summary.get("shadow"):
        sh = summary["shadow"]
        lines.append(
            f"  shadow ({', '.join(f'{k} {v}' for k, v in sh['by_model'].items())}): {sh['would_be_alerts']} would-be "
            f"alerts, never shown; deteriorating alerted {sh['deteriorating_alerted']}, stable {sh['stable_alerted']}"
            " -- `icuwatch shadow report` compares"
        )
    for a in summary["alerts"]:
        lag = a["minutes_after_onset"]
        when = "no onset (stable)" if lag is None else f"{lag:+.1f} min after the simulated onset"
        model = model_key(a["model"], a.get("model_version"))
        lines.append(f"  ALERT {a['kind']:<13} {a['patient_id']} ({a['true_condition']}), {when}, by {model}")
    lines += [
        f"  database: {summary['database']} (tables patients, scores, alerts)",
        f"  ground truth: {summary['ground_truth']}",
        f"  worker log: {summary['worker_log']}",
    ]
    if summary.get("board"):
        lines += [
            "  the broker, tritonserver and the board keep running: `icuwatch stack status`, "
            "stop with `icuwatch stack down`",
            f"  BOARD: open {summary['board']['url']}",
            f"         (or {summary['board']['url'].split('?')[0]} and log in with token {summary['board']['token']})",
        ]
    lines.append("")
    return "\n".join(lines)


def run_demo(
    settings: Settings,
    minutes: float,
    patients: int,
    speed: float,
    seed: int,
    keep_stack: bool = True,
    population: str = "icu",
) -> dict:
    from icuwatch.deploy import stack
    from icuwatch.deploy.worker_process import start_worker, stop_worker
    from icuwatch.sources.simulator import Simulation
    from icuwatch.sources.simulator.producer import publish, write_ground_truth
    from icuwatch.storage import db
    from icuwatch.streams.kafka.producer import make_producer

    print("icuwatch demo: starting broker, tritonserver and database ...", file=sys.stderr)
    stack.up(settings)
    run_tag = time.strftime("%H%M%S")
    prefix = f"demo{run_tag}-"
    worker_log = settings.log_dir / "demo-worker.log"
    from icuwatch.deploy.worker_process import stats_path

    stats_path(settings).unlink(missing_ok=True)
    worker = start_worker(settings, worker_log)
    try:
        sim = Simulation(
            n_patients=patients,
            seed=seed,
            start_time=time.time(),
            duration_s=minutes * 60.0 * max(speed, 1.0),
            patient_prefix=prefix,
            population=population,  # type: ignore[arg-type]
        )
        truth_path = settings.state_dir / f"{prefix}truth.json"
        write_ground_truth(sim, truth_path)
        producer = make_producer(settings)
        bad_key = f"{prefix}0000".encode()
        for topic, payload in MALFORMED:
            producer.send(topic, key=bad_key, value=payload.replace(b"%s", bad_key))
        print(
            f"icuwatch demo: simulating {patients} patients for {minutes:g} min at speed {speed:g} ...", file=sys.stderr
        )
        produced = publish(sim, producer, speed=speed, progress=sys.stderr.isatty())
        for topic, payload in MALFORMED:
            producer.send(topic, key=bad_key, value=payload.replace(b"%s", bad_key))
        producer.flush()
        producer.close()
        produced_total = sum(produced.values()) + 2 * len(MALFORMED)
        stats = wait_drained(settings, produced_total, timeout_s=max(120.0, minutes * 60.0))
    finally:
        stop_worker(worker)
        if not keep_stack:
            stack.down(settings)

    truth = json.loads(truth_path.read_text())
    sick = [t["patient_id"] for t in truth if t.get("onset_time") is not None]
    sessions = db.session_factory(db.make_engine(settings.database_url))
    with sessions() as session:
        alerts, scores = read_back(session, prefix)
        shadow = read_back_shadow(session, prefix, set(sick))
    from icuwatch.deploy import api_server
    from icuwatch.storage.tokens import issue_token

    board = None
    if keep_stack:
        token = issue_token(settings, user="demo-nurse", role="nurse")
        board = {
            "url": f"{api_server.url(settings)}/?token={token}",
            "token": token,
            "user": "demo-nurse",
            "role": "nurse",
        }
    alerted = {a["patient_id"] for a in alerts}
    return {
        "run": prefix.rstrip("-"),
        "data": "simulated patients (icuwatch simulator), not real data",
        "population": sim.population,
        "produced": {**produced, "malformed": 2 * len(MALFORMED)},
        "processed": stats.get("processed", 0),
        "processed_by_topic": stats.get("processed_by_topic", {}),
        "deadlettered": stats.get("deadlettered", 0),
        "duplicates_ignored": stats.get("duplicates", 0),
        "not_taken": max(0, produced_total - stats.get("processed", 0) - stats.get("deadlettered", 0)),
        "scores": scores,
        "shadow": shadow,
        "patients": {
            "total": len(truth),
            "deteriorating": len(sick),
            "deteriorating_alerted": len(alerted & set(sick)),
            "stable_alerted": len(alerted - set(sick)),
        },
        "alerts": lead_times(alerts, truth),
        "ground_truth": truth_path.as_posix(),
        "database": settings.database_url.split("@")[-1],
        "worker_log": worker_log.as_posix(),
        "board": board,
    }
