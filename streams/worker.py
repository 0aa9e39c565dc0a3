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

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import faust
import msgspec

from icuwatch.core import schemas, topics
from icuwatch.streams import alerting, live_row, liveness, memory_profile, patient_state, stage_times, student_row
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
    shadow_episodes,
    shadow_scores_topic,
)
from icuwatch.streams.batch_retry import apply_until_done
from icuwatch.streams.batcher import ScoreBatcher
from icuwatch.streams.drift import DriftCounts
from icuwatch.streams.kafka.acks import PendingAcks
from icuwatch.streams.kafka.changelog_writes import ChangelogWrites
from icuwatch.streams.kafka.commit_floor import fetched_in
from icuwatch.streams.kafka.producer import is_live
from icuwatch.streams.patient_state import PatientState
from icuwatch.streams.scoring import StudentScorer, TritonScorer, served_model_info, version_card_thresholds
from icuwatch.streams.scoring import is_live as is_live_model
from icuwatch.streams.shadow import ShadowScorer, shadow_info
from icuwatch.streams.sink import DATA_BACK_REASON, StorageSink
from icuwatch.streams.stats import stats_path
from icuwatch.streams.waveform_state import WINDOW_S as WAVEFORM_WINDOW_S
from icuwatch.streams.waveform_state import WaveformState

log = logging.getLogger(__name__)

live_state: dict[bytes, PatientState] = {}
"""Each patient's live state; ``patients`` holds its last checkpoint."""
pending_acks = PendingAcks(hold_s=WAVEFORM_WINDOW_S)
changelog_writes = ChangelogWrites(patients)

