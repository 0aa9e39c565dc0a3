from hypothesis import given
from hypothesis import strategies as st

from icuwatch.core import schemas
from icuwatch.streams import alerting

T = 1_764_000_000.0
# refractory_s=0: these tests are about the hysteresis alone (the refractory period has its own).
TH = {
    "deterioration": alerting.Thresholds(0.5, 0.3, confirm=2, clear=3, refractory_s=0),
    "sepsis": alerting.Thresholds(0.5, 0.3, confirm=2, clear=3, refractory_s=0),
}


def score(t, risk, sepsis=0.0):
    return schemas.Score(
        patient_id="p1",
        event_time=t,
        model="m",
        source="triton",
        deterioration_risk=risk,
        sepsis_risk=sepsis,
        news2=7,
        qsofa=1,
        staleness_s={},
        scored_at=t,
    )


def run(risks, state=None, start=0, th=TH, step=60):
    state = state or alerting.new_alert_state()
    alerts = []
    for i, r in enumerate(risks):
        alerts += alerting.update(state, score(T + step * (start + i), r), th)
    return state, alerts


def test_one_episode_gives_one_alert():
    _, alerts = run([0.1, 0.6, 0.7, 0.9, 0.8, 0.45, 0.7, 0.9])
    assert len(alerts) == 1
    assert alerts[0].kind == "deterioration"
    assert alerts[0].episode_start == T + 60
    assert alerts[0].event_time == T + 120


def test_single_spike_does_not_alert():
    _, alerts = run([0.1, 0.9, 0.1, 0.9, 0.1])
    assert alerts == []


def test_episode_closes_after_clear_run_and_reopens():
    _, alerts = run([0.9, 0.9, 0.2, 0.2, 0.2, 0.9, 0.9])
    assert len(alerts) == 2
    assert alerts[0].alert_id != alerts[1].alert_id


def test_redelivered_scores_do_not_raise_again_and_ids_are_deterministic():
    state, first = run([0.9, 0.9, 0.9])
    _, again = run([0.9, 0.9, 0.9], state=state)
    assert again == []
    _, replay = run([0.9, 0.9, 0.9])
    assert replay[0].alert_id == first[0].alert_id


def test_kinds_are_independent():
    state = alerting.new_alert_state()
    out = []
    for i in range(3):
        out += alerting.update(state, score(T + 60 * i, 0.1, sepsis=0.8), TH)
    assert [a.kind for a in out] == ["sepsis"]


REFRACTORY = {k: alerting.Thresholds(0.5, 0.3, confirm=2, clear=3, refractory_s=1800) for k in TH}


def test_refractory_period_defaults_to_the_setting():
    from icuwatch.core.settings import Settings

    assert alerting.Thresholds(0.5, 0.3).refractory_s == Settings().alert_refractory_s == 1800.0


def test_no_new_episode_within_the_refractory_period_after_close():
    # Episode 1 opens at T+60 (start T), closes at T+240 (third low score); high again from T+300.
    risks = [0.9, 0.9, 0.2, 0.2, 0.2] + [0.9] * 40
    _, alerts = run(risks, th=REFRACTORY)
    assert len(alerts) == 2
    first, second = alerts
    assert first.episode_start == T and first.event_time == T + 60
    # Not before T+240+1800 = T+2040, the first score after which the run (from T+300) counts.
    assert second.event_time == T + 2040
    assert second.episode_start == T + 300
    assert second.alert_id == alerting.alert_id("p1", "deterioration", T + 300)


def test_a_broken_run_during_the_refractory_period_must_confirm_again():
    # Closed at T+240; a short run ends inside the period, then a fresh one after it.
    risks = [0.9, 0.9, 0.2, 0.2, 0.2] + [0.9] * 5 + [0.4] * 30 + [0.9, 0.9]
    _, alerts = run(risks, th=REFRACTORY)
    assert [a.event_time for a in alerts] == [T + 60, T + 60 * 41]
    assert alerts[1].episode_start == T + 60 * 40


def test_refractory_is_per_kind_and_counts_event_time():
    state = alerting.new_alert_state()
    out = []
    times = [0, 60, 120, 180, 240, 300, 360]
    det = [0.9, 0.9, 0.2, 0.2, 0.2, 0.9, 0.9]  # closes at 240, blocked at 300/360
    sep = [0.0, 0.0, 0.0, 0.0, 0.0, 0.9, 0.9]  # first sepsis episode: not blocked
    for t, d, s in zip(times, det, sep):
        out += alerting.update(state, score(T + t, d, sepsis=s), REFRACTORY)
    assert [(a.kind, a.event_time) for a in out] == [("deterioration", T + 60), ("sepsis", T + 360)]
    # Sparse scores: 1800 s of event time, not a number of scores.
    out = []
    for t, d in [(2000, 0.9), (2039, 0.9), (2041, 0.9)]:
        out += alerting.update(state, score(T + t, d), REFRACTORY)
    assert [a.event_time for a in out] == [T + 2041]


