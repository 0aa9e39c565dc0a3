"""Model roll-out on the running tritonserver (issue 19, must-have 6): ``icuwatch models promote``
and ``rollback`` switch the served version of ``early_warning`` while the worker's scorer keeps
scoring (no restart, no fallback), and its scores name the version that gave them; a version that
does not exist, fails to load or fails its check leaves the old one serving (exit 2, one line).

A tritonserver of this module on ports 18400-18402 (explicit model control, as ``stack up`` starts
it) serves a copy of ``serving/models``; the broken versions are dropped into the copy while it
runs, as an operator would add a new version directory.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading

import numpy as np
import pytest
from stack_fixtures import settings_for, wait_for

from icuwatch.cli.main import main
from icuwatch.core import rules, schemas
from icuwatch.core.settings import get_settings
from icuwatch.deploy import triton, triton_models
from icuwatch.serving import MODEL_REPOSITORY
from icuwatch.streams.batcher import Due, ScoreBatcher
from icuwatch.streams.scoring import TritonScorer

pytestmark = [pytest.mark.stack, pytest.mark.timeout(120)]

PORTS = {
    "ICUWATCH_TRITON_URL": "127.0.0.1:18401",
    "ICUWATCH_TRITON_HTTP_PORT": "18400",
    "ICUWATCH_TRITON_METRICS_PORT": "18402",
}
MODEL = "early_warning"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(settings, env, repository): tritonserver on a copy of the shipped repository."""
    root = tmp_path_factory.mktemp("rollout")
    repo = root / "models"
    shutil.copytree(MODEL_REPOSITORY, repo, ignore=shutil.ignore_patterns("__pycache__"))
    settings, env = settings_for(root / "state", **PORTS)
    triton.start(settings, model_repository=repo)
    try:
        yield settings, env, repo
    finally:
        triton.stop(settings)


@pytest.fixture
def cli(served, monkeypatch, capsys):
    """``icuwatch ...`` in-process against this module's tritonserver: (exit status, stdout, stderr)."""
    settings, env, _ = served
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    yield run
    get_settings.cache_clear()


@pytest.fixture
def pinned_back_to_2(served):
    """Each test starts and ends with version 2 serving and an empty history."""
    settings, _, _ = served
    yield
    client = triton_models.connect(settings)
    if triton_models.ready_versions(client, MODEL) != [2]:
        triton_models.promote(settings, MODEL, 2)
    triton_models.history_path(settings).unlink(missing_ok=True)


