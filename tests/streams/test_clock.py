"""No single message can stop a patient's scoring: the ingest agent's clock plausibility rule
(``ingest.implausible_time``), without Kafka.

The patient's clock is its newest vital-sign time and scores wait for it, so one vital sign dated a
month ahead used to freeze the patient for a month. The properties: whatever came before (outliers
far ahead or far back, reordered samples, duplicates, re-read records), a patient receiving current
data is scored at its cadence, and a refused message leaves the state as it was."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from icuwatch.core import schemas, topics
from icuwatch.streams import ingest, patient_state
from icuwatch.streams.waveform_state import WaveformState

T = 1_764_000_000.0
KEY = b"p1"
INTERVAL_S = 300.0
STEP_S = 30.0
"""Current data: a vital sign every 30 s."""
RULE = ingest.ClockRule()
DAY = 86400.0
REPLAY_WALL = 1_900_000_000.0
"""Record timestamps of a replay: wall time, unrelated to its event times (a 2020 stay replayed now)."""


def vitals(t: float, **v) -> schemas.Vitals:
    return schemas.Vitals(patient_id="p1", event_time=t, **{"hr": 80, "rr": 16, "spo2": 97, **v})


def topic_of(msg: schemas.Message) -> str:
    return {schemas.Vitals: topics.VITALS, schemas.Lab: topics.LABS, schemas.Adt: topics.ADT}[type(msg)]


@dataclass
class Feed:
    """One patient's records through ``apply_message`` + ``next_step``, as the worker drives them."""

    live: bool
    rule: ingest.ClockRule = RULE
    state: patient_state.PatientState = field(default_factory=patient_state.new_state)
    waveforms: WaveformState = field(default_factory=WaveformState)
    records: list[tuple[schemas.Message, tuple]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)

    def send(self, msg: schemas.Message, timestamp: float, where: tuple | None = None) -> bool | None:
        """True: applied; False: nothing new; None: refused (and the state is checked untouched)."""
        if where is None:
            topic = topic_of(msg)
            self.offsets[topic] = self.offsets.get(topic, -1) + 1
            where = (topic, 0, self.offsets[topic], timestamp)
            self.records.append((msg, where))
        before = copy.deepcopy(self.state)
        try:
            accepted = ingest.apply_message(self.state, msg, where, self.waveforms, self.rule, live=self.live)
        except ingest.Refused as exc:
            assert self.state == before, "a refused message changed the state"
            self.refused.append(exc.reason)
            return None
        if accepted:
            step = ingest.next_step(self.state, msg, KEY, self.waveforms, INTERVAL_S)
            if step.score_reason is not None:
                self.scores.append(step.score_time)
            elif step.checkpoint:
                patient_state.mark_checkpoint(self.state, ingest.phase_s(KEY, patient_state.CHECKPOINT_EVERY_S))
        return accepted


# ---- the reproduction and the rule, example by example --------------------------------------------


def test_a_vital_sign_a_month_ahead_is_refused_and_current_data_keeps_being_scored():
    """Issue 18: OBX-14 = now + 30 days moved the clock 30 days; current vitals then gave 0 scores."""
    for live in (True, False):
        feed = Feed(live=live)
        assert feed.send(vitals(T), T + 1)
        assert feed.send(vitals(T + 30 * DAY), T + 2) is None
        assert "ahead of" in feed.refused[0] and "30.0 d" in feed.refused[0]
        for i in range(1, 40):
            feed.send(vitals(T + STEP_S * i), T + STEP_S * i + 1)
        assert feed.state["now"] == T + STEP_S * 39
        assert len(feed.scores) >= 4 and max(feed.scores) <= T + STEP_S * 39, feed.scores


def test_live_records_are_checked_against_their_own_timestamp_on_every_topic():
    feed = Feed(live=True)
    wall = T
    lab = schemas.Lab(
        patient_id="p1",
        event_time=wall + 2 * DAY,
        analyte="lactate",
        value=4.0,
        unit="mmol/L",
        result_time=wall + 2 * DAY,
    )
    old_discharge = schemas.Adt(patient_id="p1", event_time=wall - 30 * DAY, event="discharge")
    for msg in (vitals(wall + 301), vitals(wall - 8 * DAY), lab, old_discharge):
        assert feed.send(msg, wall) is None
    assert [r.split(" (")[0] for r in feed.refused] == [
        "event time 301 s ahead of the live source's clock",
        "event time 8.0 d older than the live source's clock",
        "event time 2.0 d ahead of the live source's clock",
        "event time 30.0 d older than the live source's clock",
    ]
    assert feed.state == patient_state.new_state()
    # within the limits: clock skew ahead, a lab drawn days ago
    assert feed.send(vitals(wall + 299), wall)
    late_lab = lab.model_copy(update={"event_time": wall - 6 * DAY, "result_time": wall})
    assert feed.send(late_lab, wall)