def test_refractory_ids_are_deterministic_under_replay():
    risks = [0.9, 0.9, 0.2, 0.2, 0.2] + [0.9] * 40
    _, a = run(risks, th=REFRACTORY)
    _, b = run(risks, th=REFRACTORY)
    assert [x.alert_id for x in a] == [x.alert_id for x in b]


def test_state_saved_before_the_refractory_period_existed_still_works():
    state = alerting.new_alert_state()
    for ks in state["kinds"].values():
        del ks["closed_at"]
    _, alerts = run([0.9, 0.9, 0.2, 0.2, 0.2, 0.9, 0.9], state=state, th=REFRACTORY)
    assert len(alerts) == 1  # the close is recorded, so the reopen 60 s later is held back


def test_step_reports_the_episode_it_closes():
    th = {k: alerting.Thresholds(0.5, 0.3, confirm=2, clear=3, refractory_s=0) for k in alerting.RISK_FIELD}
    state = alerting.new_alert_state()
    opened, closed = [], []
    for i, r in enumerate([0.9, 0.9, 0.1, 0.1, 0.1]):
        o, c = alerting.step(state, score(T + 60 * i, r), th)
        opened += o
        closed += c
    assert [a.alert_id for a in opened] == closed


def test_a_revised_score_can_open_the_episode_its_first_version_did_not():
    th = {k: alerting.Thresholds(0.5, 0.3, confirm=2, clear=3, refractory_s=0) for k in alerting.RISK_FIELD}
    state = alerting.new_alert_state()
    assert alerting.step(state, score(T, 0.1, sepsis=0.9), th)[0] == []
    first = score(T + 60, 0.1, sepsis=0.2)
    assert alerting.step(state, first, th)[0] == []
    revised = first.model_copy(update={"sepsis_risk": 0.8, "revision": 1})
    opened, _ = alerting.step(state, revised, th)
    assert [a.kind for a in opened] == ["sepsis"] and opened[0].episode_start == T
    assert alerting.step(state, revised, th) == ([], [])  # redelivered revision: nothing new
    assert alerting.step(state, first, th) == ([], [])  # the older revision arriving late: ignored


# ------------------------------------------------------------------------ re-alert after a resolve

REALERT = {
    k: alerting.Thresholds(0.5, 0.3, confirm=2, clear=3, refractory_s=1800, realert_after_resolve_s=600) for k in TH
}


def run_with_resolves(risks, resolve_at, th=REALERT, step=60):
    """Scores every ``step`` s; at the scores whose index is in ``resolve_at`` the database says the
    open deterioration alert was resolved (what the worker passes when a nurse resolved it)."""
    state, alerts = alerting.new_alert_state(), []
    for i, r in enumerate(risks):
        resolved = {"deterioration"} & alerting.open_kinds(state) if i in resolve_at else set()
        alerts += alerting.update(state, score(T + step * i, r), th, resolved)
    return state, alerts


def test_realert_defaults_to_the_setting():
    from icuwatch.core.settings import Settings

    assert alerting.Thresholds(0.5, 0.3).realert_after_resolve_s == Settings().alert_realert_after_resolve_s == 1800.0


def test_a_resolved_episode_whose_risk_stays_high_alerts_again_after_the_realert_time():
    # Opens at T+60; the worker learns of the resolve at the score of T+300; high all along.
    _, alerts = run_with_resolves([1.0] * 30, resolve_at={5})
    assert [a.event_time for a in alerts] == [T + 60, T + 300 + 600]
    second = alerts[1]
    assert second.episode_start == T + 300  # the new run starts at the score that saw the resolve
    assert second.alert_id == alerting.alert_id("p1", "deterioration", T + 300) != alerts[0].alert_id


def test_without_the_resolve_the_open_episode_never_alerts_again():
    """The defect: the worker's episode stayed open after the resolve, so nothing was raised."""
    _, alerts = run_with_resolves([1.0] * 30, resolve_at=set())
    assert len(alerts) == 1


def test_a_resolved_episode_whose_risk_comes_down_raises_nothing():
    _, alerts = run_with_resolves([1.0] * 6 + [0.2] * 30, resolve_at={5})
    assert len(alerts) == 1


