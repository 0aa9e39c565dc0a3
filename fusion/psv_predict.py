"""The PhysioNet 2019 challenge interface: one prediction file per ``pNNNNNN.psv`` stay.

``predict_dir`` writes, for every input stay, a file of the same name with the header
``PredictedProbability|PredictedLabel`` and one row per input row. Strictly causal: the row of hour
t is computed from rows <= t only.

The rule models and the distilled student go through exactly the streaming path's code: the stay
becomes the same v1 messages the replay publishes (``icuwatch.sources.psv``), folded into the worker's
patient state in publish order, and scored at each hour with what the worker sends to Triton: the
rules' feature row, or the student's cohort row (``streams.student_row.cohort_row``, answered with
early exit and the exit's temperature, as the served student does). Tests replay stays through
broker -> worker -> tritonserver and check the scores agree (``tests/stack/test_stream_student_e2e.py``).

``served`` (the default) is the model the worker scores sepsis with: the live student
(``student_live``, the default ``ICUWATCH_SCORING_MODEL``), the PhysioNet student when the setting
names that one (``student_physionet``), the rules when it is empty.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from icuwatch.core import rules
from icuwatch.core.errors import UNREADABLE, BadFile, OperatorError, one_line
from icuwatch.core.settings import Settings, get_settings
from icuwatch.sources.physionet import Stay, list_stays, read_psv, stay_folder

RULE_MODELS = {
    "rules": ("sepsis_risk", 0.5),
    "news2": ("deterioration_risk", 0.5),
    "qsofa": ("qsofa", 2.0 / 3.0),
}
"""Rule model -> (output used as probability, threshold). ``rules`` is the served early_warning
model's sepsis output; ``qsofa`` is qSOFA / 3, so the threshold means qSOFA >= 2."""
FUSION_MODELS = ("early", "late", "stacked", "attention")
"""Fusion strategies trained on the PhysioNet cohort (``icuwatch train --strategy S``), loaded from
``var/models/<strategy>-physionet``."""
STUDENT = "student"
"""The distilled early-exit student (``icuwatch distill``), from ``var/models/student-physionet``."""
LIVE_STUDENT = "student_live"
"""The live student (``icuwatch distill-live``): the served TorchScript itself, from the served
repository (``serving/models/student_live``), on ``streams.live_row`` rows; its sepsis column."""
SERVED = "served"
MODELS = (SERVED, *RULE_MODELS, "gbt", *FUSION_MODELS, STUDENT, LIVE_STUDENT)


def hour_times(stay: Stay, base_time: float) -> np.ndarray:
    """Event time of each row, as the replay stamps it (ICU admission + ICULOS hours). A row without
    a usable ICULOS (the replay skips it) still gets a prediction, at its row number's hour."""
    from icuwatch.sources.psv import row_times

    t_admit, times = row_times(stay, base_time)
    by_row = np.round(t_admit + np.arange(1, len(times) + 1) * 3600.0, 3)
    return np.where(np.isfinite(times), times, by_row)


def states_at_hours(stay: Stay, base_time: float | None = None) -> Iterator[tuple[float, Any]]:
    """``(event time, patient state)`` at every hour of the stay: the replay's messages folded into
    the worker's state in publish order, up to that hour (the same state object, advanced)."""
    from icuwatch.sources.psv import DEFAULT_BASE_TIME, stay_messages
    from icuwatch.streams import patient_state

    base = DEFAULT_BASE_TIME if base_time is None else base_time
    messages = sorted(stay_messages(stay, base), key=lambda m: m[0])
    state = patient_state.new_state()
    i = 0
    for t in hour_times(stay, base):
        while i < len(messages) and messages[i][0] <= t:
            patient_state.apply(state, messages[i][2])
            i += 1
        yield float(t), state


def rule_outputs(stay: Stay, base_time: float | None = None) -> dict[str, np.ndarray]:
    """The rule scores at every hour of the stay, computed from the worker's state."""
    from icuwatch.streams import patient_state

    rows = [patient_state.features_at(state, t) for t, state in states_at_hours(stay, base_time)]
    x = np.concatenate(rows, axis=0) if rows else np.empty((0, 0), dtype=np.float32)
    out = rules.score(x)
    out["qsofa_fraction"] = out["qsofa"].astype(np.float32) / 3.0
    return out


