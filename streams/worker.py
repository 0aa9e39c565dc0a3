"""The Faust worker: ingest every input topic into per-patient state, score in batches through
Triton, raise alerts with hysteresis, store scores and alerts.

Topics (all keyed by patient id, co-partitioned):
  icu.vitals, icu.waveforms, icu.labs, icu.cxr, icu.adt  ->  ingest  ->  icu.scores

Per-patient state lives in memory and is checkpointed to the ``patient_state`` table (and so to its
changelog) on every score, important event, or minute of event time -- not on every 1 Hz sample,
which made the changelog as large as the input and table recovery slower than the stream. Input
messages are acknowledged (so their offsets committed) only once a checkpoint covers them and their
scores are published (``streams/kafka/acks.py``): a worker killed at any point loses nothing.
  icu.scores  ->  raise_alerts  ->  database + icu.alerts
  anything that fails to decode  ->  icu.deadletter (original bytes + reason)
"""

from __future__ import annotations

import json
import logging
import time

import faust

from icuwatch.core import schemas, topics
from icuwatch.streams import alerting, live_row, liveness, memory_profile, patient_state, student_row
from icuwatch.streams import ingest as decisions
from icuwatch.streams.app import (
    alerts_topic,
    app,
    deadletter_topic,
    episodes,
    inputs_topic,
    patients,
    scores_topic,
    settings,
)
from icuwatch.streams.batcher import ScoreBatcher
from icuwatch.streams.kafka.acks import PendingAcks
from icuwatch.streams.kafka.commit_floor import fetched_in
from icuwatch.streams.kafka.producer import is_live
from icuwatch.streams.patient_state import PatientState
from icuwatch.streams.scoring import StudentScorer, TritonScorer, served_model_info
from icuwatch.streams.scoring import is_live as is_live_model
from icuwatch.streams.sink import DATA_BACK_REASON, StorageSink
from icuwatch.streams.stats import stats_path
from icuwatch.streams.waveform_state import WINDOW_S as WAVEFORM_WINDOW_S
from icuwatch.streams.waveform_state import WaveformState

log = logging.getLogger(__name__)

live_state: dict[bytes, PatientState] = {}
"""Each patient's live state; ``patients`` holds its last checkpoint."""
pending_acks = PendingAcks(hold_s=WAVEFORM_WINDOW_S)

stats: dict[str, int] = {
    "processed": 0,
    "duplicates": 0,
    "deadlettered": 0,
    "scores_submitted": 0,
    "scores_published": 0,
    "alerts_raised": 0,
    "alerts_suppressed": 0,
    "alerts_republished": 0,
    "scores_taken": 0,
    "checkpoints": 0,
    "refused_time": 0,
}
processed_by_topic: dict[str, int] = {t: 0 for t in topics.INPUTS}
done_offsets: dict[tuple[str, int], int] = {}
"""Per input topic and partition, the offset of the last record the ingest agent took (the agent
handles one record at a time, so every earlier one is done): a bench compares it with the offsets its
producer was acknowledged, the true end of each partition, since this Tansu's end offsets are stale."""
last_record_ts: dict[str, float] = {}
"""Per input topic, the Kafka timestamp (producer time) of the last record taken: how far behind
the worker is in wall time, independent of the broker's end offsets."""
waveforms = WaveformState(settings.waveform_feature_interval_s)
clock_rule = decisions.ClockRule.of(settings)
storage = StorageSink(settings.database_url)
served_model: dict | None = served_model_info(settings) if settings.scoring_model else None
"""What the worker knows of ``scoring_model`` (``scoring.served_model_info``); None: the rules model."""
thresholds = alerting.thresholds_from(
    settings, served_model["thresholds"] if served_model and settings.alert_thresholds == "model" else None
)
"""What the scoring model's risks alert at (its card's thresholds, unless set explicitly)."""
rule_thresholds = alerting.thresholds_from(settings)
"""What the fallback's rule risks alert at: the settings' (the rules are not the model's scale)."""
liveness_rule = liveness.LivenessRule.of(settings)
watches: dict[bytes, liveness.Watch] = {}
"""Each patient's data-liveness episode (``streams/liveness.py``)."""
feeds_written: liveness.FeedTimes = {}
"""What the ``data_feeds`` table was last sent, so each check writes only what changed."""
watch_start = time.time()
"""Silence is counted from no earlier than when this worker took its partitions."""
_batcher: ScoreBatcher | None = None