stats: dict[str, int] = {
    "processed": 0,
    "duplicates": 0,
    "deadlettered": 0,
    "scores_submitted": 0,
    "scores_published": 0,
    "alerts_raised": 0,
    "alerts_suppressed": 0,
    "alerts_silent": 0,
    "alerts_republished": 0,
    "scores_taken": 0,
    "checkpoints": 0,
    "refused_time": 0,
    "shadow_scores_taken": 0,
    "shadow_alerts_raised": 0,
    "scores_given_up": 0,
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


def _roles_at_start() -> dict[str, str]:
    """The model roles in force (``storage/model_roles.py``), read before any agent runs so a worker
    that (re)starts after ``icuwatch models promote --shadow`` scores with the promoted model from
    its first batch; {} (the settings decide) when the database cannot say."""
    from icuwatch.storage import db, model_roles

    try:
        with db.session_factory(db.make_engine(settings.database_url))() as session:
            return model_roles.current(session)
    except Exception as exc:  # not migrated yet, or unreachable: the settings, and the timer follows later
        log.warning("model roles not read at start (%s); scoring with the settings' models", type(exc).__name__)
        return {}


def _live_info(name: str) -> dict | None:
    """``served_model_info`` of the live model ``name``: a student's; None for a model reading the
    feature row (``""``: the rules model ``triton_model``, or a served model without ``export.json``)."""
    if not name:
        return None
    if name == settings.scoring_model:  # the settings' own model: missing files are an operator error
        return served_model_info(settings)
    try:
        return served_model_info(settings.model_copy(update={"scoring_model": name, "scoring_model_dir": None}))
    except FileNotFoundError:
        return None


roles_at_start = _roles_at_start()
live_name: str = roles_at_start.get("live", settings.scoring_model)
"""The live model as the roles name it (``""``: the rules model ``triton_model``)."""
served_model: dict | None = _live_info(live_name)
"""What the worker knows of the live model (``scoring.served_model_info``); None: a model reading the
feature row (the rules model ``early_warning``). Replaced when the live model changes (``use_live``)."""
thresholds = alerting.thresholds_from(
    settings, served_model["thresholds"] if served_model and settings.alert_thresholds == "model" else None
)
"""What the live model's risks alert at (its card's thresholds, unless set explicitly)."""
shadow_name: str = roles_at_start.get("shadow", settings.shadow_model)
shadow_model: dict | None = (
    shadow_info(settings.model_copy(update={"shadow_model": shadow_name})) if shadow_name else None
)
"""``served_model_info`` of the shadow when it is a student (``streams/shadow.py``)."""
shadow_thresholds: dict[str, dict[str, alerting.Thresholds]] = {}
"""Per shadow model name, what its would-be alerts open at."""
thresholds_by_model: dict[str, dict[str, alerting.Thresholds]] = {}
"""Per model name on scores, what it alerts at: scores of a model that was live before a switch
still alert at its own thresholds."""
rule_thresholds = alerting.thresholds_from(settings)
"""What the fallback's rule risks alert at: the settings' (the rules are not the model's scale)."""
drift_counts = DriftCounts(f"{settings.app_id}:{socket.gethostname()}:{os.getpid()}")
"""What this worker scored and took, per unit and hour, for the drift guards (``streams/drift.py``)."""
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
        scorer = _live_scorer(live_name, served_model)
        thresholds_by_model[scorer.model_name] = thresholds
        named = settings.model_copy(update={"shadow_model": shadow_name})
        shadow = ShadowScorer(named, shadow_model) if shadow_name else None
        if shadow is not None:
            shadow_thresholds[shadow.model_name] = shadow.thresholds
        _batcher = ScoreBatcher(
            scorer,
            publish_score,
            settings.batch_max,
            settings.batch_wait_s,
            shadow,
            publish_shadow_score,
            stage_times.StageTimes() if settings.worker_stage_times else None,
        )
    return _batcher


def _live_scorer(name: str, info: dict | None) -> TritonScorer:
    if info is not None:
        return StudentScorer(settings.model_copy(update={"scoring_model": name, "scoring_model_dir": None}), info)
    return TritonScorer(settings.model_copy(update={"triton_model": name or settings.triton_model}))


async def answering_live(name: str) -> tuple[TritonScorer, dict | None] | None:
    """A scorer for ``name`` once Triton answers for it (its metadata); None, logged, when it does
    not. A student with an ``export.json`` gets its rows, any other served model reads the feature
    row."""
    scorer = None
    try:
        info = _live_info(name)
        scorer = _live_scorer(name, info)
        await scorer._outputs()
    except Exception as exc:
        if scorer is not None:
            await scorer.close()
        log.error(
            "live model %s not taken: Triton does not answer for it (%s); scoring as before", name, type(exc).__name__
        )
        return None
    return scorer, info


def use_live(name: str, scorer: TritonScorer, info: dict | None) -> None:
    """Score with ``scorer`` (from :func:`answering_live`) from the next submission on (``icuwatch
    models promote --shadow``). Dues already waiting keep the scorer their rows were built for
    (``batcher.Due.scorer``); the old scorer is closed a minute later."""
    global served_model, thresholds, live_name
    old = batcher().scorer
    served_model, live_name = info, name
    thresholds = alerting.thresholds_from(
        settings, info["thresholds"] if info is not None and settings.alert_thresholds == "model" else None
    )
    thresholds_by_model[scorer.model_name] = thresholds
    batcher().scorer = scorer
    unit_overrides.clear()  # the previous model's; refresh_unit_thresholds reads this one's
    asyncio.get_running_loop().call_later(60.0, lambda: asyncio.ensure_future(old.close()))


def shadow_scorer(name: str) -> tuple[dict | None, ShadowScorer | None]:
    """(``served_model_info`` of the shadow, its scorer) for ``name`` (``""``: no shadow); raises
    for a model it cannot read, before anything is switched."""
    if not name:
        return None, None
    named = settings.model_copy(update={"shadow_model": name})
    info = shadow_info(named)
    return info, ShadowScorer(named, info)


def use_shadow(name: str, info: dict | None, shadow: ShadowScorer | None) -> None:
    """Shadow with ``shadow`` (from :func:`shadow_scorer`) from the next submission on."""
    global shadow_model, shadow_name
    shadow_model = info
    if shadow is not None:
        shadow_thresholds[shadow.model_name] = shadow.thresholds
    old, shadow_name = batcher().shadow, name
    batcher().shadow = shadow
    if old is not None:
        asyncio.get_running_loop().call_later(60.0, lambda: asyncio.ensure_future(old.close()))


MODEL_ROLES_REFRESH_S = 10.0


@app.timer(interval=MODEL_ROLES_REFRESH_S)
async def follow_model_roles() -> None:
    """The live model and the shadow the roles table sets while the workers run (``icuwatch models
    shadow``, ``models promote --shadow``); without a row, the settings'. A model that cannot be
    used is logged and the current one kept."""
    roles = await storage.model_roles()
    scoring = batcher()
    live, shadow = roles.get("live", live_name), roles.get("shadow", shadow_name)
    try:
        answering = None
        if live != live_name and live != _refused[0]:
            answering = await answering_live(live)
            if answering is None:
                _refused[0] = live  # said once; tried again when the role changes
        new_shadow = shadow_scorer(shadow) if shadow != shadow_name else None  # may raise: nothing switched yet
        # Nothing awaited between the two: a promotion of the shadow is one step for every due
        # submitted, never a moment with the promoted model both live and shadow.
        was, was_shadow = scoring.scorer.model_name, shadow_name
        if answering is not None:
            use_live(live, *answering)
        if new_shadow is not None:
            use_shadow(shadow, *new_shadow)
        if answering is not None:
            log.info("live model now %s (was %s)", scoring.scorer.model_name, was)
            await storage.record_served_model(scoring.scorer.model_name, "live", thresholds)
            await refresh_unit_thresholds()
        if shadow_name != was_shadow:
            log.info("shadow model now %s (was %s)", shadow_name or "none", was_shadow or "none")
            if scoring.shadow is not None:
                await storage.record_served_model(scoring.shadow.model_name, "shadow", scoring.shadow.thresholds)
    except Exception as exc:  # a wrong name must not stop scoring
        log.error("model roles not applied (%s); scoring as before", type(exc).__name__)


_refused: list[str | None] = [None]
"""The live model name last refused (Triton did not answer for it)."""


def cohort_row(state: PatientState, t: float) -> dict | None:
    """The served model's row of the patient at ``t`` (None: the rules model scores the feature row)."""
    if served_model is None:
        return None
    if is_live_model(served_model):
        return live_row.row(state, t, served_model["norm"])
    return student_row.cohort_row(state, t, served_model["norm"])


def shadow_row(state: PatientState, t: float) -> dict | None:
    """The shadow model's row of the patient at ``t`` (None: no shadow, or one reading the feature row)."""
    shadow = batcher().shadow
    if shadow is None:
        return None
    try:
        return shadow.row(state, t)
    except Exception as exc:  # the shadow's row must never stop the patient's live scoring
        shadow.counts["shadow_errors"] += 1
        log.warning("shadow row not built: %s", type(exc).__name__)
        return None


def shadow_stats() -> dict | None:
    shadow = batcher().shadow
    return {"model": shadow.model_name, **shadow.counts} if shadow is not None else None


async def publish_score(score: schemas.Score) -> None:
    await scores_topic.send(key=score.key(), value=score.to_bytes())
    stats["scores_published"] += 1


async def publish_shadow_score(score: schemas.Score) -> None:
    await shadow_scores_topic.send(key=score.key(), value=score.to_bytes())


async def dead_letter(event: faust.EventT, reason: str, patient_id: str | None = None) -> None:
    msg = event.message
    if patient_id is None and isinstance(msg.key, bytes):
        patient_id = msg.key.decode(errors="replace")
    letter = schemas.DeadLetter.of(msg.topic, msg.value or b"", reason[:500], patient_id, msg.partition, msg.offset)
    await deadletter_topic.send(key=letter.key(), value=letter.to_bytes())
    stats["deadlettered"] += 1


def checkpoint(key: bytes, everything: bool = False) -> bool:
    """Write the patient's live state to the table and acknowledge the events it covers once that
    write is delivered; not while one of the patient's scores waits to be published (see
    ``streams/kafka/acks.py``)."""
    state = live_state.get(key)
    if state is None or not pending_acks.can_checkpoint(key):
        return False
    patient_state.mark_checkpoint(state, decisions.phase_s(key, patient_state.CHECKPOINT_EVERY_S))
    patients[key] = state
    stats["checkpoints"] += 1
    pending_acks.ack_once_written(key, pending_acks.release(key, everything), changelog_writes.take(key))
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
        taken_at = time.time()
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
        drift_counts.arrived(state["adt"].get("unit"), msg.patient_id, msg.event_time, topic)
        event.message.value = event.value = None  # held until a checkpoint: keep only the offset
        pending_acks.add(key, event, msg.end_time() if isinstance(msg, schemas.WAVEFORM_TYPES) else None)
        if isinstance(msg, schemas.Adt):
            await storage.upsert_patient(msg)
        step = decisions.next_step(state, msg, key, waveforms, settings.score_interval_s)
        if step.score_reason is not None:
            t = step.score_time
            stats["scores_submitted"] += 1
            pending_acks.score_submitted(key)
            row = patient_state.features_at(state, t)
            drift_counts.scored(state["adt"].get("unit"), t, row, msg.patient_id)
            batcher().submit(
                msg.patient_id,
                t,
                row,
                patient_state.staleness(state, t),
                step.score_reason,
                state["revision"],
                cohort_row(state, t),
                published=score_published(key),
                shadow_row=shadow_row(state, t),
                taken=(event.message.timestamp or None, taken_at),
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
    events once the batch is done, also when it raised: so the batch is taken by
    :func:`until_taken`, which never raises."""
    batches = stream.take_events(settings.alert_batch_max, within=settings.alert_batch_wait_s)  # type: ignore[attr-defined]
    async for events in batches:
        await until_taken(await decoded_scores(events), partial(take_scores, closed_earlier=set()))


async def decoded_scores(events: list) -> list[tuple[faust.EventT, schemas.Score]]:
    """The scores of a batch of ``icu.scores`` or ``icu.shadow-scores`` events fetched in this group
    generation, each with its event; an undecodable one goes to the dead-letter topic."""
    scores = []
    for event in events:
        if not fetched_in(event.message, app.consumer_generation_id):
            continue
        try:
            scores.append((event, schemas.decode_score(event.message.value, event.message.key)))
        except schemas.SchemaError as exc:
            await dead_letter(event, exc.reason)
    return scores


async def until_taken(
    scored: list[tuple[faust.EventT, schemas.Score]], take: Callable[[list], Awaitable[None]]
) -> None:
    """``take`` the batch's scores, tried again (then one by one, then dead-lettered) until it
    succeeds: the agent body must not raise, or Faust acknowledges the batch (``batch_retry.py``)."""

    async def apply(pairs: list) -> None:
        await take([score for _event, score in pairs])

    async def give_up(pair: tuple, exc: BaseException) -> None:
        stats["scores_given_up"] += 1
        await dead_letter(pair[0], f"not taken: {type(exc).__name__}: {exc}"[:300], pair[1].patient_id)

    await apply_until_done(
        scored, apply, give_up, still_ours=lambda p: fetched_in(p[0].message, app.consumer_generation_id)
    )


async def take_scores(scores: list[schemas.Score], closed_earlier: set[str] | None = None) -> None:
    """One batch of ``icu.scores``: stored, stepped through the episode rules, alerts raised. The
    episode states are stepped as copies and written back only once everything succeeded, so a
    batch that fails part-way can be taken again from the same states. ``closed_earlier``: the
    episodes this batch's failed attempts already closed in the database (filled here): on a retry
    their alerts are not open any more, yet no nurse resolved them."""
    if not scores:
        return
    states = {}
    for score in scores:
        key = score.key()
        if key not in states:
            held = episodes.get(key)
            states[key] = _copied(held) if held else alerting.new_alert_state()
    # The database is the truth about a nurse's resolve: an open episode without an open alert
    # there is closed, so a risk that stays high alerts again (alerting.py).
    resolved = await storage.store_scores(
        scores, {key.decode(): alerting.open_kinds(state) for key, state in states.items()}
    )
    if closed_earlier:
        resolved = {
            pid: {k for k in kinds if alerting.open_alert_ids(states[pid.encode()], pid, k).isdisjoint(closed_earlier)}
            for pid, kinds in resolved.items()
        }
    steps = alerting.step_batch(states, scores, thresholds_of, resolved)
    for raised, closed in steps:  # in score order: a closed episode frees its kind for the next alert
        for alert in raised:
            await send_alert(alert)
        for closed_id in closed:
            await storage.close_episode(closed_id)
            if closed_earlier is not None:
                closed_earlier.add(closed_id)
    stats["scores_taken"] += len(scores)
    for key, state in states.items():
        episodes[key] = state


@app.agent(shadow_scores_topic)
async def raise_shadow_alerts(stream: faust.StreamT) -> None:
    """The shadow model's scores (``streams/shadow.py``): the same episode rules as the live alerts,
    at the shadow's thresholds, stored apart; nothing is published or shown to nurses."""
    batches = stream.take_events(settings.alert_batch_max, within=settings.alert_batch_wait_s)  # type: ignore[attr-defined]
    async for events in batches:
        await until_taken(await decoded_scores(events), take_shadow_scores)


def _per_model(stored: dict | None) -> dict:
    """A copy of a patient's shadow episodes per model (a state saved before they were kept per
    model, which has "kinds" at its top, is left behind)."""
    return {} if not stored or "kinds" in stored else _copied(stored)


def _copied(table_value: dict) -> dict:
    """A deep copy of a table's JSON value, to step without touching the table until success."""
    return msgspec.json.decode(msgspec.json.encode(table_value))


def _fixed(th: dict[str, alerting.Thresholds], _score: schemas.Score) -> dict[str, alerting.Thresholds]:
    return th


async def take_shadow_scores(scores: list[schemas.Score]) -> None:
    """Each shadow model keeps its own episodes per patient (``shadow_episodes[key][model]``) and its
    alert ids carry its name, so a change of shadow starts afresh instead of inheriting episodes."""
    if not scores:
        return
    by_model: dict[str, list[schemas.Score]] = {}
    for score in scores:
        by_model.setdefault(score.model, []).append(score)
    per_patient = {s.key(): _per_model(shadow_episodes.get(s.key())) for s in scores}
    raised, closed = [], {}
    for model, group in by_model.items():
        th = shadow_thresholds.get(model, rule_thresholds)
        states = {s.key(): per_patient[s.key()].get(model) or alerting.new_alert_state() for s in group}
        for score, (opened, shut) in zip(group, alerting.step_batch(states, group, partial(_fixed, th), {})):
            raised += [a.model_copy(update={"alert_id": f"{model}:{a.alert_id}"}) for a in opened]
            closed.update({f"{model}:{alert_id}": score.event_time for alert_id in shut})
        for key, state in states.items():
            per_patient[key][model] = state
    await storage.store_shadow_batch(scores, raised, closed)
    stats["shadow_scores_taken"] += len(scores)
    stats["shadow_alerts_raised"] += len(raised)
    for key, models in per_patient.items():
        shadow_episodes[key] = models


@app.task
async def record_served_models() -> None:
    """What each served model alerts at, for the shadow report (``storage/shadow_report.py``); the
    units' own thresholds read at once (the timer's first run is 30 s away)."""
    await refresh_unit_thresholds()
    scoring = batcher()
    await storage.record_served_model(scoring.scorer.model_name, "live", thresholds)
    if scoring.shadow is not None:
        await storage.record_served_model(scoring.shadow.model_name, "shadow", scoring.shadow.thresholds)


unit_overrides: dict[tuple[str, str], float] = {}
"""Per (unit, kind), the unit's own 'on' threshold for the live model (``storage/unit_thresholds.py``)."""
UNIT_THRESHOLDS_REFRESH_S = 30.0


version_thresholds: dict[tuple[str, str], dict[str, alerting.Thresholds] | None] = {}
"""Per (model, version) answered by Triton, what that version's ``export.json`` alerts at (None:
the model's thresholds as read at start); read once per version."""


def _thresholds_of_version(model: str, version: str | None) -> dict[str, alerting.Thresholds] | None:
    """The thresholds of another version of the live student than the one the worker read at start
    (``icuwatch models rollback`` serves version 1 while the worker read version 2's card)."""
    if served_model is None or version is None or settings.alert_thresholds != "model":
        return None
    if (model, version) not in version_thresholds:
        card = version_card_thresholds(Path(served_model["dir"]), version)
        version_thresholds[model, version] = None if card is None else alerting.thresholds_from(settings, card)
    return version_thresholds[model, version]


def thresholds_of(score: schemas.Score) -> dict[str, alerting.Thresholds]:
    """What a score alerts at: the fallback's rule thresholds, else its model's (the version that
    answered: a rollback serves another version's thresholds), with the patient's unit's own where
    it has them (its unit from the patient's state: the scores topic is co-partitioned with the
    inputs, so this worker holds the state)."""
    if score.source == "fallback":
        return rule_thresholds
    own = thresholds_by_model.get(score.model, thresholds)
    if own is thresholds and score.model == live_name:
        own = _thresholds_of_version(score.model, score.model_version) or own
    if not unit_overrides or own is not thresholds:  # unit thresholds are the live model's
        return own
    state = live_state.get(score.key()) or patients.get(score.key())
    return alerting.for_unit(own, unit_overrides, state["adt"].get("unit") if state else None)


@app.timer(interval=UNIT_THRESHOLDS_REFRESH_S)
async def refresh_unit_thresholds_timer() -> None:
    await refresh_unit_thresholds()


async def refresh_unit_thresholds() -> None:
    """The live model's units' own thresholds (a plain coroutine: a Faust timer function, called,
    would run its timer loop)."""
    model = batcher().scorer.model_name
    fresh = await storage.unit_thresholds(model)
    if batcher().scorer.model_name != model:  # the live model changed while the database answered
        return
    if fresh != unit_overrides:
        log.info("unit thresholds now set for %d unit-kinds", len(fresh))
        unit_overrides.clear()
        unit_overrides.update(fresh)


async def send_alert(alert: schemas.Alert) -> None:
    """Store ``alert`` and publish it to ``icu.alerts`` (again, if stored before a restart)."""
    outcome = await storage.store_alert(alert)
    if outcome in ("suppressed", "silent"):  # silent: its unit runs silent (storage/units.py)
        stats[f"alerts_{outcome}"] += 1
        return
    stats["alerts_raised" if outcome == "stored" else "alerts_republished"] += 1
    await alerts_topic.send(key=alert.key(), value=alert.to_bytes())


@app.timer(interval=settings.drift_flush_s)
async def flush_drift_counts() -> None:
    rows = drift_counts.take()
    try:
        await storage.record_drift(rows)
    except Exception as exc:  # written at the next flush; the timer goes on
        drift_counts.retry(rows)
        log.warning("drift counts not written (%s); retried at the next flush", type(exc).__name__)


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
        "shadow": shadow_stats(),
        "scores_stored": storage.scores_stored,
        "scores_pending": len(batcher().pending),
        "scoring_rows_given_up": batcher().given_up,
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
    kept = batcher().stage_times
    if kept is not None:
        kept.flush(stage_times.path_for(settings.run_dir, settings.worker_web_port))


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


_last_full_collection = [time.monotonic()]


def freeze_survivors() -> None:
    """``Settings.worker_gc_freeze_s`` and ``worker_gc_full_s``: what survived goes out of the
    collector's sight; once per full period, everything comes back for one full collection first."""
    import gc

    if time.monotonic() - _last_full_collection[0] >= settings.worker_gc_full_s:
        gc.unfreeze()
        gc.collect()
        _last_full_collection[0] = time.monotonic()
    gc.freeze()


if settings.worker_gc_freeze_s > 0:

    @app.timer(interval=settings.worker_gc_freeze_s)
    async def freeze_survivors_periodically() -> None:
        freeze_survivors()


gc_stats: dict[str, float] = {
    "gc_collections": 0,
    "gc_full_collections": 0,
    "gc_pause_total_s": 0.0,
    "gc_pause_max_s": 0.0,
    **{f"gc_pause_max_s_gen{g}": 0.0 for g in range(3)},
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
    by_generation = f"gc_pause_max_s_gen{info.get('generation', 2)}"
    gc_stats[by_generation] = max(gc_stats.get(by_generation, 0.0), pause)
    if info.get("generation") == 2:
        gc_stats["gc_full_collections"] += 1
