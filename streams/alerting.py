"""Alert episodes with hysteresis: one episode gives one alert.

An episode opens after ``confirm`` consecutive scores at or above the 'on' threshold and closes after
``clear`` consecutive scores below the 'off' threshold. The alert id is derived from the patient,
kind and the episode's first score time, so a replayed or redelivered score stream produces the
same ids and the database keeps one row per episode.

After an episode closes, a new one of the same kind cannot open for ``refractory_s`` seconds of
event time (counted from the score that closed it): scores in that period still build the 'above'
run, and an episode confirmed during it opens at the first score once the period is over, with
its episode start (and id) at the start of that run.

A nurse may resolve an alert while its episode is still open (the risk has not come down). The
database is the truth about that: the worker passes the kinds whose open episode has no open alert
there any more (``resolved``) and ``step`` closes those episodes at this score, which starts the
quiet period ``realert_after_resolve_s`` (event time, from this score) and a new 'above' run from
this score. A risk that stays high then opens a new episode, with a new id, once the period is over
and the run is confirmed; one that comes down raises nothing.

Scores from the in-process fallback rules (``source == "fallback"``, while Triton is unreachable) are
on another scale with their own thresholds (the worker passes them). Each score is compared with its
own scale's thresholds, so an 'above' run goes on across a change of source (high on both scales is
high: a Triton that comes and goes must not keep a patient from alerting), while a change of source
starts the 'below' run again. A fallback score never closes an episode
the model opened: rules that read lower than the model during an outage would otherwise close it, and
the model, back, would open a second episode (a second alert) for the same deterioration. The
model's scores close any episode, a fallback-opened one included.

An alert carries the contributions to its kind of risk from the score that opened it (None when
that score had none).

Pure: no settings, clock reads only for ``raised_at``; the worker passes the thresholds in.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from icuwatch.core import schemas

DEFAULT_REFRACTORY_S = 1800.0
"""Same as the ``alert_refractory_s`` setting's default."""
DEFAULT_REALERT_AFTER_RESOLVE_S = 1800.0
"""Same as the ``alert_realert_after_resolve_s`` setting's default."""


@dataclass(frozen=True)
class Thresholds:
    on: float
    off: float
    confirm: int = 2
    clear: int = 3
    refractory_s: float = DEFAULT_REFRACTORY_S
    """Event-time seconds after an episode closes during which no new episode opens (0: none)."""
    realert_after_resolve_s: float = DEFAULT_REALERT_AFTER_RESOLVE_S
    """Event-time seconds after an episode is closed by a resolve during which no new one opens."""


RISK_FIELD: dict[schemas.AlertKind, str] = {"deterioration": "deterioration_risk", "sepsis": "sepsis_risk"}


def thresholds_from(settings, model_thresholds: dict[str, float | None] | None = None) -> dict[str, Thresholds]:
    """Per alert kind, the thresholds of ``settings`` (``<kind>_on``/``_off``, confirm, clear, quiet
    periods); a kind ``model_thresholds`` names (the scoring model's card: the threshold chosen on
    validation data) opens at that value instead and closes at it times the settings' off/on ratio,
    unless the operator set that kind's ``_on`` explicitly (an explicit setting wins)."""
    out: dict[str, Thresholds] = {}
    explicit: set[str] = set(getattr(settings, "model_fields_set", ()))
    for kind in RISK_FIELD:
        on, off = float(getattr(settings, f"{kind}_on")), float(getattr(settings, f"{kind}_off"))
        chosen = (model_thresholds or {}).get(kind)
        if chosen is not None and f"{kind}_on" not in explicit:
            ratio = off / on if on > 0 else 0.6
            on, off = float(chosen), float(chosen) * ratio
        out[kind] = Thresholds(
            on,
            off,
            settings.alert_confirm,
            settings.alert_clear,
            settings.alert_refractory_s,
            settings.alert_realert_after_resolve_s,
        )
    return out


def for_unit(
    base: dict[str, Thresholds], overrides: Mapping[tuple[str, str], float], unit: str | None
) -> dict[str, Thresholds]:
    """``base`` with the unit's own 'on' thresholds (``icuwatch tune-thresholds --unit``) where it has
    them; 'off' keeps each kind's off/on ratio."""
    if unit is None or not overrides:
        return base
    out = dict(base)
    for kind, th in base.items():
        on = overrides.get((unit, kind))
        if on is not None:
            ratio = th.off / th.on if th.on > 0 else 0.6
            out[kind] = Thresholds(on, on * ratio, th.confirm, th.clear, th.refractory_s, th.realert_after_resolve_s)
    return out


def new_alert_state() -> dict:
    return {
        "last_t": 0.0,
        "kinds": {
            k: {"open": None, "run_start": None, "above": 0, "below": 0, "closed_at": None, "resolved_at": None}
            for k in RISK_FIELD
        },
    }


def alert_id(patient_id: str, kind: str, episode_start: float) -> str:
    return f"{patient_id}:{kind}:{episode_start:.0f}"


def open_kinds(state: dict) -> set[str]:
    """Kinds with an open episode, before or after the latest score (a revision of it goes back to
    before): the kinds whose alert the worker asks the database about."""
    kinds = {k for k, ks in state["kinds"].items() if ks["open"] is not None}
    return kinds | {k for k, ks in state.get("before_last", {}).items() if ks["open"] is not None}


