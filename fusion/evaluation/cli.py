"""``icuwatch evaluate PRED_DIR LABEL_DIR``: score challenge-format predictions, write a report;
``icuwatch evaluate fusion``: compare the trained fusion models and baselines (``fusion_compare``).

Library entry point: ``evaluate_dirs(pred_dirs, label_dir, out_dir)``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
    write_report,
)


def generate_baselines(names, stays: list[Path], label_dir: Path, out_dir: Path,
                       progress: bool = True) -> dict[str, Path]:
    """Prediction folders ``out_dir/baselines/NAME`` from ``icuwatch.fusion.psv_predict.predict_dir``."""
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
        predict_dir(input_dir, target, model=name, progress=progress)
        out[name] = target
    return out


def _examples(labels, preds, implied: dict, n: int) -> list[dict]:
    """A few stays to draw: septic ones (preferring onset after the first 12 h), then non-septic."""
    septic = [i for i, lab in enumerate(labels.labels) if lab.any()]
    later = [i for i in septic if int(np.argmax(labels.labels[i])) >= 12]
    septic = (later + [i for i in septic if i not in later])[: (n + 1) // 2]
    others = [i for i, lab in enumerate(labels.labels) if not lab.any() and lab.size >= 12][: n - len(septic)]
    return [{"patient_id": labels.patient_ids[i], "iculos": labels.iculos[i], "labels": labels.labels[i],
             "models": {p.name: p.probabilities[i] for p in preds}, "thresholds": implied}
            for i in septic + others]


def _figures(out_dir: Path, labels, preds, models: dict, examples: int) -> dict:
    """Draw every figure into ``out_dir/figures``; name -> path (and ``_examples``: the patients drawn)."""
    figures_dir = out_dir / "figures"
    probs_by_model = {p.name: p.probabilities for p in preds}
    figures = {
        "roc": plots.roc_plot(figures_dir / "roc.png", labels.labels, probs_by_model,
                              {n: m["auroc"] for n, m in models.items()}),
        "pr": plots.pr_plot(figures_dir / "pr.png", labels.labels, probs_by_model,
                            {n: m["auprc"] for n, m in models.items()}),
        "reliability": plots.reliability_plot(figures_dir / "reliability.png",
                                              {n: m["calibration_bins"] for n, m in models.items()},
                                              {n: m["ece"] for n, m in models.items()}),
    }
    if any(labels.septic):
        thresholds = metrics.DEFAULT_THRESHOLDS
        curves = {p.name: metrics.utility_vs_threshold(p.probabilities, labels.labels, thresholds) for p in preds}
        figures["utility_threshold"] = plots.utility_threshold_plot(
            figures_dir / "utility_threshold.png", thresholds, curves,
            {n: (m["implied_threshold"], m["utility"]) for n, m in models.items()})
    implied = {name: m["implied_threshold"] for name, m in models.items()}
    chosen = _examples(labels, preds, implied, examples)
    if chosen:
        figures["timelines"] = plots.timelines_plot(figures_dir / "timelines.png", chosen)
    figures = {k: str(v.relative_to(out_dir)) for k, v in figures.items()}
    figures["_examples"] = [ex["patient_id"] for ex in chosen]
    return figures


def evaluate_dirs(pred_dirs: dict[str, Path], label_dir: Path, out_dir: Path, *, split: str | None = None,
                  limit: int | None = None, baselines=(), progress: bool = True, examples: int = 4,
                  figures: bool = True) -> dict:
    """Evaluate every model's prediction folder against ``label_dir``; write ``out_dir/report.md``,
    ``summary.json`` and the figures; return the summary.

    ``pred_dirs``: model name -> folder (the first is the main model). ``split``/``limit`` select stays
    of ``label_dir`` (``physionet.list_stays``). ``baselines``: names for ``psv_predict.predict_dir``,
    generated into ``out_dir/baselines/NAME`` and added to the comparison. ``figures=False``: numbers only.
    Raises ``EvaluationError`` when a folder does not match the stays.
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
    stays = select_stays(label_dir, split=split, limit=limit)
    labels = load_labels(stays, progress=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    if baselines:
        pred_dirs.update(generate_baselines(baselines, stays, label_dir, out_dir, progress=progress))
    preds = [load_predictions(name, d, labels, progress=progress) for name, d in pred_dirs.items()]

    models = {p.name: model_summary(labels, p) for p in preds}
    figures = _figures(out_dir, labels, preds, models, examples) if figures else {}
    chosen = figures.pop("_examples", [])

    summary = {
        **data_provenance(label_dir, len(stays), split=split, limit=limit),
        "split": split,
        "limit": limit,
        "patients": len(stays),
        "septic_patients": int(sum(labels.septic)),
        "rows": int(sum(lab.size for lab in labels.labels)),
        "main_model": next(iter(pred_dirs)),
        "models": models,
        "example_patients": chosen,
        "out_dir": str(out_dir),
        "report": str(out_dir / "report.md"),
        "figures": figures,
        "seconds": round(time.time() - started, 2),
    }
    write_report(out_dir, summary)
    return summary


def _compare(value: str) -> tuple[str, Path]:
    name, sep, folder = value.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"--compare wants NAME=DIR, not {value!r}")
    return name, Path(folder)


