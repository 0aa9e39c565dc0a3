"""Reading challenge prediction/label folders and writing ``report.md`` and ``summary.json``.

``LABEL_DIR`` holds the challenge's ``pNNNNNN.psv`` stays (``SepsisLabel`` and ``ICULOS`` columns are
read); a prediction folder holds a file of the same name per stay, header
``PredictedProbability|PredictedLabel``, one row per stay row. A stay without a prediction file, or
with a different number of rows, is an error; prediction files without a stay are ignored (counted).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from icuwatch.core.errors import UNREADABLE, OperatorError, one_line
from icuwatch.fusion.evaluation import metrics
from icuwatch.fusion.evaluation.utility import cohort_utilities

PREDICTION_HEADER = ("PredictedProbability", "PredictedLabel")


class EvaluationError(OperatorError, ValueError):
    """Prediction and label folders that do not match, or malformed files."""


@dataclass
class Labels:
    label_dir: Path
    patient_ids: list[str]
    labels: list[np.ndarray]
    iculos: list[np.ndarray]

    @property
    def septic(self) -> list[bool]:
        return [bool(lab.any()) for lab in self.labels]


@dataclass
class Predictions:
    name: str
    pred_dir: Path
    probabilities: list[np.ndarray]
    predictions: list[np.ndarray]
    ignored_files: int = 0
    extra: dict = field(default_factory=dict)


def _read_columns(path: Path, names: tuple[str, ...]) -> tuple[list[str], list[np.ndarray]]:
    """Selected columns of a ``|``-separated file as float arrays (fast: no full parse)."""
    try:
        with open(path) as f:
            header = f.readline().strip().split("|")
            missing = [n for n in names if n not in header]
            if missing:
                raise EvaluationError(f"{path}: no column {', '.join(missing)} (header: {'|'.join(header)})")
            index = [header.index(n) for n in names]
            cols: list[list[str]] = [[] for _ in names]
            for lineno, line in enumerate(f, start=2):
                line = line.strip()
                if not line:
                    continue
                parts = line.split("|")
                if len(parts) != len(header):
                    raise EvaluationError(f"{path}:{lineno}: {len(parts)} values, header has {len(header)}")
                for col, i in zip(cols, index):
                    col.append(parts[i])
    except UnicodeDecodeError:
        raise EvaluationError(f"{path}: not a text file") from None
    try:
        return header, [np.array(c, dtype=np.float64) for c in cols]
    except ValueError as exc:
        raise EvaluationError(f"{path}: {exc}") from None


def select_stays(label_dir: str | Path, split: str | None = None, limit: int | None = None) -> list[Path]:
    from icuwatch.sources.physionet import list_stays

    label_dir = Path(label_dir)
    if not label_dir.is_dir():
        raise EvaluationError(f"label folder {label_dir} does not exist")
    paths = list_stays(label_dir, split=split, limit=limit)
    if not paths:
        raise EvaluationError(f"no pNNNNNN.psv stays in {label_dir}" + (f" (split {split})" if split else ""))
    return paths


def load_labels(paths: list[Path], progress: bool = True, failed: dict[str, str] | None = None) -> Labels:
    """The labels of ``paths``. A malformed or unreadable file raises, or, with a ``failed`` dict, is
    left out and recorded there (stay id -> one line naming the file)."""
    from tqdm import tqdm

    ids, labels, iculos = [], [], []
    for path in tqdm(paths, desc="labels", unit="stay", disable=not progress, leave=False):
        try:
            _, (lab, hours) = _read_columns(path, ("SepsisLabel", "ICULOS"))
            if lab.size and not np.isin(lab, (0, 1)).all():
                raise EvaluationError(f"{path}: SepsisLabel must be 0 or 1")
        except (EvaluationError, *UNREADABLE) as exc:
            if failed is None:
                raise
            failed[path.stem] = one_line(exc)
            continue
        ids.append(path.stem)
        labels.append(lab.astype(int))
        iculos.append(hours)
    return Labels(label_dir=paths[0].parent, patient_ids=ids, labels=labels, iculos=iculos)


def load_predictions(
    name: str, pred_dir: str | Path, labels: Labels, progress: bool = True, failed: dict[str, str] | None = None
) -> Predictions:
    """One model's predictions for every stay of ``labels``; EvaluationError on any mismatch.

    With a ``failed`` dict (stay id -> reason), the stays already in it are not read (empty arrays
    hold their places) and a malformed or unreadable prediction file is recorded there, not raised;
    a prediction file missing altogether is still an error (the wrong folder, most likely)."""
    from tqdm import tqdm

    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise EvaluationError(f"prediction folder {pred_dir} ({name}) does not exist")
    skip = failed if failed is not None else {}
    missing = [pid for pid in labels.patient_ids if pid not in skip and not (pred_dir / f"{pid}.psv").is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise EvaluationError(
            f"{name}: {len(missing)} of {len(labels.patient_ids)} stays of {labels.label_dir} "
            f"have no prediction file in {pred_dir}: {shown}"
        )
    probabilities, predictions = [], []
    for pid, lab in tqdm(
        list(zip(labels.patient_ids, labels.labels)),
        desc=f"predictions {name}",
        unit="stay",
        disable=not progress,
        leave=False,
    ):
        prob = pred = np.empty(0)
        if pid not in skip:
            try:
                prob, pred = _read_predictions(pred_dir / f"{pid}.psv", lab.size)
            except (EvaluationError, *UNREADABLE) as exc:
                if failed is None:
                    raise
                failed[pid] = one_line(exc)
        probabilities.append(prob)
        predictions.append(pred.astype(int))
    wanted = set(labels.patient_ids)
    ignored = sum(1 for p in pred_dir.glob("p*.psv") if p.stem not in wanted)
    return Predictions(
        name=name, pred_dir=pred_dir, probabilities=probabilities, predictions=predictions, ignored_files=ignored
    )


def _read_predictions(path: Path, rows: int) -> tuple[np.ndarray, np.ndarray]:
    header, (prob, pred) = _read_columns(path, PREDICTION_HEADER)
    if tuple(header) != PREDICTION_HEADER:
        raise EvaluationError(f"{path}: header must be {'|'.join(PREDICTION_HEADER)}, not {'|'.join(header)}")
    if prob.size != rows:
        raise EvaluationError(f"{path}: {prob.size} prediction rows, the stay has {rows}")
    if prob.size and (not np.isfinite(prob).all() or prob.min() < 0 or prob.max() > 1):
        raise EvaluationError(f"{path}: PredictedProbability must be in [0, 1]")
    if pred.size and not np.isin(pred, (0, 1)).all():
        raise EvaluationError(f"{path}: PredictedLabel must be 0 or 1")
    return prob, pred


def without(labels: Labels, preds: list[Predictions], drop) -> tuple[Labels, list[Predictions]]:
    """``labels`` and ``preds`` less the stays whose ids are in ``drop``."""
    keep = [i for i, pid in enumerate(labels.patient_ids) if pid not in drop]
    kept = Labels(
        label_dir=labels.label_dir,
        patient_ids=[labels.patient_ids[i] for i in keep],
        labels=[labels.labels[i] for i in keep],
        iculos=[labels.iculos[i] for i in keep],
    )
    return kept, [
        replace(p, probabilities=[p.probabilities[i] for i in keep], predictions=[p.predictions[i] for i in keep])
        for p in preds
    ]


def implied_threshold(pred: Predictions) -> float | None:
    """The lowest probability labelled 1, when the PredictedLabels are a threshold of the probabilities
    (every probability labelled 0 below it); else None. Any threshold between the highest probability
    labelled 0 and this one gives the same labels, so it may sit above the model's configured threshold."""
    p, y = np.concatenate(pred.probabilities), np.concatenate(pred.predictions)
    if y.size == 0 or not y.any():
        return None
    lo = float(p[y == 1].min())
    if (y == 0).any() and float(p[y == 0].max()) >= lo:
        return None
    return lo