def test_other_records_are_checked_against_the_patients_clock_and_vital_signs_only():
    feed = Feed(live=False)
    assert feed.send(vitals(T), REPLAY_WALL)  # the first vital sign sets the clock: nothing to compare with
    assert feed.send(vitals(T + 17 * 3600), REPLAY_WALL)  # a long gap between a stay's vital signs
    assert feed.send(vitals(T - 6 * 3600), REPLAY_WALL)  # late, behind the clock: kept, clock stays
    assert feed.state["now"] == T + 17 * 3600
    assert feed.send(vitals(T + 17 * 3600 + DAY + 1), REPLAY_WALL) is None
    assert feed.send(vitals(T + 17 * 3600 - DAY - 1), REPLAY_WALL) is None
    # labs and ADT of a replay are consumed at their own pace, ahead of or behind the vital signs
    lab = schemas.Lab(
        patient_id="p1", event_time=T + 5 * DAY, analyte="wbc", value=9.0, unit="10^9/L", result_time=T + 5 * DAY
    )
    assert feed.send(lab, REPLAY_WALL)
    # a later admission (the same patient id, a new stay) moves what the clock may jump to
    readmit = schemas.Adt(patient_id="p1", event_time=T + 3 * DAY, event="admit")
    assert feed.send(readmit, REPLAY_WALL)
    assert feed.send(vitals(T + 3 * DAY + 60), REPLAY_WALL)
    assert feed.state["now"] == T + 3 * DAY + 60


def test_a_refused_record_read_again_is_refused_again_and_an_applied_one_is_recognised():
    feed = Feed(live=True)
    assert feed.send(vitals(T), T)
    assert feed.send(vitals(T + 30 * DAY), T) is None
    for msg, where in list(feed.records):
        feed.send(msg, where[3], where=where)
    assert len(feed.refused) == 2 and feed.state["now"] == T


def test_the_rule_can_be_switched_off():
    off = ingest.ClockRule(0.0, 0.0, 0.0)
    state = patient_state.new_state()
    for t, live in ((T, True), (T + 30 * DAY, True), (T - 300 * DAY, False)):
        assert ingest.implausible_time(state, vitals(t), T, live, off) is None
    patient_state.apply(state, vitals(T))
    assert ingest.implausible_time(state, vitals(T + 30 * DAY), T, False, off) is None


def test_the_simulator_passes_the_rule():
    """``icuwatch simulate`` (start = now; at ``--speed 60`` its event times run hours ahead of the
    wall clock, at ``--speed 0`` days): its records are not marked live, so they are checked against
    each patient's own clock whatever the speed, and nothing of a simulated ward is refused."""
    from icuwatch.sources.simulator import Simulation

    sim = Simulation(n_patients=3, seed=5, start_time=T, duration_s=2 * 3600, waveforms=False, cxr=False)
    states: dict[str, patient_state.PatientState] = {}
    waveforms = WaveformState()
    n = 0
    for i, (_, topic, msg) in enumerate(sim.timed_messages()):
        state = states.setdefault(msg.patient_id, patient_state.new_state())
        assert ingest.apply_message(state, msg, (topic, 0, i, REPLAY_WALL + i * 0.001), waveforms, RULE) in (
            True,
            False,
        )
        n += 1
    assert n > 1000 and all(s["now"] is not None and s["now"] > T + 3600 for s in states.values())


# ---- properties ------------------------------------------------------------------------------------


@dataclass
class Stream:
    """A patient's current data (one vital sign every ``STEP_S``) and what is mixed into it."""

    feed: Feed
    next_t: float = T
    newest: float | None = None
    current: set[float] = field(default_factory=set)

    @property
    def wall(self) -> float:
        """The clock of a live sender: just after the newest current sample."""
        return (self.newest if self.newest is not None else T) + 1.0

    def timestamp(self) -> float:
        return self.wall if self.feed.live else REPLAY_WALL + len(self.feed.records)

    def block(self, order: list[int]) -> None:
        """``len(order)`` current samples, sent in that order (a reordering)."""
        times = [self.next_t + STEP_S * k for k in range(len(order))]
        self.next_t += STEP_S * len(order)
        for k in order:
            t = times[k]
            self.current.add(t)
            self.newest = t if self.newest is None else max(self.newest, t)
            self.feed.send(vitals(t), self.timestamp())

    def apply(self, op: tuple) -> None:
        kind = op[0]
        feed, now = self.feed, self.wall
        if kind == "block":
            self.block(op[1])
        elif kind == "future":
            feed.send(vitals(now + op[1], hr=150), self.timestamp())
        elif kind == "past":
            feed.send(vitals(max(now - op[1], schemas.EARLIEST_EVENT_TIME), hr=35), self.timestamp())
        elif kind in ("dup", "redeliver") and feed.records:
            msg, where = feed.records[op[1] % len(feed.records)]
            if kind == "dup":  # the same message sent again at once: a new record
                feed.send(msg, where[3])
            else:  # the same record read again (a restart or rebalance)
                feed.send(msg, where[3], where=where)
        elif kind == "lab":
            t = max(now + op[1], schemas.EARLIEST_EVENT_TIME)
            lab = schemas.Lab(patient_id="p1", event_time=t, analyte="lactate", value=6.0, unit="mmol/L", result_time=t)
            feed.send(lab, self.timestamp())
        elif kind == "adt":
            t = max(now + op[2], schemas.EARLIEST_EVENT_TIME)
            feed.send(schemas.Adt(patient_id="p1", event_time=t, event=op[1]), self.timestamp())


