"""The live shadow in the batcher (``streams/shadow.py``): it scores the live batch beside the live
model and never changes what the live path publishes. A fake Triton client answers for the models
here; a real tritonserver shadows the demo in tests/stack/test_demo_logs.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from icuwatch.core import features as F
from icuwatch.core import rules
from icuwatch.core.settings import Settings
from icuwatch.streams.batcher import Due, ScoreBatcher
from icuwatch.streams.scoring import TritonScorer
from icuwatch.streams.shadow import ShadowScorer, UnknownShadowModel, shadow_info

T = 1_765_000_000.0


class _Result:
    def __init__(self, arrays):
        self.arrays = arrays

    def as_numpy(self, name):
        return self.arrays.get(name)

    def get_response(self):
        return SimpleNamespace(model_version="3")


class _RuleClient:
    """Answers a feature-row model with the rule scores, shifted by ``shift`` (another model),
    after ``delay_s``."""

    def __init__(self, shift=0.0, delay_s=0.0):
        self.shift, self.calls, self.delay_s = shift, 0, delay_s

    async def get_model_metadata(self, model, as_json=False, client_timeout=None):
        return {
            "name": model,
            "outputs": [{"name": n} for n in ("DETERIORATION_RISK", "SEPSIS_RISK", "NEWS2", "QSOFA")],
        }

    async def infer(self, model, inputs, outputs=None, client_timeout=None):
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        x = np.frombuffer(inputs[0]._get_content(), dtype=np.float32).reshape(inputs[0].shape())
        out = rules.score_explained(x)
        return _Result(
            {
                "DETERIORATION_RISK": np.clip(out["deterioration_risk"] + self.shift, 0, 1).reshape(-1, 1),
                "SEPSIS_RISK": out["sepsis_risk"].reshape(-1, 1),
                "NEWS2": out["news2"].reshape(-1, 1),
                "QSOFA": out["qsofa"].reshape(-1, 1),
            }
        )

    async def close(self):
        pass


def _settings(**kw) -> Settings:
    return Settings(triton_url="127.0.0.1:1", triton_timeout_s=0.5, triton_retry_s=60.0, **kw)


def _due(i: int, published: list) -> Due:
    x = F.empty(1)
    x[0, F.INDEX["hr"]], x[0, F.INDEX["rr"]] = 80 + 30 * i, 14 + 8 * i
    return Due(f"p{i}", T + i, x, {"vitals": 0.0}, "cadence", published=lambda: published.append(f"p{i}"))


def _run(shadow_client, wait_for_shadow=True, flushes=2):
    """Two flushes of two patients; the live model answers through a fake client, the shadow
    through ``shadow_client`` (None: the real gRPC client to a port where nothing listens)."""
    live_scores, shadow_scores, order = [], [], []

    async def run():
        live = TritonScorer(_settings())
        await live.client.close()
        live.client = _RuleClient()
        shadow = ShadowScorer(_settings(shadow_model="early_warning_v2"), None)
        if shadow_client is not None:
            await shadow.scorer.client.close()
            shadow.scorer.client = shadow_client

        async def publish(score):
            live_scores.append(score)
            order.append("live")

        async def publish_shadow(score):
            shadow_scores.append(score)
            order.append("shadow")

        batcher = ScoreBatcher(live, publish, 8, 0.01, shadow, publish_shadow)
        for _ in range(flushes):
            await batcher.flush([_due(i, order) for i in range(2)])
            order.append("flushed")
            if wait_for_shadow:
                await batcher.shadow_done()
        await batcher.shadow_done()
        await shadow.close()
        return shadow

    shadow = asyncio.run(run())
    return live_scores, shadow_scores, order, shadow


def test_the_shadow_scores_the_live_batch_after_the_live_scores_are_out():
    client = _RuleClient(shift=0.25)
    live, shadowed, order, shadow = _run(client)
    assert [(s.patient_id, s.event_time) for s in shadowed] == [(s.patient_id, s.event_time) for s in live]
    assert {(s.model, s.model_version, s.source) for s in shadowed} == {("early_warning_v2", "3", "triton")}
    assert {s.model for s in live} == {"early_warning"}
    assert all(s.contributions is None for s in shadowed)
    for a, b in zip(live, shadowed):
        assert b.deterioration_risk == pytest.approx(min(1.0, a.deterioration_risk + 0.25), abs=1e-6)
    assert order[:7] == ["live", "live", "p0", "p1", "flushed", "shadow", "shadow"]  # live never waits
    assert shadow.counts["shadow_batches"] == 2 and client.calls == 2


def test_a_slow_shadow_neither_delays_the_live_scores_nor_piles_up():
    import time

    from icuwatch.streams.batcher import SHADOW_QUEUE

    flushes = SHADOW_QUEUE + 2  # one being scored, SHADOW_QUEUE waiting, the last finds the queue full
    started = time.monotonic()
    live, shadowed, order, shadow = _run(_RuleClient(delay_s=0.3), wait_for_shadow=False, flushes=flushes)
    assert len(live) == 2 * flushes and order.index("flushed") < order.index("shadow")
    assert order[: order.index("shadow")].count("flushed") == flushes  # every live flush done first
    assert len(shadowed) == 2 * (flushes - 1) and shadow.counts["shadow_skipped_rows"] == 2
    assert shadow.counts["shadow_batches"] == flushes - 1
    assert time.monotonic() - started < 0.3 * flushes + 1.5


def test_a_shadow_that_cannot_be_reached_changes_nothing_on_the_live_path():
    live, shadowed, order, shadow = _run(None)
    assert len(live) == 4 and {s.source for s in live} == {"triton"}  # the live model still scores
    assert shadowed == [] and order.count("p0") == 2 and order.count("flushed") == 2
    # one failed call, then left alone until triton_retry_s is over (no rules stand in for it)
    assert shadow.counts["shadow_errors"] == 1 and shadow.counts["shadow_skipped_rows"] == 4


def test_shadow_info_tells_a_student_from_a_feature_row_model_and_refuses_an_unknown_one():
    assert shadow_info(Settings(shadow_model="early_warning")) is None
    info = shadow_info(Settings(shadow_model="student_live", scoring_model=""))
    assert info is not None and set(info["heads"]) == {"sepsis", "deterioration"}
    with pytest.raises(UnknownShadowModel, match="shadow model student_lve: no such model"):
        shadow_info(Settings(shadow_model="student_lve"))


def test_a_student_shadow_gets_its_own_rows_and_no_leave_one_out_copies():
    from icuwatch.streams import patient_state

    async def build():  # the gRPC client wants a running loop
        settings = Settings(shadow_model="student_live", scoring_model="")
        shadow = ShadowScorer(settings, shadow_info(settings))
        await shadow.close()
        return shadow

    shadow = asyncio.run(build())
    assert shadow.info is not None and shadow.model_name == "student_live"
    assert shadow.scorer.groups == {}  # type: ignore[attr-defined]
    assert shadow.thresholds["sepsis"].on == pytest.approx(shadow.info["thresholds"]["sepsis"])
    row = shadow.row(patient_state.new_state(), T)
    assert row is not None and "present" in row


def test_dues_submitted_before_the_live_model_changed_are_scored_by_the_model_their_rows_were_built_for():
    published: list = []

    async def run():
        old, new = TritonScorer(_settings()), TritonScorer(_settings(triton_model="early_warning_v3"))
        for scorer in (old, new):
            await scorer.client.close()
            scorer.client = _RuleClient()

        async def publish(score):
            published.append(score)

        batcher = ScoreBatcher(old, publish, 8, 0.01)
        x = F.empty(1)
        x[0, F.INDEX["hr"]] = 90
        batcher.submit("p0", T, x, {"vitals": 0.0}, "cadence")  # stamped with the old scorer
        batcher.scorer = new  # `icuwatch models promote --shadow` followed
        batcher.submit("p1", T, x, {"vitals": 0.0}, "cadence")
        await batcher.flush(batcher.pending)

    asyncio.run(run())
    assert [(s.patient_id, s.model) for s in published] == [("p0", "early_warning"), ("p1", "early_warning_v3")]
