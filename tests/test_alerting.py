from icuwatch.streams import alerting, schemas

T = 1_764_000_000.0
TH = {"deterioration": alerting.Thresholds(0.5, 0.3, confirm=2, clear=3),
      "sepsis": alerting.Thresholds(0.5, 0.3, confirm=2, clear=3)}


def score(t, risk, sepsis=0.0):
    return schemas.Score(patient_id="p1", event_time=t, model="m", source="triton", deterioration_risk=risk,
                         sepsis_risk=sepsis, news2=7, qsofa=1, staleness_s={}, scored_at=t)


def run(risks, state=None, start=0):
    state = state or alerting.new_alert_state()
    alerts = []
    for i, r in enumerate(risks):
        alerts += alerting.update(state, score(T + 60 * (start + i), r), TH)
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