def model_summary(labels: Labels, pred: Predictions) -> dict:
    """Every number of one model, JSON-ready (NaN becomes None)."""
    utility = cohort_utilities(labels.labels, pred.predictions)
    ece, bins = metrics.calibration(labels.labels, pred.probabilities)
    summary = {
        "pred_dir": str(pred.pred_dir),
        "auroc": metrics.auroc(labels.labels, pred.probabilities),
        "auprc": metrics.auprc(labels.labels, pred.probabilities),
        "utility": utility["normalized"],
        "utility_observed": utility["observed"],
        "utility_best": utility["best"],
        "utility_inaction": utility["inaction"],
        "ece": ece,
        **metrics.patient_alert_stats(labels.labels, pred.predictions),
        "implied_threshold": implied_threshold(pred),
        "ignored_prediction_files": pred.ignored_files,
        "calibration_bins": bins,
    }
    try:
        thr, best = metrics.best_threshold(pred.probabilities, labels.labels)
    except ValueError:
        thr, best = None, None
    summary["best_threshold_in_sample"] = thr
    summary["utility_at_best_threshold_in_sample"] = best
    return _json_ready(summary)


def _json_ready(value):
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def data_provenance(label_dir: Path, n_stays: int, split: str | None = None, limit: int | None = None) -> dict:
    """Where the numbers come from: real PhysioNet 2019 data when ``label_dir`` is under ``physionet2019``."""
    resolved = Path(label_dir).resolve()
    real = "physionet2019" in resolved.parts
    which = f"{n_stays} stays"
    if split:
        which += f" of the fixed {split} split"
    if limit is not None:
        which += f", the first {limit} by name"
    if real:
        note = (
            f"Figures and numbers computed from `{resolved}` ({which}): real PhysioNet/CinC 2019 "
            "challenge data (retrospective ICU stays, hourly rows)."
        )
    else:
        note = (
            f"Figures and numbers computed from `{resolved}` ({which}): NOT PhysioNet 2019 data "
            "(the folder is not under physionet2019), e.g. simulated or synthetic stays."
        )
    return {"label_dir": str(resolved), "real_physionet2019": real, "data_note": note}