def open_alert_ids(state: dict, patient_id: str, kind: str) -> set[str]:
    """The alert ids of ``kind``'s open episode, before or after the latest score (as
    :func:`open_kinds`)."""
    starts = [ks["open"] for ks in (state["kinds"].get(kind), state.get("before_last", {}).get(kind)) if ks]
    return {alert_id(patient_id, kind, start) for start in starts if start is not None}


def update(
    state: dict, score: schemas.Score, thresholds: dict[str, Thresholds], resolved: Collection[str] = ()
) -> list[schemas.Alert]:
    """Advance the episode state machine with one score; return the alerts it opens."""
    return step(state, score, thresholds, resolved)[0]


def applies(state: dict, score: schemas.Score) -> bool:
    """Whether :func:`step` applies ``score`` (newer than the latest, or a higher revision of it)
    rather than ignoring it."""
    revision = getattr(score, "revision", 0)
    if score.event_time == state["last_t"]:
        return revision > state.get("last_revision", 0) and "before_last" in state
    return score.event_time > state["last_t"]


def step(
    state: dict, score: schemas.Score, thresholds: dict[str, Thresholds], resolved: Collection[str] = ()
) -> tuple[list[schemas.Alert], list[str]]:
    """Advance the episode state machine with one score: (alerts opened, ids of episodes closed).

    ``resolved``: kinds whose open episode has no open alert in the database any more (a nurse
    resolved it); such an episode is closed at this score before the score is applied, and its id
    is not in the returned list (its alert is resolved already).

    A higher revision of the latest score (late data for the same time) replaces it: the state goes
    back to before that score and the revision is applied instead. Older scores are ignored.
    """
    revision = getattr(score, "revision", 0)
    if not applies(state, score):
        return [], []
    if score.event_time == state["last_t"]:
        state["kinds"] = copy.deepcopy(state["before_last"])
    else:
        state["before_last"] = copy.deepcopy(state["kinds"])
    state["last_t"] = score.event_time
    state["last_revision"] = revision
    raised, closed = [], []
    scale = score.source
    for kind, field in RISK_FIELD.items():
        th, ks = thresholds[kind], state["kinds"][kind]
        risk = getattr(score, field)
        if kind in resolved and ks["open"] is not None:
            ks.update(open=None, above=0, below=0, resolved_at=score.event_time)
        # .get: states saved before the scales were told apart count as on this score's scale.
        if ks.get("scale", scale) != scale:
            ks["below"] = 0
        ks["scale"] = scale
        if risk >= th.on:
            if ks["above"] == 0:
                ks["run_start"] = score.event_time
            ks["above"] += 1
        else:
            ks["above"] = 0
        ks["below"] = ks["below"] + 1 if risk < th.off else 0
        # .get: episode states saved before these periods existed have no closed_at / resolved_at.
        closed_at, resolved_at = ks.get("closed_at"), ks.get("resolved_at")
        refractory = (closed_at is not None and score.event_time - closed_at < th.refractory_s) or (
            resolved_at is not None and score.event_time - resolved_at < th.realert_after_resolve_s
        )
        if ks["open"] is None and ks["above"] >= th.confirm and not refractory:
            start: float = ks["run_start"]
            ks["open"] = start
            ks["opened_by"] = scale
            raised.append(
                schemas.Alert(
                    patient_id=score.patient_id,
                    event_time=score.event_time,
                    alert_id=alert_id(score.patient_id, kind, start),
                    kind=kind,
                    risk=risk,
                    news2=score.news2,
                    qsofa=score.qsofa,
                    model=score.model,
                    model_version=score.model_version,
                    source=score.source,
                    episode_start=start,
                    raised_at=time.time(),
                    contributions=(score.contributions or {}).get(kind),
                )
            )
        elif ks["open"] is not None and ks["below"] >= th.clear and closes(scale, ks):
            closed.append(alert_id(score.patient_id, kind, ks["open"]))
            ks["open"] = None
            ks["closed_at"] = score.event_time
    return raised, closed


def closes(scale: str, kind_state: dict) -> bool:
    """Whether a score from ``scale`` may close the kind's open episode: the model's always, the
    fallback's only an episode the fallback opened."""
    return scale != "fallback" or kind_state.get("opened_by", "triton") == "fallback"


def step_batch(
    states: dict[bytes, dict],
    scores: list[schemas.Score],
    thresholds_of: Callable[[schemas.Score], dict[str, Thresholds]],
    resolved: Mapping[str, Collection[str]],
) -> list[tuple[list[schemas.Alert], list[str]]]:
    """:func:`step` for a batch of scores, in order: per score, (alerts opened, episodes closed).

    ``states``: each patient's episode state (updated in place); ``resolved``: per patient id, the
    kinds a nurse resolved as the database said before the batch. That answer is used by the
    patient's first score that applies, not again: a later score of the batch may have reopened the
    kind, and that new episode is not resolved."""
    left = {pid: set(kinds) for pid, kinds in resolved.items()}
    out = []
    for score in scores:
        state = states[score.key()]
        applied = applies(state, score)
        out.append(step(state, score, thresholds_of(score), left.get(score.patient_id, ())))
        if applied:
            left.pop(score.patient_id, None)
    return out