def predictor(
    model: str, model_dir: Path | None = None, use_stored_threshold: bool = True, settings: Settings | None = None
) -> tuple[Callable[[Stay], np.ndarray], float]:
    """(probabilities-per-row function, threshold) for a model name (``served``: see :func:`served_model`).

    A rule model's threshold is the one ``icuwatch tune-thresholds`` stored, else its clinical default.
    """
    settings = settings or get_settings()
    models_dir = settings.state_dir / "models"
    if model == SERVED:
        model = served_model(settings)
    if model in RULE_MODELS:
        from icuwatch.fusion.thresholds import stored_threshold

        output, threshold = RULE_MODELS[model]
        tuned = stored_threshold(models_dir, model) if use_stored_threshold else None
        key = "qsofa_fraction" if output == "qsofa" else output
        return (lambda stay: rule_outputs(stay)[key].astype(np.float64)), (threshold if tuned is None else tuned)
    if model == "gbt":
        from icuwatch.fusion.baselines.gbt import GbtModel

        gbt = GbtModel.load(model_dir or models_dir / "gbt")
        return gbt.predict_stay, float(gbt.threshold)
    if model in FUSION_MODELS:
        predictor_ = FusionStayPredictor(model_dir or models_dir / f"{model}-physionet")
        return predictor_.predict_stay, predictor_.threshold
    if model == STUDENT:
        student = StudentStayPredictor(model_dir or models_dir / "student-physionet")
        return student.predict_stay, student.threshold
    if model == LIVE_STUDENT:
        live = LiveStudentStayPredictor(settings, model_dir)
        return live.predict_stay, live.threshold
    raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")


class FusionStayPredictor:
    """A trained fusion model scoring a stay's hours from the same causal rows it was trained on."""

    def __init__(self, directory: Path) -> None:
        from icuwatch.fusion import model_store

        self.trained = model_store.load(directory)
        if self.trained.card["spec"]["cohort"] != "physionet":
            raise ValueError(
                f"{directory}: trained on the {self.trained.card['spec']['cohort']} cohort, not on PhysioNet stays"
            )
        self.norm = self.trained.card["data"]["meta"]["norm"]
        self.threshold = self.trained.threshold

    def predict_stay(self, stay: Stay) -> np.ndarray:
        import torch

        from icuwatch.fusion.cohorts.physionet import stay_inputs
        from icuwatch.fusion.strategies.base import to_tensors

        rows = stay_inputs(stay, self.norm)
        batch = {**rows["inputs"], "present": rows["present"], "staleness_h": rows["staleness_h"]}
        with torch.no_grad():
            logits = self.trained.model(to_tensors(batch)).numpy()
        return self.trained.probabilities(logits)


class StudentStayPredictor:
    """The distilled student on the rows the worker builds from its patient state
    (``streams.student_row.cohort_row``), answered as the served student answers: early exit, the
    exit's temperature, sigmoid."""

    def __init__(self, directory: Path) -> None:
        from icuwatch.fusion import model_store

        if not (directory / "model_card.json").is_file():
            raise OperatorError(f"{directory}: no trained student (run icuwatch distill first)")
        self.trained = model_store.load(directory)
        self.norm = self.trained.card["data"]["meta"]["norm"]
        self.threshold = self.trained.threshold

    def rows(self, stay: Stay, base_time: float | None = None) -> list[dict]:
        from icuwatch.streams.student_row import cohort_row

        return [cohort_row(state, t, self.norm) for t, state in states_at_hours(stay, base_time)]

    def probabilities(self, rows: list[dict]) -> np.ndarray:
        import torch

        from icuwatch.fusion.strategies.base import to_tensors
        from icuwatch.streams.student_row import stack_rows

        if not rows:
            return np.empty(0, np.float64)
        model = self.trained.model
        with torch.no_grad():
            logits, exit_index = model.forward_early_exit(to_tensors(stack_rows(rows)))
            return torch.sigmoid(model.calibrated(logits, exit_index)).numpy().astype(np.float64)

    def predict_stay(self, stay: Stay) -> np.ndarray:
        return self.probabilities(self.rows(stay))