def batcher() -> ScoreBatcher:
    global _batcher
    if _batcher is None:
        scorer = StudentScorer(settings, served_model) if served_model else TritonScorer(settings)
        _batcher = ScoreBatcher(scorer, publish_score, settings.batch_max, settings.batch_wait_s)
    return _batcher


def cohort_row(state: PatientState, t: float) -> dict | None:
    """The served model's row of the patient at ``t`` (None: the rules model scores the feature row)."""
    if served_model is None:
        return None
    if is_live_model(served_model):
        return live_row.row(state, t, served_model["norm"])
    return student_row.cohort_row(state, t, served_model["norm"])


async def publish_score(score: schemas.Score) -> None:
    await scores_topic.send(key=score.key(), value=score.to_bytes())
    stats["scores_published"] += 1


async def dead_letter(event: faust.EventT, reason: str, patient_id: str | None = None) -> None:
    msg = event.message
    if patient_id is None and isinstance(msg.key, bytes):
        patient_id = msg.key.decode(errors="replace")
    letter = schemas.DeadLetter.of(msg.topic, msg.value or b"", reason[:500], patient_id, msg.partition, msg.offset)
    await deadletter_topic.send(key=letter.key(), value=letter.to_bytes())
    stats["deadlettered"] += 1


def _ack(events: list) -> None:
    for event in events:
        event.ack()


def checkpoint(key: bytes, everything: bool = False) -> bool:
    """Write the patient's live state to the table and acknowledge the events it covers; not while
    one of the patient's scores waits to be published (see ``streams/kafka/acks.py``)."""
    state = live_state.get(key)
    if state is None or not pending_acks.can_checkpoint(key):
        return False
    patient_state.mark_checkpoint(state, decisions.phase_s(key, patient_state.CHECKPOINT_EVERY_S))
    patients[key] = state
    stats["checkpoints"] += 1
    _ack(pending_acks.release(key, everything))
    return True


def score_published(key: bytes):
    """The batcher's callback for one submitted score (once, even if its batch is retried)."""
    called, generation = False, pending_acks.generation

    def published() -> None:
        nonlocal called
        if called or generation != pending_acks.generation:  # submitted before a rebalance: re-read since
            return
        called = True
        pending_acks.score_published(key, generation)
        if key in live_state:
            checkpoint(key)

    return published


@app.agent(inputs_topic)
async def ingest(stream: faust.StreamT) -> None:
    async for event in stream.noack().events():  # type: ignore[attr-defined]
        topic = event.message.topic
        if event.message.timestamp:
            last_record_ts[topic] = float(event.message.timestamp)
        done_offsets[(topic, event.message.partition)] = event.message.offset
        try:
            msg = schemas.decode(topic, event.message.value, event.message.key)
        except schemas.SchemaError as exc:
            await dead_letter(event, exc.reason)
            event.ack()
            continue
        if event.message.key is None:
            await dead_letter(event, "missing message key (topics are partitioned by patient id)", msg.patient_id)
            event.ack()
            continue
        key = msg.key()
        state = live_state.get(key) or patients.get(key) or patient_state.new_state()
        live_state[key] = state
        where = (topic, event.message.partition, event.message.offset, event.message.timestamp or 0.0)
        try:
            accepted = decisions.apply_message(
                state, msg, where, waveforms, clock_rule, live=is_live(event.message.headers)
            )
        except decisions.Refused as exc:  # implausible event time: the state is untouched
            stats["refused_time"] += 1
            await dead_letter(event, exc.reason)
            event.ack()
            continue
        except Exception as exc:  # a valid message the feature code cannot handle: never kill the agent
            log.warning("message from %s not applied: %s", topic, type(exc).__name__)
            await dead_letter(event, f"not processable: {type(exc).__name__}: {exc}"[:300])
            event.ack()
            continue
        processed_by_topic[topic] += 1
        stats["processed"] += 1
        if not accepted:
            stats["duplicates"] += 1
            event.ack()
            continue
        event.message.value = event.value = None  # held until a checkpoint: keep only the offset
        pending_acks.add(key, event, msg.end_time() if isinstance(msg, schemas.WAVEFORM_TYPES) else None)
        if isinstance(msg, schemas.Adt):
            await storage.upsert_patient(msg)
        step = decisions.next_step(state, msg, key, waveforms, settings.score_interval_s)
        if step.score_reason is not None:
            t = step.score_time
            stats["scores_submitted"] += 1
            pending_acks.score_submitted(key)
            batcher().submit(
                msg.patient_id,
                t,
                patient_state.features_at(state, t),
                patient_state.staleness(state, t),
                step.score_reason,
                state["revision"],
                cohort_row(state, t),
                published=score_published(key),
            )
        elif step.checkpoint:
            checkpoint(key)