def default_baselines() -> str:
    """The rule scores always; the gradient-boosted baseline once ``train-baseline gbt`` has run."""
    from icuwatch.settings import get_settings

    trained = (get_settings().state_dir / "models" / "gbt" / "model_card.json").exists()
    return "news2,qsofa,gbt" if trained else "news2,qsofa"


def _evaluate_fusion(args: argparse.Namespace) -> int:
    from icuwatch.fusion.evaluation.fusion_compare import compare, markdown

    names = [c.strip() for c in args.cohorts.split(",") if c.strip()]
    out = Path(args.out) if args.out else Path("reports") / f"fusion-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    summary = compare(names, progress=not args.quiet, baselines=args.baselines != "none",
                      out_dir=None if args.no_figures else out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.md").write_text(markdown(summary))
    summary["report"] = str(out / "report.md")
    print(json.dumps(summary) if args.json else markdown(summary))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if args.pred_dir == "fusion" and args.label_dir is None:
        return _evaluate_fusion(args)
    if args.label_dir is None:
        print("evaluate: LABEL_DIR is required (or `icuwatch evaluate fusion`)", file=sys.stderr)
        return 2
    main_name = args.name or Path(args.pred_dir).resolve().name or "model"
    pred_dirs = {main_name: Path(args.pred_dir)}
    for name, folder in args.compare or []:
        if name in pred_dirs:
            print(f"evaluate: model name {name!r} used twice", file=sys.stderr)
            return 2
        pred_dirs[name] = folder
    out = Path(args.out) if args.out else Path("reports") / f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}"
    requested = default_baselines() if args.baselines is None else args.baselines
    baselines = [b.strip() for b in requested.split(",") if b.strip() and b.strip() != "none"]
    try:
        summary = evaluate_dirs(pred_dirs, Path(args.label_dir), out, split=args.split, limit=args.limit,
                                baselines=baselines, progress=not args.quiet, figures=not args.no_figures)
    except EvaluationError as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary))
    else:
        print(summary["data_note"])
        for name, m in summary["models"].items():
            fmt = {k: ("–" if m[k] is None else f"{m[k]:.3f}") for k in ("auroc", "auprc", "utility", "ece")}
            print(f"{name}: AUROC {fmt['auroc']}  AUPRC {fmt['auprc']}  utility {fmt['utility']}  "
                  f"ECE {fmt['ece']}")
        print(f"report: {summary['report']}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="score PhysioNet 2019 challenge-format predictions against labels",
                              description=__doc__)
    p.add_argument("pred_dir", metavar="PRED_DIR", help="pNNNNNN.psv files: PredictedProbability|PredictedLabel; "
                   "or `fusion`: compare every trained fusion model and the baselines on the cohorts' test splits "
                   "with 0/30/50 %% of modalities missing")
    p.add_argument("label_dir", metavar="LABEL_DIR", nargs="?", default=None,
                   help="the challenge's pNNNNNN.psv stays (SepsisLabel)")
    p.add_argument("--cohorts", default="physionet,sim", help="evaluate fusion: cohorts to compare on")
    p.add_argument("--out", default=None, help="output folder (default: reports/evaluate-<timestamp>)")
    p.add_argument("--name", default=None, help="name of PRED_DIR's model in the report (default: its folder name)")
    p.add_argument("--compare", metavar="NAME=DIR", type=_compare, action="append",
                   help="another model's prediction folder to compare (repeatable)")
    p.add_argument("--baselines", default=None, metavar="news2,qsofa,gbt",
                   help="generate these models' predictions with psv_predict.predict_dir and compare them "
                        "(default: news2,qsofa, and gbt once trained; 'none' for no baselines)")
    p.add_argument("--split", choices=("train", "val", "test"), default=None,
                   help="only the stays of this fixed split of LABEL_DIR")
    p.add_argument("--limit", type=int, default=None, help="only the first N stays (after --split)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    p.add_argument("--no-figures", action="store_true", help="numbers only: no PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_evaluate)
