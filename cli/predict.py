"""``icuwatch psv-predict``, ``icuwatch shadow``, ``icuwatch tune-thresholds``: models over PhysioNet
2019 ``.psv`` stays (the challenge interface, two models side by side, rule thresholds)."""

from __future__ import annotations

import argparse
import json
import time

from icuwatch.cli.errors import report_failed
from icuwatch.core.settings import get_settings


def _psv_predict(args: argparse.Namespace) -> int:
    from icuwatch.fusion.psv_predict import SERVED, predict_dir, served_model

    model = served_model(get_settings()) if args.model == SERVED else args.model
    failed: dict[str, str] = {}
    n = predict_dir(
        args.input_dir,
        args.output_dir,
        model=model,
        patients=args.patients,
        progress=not args.quiet,
        split=args.split,
        failed=failed,
    )
    failed_files = list(failed.values())
    summary = {"model": model, "stays": n, "output_dir": str(args.output_dir), "failed": len(failed)}
    print(json.dumps({**summary, "failed_files": failed_files}))
    return report_failed("psv-predict", failed_files)


def _shadow(args: argparse.Namespace) -> int:
    from icuwatch.fusion.shadow import compare, write_report
    from icuwatch.sources.physionet import stay_folder

    stay_folder(args.source)
    summary = compare(args.source, args.a, args.b, patients=args.patients, progress=not args.quiet)
    report = write_report(summary, args.out or f"reports/shadow-{time.strftime('%Y%m%d-%H%M%S')}")
    brief = {k: v for k, v in summary.items() if k != "differences"}
    print(json.dumps({**brief, "report": str(report)}))
    return 0


def _tune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from icuwatch.fusion.thresholds import tune
    from icuwatch.sources.physionet import default_data_dir, stay_folder

    models_dir = get_settings().state_dir / "models"
    data = stay_folder(Path(args.data) if args.data else default_data_dir())
    cards = [tune(m, data, models_dir, max_stays=args.max_stays, progress=not args.quiet) for m in args.models]
    print(json.dumps(cards))
    return 0


def register(subparsers) -> None:
    from icuwatch.fusion.psv_predict import MODELS

    p = subparsers.add_parser("psv-predict", help="PhysioNet 2019 challenge predictions for a folder of .psv stays")
    p.add_argument("input_dir")
    p.add_argument("output_dir")
    p.add_argument(
        "--model",
        default="served",
        choices=MODELS,
        help="served (default): the model the worker scores sepsis with (the student when "
        "ICUWATCH_SCORING_MODEL names one, else rules); student: the distilled student in var/models",
    )
    p.add_argument("--patients", type=int, default=None, help="only the first N stays")
    p.add_argument(
        "--split",
        choices=["train", "val", "test"],
        default=None,
        help="only the stays of this split of the fixed hash split",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_psv_predict)

    p = subparsers.add_parser("shadow", help="score one source with two models and report where alerts differ")
    p.add_argument("--a", required=True, choices=MODELS, help="the live model")
    p.add_argument("--b", required=True, choices=MODELS, help="the shadow model")
    p.add_argument("source", help="folder of PhysioNet-format .psv stays")
    p.add_argument("--patients", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_shadow)

    p = subparsers.add_parser("tune-thresholds", help="tune rule models' alert thresholds for utility on the val split")
    p.add_argument("--models", nargs="+", default=["rules", "news2", "qsofa"], choices=["rules", "news2", "qsofa"])
    p.add_argument("--data", default=None, help="PhysioNet 2019 folder (default: ../shared/data/...)")
    p.add_argument("--max-stays", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_tune)