class Scoring:
    """The worker's scoring path (``TritonScorer`` + ``ScoreBatcher``) scoring three fixed rows in a
    loop on its own event loop, every score kept."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.scores: list[schemas.Score] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        scorer = TritonScorer(self.settings)

        async def publish(score: schemas.Score) -> None:
            self.scores.append(score)

        batcher = ScoreBatcher(scorer, publish, batch_max=8, batch_wait_s=0.01)
        x = triton_models.check_rows()
        t = 1_700_000_000.0
        try:
            while not self._stop.is_set():
                t += 60.0
                batch = [Due(f"p{i}", t, x[i : i + 1], {"vitals": 0.0}, "cadence") for i in range(len(x))]
                await batcher.flush(batch)
                await asyncio.sleep(0.005)
        except BaseException as exc:  # noqa: B036 - reported to the test
            self.errors.append(exc)
        finally:
            await scorer.close()

    def versions_after(self, n: int) -> list[str | None]:
        return [s.model_version for s in self.scores[n:]]

    def wait_for_version(self, version: str, timeout_s: float = 10.0) -> int:
        """Index of the first score of ``version`` from now on."""
        start = len(self.scores)
        assert wait_for(lambda: version in self.versions_after(start), timeout_s, 0.05), self.versions_after(start)
        return start + self.versions_after(start).index(version)

    def stop(self) -> list[schemas.Score]:
        self._stop.set()
        self._thread.join(10)
        assert not self.errors, self.errors
        return self.scores


def _infer(settings) -> tuple[str, np.ndarray, np.ndarray]:
    """One inference that names no version (as the worker's): (version that answered, NEWS2, risk)."""
    import tritonclient.grpc as grpcclient

    x = triton_models.check_rows()
    client = grpcclient.InferenceServerClient(settings.triton_url)
    inp = grpcclient.InferInput("FEATURES", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer(MODEL, [inp])
    return r.get_response().model_version, r.as_numpy("NEWS2").reshape(-1), r.as_numpy("DETERIORATION_RISK").reshape(-1)


def test_promote_and_roll_back_while_the_scorer_keeps_scoring(served, cli, pinned_back_to_2):
    settings, _, _ = served
    scoring = Scoring(settings)
    try:
        first = scoring.wait_for_version("2")

        rc, out, err = cli("models", "promote", MODEL, "1", "--json")
        assert rc == 0, err
        result = json.loads(out)
        assert (result["version"], result["previous"], result["serving"]) == (1, [2], [1])
        assert result["check"]["problems"] == [] and result["history"] == [2, 1]
        at_1 = scoring.wait_for_version("1")
        assert "2" not in scoring.versions_after(at_1)  # once switched, version 1 answers every request

        rc, out, err = cli("models", "promote", MODEL, "2")
        assert rc == 0, err
        assert out.startswith(f"{MODEL}: version 2 serving (was 1)")
        at_2 = scoring.wait_for_version("2")

        rc, out, err = cli("models", "rollback", MODEL)  # history 2 > 1 > 2: back to 1
        assert rc == 0, err
        assert out.startswith(f"{MODEL}: version 1 serving again (was 2)") and out.rstrip().endswith("history 2 > 1")
        scoring.wait_for_version("1")
        rc, out, err = cli("models", "rollback", MODEL)
        assert rc == 0 and "history 2" in out
        scoring.wait_for_version("2")
        rc, out, err = cli("models", "rollback", MODEL)  # nothing earlier than 2
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
        assert "no earlier version of early_warning to roll back to" in err
    finally:
        scores = scoring.stop()

    switched = scores[first:]
    assert len(switched) > 30
    # no request failed: no fallback while versions were switched
    assert {s.source for s in switched} == {"triton"} and {s.model for s in switched} == {MODEL}
    assert {s.model_version for s in switched} == {"1", "2"}
    by_version = {v: [s for s in switched if s.model_version == v] for v in ("1", "2")}
    # version 1 has no contributions, version 2 has them; the rule scores are the same
    assert all(s.contributions is None for s in by_version["1"])
    assert all(s.contributions is not None for s in by_version["2"])
    x = triton_models.check_rows()
    for s in switched:
        i = int(s.patient_id[1:])
        assert s.news2 == int(rules.news2(x[i : i + 1])[0])
    assert [s.model_version for s in scores[at_1:at_2]].count("1") > 0

    # an alert opened by a version-1 score carries that version
    from icuwatch.streams import alerting

    state = alerting.new_alert_state()
    sick = [s for s in by_version["1"] if s.patient_id == "p2"][:3]
    thresholds = {k: alerting.Thresholds(on=0.5, off=0.3) for k in ("deterioration", "sepsis")}
    opened = [a for s in sick for a in alerting.update(state, s, thresholds)]
    assert opened and {(a.model, a.model_version) for a in opened} == {(MODEL, "1")}


def test_a_version_that_does_not_load_or_fails_its_check_leaves_the_old_one_serving(served, cli, pinned_back_to_2):
    settings, _, repo = served
    # version 3 loads but gets NEWS2 wrong; version 4 raises while loading; there is no version 9
    v1 = (repo / MODEL / "1" / "model.py").read_text()
    (repo / MODEL / "3").mkdir()
    (repo / MODEL / "3" / "model.py").write_text(
        v1.replace("out = rules.score(x)", 'out = rules.score(x)\n            out["news2"] = out["news2"] + 1')
    )
    (repo / MODEL / "4").mkdir()
    (repo / MODEL / "4" / "model.py").write_text(
        v1.replace("self.n_features = features.N_FEATURES", 'raise RuntimeError("broken on purpose")')
    )
    x = triton_models.check_rows()
    scoring = Scoring(settings)
    try:
        scoring.wait_for_version("2")
        for version, says in (
            ("3", "version 3 of early_warning failed its check (NEWS2 [1, 1, "),
            ("4", "version 4 of early_warning did not load ("),
            ("9", "version 9 of early_warning did not load (tritonserver has no version 9 of early_warning"),
        ):
            rc, out, err = cli("models", "promote", MODEL, version)
            assert rc == 2 and out == "", (version, rc, out, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"icuwatch models: {says}"), lines
            assert lines[0].endswith("; version 2 still serving")
            answered, news2, risk = _infer(settings)  # the old version answers, with the rules' numbers
            assert answered == "2"
            np.testing.assert_array_equal(news2, rules.news2(x))
            np.testing.assert_allclose(risk, rules.score(x)["deterioration_risk"], rtol=1e-6)
            after = scoring.wait_for_version("2")
            assert set(scoring.versions_after(after)) == {"2"}
        rc, out, err = cli("models", "list", "--json")
        assert rc == 0, err
        info = json.loads(out)["models"][MODEL]
        assert info["serving"] == [2] and info["repository_versions"] == [1, 2, 3, 4]
        assert (
            info["versions"]["4"]["state"] == "UNAVAILABLE" and "broken on purpose" in info["versions"]["4"]["reason"]
        )
    finally:
        scores = scoring.stop()
        # a broken directory left in a repository whose policy is "latest" would stop a restart
        shutil.rmtree(repo / MODEL / "3")
        shutil.rmtree(repo / MODEL / "4")
    assert {s.source for s in scores} == {"triton"}  # the workers never fell back

    events = json.loads(triton_models.history_path(settings).read_text())[settings.triton_url][MODEL]["events"]
    assert [(e["to"], e["ok"]) for e in events] == [(3, False), (4, False), (9, False)]
    assert all(e["reason"].endswith("version 2 still serving") for e in events)
    rc, out, err = cli("models", "promote", MODEL, "two")
    assert rc == 2 and "positive whole number" in err


def test_a_restarted_server_serves_the_pinned_version_again(served, cli, pinned_back_to_2):
    settings, _, repo = served
    rc, _, err = cli("models", "promote", MODEL, "1")
    assert rc == 0, err
    triton.stop(settings)
    triton.start(settings, model_repository=repo)  # the repository's policy says 2; the pin says 1
    assert _infer(settings)[0] == "1"
    rc, out, err = cli("models", "list")
    assert rc == 0, err
    (row,) = [line for line in out.splitlines() if line.startswith(MODEL)]
    assert row.split()[1] == "1" and row.rstrip().endswith("1 (2 > 1)")
