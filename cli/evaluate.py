"""``icuwatch evaluate PRED_DIR LABEL_DIR``: score challenge-format predictions, write a report;
``icuwatch evaluate fusion``: compare the trained fusion models and baselines (``fusion_compare``);
``icuwatch evaluate cv --model M``: patient-level K-fold cross-validation of a sepsis model (``cv``).

The library behind it: ``fusion/evaluation/prediction_dirs.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from icuwatch.cli.errors import report_failed
from icuwatch.fusion.evaluation.prediction_dirs import evaluate_dirs


def _compare(value: str) -> tuple[str, Path]:
    name, sep, folder = value.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"--compare wants NAME=DIR, not {value!r}")
    return name, Path(folder)


def default_baselines() -> str:
    """The rule scores always; the gradient-boosted baseline once ``train-baseline gbt`` has run."""
    from icuwatch.fusion.baselines import gbt

    return "news2,qsofa,gbt" if gbt.is_trained() else "news2,qsofa"


def _evaluate_fusion(args: argparse.Namespace) -> int:
    from icuwatch.fusion.evaluation.fusion_compare import compare, markdown, write_report

    names = [c.strip() for c in args.cohorts.split(",") if c.strip()]
    out = Path(args.out) if args.out else Path("reports") / f"fusion-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    summary = compare(
        names, progress=not args.quiet, baselines=args.baselines != "none", out_dir=None if args.no_figures else out
    )
    summary["report"] = str(write_report(summary, out))
    print(json.dumps(summary) if args.json else markdown(summary))
    return 0


def _evaluate_cv(args: argparse.Namespace) -> int:
    from icuwatch.core.errors import OperatorError
    from icuwatch.core.settings import get_settings
    from icuwatch.fusion.evaluation.cv import MODELS, cross_validate, markdown
    from icuwatch.sources.physionet import default_data_dir, stay_folder

    if args.model not in MODELS:
        raise OperatorError(f"evaluate cv: --model must be one of {', '.join(MODELS)}, not {args.model!r}")
    if args.folds < 2:
        raise OperatorError("evaluate cv: --folds must be at least 2")
    if (args.weights != "none" or args.tune) and args.model != "lightgbm":
        raise OperatorError("evaluate cv: --weights and --tune apply to --model lightgbm only")
    if args.teacher != "lightgbm" and args.model != "student_live":
        raise OperatorError("evaluate cv: --teacher applies to --model student_live only")
    data = stay_folder(args.data or default_data_dir())
    suffix = (
        ("" if args.weights == "none" else f"-{args.weights}")
        + ("-tuned" if args.tune else "")
        + ("" if args.teacher == "lightgbm" else f"-{args.teacher}-teacher")
    )
    options: dict = {}
    if args.model == "lightgbm":
        options = {"weights": args.weights, "tune": args.tune}
    elif args.model == "student_live":
        options = {"teacher": args.teacher}
    out = Path(args.out) if args.out else get_settings().state_dir / "reports" / f"cv-{args.model}{suffix}"
    summary = cross_validate(
        args.model,
        data,
        folds=args.folds,
        seed=args.seed,
        patients=args.patients,
        progress=not args.quiet,
        options=options,
        out_dir=out,
        figures=not args.no_figures,
    )
    print(json.dumps(summary) if args.json else markdown(summary))
    return 0


def _evaluate_ablation(args: argparse.Namespace) -> int:
    from icuwatch.core.errors import OperatorError
    from icuwatch.core.settings import get_settings
    from icuwatch.fusion import cohorts
    from icuwatch.fusion.evaluation.ablation import ablate, markdown

    if args.cohort not in ("sim", "sim_icu"):
        raise OperatorError(f"evaluate ablation: --cohort must be sim or sim_icu (every modality), not {args.cohort!r}")
    if args.folds < 2:
        raise OperatorError("evaluate ablation: --folds must be at least 2")
    cohort = cohorts.load(args.cohort, limit=args.patients, progress=not args.quiet)
    summary = ablate(cohort, folds=args.folds, seed=args.seed, progress=not args.quiet)
    out = Path(args.out) if args.out else get_settings().state_dir / "reports" / f"ablation-{args.cohort}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "ablation.md").write_text(markdown(summary) + "\n")
    summary["report"] = str(out / "ablation.md")
    print(json.dumps(summary) if args.json else markdown(summary))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if args.pred_dir == "fusion" and args.label_dir is None:
        return _evaluate_fusion(args)
    if args.pred_dir == "ablation" and args.label_dir is None:
        return _evaluate_ablation(args)
    if args.pred_dir == "cv" and args.label_dir is None:
        return _evaluate_cv(args)
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
    summary = evaluate_dirs(  # folders checked before any work; EvaluationError: one line (main)
        pred_dirs,
        Path(args.label_dir),
        out,
        split=args.split,
        limit=args.limit,
        baselines=baselines,
        progress=not args.quiet,
        figures=not args.no_figures,
    )
    if args.json:
        print(json.dumps(summary))
    else:
        print(summary["data_note"])
        for name, m in summary["models"].items():
            fmt = {k: ("–" if m[k] is None else f"{m[k]:.3f}") for k in ("auroc", "auprc", "utility", "ece")}
            print(f"{name}: AUROC {fmt['auroc']}  AUPRC {fmt['auprc']}  utility {fmt['utility']}  ECE {fmt['ece']}")
        print(f"report: {summary['report']}")
    return report_failed("evaluate", summary["failed_files"])


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="score PhysioNet 2019 challenge-format predictions against labels", description=__doc__
    )
    p.add_argument(
        "pred_dir",
        metavar="PRED_DIR",
        help="pNNNNNN.psv files: PredictedProbability|PredictedLabel; "
        "or `fusion`: compare every trained fusion model and the baselines on the cohorts' test splits "
        "with 0/30/50 %% of modalities missing; "
        "or `cv`: patient-level K-fold cross-validation of --model over the PhysioNet stays; "
        "or `ablation`: modalities added one at a time on a simulated --cohort (LightGBM, K folds by patient)",
    )
    p.add_argument(
        "label_dir",
        metavar="LABEL_DIR",
        nargs="?",
        default=None,
        help="the challenge's pNNNNNN.psv stays (SepsisLabel)",
    )
    p.add_argument("--cohorts", default="physionet,sim", help="evaluate fusion: cohorts to compare on")
    p.add_argument("--cohort", default="sim_icu", help="evaluate ablation: sim_icu (default) or sim")
    p.add_argument(
        "--out", default=None, help="output folder (default: reports/evaluate-<timestamp>; cv: var/reports/cv-<model>)"
    )
    p.add_argument(
        "--model",
        default="lightgbm",
        help="evaluate cv: lightgbm, gbt, student_live, ensemble, or a strategy: early, late, stacked, attention",
    )
    p.add_argument(
        "--teacher",
        default="lightgbm",
        choices=("lightgbm", "leaders"),
        help="evaluate cv --model student_live: the teacher distilled per fold (leaders: LightGBM on the 2019 "
        "leaders' features where a PhysioNet stay has them, the live-row LightGBM elsewhere, as distill-live "
        "--teacher leaders --teacher lightgbm --combine first)",
    )
    p.add_argument("--folds", type=int, default=5, help="evaluate cv, ablation: number of folds")
    p.add_argument("--seed", type=int, default=0, help="evaluate cv: seed of folds, inner splits and models")
    p.add_argument(
        "--patients",
        type=int,
        default=None,
        help="evaluate cv: a seeded random N stays only; ablation: a cohort of N simulated patients (default 1000)",
    )
    p.add_argument("--data", default=None, help="evaluate cv: folder of pNNNNNN.psv stays (default: the shared set B)")
    p.add_argument(
        "--weights",
        choices=("none", "utility"),
        default="none",
        help="evaluate cv --model lightgbm: row weights (utility: target u_pos > u_neg, weight |u_pos - u_neg|)",
    )
    p.add_argument("--name", default=None, help="name of PRED_DIR's model in the report (default: its folder name)")
    p.add_argument(
        "--compare",
        metavar="NAME=DIR",
        type=_compare,
        action="append",
        help="another model's prediction folder to compare (repeatable)",
    )
    p.add_argument(
        "--baselines",
        default=None,
        metavar="news2,qsofa,gbt",
        help="generate these models' predictions with psv_predict.predict_dir and compare them "
        "(default: news2,qsofa, and gbt once trained; 'none' for no baselines)",
    )
    p.add_argument(
        "--split",
        choices=("train", "val", "test"),
        default=None,
        help="only the stays of this fixed split of LABEL_DIR",
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N stays (after --split)")
    p.add_argument(
        "--tune",
        action="store_true",
        help="evaluate cv --model lightgbm: pick LightGBM settings from a small grid by inner-validation utility",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    p.add_argument("--no-figures", action="store_true", help="numbers only: no PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_evaluate)
