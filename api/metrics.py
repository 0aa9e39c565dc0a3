"""``GET /metrics``: Prometheus text for operators (engineer or admin token).

Nothing is counted in the API process: every scrape reads the worker stats files
(``<state_dir>/run/worker-<port>.json``, rewritten by each worker every second) and asks the
database for the alert figures, so the numbers are those of the pipeline, not of this server.
Worker counters carry a ``worker`` label (the stats file's name); sum them in queries.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from icuwatch.storage import lifecycle
from icuwatch.storage import repository as repo

log = logging.getLogger(__name__)

WORKER_STALE_S = 10.0
"""A worker whose stats file is older than this is reported down (it writes every second)."""
DRIFT_CACHE_S = 60.0
"""The drift report (hours of counts and scores) is computed at most once a minute for the scrapes."""


def read_worker_stats(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Each worker's last stats snapshot, by worker name (``worker-<port>``); unreadable files skipped."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(run_dir).glob("worker-*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now, or not ours
    return out


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class PipelineCollector(Collector):
    def __init__(self, settings: Any, sessions: Any) -> None:
        self.settings = settings
        self.sessions = sessions
        self._drift_cache: tuple[float, dict | None] = (0.0, None)

    def collect(self) -> Iterator[Metric]:
        yield from self._workers()
        try:
            yield from self._alerts()
        except Exception:  # a scrape must not fail because the database is briefly unavailable
            log.exception("alert metrics unavailable")
            up = GaugeMetricFamily("icuwatch_database_up", "1 if the database answered this scrape")
            up.add_metric([], 0)
            yield up
            return
        try:
            yield from self._drift()
        except Exception:
            log.exception("drift metrics unavailable")

    # ---------------------------------------------------------------------------------- workers

    def _workers(self) -> Iterator[Metric]:
        stats = read_worker_stats(self.settings.run_dir)
        now = time.time()
        up = GaugeMetricFamily(
            "icuwatch_worker_up", "1 if the worker wrote its stats in the last 10 s", labels=["worker"]
        )
        age = GaugeMetricFamily(
            "icuwatch_worker_stats_age_seconds", "Age of the worker's stats file", labels=["worker"]
        )
        processed = CounterMetricFamily(
            "icuwatch_messages_processed", "Input messages accepted by the worker", labels=["worker", "topic"]
        )
        dead = CounterMetricFamily(
            "icuwatch_messages_deadlettered", "Messages sent to the dead-letter topic", labels=["worker"]
        )
        dups = CounterMetricFamily(
            "icuwatch_messages_duplicate", "Duplicate messages that changed nothing", labels=["worker"]
        )
        scores = CounterMetricFamily(
            "icuwatch_scores", "Rows scored, by source (triton or in-process fallback)", labels=["worker", "source"]
        )
        batches = CounterMetricFamily(
            "icuwatch_score_batches", "Scoring batches, by source", labels=["worker", "source"]
        )
        fallback = CounterMetricFamily(
            "icuwatch_scores_fallback", "Rows scored by the in-process fallback", labels=["worker"]
        )
        errors = CounterMetricFamily("icuwatch_triton_errors", "Failed Triton calls", labels=["worker"])
        published = CounterMetricFamily(
            "icuwatch_scores_published", "Scores published to icu.scores", labels=["worker"]
        )
        stored = CounterMetricFamily("icuwatch_scores_stored", "Scores written to the database", labels=["worker"])
        pending = GaugeMetricFamily("icuwatch_scores_pending", "Patients waiting to be scored", labels=["worker"])
        raised = CounterMetricFamily("icuwatch_alerts_raised", "Alerts raised by the worker", labels=["worker"])
        lag = GaugeMetricFamily(
            "icuwatch_consumer_lag",
            "Messages behind the end of the partition (worker-reported)",
            labels=["worker", "topic", "partition"],
        )
        record_age = GaugeMetricFamily(
            "icuwatch_record_age_seconds",
            "Wall time since the producer stamped the last record the worker took",
            labels=["worker", "topic"],
        )

        for name, st in stats.items():
            at = _num(st.get("at"))
            a = now - at if at is not None else float("inf")
            up.add_metric([name], 1 if a <= WORKER_STALE_S else 0)
            if at is not None:
                age.add_metric([name], max(0.0, a))
            for topic, n in (st.get("processed_by_topic") or {}).items():
                if _num(n) is not None:
                    processed.add_metric([name, topic], n)
            for family, key in (
                (dead, "deadlettered"),
                (dups, "duplicates"),
                (published, "scores_published"),
                (stored, "scores_stored"),
                (pending, "scores_pending"),
                (raised, "alerts_raised"),
            ):
                if _num(st.get(key)) is not None:
                    family.add_metric([name], st[key])
            scorer = st.get("scorer") or {}
            for source in ("triton", "fallback"):
                if _num(scorer.get(f"{source}_rows")) is not None:
                    scores.add_metric([name, source], scorer[f"{source}_rows"])
                if _num(scorer.get(f"{source}_batches")) is not None:
                    batches.add_metric([name, source], scorer[f"{source}_batches"])
            if _num(scorer.get("fallback_rows")) is not None:
                fallback.add_metric([name], scorer["fallback_rows"])
            if _num(scorer.get("triton_errors")) is not None:
                errors.add_metric([name], scorer["triton_errors"])
            for topic, partition, n in _lag_entries(st.get("consumer_lag", st.get("lag"))):
                lag.add_metric([name, topic, partition], n)
            for topic, seconds in (st.get("record_age_s") or {}).items():
                if _num(seconds) is not None:
                    record_age.add_metric([name, topic], seconds)

        workers = GaugeMetricFamily("icuwatch_workers", "Worker stats files found")
        workers.add_metric([], len(stats))
        yield from (
            workers,
            up,
            age,
            processed,
            dead,
            dups,
            scores,
            batches,
            fallback,
            errors,
            published,
            stored,
            pending,
            raised,
            lag,
            record_age,
        )

    # ----------------------------------------------------------------------------------- alerts

    def _alerts(self) -> Iterator[Metric]:
        with self.sessions.begin() as s:
            by_state = repo.count_alerts(s)
            quality = lifecycle.alert_quality(s)
        db_up = GaugeMetricFamily("icuwatch_database_up", "1 if the database answered this scrape")
        db_up.add_metric([], 1)
        yield db_up
        alerts = GaugeMetricFamily("icuwatch_alerts", "Alerts in the database by state", labels=["state"])
        for state, n in by_state.items():
            alerts.add_metric([state], n)
        yield alerts
        open_ = GaugeMetricFamily("icuwatch_alerts_open", "Open alerts (raised or acknowledged)")
        open_.add_metric([], by_state.get("raised", 0) + by_state.get("acknowledged", 0))
        yield open_
        for name, key, help_ in (
            (
                "icuwatch_alerts_per_patient_day",
                "alerts_per_patient_day",
                "Alerts per patient-day observed (all alerts in the database)",
            ),
            ("icuwatch_patient_days", "patient_days", "Patient-days observed (admissions and scores)"),
            (
                "icuwatch_time_to_ack_median_seconds",
                "median_time_to_ack_s",
                "Median seconds from raise to acknowledgement",
            ),
            (
                "icuwatch_time_to_ack_p90_seconds",
                "p90_time_to_ack_s",
                "90th percentile of seconds from raise to acknowledgement",
            ),
        ):
            if _num(quality.get(key)) is not None:  # absent, not NaN, while undefined
                g = GaugeMetricFamily(name, help_)
                g.add_metric([], quality[key])
                yield g
        for key, help_ in (
            ("escalated", "Alerts escalated at least once"),
            ("suppressed", "Alerts not stored because an episode of theirs was open"),
        ):
            g = GaugeMetricFamily(f"icuwatch_alerts_{key}", help_)
            g.add_metric([], quality.get(key) or 0)
            yield g
        kinds = GaugeMetricFamily("icuwatch_alerts_by_kind", "Alerts in the database by kind", labels=["kind"])
        for kind, n in (quality.get("by_kind") or {}).items():
            kinds.add_metric([kind], n)
        yield kinds

    # ------------------------------------------------------------------------------------ drift

    def _drift(self) -> Iterator[Metric]:
        """The drift report with its default windows (``storage/drift_report.py``): per unit, PSI per
        input column and risk, absent-modality shares, feed rates, and the operations alarms."""
        from icuwatch.storage import drift_report

        cached_at, r = self._drift_cache
        if r is None or time.monotonic() - cached_at > DRIFT_CACHE_S:
            with self.sessions() as s:
                r = drift_report.report(s)
            self._drift_cache = (time.monotonic(), r)
        psi = GaugeMetricFamily(
            "icuwatch_drift_psi", "PSI, current window against reference, per unit", labels=["unit", "signal", "name"]
        )
        absent = GaugeMetricFamily(
            "icuwatch_modality_absent_share",
            "Share of scores without the modality (current window)",
            labels=["unit", "modality"],
        )
        feeds = GaugeMetricFamily(
            "icuwatch_feed_messages_per_patient_hour",
            "Messages per patient-hour (current window)",
            labels=["unit", "topic"],
        )
        volume = GaugeMetricFamily(
            "icuwatch_alert_episodes_per_patient_day",
            "Risk alert episodes per patient-day (current window)",
            labels=["unit"],
        )
        out_of_band = GaugeMetricFamily(
            "icuwatch_alert_volume_out_of_band",
            "1: the unit's alert volume left its band (an operations alarm; clinical alerts are unchanged)",
            labels=["unit"],
        )
        flagged = GaugeMetricFamily(
            "icuwatch_drift_flagged", "1 per signal the drift report flags", labels=["unit", "signal", "name"]
        )
        for unit, entry in r["units"].items():
            for group in ("inputs", "scores"):
                for name, v in entry[group].items():
                    if v["psi"] is not None:
                        psi.add_metric([unit, group, name], v["psi"])
            for modality, v in entry["modalities"].items():
                absent.add_metric([unit, modality], v["absent_share"][1])
            for topic, v in entry["feeds"].items():
                if v["current_rate"] is not None:
                    feeds.add_metric([unit, topic], v["current_rate"])
            alerts = entry["alerts_per_patient_day"]
            if alerts["current_rate"] is not None:
                volume.add_metric([unit], alerts["current_rate"])
            out_of_band.add_metric([unit], int(alerts["out_of_band"]))
        for flag in r["flags"]:
            flagged.add_metric([flag["unit"], flag["signal"], str(flag["name"])], 1)
        yield from (psi, absent, feeds, volume, out_of_band, flagged)


def _lag_entries(lag: Any) -> Iterator[tuple[str, str, float]]:
    """Accepts {topic: n}, {topic: {partition: n}} or {"topic:partition": n}."""
    if not isinstance(lag, dict):
        return
    for key, v in lag.items():
        if isinstance(v, dict):
            for p, n in v.items():
                if _num(n) is not None:
                    yield str(key), str(p), n
        elif _num(v) is not None:
            topic, _, part = str(key).rpartition(":") if ":" in str(key) else (str(key), "", "")
            yield topic, part, v


def make_registry(settings: Any, sessions: Any) -> CollectorRegistry:
    """A registry of its own (not the process-global one) with the pipeline collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(settings, sessions))
    return registry