def _fmt(value, kind: str = "f3") -> str:
    if value is None:
        return "–"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "int":
        return str(int(value))
    if kind == "f1":
        return f"{value:.1f}"
    if kind == "f2":
        return f"{value:.2f}"
    return f"{value:.3f}"


TABLE = (
    ("AUROC", "auroc", "f3"),
    ("AUPRC", "auprc", "f3"),
    ("utility", "utility", "f3"),
    ("ECE", "ece", "f3"),
    ("sensitivity", "sensitivity", "pct"),
    ("alerted before onset", "alerted_before_onset", "pct"),
    ("median lead (h)", "median_lead_time_h", "f1"),
    ("alerts / patient-day", "alerts_per_patient_day", "f2"),
    ("specificity", "specificity", "pct"),
    ("patients", "patients", "int"),
    ("septic", "septic_patients", "int"),
)


def write_report(out_dir: Path, summary: dict) -> Path:
    """``report.md`` (table, figures, provenance) and ``summary.json`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    models = summary["models"]
    lines = [
        "# Sepsis prediction evaluation",
        "",
        summary["data_note"],
        "",
        "**Not for clinical use.** Retrospective, offline scores of hourly rows; nothing here is validated "
        "for patient care.",
        "",
        "| model | " + " | ".join(h for h, _, _ in TABLE) + " |",
        "| --- |" + " ---: |" * len(TABLE),
    ]
    for name, m in models.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k), kind) for _, k, kind in TABLE) + " |")
    lines += ["", "Utility on the models' own `PredictedLabel`s; tuned on this same data (in-sample, optimistic):", ""]
    for name, m in models.items():
        lines.append(
            f"* {name}: best threshold {_fmt(m['best_threshold_in_sample'], 'f2')} -> utility "
            f"{_fmt(m['utility_at_best_threshold_in_sample'])}; alerts in the reward window "
            f"(t_sepsis-12..t_sepsis+3) {_fmt(m['alerted_in_window'], 'pct')}; non-septic alerts / "
            f"patient-day {_fmt(m['alerts_per_patient_day_nonseptic'], 'f2')}; predictions from "
            f"`{m['pred_dir']}`"
        )
    lines += [
        "",
        "Definitions: utility = PhysioNet 2019 normalized utility (1 = best, 0 = never alert). "
        "t_sepsis = first SepsisLabel row + 6 h. Sensitivity: septic patients with an alert at or before "
        "t_sepsis + 3 h; alerted before onset: an alert before t_sepsis; lead time: t_sepsis minus the first "
        "such alert; an alert = a run of consecutive PredictedLabel = 1 rows; specificity: non-septic "
        "patients never alerted. AUROC/AUPRC/ECE over all hourly rows (ECE: 10 equal-width bins).",
        "",
    ]
    titles = {
        "roc": "ROC (hourly rows)",
        "pr": "Precision-recall (hourly rows)",
        "reliability": "Reliability diagram",
        "utility_threshold": "Utility against threshold",
        "timelines": "Risk timelines of example patients",
    }
    for key, rel in summary.get("figures", {}).items():
        lines += [f"## {titles.get(key, key)}", "", f"![{key}]({rel})", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