def test_after_a_resolve_the_risk_must_be_confirmed_again():
    # Resolved at T+300 (risk high), low from T+360 to T+1140, high again from T+1200: the new
    # run needs two scores, so the alert comes at T+1260 (the quiet period ended at T+900).
    _, alerts = run_with_resolves([1.0] * 6 + [0.4] * 14 + [1.0] * 5, resolve_at={5})
    assert [(a.event_time, a.episode_start) for a in alerts] == [(T + 60, T), (T + 1260, T + 1200)]


def test_a_resolve_closes_only_its_kind_and_only_an_open_episode():
    state = alerting.new_alert_state()
    out = []
    for i in range(3):
        out += alerting.update(state, score(T + 60 * i, 0.9, sepsis=0.9), REALERT)
    assert sorted(a.kind for a in out) == ["deterioration", "sepsis"]
    alerting.update(state, score(T + 180, 0.9, sepsis=0.9), REALERT, {"sepsis"})
    assert state["kinds"]["sepsis"]["open"] is None and state["kinds"]["deterioration"]["open"] == T
    assert alerting.open_kinds(state) == {"deterioration", "sepsis"}  # sepsis was open before this score
    before = dict(state["kinds"]["sepsis"])
    alerting.update(state, score(T + 240, 0.9, sepsis=0.9), REALERT, {"sepsis"})  # no open episode: nothing
    assert state["kinds"]["sepsis"]["resolved_at"] == before["resolved_at"] == T + 180


def test_a_revision_of_the_score_that_saw_the_resolve_keeps_the_episode_closed():
    state, _ = run_with_resolves([1.0] * 6, resolve_at={5})
    last = score(T + 300, 1.0)
    assert state["kinds"]["deterioration"]["open"] is None
    # A revision restores the state before that score, where the episode was open: the worker asks
    # about it again (open_kinds looks there too) and the database still says resolved.
    assert "deterioration" in alerting.open_kinds(state)
    revised = last.model_copy(update={"revision": 1})
    assert alerting.step(state, revised, REALERT, {"deterioration"}) == ([], [])
    assert state["kinds"]["deterioration"]["open"] is None
    assert state["kinds"]["deterioration"]["resolved_at"] == T + 300


def test_state_saved_before_the_realert_period_existed_still_works():
    state = alerting.new_alert_state()
    for ks in state["kinds"].values():
        del ks["resolved_at"]
    _, alerts = run([0.9, 0.9, 0.2, 0.2, 0.2, 0.9, 0.9], state=state, th=REFRACTORY)
    assert len(alerts) == 1


