"""Score folders of challenge-format predictions (``PredictedProbability|PredictedLabel``, one file
per stay) against a folder of labelled stays: metrics, plots and a report per model
(``icuwatch evaluate PRED_DIR LABEL_DIR``). Entry point: :func:`evaluate_dirs`."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from icuwatch.fusion.evaluation import metrics, plots
from icuwatch.fusion.evaluation.report import (
    EvaluationError,
    data_provenance,
    load_labels,
    load_predictions,
    model_summary,
    select_stays,
    without,
    write_report,
)


def generate_baselines(
    names, stays: list[Path], label_dir: Path, out_dir: Path, progress: bool = True, failed: dict | None = None
) -> dict[str, Path]:
    """Prediction folders ``out_dir/baselines/NAME`` from ``icuwatch.fusion.psv_predict.predict_dir``
    (stays it cannot read go into ``failed``, when given)."""
    try:
        from icuwatch.fusion.psv_predict import predict_dir
    except ImportError as exc:
        raise EvaluationError(f"baselines need icuwatch.fusion.psv_predict.predict_dir: {exc}") from None
    base = Path(out_dir) / "baselines"
    input_dir = Path(label_dir)
    if len(stays) != len(list(input_dir.glob("p*.psv"))):
        # A subset (split/limit): predict only those stays, through a folder of links.
        input_dir = base / "_input"
        input_dir.mkdir(parents=True, exist_ok=True)
        for path in stays:
            link = input_dir / path.name
            if not link.exists():
                os.symlink(path.resolve(), link)
    out = {}
    for name in names:
        target = base / name
        predict_dir(input_dir, target, model=name, progress=progress, failed=failed)
        out[name] = target
    return out


def _examples(labels, preds, implied: dict, n: int) -> list[dict]:
    """A few stays to draw: septic ones (preferring onset after the first 12 h), then non-septic."""
    septic = [i for i, lab in enumerate(labels.labels) if lab.any()]
    later = [i for i in septic if int(np.argmax(labels.labels[i])) >= 12]
    septic = (later + [i for i in septic if i not in later])[: (n + 1) // 2]
    others = [i for i, lab in enumerate(labels.labels) if not lab.any() and lab.size >= 12][: n - len(septic)]
    return [
        {
            "patient_id": labels.patient_ids[i],
            "iculos": labels.iculos[i],
            "labels": labels.labels[i],
            "models": {p.name: p.probabilities[i] for p in preds},
            "thresholds": implied,
        }
        for i in septic + others
    ]


def _figures(out_dir: Path, labels, preds, models: dict, examples: int) -> dict:
    """Draw every figure into ``out_dir/figures``; name -> path (and ``_examples``: the patients drawn)."""
    figures_dir = out_dir / "figures"
    probs_by_model = {p.name: p.probabilities for p in preds}
    figures = {
        "roc": plots.roc_plot(
            figures_dir / "roc.png", labels.labels, probs_by_model, {n: m["auroc"] for n, m in models.items()}
        ),
        "pr": plots.pr_plot(
            figures_dir / "pr.png", labels.labels, probs_by_model, {n: m["auprc"] for n, m in models.items()}
        ),
        "reliability": plots.reliability_plot(
            figures_dir / "reliability.png",
            {n: m["calibration_bins"] for n, m in models.items()},
            {n: m["ece"] for n, m in models.items()},
        ),
    }
    if any(labels.septic):
        thresholds = metrics.DEFAULT_THRESHOLDS
        curves = {p.name: metrics.utility_vs_threshold(p.probabilities, labels.labels, thresholds) for p in preds}
        figures["utility_threshold"] = plots.utility_threshold_plot(
            figures_dir / "utility_threshold.png",
            thresholds,
            curves,
            {n: (m["implied_threshold"], m["utility"]) for n, m in models.items()},
        )
    implied = {name: m["implied_threshold"] for name, m in models.items()}
    chosen = _examples(labels, preds, implied, examples)
    if chosen:
        figures["timelines"] = plots.timelines_plot(figures_dir / "timelines.png", chosen)
    figures = {k: str(v.relative_to(out_dir)) for k, v in figures.items()}
    figures["_examples"] = [ex["patient_id"] for ex in chosen]
    return figures


def _some_left(labels, failed: dict[str, str]) -> None:
    if not labels.patient_ids:
        raise EvaluationError(f"no stay could be evaluated ({len(failed)} failed), e.g. {next(iter(failed.values()))}")


def evaluate_dirs(
    pred_dirs: dict[str, Path],
    label_dir: Path,
    out_dir: Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    baselines=(),
    progress: bool = True,
    examples: int = 4,
    figures: bool = True,
) -> dict:
    """Evaluate every model's prediction folder against ``label_dir``; write ``out_dir/report.md``,
    ``summary.json`` and the figures; return the summary.

    ``pred_dirs``: model name -> folder (the first is the main model). ``split``/``limit`` select stays
    of ``label_dir`` (``physionet.list_stays``). ``baselines``: names for ``psv_predict.predict_dir``,
    generated into ``out_dir/baselines/NAME`` and added to the comparison. ``figures=False``: numbers only.
    Raises ``EvaluationError`` when a folder is missing or does not match the stays (checked before any
    prediction is generated). A stay whose label or prediction file is malformed or unreadable is left
    out for every model and reported: ``failed`` (how many), ``failed_files`` (one line each).
    """
    started = time.time()
    label_dir, out_dir = Path(label_dir), Path(out_dir)
    pred_dirs = {name: Path(d) for name, d in pred_dirs.items()}
    baselines = [b for b in baselines if b]
    clash = set(pred_dirs) & set(baselines)
    if clash:
        raise EvaluationError(f"model names used twice: {', '.join(sorted(clash))}")
    if not pred_dirs and not baselines:
        raise EvaluationError("nothing to evaluate")
    for name, folder in pred_dirs.items():
        if not folder.is_dir():
            raise EvaluationError(f"prediction folder {folder} ({name}) does not exist")
    stays = select_stays(label_dir, split=split, limit=limit)
    failed: dict[str, str] = {}
    labels = load_labels(stays, progress=progress, failed=failed)
    _some_left(labels, failed)
    out_dir.mkdir(parents=True, exist_ok=True)
    if baselines:
        readable = [p for p in stays if p.stem not in failed]
        pred_dirs.update(generate_baselines(baselines, readable, label_dir, out_dir, progress, failed))
    preds = [load_predictions(name, d, labels, progress=progress, failed=failed) for name, d in pred_dirs.items()]
    labels, preds = without(labels, preds, failed)
    _some_left(labels, failed)

    models = {p.name: model_summary(labels, p) for p in preds}
    figures = _figures(out_dir, labels, preds, models, examples) if figures else {}
    chosen = figures.pop("_examples", [])

    summary = {
        **data_provenance(label_dir, len(labels.patient_ids), split=split, limit=limit),
        "split": split,
        "limit": limit,
        "patients": len(labels.patient_ids),
        "septic_patients": int(sum(labels.septic)),
        "rows": int(sum(lab.size for lab in labels.labels)),
        "main_model": next(iter(pred_dirs)),
        "models": models,
        "example_patients": chosen,
        "out_dir": str(out_dir),
        "report": str(out_dir / "report.md"),
        "figures": figures,
        "seconds": round(time.time() - started, 2),
        "failed": len(failed),
        "failed_files": sorted(failed.values()),
    }
    if failed:
        summary["data_note"] += f" {len(failed)} selected stays left out: malformed or unreadable files."
    write_report(out_dir, summary)
    return summary