@app.timer(interval=2.0)
async def checkpoint_idle_patients() -> None:
    """Patients whose messages stopped arriving still get their last ones acknowledged."""
    for key in pending_acks.idle(settings.ack_idle_s):
        checkpoint(key, everything=True)


@app.on_partitions_revoked.connect  # type: ignore[arg-type]
async def forget_live_state(sender, revoked, **kwargs) -> None:
    """Partitions may move to another worker: drop live copies and unacknowledged events (Faust
    seeks back to the committed offsets, so they are read again); the checkpoints are the truth."""
    global watch_start
    live_state.clear()
    pending_acks.clear()
    watches.clear()
    watch_start = time.time()


@app.agent(scores_topic)
async def raise_alerts(stream: faust.StreamT) -> None:
    """Scores are taken in batches (``alert_batch_max`` or what came within ``alert_batch_wait_s``)
    and stored in one transaction: one at a time, the database's round trip per score made the
    alerts of a ward scored together wait seconds behind each other. Faust acknowledges a batch's
    events once the batch is done (also when it raised, as it does a single event)."""
    batches = stream.take_events(settings.alert_batch_max, within=settings.alert_batch_wait_s)  # type: ignore[attr-defined]
    async for events in batches:
        await take_scores(events)


async def take_scores(events: list) -> None:
    """One batch of ``icu.scores`` events. Events fetched before a rebalance that happened while
    they waited in the batch are left out: their partition may be another worker's now, and it
    reads them again from the committed offset."""
    scores = []
    for event in events:
        if not fetched_in(event.message, app.consumer_generation_id):
            continue
        try:
            scores.append(schemas.decode_score(event.message.value, event.message.key))
        except schemas.SchemaError as exc:
            await dead_letter(event, exc.reason)
    if not scores:
        return
    states = {}
    for score in scores:
        key = score.key()
        if key not in states:
            states[key] = episodes.get(key) or alerting.new_alert_state()
    # The database is the truth about a nurse's resolve: an open episode without an open alert
    # there is closed, so a risk that stays high alerts again (alerting.py).
    resolved = await storage.store_scores(
        scores, {key.decode(): alerting.open_kinds(state) for key, state in states.items()}
    )
    steps = alerting.step_batch(
        states, scores, lambda s: rule_thresholds if s.source == "fallback" else thresholds, resolved
    )
    for raised, closed in steps:  # in score order: a closed episode frees its kind for the next alert
        stats["scores_taken"] += 1
        for alert in raised:
            await send_alert(alert)
        for closed_id in closed:
            await storage.close_episode(closed_id)
    for key, state in states.items():
        episodes[key] = state


async def send_alert(alert: schemas.Alert) -> None:
    """Store ``alert`` and publish it to ``icu.alerts`` (again, if stored before a restart)."""
    outcome = await storage.store_alert(alert)
    if outcome == "suppressed":
        stats["alerts_suppressed"] += 1
        return
    stats["alerts_raised" if outcome == "stored" else "alerts_republished"] += 1
    await alerts_topic.send(key=alert.key(), value=alert.to_bytes())


@app.timer(interval=settings.liveness_check_s)
async def check_liveness() -> None:
    """Every patient of this worker's partitions (live, or only checkpointed: a monitor that stopped
    while no worker ran): silent vital signs raise a data-liveness alert, data that came back ends
    it, and when each feed last arrived goes to the database for the board."""
    if app.tables.recovery.in_recovery:  # type: ignore[attr-defined]
        return
    now = time.time()
    open_ids = {w.alert_id for w in watches.values() if w.alert_id is not None}
    still_open = await storage.open_alert_ids(open_ids) if open_ids else set()
    changed: liveness.FeedTimes = {}
    for key in set(live_state) | set(patients.keys()):
        state = live_state.get(key) or patients.get(key)
        if state is None:
            continue
        pid = key.decode()
        watch = watches.setdefault(key, liveness.Watch())
        liveness.resolved_by_nurse(watch, still_open, now)
        alert, ended = liveness.check(pid, state, watch, now, watch_start, liveness_rule)
        if alert is not None:
            await send_alert(alert)
        if ended is not None:
            await storage.close_episode(ended, reason=DATA_BACK_REASON)
        for feed, times in liveness.feed_times(pid, state).items():
            if feeds_written.get(feed) != times:
                changed[feed] = times
    await storage.record_feeds(changed)
    feeds_written.update(changed)


