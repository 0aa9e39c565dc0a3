"""The worker's scorers name the model version that answered (issue 19, must-have 6), from the
inference response itself: no extra round trip, picked up at the next batch after a promotion.
Fake Triton clients here; ``tests/stack/test_model_rollout.py`` switches versions on a real server."""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest

from icuwatch.core import features as F
from icuwatch.core import rules, schemas
from icuwatch.core.settings import Settings
from icuwatch.streams.batcher import Due, ScoreBatcher
from icuwatch.streams.scoring import STUDENT_MAX_BATCH, StudentScorer, TritonScorer, response_version

OUTPUTS = ["DETERIORATION_RISK", "SEPSIS_RISK", "NEWS2", "QSOFA", "CONTRIBUTIONS"]


class _Result:
    def __init__(self, arrays, version):
        self.arrays, self.version = arrays, version

    def as_numpy(self, name):
        return self.arrays.get(name)

    def get_response(self):
        return SimpleNamespace(model_version=self.version)


class _RuleClient:
    """Answers with the rule scores, each call by the next version of ``versions`` (the last repeats);
    counts metadata reads."""

    def __init__(self, versions):
        self.versions, self.calls, self.metadata_reads = list(versions), 0, 0

    async def get_model_metadata(self, model, as_json=False, client_timeout=None):
        self.metadata_reads += 1
        return {"name": model, "outputs": [{"name": n} for n in OUTPUTS]}

    async def infer(self, model, inputs, outputs=None, client_timeout=None):
        x = np.frombuffer(inputs[0]._get_content(), dtype=np.float32).reshape(inputs[0].shape())
        out = rules.score_explained(x)
        version = self.versions[min(self.calls, len(self.versions) - 1)]
        self.calls += 1
        arrays = {
            "DETERIORATION_RISK": out["deterioration_risk"].reshape(-1, 1).astype(np.float32),
            "SEPSIS_RISK": out["sepsis_risk"].reshape(-1, 1).astype(np.float32),
            "NEWS2": out["news2"].reshape(-1, 1),
            "QSOFA": out["qsofa"].reshape(-1, 1),
        }
        if version != "1":  # early_warning version 1 sends no contributions
            arrays["CONTRIBUTIONS"] = out["contributions"].astype(np.float32)
        return _Result(arrays, version)

    async def close(self):
        pass


def _settings(**kw) -> Settings:
    return Settings(triton_url="127.0.0.1:1", triton_timeout_s=0.5, triton_retry_s=60.0, **kw)


def _due(i: int, t: float) -> Due:
    x = F.empty(1)
    x[0, F.INDEX["hr"]], x[0, F.INDEX["rr"]] = 80 + 20 * i, 14 + 6 * i
    return Due(f"p{i}", t, x, {"vitals": 0.0}, "cadence")


def test_scores_carry_the_version_that_answered_and_the_next_batch_picks_up_a_new_one(caplog):
    published: list[schemas.Score] = []

    async def run(client):
        scorer = TritonScorer(_settings())
        await scorer.client.close()
        scorer.client = client

        async def publish(score):
            published.append(score)

        batcher = ScoreBatcher(scorer, publish, batch_max=8, batch_wait_s=0.01)
        for k in range(3):
            await batcher.flush([_due(i, 1_700_000_000.0 + 60 * k) for i in range(2)])
        return scorer

    client = _RuleClient(["2", "1", "1"])  # promoted to version 1 after the first batch
    with caplog.at_level(logging.INFO, logger="icuwatch.streams.scoring"):
        scorer = asyncio.run(run(client))
    assert [(s.model, s.model_version) for s in published] == [("early_warning", "2")] * 2 + [
        ("early_warning", "1")
    ] * 4
    assert [s.contributions is None for s in published] == [False] * 2 + [True] * 4
    assert scorer.served_version == "1"
    assert client.metadata_reads == 2  # read again once the version changed
    assert [r.getMessage() for r in caplog.records] == ["Triton model early_warning now answers at version 1 (was 2)"]


def test_fallback_scores_have_no_version():
    published: list[schemas.Score] = []

    async def run():
        scorer = TritonScorer(_settings())  # nothing listens on port 1

        async def publish(score):
            published.append(score)

        try:
            await ScoreBatcher(scorer, publish, batch_max=8, batch_wait_s=0.01).flush([_due(0, 1_700_000_000.0)])
        finally:
            await scorer.close()

    asyncio.run(run())
    ((score,),) = [published]
    assert (score.source, score.model, score.model_version) == ("fallback", rules.MODEL_NAME, None)
    assert schemas.Score.model_validate_json(score.to_bytes()) == score  # no version on the wire: valid v1


def test_a_result_that_names_no_version():
    assert response_version(SimpleNamespace()) is None
    assert response_version(SimpleNamespace(get_response=lambda: SimpleNamespace(model_version=""))) is None
    assert response_version(SimpleNamespace(get_response=lambda: SimpleNamespace(model_version=7))) == "7"