def served_model(settings: Settings) -> str:
    """The model the worker scores sepsis with: ``student_live``, ``student`` when
    ``ICUWATCH_SCORING_MODEL`` names another student, else ``rules``."""
    if settings.scoring_model == LIVE_STUDENT:
        return LIVE_STUDENT
    return STUDENT if settings.scoring_model.startswith("student") else "rules"


class LiveStudentStayPredictor:
    """The served live student on the rows the worker builds (``streams.live_row.row``): the exported
    TorchScript Triton runs (``model.pt`` of the served version, early exit inside), in process; the
    sepsis column and the sepsis alert threshold of its ``export.json``."""

    def __init__(self, settings: Settings, directory: Path | None = None) -> None:
        import json

        from icuwatch.streams.scoring import served_model_info

        if directory is None:
            live = settings.model_copy(update={"scoring_model": LIVE_STUDENT})
            directory = Path(served_model_info(live)["dir"])
        info_path = directory / "export.json"
        if not (directory / "model.pt").is_file() or not info_path.is_file():
            raise OperatorError(f"{directory}: no exported live student (run icuwatch distill-live --export-to ...)")
        info = json.loads(info_path.read_text())
        self.norm = info["norm"]
        self.threshold = float(info["thresholds"]["sepsis"])
        self.sepsis = list(info["heads"]).index("sepsis")
        import warnings

        import torch

        with warnings.catch_warnings():  # torch.jit's deprecation notice
            warnings.simplefilter("ignore", DeprecationWarning)
            self.module = torch.jit.load(str(directory / "model.pt"), map_location="cpu").eval()

    def predict_stay(self, stay: Stay) -> np.ndarray:
        import torch

        from icuwatch.streams.live_row import row
        from icuwatch.streams.student_row import stack_rows

        rows = [row(state, t, self.norm) for t, state in states_at_hours(stay)]
        if not rows:
            return np.empty(0, np.float64)
        batch = {k: torch.from_numpy(v) for k, v in stack_rows(rows).items()}
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            p, _ = self.module(batch, True)
        return p.reshape(len(rows), -1)[:, self.sepsis].double().numpy()


def write_predictions(path: Path, probabilities: np.ndarray, threshold: float) -> None:
    labels = (probabilities >= threshold).astype(int)
    lines = ["PredictedProbability|PredictedLabel"]
    lines += [f"{p:.6f}|{y}" for p, y in zip(probabilities, labels)]
    path.write_text("\n".join(lines) + "\n")


def predict_dir(
    input_dir: str | Path,
    output_dir: str | Path,
    model: str = SERVED,
    patients: int | None = None,
    progress: bool = True,
    model_dir: Path | None = None,
    split: str | None = None,
    failed: dict[str, str] | None = None,
) -> int:
    """Write a prediction file for every stay in ``input_dir``; returns the number written.

    A stay file that is malformed or unreadable raises :class:`BadFile` (or the OS error), or, when a
    ``failed`` dict is given, is skipped and recorded there (stay id -> one line naming the file).
    """
    from tqdm import tqdm

    paths = list_stays(stay_folder(input_dir), split=split, limit=patients)
    if not paths:
        raise OperatorError(f"{input_dir}: no stays selected" + (f" (split {split})" if split else ""))
    predict, threshold = predictor(model, model_dir)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for path in tqdm(paths, desc=f"psv-predict {model}", unit="stay", disable=not progress):
        try:
            stay = read_psv(path)
        except (BadFile, *UNREADABLE) as exc:
            if failed is None:
                raise
            failed[path.stem] = one_line(exc)
            continue
        probabilities = predict(stay)
        if len(probabilities) != len(stay.values):
            raise RuntimeError(f"{model} gave {len(probabilities)} rows for {len(stay.values)} in {path.name}")
        write_predictions(out / path.name, probabilities, threshold)
        written += 1
    return written