@given(
    risks=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=80),
    resolve_at=st.sets(st.integers(0, 79), max_size=6),
    realert=st.sampled_from([0.0, 60.0, 300.0, 600.0]),
    tail=st.integers(0, 30),
)
def test_a_resolve_never_silences_a_patient_and_never_alerts_early(risks, resolve_at, realert, tail):
    """Property: after a resolve the next alert comes no sooner than the re-alert time, and a risk
    that stays at 1.0 long enough always alerts again."""
    th = {
        k: alerting.Thresholds(0.5, 0.3, confirm=2, clear=3, refractory_s=0, realert_after_resolve_s=realert)
        for k in TH
    }
    needed = int(realert // 60) + 2  # high scores after the resolve that must alert (confirm 2)
    risks = risks + [1.0] * (tail + needed)
    resolve_at = {i for i in resolve_at if i < len(risks) - needed} | {len(risks) - needed}
    state, seen = alerting.new_alert_state(), []
    last_resolve = None
    for i, r in enumerate(risks):
        t = T + 60 * i
        resolved = {"deterioration"} & alerting.open_kinds(state) if i in resolve_at else set()
        if resolved and state["kinds"]["deterioration"]["open"] is not None:
            last_resolve = t
        for a in alerting.update(state, score(t, r), th, resolved):
            if a.kind == "deterioration":
                seen.append(a)
                assert last_resolve is None or a.event_time - last_resolve >= realert
    assert seen and len({a.alert_id for a in seen}) == len(seen)
    # The last resolve is followed by enough scores at 1.0 to alert again.
    assert last_resolve is None or seen[-1].event_time > last_resolve, "silenced after the resolve"


def test_a_batch_uses_the_database_s_resolve_once_as_scores_one_at_a_time_do():
    """The alert agent takes scores in batches and asks the database once per batch: the resolve
    it reports closes the episode at the patient's first score that applies (a redelivered older
    one does not), and the episode reopened later in the same batch stays open."""
    per_score_state, per_score = run_with_resolves([1.0] * 30, resolve_at={5})
    scores = [score(T + 60 * i, 1.0) for i in range(30)]
    state = alerting.new_alert_state()
    states = {b"p1": state}
    first = alerting.step_batch(states, scores[:5], lambda s: REALERT, {})
    told = {"p1": {"deterioration"} & alerting.open_kinds(state)}
    rest = alerting.step_batch(states, [scores[4], *scores[5:]], lambda s: REALERT, told)
    batched = [a for raised, _ in first + rest for a in raised]
    assert [(a.alert_id, a.event_time, a.episode_start) for a in batched] == [
        (a.alert_id, a.event_time, a.episode_start) for a in per_score
    ]
    assert [a.event_time for a in batched] == [T + 60, T + 300 + 600]
    assert state["kinds"] == per_score_state["kinds"]
    # were the answer used at every score of the batch, the reopened episode would close again
    again = alerting.new_alert_state()
    naive = []
    for i, s in enumerate(scores):
        naive += alerting.update(again, s, REALERT, {"deterioration"} if i >= 5 else set())
    assert [a.event_time for a in naive] != [a.event_time for a in batched]


def test_applies_is_what_step_applies():
    state = alerting.new_alert_state()
    alerting.step(state, score(T, 0.9), TH)
    assert alerting.applies(state, score(T + 60, 0.9))
    assert not alerting.applies(state, score(T, 0.9))  # the same score again
    assert not alerting.applies(state, score(T - 60, 0.9))
    assert alerting.applies(state, score(T, 0.9).model_copy(update={"revision": 1}))


def scored_by(source, t, risk):
    return score(t, risk).model_copy(update={"source": source})


def run_sources(steps, state=None):
    """``steps``: (source, deterioration risk) per minute; returns (state, alerts, closed ids)."""
    state = state or alerting.new_alert_state()
    alerts, closed = [], []
    for i, (source, risk) in enumerate(steps):
        raised, shut = alerting.step(state, scored_by(source, T + 60 * i, risk), TH)
        alerts += raised
        closed += shut
    return state, alerts, closed


def test_fallback_scores_do_not_close_the_model_s_episode_so_triton_back_raises_nothing_new():
    steps = [("triton", 0.9)] * 3 + [("fallback", 0.1)] * 10 + [("triton", 0.9)] * 3
    state, alerts, closed = run_sources(steps)
    assert len(alerts) == 1 and closed == []
    assert state["kinds"]["deterioration"]["open"] == T


def test_the_model_closes_an_episode_the_fallback_opened():
    steps = [("fallback", 0.9)] * 2 + [("triton", 0.1)] * 3
    state, alerts, closed = run_sources(steps)
    assert [a.source for a in alerts] == ["fallback"]
    assert closed == [alerts[0].alert_id]
    assert state["kinds"]["deterioration"]["open"] is None


def test_the_fallback_closes_its_own_episode():
    _, alerts, closed = run_sources([("fallback", 0.9)] * 2 + [("fallback", 0.1)] * 3)
    assert closed == [alerts[0].alert_id]


def test_a_run_above_both_scales_confirms_across_a_source_change_and_below_runs_restart():
    _, alerts, _ = run_sources([("triton", 0.9), ("fallback", 0.9)])  # Triton flapping: still alerts
    assert len(alerts) == 1 and alerts[0].source == "fallback"
    _, alerts, _ = run_sources([("triton", 0.9), ("fallback", 0.1), ("triton", 0.9)])
    assert alerts == []  # the run was broken in between
    # an episode the fallback opened: two model scores below plus one fallback below do not close it
    _, _, closed = run_sources([("fallback", 0.9)] * 2 + [("triton", 0.1)] * 2 + [("fallback", 0.1)])
    assert closed == []


def test_state_saved_before_the_scales_were_told_apart_still_works():
    state, _, _ = run_sources([("triton", 0.9)] * 2)
    for ks in state["kinds"].values():
        ks.pop("scale"), ks.pop("opened_by", None)
    _, _, closed = run_sources([("fallback", 0.1)] * 4, state=state)
    assert closed == []


def test_open_alert_ids_name_the_open_episode_before_and_after_the_latest_score():
    state = alerting.new_alert_state()
    assert alerting.open_alert_ids(state, "p1", "sepsis") == set()
    state["kinds"]["sepsis"]["open"] = 1000.0
    state["before_last"] = {"sepsis": {**state["kinds"]["sepsis"], "open": 900.0}}
    assert alerting.open_alert_ids(state, "p1", "sepsis") == {
        alerting.alert_id("p1", "sepsis", 1000.0),
        alerting.alert_id("p1", "sepsis", 900.0),
    }