@app.task
async def scoring_loop() -> None:
    await batcher().run()


def consumer_lag() -> dict[str, dict[str, int]]:
    """Per topic and partition: the broker's high-water mark (from fetch responses) minus the next
    offset to read. This Tansu may report a stale (low) high-water mark (shared/DESIGN.md), so this
    is a lower bound; ``record_age_s`` is the time-based view that does not depend on it."""
    monitor = app.monitor
    lag: dict[str, dict[str, int]] = {}
    for tp, end in (monitor.tp_end_offsets or {}).items():
        read = (monitor.tp_read_offsets or {}).get(tp)
        if read is not None and tp.topic in processed_by_topic:
            lag.setdefault(tp.topic, {})[str(tp.partition)] = max(0, int(end) - int(read) - 1)
    return lag


@app.timer(interval=1.0)
async def write_stats() -> None:
    path = stats_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot = {
        "at": time.time(),
        **stats,
        "processed_by_topic": processed_by_topic,
        "scorer": batcher().scorer.counts,
        "scores_stored": storage.scores_stored,
        "scores_pending": len(batcher().pending),
        "unacknowledged": pending_acks.unacknowledged(),
        "in_recovery": int(app.tables.recovery.in_recovery),  # type: ignore[attr-defined]
        "consumer_lag": consumer_lag(),
        "done_offsets": {t: {str(p): o for (tt, p), o in done_offsets.items() if tt == t} for t in topics.INPUTS},
        "record_age_s": {t: round(time.time() - ts, 3) for t, ts in last_record_ts.items()},
        **{k: round(v, 4) for k, v in gc_stats.items()},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(snapshot))
    tmp.replace(path)


if settings.worker_memory_profile_s > 0:
    memory_profile.start()
    memory = memory_profile.MemoryProfile(memory_profile.path(settings))

    @app.timer(interval=settings.worker_memory_profile_s)
    async def write_memory_profile() -> None:
        """Tracemalloc's view next to what the patient state itself weighs (as JSON)."""
        state_bytes = sum(len(json.dumps(state)) for state in live_state.values())
        memory.write(
            {
                "patients_live": len(live_state),
                "patient_state_json_mb": round(state_bytes / 2**20, 2),
                "unacknowledged": pending_acks.unacknowledged(),
                "processed": stats["processed"],
            }
        )


def run_worker(loglevel: str = "info") -> None:
    """Run the worker in this process until SIGTERM/SIGINT.

    A broker that is not up yet is waited for (backoff, one log line) before Faust starts: its
    producer gives up at once on a refused bootstrap and the worker would exit with a traceback.
    Once running, aiokafka reconnects on its own when the broker goes away and comes back."""
    from faust.worker import Worker

    from icuwatch.streams.kafka.producer import wait_for_broker

    settings.state_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level of its datadir
    wait_for_broker(settings, "worker")  # before Faust configures logging: Python's last-resort stderr line
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    tune_garbage_collector()
    Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()


GC_YOUNG_THRESHOLD = 50_000
"""Allocations between young-generation collections (CPython's default: 700)."""


def tune_garbage_collector() -> None:
    """Every record allocates a dozen short-lived objects (Faust's message and event, the decoded
    message, the ack bookkeeping), so at CPython's default threshold the collector ran a young
    collection every ~50 records and, every hundred of those, a full one over the worker's whole
    heap (held events, patient states, waveform buffers). The modules loaded so far are frozen out
    of collection and young collections wait for 50,000 allocations: reference counting still
    frees almost everything at once; only cycles wait longer (bounded memory: the generations above
    keep their default ratios)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    gc.callbacks.append(_time_collection)


gc_stats: dict[str, float] = {
    "gc_collections": 0,
    "gc_full_collections": 0,
    "gc_pause_total_s": 0.0,
    "gc_pause_max_s": 0.0,
}
"""The collector's work in this worker (in its stats file), as CPU time of the thread that ran it
(wall time would count the process waiting for a core): a full collection walks every live object,
and at 1,000 beds a long one shows as a lag spike."""
_gc_started = [0.0]


def _time_collection(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_started[0] = time.thread_time()
        return
    pause = time.thread_time() - _gc_started[0]
    gc_stats["gc_collections"] += 1
    gc_stats["gc_pause_total_s"] += pause
    gc_stats["gc_pause_max_s"] = max(gc_stats["gc_pause_max_s"], pause)
    if info.get("generation") == 2:
        gc_stats["gc_full_collections"] += 1