class _StudentClient:
    """``PROBABILITY`` 0.25 for every row; request k answered by ``versions[k]`` (the last repeats)."""

    def __init__(self, versions, declared=None):
        self.versions, self.calls, self.declared, self.sent = list(versions), 0, declared or {}, []

    async def get_model_metadata(self, model, as_json=False, client_timeout=None):
        return {"name": model, "inputs": [{"name": k, "datatype": v} for k, v in self.declared.items()]}

    async def infer(self, model, inputs, outputs=None, client_timeout=None):
        self.sent.append({i.name(): (i.datatype(), i._get_content()) for i in inputs})
        n = inputs[0].shape()[0]
        version = self.versions[min(self.calls, len(self.versions) - 1)]
        self.calls += 1
        return _Result({"PROBABILITY": np.full((n, 1), 0.25, np.float32)}, version)

    async def close(self):
        pass


def _student_batch(n: int) -> dict[str, np.ndarray]:
    return {
        "vitals": np.zeros((n, 8, 14), np.float32),
        "labs": np.zeros((n, 81), np.float32),
        "static": np.zeros((n, 7), np.float32),
        "present": np.ones((n, 2), bool),
        "staleness_h": np.zeros((n, 2), np.float32),
    }


@pytest.mark.parametrize(
    "versions, expected",
    [
        (["3", "3"], "3"),
        (["3", "4", "4", "4"], "4"),  # switched between the two requests of one batch: sent again
        (["3", "4", "3", "4"], None),  # still mixed: an error (the scorer falls back for this batch)
    ],
)
def test_one_student_batch_is_one_versions(versions, expected):
    async def run():
        info = {"norm": {}, "heads": ["sepsis"], "thresholds": {"sepsis": 0.04}}
        scorer = StudentScorer(_settings(scoring_model="student_physionet"), info)
        await scorer.client.close()
        scorer.client = _StudentClient(versions)
        return await scorer._infer_student(_student_batch(STUDENT_MAX_BATCH + 10))

    if expected is None:
        with pytest.raises(RuntimeError, match="answered one batch with versions"):
            asyncio.run(run())
        return
    p, version = asyncio.run(run())
    assert version == expected and p.shape == (STUDENT_MAX_BATCH + 10, 1) and np.allclose(p, 0.25)


@pytest.mark.parametrize("wire", ["UINT8", "FP32"])
def test_the_live_students_thumbnail_and_report_go_as_the_served_config_declares(wire):
    """Triton's metadata decides: UINT8 for an export with the ``wire_uint8`` config, FP32 for an
    older one (``serving/export.py``); the UINT8 bytes are the pixels and the bag exactly."""
    n = 3
    pixels = np.random.default_rng(0).integers(0, 256, size=(n, 1, 32, 32), dtype=np.uint8)
    batch = {
        "vitals": np.zeros((n, 8, 14), np.float32),
        "waveforms": np.zeros((n, 4), np.float32),
        "labs": np.zeros((n, 81), np.float32),
        "cxr": (pixels / 255.0).astype(np.float32),
        "report": (np.arange(n * 256).reshape(n, 256) % 7 == 0).astype(np.float32),
        "static": np.zeros((n, 7), np.float32),
        "present": np.ones((n, 5), bool),
        "staleness_h": np.zeros((n, 5), np.float32),
    }
    client = _StudentClient(["2"], {"CXR": wire, "REPORT": wire, "PRESENT": "BOOL"})

    async def run():
        info = {"norm": {"waveforms": {}}, "heads": ["sepsis", "deterioration"], "thresholds": {}}
        scorer = StudentScorer(_settings(scoring_model="student_live"), info)
        await scorer.client.close()
        scorer.client = client
        return await scorer._infer_student(batch)

    asyncio.run(run())
    (sent,) = client.sent
    assert sent["CXR"][0] == wire and sent["REPORT"][0] == wire and sent["VITALS"][0] == "FP32"
    if wire == "UINT8":
        assert sent["CXR"][1] == pixels.tobytes()
        assert sent["REPORT"][1] == batch["report"].astype(np.uint8).tobytes()
    else:
        assert sent["CXR"][1] == batch["cxr"].tobytes()


def test_a_rolled_back_version_alerts_at_its_own_cards_thresholds(tmp_path):
    from icuwatch.streams.scoring import version_card_thresholds

    for version, th in (("1", 0.0225), ("2", 0.0264)):
        (tmp_path / version).mkdir()
        (tmp_path / version / "export.json").write_text(json.dumps({"thresholds": {"sepsis": th}}))
    read_at_start = tmp_path / "2"
    assert version_card_thresholds(read_at_start, "1") == {"sepsis": 0.0225}
    assert version_card_thresholds(read_at_start, "2") is None  # the start's own
    assert version_card_thresholds(read_at_start, "3") is None  # no card: the start's apply