MARGIN_S = 2 * 3600.0
"""Outliers lie this far beyond the rule's limits: a replay's limits move with the patient's clock,
and one re-sent or re-read later in a test (which covers < 2 h of current data) must still be out."""


def outliers(live: bool) -> st.SearchStrategy[tuple]:
    """Messages dated implausibly far from the patient's current data (beyond the rule's limits)."""
    ahead = RULE.live_max_future_s if live else RULE.max_jump_s
    behind = RULE.live_max_age_s if live else RULE.max_jump_s
    far_ahead = st.floats(ahead + MARGIN_S, 400 * DAY)
    far_back = st.floats(behind + MARGIN_S, 20 * 365 * DAY)
    ops = [st.tuples(st.just("future"), far_ahead), st.tuples(st.just("past"), far_back)]
    if live:  # live records are checked on every topic (a replay's other topics run at their own pace)
        signed = st.one_of(far_ahead, far_back.map(lambda d: -d))
        ops += [
            st.tuples(st.just("lab"), signed),
            st.tuples(st.just("adt"), st.sampled_from(["admit", "transfer", "discharge"]), signed),
        ]
    return st.one_of(*ops)


def noise(live: bool) -> st.SearchStrategy[tuple]:
    """Anything: outliers, current samples in any order, duplicates, re-read records."""
    return st.one_of(
        outliers(live),
        st.integers(1, 5).flatmap(lambda n: st.permutations(range(n))).map(lambda p: ("block", list(p))),
        st.tuples(st.sampled_from(["dup", "redeliver"]), st.integers(0, 10_000)),
    )


def check_scored_at_cadence(stream: Stream, steady_from: float) -> None:
    """Every score is at a current sample's time, and from ``steady_from`` on there is one at least
    every interval (plus one sample: the cadence fires on the first sample at or after its time)."""
    scores = stream.feed.scores
    assert set(scores) <= stream.current, f"scored at a time no current sample had: {scores}"
    assert stream.feed.state["now"] == stream.newest
    times = [steady_from - STEP_S] + [t for t in scores if t >= steady_from] + [stream.newest]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) <= INTERVAL_S + STEP_S, f"a gap of {max(gaps)} s between scores of current data"


def run_property(
    live: bool, before: list[tuple], steady: list[list[tuple]], first_current: bool, rule: ingest.ClockRule = RULE
) -> None:
    stream = Stream(Feed(live=live, rule=rule))
    if first_current:
        stream.block([0])
    for op in before:
        stream.apply(op)
    steady_from = stream.next_t
    for mixed in steady:  # current data in order, an outlier now and then
        stream.block([0])
        for op in mixed:
            stream.apply(op)
    check_scored_at_cadence(stream, steady_from)
    event(f"refused: {len(stream.feed.refused) if len(stream.feed.refused) < 5 else '5 or more'}")


STEADY = 3 * int(INTERVAL_S / STEP_S)
"""Samples of current data after the noise: three intervals."""
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(
    before=st.lists(noise(live=True), max_size=40),
    steady=st.lists(st.lists(outliers(live=True), max_size=1), min_size=STEADY, max_size=STEADY),
)
def test_live_a_patient_with_current_data_is_scored_at_its_cadence_whatever_came_before(before, steady):
    """Live records (the HL7 listener's): outliers may come first, before any current data."""
    run_property(True, before, steady, first_current=False)


@PROPERTY
@given(
    before=st.lists(noise(live=False), max_size=40),
    steady=st.lists(st.lists(outliers(live=False), max_size=1), min_size=STEADY, max_size=STEADY),
)
def test_replay_a_patient_with_current_data_is_scored_at_its_cadence_whatever_came_before(before, steady):
    """Replays and the simulator: the rule is relative to the patient's clock, which its first vital
    sign sets (nothing to compare it with), so the stream starts with a current one."""
    run_property(False, before, steady, first_current=True)


def test_the_property_check_can_fail():
    """Without the rule, one vital sign a month ahead stops the scoring (the check sees it: a score
    dated a month ahead, then none)."""
    off = ingest.ClockRule(0.0, 0.0, 0.0)
    for live in (True, False):
        with pytest.raises(AssertionError):
            run_property(live, [("block", [0]), ("future", 30 * DAY)], [[]] * STEADY, first_current=False, rule=off)
